//! Tool pinning in the decision service: records what the edges saw listed, checks a
//! definition's approval for lists and calls, and lets operators approve or reject
//! definitions (an audit record each, like approvals).
//!
//! Pin records are read through a small per-replica cache (`decision.pins_cache_ms`, Redis
//! only): what this replica writes replaces its cached copy at once; what other replicas or
//! operators elsewhere write is seen within the cache's time to live. An edge's own view is
//! never cached: a call names the digest its edge saw last, and a digest that is not the
//! approved one is refused whatever the cache holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_limiter::pins::{PinVerdict, check};
use tollgate_limiter::{Pin, PinKey, PinKind, PinResolution, PinState, Seen, StoreError};

use crate::engine::Engine;
use crate::proto::{self, PinCheck, Pinning, SubjectKind};

/// Names a replica caches pin records for at most.
const CACHE_CAPACITY: usize = 8192;
/// Most definitions one `ObservePins` may carry.
pub const MAX_OBSERVED: usize = 1000;
/// Longest definition accepted from an edge (an edge keeps at most its own
/// `pins_max_definition_bytes`, whose bound this is).
pub const MAX_DEFINITION_BYTES: usize = 1024 * 1024;

/// A name's record (none: never seen), and when it was read.
type Cached = (Option<Arc<Pin>>, Instant);

/// Pin records read from the store, per replica, for a short time.
pub(crate) struct PinCache {
    ttl: Duration,
    entries: Mutex<HashMap<PinKey, Cached>>,
}

impl PinCache {
    pub(crate) fn new(ttl: Duration) -> PinCache {
        PinCache {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PinKey, Cached>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &PinKey) -> Option<Option<Arc<Pin>>> {
        let entries = self.lock();
        let (pin, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| pin.clone())
    }

    fn put(&self, key: PinKey, pin: Option<Arc<Pin>>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (pin, Instant::now()));
    }
}

/// The pin kind of a subject kind (resource: a resource template).
pub fn pin_kind(kind: SubjectKind) -> PinKind {
    match kind {
        SubjectKind::Tool => PinKind::Tool,
        SubjectKind::Prompt => PinKind::Prompt,
        SubjectKind::Resource => PinKind::Template,
    }
}

fn subject_kind(kind: PinKind) -> SubjectKind {
    match kind {
        PinKind::Tool => SubjectKind::Tool,
        PinKind::Prompt => SubjectKind::Prompt,
        PinKind::Template => SubjectKind::Resource,
    }
}

fn noun(kind: PinKind) -> &'static str {
    match kind {
        PinKind::Tool => "tool",
        PinKind::Prompt => "prompt",
        PinKind::Template => "resource template",
    }
}

/// What a pin check found, for the decision span and explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinFinding {
    /// `approved`, `pending`, `changed`, `rejected`, `unknown` (never seen), or
    /// `unavailable` (the store did not answer).
    pub state: String,
    /// The digest checked (the edge's, or the store's last seen one).
    pub digest: String,
    /// Why not approved (empty when approved).
    pub reason: String,
    pub enforced: bool,
}

impl PinFinding {
    pub fn refuses(&self) -> bool {
        self.enforced && self.state != "approved"
    }
}

/// The state name of a definition, as the API and the console spell it.
pub fn state_name(state: PinState) -> &'static str {
    match state {
        PinState::Pending => "pending",
        PinState::Approved => "approved",
        PinState::Rejected => "rejected",
    }
}

/// One definition of `pin`, as the API carries it.
pub fn definition_message(pin: &Pin, digest: &str) -> Option<proto::PinDefinition> {
    let d = pin.definition(digest)?;
    let mut message = proto::PinDefinition {
        id: d.id.clone(),
        server: pin.key.server.clone(),
        name: pin.key.name.clone(),
        digest: d.digest.clone(),
        definition: d.definition.clone(),
        bytes: d.bytes,
        first_seen_ms: d.first_seen_ms,
        last_seen_ms: d.last_seen_ms,
        resolved_by: d.resolved_by.clone(),
        reason: d.reason.clone(),
        resolved_ms: d.resolved_ms,
        current: pin.current == d.digest,
        approved_digest: pin.approved().map(|a| a.digest.clone()).unwrap_or_default(),
        ..Default::default()
    };
    message.set_kind(subject_kind(pin.key.kind));
    message.set_state(match d.state {
        PinState::Pending => proto::PinState::Pending,
        PinState::Approved => proto::PinState::Approved,
        PinState::Rejected => proto::PinState::Rejected,
    });
    Some(message)
}

