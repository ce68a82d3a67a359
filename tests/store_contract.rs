//! The counter-store contract, one suite for every backend: the in-memory store, a
//! standalone Redis and a Redis Cluster, all on real time. Windows are short and the checks
//! keep well clear of window edges, so scheduling jitter cannot flip an answer.

mod support;

use std::time::{Duration, Instant};

use support::redis::{RedisCluster, RedisServer};
use tollgate_limiter::{
    Algorithm, ApprovalStatus, ApprovalStore, Claim, CounterStore, Hit, MAX_COUNT, MAX_SLIDING_LOG_MAX,
    MemoryApprovals, MemoryStore, NewApproval, RedisSettings, RedisStore, Resolution, StoreError,
};

fn hit(key: &str, tag: &str, window_ms: u64, max: u64) -> Hit {
    Hit {
        key: key.into(),
        tag: tag.into(),
        window: Duration::from_millis(window_ms),
        max,
        cost: 1,
        algorithm: Algorithm::SlidingLog,
    }
}

fn redis_settings(url: Option<String>, cluster: Vec<String>) -> RedisSettings {
    RedisSettings {
        url,
        cluster,
        ..RedisSettings::default()
    }
}

async fn take(store: &dyn CounterStore, hits: &[Hit]) -> tollgate_limiter::Admission {
    store.acquire("", hits).await.expect("store answers")
}

/// Admits `max`, refuses the next with a retry-after that is exact: still refused shortly
/// before it, admitted right after it.
async fn retry_after_is_exact(store: &dyn CounterStore, p: &str) {
    let h = [hit(&format!("{p}retry"), "grant=a", 1000, 3)];
    let first = Instant::now();
    for i in 0..3 {
        assert!(take(store, &h).await.admitted, "call {i}");
    }
    let refused = take(store, &h).await;
    let since_first = first.elapsed();
    assert!(!refused.admitted);
    let retry = refused.retry_after().expect("retry-after");
    assert!(retry <= Duration::from_millis(1000), "{retry:?}");
    assert!(
        retry + since_first >= Duration::from_millis(990),
        "retry {retry:?} + elapsed {since_first:?} ≈ window"
    );
    let asked = Instant::now();
    tokio::time::sleep(retry.saturating_sub(Duration::from_millis(200))).await;
    assert!(!take(store, &h).await.admitted, "not before retry-after");
    tokio::time::sleep((asked + retry + Duration::from_millis(40)).saturating_duration_since(Instant::now())).await;
    assert!(take(store, &h).await.admitted, "admitted right after retry-after");
}

/// Either every counter takes the hit or none does; the refused call consumes nothing.
async fn all_or_nothing(store: &dyn CounterStore, p: &str, other_tag: &str) {
    let big = hit(&format!("{p}big"), "grant=a", 60_000, 5);
    let small = hit(&format!("{p}small"), other_tag, 60_000, 1);
    assert!(take(store, std::slice::from_ref(&small)).await.admitted);
    let refused = take(store, &[big.clone(), small.clone()]).await;
    assert!(!refused.admitted);
    assert!(!refused.counters[0].exceeded() && refused.counters[1].exceeded());
    let after = take(store, &[big]).await;
    assert_eq!(
        after.counters[0].remaining, 4,
        "the refused call took nothing from the other counter"
    );
}

async fn costs_count_as_several_hits(store: &dyn CounterStore, p: &str) {
    let mut h = hit(&format!("{p}cost"), "grant=a", 60_000, 5);
    h.cost = 2;
    assert!(take(store, std::slice::from_ref(&h)).await.admitted);
    assert!(take(store, std::slice::from_ref(&h)).await.admitted);
    let third = take(store, std::slice::from_ref(&h)).await;
    assert!(!third.admitted);
    assert_eq!(third.counters[0].remaining, 1);
}

async fn retries_are_idempotent(store: &dyn CounterStore, p: &str) {
    let h = [hit(&format!("{p}idem"), "grant=a", 60_000, 2)];
    let first = store.acquire(&format!("{p}req-1"), &h).await.expect("answer");
    let retry = store.acquire(&format!("{p}req-1"), &h).await.expect("answer");
    assert_eq!(first, retry);
    let next = store.acquire(&format!("{p}req-2"), &h).await.expect("answer");
    assert_eq!(next.counters[0].remaining, 0, "the retry took no second hit");
}

async fn sliding_window_limits_too(store: &dyn CounterStore, p: &str) {
    let mut h = hit(&format!("{p}sw"), "grant=a", 60_000, 10);
    h.algorithm = Algorithm::SlidingWindow;
    for i in 0..10 {
        assert!(take(store, std::slice::from_ref(&h)).await.admitted, "call {i}");
    }
    let refused = take(store, std::slice::from_ref(&h)).await;
    assert!(!refused.admitted);
    assert!(refused.retry_after().is_some_and(|r| r > Duration::ZERO));
}

