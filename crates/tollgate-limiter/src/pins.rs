//! Tool pinning's records: for every tool, prompt and resource template an upstream lists,
//! the definitions seen (by digest), which one is approved, and which one the upstream
//! listed last. Shared by every edge and replica through the store (Redis, or memory in
//! `tollgate up`).
//!
//! The rules live here, once, as plain functions on a [`Pin`]; the stores only read and write
//! records atomically (Redis: compare-and-set in a script, retried on a conflict).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Names (tools, prompts, templates of every upstream together) a store pins at most; a new
/// name past it is refused (and so, in `enforce`, hidden) until an operator forgets some.
pub const MAX_PINNED: usize = 4096;
/// Definitions of one name kept pending at most (the oldest goes first).
pub const MAX_PENDING_PER_NAME: usize = 4;
/// Rejected definitions remembered per name (by digest only), so that they stay hidden.
pub const MAX_REJECTED_PER_NAME: usize = 16;
/// `last_seen_ms` is written again only when it is older than this: listing does not write.
pub const SEEN_REFRESH_MS: u64 = 60_000;
/// Longest name, reason and operator kept.
const MAX_TEXT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKind {
    Tool,
    Prompt,
    /// A resource template (named by its `uriTemplate`).
    Template,
}

impl PinKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::Tool => "tool",
            PinKind::Prompt => "prompt",
            PinKind::Template => "template",
        }
    }
}

/// What is pinned: one name of one upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PinKey {
    pub kind: PinKind,
    pub server: String,
    pub name: String,
}

impl PinKey {
    /// The record's field in the store.
    pub fn field(&self) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.kind.as_str(), self.server, self.name)
    }

    /// The id of this name's definition `digest`: the same everywhere.
    pub fn id_of(&self, digest: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [self.kind.as_str(), &self.server, &self.name, digest] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        format!("pin_{}", &hex::encode(h.finalize())[..24])
    }
}

/// Whether `id` could be a definition's id.
pub fn is_pin_id(id: &str) -> bool {
    id.len() == 28 && id.starts_with("pin_") && id[4..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinState {
    Pending,
    Approved,
    Rejected,
}

/// One definition of a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinDefinition {
    pub id: String,
    pub digest: String,
    /// Canonical JSON; empty when it was too large to keep, and for rejected definitions.
    #[serde(default)]
    pub definition: String,
    pub bytes: u64,
    pub state: PinState,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    #[serde(default)]
    pub resolved_by: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub resolved_ms: u64,
}

/// Everything recorded about one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub key: PinKey,
    /// The digest the upstream listed last (on any edge).
    pub current: String,
    pub definitions: Vec<PinDefinition>,
}

/// A definition an edge saw listed.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: PinKey,
    pub digest: String,
    /// Canonical JSON; empty when larger than the edge keeps (`bytes` says how large).
    pub definition: String,
    pub bytes: u64,
    /// `record` mode: a name's first definition is recorded approved.
    pub approve_first: bool,
}

/// What an operator did to one definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinResolution {
    Resolved(Pin),
    /// No definition has that id.
    NotFound,
    /// It is not pending (approving an approved one, rejecting a rejected one).
    NotPending(Pin),
}

fn cut(text: &str) -> String {
    crate::approvals::cut_short(text, MAX_TEXT)
}

impl Pin {
    pub fn approved(&self) -> Option<&PinDefinition> {
        self.definitions.iter().find(|d| d.state == PinState::Approved)
    }

    pub fn definition(&self, digest: &str) -> Option<&PinDefinition> {
        self.definitions.iter().find(|d| d.digest == digest)
    }

    /// A new record for a name first seen now.
    pub fn first(seen: &Seen, now_ms: u64) -> Pin {
        let mut pin = Pin {
            key: seen.key.clone(),
            current: seen.digest.clone(),
            definitions: Vec::new(),
        };
        pin.add(seen, now_ms, seen.approve_first);
        pin
    }

