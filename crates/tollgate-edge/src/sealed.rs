//! Sealed session ids for the aggregated endpoint: the gateway's `Mcp-Session-Id` carries
//! the upstreams' own session ids, encrypted and authenticated with a key every edge of
//! the cluster shares, so that any edge can serve any request of a session without a
//! session store. The grant is the authenticated associated data: a session id is of no
//! use to another grant, and a changed byte makes it invalid.
//!
//! Format: `tg1.` followed by base64url (no padding) of a 12-byte random nonce and the
//! ChaCha20-Poly1305 ciphertext of the session's JSON.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::EdgeError;
use crate::settings::Secret;

const PREFIX: &str = "tg1.";
/// Sealed list cursors.
const CURSOR_PREFIX: &str = "tgc1.";
/// Shortest configured key, in characters.
const MIN_KEY_CHARS: usize = 32;

/// What an aggregated session is: for each upstream in it, its name and the session id it
/// gave (`None` for a server without sessions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AggregateSession {
    /// (upstream name, its `Mcp-Session-Id`)
    #[serde(rename = "u")]
    pub(crate) upstreams: Vec<(String, Option<String>)>,
}

impl AggregateSession {
    pub(crate) fn session_of(&self, server: &str) -> Option<Option<&str>> {
        self.upstreams
            .iter()
            .find(|(name, _)| name == server)
            .map(|(_, id)| id.as_deref())
    }
}

/// Seals and opens session ids.
pub(crate) struct Sealer {
    keys: Vec<LessSafeKey>,
    random: SystemRandom,
    /// Derives the nonces of task handles, which are deterministic (see [`crate::tasks`]).
    nonce_key: [u8; 32],
}

