//! Rate-limit counters: the [`CounterStore`] trait every backend implements, and the
//! in-memory backend used by `tollgate up`.
//!
//! One call to [`CounterStore::acquire`] decides every counter of one tool call at once:
//! either all of them take their hit or none does, so a refused call consumes nothing. The
//! store keeps its own time, so callers with skewed clocks agree, and remembers recent
//! request ids, so a retried request never takes a second hit.

mod approvals;
mod broadcast;
mod memory;
pub mod pins;
mod redis_store;
mod tasks;

use std::time::Duration;

pub use approvals::{
    Approval, ApprovalStatus, ApprovalStore, Claim, DEFAULT_MAX_PENDING_PER_GRANT, MAX_LISTED, MAX_STORED_ARGUMENTS,
    MemoryApprovals, NewApproval, RECHECK_ALL, RETENTION, Resolution, cut_short, is_approval_id, wall_clock_ms,
};
pub use broadcast::{BROADCAST_BUFFER, Broadcast, MAX_BROADCAST_BYTES, MemoryBroadcast};
pub use memory::{Clock, DEFAULT_MAX_KEYS_PER_COUNTER, ManualClock, MemoryStore, SystemClock};
pub use pins::{MemoryPins, Pin, PinKey, PinKind, PinResolution, PinState, PinStore, Seen};
pub use redis_store::{ACQUIRE_SCRIPT, RedisSettings, RedisStore, Secret};
pub use tasks::{
    DEFAULT_TASK_TTL, MAX_TASK_ID_BYTES, MAX_TASK_TTL, MAX_TASKS_PER_GRANT, MAX_TASKS_PER_QUERY, MemoryTasks,
    TaskRecord, TaskStore, task_ttl,
};

/// How a counter counts hits within its window.
///
/// A counter's algorithm may change between calls (a policy reload): each store then
/// carries the hits it holds over to the new algorithm, never handing out a fresh budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Remembers every admitted hit: exact, memory bounded by `max` per key.
    SlidingLog,
    /// Current and previous fixed bucket, the previous weighted by how much of it the
    /// sliding window still covers: O(1) memory per key, approximate.
    SlidingWindow,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
        })
    }
}

/// One counter a call must take a hit on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The counter's concrete key (counter name plus scope values).
    pub key: String,
    /// Counters with the same tag are stored together (one Redis Cluster slot), so a call
    /// whose counters share a tag is decided by one atomic script.
    pub tag: String,
    pub window: Duration,
    pub max: u64,
    /// How many hits this call takes.
    pub cost: u64,
    pub algorithm: Algorithm,
}

/// The longest window a store accepts, in microseconds: 2^53, the largest integer Lua's
/// numbers (doubles) hold exactly (about 285 years). Policies allow far less (366 days);
/// this bound keeps every conversion exact even for hits built by other callers.
pub const MAX_WINDOW_MICROS: u64 = 1 << 53;

/// The largest `max` (and so `cost`) a `sliding_log` counter may have: the log keeps one
/// entry per admitted hit unit (a sorted-set member in Redis), so this bounds a key's
/// memory (about 10 MB in Redis) and the work of one script run.
pub const MAX_SLIDING_LOG_MAX: u64 = 100_000;

/// The largest `max` and `cost` of any counter: 2^53, so that every count is exact in
/// Lua's numbers.
pub const MAX_COUNT: u64 = 1 << 53;

/// The order in which a store takes a call's hits, slot group by slot group (tag by tag):
/// counters keyed by a value the caller chooses (`counter=NAME`: session, tool, argument
/// scopes) first, then grant-, agent- and server-scoped ones (`grant=…`, by tag), `global`
/// last. A store stops at the first group that refuses, so only groups before the last can
/// hold hits that are given back; `global` never does when other groups come before it.
pub fn tag_order(tag: &str) -> (u8, &str) {
    let rank = if tag.starts_with("counter=") {
        0
    } else if tag == "global" {
        2
    } else {
        1
    };
    (rank, tag)
}

