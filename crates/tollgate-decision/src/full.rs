//! "Full until": refusals that skip the counter store.
//!
//! When the store refuses a call because a `sliding_log` counter is full, it says exactly
//! when that counter has room again for a call of that cost (its oldest hits leave the
//! window then). Until that moment no call of that cost can be admitted by it, on any
//! replica, so this replica refuses such calls itself, without a store round trip: a flood
//! from one grant against one limited tool costs the store about one script run per key per
//! retry-after instead of one per call.
//!
//! It can only refuse more, never admit more: the deadline is measured from when the answer
//! arrived (later than the store's own moment). A call whose counters span slot groups takes
//! them group by group and gives back what it took when a later group refuses: such a held
//! hit can refuse another call for the milliseconds it is held, and remembering that refusal
//! would refuse calls for a whole window while there is room. So refusals are remembered
//! only for counters the policy never takes before another group
//! (`Policy::may_be_given_back`; for Envoy, only the counter taken last). A late answer's
//! hits given back can still make a remembered refusal last a little longer than needed.
//! `sliding_window` counters are approximate, so their refusals are not remembered. Entries
//! are per store key (tag and counter key), `max`, window and cost, so a reloaded policy with other numbers is
//! never refused by an old entry; the map is bounded (expired entries go first, then any).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use tollgate_limiter::{Admission, Algorithm, Hit};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FullKey {
    /// The store key is the tag with the key: counters of different namespaces (a policy
    /// counter, an Envoy counter of the same name) may share a key but never a tag.
    tag: String,
    key: String,
    max: u64,
    cost: u64,
    window: Duration,
}

impl FullKey {
    fn of(hit: &Hit) -> FullKey {
        FullKey {
            tag: hit.tag.clone(),
            key: hit.key.clone(),
            max: hit.max,
            cost: hit.cost,
            window: hit.window,
        }
    }
}

/// Counters known to be full, and until when.
pub(crate) struct FullUntil {
    entries: RwLock<HashMap<FullKey, Instant>>,
    capacity: usize,
}

impl FullUntil {
    /// Remembers at most `capacity` counter keys.
    pub(crate) fn new(capacity: usize) -> FullUntil {
        FullUntil {
            entries: RwLock::default(),
            capacity,
        }
    }