/// The largest cost a `sliding_log` counter accepts (its largest max, 100000) is taken
/// whole, beside another counter of the same script and one in another slot, and given back
/// whole. It used to fail inside the script (Lua's unpack limit, from a cost of about 4000)
/// after the other counters were charged. Hits beyond the bounds are refused before any
/// counter is touched.
async fn largest_costs_are_taken_and_given_back_whole(store: &dyn CounterStore, p: &str) {
    let big = Hit {
        cost: MAX_SLIDING_LOG_MAX,
        ..hit(&format!("{p}big"), "grant=a", 60_000, MAX_SLIDING_LOG_MAX)
    };
    let small = hit(&format!("{p}beside"), "grant=a", 60_000, 3);
    let elsewhere = hit(&format!("{p}elsewhere"), "global", 60_000, 3);
    let call = [small.clone(), big.clone(), elsewhere.clone()];
    let id = format!("{p}largest-1");
    let first = store.acquire(&id, &call).await.expect("the largest cost is accepted");
    assert!(first.admitted);
    let remaining: Vec<u64> = first.counters.iter().map(|c| c.remaining).collect();
    assert_eq!(remaining, [2, 0, 2]);

    let one_more = Hit { cost: 1, ..big.clone() };
    let refused = take(store, &[small.clone(), one_more]).await;
    assert!(!refused.admitted, "the big counter is full");
    assert_eq!(take(store, std::slice::from_ref(&small)).await.counters[0].remaining, 1);

    // Given back (twice: the second does nothing), every counter has its room again.
    store.release(&id, &call, &first).await.expect("release");
    store.release(&id, &call, &first).await.expect("release again");
    let after = take(store, &call).await;
    assert!(after.admitted, "the released hits are free again: {after:?}");
    let remaining: Vec<u64> = after.counters.iter().map(|c| c.remaining).collect();
    assert_eq!(remaining, [1, 0, 2], "each counter gave back exactly once");
    let retried = store.acquire(&id, &call).await.expect("answer");
    assert!(
        !retried.admitted,
        "a retry of a released call is not admitted by its record"
    );

    for bad in [
        Hit {
            cost: 0,
            ..small.clone()
        },
        Hit {
            max: MAX_SLIDING_LOG_MAX + 1,
            ..small.clone()
        },
        Hit {
            max: MAX_COUNT + 1,
            algorithm: Algorithm::SlidingWindow,
            ..small.clone()
        },
        Hit {
            cost: MAX_COUNT + 1,
            max: MAX_COUNT,
            algorithm: Algorithm::SlidingWindow,
            ..small.clone()
        },
    ] {
        let answer = store.acquire("", &[elsewhere.clone(), bad.clone()]).await;
        assert!(matches!(answer, Err(StoreError::Rejected(_))), "{bad:?}: {answer:?}");
    }
    assert_eq!(
        take(store, std::slice::from_ref(&elsewhere)).await.counters[0].remaining,
        1,
        "refused hits touched nothing: 3, less the call that kept its hit, less this one"
    );
}

/// A counter whose algorithm changes between calls (a policy reload) keeps the hits it
/// holds, in both directions, and so does a `sliding_window` counter whose window changes.
/// Redis used to fail with WRONGTYPE until the old key expired; the memory store kept the
/// old algorithm; a changed window started from zero.
async fn algorithm_changes_keep_their_hits(store: &dyn CounterStore, p: &str) {
    let log = hit(&format!("{p}algorithm"), "grant=a", 60_000, 5);
    for i in 0..3 {
        assert!(take(store, std::slice::from_ref(&log)).await.admitted, "log call {i}");
    }
    let window = Hit {
        algorithm: Algorithm::SlidingWindow,
        ..log.clone()
    };
    for i in 0..2 {
        assert!(
            take(store, std::slice::from_ref(&window)).await.admitted,
            "window call {i}"
        );
    }
    assert!(
        !take(store, std::slice::from_ref(&window)).await.admitted,
        "5 of 5 taken"
    );
    assert!(
        !take(store, std::slice::from_ref(&log)).await.admitted,
        "and back: still 5 of 5"
    );

    let resized = Hit {
        algorithm: Algorithm::SlidingWindow,
        ..hit(&format!("{p}resized"), "grant=a", 60_000, 5)
    };
    for i in 0..4 {
        assert!(take(store, std::slice::from_ref(&resized)).await.admitted, "call {i}");
    }
    let wider = Hit {
        window: Duration::from_secs(120),
        ..resized
    };
    assert!(take(store, std::slice::from_ref(&wider)).await.admitted);
    assert!(
        !take(store, std::slice::from_ref(&wider)).await.admitted,
        "the 4 hits counted under the old window still count"
    );
}

async fn contract(store: &dyn CounterStore) {
    let p = format!("t{}-", std::process::id());
    retry_after_is_exact(store, &p).await;
    all_or_nothing(store, &format!("{p}same-slot-"), "grant=a").await;
    all_or_nothing(store, &format!("{p}cross-slot-"), "global").await;
    costs_count_as_several_hits(store, &p).await;
    retries_are_idempotent(store, &p).await;
    sliding_window_limits_too(store, &p).await;
    largest_costs_are_taken_and_given_back_whole(store, &format!("{p}same-")).await;
    algorithm_changes_keep_their_hits(store, &p).await;
    reads_take_nothing(store, &p).await;
}

