//! Approval records for `require_approval` rules: `pending → approved | denied | expired`,
//! then `consumed`. One record is bound to one call shape (the caller, server, tool and a
//! digest of the exact arguments): an identical call finds it, any other call asks anew.
//!
//! Every state change is atomic: one mutex in memory, one Lua script run in Redis (all
//! approval keys share the hash tag `{approvals}`, so a Redis Cluster keeps them in one
//! slot). Records stay listed for [`RETENTION`] after they expire, so operators and agents
//! can see what happened to them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::StoreError;

/// How long a record stays after its expiry, for listing and for telling an agent that its
/// approval was denied or expired.
pub const RETENTION: Duration = Duration::from_secs(3600);

/// Arguments longer than this are stored cut short (the digest still binds the whole).
pub const MAX_STORED_ARGUMENTS: usize = 64 * 1024;

/// A caller's subject or issuer is stored cut at this length (the digest binds the whole).
pub const MAX_STORED_CALLER: usize = 1024;

/// Records a listing returns at most (the newest).
pub const MAX_LISTED: usize = 1000;

/// A wake-up that names no approval: some resolutions may have been missed (a
/// subscription was lost and made again), so every waiter checks its approval.
pub const RECHECK_ALL: &str = "*";

/// Wake-ups buffered per waiter; one that falls further behind rechecks its approval.
pub(crate) const WAKEUP_BUFFER: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
}

/// One approval record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Unguessable: `apr_` and 128 random bits.
    pub id: String,
    pub status: ApprovalStatus,
    pub server: String,
    pub tool: String,
    pub grant: String,
    pub agent: String,
    /// The JWT `sub` and `iss` of the caller who asked (absent for static keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The call's arguments as JSON text (cut at [`MAX_STORED_ARGUMENTS`]).
    pub arguments: String,
    /// What the approval is bound to: SHA-256 of the caller (the grant, and with the rule's
    /// default `bind = "agent"` its agent, JWT issuer and subject), server, tool and exact
    /// arguments.
    pub digest: String,
    /// The policy rule that asked for approval.
    pub rule: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
    /// The operator who approved or denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// W3C `traceparent` of the operator's `tollgate.approval` span, so the decision that
    /// consumes the approval can link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_trace: Option<String>,
}

impl Approval {
    /// The record as it stands at `now_ms`: pending or approved past its expiry is expired.
    pub fn as_seen_at(mut self, now_ms: u64) -> Approval {
        if matches!(self.status, ApprovalStatus::Pending | ApprovalStatus::Approved) && now_ms >= self.expires_ms {
            self.status = ApprovalStatus::Expired;
        }
        self
    }
}

/// A call that needs approval.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub server: String,
    pub tool: String,
    pub grant: String,
    pub agent: String,
    /// The caller's JWT `sub` and `iss`; empty for static keys.
    pub subject: String,
    pub issuer: String,
    pub arguments: String,
    pub digest: String,
    pub rule: String,
    pub timeout: Duration,
    /// Most approvals one grant may have pending at once; a call that would ask for one
    /// more is refused ([`Claim::TooMany`]), so an agent cannot flood the operators' queue
    /// or the store.
    pub max_pending: usize,
}

/// Pending approvals one grant may have at once unless configured otherwise.
pub const DEFAULT_MAX_PENDING_PER_GRANT: usize = 100;

impl NewApproval {
    pub(crate) fn record(&self, id: String, now_ms: u64) -> Approval {
        let arguments = cut_short(&self.arguments, MAX_STORED_ARGUMENTS);
        Approval {
            id,
            status: ApprovalStatus::Pending,
            server: self.server.clone(),
            tool: self.tool.clone(),
            grant: self.grant.clone(),
            agent: self.agent.clone(),
            subject: (!self.subject.is_empty()).then(|| cut_short(&self.subject, MAX_STORED_CALLER)),
            issuer: (!self.issuer.is_empty()).then(|| cut_short(&self.issuer, MAX_STORED_CALLER)),
            arguments,
            digest: self.digest.clone(),
            rule: self.rule.clone(),
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(duration_ms(self.timeout)),
            resolved_ms: None,
            resolved_by: None,
            reason: None,
            resolved_trace: None,
        }
    }
}

