//! Counters that stay honest, through the decision engine and on real Redis (standalone and
//! Cluster): a call refused because the store answered late is not charged; a policy
//! reload that changes a counter's algorithm keeps counting; a clock that steps back does
//! not reset a `sliding_window` counter.

mod support;

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::redis::{RedisCluster, RedisServer};
use tollgate_decision::Engine;
use tollgate_decision::proto::{DecideRequest, Decision, Verdict};
use tollgate_limiter::{Admission, Algorithm, CounterStore, Hit, MemoryStore, RedisSettings, RedisStore, StoreError};
use tollgate_policy::Policy;

/// The engine's deadline for the store, and how long the store takes when it is slow.
const STORE_TIMEOUT: Duration = Duration::from_millis(250);
const SLOW: Duration = Duration::from_millis(400);

fn policy(algorithm: &str) -> Policy {
    let text = format!(
        r#"{{"version": "1", "default": "deny", "tools": {{
            "pause": {{ "limits": [{{ "counter": "pause", "window": "minute", "max": 3, "algorithm": "{algorithm}" }}] }},
            "read": {{ "on_store_error": "allow", "limits": [{{ "counter": "read", "window": "minute", "max": 3 }}] }}
        }}}}"#
    );
    tollgate_policy::compile_str("policy.json", &text)
        .expect("policy")
        .policy
}

fn call(tool: &str, grant: &str) -> DecideRequest {
    DecideRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        server: "k8s".into(),
        tool: tool.into(),
        grant: grant.into(),
        agent: grant.into(),
        ..Default::default()
    }
}

async fn verdict(engine: &Engine, tool: &str, grant: &str) -> (Verdict, Decision) {
    let decision = engine.decide(&call(tool, grant)).await;
    (decision.verdict(), decision)
}

/// The memory store behind a delay, as a store that answers late: each call counted in
/// `slow` waits [`SLOW`] and then takes its hits.
struct Late {
    store: MemoryStore,
    slow: AtomicUsize,
}

#[async_trait::async_trait]
impl CounterStore for Late {
    async fn acquire(&self, request_id: &str, hits: &[Hit]) -> Result<Admission, StoreError> {
        let slow = self
            .slow
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if slow.is_ok() {
            tokio::time::sleep(SLOW).await;
        }
        self.store.acquire(request_id, hits).await
    }

    async fn release(&self, request_id: &str, hits: &[Hit], admission: &Admission) -> Result<(), StoreError> {
        self.store.release(request_id, hits, admission).await
    }