    /// For each hit of a call, how long its counter is still known to be full (`None` when
    /// it is not known to be); `None` overall when no counter of the call is.
    pub(crate) fn check(&self, hits: &[Hit]) -> Option<Vec<Option<Duration>>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if entries.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut known = false;
        let left: Vec<Option<Duration>> = hits
            .iter()
            .map(|hit| {
                if hit.algorithm != Algorithm::SlidingLog {
                    return None;
                }
                let until = entries.get(&FullKey::of(hit))?;
                let left = until.checked_duration_since(now).filter(|d| !d.is_zero())?;
                known = true;
                Some(left)
            })
            .collect();
        known.then_some(left)
    }

    /// Remembers the `sliding_log` counters that refused `hits` (answered at `answered`),
    /// those whose `rememberable` is true (one per hit; missing counts as false).
    pub(crate) fn remember(&self, hits: &[Hit], admission: &Admission, answered: Instant, rememberable: &[bool]) {
        if admission.admitted || self.capacity == 0 {
            return;
        }
        let full: Vec<(FullKey, Instant)> = hits
            .iter()
            .zip(&admission.counters)
            .zip(rememberable.iter().chain(std::iter::repeat(&false)))
            .filter(|((hit, _), rememberable)| **rememberable && hit.algorithm == Algorithm::SlidingLog)
            .filter_map(|((hit, status), _)| {
                let retry = status.retry_after.filter(|d| !d.is_zero())?;
                Some((FullKey::of(hit), answered + retry))
            })
            .collect();
        if full.is_empty() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() + full.len() > self.capacity {
            let now = Instant::now();
            entries.retain(|_, until| *until > now);
            while entries.len() + full.len() > self.capacity {
                let Some(any) = entries.keys().next().cloned() else {
                    break;
                };
                entries.remove(&any);
            }
        }
        for (key, until) in full {
            entries.insert(key, until);
        }
    }

    /// Counter keys remembered now (for tests and metrics).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_limiter::{CounterStatus, Receipt};

    fn hit(key: &str, algorithm: Algorithm) -> Hit {
        Hit {
            key: key.into(),
            tag: "g".into(),
            window: Duration::from_secs(60),
            max: 2,
            cost: 1,
            algorithm,
        }
    }

    fn refused(retry: &[Option<Duration>]) -> Admission {
        Admission {
            admitted: false,
            counters: retry
                .iter()
                .map(|r| CounterStatus {
                    remaining: 0,
                    reset_after: Duration::from_secs(60),
                    retry_after: *r,
                })
                .collect(),
            receipt: Receipt::default(),
            unreplicated: None,
        }
    }

    #[test]
    fn only_sliding_log_refusals_are_remembered_until_their_retry_after() {
        let full = FullUntil::new(10);
        let hits = [
            hit("a/grant=g", Algorithm::SlidingLog),
            hit("b/grant=g", Algorithm::SlidingWindow),
            hit("c/grant=g", Algorithm::SlidingLog),
        ];
        assert!(full.check(&hits).is_none());
        let at = Instant::now();
        full.remember(
            &hits,
            &refused(&[Some(Duration::from_secs(30)), Some(Duration::from_secs(30)), None]),
            at,
            &[true; 3],
        );
        let left = full.check(&hits).expect("a is full");
        assert!(left[0].is_some_and(|d| d <= Duration::from_secs(30) && d > Duration::from_secs(29)));
        assert_eq!(
            (left[1], left[2]),
            (None, None),
            "sliding_window and counters with room are not"
        );
        // Another max (a reloaded policy) is another counter.
        let mut bigger = hits[0].clone();
        bigger.max = 3;
        assert!(full.check(&[bigger]).is_none());
        // Expired entries are not full any more.
        full.remember(&hits[2..], &refused(&[Some(Duration::from_millis(1))]), at, &[true]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(full.check(&hits[2..]).is_none());
    }

    /// Issue 30, item 5: a counter whose hits other calls may hold and give back is never
    /// remembered as full, even when it refused with a retry-after.
    #[test]
    fn counters_that_may_be_given_back_are_not_remembered() {
        let full = FullUntil::new(10);
        let hits = [
            hit("per-grant/grant=g", Algorithm::SlidingLog),
            hit("everyone", Algorithm::SlidingLog),
        ];
        let both_full = refused(&[Some(Duration::from_secs(30)), Some(Duration::from_secs(30))]);
        full.remember(&hits, &both_full, Instant::now(), &[false, true]);
        let left = full.check(&hits).expect("everyone is remembered");
        assert_eq!(left[0], None, "per-grant may be held by others: not remembered");
        assert!(left[1].is_some());
        // Missing flags count as "may be given back".
        let other = [hit("other/grant=g", Algorithm::SlidingLog)];
        full.remember(&other, &refused(&[Some(Duration::from_secs(30))]), Instant::now(), &[]);
        assert!(full.check(&other).is_none());
    }

    /// Issue 24, item 6: an Envoy counter and a policy counter with one name and key are
    /// different store keys (their tags differ), so one being full says nothing of the other.
    #[test]
    fn counters_of_other_tags_are_other_counters() {
        let full = FullUntil::new(10);
        let envoy = Hit {
            tag: "shared".into(), // an Envoy counter's tag is its name
            ..hit("shared/grant=a", Algorithm::SlidingLog)
        };
        let policy = Hit {
            tag: "grant=a".into(),
            ..hit("shared/grant=a", Algorithm::SlidingLog)
        };
        full.remember(
            std::slice::from_ref(&envoy),
            &refused(&[Some(Duration::from_secs(30))]),
            Instant::now(),
            &[true],
        );
        assert!(full.check(std::slice::from_ref(&envoy)).is_some());
        assert!(full.check(&[policy]).is_none(), "the policy's counter has room");
    }

    #[test]
    fn the_map_stays_within_its_capacity() {
        let full = FullUntil::new(3);
        for i in 0..10 {
            let h = [hit(&format!("k{i}/grant=g"), Algorithm::SlidingLog)];
            full.remember(&h, &refused(&[Some(Duration::from_secs(60))]), Instant::now(), &[true]);
            assert!(full.len() <= 3);
        }
        let last = [hit("k9/grant=g", Algorithm::SlidingLog)];
        assert!(full.check(&last).is_some(), "the newest entry is kept");
    }
}