/// A definition as the operators' HTTP API writes it.
pub fn pin_json(d: &proto::PinDefinition) -> serde_json::Value {
    let state = match d.state() {
        proto::PinState::Pending => "pending",
        proto::PinState::Approved => "approved",
        proto::PinState::Rejected => "rejected",
        proto::PinState::Unspecified => "unknown",
    };
    serde_json::json!({
        "id": d.id,
        "server": d.server,
        "kind": pin_kind(d.kind()).as_str(),
        "name": d.name,
        "digest": d.digest,
        "definition": d.definition,
        "bytes": d.bytes,
        "state": state,
        "first_seen_ms": d.first_seen_ms,
        "last_seen_ms": d.last_seen_ms,
        "resolved_by": d.resolved_by,
        "reason": d.reason,
        "resolved_ms": d.resolved_ms,
        "current": d.current,
        "approved_digest": d.approved_digest,
    })
}

impl Engine {
    /// Reads the records of `keys`, through the cache.
    async fn pin_records(&self, keys: &[PinKey]) -> Result<Vec<Option<Arc<Pin>>>, StoreError> {
        let mut found: Vec<Option<Option<Arc<Pin>>>> =
            keys.iter().map(|k| self.pin_cache().and_then(|c| c.get(k))).collect();
        let missing: Vec<PinKey> = keys
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            let read = tokio::time::timeout(self.store_timeout(), self.pins().pins(&missing))
                .await
                .map_err(|_| StoreError::Rejected("the store did not answer in time".into()))??;
            let mut read = missing.into_iter().zip(read.into_iter().map(|p| p.map(Arc::new)));
            for slot in found.iter_mut().filter(|f| f.is_none()) {
                if let Some((key, pin)) = read.next() {
                    if let Some(cache) = self.pin_cache() {
                        cache.put(key, pin.clone());
                    }
                    *slot = Some(pin);
                }
            }
        }
        Ok(found.into_iter().map(Option::flatten).collect())
    }

    /// Checks the pin of `name` as `pin` (an edge's check) asks. `None` when the edge asked
    /// for no check (pinning off, or an older edge).
    pub async fn check_pin(
        &self,
        server: &str,
        kind: SubjectKind,
        name: &str,
        pin: Option<&PinCheck>,
    ) -> Option<PinFinding> {
        let pin = pin?;
        let mode = pin.mode();
        if mode == Pinning::Off {
            return None;
        }
        let key = PinKey {
            kind: pin_kind(kind),
            server: server.to_owned(),
            name: name.to_owned(),
        };
        let enforced = mode == Pinning::Enforce;
        let record = match self.pin_records(std::slice::from_ref(&key)).await {
            Ok(mut records) => records.pop().flatten(),
            Err(e) => {
                return Some(PinFinding {
                    state: "unavailable".into(),
                    digest: pin.digest.clone(),
                    reason: format!(
                        "Tollgate cannot read which definition of {} {name} is approved ({e}); try again shortly",
                        noun(key.kind)
                    ),
                    enforced,
                });
            }
        };
        Some(finding(record.as_deref(), &key, pin, enforced))
    }

    /// One line for explain: the pin state of `name` (its last listed definition's digest
    /// and state, and the approved one), as the store holds it.
    pub async fn pin_line(&self, server: &str, kind: SubjectKind, name: &str) -> String {
        let key = PinKey {
            kind: pin_kind(kind),
            server: server.to_owned(),
            name: name.to_owned(),
        };
        let short = |d: &str| d.get(..12).unwrap_or(d).to_owned();
        match self.pin_records(std::slice::from_ref(&key)).await {
            Err(e) => format!("pin:    unknown: the store did not answer ({e})"),
            Ok(records) => match records.into_iter().next().flatten() {
                None => format!(
                    "pin:    none recorded for {} {name} of {server} (pinning off, or never listed): with pinning = \"enforce\" its calls are refused",
                    noun(key.kind)
                ),
                Some(pin) => {
                    let current = pin.definition(&pin.current);
                    let state = current.map(|d| state_name(d.state)).unwrap_or("unknown");
                    let approved = pin
                        .approved()
                        .map(|d| format!("approved {}", short(&d.digest)))
                        .unwrap_or_else(|| "nothing approved".into());
                    format!(
                        "pin:    listed definition {} is {state} ({approved}); digest {}",
                        short(&pin.current),
                        pin.current
                    )
                }
            },
        }
    }

    /// Records definitions an edge saw listed.
    pub async fn observe_pins(&self, request: &proto::ObservePinsRequest) -> Result<(), String> {
        if request.definitions.len() > MAX_OBSERVED {
            return Err(format!("at most {MAX_OBSERVED} definitions at once"));
        }
        tollgate_api::check_subject(SubjectKind::Tool, &request.server).map_err(|e| format!("server: {e}"))?;
        let kind = pin_kind(request.kind());
        let mut seen = Vec::with_capacity(request.definitions.len());
        for d in &request.definitions {
            if !tollgate_api::definitions::is_digest(&d.digest) {
                return Err(format!("definition of {:?}: not a SHA-256 digest", d.name));
            }
            if let Err(e) = tollgate_api::definitions::check_name(&d.name) {
                // One bad name (an edge of another version) does not keep the rest from being
                // recorded.
                tracing::warn!(server = ?request.server, "a reported definition is skipped: {e}");
                continue;
            }
            if d.definition.len() > MAX_DEFINITION_BYTES {
                return Err(format!(
                    "definition of {:?}: more than {MAX_DEFINITION_BYTES} bytes",
                    d.name
                ));
            }
            if !d.definition.is_empty() && tollgate_api::definitions::digest_of(&d.definition) != d.digest {
                return Err(format!("definition of {:?}: its digest does not match it", d.name));
            }
            seen.push(Seen {
                key: PinKey {
                    kind,
                    server: request.server.clone(),
                    name: d.name.clone(),
                },
                digest: d.digest.clone(),
                definition: d.definition.clone(),
                bytes: d.bytes.max(d.definition.len() as u64),
                approve_first: request.mode() == Pinning::Record,
            });
        }
        let now = tollgate_limiter::wall_clock_ms();
        let pins = tokio::time::timeout(self.store_timeout(), self.pins().observe(&seen, now))
            .await
            .map_err(|_| "the store did not answer in time".to_owned())?
            .map_err(|e| format!("the store could not record the definitions: {e}"))?;
        for pin in pins {
            let current = pin.definition(&pin.current).map(|d| d.state);
            if current == Some(PinState::Pending) && pin.definition(&pin.current).map(|d| d.first_seen_ms) == Some(now)
            {
                tracing::warn!(
                    target: "tollgate::audit",
                    server = ?pin.key.server,
                    kind = pin.key.kind.as_str(),
                    name = ?pin.key.name,
                    digest = %pin.current,
                    approved = ?pin.approved().map(|d| d.digest.as_str()),
                    "a definition awaits review"
                );
            }
            if let Some(cache) = self.pin_cache() {
                cache.put(pin.key.clone(), Some(Arc::new(pin)));
            }
        }
        Ok(())
    }

    /// Every recorded definition, pending first.
    pub async fn list_pins(&self) -> Result<Vec<proto::PinDefinition>, StoreError> {
        let pins = self.pins().list().await?;
        let mut all: Vec<proto::PinDefinition> = pins
            .iter()
            .flat_map(|pin| {
                pin.definitions
                    .iter()
                    .filter_map(|d| definition_message(pin, &d.digest))
            })
            .collect();
        all.sort_by_key(|d| {
            (
                d.state != proto::PinState::Pending as i32,
                d.server.clone(),
                d.name.clone(),
            )
        });
        Ok(all)
    }

    /// Approves or rejects definitions as `operator`: each is an audit record (a
    /// `tollgate.pin` span and a `tollgate::audit` event).
    pub async fn resolve_pins(
        &self,
        ids: &[String],
        all_pending: bool,
        approve: bool,
        operator: &str,
        reason: &str,
    ) -> Result<(Vec<proto::PinDefinition>, Vec<String>), StoreError> {
        let mut ids: Vec<String> = ids.to_vec();
        if all_pending {
            for pin in self.pins().list().await? {
                // The definition each name is listed with now, if it is pending: approving every
                // pending definition of a name would leave whichever came last approved.
                ids.extend(
                    pin.definitions
                        .iter()
                        .filter(|d| d.state == PinState::Pending && d.digest == pin.current)
                        .map(|d| d.id.clone()),
                );
            }
        }
        let outcome = if approve { "approved" } else { "rejected" };
        let mut resolved = Vec::new();
        let mut not_resolved = Vec::new();
        for id in ids {
            let span = tracing::info_span!(
                target: "tollgate::audit",
                "tollgate.pin",
                tollgate.pin.id = ?id,
                tollgate.pin.operator = %operator,
                tollgate.pin.outcome = outcome,
                tollgate.pin.reason = ?reason,
                tollgate.server = tracing::field::Empty,
                tollgate.pin.name = tracing::field::Empty,
                tollgate.pin.digest = tracing::field::Empty,
            );
            let now = tollgate_limiter::wall_clock_ms();
            let answer =
                tracing::Instrument::instrument(self.pins().resolve(&id, approve, operator, reason, now), span.clone())
                    .await?;
            match answer {
                PinResolution::Resolved(pin) => {
                    let digest = pin
                        .definitions
                        .iter()
                        .find(|d| d.id == id)
                        .map(|d| d.digest.clone())
                        .unwrap_or_default();
                    span.record("tollgate.server", pin.key.server.as_str());
                    span.record("tollgate.pin.name", pin.key.name.as_str());
                    span.record("tollgate.pin.digest", digest.as_str());
                    span.in_scope(|| {
                        tracing::info!(
                            target: "tollgate::audit",
                            pin_id = %id,
                            operator = %operator,
                            outcome,
                            reason = ?reason,
                            server = ?pin.key.server,
                            kind = pin.key.kind.as_str(),
                            name = ?pin.key.name,
                            digest = %digest,
                            "pin resolved"
                        )
                    });
                    self.journal_pin(&pin, &digest, approve, operator, reason, now);
                    if let Some(message) = definition_message(&pin, &digest) {
                        resolved.push(message);
                    }
                    if let Some(cache) = self.pin_cache() {
                        cache.put(pin.key.clone(), Some(Arc::new(pin)));
                    }
                }
                PinResolution::NotFound | PinResolution::NotPending(_) => not_resolved.push(id),
            }
        }
        Ok((resolved, not_resolved))
    }
}