/// `read` answers each counter's use against the max asked (even the largest a sliding log
/// may have), for counters in several slots and for one never taken, and takes nothing.
async fn reads_take_nothing(store: &dyn CounterStore, p: &str) {
    let log = hit(&format!("{p}read-log/grant=a"), "grant=a", 60_000, 5);
    let window = Hit {
        algorithm: Algorithm::SlidingWindow,
        ..hit(&format!("{p}read-window/global"), "global", 60_000, 5)
    };
    for _ in 0..3 {
        assert!(take(store, &[log.clone(), window.clone()]).await.admitted);
    }
    let largest = Hit {
        max: tollgate_limiter::MAX_SLIDING_LOG_MAX,
        ..log.clone()
    };
    let never = hit(&format!("{p}read-never/grant=a"), "grant=a", 60_000, 7);
    for _ in 0..2 {
        let read = store
            .read(&[log.clone(), window.clone(), largest.clone(), never.clone()])
            .await
            .expect("store answers a read");
        let remaining: Vec<u64> = read.iter().map(|s| s.remaining).collect();
        assert_eq!(remaining, vec![2, 2, tollgate_limiter::MAX_SLIDING_LOG_MAX - 3, 7]);
        assert!(read.iter().all(|s| !s.exceeded()), "{read:?}");
    }
    // Two more fit: the reads took nothing.
    for _ in 0..2 {
        assert!(take(store, &[log.clone(), window.clone()]).await.admitted);
    }
    assert!(!take(store, std::slice::from_ref(&log)).await.admitted);
    let full = store.read(&[log, window]).await.expect("read");
    assert_eq!(full.iter().map(|s| s.remaining).collect::<Vec<_>>(), vec![0, 0]);
    assert!(full.iter().all(|s| s.exceeded()), "{full:?}");
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract(&MemoryStore::default()).await;
}

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    contract(&store).await;
}

#[tokio::test]
async fn redis_cluster_store_meets_the_contract() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(&redis_settings(None, cluster.urls())).expect("store");
    contract(&store).await;
    // Scripts vanish after a failover to a fresh node: EVALSHA falls back to loading them.
    cluster.flush_scripts();
    let h = [hit("after-flush", "grant=z", 60_000, 1)];
    assert!(take(&store, &h).await.admitted);
}

#[tokio::test]
async fn redis_keys_carry_the_hash_tag_and_expire_with_their_window() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    let mut sw = hit("sw/grant=a", "grant=a", 30_000, 10);
    sw.algorithm = Algorithm::SlidingWindow;
    assert!(
        take(&store, &[hit("c/grant=a", "grant=a", 30_000, 10), sw])
            .await
            .admitted
    );
    let log_ttl: u64 = redis
        .cli(&["PTTL", "tollgate:{grant=a}:c/grant=a"])
        .trim()
        .parse()
        .expect("pttl");
    assert!(
        log_ttl > 29_000 && log_ttl <= 31_000,
        "sliding_log key expires with its window: {log_ttl}"
    );
    let sw_ttl: u64 = redis
        .cli(&["PTTL", "tollgate:{grant=a}:sw/grant=a"])
        .trim()
        .parse()
        .expect("pttl");
    assert!(
        sw_ttl > 59_000 && sw_ttl <= 62_000,
        "sliding_window key keeps two buckets: {sw_ttl}"
    );
    let record_ttl: i64 = {
        store
            .acquire("rid-1", &[hit("c/grant=a", "grant=a", 30_000, 10)])
            .await
            .expect("answer");
        // One hash of request records per slot (a long-lived key: a Cluster slot move finds
        // it like the counters), each record's expiry in a sorted set beside it.
        assert!(
            !redis
                .cli(&["HGET", "tollgate:{grant=a}:reqs", "rid-1"])
                .trim()
                .is_empty(),
            "the request's answer is recorded"
        );
        let expires: f64 = redis
            .cli(&["ZSCORE", "tollgate:{grant=a}:reqs:expire", "rid-1"])
            .trim()
            .parse()
            .expect("zscore");
        assert!(expires > 0.0);
        redis
            .cli(&["PTTL", "tollgate:{grant=a}:reqs"])
            .trim()
            .parse()
            .expect("pttl")
    };
    assert!(record_ttl > 0, "request records expire too: {record_ttl}");
}

#[tokio::test]
async fn redis_script_flush_is_recovered_from() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    let h = [hit("flush", "grant=a", 60_000, 3)];
    assert!(take(&store, &h).await.admitted);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    let after = take(&store, &h).await;
    assert!(after.admitted);
    assert_eq!(after.counters[0].remaining, 1);
}

