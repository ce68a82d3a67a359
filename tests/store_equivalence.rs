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

// --- On a shared clock: every algorithm, window, cost and clock step ---------------------
//
// The production script reads Redis's clock in one line (`TIME`); this copy reads a virtual
// clock from a test key instead, and nothing else differs. Both stores then see exactly the
// same instants, so they must agree on every answer, including `sliding_window` counters
// (whose buckets depend on absolute time), windows up to the longest a policy allows, costs
// up to the largest, and counters whose algorithm or max changes between calls (a policy
// reload). A counter's window stays fixed here: when a reload lengthens a window, or the
// clock steps back, hits that had already expired may or may not be counted again,
// depending on whether a store had dropped them yet (both choices are safe; the contract
// suite and `counter_honesty.rs` test those cases on their own).

/// Virtual time starts at a realistic epoch (µs since 1970), so precision is tested too.
const EPOCH_US: u64 = 1_764_800_000_000_000;

/// How one counter counts, for a while (until a reload).
#[derive(Debug, Clone)]
struct Counting {
    algorithm: Algorithm,
    max: u64,
}

fn counting() -> impl Strategy<Value = Counting> {
    let max = prop_oneof![8 => 1u64..=6, 1 => Just(tollgate_limiter::MAX_SLIDING_LOG_MAX)];
    let algorithm = prop_oneof![Just(Algorithm::SlidingLog), Just(Algorithm::SlidingWindow)];
    (algorithm, max).prop_map(|(algorithm, max)| Counting { algorithm, max })
}

fn window() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::from_secs(10)),
        Just(Duration::from_secs(60)),
        Just(Duration::from_secs(3600)),
        Just(tollgate_policy::MAX_WINDOW),
    ]
}

/// A clock move forward in µs: within a window, across a few, or a whole year.
fn clock_move() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=3_000_000,
        2 => 0u64..=120_000_000,
        1 => 0u64..=7_200_000_000,
        1 => Just(366 * 86_400_000_000u64),
    ]
}

#[derive(Debug, Clone)]
struct SharedStep {
    clock: u64,
    /// New counting for each counter (a reload), or `None` to keep it.
    reload: Option<Vec<Counting>>,
    calls: Vec<(Vec<usize>, u64)>,
}

type SharedScenario = (Vec<Duration>, Vec<Counting>, Vec<SharedStep>);

fn shared_scenario() -> impl Strategy<Value = SharedScenario> {
    let cost = prop_oneof![8 => 1u64..=3, 1 => Just(tollgate_limiter::MAX_SLIDING_LOG_MAX)];
    let call = (proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3), cost);
    let step = (
        clock_move(),
        proptest::option::weighted(0.3, proptest::collection::vec(counting(), 3)),
        proptest::collection::vec(call, 0..=4),
    )
        .prop_map(|(clock, reload, calls)| SharedStep { clock, reload, calls });
    (
        proptest::collection::vec(window(), 3),
        proptest::collection::vec(counting(), 3),
        proptest::collection::vec(step, 2..=10),
    )
}

fn run_shared(
    runtime: &tokio::runtime::Runtime,
    server: &RedisServer,
    redis: &RedisStore,
    (windows, initial, steps): &SharedScenario,
) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::default());
    clock.advance(Duration::from_micros(EPOCH_US));
    let memory = MemoryStore::new(clock.clone());
    let prefix = uuid_like();
    let tags = ["grant=a", "grant=a", "global"];
    let mut now = EPOCH_US;
    let mut countings = initial.clone();
    runtime.block_on(async {
        for (s, step) in steps.iter().enumerate() {
            now += step.clock;
            clock.advance(Duration::from_micros(step.clock));
            server.cli(&["SET", "test:now", &now.to_string()]);
            if let Some(reload) = &step.reload {
                countings = reload.clone();
            }
            for (counters, cost) in &step.calls {
                let hits: Vec<Hit> = counters
                    .iter()
                    .map(|&i| Hit {
                        key: format!("{prefix}:c{i}"),
                        tag: tags[i].to_owned(),
                        window: windows[i],
                        max: countings[i].max,
                        cost: *cost,
                        algorithm: countings[i].algorithm,
                    })
                    .collect();
                let reference = memory.acquire("", &hits).await;
                let answer = redis.acquire("", &hits).await;
                match (&reference, &answer) {
                    (Ok(reference), Ok(answer)) => {
                        prop_assert_eq!(answer.admitted, reference.admitted, "step {}: {:?}", s, hits);
                        let remaining = |a: &tollgate_limiter::Admission| {
                            a.counters.iter().map(|c| c.remaining).collect::<Vec<_>>()
                        };
                        prop_assert_eq!(remaining(answer), remaining(reference), "step {}: {:?}", s, hits);
                    }
                    (Err(_), Err(_)) => {} // both refuse the hits (a cost above the max allowed)
                    _ => prop_assert!(false, "step {}: memory {:?}, redis {:?}", s, reference, answer),
                }
            }
        }
        Ok(())
    })
}

#[test]
fn redis_store_agrees_with_the_memory_store_on_a_shared_clock() {
    const TIME_LINE: &str = "local t = redis.call('TIME')\n";
    assert_eq!(
        tollgate_limiter::ACQUIRE_SCRIPT.matches(TIME_LINE).count(),
        1,
        "acquire.lua reads the time in one line this test can replace"
    );
    let script = tollgate_limiter::ACQUIRE_SCRIPT.replace(TIME_LINE, "local t = {0, redis.call('GET', 'test:now')}\n");
    let server = RedisServer::start();
    let settings = RedisSettings {
        url: Some(server.url()),
        ..RedisSettings::default()
    };
    let redis = RedisStore::new(&settings).expect("store").with_acquire_script(&script);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = ProptestConfig {
        cases: 128,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    };
    proptest!(config, |(scenario in shared_scenario())| {
        run_shared(&runtime, &server, &redis, &scenario)?;
    });
}
