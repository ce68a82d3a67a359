//! The edge's work for one MCP request, in-process (no client socket): bearer-key check,
//! JSON-RPC parsing, the decision (in-process engine, memory store) and forwarding to the
//! demo upstream over loopback HTTP, with the answer streamed back. Also a refused call
//! (no upstream hop) and a malformed body.
//!
//! Run: `cargo bench --bench edge`

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::BodyExt;
use tollgate_decision::Engine;
use tollgate_edge::{EdgeParts, EdgeSettings, GrantSettings, UpstreamSettings};
use tollgate_limiter::MemoryStore;
use tower::ServiceExt;

const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"k8s_list_namespaces": {},
    "k8s_rollout_pause": {"limits": [{"counter": "p", "window": "10ms", "max": 100000}]}}}"#;
const KEY: &str = "bench-key";

fn call(tool: &str) -> Request<Body> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"namespace":"default","name":"web"}}}}}}"#
    );
    Request::post("/mcp/k8s")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Body::from(body))
        .expect("request")
}

fn edge(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let router = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = format!("http://{}/mcp", listener.local_addr().expect("addr"));
        tokio::spawn(tollgate_demo::serve(
            listener,
            Default::default(),
            std::future::pending(),
        ));
        let policy = tollgate_policy::compile_str("bench.json", POLICY)
            .expect("policy")
            .policy;
        let engine = Arc::new(Engine::new(
            policy,
            Arc::new(MemoryStore::default()),
            Duration::from_secs(1),
        ));
        let key_sha256 = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
        };
        tollgate_edge::router(EdgeParts {
            settings: EdgeSettings::default(),
            upstreams: vec![UpstreamSettings {
                name: "k8s".into(),
                url: upstream,
                ..Default::default()
            }],
            grants: vec![GrantSettings {
                name: "bench".into(),
                agent: None,
                key_sha256,
            }],
            decider: engine,
            policy_status: None,
            identity: Default::default(),
        })
        .expect("edge")
    });
    let mut group = c.benchmark_group("edge");
    group.throughput(Throughput::Elements(1));
    for (name, tool) in [
        ("tools_call_forwarded", "k8s_list_namespaces"),
        ("tools_call_limited_forwarded", "k8s_rollout_pause"),
        ("tools_call_refused", "k8s_delete_namespace"),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let response = router.clone().oneshot(call(tool)).await.expect("response");
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.expect("body").to_bytes()
            })
        });
    }
    group.bench_function("malformed_json", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::post("/mcp/k8s")
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(Body::from("{\"jsonrpc\": \"2.0\", "))
                .expect("request");
            let response = router.clone().oneshot(request).await.expect("response");
            assert_eq!(response.status(), 400);
        })
    });
    group.finish();
}

criterion_group!(benches, edge);
criterion_main!(benches);