    fn add(&mut self, seen: &Seen, now_ms: u64, approve: bool) {
        let too_large = seen.definition.is_empty();
        let (state, by, reason) = if too_large {
            (
                PinState::Rejected,
                "tollgate",
                format!(
                    "the definition is {} bytes, more than edge.pins_max_definition_bytes: it cannot be reviewed",
                    seen.bytes
                ),
            )
        } else if approve {
            (
                PinState::Approved,
                "tollgate",
                "first definition seen (pinning = \"record\")".to_owned(),
            )
        } else {
            (PinState::Pending, "", String::new())
        };
        self.definitions.push(PinDefinition {
            id: self.key.id_of(&seen.digest),
            digest: seen.digest.clone(),
            definition: if state == PinState::Rejected {
                String::new()
            } else {
                seen.definition.clone()
            },
            bytes: seen.bytes,
            state,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            resolved_by: if state == PinState::Pending {
                String::new()
            } else {
                by.to_owned()
            },
            reason,
            resolved_ms: if state == PinState::Pending { 0 } else { now_ms },
        });
        self.bound();
    }

    /// Keeps at most [`MAX_PENDING_PER_NAME`] pending and [`MAX_REJECTED_PER_NAME`]
    /// rejected definitions (the oldest go), never the approved one or the current one.
    fn bound(&mut self) {
        // Rejected definitions are remembered by digest; the text only of the one listed now.
        for d in &mut self.definitions {
            if d.state == PinState::Rejected && d.digest != self.current {
                d.definition.clear();
            }
        }
        for (state, most) in [
            (PinState::Pending, MAX_PENDING_PER_NAME),
            (PinState::Rejected, MAX_REJECTED_PER_NAME),
        ] {
            loop {
                let of_state: Vec<usize> = (0..self.definitions.len())
                    .filter(|&i| self.definitions[i].state == state && self.definitions[i].digest != self.current)
                    .collect();
                let count = self.definitions.iter().filter(|d| d.state == state).count();
                if count <= most || of_state.is_empty() {
                    break;
                }
                let oldest = of_state
                    .into_iter()
                    .min_by_key(|&i| self.definitions[i].last_seen_ms)
                    .unwrap_or(0);
                self.definitions.remove(oldest);
            }
        }
    }

    /// The upstream listed `seen` now; `true` when the record changed.
    pub fn observe(&mut self, seen: &Seen, now_ms: u64) -> bool {
        let mut changed = false;
        if self.current != seen.digest {
            self.current = seen.digest.clone();
            changed = true;
        }
        match self.definitions.iter_mut().find(|d| d.digest == seen.digest) {
            Some(known) => {
                if now_ms.saturating_sub(known.last_seen_ms) >= SEEN_REFRESH_MS {
                    known.last_seen_ms = now_ms;
                    changed = true;
                }
                // A rejected definition listed again keeps its text while it is the one
                // listed, so that an operator can review it again (and approve it after all).
                if known.state == PinState::Rejected && known.definition.is_empty() && !seen.definition.is_empty() {
                    known.definition = seen.definition.clone();
                    changed = true;
                }
            }
            None => {
                // A name's later definitions always wait for an operator, whatever the mode:
                // `record` refuses nothing, but shows the change.
                self.add(seen, now_ms, false);
                changed = true;
            }
        }
        if changed {
            self.bound();
        }
        changed
    }

    /// Approves or rejects definition `id`. Approving makes it the one approved definition
    /// of the name (the one approved before is forgotten); rejecting an approved definition
    /// leaves the name with none.
    pub fn resolve(&mut self, id: &str, approve: bool, by: &str, reason: &str, now_ms: u64) -> Option<bool> {
        let at = self.definitions.iter().position(|d| d.id == id)?;
        let state = self.definitions[at].state;
        let target = if approve {
            PinState::Approved
        } else {
            PinState::Rejected
        };
        if state == target || (approve && state == PinState::Rejected && self.definitions[at].definition.is_empty()) {
            return Some(false);
        }
        if approve {
            self.definitions.retain(|d| d.state != PinState::Approved || d.id == id);
        }
        let Some(definition) = self.definitions.iter_mut().find(|d| d.id == id) else {
            return Some(false);
        };
        definition.state = target;
        definition.resolved_by = cut(by);
        definition.reason = cut(reason);
        definition.resolved_ms = now_ms;
        self.bound();
        Some(true)
    }
}

