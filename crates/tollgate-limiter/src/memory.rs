//! The in-memory counter store: one process, no dependencies. `tollgate up` uses it, and
//! it is the reference the Redis store is compared against.
//!
//! All counters sit behind one mutex: a call's check-then-record is trivially atomic, and
//! the critical section is a few hash lookups, far cheaper than the network hop around it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Admission, Algorithm, CounterStatus, CounterStore, Hit, Receipt, StoreError, counter_name};

/// How often expired counters and remembered request ids are swept away.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time between two sweeps when a counter is at its key cap.
const FORCED_SWEEP_GAP: Duration = Duration::from_millis(100);
/// How long a request id is remembered, so that a retry of the same decision (an edge failing
/// over to another replica within its deadline) is not charged twice. Retries come within
/// the edge's decision deadline (1 s by default), so this is ample, and independent of the
/// window: keeping every id for an hour-long window would cost memory per call for an hour.
pub(crate) const REQUEST_MEMORY: Duration = Duration::from_secs(30);

/// The store's time source: a monotonic offset from an arbitrary start.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// Real time, from a monotonic clock.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Time that moves only when told to: for tests and simulations.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    /// Steps time back, as a wall clock can (NTP, a VM restored from a snapshot): the
    /// store's own clock is monotonic, but its counters must not rely on that.
    pub fn rewind(&self, by: Duration) {
        let by = by.as_micros() as u64;
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| Some(now.saturating_sub(by)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::SeqCst))
    }
}

impl Clock for Arc<ManualClock> {
    fn now(&self) -> Duration {
        self.as_ref().now()
    }
}

/// Live keys one counter may have by default (`store.max_keys_per_counter`).
pub const DEFAULT_MAX_KEYS_PER_COUNTER: usize = 100_000;

/// Counters in this process's memory.
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Box<dyn Clock>,
    max_keys_per_counter: usize,
}

#[derive(Default)]
struct State {
    counters: HashMap<String, Counter>,
    /// Live keys per counter name (the key up to its first `/`): scope values come from
    /// callers, so how many keys a counter may have is bounded by configuration.
    keys_per_counter: HashMap<String, usize>,
    requests: HashMap<String, (Admission, Duration)>,
    next_sweep: Duration,
}

enum Counter {
    Log(SlidingLog),
    Window(SlidingWindow),
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(SystemClock::default())
    }
}

