//! Property: on any sequence of calls and clock advances, the Redis store gives the same
//! verdicts and remaining counts as the in-memory store (the reference).
//!
//! Redis keeps its own time, so the test advances real time for it, in steps of 250 ms on
//! an absolute schedule, and the memory store's manual clock by the same steps. The window
//! (1125 ms) is 4.5 steps, so a hit never expires near the instant a later step checks it:
//! scheduling jitter below 125 ms cannot change an answer.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use support::redis::RedisServer;
use tollgate_limiter::{Algorithm, CounterStore, Hit, ManualClock, MemoryStore, RedisSettings, RedisStore};

const STEP: Duration = Duration::from_millis(250);
const WINDOW: Duration = Duration::from_millis(1125);
/// (max, tag) per counter; two share a slot, one lives in another (reserve-then-release).
const COUNTERS: [(u64, &str); 3] = [(2, "grant=a"), (3, "grant=a"), (4, "global")];

/// One call: which counters it hits, and its cost.
#[derive(Debug, Clone)]
struct CallSpec {
    counters: Vec<usize>,
    cost: u64,
}

fn call_strategy() -> impl Strategy<Value = CallSpec> {
    (proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3), 1u64..=2)
        .prop_map(|(counters, cost)| CallSpec { counters, cost })
}

/// Steps: each is a clock advance (in STEPs, 0–3) followed by some calls.
fn scenario() -> impl Strategy<Value = Vec<(u32, Vec<CallSpec>)>> {
    proptest::collection::vec((0u32..=3, proptest::collection::vec(call_strategy(), 0..=4)), 3..=8)
}

fn hits(prefix: &str, call: &CallSpec) -> Vec<Hit> {
    call.counters
        .iter()
        .map(|&i| Hit {
            key: format!("{prefix}c{i}"),
            tag: COUNTERS[i].1.to_owned(),
            window: WINDOW,
            max: COUNTERS[i].0,
            cost: call.cost,
            algorithm: Algorithm::SlidingLog,
        })
        .collect()
}

fn run(
    runtime: &tokio::runtime::Runtime,
    redis: &RedisStore,
    steps: &[(u32, Vec<CallSpec>)],
) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::default());
    let memory = MemoryStore::new(clock.clone());
    let prefix = format!("{}:", uuid_like());
    runtime.block_on(async {
        let start = Instant::now();
        let mut elapsed_steps = 0u32;
        for (advance, calls) in steps {
            elapsed_steps += advance;
            clock.advance(STEP * *advance);
            tokio::time::sleep_until((start + STEP * elapsed_steps).into()).await;
            for call in calls {
                let batch = hits(&prefix, call);
                let reference = memory.acquire("", &batch).await.expect("memory answers");
                let answer = redis.acquire("", &batch).await.expect("redis answers");
                prop_assert_eq!(
                    answer.admitted,
                    reference.admitted,
                    "call {:?} at step {}",
                    call,
                    elapsed_steps
                );
                let remaining =
                    |a: &tollgate_limiter::Admission| a.counters.iter().map(|c| c.remaining).collect::<Vec<_>>();
                prop_assert_eq!(
                    remaining(&answer),
                    remaining(&reference),
                    "call {:?} at step {}",
                    call,
                    elapsed_steps
                );
            }
        }
        Ok(())
    })
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("case{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

#[test]
fn redis_store_agrees_with_the_memory_store() {
    let server = RedisServer::start();
    let settings = RedisSettings {
        url: Some(server.url()),
        ..RedisSettings::default()
    };
    let redis = RedisStore::new(&settings).expect("store");
    // One runtime for every case, as in a real process: kept Redis connections belong to it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = ProptestConfig {
        cases: 12,
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in scenario())| {
        run(&runtime, &redis, &steps)?;
    });
}