/// What an edge's view of a name is worth: the verdict of a pin check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinVerdict {
    /// The definition is approved (and the last one listed).
    Approved,
    /// Why not, for the agent and the audit trail.
    Refused { state: &'static str, reason: String },
}

/// Checks `digest` (the edge's last seen definition; empty: the store's last seen one) of
/// `pin` against `approved` (the store's approved digest, or the lockfile's). With
/// `pending_refuses` (the store approves, not a lockfile), a name with a definition awaiting
/// review is refused whatever is listed now: an upstream that shows another definition to
/// some readers (agents) than to others (an edge's refresh) cannot have calls admitted while
/// the one it showed waits for review.
pub fn check(
    pin: Option<&Pin>,
    name: &str,
    noun: &str,
    digest: &str,
    approved: Option<&str>,
    pending_refuses: bool,
) -> PinVerdict {
    let Some(pin) = pin else {
        if !digest.is_empty() && approved == Some(digest) {
            // A lockfile approves what this edge saw; the store has no record (yet).
            return PinVerdict::Approved;
        }
        return PinVerdict::Refused {
            state: "unknown",
            reason: format!(
                "the {noun} {name} has not been listed by its server since pinning began, so no definition of it \
                 is approved; an operator must review it"
            ),
        };
    };
    let seen = if digest.is_empty() {
        pin.current.as_str()
    } else {
        digest
    };
    let state = pin.definition(seen).map(|d| d.state);
    let refused = |state: &'static str, why: String| PinVerdict::Refused { state, reason: why };
    let awaiting = pending_refuses && pin.definitions.iter().any(|d| d.state == PinState::Pending);
    match approved {
        Some(approved) if approved == seen && approved == pin.current && awaiting => refused(
            "changed",
            format!(
                "a changed definition of {noun} {name} awaits review; its calls are refused until an operator \
                 approves or rejects it"
            ),
        ),
        Some(approved) if approved == seen && approved == pin.current => PinVerdict::Approved,
        Some(approved) if approved == seen => refused(
            "changed",
            format!(
                "the definition of {noun} {name} changed since it was approved (its server now lists another); an \
                 operator must review it"
            ),
        ),
        Some(_) if state == Some(PinState::Rejected) => refused(
            "rejected",
            format!("the current definition of {noun} {name} was rejected by an operator"),
        ),
        Some(_) => refused(
            "changed",
            format!("the definition of {noun} {name} changed since it was approved; an operator must review it"),
        ),
        None if state == Some(PinState::Rejected) => refused(
            "rejected",
            format!("the definition of {noun} {name} was rejected by an operator"),
        ),
        None => refused(
            "pending",
            format!("the definition of {noun} {name} has not been approved yet; an operator must review it"),
        ),
    }
}

#[async_trait::async_trait]
pub trait PinStore: Send + Sync + 'static {
    /// Records what an edge saw listed; the records of `seen`'s names afterwards (in order).
    async fn observe(&self, seen: &[Seen], now_ms: u64) -> Result<Vec<Pin>, StoreError>;
    /// The records of `keys` (in order; `None` for a name never seen).
    async fn pins(&self, keys: &[PinKey]) -> Result<Vec<Option<Pin>>, StoreError>;
    /// Every record.
    async fn list(&self) -> Result<Vec<Pin>, StoreError>;
    /// Approves or rejects definition `id`.
    async fn resolve(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PinResolution, StoreError>;
}