impl Engine {
    /// An operator's pin resolution as a journal record (when a journal is kept): verdict
    /// `PIN_APPROVED` or `PIN_REJECTED`, rule `pins`, the operator as the agent, the name as
    /// the tool, the definition's digest. Kept in the hash chain for auditors (`tollgate
    /// audit export`, `verify`); not exported as a decision span (the `tollgate.pin` span is).
    fn journal_pin(&self, pin: &Pin, digest: &str, approve: bool, operator: &str, reason: &str, now_ms: u64) {
        let Some(journal) = self.journal() else { return };
        let outcome = if approve { "approved" } else { "rejected" };
        let entry = crate::audit::JournalRecord {
            decision: crate::DecisionRecord {
                id: uuid::Uuid::now_v7().to_string(),
                at_ms: now_ms,
                replica: self.tail().map(|t| t.replica().to_owned()).unwrap_or_default(),
                verdict: if approve { "PIN_APPROVED" } else { "PIN_REJECTED" }.into(),
                rule: "pins".into(),
                reason: reason.to_owned(),
                method: "pins/resolve".into(),
                server: pin.key.server.clone(),
                tool: pin.key.name.clone(),
                agent: operator.to_owned(),
                pin_state: outcome.into(),
                pin_digest: digest.to_owned(),
                ..Default::default()
            },
            mcp_method: "pins/resolve".into(),
            start_ns: now_ms.saturating_mul(1_000_000),
            end_ns: now_ms.saturating_mul(1_000_000),
            ..Default::default()
        };
        journal.append_later(crate::audit::encode_record(&entry));
    }
}