/// What a call needing approval finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Waiting for an operator; `created` when this call asked for it.
    Pending { approval: Approval, created: bool },
    /// Approved, and now consumed by this call: it may proceed (single use).
    Approved(Approval),
    /// An operator denied it; the next identical call asks anew.
    Denied(Approval),
    /// Nobody decided in time; the next identical call asks anew.
    Expired(Approval),
    /// The grant already has `max_pending` approvals pending: nothing was created.
    TooMany,
}

/// What resolving an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Resolved(Approval),
    NotFound,
    /// Not pending any more (already resolved, consumed or expired).
    NotPending(Approval),
}

/// Where approval records live: the memory store for `tollgate up`, Redis for a cluster.
#[async_trait::async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// The approval bound to this call's shape: consumes it when approved, asks anew (a new
    /// pending record) when there is none or the last one was denied, expired or consumed.
    async fn claim(&self, call: &NewApproval) -> Result<Claim, StoreError>;

    /// Approves (`approve`) or denies a pending approval, as operator `by`; `trace` is the
    /// `traceparent` of the operator's audit span (empty when not traced).
    async fn resolve(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: &str,
        trace: &str,
    ) -> Result<Resolution, StoreError>;

    /// Every record, newest first (at most [`MAX_LISTED`]).
    async fn list(&self) -> Result<Vec<Approval>, StoreError>;

    /// One record as it stands now (pending past its expiry reads as expired).
    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError>;

    /// How many approvals are pending (and unexpired) in the whole store, every grant's.
    async fn count_pending(&self) -> Result<usize, StoreError>;

    /// Wake-ups: the id of every approval resolved from now on, by any replica of the
    /// cluster, and [`RECHECK_ALL`] when some may have been missed. Delivery is at most
    /// once: a receiver that lags behind must recheck what it waits for, and a waiter
    /// checks its record after subscribing (a resolution just before is not announced
    /// again). Expiry is not announced; waiters keep their own timer.
    fn wakeups(&self) -> broadcast::Receiver<String>;

    /// Puts back an approval that [`ApprovalStore::claim`] consumed for a call that did not
    /// go through after all (its limits refused it, or the answer came too late): approved
    /// again, and found by the next identical call. Does nothing unless the record is
    /// consumed and unexpired, or when another approval is bound to the call meanwhile.
    async fn restore(&self, approval: &Approval) -> Result<(), StoreError>;
}