/// Applies `seen` to the records (`get` reads one as it was), giving the records of the
/// names recorded (in order) and those to write. A name not recorded yet is added only while
/// `room` allows (`None`: the store checks); the others are skipped, with a warning, so that a
/// full store still records changes to the names it holds.
pub(crate) fn apply_seen(
    seen: &[Seen],
    now_ms: u64,
    mut get: impl FnMut(&PinKey) -> Option<Pin>,
    room: Option<usize>,
) -> (Vec<Pin>, Vec<Pin>) {
    let mut answer: Vec<Pin> = Vec::with_capacity(seen.len());
    let mut changed: HashMap<String, Pin> = HashMap::new();
    let mut added = 0usize;
    let mut skipped = 0usize;
    for s in seen {
        let field = s.key.field();
        let before = changed.get(&field).cloned().or_else(|| get(&s.key));
        let pin = match before {
            Some(mut pin) => {
                if pin.observe(s, now_ms) {
                    changed.insert(field, pin.clone());
                }
                pin
            }
            None => {
                if room.is_some_and(|room| added >= room) {
                    skipped += 1;
                    continue;
                }
                added += 1;
                let pin = Pin::first(s, now_ms);
                changed.insert(field, pin.clone());
                pin
            }
        };
        answer.push(pin);
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "the store pins {MAX_PINNED} names already: new names are not recorded (in enforce they stay hidden and refused)"
        );
    }
    (answer, changed.into_values().collect())
}

/// Pins in this process (`tollgate up`, tests).
#[derive(Default)]
pub struct MemoryPins {
    records: Mutex<HashMap<String, Pin>>,
}

impl MemoryPins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pin>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl PinStore for MemoryPins {
    async fn observe(&self, seen: &[Seen], now_ms: u64) -> Result<Vec<Pin>, StoreError> {
        let mut records = self.lock();
        let room = MAX_PINNED.saturating_sub(records.len());
        let (answer, changed) = apply_seen(seen, now_ms, |k| records.get(&k.field()).cloned(), Some(room));
        for pin in changed {
            records.insert(pin.key.field(), pin);
        }
        Ok(answer)
    }

    async fn pins(&self, keys: &[PinKey]) -> Result<Vec<Option<Pin>>, StoreError> {
        let records = self.lock();
        Ok(keys.iter().map(|k| records.get(&k.field()).cloned()).collect())
    }