impl Sealer {
    /// Keys from `edge.aggregate.session_keys` (each hashed with SHA-256 into a 256-bit
    /// key); a random key when none is configured.
    pub(crate) fn new(secrets: &[Secret]) -> Result<Sealer, EdgeError> {
        let random = SystemRandom::new();
        let mut raw: Vec<[u8; 32]> = Vec::with_capacity(secrets.len().max(1));
        for (i, secret) in secrets.iter().enumerate() {
            if secret.0.chars().count() < MIN_KEY_CHARS {
                return Err(EdgeError::Config(format!(
                    "edge.aggregate.session_keys[{i}] is shorter than {MIN_KEY_CHARS} characters: use `tollgate keygen`"
                )));
            }
            raw.push(Sha256::digest(secret.0.as_bytes()).into());
        }
        if raw.is_empty() {
            let mut key = [0u8; 32];
            random
                .fill(&mut key)
                .map_err(|_| EdgeError::Config("no randomness for a session key".into()))?;
            raw.push(key);
        }
        let nonce_key: [u8; 32] = Sha256::new()
            .chain_update(b"tollgate task handle nonces\0")
            .chain_update(raw[0])
            .finalize()
            .into();
        let keys = raw
            .iter()
            .map(|k| {
                UnboundKey::new(&CHACHA20_POLY1305, k)
                    .map(LessSafeKey::new)
                    .map_err(|_| EdgeError::Config("invalid session key".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Sealer {
            keys,
            random,
            nonce_key,
        })
    }

    /// The session id for `session` of `grant`.
    pub(crate) fn seal(&self, grant: &str, session: &AggregateSession) -> Option<String> {
        self.seal_as(PREFIX, grant.as_bytes(), &serde_json::to_vec(session).ok()?)
    }

    /// The session a session id names, if it was sealed for `grant` by one of the keys.
    pub(crate) fn open(&self, grant: &str, id: &str) -> Option<AggregateSession> {
        serde_json::from_slice(&self.open_as(PREFIX, grant.as_bytes(), id)?).ok()
    }

    /// A list cursor of the aggregated endpoint for `grant`: each upstream's own cursor. Its
    /// associated data differs from a session id's, so neither opens as the other.
    pub(crate) fn seal_cursor(&self, grant: &str, parts: &[(String, String)]) -> Option<String> {
        self.seal_as(CURSOR_PREFIX, &cursor_aad(grant), &serde_json::to_vec(parts).ok()?)
    }

    /// The parts of a cursor sealed for `grant`.
    pub(crate) fn open_cursor(&self, grant: &str, cursor: &str) -> Option<Vec<(String, String)>> {
        serde_json::from_slice(&self.open_as(CURSOR_PREFIX, &cursor_aad(grant), cursor)?).ok()
    }

    /// A 2026-07-28 `requestState` envelope for `grant` (see [`crate::mrtr`]). Its associated
    /// data differs from a session id's and a cursor's, so none opens as another.
    pub(crate) fn seal_input_state(&self, grant: &str, plain: &[u8]) -> Option<String> {
        self.seal_as(INPUT_STATE_PREFIX, &purpose_aad(b"input\0", grant), plain)
    }

    /// The contents of an envelope sealed for `grant`.
    pub(crate) fn open_input_state(&self, grant: &str, text: &str) -> Option<Vec<u8>> {
        if text.len() > MAX_INPUT_STATE_BYTES {
            return None;
        }
        self.open_as(INPUT_STATE_PREFIX, &purpose_aad(b"input\0", grant), text)
    }

    /// The handle of upstream `server`'s task `task_id` for `grant`: deterministic (one task
    /// has one handle, whatever answer or notification names it), authenticated, bound to the
    /// grant and the upstream.
    pub(crate) fn seal_task(&self, grant: &str, server: &str, task_id: &str) -> Option<String> {
        let aad = task_aad(grant, server);
        let digest = Sha256::new()
            .chain_update(self.nonce_key)
            .chain_update(&aad)
            .chain_update([0u8])
            .chain_update(task_id.as_bytes())
            .finalize();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&digest[..NONCE_LEN]);
        self.seal_with_nonce(TASK_PREFIX, &aad, task_id.as_bytes(), nonce)
    }

    /// The task id a handle stands for, if it was sealed for `grant` and `server`.
    pub(crate) fn open_task(&self, grant: &str, server: &str, handle: &str) -> Option<String> {
        if handle.len() > MAX_TASK_HANDLE_BYTES {
            return None;
        }
        String::from_utf8(self.open_as(TASK_PREFIX, &task_aad(grant, server), handle)?).ok()
    }

    fn seal_as(&self, prefix: &str, aad: &[u8], plain: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        self.seal_with_nonce(prefix, aad, plain, nonce)
    }

    fn seal_with_nonce(&self, prefix: &str, aad: &[u8], plain: &[u8], nonce: [u8; NONCE_LEN]) -> Option<String> {
        let mut data = plain.to_vec();
        self.keys
            .first()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut data)
            .ok()?;
        let mut token = Vec::with_capacity(NONCE_LEN + data.len());
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&data);
        Some(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(token)))
    }

    fn open_as(&self, prefix: &str, aad: &[u8], token: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(token.strip_prefix(prefix)?).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        for key in &self.keys {
            let mut data = sealed.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(aad), &mut data) {
                return Some(plain.to_vec());
            }
        }
        None
    }
}

/// Ids of single-use sealed tokens (`requestState` envelopes) already used, until the tokens
/// expire; per grant, so that no grant's retries can fill another's memory.
#[derive(Default)]
pub(crate) struct UsedEnvelopes(
    std::sync::Mutex<std::collections::HashMap<String, std::collections::HashMap<String, u64>>>,
);

/// Envelopes remembered at most per grant and edge.
pub(crate) const MAX_USED_ENVELOPES_PER_GRANT: usize = 10_000;

/// Why an envelope cannot be taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotTaken {
    /// It was used before.
    Used,
    /// The grant's memory is full of unexpired envelopes (nothing can be checked: refused).
    Full,
}

impl UsedEnvelopes {
    /// Marks `id` of `grant` (valid until `expires_ms`) used.
    pub(crate) fn take(&self, grant: &str, id: &str, expires_ms: u64, now: u64) -> Result<(), NotTaken> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let used = all.entry(grant.to_owned()).or_default();
        if used.contains_key(id) {
            return Err(NotTaken::Used);
        }
        if used.len() >= MAX_USED_ENVELOPES_PER_GRANT {
            used.retain(|_, until| *until > now);
            if used.len() >= MAX_USED_ENVELOPES_PER_GRANT {
                return Err(NotTaken::Full);
            }
        }
        used.insert(id.to_owned(), expires_ms);
        Ok(())
    }
}

/// Associated data for `purpose` and the grant.
fn purpose_aad(purpose: &[u8], grant: &str) -> Vec<u8> {
    let mut aad = purpose.to_vec();
    aad.extend_from_slice(grant.as_bytes());
    aad
}

