//! One decision through the engine (policy evaluation + counter store), on the in-memory
//! store and on a local Redis with one and with three counters per call; and the same
//! decision as a gRPC round trip over loopback (client with failover, tonic server, engine).
//!
//! Run: `cargo bench --bench decision` (starts its own `redis-server` on a free port).

#[allow(dead_code)] // the bench uses only the standalone server
#[path = "../tests/support/redis.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_decision::proto::DecideRequest;
use tollgate_decision::{Decider, Engine, GrpcDecider};
use tollgate_limiter::{CounterStore, MemoryStore, RedisSettings, RedisStore};

/// Limits that never refuse during a bench (so every decision does the full write path),
/// with a short window so sliding logs stay small (100000 is the largest `sliding_log` max).
const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "one": { "limits": [ { "counter": "one", "window": "10ms", "max": 100000 } ] },
    "three": { "limits": [
      { "counter": "t1", "window": "10ms", "max": 100000, "scope": "grant" },
      { "counter": "t2", "window": "10ms", "max": 100000, "scope": ["grant", "argument:namespace"] },
      { "counter": "t3", "window": "10ms", "max": 100000, "scope": ["grant", "tool"] }
    ] }
  }
}"#;

fn engine(store: Arc<dyn CounterStore>) -> Engine {
    let policy = tollgate_policy::compile_str("bench.json", POLICY)
        .expect("bench policy")
        .policy;
    Engine::new(policy, store, Duration::from_secs(1))
}

fn next_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("bench-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn request(tool: &str) -> DecideRequest {
    DecideRequest {
        server: "k8s".into(),
        tool: tool.into(),
        grant: "bench".into(),
        agent: "bench".into(),
        arguments_json: r#"{"namespace":"default","name":"web"}"#.into(),
        ..Default::default()
    }
}

/// The stores a bench runs on, by name.
type Stores = [(&'static str, Arc<dyn CounterStore>); 2];

/// A runtime, a `redis-server` (stopped when dropped) and the two stores to bench on.
fn setup() -> (tokio::runtime::Runtime, redis_support::RedisServer, Stores) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = redis_support::RedisServer::start();
    let settings = RedisSettings {
        url: Some(redis.url()),
        ..RedisSettings::default()
    };
    let stores: Stores = [
        ("memory", Arc::new(MemoryStore::default())),
        ("redis", Arc::new(RedisStore::new(&settings).expect("redis store"))),
    ];
    (runtime, redis, stores)
}

fn decisions(c: &mut Criterion) {
    let (runtime, _redis, stores) = setup();
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for (name, store) in stores {
        let engine = engine(store);
        for tool in ["one", "three"] {
            let req = request(tool);
            group.bench_function(format!("{name}/{tool}_counter"), |b| {
                b.to_async(&runtime).iter(|| async {
                    // A fresh request id per call, as edges send: each call is a new decision.
                    let mut call = req.clone();
                    call.request_id = next_id();
                    let decision = engine.decide(&call).await;
                    assert_eq!(decision.verdict, 1, "bench calls are admitted: {}", decision.reason);
                    decision
                })
            });
        }
    }
    group.finish();

    let engine = Arc::new(engine(Arc::new(MemoryStore::default())));
    let client = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(tollgate_decision::serve(
            listener,
            engine,
            None,
            Default::default(),
            std::future::pending(),
        ));
        GrpcDecider::new(&[format!("http://{addr}")], Duration::from_secs(1), None, None).expect("client")
    });
    let mut group = c.benchmark_group("grpc");
    group.throughput(Throughput::Elements(1));
    let req = request("one");
    group.bench_function("decide/memory/one_counter", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut call = req.clone();
            call.request_id = next_id();
            client.decide(call).await.expect("decided")
        })
    });
    group.finish();
}

/// Candidates for the shadow group: the same rule for `one` (answered by the live decision
/// itself), a lowered limit on the same counter (answered from the live decision's store
/// answer), and `one` limited on another live counter (`t1`, read from the store).
const SAME_RULE: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "one": { "limits": [ { "counter": "one", "window": "10ms", "max": 100000 } ] },
    "three": { "action": "deny" }
  }
}"#;
const LOWERED_LIMIT: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": { "one": { "limits": [ { "counter": "one", "window": "10ms", "max": 50000 } ] } }
}"#;
const OTHER_COUNTER: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": { "one": { "limits": [ { "counter": "t1", "window": "10ms", "max": 100000, "scope": "grant" } ] } }
}"#;

/// One decision with a candidate policy evaluated beside it, against none, on both stores.
fn shadow(c: &mut Criterion) {
    let (runtime, _redis, stores) = setup();
    let mut group = c.benchmark_group("shadow");
    group.throughput(Throughput::Elements(1));
    for (name, store) in stores {
        for (candidate, text) in [
            ("none", None),
            ("same_rule", Some(SAME_RULE)),
            ("lowered_limit", Some(LOWERED_LIMIT)),
            ("other_counter", Some(OTHER_COUNTER)),
        ] {
            let engine = engine(store.clone());
            if let Some(text) = text {
                let policy = tollgate_policy::compile_str("candidate.json", text)
                    .expect("candidate")
                    .policy;
                engine.replace_candidate(Some(policy));
            }
            let req = request("one");
            group.bench_function(format!("{name}/{candidate}"), |b| {
                b.to_async(&runtime).iter(|| async {
                    let mut call = req.clone();
                    call.request_id = next_id();
                    let decision = engine.decide(&call).await;
                    assert_eq!(decision.verdict, 1, "bench calls are admitted: {}", decision.reason);
                    decision
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decisions, shadow);
criterion_main!(benches);