/// A counter key's counter name: the key up to its first `/`.
pub(crate) fn counter_name(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

impl Hit {
    /// The counter's name: its key up to the first `/`.
    pub fn counter_name(&self) -> &str {
        counter_name(&self.key)
    }

    /// The window in microseconds, checked: never wrapped, never zero, never inexact in Lua.
    pub fn window_micros(&self) -> Result<u64, StoreError> {
        match u64::try_from(self.window.as_micros()) {
            Ok(us) if us > 0 && us <= MAX_WINDOW_MICROS => Ok(us),
            _ => Err(StoreError::Rejected(format!(
                "counter \"{}\": window {:?} is outside what a store accepts (1 µs to 2^53 µs)",
                self.counter_name(),
                self.window
            ))),
        }
    }

    /// Checks that a store can count this hit exactly: window, `max` and `cost` in range.
    pub fn check(&self) -> Result<(), StoreError> {
        self.window_micros()?;
        let largest = match self.algorithm {
            Algorithm::SlidingLog => MAX_SLIDING_LOG_MAX,
            Algorithm::SlidingWindow => MAX_COUNT,
        };
        if self.max == 0 || self.max > largest || self.cost == 0 || self.cost > largest {
            return Err(StoreError::Rejected(format!(
                "counter \"{}\": max {} and cost {} must each be between 1 and {largest} for {}",
                self.counter_name(),
                self.max,
                self.cost,
                self.algorithm
            )));
        }
        Ok(())
    }

    /// Checks every hit of a call before a store takes any of them.
    pub fn check_all(hits: &[Hit]) -> Result<(), StoreError> {
        hits.iter().try_for_each(Hit::check)
    }
}

/// What one counter looked like when the call was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterStatus {
    /// Hits still available in the window: after this call when it was admitted; when it
    /// was refused, as they are (a refused call takes nothing from any counter).
    pub remaining: u64,
    /// Time until the window holds no hits at all.
    pub reset_after: Duration,
    /// `None` when this counter had room; otherwise how long until it would have room for
    /// this call's cost.
    pub retry_after: Option<Duration>,
}

impl CounterStatus {
    pub fn exceeded(&self) -> bool {
        self.retry_after.is_some()
    }
}

/// The answer for a whole call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// True when every counter took its hit; false when none did.
    pub admitted: bool,
    /// One status per [`Hit`], in the same order.
    pub counters: Vec<CounterStatus>,
    /// Where the store recorded the hits, for [`CounterStore::release`].
    pub receipt: Receipt,
    /// Admitted, but the store could not confirm that the hits are on as many replicas as
    /// configured (Redis `store.replica_ack`): why. The caller handles it as a store error
    /// (giving the hits back when the call is refused for it).
    pub unreplicated: Option<String>,
}

/// What a store needs to give an admission's hits back: when they were recorded (memory:
/// the store's time in ns) or, per hit, in which bucket (Redis). Opaque outside the store
/// that issued it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    pub(crate) at: i64,
    pub(crate) buckets: Vec<i64>,
}

impl Admission {
    /// How long until the refused call would be admitted by every counter that refused it.
    pub fn retry_after(&self) -> Option<Duration> {
        self.counters.iter().filter_map(|c| c.retry_after).max()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
    #[error("counter store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("counter store rejected the request: {0}")]
    Rejected(String),
    #[error("invalid counter store configuration: {0}")]
    Config(String),
    #[error("counter store full: {0}")]
    Full(String),
}

/// A place where rate-limit counters live.
#[async_trait::async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// Checks every hit and, only if all of them have room, records all of them.
    ///
    /// Idempotent per `request_id`: a second call with the same id (a retry) within 30 s
    /// returns the first call's admission and records nothing.
    async fn acquire(&self, request_id: &str, hits: &[Hit]) -> Result<Admission, StoreError>;

    /// Gives back the hits an admitted [`CounterStore::acquire`] took, for a call that was
    /// refused after all (the store answered after the caller's deadline). `hits` and
    /// `admission` are the acquire's. Does nothing for a refused admission; releasing twice
    /// with the same non-empty request id gives back once. The request id's remembered
    /// answer becomes "refused", so a retry of the call is not admitted on the strength of
    /// hits that were given back.
    async fn release(&self, request_id: &str, hits: &[Hit], admission: &Admission) -> Result<(), StoreError>;

    /// Each counter as it stands, nothing taken or recorded: `remaining` is the hit's `max`
    /// less the hits that count now (at least 0), as a refused call reports it. Ask with the
    /// window and algorithm the counter is kept with: a counter asked another way is carried
    /// over to it in place, as [`CounterStore::acquire`] would (a policy reload).
    async fn read(&self, hits: &[Hit]) -> Result<Vec<CounterStatus>, StoreError>;

    /// A short name for logs and metrics, e.g. `memory`.
    fn kind(&self) -> &'static str;

    /// True for a store in this process that answers without I/O (the memory store): a call
    /// to it is never late, so callers need no deadline or background task for it.
    fn answers_at_once(&self) -> bool {
        false
    }

    /// True when an admission may be answered as [`Admission::unreplicated`] and its hits
    /// given back (Redis with `store.replica_ack`): any counter can then hold hits for a
    /// moment that are given back, so no refusal proves a counter full ("full until" is off).
    fn may_give_back_admissions(&self) -> bool {
        false
    }
}
