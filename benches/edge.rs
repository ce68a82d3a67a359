//! The edge's work for one MCP request, in-process (no client socket): bearer-key check,
//! JSON-RPC parsing, the decision (in-process engine, memory store) and forwarding to the
//! demo upstream over loopback HTTP, with the answer streamed back. Also a refused call
//! (no upstream hop) and a malformed body.
//!
//! `edge_identity`: the same refused call with a static key and with JWT access tokens
//! (ES256, EdDSA, RS256), which isolates the cost of validating a token. `edge_socket`: the
//! refused call through a real loopback connection (keep-alive), plain and over TLS.
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
    call_as(tool, KEY)
}

fn call_body(tool: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"namespace":"default","name":"web"}}}}}}"#
    )
}

fn call_as(tool: &str, bearer: &str) -> Request<Body> {
    let body = call_body(tool);
    Request::post("/mcp/k8s")
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Body::from(body))
        .expect("request")
}

/// JWT issuers for the bench: one key per algorithm in a JWKS file, and a token for each.
fn tokens(dir: &std::path::Path) -> (tollgate_edge::IdentitySettings, Vec<(&'static str, String)>) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let rsa_key = {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        (
            private.to_public_key(),
            private.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
        )
    };
    let es_raw = es.public_key_raw();
    let jwks = {
        use rsa::traits::PublicKeyParts;
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "es", "alg": "ES256", "x": B64.encode(&es_raw[1..33]), "y": B64.encode(&es_raw[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA", "x": B64.encode(ed.public_key_raw())},
            {"kty": "RSA", "kid": "rs", "alg": "RS256", "n": B64.encode(rsa_key.0.n().to_bytes_be()), "e": B64.encode(rsa_key.0.e().to_bytes_be())}
        ]})
    };
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks.to_string()).expect("write jwks");
    let identity: tollgate_edge::IdentitySettings = serde_json::from_value(json!({
        "jwt": [{"issuer": "https://issuer.bench", "audiences": ["bench"], "jwks_file": file,
                 "grant": "bench", "refresh_s": 3600}]
    }))
    .expect("identity settings");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = json!({"iss": "https://issuer.bench", "aud": "bench", "sub": "bench-agent", "exp": exp});
    let sign = |alg: Algorithm, kid: &str, key: EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let tokens = vec![
        (
            "es256",
            sign(
                Algorithm::ES256,
                "es",
                EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).expect("key"),
            ),
        ),
        (
            "eddsa",
            sign(
                Algorithm::EdDSA,
                "ed",
                EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("key"),
            ),
        ),
        (
            "rs256",
            sign(
                Algorithm::RS256,
                "rs",
                EncodingKey::from_rsa_pem(rsa_key.1.as_bytes()).expect("key"),
            ),
        ),
    ];
    (identity, tokens)
}

fn edge(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tollgate-bench-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (identity, tokens) = tokens(&dir);
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
                servers: None,
            }],
            decider: engine,
            policy_status: None,
            identity: identity.clone(),
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

    let mut group = c.benchmark_group("edge_identity");
    group.throughput(Throughput::Elements(1));
    let mut bearers = vec![("static_key", KEY.to_owned())];
    bearers.extend(tokens.iter().map(|(name, token)| (*name, token.clone())));
    for (name, bearer) in &bearers {
        group.bench_function(format!("tools_call_refused_{name}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let response = router
                    .clone()
                    .oneshot(call_as("k8s_delete_namespace", bearer))
                    .await
                    .expect("response");
                assert_eq!(response.status(), 200);
            })
        });
    }
    group.finish();

    // The same refused call through a loopback connection kept alive, plain and over TLS.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    let (cert, key) = (dir.join("edge.crt"), dir.join("edge.key"));
    std::fs::write(&cert, leaf.pem()).expect("write");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write");
    let tls = tollgate_tls::server_config(&cert, &key, None, &[b"http/1.1"]).expect("tls");
    let (plain_url, tls_url) = runtime.block_on(async {
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let urls = (
            format!("http://{}/mcp/k8s", plain.local_addr().expect("addr")),
            format!(
                "https://localhost:{}/mcp/k8s",
                secure.local_addr().expect("addr").port()
            ),
        );
        let limits = EdgeSettings::default().limits();
        tokio::spawn(tollgate_edge::serve(
            plain,
            router.clone(),
            limits,
            std::future::pending(),
        ));
        tokio::spawn(tollgate_edge::serve_tls(
            secure,
            router.clone(),
            limits,
            Some(tls),
            std::future::pending(),
        ));
        urls
    });
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let mut group = c.benchmark_group("edge_socket");
    group.throughput(Throughput::Elements(1));
    for (name, url) in [("plain", &plain_url), ("tls", &tls_url)] {
        group.bench_function(format!("tools_call_refused_{name}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let response = client
                    .post(url.as_str())
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(call_body("k8s_delete_namespace"))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), 200);
                response.bytes().await.expect("body")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, edge);
criterion_main!(benches);