#[tokio::test]
async fn redis_going_away_is_an_error_and_its_return_is_recovered_from() {
    let mut redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    let h = [hit("outage", "grant=a", 60_000, 3)];
    assert!(take(&store, &h).await.admitted);
    redis.kill();
    let started = Instant::now();
    let err = store.acquire("", &h).await.expect_err("no Redis, no answer");
    assert!(err.to_string().contains("unavailable"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert!(store.error_count() > 0);
    redis.restart();
    let mut recovered = false;
    for _ in 0..50 {
        if store.acquire("", &h).await.is_ok_and(|a| a.admitted) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the same store works again once Redis is back");
}

/// With a cap of 2 live keys per counter and tag: a third key of the same counter and tag is
/// a store error that writes nothing, existing keys keep working, other tags and counters
/// have their own room, and a key frees its place within two windows of its last hit (Redis's
/// registry keeps entries that long, so that it never forgets a live key).
async fn live_keys_are_capped(store: &dyn CounterStore, p: &str) {
    let keyed = |value: &str, tag: &str| hit(&format!("{p}args/arg.ns={value}"), tag, 300, 10);
    assert!(take(store, &[keyed("a", "counter=args")]).await.admitted);
    assert!(take(store, &[keyed("b", "counter=args")]).await.admitted);
    let full = store.acquire("", &[keyed("c", "counter=args")]).await;
    assert!(
        matches!(&full, Err(tollgate_limiter::StoreError::Full(m)) if m.contains("max_keys_per_counter")),
        "{full:?}"
    );
    assert!(
        take(store, &[keyed("a", "counter=args")]).await.admitted,
        "existing keys still count"
    );
    let other = hit(&format!("{p}other/arg.ns=c"), "counter=other", 300, 10);
    assert!(take(store, &[other]).await.admitted, "another counter has its own room");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        take(store, &[keyed("c", "counter=args")]).await.admitted,
        "expired keys free their place"
    );
}

#[tokio::test]
async fn live_keys_per_counter_are_capped_in_every_store() {
    let memory = MemoryStore::default().with_max_keys_per_counter(2);
    live_keys_are_capped(&memory, "m").await;

    let capped = |url: Option<String>, cluster: Vec<String>| RedisSettings {
        max_keys_per_counter: 2,
        ..redis_settings(url, cluster)
    };
    let redis = RedisServer::start();
    let store = RedisStore::new(&capped(Some(redis.url()), vec![])).expect("store");
    live_keys_are_capped(&store, "r").await;
    let registry = redis.cli(&["ZCARD", "tollgate:{counter=args}:live:rargs"]);
    assert_eq!(registry.trim(), "1", "the registry holds the live keys only");

    let cluster = RedisCluster::start();
    let store = RedisStore::new(&capped(None, cluster.urls())).expect("store");
    live_keys_are_capped(&store, "c").await;
}

/// The longest window a policy allows (366 days) works exactly in every store; a window a
/// store cannot represent exactly is refused as an error, never wrapped to a short one (it
/// used to reach Redis as `as_micros() as u64`, wrapped to a few µs, admitting every call)
/// and never a panic (the memory store's instant arithmetic).
async fn windows_are_exact_up_to_the_largest_and_refused_beyond(store: &dyn CounterStore, p: &str) {
    let year = Hit {
        window: tollgate_policy::MAX_WINDOW,
        ..hit(&format!("{p}year"), "grant=a", 1000, 2)
    };
    assert!(take(store, std::slice::from_ref(&year)).await.admitted);
    assert!(take(store, std::slice::from_ref(&year)).await.admitted);
    let refused = take(store, std::slice::from_ref(&year)).await;
    assert!(!refused.admitted, "max 2 per 366 days");
    let retry = refused.retry_after().expect("retry-after");
    assert!(
        retry > tollgate_policy::MAX_WINDOW - Duration::from_secs(60),
        "retry-after is the whole window: {retry:?}"
    );
    for window in [
        Duration::from_secs(u64::MAX),
        // 2^64 µs + 1 µs: `as u64` on its microseconds used to wrap to 1 µs.
        Duration::from_micros(u64::MAX) + Duration::from_micros(2),
        Duration::from_micros((1 << 53) + 1),
    ] {
        let huge = Hit {
            window,
            ..hit(&format!("{p}huge"), "grant=a", 1000, 1)
        };
        for _ in 0..2 {
            let answer = store.acquire("", std::slice::from_ref(&huge)).await;
            assert!(
                matches!(answer, Err(tollgate_limiter::StoreError::Rejected(_))),
                "{window:?}: {answer:?}"
            );
        }
    }
}

#[tokio::test]
async fn windows_are_bounded_in_every_store() {
    windows_are_exact_up_to_the_largest_and_refused_beyond(&MemoryStore::default(), "m").await;
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    windows_are_exact_up_to_the_largest_and_refused_beyond(&store, "r").await;
    let cluster = RedisCluster::start();
    let store = RedisStore::new(&redis_settings(None, cluster.urls())).expect("store");
    windows_are_exact_up_to_the_largest_and_refused_beyond(&store, "c").await;
}

fn approval_call(p: &str, digest: &str, timeout: Duration) -> NewApproval {
    NewApproval {
        server: "k8s".into(),
        tool: "k8s_delete_namespace".into(),
        grant: "ci-bot".into(),
        agent: "ci-bot".into(),
        subject: "alice".into(),
        issuer: "https://idp.example".into(),
        arguments: r#"{"namespace":"web"}"#.into(),
        digest: format!("{p}{digest}"),
        rule: r#"tools["k8s_delete_namespace"]"#.into(),
        timeout,
        max_pending: 100,
    }
}

/// The approval life cycle, the same in every store: an identical call finds the pending
/// record; an approval is consumed by exactly one call; a denial and an expiry are told
/// once, then the next call asks anew; another call shape never finds this record.
async fn approvals_are_single_use_and_bound_to_one_call(store: &dyn ApprovalStore, p: &str) {
    let minute = Duration::from_secs(60);
    let call = approval_call(p, "a", minute);
    let Claim::Pending {
        approval: first,
        created: true,
    } = store.claim(&call).await.expect("claim")
    else {
        panic!("a new call asks for approval")
    };
    assert!(first.id.starts_with("apr_") && first.id.len() == 36, "{}", first.id);
    assert_eq!(first.arguments, r#"{"namespace":"web"}"#);
    // Operators see who asked: the record keeps the caller's JWT subject and issuer.
    assert_eq!(first.subject.as_deref(), Some("alice"));
    assert_eq!(first.issuer.as_deref(), Some("https://idp.example"));
    assert!(first.expires_ms >= first.created_ms + 59_000);
    let again = store.claim(&call).await.expect("claim");
    assert_eq!(
        again,
        Claim::Pending {
            approval: first.clone(),
            created: false
        },
        "an identical call finds the same record"
    );
    let other = store.claim(&approval_call(p, "b", minute)).await.expect("claim");
    let Claim::Pending {
        approval: other,
        created: true,
    } = other
    else {
        panic!("another shape asks on its own: {other:?}")
    };
    assert_ne!(other.id, first.id);

    let Resolution::Resolved(approved) = store
        .resolve(&first.id, true, "alice", "looks fine", "")
        .await
        .expect("resolve")
    else {
        panic!("pending is resolvable")
    };
    assert_eq!(approved.status, ApprovalStatus::Approved);
    assert_eq!(approved.resolved_by.as_deref(), Some("alice"));
    assert!(matches!(
        store.resolve(&first.id, false, "bob", "", "").await.expect("resolve"),
        Resolution::NotPending(_)
    ));
    assert_eq!(
        store.resolve("apr_0000", true, "alice", "", "").await.expect("resolve"),
        Resolution::NotFound
    );
    assert_eq!(
        store.resolve("../../x", true, "alice", "", "").await.expect("resolve"),
        Resolution::NotFound
    );

    let Claim::Approved(consumed) = store.claim(&call).await.expect("claim") else {
        panic!("the approved call proceeds")
    };
    assert_eq!(consumed.id, first.id);
    // Put back (the call's limits refused it): the next identical call consumes it instead.
    store.restore(&consumed).await.expect("restore");
    let Claim::Approved(again) = store.claim(&call).await.expect("claim") else {
        panic!("a restored approval is found again")
    };
    assert_eq!(again.id, first.id);
    let Claim::Pending {
        approval: next,
        created: true,
    } = store.claim(&call).await.expect("claim")
    else {
        panic!("single use: the next identical call asks anew")
    };
    assert_ne!(next.id, first.id);
    store.restore(&again).await.expect("restore while another is bound");
    assert!(
        matches!(
            store.claim(&call).await.expect("claim"),
            Claim::Pending { approval, created: false } if approval.id == next.id
        ),
        "a restore never displaces the approval bound to the call meanwhile"
    );

    store
        .resolve(&next.id, false, "bob", "not during the freeze", "")
        .await
        .expect("deny");
    let Claim::Denied(denied) = store.claim(&call).await.expect("claim") else {
        panic!("a denied call is told so")
    };
    assert_eq!(denied.reason.as_deref(), Some("not during the freeze"));
    assert!(matches!(
        store.claim(&call).await.expect("claim"),
        Claim::Pending { created: true, .. }
    ));

    let short = approval_call(p, "short", Duration::from_millis(300));
    let Claim::Pending { approval: soon, .. } = store.claim(&short).await.expect("claim") else {
        panic!("pending")
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        matches!(
            store.resolve(&soon.id, true, "alice", "", "").await.expect("resolve"),
            Resolution::NotPending(_)
        ),
        "too late to approve"
    );
    assert!(matches!(store.claim(&short).await.expect("claim"), Claim::Expired(_)));
    assert!(matches!(
        store.claim(&short).await.expect("claim"),
        Claim::Pending { created: true, .. }
    ));

    let listed = store.list().await.expect("list");
    let mine: Vec<_> = listed.iter().filter(|a| a.digest.starts_with(p)).collect();
    assert!(mine.len() >= 6, "{mine:#?}");
    assert!(
        mine.windows(2).all(|w| w[0].created_ms >= w[1].created_ms),
        "newest first"
    );
    let status = |id: &str| mine.iter().find(|a| a.id == id).map(|a| a.status);
    assert_eq!(status(&first.id), Some(ApprovalStatus::Consumed));
    assert_eq!(status(&next.id), Some(ApprovalStatus::Denied));
    assert_eq!(status(&soon.id), Some(ApprovalStatus::Expired));
    assert_eq!(status(&other.id), Some(ApprovalStatus::Pending));
}

/// A grant may have only so many approvals pending: one more is refused and creates
/// nothing; identical calls still find theirs; resolving or expiry frees a place; other
/// grants are not affected.
async fn pending_approvals_are_capped_per_grant(store: &dyn ApprovalStore, p: &str) {
    let capped = |digest: &str, grant: &str, timeout_ms: u64| NewApproval {
        grant: grant.into(),
        max_pending: 2,
        ..approval_call(p, digest, Duration::from_millis(timeout_ms))
    };
    let created = |claim: Claim| match claim {
        Claim::Pending {
            approval,
            created: true,
        } => approval,
        other => panic!("expected a new pending approval, got {other:?}"),
    };
    let first = created(store.claim(&capped("cap1", "flood", 60_000)).await.expect("claim"));
    let _short = created(store.claim(&capped("cap2", "flood", 400)).await.expect("claim"));
    assert_eq!(
        store.claim(&capped("cap3", "flood", 60_000)).await.expect("claim"),
        Claim::TooMany
    );
    let Claim::Pending {
        approval,
        created: false,
    } = store.claim(&capped("cap1", "flood", 60_000)).await.expect("claim")
    else {
        panic!("an identical call finds its pending approval")
    };
    assert_eq!(approval.id, first.id);
    created(
        store
            .claim(&capped("cap1-other", "other-grant", 60_000))
            .await
            .expect("claim"),
    );
    // The short one expires: its place is free.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = created(store.claim(&capped("cap3", "flood", 60_000)).await.expect("claim"));
    assert_eq!(
        store.claim(&capped("cap4", "flood", 60_000)).await.expect("claim"),
        Claim::TooMany
    );
    // Pending across every grant: cap1 (flood), cap1-other, cap3: the short one expired.
    let before = store.count_pending().await.expect("count");
    assert_eq!(before, 3, "every grant's unexpired pending approvals");
    // Resolving one frees a place.
    store.resolve(&third.id, false, "bob", "", "").await.expect("resolve");
    assert_eq!(
        store.count_pending().await.expect("count"),
        before - 1,
        "a resolved approval is not pending"
    );
    created(store.claim(&capped("cap4", "flood", 60_000)).await.expect("claim"));
    assert_eq!(store.count_pending().await.expect("count"), before);
    let listed = store.list().await.expect("list");
    assert!(
        !listed.iter().any(|a| a.digest == format!("{p}cap5")),
        "a refused call created nothing"
    );
}

#[tokio::test]
async fn pending_approvals_are_capped_per_grant_in_every_store() {
    pending_approvals_are_capped_per_grant(&MemoryApprovals::default(), "m").await;
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    pending_approvals_are_capped_per_grant(&store, "r").await;
    let cluster = RedisCluster::start();
    let store = RedisStore::new(&redis_settings(None, cluster.urls())).expect("store");
    pending_approvals_are_capped_per_grant(&store, "c").await;
}

#[tokio::test]
async fn approvals_behave_the_same_in_every_store() {
    approvals_are_single_use_and_bound_to_one_call(&MemoryApprovals::default(), "m").await;
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    approvals_are_single_use_and_bound_to_one_call(&store, "r").await;
    let cluster = RedisCluster::start();
    let store = RedisStore::new(&redis_settings(None, cluster.urls())).expect("store");
    approvals_are_single_use_and_bound_to_one_call(&store, "c").await;
}

/// What a waiter on replica `waiter` hears when an operator resolves on replica `resolver`
/// (the same store in memory; two stores on one Redis or Cluster): the approval's id, at
/// once, and the record reads as resolved. An id it does not wait for is someone else's.
async fn resolutions_wake_waiters_everywhere(resolver: &dyn ApprovalStore, waiter: &dyn ApprovalStore, p: &str) {
    let mut wakeups = waiter.wakeups();
    let Claim::Pending { approval, .. } = resolver
        .claim(&approval_call(p, "wake", Duration::from_secs(60)))
        .await
        .expect("claim")
    else {
        panic!("a new call asks for approval")
    };
    // A Redis subscription is made in the background: wait for the first "recheck" that
    // announces it, so the resolution below cannot be published before anyone listens.
    let started = Instant::now();
    if waiter.get(&approval.id).await.expect("get").map(|a| a.status) == Some(ApprovalStatus::Pending) {
        let first = tokio::time::timeout(Duration::from_millis(300), wakeups.recv()).await;
        if let Ok(Ok(id)) = first {
            assert_eq!(
                id,
                tollgate_limiter::RECHECK_ALL,
                "a fresh subscription asks for a recheck first"
            );
        }
    }
    let Resolution::Resolved(_) = resolver
        .resolve(&approval.id, true, "alice", "ok", "")
        .await
        .expect("resolve")
    else {
        panic!("a pending approval can be approved")
    };
    let heard = loop {
        let id = tokio::time::timeout(Duration::from_secs(2), wakeups.recv())
            .await
            .expect("a wake-up arrives within 2 s")
            .expect("the wake-up channel is open");
        if id != tollgate_limiter::RECHECK_ALL {
            break id;
        }
    };
    assert_eq!(heard, approval.id);
    assert!(started.elapsed() < Duration::from_secs(2));
    let seen = waiter.get(&approval.id).await.expect("get").expect("the record exists");
    assert_eq!(seen.status, ApprovalStatus::Approved);
    assert_eq!(seen.resolved_by.as_deref(), Some("alice"));
    assert_eq!(waiter.get("apr_0000").await.expect("get"), None);
    assert_eq!(waiter.get("not-an-id").await.expect("get"), None);
}

#[tokio::test]
async fn resolutions_wake_waiters_in_every_store() {
    let memory = MemoryApprovals::default();
    resolutions_wake_waiters_everywhere(&memory, &memory, "m").await;
    let redis = RedisServer::start();
    let settings = redis_settings(Some(redis.url()), vec![]);
    let (a, b) = (
        RedisStore::new(&settings).expect("store"),
        RedisStore::new(&settings).expect("store"),
    );
    resolutions_wake_waiters_everywhere(&a, &b, "r").await;
    let cluster = RedisCluster::start();
    let settings = redis_settings(None, cluster.urls());
    let (a, b) = (
        RedisStore::new(&settings).expect("store"),
        RedisStore::new(&settings).expect("store"),
    );
    resolutions_wake_waiters_everywhere(&a, &b, "c").await;
}

/// A subscriber that loses its Redis connection subscribes again and asks every waiter to
/// recheck (a resolution published meanwhile was missed, not lost).
#[tokio::test]
async fn a_lost_wakeup_subscription_is_made_again() {
    let mut redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    let mut wakeups = store.wakeups();
    let first = tokio::time::timeout(Duration::from_secs(2), wakeups.recv()).await;
    assert_eq!(
        first.ok().and_then(Result::ok).as_deref(),
        Some(tollgate_limiter::RECHECK_ALL)
    );
    redis.restart();
    let again = tokio::time::timeout(Duration::from_secs(10), wakeups.recv()).await;
    assert_eq!(
        again.ok().and_then(Result::ok).as_deref(),
        Some(tollgate_limiter::RECHECK_ALL)
    );
    let Claim::Pending { approval, .. } = store
        .claim(&approval_call("l", "x", Duration::from_secs(60)))
        .await
        .expect("claim")
    else {
        panic!("a new call asks for approval")
    };
    store
        .resolve(&approval.id, false, "bob", "", "")
        .await
        .expect("resolve");
    let heard = tokio::time::timeout(Duration::from_secs(2), wakeups.recv()).await;
    assert_eq!(heard.ok().and_then(Result::ok), Some(approval.id));
}

/// `rediss://`: the whole contract, approvals and their wake-ups over TLS, with the
/// server's CA from `store.ca_file`; a client certificate where the server asks for one;
/// and a server certificate the store does not trust is an error, not a silent fallback.
#[tokio::test]
async fn redis_over_tls_meets_the_contract() {
    let dir = support::temp_dir("redis-tls");
    let ca = support::pki::Ca::new(&dir, "redis");
    let server = ca.server("redis");
    let redis = RedisServer::start_tls(&server.cert, &server.key, &ca.pem, false);
    let settings = RedisSettings {
        ca_file: Some(ca.pem.clone()),
        ..redis_settings(Some(redis.tls_url()), vec![])
    };
    let store = RedisStore::new(&settings).expect("store");
    contract(&store).await;
    let other = RedisStore::new(&settings).expect("store");
    resolutions_wake_waiters_everywhere(&store, &other, "t").await;

    let wrong_ca = support::pki::Ca::new(&dir, "wrong");
    let untrusting = RedisStore::new(&RedisSettings {
        ca_file: Some(wrong_ca.pem.clone()),
        ..redis_settings(Some(redis.tls_url()), vec![])
    })
    .expect("store");
    let refused = untrusting.acquire("", &[hit("tls-k", "tls", 60_000, 5)]).await;
    let Err(StoreError::Unavailable(why)) = refused else {
        panic!("an untrusted server is an outage, not an answer: {refused:?}")
    };
    assert!(why.to_lowercase().contains("certificate"), "{why}");

    let mutual = RedisServer::start_tls(&server.cert, &server.key, &ca.pem, true);
    let anonymous = RedisStore::new(&RedisSettings {
        ca_file: Some(ca.pem.clone()),
        ..redis_settings(Some(mutual.tls_url()), vec![])
    })
    .expect("store");
    assert!(anonymous.acquire("", &[hit("tls-m", "tls", 60_000, 5)]).await.is_err());
    let client = ca.issue("tollgate-client", &["tollgate"]);
    let identified = RedisStore::new(&RedisSettings {
        ca_file: Some(ca.pem.clone()),
        client_cert: Some(client.cert.clone()),
        client_key: Some(client.key.clone()),
        ..redis_settings(Some(mutual.tls_url()), vec![])
    })
    .expect("store");
    assert!(take(&identified, &[hit("tls-m", "tls", 60_000, 5)]).await.admitted);

    // Settings that cannot work are refused up front, naming what is wrong.
    let plain = RedisStore::new(&RedisSettings {
        ca_file: Some(ca.pem.clone()),
        ..redis_settings(Some(redis.url()), vec![])
    });
    assert!(
        matches!(&plain, Err(StoreError::Config(m)) if m.contains("rediss://")),
        "{:?}",
        plain.err()
    );
    let missing = RedisStore::new(&RedisSettings {
        ca_file: Some(dir.join("nope.pem")),
        ..redis_settings(Some(redis.tls_url()), vec![])
    });
    assert!(
        matches!(&missing, Err(StoreError::Config(m)) if m.contains("nope.pem")),
        "{:?}",
        missing.err()
    );
}

/// A Redis Cluster over TLS (`rediss://` seeds; the nodes tell TLS clients their TLS
/// ports): the whole contract, and approvals with their wake-ups.
#[tokio::test]
async fn redis_cluster_over_tls_meets_the_contract() {
    let dir = support::temp_dir("redis-cluster-tls");
    let ca = support::pki::Ca::new(&dir, "redis-cluster");
    let server = ca.server("redis-cluster");
    let cluster = RedisCluster::start_tls(&server.cert, &server.key, &ca.pem);
    let settings = RedisSettings {
        ca_file: Some(ca.pem.clone()),
        ..redis_settings(None, cluster.tls_urls())
    };
    let store = RedisStore::new(&settings).expect("store");
    contract(&store).await;
    approvals_are_single_use_and_bound_to_one_call(&store, "ct").await;
    let other = RedisStore::new(&settings).expect("store");
    resolutions_wake_waiters_everywhere(&store, &other, "ctw").await;
}

/// Task records (MCP tasks): a grant owns exactly the tasks recorded for it, per upstream,
/// in every store; records expire with their task.
async fn task_records_belong_to_their_grant(tasks: &dyn tollgate_limiter::TaskStore, p: &str) {
    let record = |grant: &str, server: &str, id: &str| tollgate_limiter::TaskRecord {
        server: server.into(),
        task_id: format!("{p}{id}"),
        grant: grant.into(),
        decision_id: format!("decision-{id}"),
        traceparent: String::new(),
    };
    let long = Duration::from_secs(60);
    tasks.record(&record("a", "s", "T1"), long).await.expect("record");
    tasks.record(&record("b", "s", "T2"), long).await.expect("record");
    tasks.record(&record("a", "other", "T3"), long).await.expect("record");
    tasks
        .record(&record("a", "s", "short"), Duration::from_millis(100))
        .await
        .expect("record");
    let ids: Vec<String> = ["T1", "T2", "T3", "short", "unknown"]
        .iter()
        .map(|i| format!("{p}{i}"))
        .collect();
    let owned = tasks.owned("a", "s", &ids).await.expect("owned");
    let mut names: Vec<String> = owned.iter().map(|r| r.task_id.clone()).collect();
    names.sort();
    assert_eq!(names, vec![format!("{p}T1"), format!("{p}short")]);
    assert_eq!(
        owned
            .iter()
            .find(|r| r.task_id == format!("{p}T1"))
            .map(|r| r.decision_id.as_str()),
        Some("decision-T1")
    );
    assert_eq!(tasks.owned("b", "s", &ids).await.expect("owned").len(), 1);
    assert!(tasks.owned("c", "s", &ids).await.expect("owned").is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let owned = tasks.owned("a", "s", &ids).await.expect("owned");
    assert_eq!(owned.len(), 1, "the short-lived record expired: {owned:?}");
    // One grant past its records is refused; another grant still records.
    let filler = format!("{p}filler");
    for i in 0..tollgate_limiter::MAX_TASKS_PER_GRANT {
        tasks
            .record(&record(&filler, "s", &format!("F{i}")), long)
            .await
            .expect("within the grant's records");
    }
    assert!(matches!(
        tasks.record(&record(&filler, "s", "one-more"), long).await,
        Err(StoreError::Full(_))
    ));
    tasks
        .record(&record("b", "s", "T9"), long)
        .await
        .expect("another grant records");
}

#[tokio::test]
async fn task_records_hold_in_every_store() {
    task_records_belong_to_their_grant(&tollgate_limiter::MemoryTasks::default(), "m-").await;
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    task_records_belong_to_their_grant(&store, "r-").await;
    let cluster = RedisCluster::start();
    let store = RedisStore::new(&redis_settings(None, cluster.urls())).expect("store");
    task_records_belong_to_their_grant(&store, "c-").await;
}

fn seen(p: &str, name: &str, digest: &str, approve_first: bool) -> tollgate_limiter::Seen {
    tollgate_limiter::Seen {
        key: tollgate_limiter::PinKey {
            kind: tollgate_limiter::PinKind::Tool,
            server: format!("{p}k8s"),
            name: name.into(),
        },
        digest: digest.into(),
        definition: format!("{{\"name\":\"{name}\",\"v\":\"{digest}\"}}"),
        bytes: 20,
        approve_first,
    }
}

/// Tool pins: recorded once however many edges report the same definition at once, a change
/// waits for an operator, resolutions are exclusive.
async fn pins_contract(store: std::sync::Arc<dyn tollgate_limiter::PinStore>, p: &str) {
    use tollgate_limiter::{PinResolution, PinState};
    let now = tollgate_limiter::wall_clock_ms();
    // Eight edges report the same new definitions at once: one record each, one definition.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let batch = vec![seen(p, "scale", "a1", false), seen(p, "pause", "b1", true)];
        tasks.push(tokio::spawn(async move { store.observe(&batch, now).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("observe");
    }
    let listed: Vec<_> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .filter(|pin| pin.key.server == format!("{p}k8s"))
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let scale = listed.iter().find(|pin| pin.key.name == "scale").expect("scale");
    assert_eq!(scale.definitions.len(), 1);
    assert_eq!(scale.definitions[0].state, PinState::Pending, "enforce: pending");
    let pause = listed.iter().find(|pin| pin.key.name == "pause").expect("pause");
    assert_eq!(
        pause.definitions[0].state,
        PinState::Approved,
        "record: the first is approved"
    );

    // Two operators approve at once: one resolves it, the other finds it resolved.
    let id = scale.definitions[0].id.clone();
    let (a, b) = tokio::join!(
        store.resolve(&id, true, "alice", "ok", now),
        store.resolve(&id, true, "bob", "ok", now)
    );
    let outcomes = [a.expect("resolve"), b.expect("resolve")];
    let resolved = outcomes
        .iter()
        .filter(|o| matches!(o, PinResolution::Resolved(_)))
        .count();
    assert_eq!(resolved, 1, "{outcomes:?}");

    // The server changes the tool: the approved definition stays, the new one is pending.
    let changed = store
        .observe(&[seen(p, "scale", "a2", false)], now + 1)
        .await
        .expect("observe");
    assert_eq!(changed[0].current, "a2");
    assert_eq!(changed[0].approved().map(|d| d.digest.as_str()), Some("a1"));
    let new_id = changed[0].definition("a2").expect("recorded").id.clone();
    assert!(matches!(
        store
            .resolve(&new_id, false, "alice", "exfiltrates", now + 2)
            .await
            .expect("resolve"),
        PinResolution::Resolved(_)
    ));
    let key = changed[0].key.clone();
    let read = store.pins(std::slice::from_ref(&key)).await.expect("pins");
    let pin = read[0].as_ref().expect("recorded");
    assert_eq!(pin.definition("a2").map(|d| d.state), Some(PinState::Rejected));
    let back = store
        .observe(&[seen(p, "scale", "a1", false)], now + 3)
        .await
        .expect("observe");
    assert!(
        back[0].definition("a2").is_some_and(|d| d.definition.is_empty()),
        "digest only"
    );
    assert_eq!(
        store
            .resolve("pin_000000000000000000000000", true, "alice", "", now)
            .await
            .expect("resolve"),
        PinResolution::NotFound
    );
    assert_eq!(
        store
            .resolve("not an id", true, "alice", "", now)
            .await
            .expect("resolve"),
        PinResolution::NotFound
    );
}

#[tokio::test]
async fn pins_meet_the_contract_in_every_store() {
    pins_contract(std::sync::Arc::new(tollgate_limiter::MemoryPins::default()), "m").await;
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis_settings(Some(redis.url()), vec![])).expect("store");
    pins_contract(std::sync::Arc::new(store), "r").await;
    let cluster = RedisCluster::start();
    let store = RedisStore::new(&redis_settings(None, cluster.urls())).expect("store");
    pins_contract(std::sync::Arc::new(store), "c").await;
}
