//! Signed segments: when a segment is closed, the replica signs its last record (sequence
//! number and chain hash) with its Ed25519 key (`audit.signing_key`), in `<segment>.sig`.
//! Since every record's hash covers the ones before it, the signature covers the whole chain
//! up to there: `tollgate audit verify --key PUBLIC` then shows that no record was changed,
//! removed or added since, even by someone who could rewrite the chain.

use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::format::Hash;

/// What is signed: a domain tag, the last record's sequence number and its chain hash.
fn message(last_seq: u64, last_hash: &Hash) -> Vec<u8> {
    let mut m = b"tollgate-journal-segment-v1".to_vec();
    m.extend_from_slice(&last_seq.to_le_bytes());
    m.extend_from_slice(last_hash);
    m
}

/// A replica's signing key (an Ed25519 seed of 32 bytes, hex).
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", self.public_hex())
    }
}

impl SigningKey {
    pub fn from_hex(seed: &str) -> Result<SigningKey, String> {
        let seed = hex::decode(seed.trim()).map_err(|_| "audit.signing_key must be 64 hex digits".to_owned())?;
        if seed.len() != 32 {
            return Err("audit.signing_key must be 64 hex digits (an Ed25519 seed)".into());
        }
        Ed25519KeyPair::from_seed_unchecked(&seed)
            .map(SigningKey)
            .map_err(|_| "audit.signing_key is not a usable Ed25519 seed".into())
    }

    /// The public key (hex), for `tollgate audit verify --key`.
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.public_key().as_ref())
    }

    /// Writes `<segment>.sig` for a closed segment whose last record is `last_seq`.
    pub fn sign_segment(&self, segment: &Path, last_seq: u64, last_hash: &Hash) -> std::io::Result<()> {
        let signature = self.0.sign(&message(last_seq, last_hash));
        let text = format!(
            "{last_seq} {} {}\n",
            hex::encode(last_hash),
            hex::encode(signature.as_ref())
        );
        // Written whole or not at all: a temporary file, synced, renamed into place.
        let path = signature_path(segment);
        let temporary = path.with_extension("sig.tmp");
        std::fs::write(&temporary, text)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, &path)
    }
}

/// The file that holds the signed head of the journal (its newest record, signed at most
/// a second apart), which covers the open segment and the end of the journal.
pub const HEAD_FILE: &str = "head.sig";

impl SigningKey {
    /// Signs the journal's head (record `seq` with chain hash `hash`) in `head.sig`.
    pub fn sign_head(&self, dir: &Path, seq: u64, hash: &Hash) -> std::io::Result<()> {
        let signature = self.0.sign(&message(seq, hash));
        let text = format!("{seq} {} {}\n", hex::encode(hash), hex::encode(signature.as_ref()));
        let temporary = dir.join(format!("{HEAD_FILE}.tmp"));
        std::fs::write(&temporary, text)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, dir.join(HEAD_FILE))
    }
}

/// The signed head of the journal in `dir`, checked with `public`: the record it names.
pub(crate) fn signed_head(dir: &Path, public: &[u8]) -> Result<(u64, Hash), String> {
    let text = std::fs::read_to_string(dir.join(HEAD_FILE)).map_err(|_| "no signed head (head.sig)".to_owned())?;
    let mut parts = text.split_whitespace();
    let (Some(seq), Some(hash), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("an unreadable head.sig".into());
    };
    let seq: u64 = seq.parse().map_err(|_| "an unreadable head.sig".to_owned())?;
    let hash: Hash = hex::decode(hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| "an unreadable head.sig".to_owned())?;
    let signature = hex::decode(signature).map_err(|_| "an unreadable head.sig".to_owned())?;
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&message(seq, &hash), &signature)
        .map_err(|_| "head.sig does not verify with this key".to_owned())?;
    Ok((seq, hash))
}

/// A new random seed and its public key (hex), for `tollgate audit keygen`.
pub fn generate() -> Result<(String, String), String> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| "no randomness from the operating system".to_owned())?;
    let key = SigningKey::from_hex(&hex::encode(seed))?;
    Ok((hex::encode(seed), key.public_hex()))
}

pub(crate) fn signature_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Checks `<segment>.sig` against the segment's last record; the reason it fails.
pub(crate) fn check_segment(segment: &Path, last_seq: u64, last_hash: &Hash, public: &[u8]) -> Result<(), String> {
    let text = std::fs::read_to_string(signature_path(segment))
        .map_err(|_| "no signature (.sig) for this closed segment".to_owned())?;
    let mut parts = text.split_whitespace();
    let (Some(seq), Some(hash), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("an unreadable signature file".into());
    };
    if seq.parse::<u64>().ok() != Some(last_seq) || hex::decode(hash).ok().as_deref() != Some(&last_hash[..]) {
        return Err(format!("its signature is for another last record than {last_seq}"));
    }
    let signature = hex::decode(signature).map_err(|_| "an unreadable signature".to_owned())?;
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&message(last_seq, last_hash), &signature)
        .map_err(|_| "its signature does not verify with this key".to_owned())
}