    async fn list(&self) -> Result<Vec<Pin>, StoreError> {
        let mut all: Vec<Pin> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    async fn resolve(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PinResolution, StoreError> {
        if !is_pin_id(id) {
            return Ok(PinResolution::NotFound);
        }
        let mut records = self.lock();
        let Some(pin) = records.values_mut().find(|p| p.definitions.iter().any(|d| d.id == id)) else {
            return Ok(PinResolution::NotFound);
        };
        Ok(match pin.resolve(id, approve, by, reason, now_ms) {
            Some(true) => PinResolution::Resolved(pin.clone()),
            Some(false) => PinResolution::NotPending(pin.clone()),
            None => PinResolution::NotFound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, digest: &str, approve_first: bool) -> Seen {
        Seen {
            key: PinKey {
                kind: PinKind::Tool,
                server: "k8s".into(),
                name: name.into(),
            },
            digest: digest.into(),
            definition: format!("{{\"name\":\"{name}\",\"d\":\"{digest}\"}}"),
            bytes: 10,
            approve_first,
        }
    }

    #[tokio::test]
    async fn a_changed_definition_waits_for_an_operator_and_a_rejected_one_stays_refused() {
        let store = MemoryPins::default();
        let first = store.observe(&[seen("scale", "a1", false)], 1).await.expect("observe");
        assert_eq!(first[0].definitions[0].state, PinState::Pending, "enforce: pending");
        let id = first[0].key.id_of("a1");
        assert!(is_pin_id(&id));
        let verdict = check(Some(&first[0]), "scale", "tool", "a1", None, true);
        assert!(
            matches!(verdict, PinVerdict::Refused { state: "pending", .. }),
            "{verdict:?}"
        );
        let PinResolution::Resolved(pin) = store.resolve(&id, true, "ops", "reviewed", 2).await.expect("resolve")
        else {
            panic!("not resolved")
        };
        assert_eq!(
            check(Some(&pin), "scale", "tool", "a1", Some("a1"), true),
            PinVerdict::Approved
        );
        // The server changes the tool: the new definition is pending, the old one approved.
        let changed = store.observe(&[seen("scale", "b2", false)], 3).await.expect("observe");
        let pin = &changed[0];
        assert_eq!(pin.current, "b2");
        assert_eq!(pin.approved().map(|d| d.digest.as_str()), Some("a1"));
        let approved = pin.approved().map(|d| d.digest.as_str());
        // An edge that still holds the old digest is refused too: the store saw the change.
        assert!(matches!(
            check(Some(pin), "scale", "tool", "a1", approved, true),
            PinVerdict::Refused { state: "changed", .. }
        ));
        assert!(matches!(
            check(Some(pin), "scale", "tool", "b2", approved, true),
            PinVerdict::Refused { state: "changed", .. }
        ));
        let rejected = pin.key.id_of("b2");
        assert!(matches!(
            store
                .resolve(&rejected, false, "ops", "exfiltrates", 4)
                .await
                .expect("resolve"),
            PinResolution::Resolved(_)
        ));
        let pins = store.pins(std::slice::from_ref(&pin.key)).await.expect("pins");
        let pin = pins[0].as_ref().expect("recorded");
        assert!(matches!(
            check(Some(pin), "scale", "tool", "b2", Some("a1"), true),
            PinVerdict::Refused { state: "rejected", .. }
        ));
        assert!(
            !pin.definition("b2").expect("kept").definition.is_empty(),
            "the text of the rejected definition listed now stays, for another review"
        );
        // Listing the rejected definition again does not make it pending again.
        let again = store.observe(&[seen("scale", "b2", false)], 5).await.expect("observe");
        assert_eq!(again[0].definition("b2").map(|d| d.state), Some(PinState::Rejected));
        // The server goes back to the approved definition: approved again.
        let back = store.observe(&[seen("scale", "a1", false)], 6).await.expect("observe");
        assert_eq!(
            check(Some(&back[0]), "scale", "tool", "a1", Some("a1"), true),
            PinVerdict::Approved
        );
        assert!(
            back[0].definition("b2").expect("kept").definition.is_empty(),
            "once another is listed, only the rejected one's digest is kept"
        );
        assert!(matches!(
            store.resolve(&id, true, "ops", "", 7).await.expect("resolve"),
            PinResolution::NotPending(_)
        ));
        assert_eq!(
            store.resolve("pin_nope", true, "ops", "", 7).await.expect("resolve"),
            PinResolution::NotFound
        );
    }

    #[tokio::test]
    async fn record_mode_approves_the_first_definition_only_and_names_are_bounded() {
        let store = MemoryPins::default();
        let pin = &store.observe(&[seen("get", "x", true)], 1).await.expect("observe")[0];
        assert_eq!(pin.approved().map(|d| d.digest.as_str()), Some("x"));
        let pin = &store.observe(&[seen("get", "y", true)], 2).await.expect("observe")[0];
        assert_eq!(pin.definition("y").map(|d| d.state), Some(PinState::Pending));
        for i in 0..10 {
            store
                .observe(&[seen("get", &format!("z{i}"), true)], 3 + i)
                .await
                .expect("observe");
        }
        let pin = &store.pins(std::slice::from_ref(&pin.key)).await.expect("pins")[0];
        let pin = pin.as_ref().expect("recorded");
        let pending = pin.definitions.iter().filter(|d| d.state == PinState::Pending).count();
        assert_eq!(pending, MAX_PENDING_PER_NAME);
        assert!(pin.approved().is_some(), "the approved definition is never dropped");
        assert_eq!(pin.current, "z9");
        assert!(pin.definition("z9").is_some(), "nor the current one");
        // A too-large definition is recorded rejected, without its text.
        let mut big = seen("big", "q", true);
        big.definition.clear();
        big.bytes = 2_000_000;
        let pin = &store.observe(&[big], 20).await.expect("observe")[0];
        assert_eq!(pin.definitions[0].state, PinState::Rejected);
        assert!(pin.definitions[0].reason.contains("2000000 bytes"));
        // Names are bounded per store.
        let many: Vec<Seen> = (0..MAX_PINNED).map(|i| seen(&format!("t{i}"), "d", true)).collect();
        let recorded = store.observe(&many, 30).await.expect("observe");
        assert_eq!(recorded.len(), MAX_PINNED - 2, "only what fits");
        assert_eq!(store.list().await.expect("list").len(), MAX_PINNED);
        // A full store still records a change to a name it holds.
        let changed = store
            .observe(&[seen("get", "w", true), seen("new", "n", true)], 31)
            .await
            .expect("observe");
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].current, "w");
    }
}