/// A task handle's associated data: its purpose, the grant and the upstream.
fn task_aad(grant: &str, server: &str) -> Vec<u8> {
    let mut aad = purpose_aad(b"task\0", grant);
    aad.push(0);
    aad.extend_from_slice(server.as_bytes());
    aad
}

/// Task handles start with this.
const TASK_PREFIX: &str = "tgk1.";
/// Longest task handle accepted.
const MAX_TASK_HANDLE_BYTES: usize = 4096;

/// Envelopes of `requestState` start with this.
const INPUT_STATE_PREFIX: &str = "tgr1.";
/// Longest envelope accepted (the upstream's state inside is bounded by the answer's size).
const MAX_INPUT_STATE_BYTES: usize = 256 * 1024;

/// A cursor's associated data: its purpose and the grant.
fn cursor_aad(grant: &str) -> Vec<u8> {
    let mut aad = b"cursor\0".to_vec();
    aad.extend_from_slice(grant.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grant_cannot_fill_another_grants_memory_of_used_envelopes() {
        let used = UsedEnvelopes::default();
        let (now, later) = (1_000, 2_000);
        assert_eq!(used.take("a", "x", later, now), Ok(()));
        assert_eq!(used.take("a", "x", later, now), Err(NotTaken::Used));
        for i in 1..MAX_USED_ENVELOPES_PER_GRANT {
            assert_eq!(used.take("a", &format!("a{i}"), later, now), Ok(()));
        }
        assert_eq!(used.take("a", "one-more", later, now), Err(NotTaken::Full));
        // Another grant is untouched; the full one recovers once its envelopes expire.
        assert_eq!(used.take("b", "x", later, now), Ok(()));
        assert_eq!(used.take("a", "one-more", later + 10, later + 1), Ok(()));
    }

    fn secret(s: &str) -> Secret {
        Secret(s.to_owned())
    }

    #[test]
    fn sessions_open_only_for_their_grant_and_keys() {
        let old = Sealer::new(&[secret("old-key-old-key-old-key-old-key-00")]).expect("sealer");
        let rotated = Sealer::new(&[
            secret("new-key-new-key-new-key-new-key-11"),
            secret("old-key-old-key-old-key-old-key-00"),
        ])
        .expect("sealer");
        let session = AggregateSession {
            upstreams: vec![("k8s".into(), Some("abc".into())), ("time".into(), None)],
        };
        let id = old.seal("ci", &session).expect("sealed");
        assert!(id.starts_with("tg1.") && id.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(old.open("ci", &id), Some(session.clone()));
        assert_eq!(rotated.open("ci", &id), Some(session.clone()), "old keys still open");
        assert_eq!(old.open("other-grant", &id), None, "bound to the grant");
        let new_id = rotated.seal("ci", &session).expect("sealed");
        assert_eq!(old.open("ci", &new_id), None, "sealed with the new key");
        let mut tampered = id.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(old.open("ci", &String::from_utf8(tampered).expect("ascii")), None);
        assert_eq!(old.open("ci", "tg1."), None);
        assert_eq!(old.open("ci", "not-a-session"), None);
        assert_ne!(old.seal("ci", &session), Some(id), "a fresh nonce each time");
        assert!(Sealer::new(&[secret("short")]).is_err());
    }

    #[test]
    fn cursors_open_only_for_their_grant_and_never_as_sessions() {
        let sealer = Sealer::new(&[secret("old-key-old-key-old-key-old-key-00")]).expect("sealer");
        let parts = vec![("k8s".to_owned(), "page-2".to_owned())];
        let cursor = sealer.seal_cursor("ci", &parts).expect("sealed");
        assert_eq!(sealer.open_cursor("ci", &cursor), Some(parts));
        assert_eq!(sealer.open_cursor("other", &cursor), None);
        assert_eq!(sealer.open("ci", &cursor), None);
        let session = sealer
            .seal("ci", &AggregateSession { upstreams: vec![] })
            .expect("sealed");
        assert_eq!(sealer.open_cursor("ci", &session), None);
        let forged = format!("tgc1.{}", URL_SAFE_NO_PAD.encode(br#"[["k8s","a"],["k8s","b"]]"#));
        assert_eq!(sealer.open_cursor("ci", &forged), None);
    }
}