impl MemoryStore {
    pub fn new(clock: impl Clock) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            clock: Box::new(clock),
            max_keys_per_counter: DEFAULT_MAX_KEYS_PER_COUNTER,
        }
    }

    /// Caps the live keys of each counter; a call that would add one more is a store error
    /// (decided by the rule's `on_store_error`) until old keys expire.
    pub fn with_max_keys_per_counter(mut self, max: usize) -> Self {
        self.max_keys_per_counter = max;
        self
    }

    /// Number of live counter keys (for tests and memory measurements).
    pub fn len(&self) -> usize {
        self.lock().counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a counter half-updated (updates happen
        // only after every check passed), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synchronous core of [`CounterStore::acquire`].
    pub fn acquire_now(&self, request_id: &str, hits: &[Hit]) -> Result<Admission, StoreError> {
        Hit::check_all(hits)?;
        let now = self.clock.now();
        let mut state = self.lock();
        if now >= state.next_sweep {
            state.sweep(now);
            state.next_sweep = now + SWEEP_INTERVAL;
        }
        if let Some((admission, expires)) = state.requests.get(request_id)
            && *expires > now
        {
            return Ok(admission.clone());
        }
        for hit in hits {
            let name = counter_name(&hit.key);
            let full = |state: &State| {
                !state.counters.contains_key(&hit.key)
                    && state.keys_per_counter.get(name).copied().unwrap_or(0) >= self.max_keys_per_counter
            };
            // Expired keys may not have been swept yet: sweep early, but at most every
            // FORCED_SWEEP_GAP, so calls at the cap cannot make every call a full sweep.
            if full(&state) && now + SWEEP_INTERVAL >= state.next_sweep + FORCED_SWEEP_GAP {
                state.sweep(now);
                state.next_sweep = now + SWEEP_INTERVAL;
            }
            if full(&state) {
                return Err(StoreError::Full(format!(
                    "counter \"{name}\" already has {} live keys (store.max_keys_per_counter)",
                    self.max_keys_per_counter
                )));
            }
        }

        let mut counters = Vec::with_capacity(hits.len());
        for hit in hits {
            let status = match state.counters.get_mut(&hit.key) {
                Some(counter) => {
                    counter.convert(now, hit);
                    match counter {
                        Counter::Log(log) => log.check(now, hit),
                        Counter::Window(w) => w.check(now, hit),
                    }
                }
                // A counter with no hits: refused only when the cost exceeds the max, and
                // then all of its room is still there.
                None if hit.cost > hit.max => CounterStatus {
                    remaining: hit.max,
                    reset_after: Duration::ZERO,
                    retry_after: Some(Duration::ZERO),
                },
                None => CounterStatus {
                    remaining: hit.max - hit.cost,
                    reset_after: hit.window,
                    retry_after: None,
                },
            };
            counters.push(status);
        }
        let admitted = counters.iter().all(|c| !c.exceeded());
        if !admitted {
            // Nothing is taken, so a counter that had room keeps all of it.
            for (status, hit) in counters.iter_mut().zip(hits) {
                if !status.exceeded() {
                    status.remaining += hit.cost;
                }
            }
        }
        if admitted {
            for hit in hits {
                if !state.counters.contains_key(&hit.key) {
                    *state
                        .keys_per_counter
                        .entry(counter_name(&hit.key).to_owned())
                        .or_default() += 1;
                }
                let counter = state
                    .counters
                    .entry(hit.key.clone())
                    .or_insert_with(|| match hit.algorithm {
                        Algorithm::SlidingLog => Counter::Log(SlidingLog::default()),
                        Algorithm::SlidingWindow => Counter::Window(SlidingWindow::default()),
                    });
                match counter {
                    Counter::Log(log) => log.record(now, hit),
                    Counter::Window(w) => w.record(now, hit),
                }
            }
        }
        let at = i64::try_from(now.as_nanos()).unwrap_or(i64::MAX);
        let admission = Admission {
            admitted,
            counters,
            receipt: Receipt {
                at,
                buckets: Vec::new(),
            },
            unreplicated: None,
        };
        if !request_id.is_empty() {
            let expires = now + REQUEST_MEMORY;
            state
                .requests
                .insert(request_id.to_owned(), (admission.clone(), expires));
        }
        Ok(admission)
    }

    /// The synchronous core of [`CounterStore::read`].
    pub fn read_now(&self, hits: &[Hit]) -> Result<Vec<CounterStatus>, StoreError> {
        Hit::check_all(hits)?;
        let now = self.clock.now();
        let mut state = self.lock();
        Ok(hits
            .iter()
            .map(|hit| match state.counters.get_mut(&hit.key) {
                Some(counter) => {
                    counter.convert(now, hit);
                    let mut status = match counter {
                        Counter::Log(log) => log.check(now, hit),
                        Counter::Window(w) => w.check(now, hit),
                    };
                    // Nothing is taken: a counter with room keeps all of it.
                    if !status.exceeded() {
                        status.remaining += hit.cost;
                    }
                    status
                }
                None => CounterStatus {
                    remaining: hit.max,
                    reset_after: Duration::ZERO,
                    retry_after: None,
                },
            })
            .collect())
    }

    /// The synchronous core of [`CounterStore::release`].
    pub fn release_now(&self, request_id: &str, hits: &[Hit], admission: &Admission) -> Result<(), StoreError> {
        if !admission.admitted {
            return Ok(());
        }
        let now = self.clock.now();
        let mut state = self.lock();
        if let Some((remembered, expires)) = state.requests.get_mut(request_id)
            && *expires > now
        {
            if !remembered.admitted {
                return Ok(()); // released already
            }
            remembered.admitted = false;
        }
        let at = Duration::from_nanos(u64::try_from(admission.receipt.at).unwrap_or(0));
        for hit in hits {
            match state.counters.get_mut(&hit.key) {
                Some(Counter::Log(log)) => log.remove(at, hit.cost),
                Some(Counter::Window(w)) => w.remove(at, hit),
                None => {}
            }
        }
        Ok(())
    }
}

impl Counter {
    /// Carries a counter over to the hit's algorithm when a policy reload changed it,
    /// keeping every hit that still counts, so the change never hands out a fresh budget.
    fn convert(&mut self, now: Duration, hit: &Hit) {
        match (&*self, hit.algorithm) {
            (Counter::Log(log), Algorithm::SlidingWindow) => {
                *self = Counter::Window(SlidingWindow::from_log(log, now, hit.window));
            }
            (Counter::Window(w), Algorithm::SlidingLog) => {
                *self = Counter::Log(SlidingLog::from_window(w, now, hit));
            }
            _ => {}
        }
    }
}

impl State {
    fn sweep(&mut self, now: Duration) {
        let per_counter = &mut self.keys_per_counter;
        self.counters.retain(|key, c| {
            let live = match c {
                Counter::Log(log) => log.is_live(now),
                Counter::Window(w) => w.is_live(now),
            };
            if !live && let Some(n) = per_counter.get_mut(counter_name(key)) {
                *n = n.saturating_sub(1);
            }
            live
        });
        per_counter.retain(|_, n| *n > 0);
        self.requests.retain(|_, (_, expires)| *expires > now);
    }
}

#[async_trait::async_trait]
impl CounterStore for MemoryStore {
    async fn acquire(&self, request_id: &str, hits: &[Hit]) -> Result<Admission, StoreError> {
        self.acquire_now(request_id, hits)
    }

    async fn release(&self, request_id: &str, hits: &[Hit], admission: &Admission) -> Result<(), StoreError> {
        self.release_now(request_id, hits, admission)
    }

    async fn read(&self, hits: &[Hit]) -> Result<Vec<CounterStatus>, StoreError> {
        self.read_now(hits)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn answers_at_once(&self) -> bool {
        true
    }
}

/// Every admitted hit with its time; at most `max` entries, since each costs at least 1.
#[derive(Default)]
struct SlidingLog {
    window: Duration,
    entries: VecDeque<(Duration, u64)>,
    total: u64,
}

impl SlidingLog {
    fn prune(&mut self, now: Duration) {
        // A hit at `t` counts while `now < t + window`.
        while let Some(&(at, cost)) = self.entries.front() {
            if at + self.window > now {
                break;
            }
            self.entries.pop_front();
            self.total -= cost;
        }
    }

    fn check(&mut self, now: Duration, hit: &Hit) -> CounterStatus {
        self.window = hit.window;
        self.prune(now);
        let reset_after = self
            .entries
            .back()
            .map_or(Duration::ZERO, |(at, _)| *at + self.window - now);
        if self.total + hit.cost <= hit.max {
            return CounterStatus {
                remaining: hit.max - self.total - hit.cost,
                reset_after: hit.window,
                retry_after: None,
            };
        }
        let retry_after = if hit.cost > hit.max {
            Duration::ZERO
        } else {
            // Walk the oldest hits until enough of them have expired to make room.
            let need = self.total + hit.cost - hit.max;
            let mut freed = 0;
            let mut at_expiry = Duration::ZERO;
            for (at, cost) in &self.entries {
                freed += cost;
                if freed >= need {
                    at_expiry = *at + self.window - now;
                    break;
                }
            }
            at_expiry
        };
        CounterStatus {
            remaining: hit.max.saturating_sub(self.total),
            reset_after,
            retry_after: Some(retry_after),
        }
    }

    fn record(&mut self, now: Duration, hit: &Hit) {
        self.window = hit.window;
        self.entries.push_back((now, hit.cost));
        self.total += hit.cost;
    }

    /// Removes one entry recorded at `at` with `cost` (the newest such, if several).
    fn remove(&mut self, at: Duration, cost: u64) {
        if let Some(i) = self.entries.iter().rposition(|&(t, c)| t == at && c == cost) {
            self.entries.remove(i);
            self.total -= cost;
        }
    }

    /// The hits of a `sliding_window` counter as a log. The window kept only counts per
    /// bucket, so each hit is placed at the latest time it can have happened: it counts at
    /// least as long as it did. At most `max` of them are kept, the latest first: with that
    /// many the log refuses exactly as it would with more.
    fn from_window(w: &SlidingWindow, now: Duration, hit: &Hit) -> SlidingLog {
        let mut log = SlidingLog {
            window: hit.window,
            ..Default::default()
        };
        let old = w.window.as_micros().max(1);
        let start = w.bucket.saturating_mul(old);
        let current_at = (now.as_micros()).clamp(start, start.saturating_add(old - 1));
        let previous_at = start.saturating_sub(1);
        let current = w.current.min(hit.max);
        let previous = w.previous.min(hit.max - current);
        for (at, n) in [(previous_at, previous), (current_at, current)] {
            let at = Duration::from_micros(u64::try_from(at).unwrap_or(u64::MAX));
            if n > 0 && at + hit.window > now {
                log.entries.push_back((at, n));
                log.total += n;
            }
        }
        log
    }

    fn is_live(&mut self, now: Duration) -> bool {
        self.prune(now);
        !self.entries.is_empty()
    }
}

/// Hits in the current and previous fixed bucket of length `window`.
#[derive(Default)]
struct SlidingWindow {
    window: Duration,
    bucket: u128,
    current: u64,
    previous: u64,
}

impl SlidingWindow {
    /// Moves to the bucket `now` falls in, and returns how far into it `now` is. A bucket
    /// never moves backwards: when the clock steps back, the counter stays in its bucket
    /// (at its start), so the hits it holds keep counting.
    fn roll(&mut self, now: Duration, window: Duration) -> Duration {
        let w = window.as_micros().max(1);
        if self.window != window && !self.window.is_zero() {
            // The window changed (a policy reload): every hit that still counts under the
            // old window counts in the current bucket of the new one.
            let old_bucket = now.as_micros() / self.window.as_micros().max(1);
            let live = if self.bucket >= old_bucket {
                self.current + self.previous
            } else if self.bucket + 1 == old_bucket {
                self.current
            } else {
                0
            };
            self.current = live;
            self.previous = 0;
            self.bucket = now.as_micros() / w;
        }
        self.window = window;
        let bucket = now.as_micros() / w;
        if bucket == self.bucket + 1 {
            self.previous = self.current;
            self.current = 0;
            self.bucket = bucket;
        } else if bucket > self.bucket {
            self.previous = 0;
            self.current = 0;
            self.bucket = bucket;
        }
        Duration::from_micros(u64::try_from(now.as_micros().saturating_sub(self.bucket * w)).unwrap_or(u64::MAX))
    }

    /// The hits of a `sliding_log` counter that still count, as two buckets of the window.
    fn from_log(log: &SlidingLog, now: Duration, window: Duration) -> SlidingWindow {
        let w = window.as_micros().max(1);
        let bucket = now.as_micros() / w;
        let start = Duration::from_micros(u64::try_from(bucket * w).unwrap_or(u64::MAX));
        let previous_start = start.saturating_sub(window);
        let mut out = SlidingWindow {
            window,
            bucket,
            current: 0,
            previous: 0,
        };
        // Only the hits that still count (`at + window > now`) carry over.
        for &(at, cost) in log.entries.iter().filter(|(at, _)| *at + window > now) {
            if at >= start {
                out.current += cost;
            } else if at >= previous_start {
                out.previous += cost;
            }
        }
        out
    }

    /// Gives back `hit.cost` recorded at `at`, from whichever bucket now holds it.
    fn remove(&mut self, at: Duration, hit: &Hit) {
        let bucket = at.as_micros() / self.window.as_micros().max(1);
        if bucket == self.bucket {
            self.current = self.current.saturating_sub(hit.cost);
        } else if bucket + 1 == self.bucket {
            self.previous = self.previous.saturating_sub(hit.cost);
        }
    }

    /// The same arithmetic as `acquire.lua`, in microseconds as doubles, so both stores
    /// agree to the last rounding.
    fn check(&mut self, now: Duration, hit: &Hit) -> CounterStatus {
        let elapsed = self.roll(now, hit.window);
        let w = hit.window.as_micros() as f64;
        let e = elapsed.as_micros() as f64;
        let (p, c) = (self.previous as f64, self.current as f64);
        let estimate = p * (w - e) / w + c;
        let max = hit.max as f64;
        let cost = hit.cost as f64;
        let micros = |us: f64| Duration::from_micros(us.max(0.0).ceil() as u64);
        let reset = if self.current > 0 {
            2.0 * w - e
        } else if self.previous > 0 {
            w - e
        } else {
            0.0
        };
        if estimate + cost <= max {
            return CounterStatus {
                remaining: (max - estimate - cost).floor() as u64,
                reset_after: micros(reset.max(w - e)),
                retry_after: None,
            };
        }
        let until_next = w - e;
        let wait = if hit.cost > hit.max {
            0.0
        } else if self.current + hit.cost > hit.max {
            // Wait for the next bucket, then for the current count (now the previous one)
            // to fade enough.
            until_next + (w * (1.0 - (max - cost) / c)).max(0.0)
        } else {
            // The previous bucket's weight must fall far enough within this bucket.
            (until_next - w * (max - c - cost) / p).max(0.0)
        };
        CounterStatus {
            remaining: (max - estimate).max(0.0).floor() as u64,
            reset_after: micros(reset),
            retry_after: Some(micros(wait)),
        }
    }

    fn record(&mut self, now: Duration, hit: &Hit) {
        self.roll(now, hit.window);
        self.current += hit.cost;
    }

    fn is_live(&mut self, now: Duration) -> bool {
        let window = self.window;
        self.roll(now, window);
        self.current > 0 || self.previous > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn hit(key: &str, max: u64) -> Hit {
        Hit {
            key: key.into(),
            tag: key.into(),
            window: MINUTE,
            max,
            cost: 1,
            algorithm: Algorithm::SlidingLog,
        }
    }

    /// Whether `store` admits `hits` (with room for their keys).
    fn admits(store: &MemoryStore, hits: &[Hit]) -> bool {
        store.acquire_now("", hits).expect("room for keys").admitted
    }

    fn store() -> (Arc<ManualClock>, MemoryStore) {
        let clock = Arc::new(ManualClock::default());
        (clock.clone(), MemoryStore::new(clock))
    }

    #[test]
    fn live_keys_per_counter_are_capped_until_they_expire() {
        let clock = Arc::new(ManualClock::default());
        let store = MemoryStore::new(clock.clone()).with_max_keys_per_counter(2);
        let keyed = |key: &str| Hit {
            key: key.into(),
            ..hit("x", 10)
        };
        assert!(store.acquire_now("", &[keyed("c/arg.a=1")]).expect("room").admitted);
        assert!(store.acquire_now("", &[keyed("c/arg.a=2")]).expect("room").admitted);
        assert!(
            store
                .acquire_now("", &[keyed("c/arg.a=1")])
                .expect("existing key")
                .admitted
        );
        assert!(matches!(
            store.acquire_now("", &[keyed("c/arg.a=3")]),
            Err(StoreError::Full(_))
        ));
        assert!(
            store
                .acquire_now("", &[keyed("other/arg.a=3")])
                .expect("another counter")
                .admitted
        );
        clock.advance(Duration::from_secs(3600));
        assert!(
            store
                .acquire_now("", &[keyed("c/arg.a=3")])
                .expect("expired keys freed")
                .admitted
        );
    }

    #[test]
    fn admits_up_to_max_then_refuses_with_exact_retry_after() {
        let (clock, store) = store();
        for i in 0..10 {
            let a = store.acquire_now("", &[hit("k", 10)]).expect("room for keys");
            assert!(a.admitted, "call {i}");
            assert_eq!(a.counters[0].remaining, 9 - i);
            clock.advance(Duration::from_secs(1));
        }
        // First hit was at t=0; now t=10s: it frees at t=60s.
        let refused = store.acquire_now("", &[hit("k", 10)]).expect("room for keys");
        assert!(!refused.admitted);
        assert_eq!(refused.counters[0].retry_after, Some(Duration::from_secs(50)));
        assert_eq!(refused.counters[0].remaining, 0);

        clock.advance(Duration::from_secs(50) - Duration::from_micros(1));
        assert!(!admits(&store, &[hit("k", 10)]), "not before retry-after");
        clock.advance(Duration::from_micros(1));
        assert!(admits(&store, &[hit("k", 10)]), "right at retry-after");
        assert!(!admits(&store, &[hit("k", 10)]), "only one slot freed");
    }

    #[test]
    fn all_or_nothing_across_counters() {
        let (_, store) = store();
        assert!(admits(&store, &[hit("small", 1)]));
        let a = store
            .acquire_now("", &[hit("big", 5), hit("small", 1)])
            .expect("room for keys");
        assert!(!a.admitted);
        assert!(!a.counters[0].exceeded());
        assert!(a.counters[1].exceeded());
        // The refused call took nothing from "big".
        let b = store.acquire_now("", &[hit("big", 5)]).expect("room for keys");
        assert_eq!(b.counters[0].remaining, 4);
    }

    #[test]
    fn cost_counts_as_several_hits() {
        let (_, store) = store();
        let mut h = hit("k", 5);
        h.cost = 2;
        assert!(admits(&store, std::slice::from_ref(&h)));
        assert!(admits(&store, std::slice::from_ref(&h)));
        let third = store.acquire_now("", std::slice::from_ref(&h)).expect("room for keys");
        assert!(!third.admitted);
        assert_eq!(third.counters[0].remaining, 1);
        assert!(admits(&store, &[hit("k", 5)]), "a cost-1 call still fits");
    }

    #[test]
    fn same_request_id_is_decided_once() {
        let (_, store) = store();
        let first = store.acquire_now("req-1", &[hit("k", 2)]).expect("room for keys");
        let retry = store.acquire_now("req-1", &[hit("k", 2)]).expect("room for keys");
        assert_eq!(first, retry);
        assert_eq!(
            store
                .acquire_now("req-2", &[hit("k", 2)])
                .expect("room for keys")
                .counters[0]
                .remaining,
            0
        );
    }

    #[test]
    fn expired_counters_are_swept() {
        let (clock, store) = store();
        for i in 0..100 {
            store
                .acquire_now("", &[hit(&format!("k{i}"), 1)])
                .expect("room for keys");
        }
        assert_eq!(store.len(), 100);
        clock.advance(MINUTE + SWEEP_INTERVAL);
        store.acquire_now("", &[]).expect("room for keys");
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn sliding_log_memory_is_bounded_by_max() {
        let (clock, store) = store();
        for _ in 0..1000 {
            store.acquire_now("", &[hit("k", 10)]).expect("room for keys");
            clock.advance(Duration::from_millis(10));
        }
        let state = store.lock();
        let Some(Counter::Log(log)) = state.counters.get("k") else {
            panic!("log counter")
        };
        assert!(log.entries.len() <= 10);
    }

    #[test]
    fn sliding_window_weights_the_previous_bucket() {
        let (clock, store) = store();
        let mut h = hit("w", 10);
        h.algorithm = Algorithm::SlidingWindow;
        for _ in 0..10 {
            assert!(admits(&store, std::slice::from_ref(&h)));
        }
        assert!(!admits(&store, std::slice::from_ref(&h)));
        // Half-way through the next bucket the previous 10 weigh 5.
        clock.advance(MINUTE + MINUTE / 2);
        for _ in 0..5 {
            assert!(admits(&store, std::slice::from_ref(&h)));
        }
        let refused = store.acquire_now("", std::slice::from_ref(&h)).expect("room for keys");
        assert!(!refused.admitted);
        let wait = refused.counters[0].retry_after.expect("refused");
        clock.advance(wait + Duration::from_millis(1));
        assert!(admits(&store, std::slice::from_ref(&h)), "admitted after {wait:?}");
    }

    #[test]
    fn a_sliding_window_bucket_never_moves_backwards() {
        // 5 per minute, taken 2 s into a bucket; the clock then steps back 4 s, across the
        // bucket boundary. The counter used to start over (10 admitted in 3 s).
        let (clock, store) = store();
        let mut h = hit("stepped", 5);
        h.algorithm = Algorithm::SlidingWindow;
        clock.advance(MINUTE + Duration::from_secs(2));
        for _ in 0..5 {
            assert!(admits(&store, std::slice::from_ref(&h)));
        }
        clock.rewind(Duration::from_secs(4));
        assert!(!admits(&store, std::slice::from_ref(&h)), "after the step back");
        clock.advance(Duration::from_secs(3));
        assert!(!admits(&store, std::slice::from_ref(&h)), "back in the bucket");
        // A log keeps hits that a step back puts "in the future": they count for longer.
        let mut log = hit("stepped-log", 2);
        log.window = MINUTE;
        assert!(admits(&store, std::slice::from_ref(&log)));
        clock.rewind(Duration::from_secs(30));
        assert!(admits(&store, std::slice::from_ref(&log)));
        assert!(
            !admits(&store, std::slice::from_ref(&log)),
            "a log keeps hits from 'the future'"
        );
    }

    #[test]
    fn a_changed_algorithm_takes_the_counter_over() {
        let (clock, store) = store();
        let log = hit("switched", 5);
        for _ in 0..3 {
            assert!(admits(&store, std::slice::from_ref(&log)));
        }
        let mut window = log.clone();
        window.algorithm = Algorithm::SlidingWindow;
        assert!(admits(&store, std::slice::from_ref(&window)));
        assert!(admits(&store, std::slice::from_ref(&window)));
        assert!(!admits(&store, std::slice::from_ref(&window)));
        // Counted as a sliding window now: a minute later the previous bucket's 5 hits
        // still weigh 5 (a log would have forgotten them).
        clock.advance(MINUTE);
        assert!(!admits(&store, std::slice::from_ref(&window)));
        // And back to a log: the window's hits are placed at the latest time they can have
        // happened (the end of their bucket), so they count until a minute after it.
        clock.advance(MINUTE / 2);
        assert!(!admits(&store, std::slice::from_ref(&log)));
        clock.advance(MINUTE / 2);
        assert!(
            admits(&store, std::slice::from_ref(&log)),
            "a minute after the bucket ended"
        );
    }

    #[test]
    fn release_gives_back_exactly_what_was_taken() {
        let (clock, store) = store();
        let mut window = hit("w-release", 3);
        window.algorithm = Algorithm::SlidingWindow;
        let call = [hit("l-release", 3), window];
        let first = store.acquire_now("r1", &call).expect("room");
        clock.advance(Duration::from_secs(1));
        let second = store.acquire_now("r2", &call).expect("room");
        assert_eq!(second.counters[0].remaining, 1);
        store.release_now("r1", &call, &first).expect("release");
        store.release_now("r1", &call, &first).expect("twice is once");
        let refused = store.acquire_now("r3", &[hit("other", 1)]).expect("room");
        store.release_now("r3", &[hit("other", 1)], &refused).expect("a no-op");
        let third = store.acquire_now("r4", &call).expect("room");
        assert_eq!(third.counters.iter().map(|c| c.remaining).collect::<Vec<_>>(), [1, 1]);
        assert!(
            !store.acquire_now("r1", &call).expect("room").admitted,
            "released is refused"
        );
    }

    /// Most hits admitted in any sliding window of `window`, from admission times.
    fn worst_window(admitted: &[Duration], window: Duration) -> usize {
        let mut worst = 0;
        let mut start = 0;
        for (end, t) in admitted.iter().enumerate() {
            while *t >= admitted[start] + window {
                start += 1;
            }
            worst = worst.max(end - start + 1);
        }
        worst
    }

    /// Offers one call every `every` for `windows` windows; returns admission times.
    fn offer(store: &MemoryStore, clock: &ManualClock, h: &Hit, every: Duration, total: Duration) -> Vec<Duration> {
        let mut admitted = Vec::new();
        let mut now = Duration::ZERO;
        while now < total {
            if admits(store, std::slice::from_ref(h)) {
                admitted.push(clock.now());
            }
            clock.advance(every);
            now += every;
        }
        admitted
    }

    #[test]
    fn sliding_window_stays_within_its_documented_error_bound() {
        // Worst case: the previous bucket's hits all at its very end. Any true sliding
        // window then holds strictly less than 2 × max; under even traffic, about max.
        let max = 100;
        let mut h = hit("bound", max);
        h.algorithm = Algorithm::SlidingWindow;

        let (clock, counters) = store();
        clock.advance(MINUTE - Duration::from_millis(10));
        let mut admitted = offer(
            &counters,
            &clock,
            &h,
            Duration::from_micros(50),
            Duration::from_millis(10),
        );
        assert_eq!(admitted.len(), max as usize, "a burst at the end of a bucket fills it");
        admitted.extend(offer(&counters, &clock, &h, Duration::from_millis(10), MINUTE * 3));
        let worst = worst_window(&admitted, MINUTE);
        assert!(worst < 2 * max as usize, "bound: {worst} < 2 × {max}");
        assert!(
            worst > max as usize * 3 / 2,
            "the bound is approached, so the test can see a violation: {worst}"
        );

        let (clock, counters) = store();
        let even = offer(&counters, &clock, &h, Duration::from_millis(100), MINUTE * 5);
        let worst = worst_window(&even, MINUTE);
        assert!(
            worst <= max as usize + max as usize / 50,
            "even traffic is within 2%: {worst}"
        );

        let mut exact = hit("exact", max);
        exact.algorithm = Algorithm::SlidingLog;
        let (clock, counters) = store();
        clock.advance(MINUTE - Duration::from_millis(10));
        let mut admitted = offer(
            &counters,
            &clock,
            &exact,
            Duration::from_micros(50),
            Duration::from_millis(10),
        );
        admitted.extend(offer(&counters, &clock, &exact, Duration::from_millis(10), MINUTE * 3));
        assert_eq!(
            worst_window(&admitted, MINUTE),
            max as usize,
            "sliding_log is exact on the same traffic"
        );
    }
}