/// `text` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub fn cut_short(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Whether `id` has the shape of an approval id (`apr_` and hex): anything else names no
/// record, and never reaches a store key.
pub fn is_approval_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .strip_prefix("apr_")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(crate) fn new_id() -> String {
    format!("apr_{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Wall-clock time in milliseconds since the Unix epoch (approval times are shown to people).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// Approvals in this process (`tollgate up`).
pub struct MemoryApprovals {
    state: Mutex<Approvals>,
    wakeups: broadcast::Sender<String>,
}

impl Default for MemoryApprovals {
    fn default() -> Self {
        MemoryApprovals {
            state: Mutex::default(),
            wakeups: broadcast::channel(WAKEUP_BUFFER).0,
        }
    }
}

#[derive(Default)]
struct Approvals {
    records: HashMap<String, Approval>,
    /// digest → id of the record an identical call finds.
    bound: HashMap<String, String>,
}

impl MemoryApprovals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Approvals> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Approvals {
    fn sweep(&mut self, now: u64) {
        let retention = duration_ms(RETENTION);
        self.records.retain(|_, r| now < r.expires_ms.saturating_add(retention));
        let records = &self.records;
        self.bound.retain(|_, id| records.contains_key(id));
    }
}

#[async_trait::async_trait]
impl ApprovalStore for MemoryApprovals {
    async fn claim(&self, call: &NewApproval) -> Result<Claim, StoreError> {
        let now = wall_clock_ms();
        let mut state = self.lock();
        state.sweep(now);
        if let Some(id) = state.bound.get(&call.digest).cloned()
            && let Some(record) = state.records.get_mut(&id)
        {
            let live = now < record.expires_ms;
            let found = match record.status {
                ApprovalStatus::Pending if live => {
                    return Ok(Claim::Pending {
                        approval: record.clone(),
                        created: false,
                    });
                }
                ApprovalStatus::Approved if live => {
                    record.status = ApprovalStatus::Consumed;
                    Some(Claim::Approved(record.clone()))
                }
                ApprovalStatus::Pending | ApprovalStatus::Approved => {
                    record.status = ApprovalStatus::Expired;
                    Some(Claim::Expired(record.clone()))
                }
                ApprovalStatus::Denied => Some(Claim::Denied(record.clone())),
                ApprovalStatus::Expired => Some(Claim::Expired(record.clone())),
                ApprovalStatus::Consumed => None,
            };
            state.bound.remove(&call.digest);
            if let Some(found) = found {
                return Ok(found);
            }
        }
        let pending = state
            .records
            .values()
            .filter(|r| r.grant == call.grant && r.status == ApprovalStatus::Pending && now < r.expires_ms)
            .count();
        if pending >= call.max_pending {
            return Ok(Claim::TooMany);
        }
        let approval = call.record(new_id(), now);
        state.bound.insert(call.digest.clone(), approval.id.clone());
        state.records.insert(approval.id.clone(), approval.clone());
        Ok(Claim::Pending {
            approval,
            created: true,
        })
    }

    async fn resolve(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: &str,
        trace: &str,
    ) -> Result<Resolution, StoreError> {
        let now = wall_clock_ms();
        let mut state = self.lock();
        let Some(record) = state.records.get_mut(id) else {
            return Ok(Resolution::NotFound);
        };
        if record.status == ApprovalStatus::Pending && now >= record.expires_ms {
            record.status = ApprovalStatus::Expired;
        }
        if record.status != ApprovalStatus::Pending {
            return Ok(Resolution::NotPending(record.clone()));
        }
        record.status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        record.resolved_ms = Some(now);
        record.resolved_by = Some(by.to_owned());
        record.reason = (!reason.is_empty()).then(|| reason.to_owned());
        record.resolved_trace = (!trace.is_empty()).then(|| trace.to_owned());
        let resolved = record.clone();
        drop(state);
        // Nobody waiting is fine: there is nothing to wake.
        let _ = self.wakeups.send(resolved.id.clone());
        Ok(Resolution::Resolved(resolved))
    }

    async fn restore(&self, approval: &Approval) -> Result<(), StoreError> {
        let now = wall_clock_ms();
        let mut state = self.lock();
        let Some(record) = state.records.get_mut(&approval.id) else {
            return Ok(());
        };
        if record.status != ApprovalStatus::Consumed || now >= record.expires_ms {
            return Ok(());
        }
        let digest = record.digest.clone();
        if state.bound.contains_key(&digest) {
            return Ok(());
        }
        if let Some(record) = state.records.get_mut(&approval.id) {
            record.status = ApprovalStatus::Approved;
        }
        state.bound.insert(digest, approval.id.clone());
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let now = wall_clock_ms();
        Ok(self.lock().records.get(id).map(|r| r.clone().as_seen_at(now)))
    }

    fn wakeups(&self) -> broadcast::Receiver<String> {
        self.wakeups.subscribe()
    }

    async fn count_pending(&self) -> Result<usize, StoreError> {
        let now = wall_clock_ms();
        Ok(self
            .lock()
            .records
            .values()
            .filter(|r| r.status == ApprovalStatus::Pending && now < r.expires_ms)
            .count())
    }

    async fn list(&self) -> Result<Vec<Approval>, StoreError> {
        let now = wall_clock_ms();
        let mut state = self.lock();
        state.sweep(now);
        let mut all: Vec<Approval> = state.records.values().map(|r| r.clone().as_seen_at(now)).collect();
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.id.cmp(&b.id)));
        all.truncate(MAX_LISTED);
        Ok(all)
    }
}