    async fn read(&self, hits: &[Hit]) -> Result<Vec<tollgate_limiter::CounterStatus>, StoreError> {
        self.store.read(hits).await
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// Three calls refused because the store answered after the deadline take nothing: the
/// limit of 3 is whole afterwards. (They used to use it up: the script ran in Redis after
/// the engine had stopped waiting.) With `on_store_error: allow` the late call went through,
/// so its hit stays counted.
async fn late_answers_charge_only_calls_that_ran(engine: &Engine, slow_down: &dyn Fn()) {
    for i in 0..3 {
        slow_down();
        let (verdict, decision) = verdict(engine, "pause", "late").await;
        assert_eq!(verdict, Verdict::Deny, "call {i}: {decision:?}");
        assert!(decision.reason.contains("did not answer within"), "{}", decision.reason);
    }
    slow_down();
    let (verdict_read, decision) = verdict(engine, "read", "late").await;
    assert_eq!(verdict_read, Verdict::Allow, "on_store_error allow: {decision:?}");
    // Let every late answer arrive and be given back.
    tokio::time::sleep(SLOW * 5).await;
    let store = engine.store_kind();
    assert!(late_answers(store, "released") >= 3, "{}", late_answers_text());
    assert!(late_answers(store, "kept") >= 1, "{}", late_answers_text());

    for i in 0..3 {
        let (v, decision) = verdict(engine, "pause", "late").await;
        assert_eq!(v, Verdict::Allow, "call {i} after the slow ones: {decision:?}");
    }
    let (v, decision) = verdict(engine, "pause", "late").await;
    assert_eq!(v, Verdict::RateLimited, "the limit still holds: {decision:?}");

    for i in 0..2 {
        let (v, decision) = verdict(engine, "read", "late").await;
        assert_eq!(v, Verdict::Allow, "read {i}: {decision:?}");
    }
    let (v, decision) = verdict(engine, "read", "late").await;
    assert_eq!(
        v,
        Verdict::RateLimited,
        "the uncounted call that ran was counted once the store answered: {decision:?}"
    );
}

fn late_answers_text() -> String {
    tollgate_telemetry::metrics::metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with("tollgate_store_late_answers"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `tollgate_store_late_answers_total{store, outcome}` (process-wide: tests add up).
fn late_answers(store: &str, outcome: &str) -> u64 {
    let wanted = [format!("store=\"{store}\""), format!("outcome=\"{outcome}\"")];
    late_answers_text()
        .lines()
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn late_store_answers_charge_only_calls_that_ran_in_memory() {
    let late = Arc::new(Late {
        store: MemoryStore::default(),
        slow: AtomicUsize::new(0),
    });
    let engine = Engine::new(policy("sliding_log"), late.clone(), STORE_TIMEOUT);
    late_answers_charge_only_calls_that_ran(&engine, &|| {
        late.slow.fetch_add(1, Ordering::SeqCst);
    })
    .await;
}

fn redis_store(url: Option<String>, cluster: Vec<String>) -> Arc<RedisStore> {
    let settings = RedisSettings {
        url,
        cluster,
        ..RedisSettings::default()
    };
    Arc::new(RedisStore::new(&settings).expect("store"))
}

/// Opens every connection the store keeps (it uses a few in turn), so that the slow calls
/// are slow in Redis, where the script has been sent, not in opening a connection.
async fn warm_up(engine: &Engine) {
    for _ in 0..8 {
        let (v, decision) = verdict(engine, "pause", "warm-up").await;
        assert_ne!(v, Verdict::Deny, "the store answers: {decision:?}");
    }
}

/// Waits until every earlier `DEBUG SLEEP` has answered, so each slow call gets a sleep of
/// its own (a sleep queued behind another would leave the call before it room to answer).
fn awake(sleeping: &mut Vec<TcpStream>) {
    use std::io::Read;
    for mut conn in sleeping.drain(..) {
        conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).expect("DEBUG SLEEP answers");
        assert_eq!(&reply, b"+OK\r\n");
    }
}

#[tokio::test]
async fn late_redis_answers_charge_only_calls_that_ran() {
    let redis = RedisServer::start();
    let engine = Engine::new(
        policy("sliding_log"),
        redis_store(Some(redis.url()), vec![]),
        STORE_TIMEOUT,
    );
    warm_up(&engine).await;
    let sleeping: std::sync::Mutex<Vec<TcpStream>> = Default::default();
    late_answers_charge_only_calls_that_ran(&engine, &|| {
        let mut sleeping = sleeping.lock().expect("lock");
        awake(&mut sleeping);
        sleeping.push(redis.sleep(SLOW.as_secs_f64()));
    })
    .await;
}

#[tokio::test]
async fn late_redis_cluster_answers_charge_only_calls_that_ran() {
    let cluster = RedisCluster::start();
    let engine = Engine::new(policy("sliding_log"), redis_store(None, cluster.urls()), STORE_TIMEOUT);
    warm_up(&engine).await;
    let sleeping: std::sync::Mutex<Vec<TcpStream>> = Default::default();
    late_answers_charge_only_calls_that_ran(&engine, &|| {
        let mut sleeping = sleeping.lock().expect("lock");
        awake(&mut sleeping);
        sleeping.extend(cluster.nodes.iter().map(|node| node.sleep(SLOW.as_secs_f64())));
    })
    .await;
}

/// A reload that changes a counter's algorithm keeps counting it, in both directions. It
/// used to fail with WRONGTYPE until the old key expired: calls denied outright, or, with
/// `on_store_error: allow`, admitted uncounted.
async fn reloads_that_change_an_algorithm_keep_counting(engine: &Engine) {
    for _ in 0..2 {
        assert_eq!(verdict(engine, "pause", "reload").await.0, Verdict::Allow);
    }
    engine.replace_policy(policy("sliding_window"));
    let (v, decision) = verdict(engine, "pause", "reload").await;
    assert_eq!(v, Verdict::Allow, "{decision:?}");
    let (v, decision) = verdict(engine, "pause", "reload").await;
    assert_eq!(v, Verdict::RateLimited, "3 of 3 taken across the reload: {decision:?}");
    engine.replace_policy(policy("sliding_log"));
    let (v, decision) = verdict(engine, "pause", "reload").await;
    assert_eq!(v, Verdict::RateLimited, "and back: {decision:?}");
}

#[tokio::test]
async fn reloads_that_change_an_algorithm_keep_counting_in_every_store() {
    let memory = Engine::new(policy("sliding_log"), Arc::new(MemoryStore::default()), STORE_TIMEOUT);
    reloads_that_change_an_algorithm_keep_counting(&memory).await;
    let redis = RedisServer::start();
    let engine = Engine::new(
        policy("sliding_log"),
        redis_store(Some(redis.url()), vec![]),
        STORE_TIMEOUT,
    );
    reloads_that_change_an_algorithm_keep_counting(&engine).await;
    let cluster = RedisCluster::start();
    let engine = Engine::new(policy("sliding_log"), redis_store(None, cluster.urls()), STORE_TIMEOUT);
    reloads_that_change_an_algorithm_keep_counting(&engine).await;
}

/// Redis's clock steps back 4 s across a minute boundary (NTP, a failover to a node whose
/// clock is behind). A `sliding_window` counter stays in the bucket it had reached, so the
/// 5 hits it holds keep counting; it used to start over (10 admitted within seconds against
/// 5 per minute). The script runs with a clock the test can step: a copy of the production
/// script whose `TIME` line adds the seconds stored in a test key, and nothing else changed
/// (redis-server itself cannot run under libfaketime: its allocator's start-up recurses).
#[tokio::test]
async fn a_redis_clock_stepping_back_does_not_reset_a_sliding_window() {
    const TIME_LINE: &str = "local t = redis.call('TIME')\n";
    assert_eq!(
        tollgate_limiter::ACQUIRE_SCRIPT.matches(TIME_LINE).count(),
        1,
        "acquire.lua reads the time in one line this test can shift"
    );
    let shifted = tollgate_limiter::ACQUIRE_SCRIPT.replace(
        TIME_LINE,
        "local t = redis.call('TIME')\n\
         t[1] = tonumber(t[1]) + tonumber(redis.call('GET', 'test:clock-shift') or '0')\n",
    );
    let redis = RedisServer::start();
    let settings = RedisSettings {
        url: Some(redis.url()),
        ..RedisSettings::default()
    };
    let store = RedisStore::new(&settings).expect("store").with_acquire_script(&shifted);
    let seconds: u64 = redis
        .cli(&["TIME"])
        .lines()
        .next()
        .and_then(|s| s.trim().parse().ok())
        .expect("TIME");
    // Put the script's clock 2 s into a minute (a sliding_window bucket of a minute).
    let shift = 60 - seconds % 60 + 2;
    redis.cli(&["SET", "test:clock-shift", &shift.to_string()]);
    let window = Hit {
        key: "stepped/grant=a".into(),
        tag: "grant=a".into(),
        window: Duration::from_secs(60),
        max: 5,
        cost: 1,
        algorithm: Algorithm::SlidingWindow,
    };
    let log = Hit {
        key: "stepped-log/grant=a".into(),
        max: 2,
        algorithm: Algorithm::SlidingLog,
        ..window.clone()
    };
    for i in 0..5 {
        let a = store.acquire("", std::slice::from_ref(&window)).await.expect("answer");
        assert!(a.admitted, "call {i}");
    }
    assert!(
        !store
            .acquire("", std::slice::from_ref(&window))
            .await
            .expect("answer")
            .admitted
    );
    for _ in 0..2 {
        assert!(
            store
                .acquire("", std::slice::from_ref(&log))
                .await
                .expect("answer")
                .admitted
        );
    }
    redis.cli(&["SET", "test:clock-shift", &(shift - 4).to_string()]);
    for i in 0..5 {
        let a = store.acquire("", std::slice::from_ref(&window)).await.expect("answer");
        assert!(!a.admitted, "call {i} after the step back: {a:?}");
        assert!(a.counters[0].retry_after.is_some_and(|r| r > Duration::from_secs(1)));
    }
    let a = store.acquire("", std::slice::from_ref(&log)).await.expect("answer");
    assert!(!a.admitted, "a sliding_log keeps its hits too");
}

/// Spellings of one argument value share one budget in every store: `1`, `1.0` and `"1"`
/// (and NFC and NFD spellings of one string). They used to be separate budgets, so an agent
/// could take `max` calls per spelling.
async fn spellings_of_one_value_share_a_budget(engine: &Engine) {
    let call = |arguments: &str| DecideRequest {
        arguments_json: arguments.to_owned(),
        ..call(if arguments.contains("name") { "rename" } else { "scale" }, "spelling")
    };
    for arguments in [r#"{"replicas": 1}"#, r#"{"replicas": 1.0}"#] {
        let decision = engine.decide(&call(arguments)).await;
        assert_eq!(decision.verdict(), Verdict::Allow, "{arguments}: {decision:?}");
    }
    for arguments in [r#"{"replicas": "1"}"#, r#"{"replicas": 1e0}"#, r#"{"replicas": " 1 "}"#] {
        let decision = engine.decide(&call(arguments)).await;
        assert_eq!(decision.verdict(), Verdict::RateLimited, "{arguments}: {decision:?}");
    }
    let decision = engine.decide(&call(r#"{"replicas": 2}"#)).await;
    assert_eq!(decision.verdict(), Verdict::Allow, "another value: {decision:?}");
    for (i, name) in ["caf\u{e9}", "cafe\u{301}", "caf\u{e9}"].iter().enumerate() {
        let decision = engine.decide(&call(&format!(r#"{{"name": "{name}"}}"#))).await;
        let expected = if i < 2 { Verdict::Allow } else { Verdict::RateLimited };
        assert_eq!(decision.verdict(), expected, "{name:?}: {decision:?}");
    }
}

fn scale_policy() -> Policy {
    let text = r#"{"version": "1", "tools": {
        "scale": {"limits": [{ "counter": "per_replicas", "window": "minute", "max": 2, "scope": "argument:replicas" }]},
        "rename": {"limits": [{ "counter": "per_name", "window": "minute", "max": 2, "scope": "argument:name" }]}
    }}"#;
    tollgate_policy::compile_str("policy.json", text)
        .expect("policy")
        .policy
}

#[tokio::test]
async fn spellings_of_one_value_share_a_budget_in_every_store() {
    let memory = Engine::new(scale_policy(), Arc::new(MemoryStore::default()), STORE_TIMEOUT);
    spellings_of_one_value_share_a_budget(&memory).await;
    let redis = RedisServer::start();
    let engine = Engine::new(scale_policy(), redis_store(Some(redis.url()), vec![]), STORE_TIMEOUT);
    spellings_of_one_value_share_a_budget(&engine).await;
    let cluster = RedisCluster::start();
    let engine = Engine::new(scale_policy(), redis_store(None, cluster.urls()), STORE_TIMEOUT);
    spellings_of_one_value_share_a_budget(&engine).await;
}

/// The calls `evalsha` made on `redis` so far (`INFO commandstats`).
fn evalsha_calls(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A flood against a full `sliding_log` counter is refused by the replica itself until the
/// counter has room again, with no script run per call; then calls are admitted exactly as
/// the store counts them; and a reload with another `max` is a different counter, asked
/// afresh. Other grants' counters are unaffected.
#[tokio::test]
async fn a_flood_against_a_full_counter_is_refused_without_asking_redis() {
    let redis = RedisServer::start();
    let text = |max: u32| {
        format!(
            r#"{{"version": "1", "default": "deny", "tools": {{
                "pause": {{ "limits": [{{ "counter": "pause", "window": "2s", "max": {max} }}] }}
            }}}}"#
        )
    };
    let compile = |max| {
        tollgate_policy::compile_str("policy.json", &text(max))
            .expect("policy")
            .policy
    };
    let engine = Engine::new(compile(3), redis_store(Some(redis.url()), vec![]), STORE_TIMEOUT);
    for _ in 0..3 {
        assert_eq!(verdict(&engine, "pause", "g").await.0, Verdict::Allow);
    }
    let (refused, decision) = verdict(&engine, "pause", "g").await;
    assert_eq!(refused, Verdict::RateLimited, "the store refuses the 4th");
    assert!(decision.retry_after_ms > 1000, "{decision:?}");
    let before = evalsha_calls(&redis);
    for _ in 0..200 {
        let (v, d) = verdict(&engine, "pause", "g").await;
        assert_eq!(v, Verdict::RateLimited);
        assert!(d.retry_after_ms > 0 && d.reason.contains("rate limit pause"), "{d:?}");
    }
    let during = evalsha_calls(&redis) - before;
    assert_eq!(during, 0, "200 refusals ran {during} scripts");
    // Another grant's counter is not full.
    assert_eq!(verdict(&engine, "pause", "other").await.0, Verdict::Allow);

    // Once the window has moved on, the store is asked again and admits exactly max.
    tokio::time::sleep(Duration::from_millis(decision.retry_after_ms + 50)).await;
    let mut admitted = 0;
    for _ in 0..5 {
        if verdict(&engine, "pause", "g").await.0 == Verdict::Allow {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "the whole window's budget, no more");

    // A reloaded policy with a larger max is another counter: asked, and admitted.
    engine.replace_policy(compile(5));
    assert_eq!(verdict(&engine, "pause", "g").await.0, Verdict::Allow);

    // Turned off, every call asks the store.
    let engine =
        Engine::new(compile(1), redis_store(Some(redis.url()), vec![]), STORE_TIMEOUT).with_full_cache_entries(0);
    let _ = verdict(&engine, "pause", "h").await;
    let before = evalsha_calls(&redis);
    for _ in 0..10 {
        assert_eq!(verdict(&engine, "pause", "h").await.0, Verdict::RateLimited);
    }
    assert_eq!(evalsha_calls(&redis) - before, 10);
}