/// The check of `pin` (an edge's) against `record`.
fn finding(record: Option<&Pin>, key: &PinKey, pin: &PinCheck, enforced: bool) -> PinFinding {
    let approved = if pin.locked {
        (!pin.locked_digest.is_empty()).then_some(pin.locked_digest.as_str())
    } else {
        record.and_then(Pin::approved).map(|d| d.digest.as_str())
    };
    let digest = if pin.digest.is_empty() {
        record.map(|r| r.current.clone()).unwrap_or_default()
    } else {
        pin.digest.clone()
    };
    match check(record, &key.name, noun(key.kind), &pin.digest, approved, !pin.locked) {
        PinVerdict::Approved => PinFinding {
            state: "approved".into(),
            digest,
            reason: String::new(),
            enforced,
        },
        PinVerdict::Refused { state, mut reason } => {
            if pin.locked {
                reason = reason.replace(
                    "an operator must review it",
                    "approve it by adding its digest to the lockfile (edge.pins_file)",
                );
            }
            PinFinding {
                state: state.into(),
                digest,
                reason,
                enforced,
            }
        }
    }
}

/// Which entries of a list pinning lets a caller see: `Ok(visible)` per entry, in order.
impl Engine {
    pub(crate) async fn pins_visible(&self, server: &str, kind: SubjectKind, tools: &[proto::Tool]) -> Vec<bool> {
        let checked: Vec<usize> = (0..tools.len())
            .filter(|&i| tools[i].pin.as_ref().is_some_and(|p| p.mode() == Pinning::Enforce))
            .collect();
        let mut visible = vec![true; tools.len()];
        if checked.is_empty() {
            return visible;
        }
        let keys: Vec<PinKey> = checked
            .iter()
            .map(|&i| PinKey {
                kind: pin_kind(kind),
                server: server.to_owned(),
                name: tools[i].name.clone(),
            })
            .collect();
        match self.pin_records(&keys).await {
            Ok(records) => {
                for ((&i, key), record) in checked.iter().zip(&keys).zip(&records) {
                    if let Some(pin) = &tools[i].pin {
                        visible[i] = !finding(record.as_deref(), key, pin, true).refuses();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(server = ?server, "pin records could not be read, so pinned entries are hidden: {e}");
                for &i in &checked {
                    visible[i] = false;
                }
            }
        }
        visible
    }
}
