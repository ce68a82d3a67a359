//! One resolution of every request (issue 23): each hole a hostile review found in the
//! edge, as a test that an attacking agent's request does not get through. The edge runs
//! in process (its router, the decision engine on the memory store) in front of real
//! upstreams over loopback that record everything that reaches them, so every test asserts
//! what an upstream received, not only what the agent was told.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::hostile::{Hostile, Reply, tools_list};
use support::jwt::{Jwks, claims, es256, identity_section, sign};
use tollgate_decision::Engine;
use tollgate_edge::{EdgeParts, EdgeSettings, GrantSettings, IdentitySettings, UpstreamSettings};
use tollgate_limiter::MemoryStore;
use tower::ServiceExt;

const KEY_ALL: &str = "key-of-grant-all";
const KEY_PUBLIC: &str = "key-of-grant-public-only";
const KEY_OTHER: &str = "key-of-grant-other";

/// An upstream answering like an honest MCP server: lists, resources, a result for
/// everything else.
async fn upstream(tools: &'static [&'static str], resources: &'static [&'static str]) -> Hostile {
    Hostile::start(move |method, message| {
        if method != Method::POST {
            return Reply::Hang(": open\n\n".into());
        }
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        let result = match message.get("method").and_then(Value::as_str) {
            Some("initialize") => {
                json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}, "resources": {}},
                                          "serverInfo": {"name": "u", "version": "1"}})
            }
            Some("tools/list") => {
                return Reply::Json(200, tools_list(&id.to_string(), tools));
            }
            Some("resources/list") => {
                let listed: Vec<Value> = resources.iter().map(|u| json!({"uri": u, "name": u})).collect();
                // Pages: the first names a next cursor, the second ends.
                match message.pointer("/params/cursor") {
                    None => json!({"resources": listed, "nextCursor": "page-2"}),
                    Some(_) => json!({"resources": []}),
                }
            }
            Some("resources/templates/list") => json!({"resourceTemplates": []}),
            _ => json!({"content": [{"type": "text", "text": "done"}]}),
        };
        Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
    })
    .await
}

struct Gate {
    router: axum::Router,
    secret: Hostile,
    public: Hostile,
}

fn grant(name: &str, key: &str, servers: Option<&[&str]>) -> GrantSettings {
    GrantSettings {
        name: name.into(),
        agent: None,
        key_sha256: support::sha256_hex(key),
        servers: servers.map(|s| s.iter().map(|s| s.to_string()).collect()),
    }
}

/// The edge's router in process, deciding with `policy` on the memory store, in front of
/// `upstreams` (name, URL), for the grants of these tests.
fn edge(policy: &str, settings: EdgeSettings, identity: IdentitySettings, upstreams: &[(&str, &str)]) -> axum::Router {
    let policy = tollgate_policy::compile_str("policy.json", policy)
        .expect("policy")
        .policy;
    let engine = Arc::new(Engine::new(
        policy,
        Arc::new(MemoryStore::default()),
        Duration::from_secs(1),
    ));
    tollgate_edge::router(EdgeParts {
        settings,
        upstreams: upstreams
            .iter()
            // Not pinned: the edge's own reads of the upstreams' lists would reach every one,
            // and these tests check what agents' requests reach.
            .map(|(name, url)| UpstreamSettings {
                name: (*name).into(),
                url: (*url).into(),
                pinning: Some(tollgate_edge::PinningMode::Off),
                ..Default::default()
            })
            .collect(),
        grants: [
            grant("all", KEY_ALL, None),
            grant("public-only", KEY_PUBLIC, Some(&["public"])),
            grant("other", KEY_OTHER, None),
        ]
        .into_iter()
        // A grant's servers must exist: the public-only grant is there when "public" is.
        .filter(|g| {
            g.servers
                .as_ref()
                .is_none_or(|s| s.iter().all(|n| upstreams.iter().any(|(u, _)| u == n)))
        })
        .collect(),
        decider: engine,
        policy_status: None,
        identity,
    })
    .expect("router")
}

async fn gate(policy: &str, settings: EdgeSettings, identity: IdentitySettings) -> Gate {
    let secret = upstream(&["read_secret"], &["file:///srv/secret/a.txt"]).await;
    let public = upstream(
        &["read_public"],
        &["file:///srv/public/a.txt", "file:///srv/hidden/b.txt"],
    )
    .await;
    let router = edge(
        policy,
        settings,
        identity,
        &[("secret", &secret.url), ("public", &public.url)],
    );
    Gate { router, secret, public }
}

const ALLOW_ALL: &str = r#"{"version": "1", "default": "allow"}"#;

/// One answer: status, headers, and the JSON-RPC message (the last `data:` of an SSE body).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    message: Value,
}

async fn send(
    router: &axum::Router,
    method: Method,
    path: &str,
    bearer: &str,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:8080")
        .header("authorization", format!("Bearer {bearer}"))
        .header("accept", "application/json, text/event-stream");
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = router
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("answer");
    let status = response.status();
    let headers = response.headers().clone();
    let sse = headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/event-stream"));
    let message = if sse {
        // Streams of these tests end, or hang after their first event: read what comes in time.
        let mut text = String::new();
        let mut body = response.into_body();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_millis(500), body.frame()).await {
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .next_back()
            .unwrap_or(Value::Null)
    } else {
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Answer {
        status,
        headers,
        message,
    }
}

fn call(id: u64, name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {}}})
}

fn posts_of(upstream: &Hostile, method: &str) -> usize {
    upstream
        .bodies()
        .iter()
        .filter(|b| serde_json::from_str::<Value>(b).is_ok_and(|v| v["method"] == method))
        .count()
}

#[derive(serde::Deserialize)]
struct WithIdentity {
    identity: IdentitySettings,
}

/// Hole 1: the scope check and the routing read the same, decoded, upstream name.
#[tokio::test]
async fn a_percent_encoded_upstream_name_is_checked_like_the_plain_one() {
    let es = es256("ec-resolution");
    let jwks = Jwks::start(vec![es.jwk.clone()]).await;
    let section = identity_section(&jwks.url).replace("k8s = [\"mcp:k8s\"]", "secret = [\"mcp:secret\"]");
    let identity: WithIdentity = toml::from_str(&section).expect("identity");
    let gate = gate(ALLOW_ALL, EdgeSettings::default(), identity.identity).await;
    let token = sign(&es, &claims()); // scopes: openid mcp:k8s, not mcp:secret
    for path in [
        "/mcp/secret",
        "/mcp/%73ecret",
        "/mcp/%73%65%63%72%65%74",
        "/mcp/secre%74",
    ] {
        let answer = send(
            &gate.router,
            Method::POST,
            path,
            &token,
            &[],
            Some(&call(1, "read_secret")),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "POST {path}: {}", answer.message);
        let challenge = answer
            .headers
            .get("www-authenticate")
            .expect("challenge")
            .to_str()
            .expect("text");
        assert!(
            challenge.contains("insufficient_scope") && challenge.contains("mcp:secret"),
            "{challenge}"
        );
        for method in [Method::GET, Method::DELETE] {
            let answer = send(
                &gate.router,
                method.clone(),
                path,
                &token,
                &[("mcp-session-id", "s-1")],
                None,
            )
            .await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path}");
        }
    }
    assert!(
        gate.secret.received().is_empty(),
        "nothing reached the secret upstream: {:?}",
        gate.secret.bodies()
    );
    let answer = send(
        &gate.router,
        Method::POST,
        "/mcp/public",
        &token,
        &[],
        Some(&call(2, "read_public")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.message);
    assert_eq!(posts_of(&gate.public, "tools/call"), 1);
}

/// Hole 2: `[[grants]] servers` holds on every endpoint and method.
#[tokio::test]
async fn a_grants_servers_hold_on_every_endpoint_and_method() {
    let gate = gate(ALLOW_ALL, EdgeSettings::default(), IdentitySettings::default()).await;
    for path in ["/mcp/secret", "/mcp/%73ecret"] {
        let answer = send(
            &gate.router,
            Method::POST,
            path,
            KEY_PUBLIC,
            &[],
            Some(&call(1, "read_secret")),
        )
        .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.message);
        let text = answer.message["error"]["message"].as_str().unwrap_or_default();
        assert!(
            text.contains("this grant reaches: public") && !text.contains("secret,"),
            "{text}"
        );
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        assert_eq!(
            send(&gate.router, Method::POST, path, KEY_PUBLIC, &[], Some(&list))
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        for method in [Method::GET, Method::DELETE] {
            let answer = send(
                &gate.router,
                method.clone(),
                path,
                KEY_PUBLIC,
                &[("mcp-session-id", "s-1")],
                None,
            )
            .await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    // An unknown upstream gets the very same answer: the grant learns nothing of "secret".
    let unknown = send(
        &gate.router,
        Method::POST,
        "/mcp/nowhere",
        KEY_PUBLIC,
        &[],
        Some(&call(1, "x")),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(gate.secret.received().is_empty(), "{:?}", gate.secret.bodies());
    let answer = send(
        &gate.router,
        Method::POST,
        "/mcp/secret",
        KEY_ALL,
        &[],
        Some(&call(3, "read_secret")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "another grant still reaches it");
}

/// Opens an aggregated session for `key`; its session id.
async fn aggregated_session(router: &axum::Router, key: &str) -> String {
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let answer = send(router, Method::POST, "/mcp", key, &[], Some(&initialize)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.message);
    answer
        .headers
        .get("mcp-session-id")
        .expect("session")
        .to_str()
        .expect("text")
        .to_owned()
}

/// Hole 5: a notification naming another upstream's request goes to no upstream outside
/// the session.
#[tokio::test]
async fn a_marked_notification_reaches_only_the_sessions_upstreams() {
    let gate = gate(ALLOW_ALL, EdgeSettings::default(), IdentitySettings::default()).await;
    let session = aggregated_session(&gate.router, KEY_PUBLIC).await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "secret~1"}});
    let answer = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_PUBLIC,
        &[("mcp-session-id", &session)],
        Some(&cancel),
    )
    .await;
    assert!(answer.status.is_success(), "{}", answer.status);
    assert!(gate.secret.received().is_empty(), "{:?}", gate.secret.bodies());
    // An answer to a request "secret" never made in this session is refused too.
    let response = json!({"jsonrpc": "2.0", "id": "secret~1", "result": {}});
    let answer = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_PUBLIC,
        &[("mcp-session-id", &session)],
        Some(&response),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(gate.secret.received().is_empty());
}

/// Hole 6: cursors are sealed for the grant, one part per upstream.
#[tokio::test]
async fn list_cursors_are_sealed_for_their_grant_and_cannot_multiply_requests() {
    let gate = gate(ALLOW_ALL, EdgeSettings::default(), IdentitySettings::default()).await;
    let session = aggregated_session(&gate.router, KEY_ALL).await;
    let with = [("mcp-session-id", session.as_str())];
    let list = |cursor: Option<&str>| match cursor {
        Some(c) => json!({"jsonrpc": "2.0", "id": 1, "method": "resources/list", "params": {"cursor": c}}),
        None => json!({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}),
    };
    let first = send(&gate.router, Method::POST, "/mcp", KEY_ALL, &with, Some(&list(None))).await;
    let cursor = first.message["result"]["nextCursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    assert!(cursor.starts_with("tgc1."), "sealed: {cursor}");
    let before = posts_of(&gate.secret, "resources/list") + posts_of(&gate.public, "resources/list");
    let second = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_ALL,
        &with,
        Some(&list(Some(&cursor))),
    )
    .await;
    assert!(second.message["result"]["resources"].is_array(), "{}", second.message);
    let after = posts_of(&gate.secret, "resources/list") + posts_of(&gate.public, "resources/list");
    assert_eq!(after - before, 2, "one request per upstream");

    // The old, unsealed format with 2,000 copies of one part: refused before any request.
    use base64::Engine as _;
    let parts: Vec<(&str, &str)> = std::iter::repeat_n(("public", "page-2"), 2000).collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&parts).expect("json"));
    let answer = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_ALL,
        &with,
        Some(&list(Some(&forged))),
    )
    .await;
    assert_eq!(answer.message["error"]["code"], -32602, "{}", answer.message);
    // Another grant's session cannot use this grant's cursor.
    let other = aggregated_session(&gate.router, KEY_OTHER).await;
    let answer = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_OTHER,
        &[("mcp-session-id", &other)],
        Some(&list(Some(&cursor))),
    )
    .await;
    assert_eq!(answer.message["error"]["code"], -32602, "{}", answer.message);
    let total = posts_of(&gate.secret, "resources/list") + posts_of(&gate.public, "resources/list");
    assert_eq!(total, after, "no upstream request for a refused cursor");
}

/// Hole 7: one grant's held calls and streams cannot take everything.
#[tokio::test]
async fn one_grant_holds_at_most_its_quota_of_calls_and_streams() {
    let policy = r#"{"version": "1", "default": "allow",
        "tools": {"read_public": {"action": "require_approval", "approval": {"hold": "30s", "timeout": "5m"}}}}"#;
    let settings = EdgeSettings {
        max_held_per_grant: 2,
        max_streams_per_grant: 1,
        hold_keepalive_ms: 100,
        ..EdgeSettings::default()
    };
    let gate = gate(policy, settings, IdentitySettings::default()).await;
    let held = |key: &'static str, n: u64| {
        let router = gate.router.clone();
        async move {
            let request = Request::builder()
                .method(Method::POST)
                .uri("/mcp/public")
                .header("host", "127.0.0.1:8080")
                .header("authorization", format!("Bearer {key}"))
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": "read_public", "arguments": {"n": n}}})
                    .to_string(),
                ))
                .expect("request");
            router.oneshot(request).await.expect("answer")
        }
    };
    // Two held calls of grant "all": streams, kept open.
    let first = held(KEY_ALL, 1).await;
    let second = held(KEY_ALL, 2).await;
    for r in [&first, &second] {
        assert_eq!(r.headers()["content-type"], "text/event-stream");
    }
    // The third is answered at once, naming its approval, not held.
    let third = send(&gate.router, Method::POST, "/mcp/public", KEY_ALL, &[],
        Some(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "read_public", "arguments": {"n": 3}}}))).await;
    assert_eq!(third.headers["content-type"], "application/json", "not held");
    let meta = &third.message["result"]["_meta"]["tollgate/decision"];
    assert_eq!(meta["verdict"], "APPROVAL_REQUIRED", "{}", third.message);
    // Another grant is still held.
    let other = held(KEY_OTHER, 4).await;
    assert_eq!(
        other.headers()["content-type"],
        "text/event-stream",
        "another grant's call is held"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = held(KEY_ALL, 5).await;
    assert_eq!(
        again.headers()["content-type"],
        "text/event-stream",
        "room again once a held call ended"
    );

    // Streams: one per grant here.
    let stream = send_stream(&gate.router, KEY_ALL).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let refused = send(
        &gate.router,
        Method::GET,
        "/mcp/public",
        KEY_ALL,
        &[("mcp-session-id", "s-1")],
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.message);
    assert!(
        refused.message["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("edge.max_streams_per_grant")
    );
    assert_eq!(
        send_stream(&gate.router, KEY_OTHER).await.status(),
        StatusCode::OK,
        "another grant's stream"
    );
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        send_stream(&gate.router, KEY_ALL).await.status(),
        StatusCode::OK,
        "room again"
    );
    drop((second, other, again));
}

async fn send_stream(router: &axum::Router, key: &str) -> axum::response::Response {
    let request = Request::builder()
        .method(Method::GET)
        .uri("/mcp/public")
        .header("host", "127.0.0.1:8080")
        .header("authorization", format!("Bearer {key}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "s-1")
        .body(Body::empty())
        .expect("request");
    router.clone().oneshot(request).await.expect("answer")
}

/// Holes 10 and 11: reads of unknown URIs on `/mcp` cost a bounded number of upstream
/// requests, and a hidden resource is answered like a missing one.
#[tokio::test]
async fn unknown_and_hidden_resources_on_mcp_are_answered_alike_and_cheaply() {
    let policy = r#"{"version": "1", "default": "allow",
        "resources": {"file:///srv/hidden/*": {"action": "deny", "reason": "hidden"}, "file:///srv/secret/*": {"action": "deny"}}}"#;
    let gate = gate(policy, EdgeSettings::default(), IdentitySettings::default()).await;
    let session = aggregated_session(&gate.router, KEY_ALL).await;
    let with = [("mcp-session-id", session.as_str())];
    let read = |uri: &str| json!({"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": uri}});
    let mut answers = Vec::new();
    for i in 0..20 {
        let answer = send(
            &gate.router,
            Method::POST,
            "/mcp",
            KEY_ALL,
            &with,
            Some(&read(&format!("file:///srv/public/missing-{i}.txt"))),
        )
        .await;
        answers.push(answer.message["error"].clone());
    }
    let lookups = posts_of(&gate.secret, "resources/list")
        + posts_of(&gate.public, "resources/list")
        + posts_of(&gate.secret, "resources/templates/list")
        + posts_of(&gate.public, "resources/templates/list");
    // One lookup per upstream: its templates and the two pages of its resources.
    assert!(lookups <= 6, "20 unknown URIs cost {lookups} list requests");
    let hidden = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_ALL,
        &with,
        Some(&read("file:///srv/hidden/b.txt")),
    )
    .await;
    let secret = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_ALL,
        &with,
        Some(&read("file:///srv/secret/a.txt")),
    )
    .await;
    let missing = &answers[0];
    for answer in [&hidden.message["error"], &secret.message["error"]] {
        assert_eq!(answer["code"], missing["code"], "{answer} vs {missing}");
        assert_eq!(answer["message"], missing["message"]);
    }
    assert_eq!(missing["code"], -32002);
    assert_eq!(
        posts_of(&gate.secret, "resources/read") + posts_of(&gate.public, "resources/read"),
        0
    );
    // Completions too (found by the hostile review): a hidden resource is completed no more
    // than a missing one, and neither reaches an upstream.
    let complete = |uri: &str| {
        json!({"jsonrpc": "2.0", "id": 10, "method": "completion/complete",
               "params": {"ref": {"type": "ref/resource", "uri": uri}, "argument": {"name": "x", "value": ""}}})
    };
    let mut completions = Vec::new();
    for uri in ["file:///srv/hidden/b.txt", "file:///srv/public/missing-0.txt"] {
        let answer = send(&gate.router, Method::POST, "/mcp", KEY_ALL, &with, Some(&complete(uri))).await;
        completions.push(answer.message["error"].clone());
    }
    assert_eq!(completions[0], completions[1]);
    assert!(completions[0]["code"].is_i64(), "{completions:?}");
    assert_eq!(
        posts_of(&gate.secret, "completion/complete") + posts_of(&gate.public, "completion/complete"),
        0
    );
    let public = send(
        &gate.router,
        Method::POST,
        "/mcp",
        KEY_ALL,
        &with,
        Some(&read("file:///srv/public/a.txt")),
    )
    .await;
    assert!(
        public.message["result"].is_object(),
        "a listed, allowed resource is read: {}",
        public.message
    );
}

/// Hole 4: every other spelling of a resource a rule denies is refused before anything
/// reads it: empty path segments, a trailing '/', dot segments after '?' or '#',
/// `file://localhost/`, user information, a default port; on both front doors.
#[tokio::test]
async fn other_spellings_of_a_denied_resource_are_refused_on_every_door() {
    let policy = r#"{"version": "1", "default": "allow",
        "resources": {"file:///srv/hidden/*": {"action": "deny"}, "file:///srv/hidden": {"action": "deny"},
                      "https://example.com/secret/*": {"action": "deny"}}}"#;
    let gate = gate(policy, EdgeSettings::default(), IdentitySettings::default()).await;
    let session = aggregated_session(&gate.router, KEY_ALL).await;
    let read = |uri: &str| json!({"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": uri}});
    let spellings = [
        "file:///srv//hidden/b.txt",
        "file:////srv/hidden/b.txt",
        "file:///srv/hidden/",
        "file:///srv/public?/../hidden/b.txt",
        "file:///srv/public#/../hidden/b.txt",
        "file:///srv/public/a.txt?..",
        "file://localhost/srv/hidden/b.txt",
        "https://example.com:443/secret/x",
        "https://someone@example.com/secret/x",
        // Found by the hostile review: what URL parsers read as the denied resource.
        "file:/srv/hidden/b.txt",
        "file:srv/hidden/b.txt",
        "https:example.com/secret/x",
        "https:///example.com/secret/x",
        "https://example.com./secret/x",
    ];
    for uri in spellings {
        for (path, extra) in [("/mcp/public", None), ("/mcp", Some(session.as_str()))] {
            let headers: Vec<(&str, &str)> = extra.map(|s| ("mcp-session-id", s)).into_iter().collect();
            let answer = send(&gate.router, Method::POST, path, KEY_ALL, &headers, Some(&read(uri))).await;
            assert_eq!(
                answer.message["error"]["code"], -32602,
                "{uri} on {path}: {}",
                answer.message
            );
        }
    }
    assert_eq!(
        posts_of(&gate.public, "resources/read") + posts_of(&gate.secret, "resources/read"),
        0,
        "no spelling reached an upstream: {:?}",
        gate.public.bodies()
    );
    let plain = send(
        &gate.router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &[],
        Some(&read("file:///srv/public/a.txt")),
    )
    .await;
    assert!(plain.message["result"].is_object(), "{}", plain.message);
    assert_eq!(posts_of(&gate.public, "resources/read"), 1);
}

/// Found by the hostile review: an integer past 64 bits was parsed as a double and forwarded
/// rounded, so the upstream acted on a number the agent never sent (and an approval of one
/// such number admitted its neighbours). Such numbers are refused; strings carry them.
#[tokio::test]
async fn a_number_that_cannot_be_forwarded_exactly_is_refused() {
    let gate = gate(ALLOW_ALL, EdgeSettings::default(), IdentitySettings::default()).await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_public","arguments":{"n":123456789012345678901235}}}"#;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/mcp/public")
        .header("host", "127.0.0.1:8080")
        .header("authorization", format!("Bearer {KEY_ALL}"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let answer = gate.router.clone().oneshot(request).await.expect("answer");
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let bytes = answer.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("send it as a string"), "{text}");
    assert_eq!(posts_of(&gate.public, "tools/call"), 0);
}

/// Issue 26, item 7: a missing or wrong key is answered with Tollgate's own JSON-RPC code,
/// not -32002 (MCP's "resource not found").
#[tokio::test]
async fn authentication_errors_have_a_code_of_their_own() {
    let gate = gate(ALLOW_ALL, EdgeSettings::default(), IdentitySettings::default()).await;
    let answer = send(
        &gate.router,
        Method::POST,
        "/mcp/public",
        "wrong-key",
        &[],
        Some(&call(1, "read_public")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.message["error"]["code"], -32011, "{}", answer.message);
}

/// Hole 12: a prefix ending in part of the separator is refused at start.
#[tokio::test]
async fn a_prefix_that_would_split_elsewhere_is_refused_at_start() {
    let upstream = upstream(&["tool"], &[]).await;
    let parts = |prefix: &str| EdgeParts {
        settings: EdgeSettings::default(),
        upstreams: vec![UpstreamSettings {
            name: "a".into(),
            url: upstream.url.clone(),
            prefix: Some(prefix.into()),
            ..Default::default()
        }],
        grants: vec![grant("all", KEY_ALL, None)],
        decider: Arc::new(Engine::new(
            tollgate_policy::compile_str("p.json", ALLOW_ALL)
                .expect("policy")
                .policy,
            Arc::new(MemoryStore::default()),
            Duration::from_secs(1),
        )),
        policy_status: None,
        identity: IdentitySettings::default(),
    };
    let refused = tollgate_edge::router(parts("a_")).expect_err("refused");
    assert!(refused.to_string().contains("prefix \"a_\""), "{refused}");
    assert!(tollgate_edge::router(parts("a")).is_ok());
}

/// Issue 27, item 7: tasks work on `/mcp` as on `/mcp/{server}`. A task-only tool is listed;
/// a task-augmented call is decided and creates its task upstream; the task id comes back as
/// a handle of the caller's grant, and a request naming it goes to the one upstream that made
/// it, with that upstream's own id. Another grant's request, the raw id, or a handle of
/// another upstream reach nothing; `tasks/list` lists nothing; the initialize answer offers
/// task-augmented calls.
#[tokio::test]
async fn tasks_on_mcp_are_the_grants_own() {
    let script = |me: &'static str| {
        move |method: &Method, message: &Value| {
            if *method != Method::POST {
                return Reply::Hang(": open\n\n".into());
            }
            let Some(id) = message.get("id") else {
                return Reply::Accepted;
            };
            let result = match message.get("method").and_then(Value::as_str) {
                Some("initialize") => json!({"protocolVersion": "2025-11-25",
                    "capabilities": {"tools": {}, "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}},
                    "serverInfo": {"name": me, "version": "1"}}),
                Some("tools/list") => json!({"tools": [
                    {"name": "quick", "inputSchema": {"type": "object"}},
                    {"name": "slow", "inputSchema": {"type": "object"}, "execution": {"taskSupport": "required"}}]}),
                Some("tools/call") => json!({"task": {"taskId": format!("T-{me}"), "status": "working", "ttl": 60000}}),
                Some("tasks/get") => json!({"taskId": message.pointer("/params/taskId"), "status": "completed",
                                            "statusMessage": format!("asked {me}")}),
                Some("tasks/list") => json!({"tasks": [{"taskId": format!("T-{me}"), "status": "working"},
                                                       {"taskId": "T-nobody", "status": "working"}]}),
                _ => json!({}),
            };
            Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
        }
    };
    let work = Hostile::start(script("work")).await;
    let spare = Hostile::start(script("spare")).await;
    let router = edge(
        ALLOW_ALL,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("work", &work.url), ("spare", &spare.url)],
    );
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let opened = send(&router, Method::POST, "/mcp", KEY_ALL, &[], Some(&initialize)).await;
    assert!(
        opened
            .message
            .pointer("/result/capabilities/tasks/requests/tools/call")
            .is_some(),
        "{}",
        opened.message
    );
    let session = aggregated_session(&router, KEY_ALL).await;
    let with = [("mcp-session-id", session.as_str())];
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let listed = send(&router, Method::POST, "/mcp", KEY_ALL, &with, Some(&list)).await;
    let names: Vec<&str> = listed.message["result"]["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"work__slow"), "a task-only tool is listed: {names:?}");
    let task = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "work__slow", "arguments": {}, "task": {"ttl": 60000}}});
    let created = send(&router, Method::POST, "/mcp", KEY_ALL, &with, Some(&task)).await;
    let handle = created.message["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("a task: {}", created.message))
        .to_owned();
    assert!(handle.starts_with("tgk1.") && handle != "T-work", "{handle}");
    let get = |task: &str| json!({"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"taskId": task}});
    let own = send(&router, Method::POST, "/mcp", KEY_ALL, &with, Some(&get(&handle))).await;
    assert_eq!(own.message["result"]["taskId"], json!(handle), "{}", own.message);
    assert_eq!(
        own.message["result"]["statusMessage"], "asked work",
        "routed to its upstream"
    );
    assert!(
        work.bodies().last().is_some_and(|b| b.contains("\"T-work\"")),
        "the upstream got its own id"
    );
    assert_eq!(posts_of(&spare, "tasks/get"), 0);
    let other = aggregated_session(&router, KEY_OTHER).await;
    let before = posts_of(&work, "tasks/get");
    for (key, session, task) in [
        (KEY_OTHER, other.as_str(), handle.as_str()),
        (KEY_ALL, session.as_str(), "T-work"),
        (KEY_ALL, session.as_str(), "tgk1.AAAA"),
    ] {
        let with = [("mcp-session-id", session)];
        let refused = send(&router, Method::POST, "/mcp", key, &with, Some(&get(task))).await;
        assert_eq!(
            refused.message["error"]["code"], -32602,
            "{key} {task}: {}",
            refused.message
        );
    }
    assert_eq!(
        posts_of(&work, "tasks/get"),
        before,
        "no foreign task request reached an upstream"
    );
    assert_eq!(posts_of(&spare, "tasks/get"), 0);
    // Each upstream lists its tasks (its own made one, plus one of nobody here): the grant
    // sees the one it made.
    let tasks = json!({"jsonrpc": "2.0", "id": 5, "method": "tasks/list"});
    let listed = send(&router, Method::POST, "/mcp", KEY_ALL, &with, Some(&tasks)).await;
    assert_eq!(
        listed.message["result"]["tasks"],
        json!([{"taskId": handle, "status": "working"}]),
        "{}",
        listed.message
    );
    let with_other = [("mcp-session-id", other.as_str())];
    let theirs = send(&router, Method::POST, "/mcp", KEY_OTHER, &with_other, Some(&tasks)).await;
    assert_eq!(theirs.message["result"]["tasks"], json!([]), "{}", theirs.message);
    // A handle is no way around routing and decisions: a call that carries one (here in the
    // related-task _meta, unprefixed) is refused, and reaches nothing.
    let calls = posts_of(&work, "tools/call");
    let smuggled = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "quick", "arguments": {},
        "_meta": {"io.modelcontextprotocol/related-task": {"taskId": handle}}}});
    let refused = send(&router, Method::POST, "/mcp", KEY_ALL, &with, Some(&smuggled)).await;
    assert_eq!(refused.message["error"]["code"], -32602, "{}", refused.message);
    assert_eq!(
        posts_of(&work, "tools/call"),
        calls,
        "the smuggled call reached the upstream"
    );
}

/// Issue 27: a 2026-07-28 request reaches the upstream with routing headers derived from the
/// decided message (not the agent's), and a filtered list comes back private to the caller
/// (`cacheScope: "private"`, fresh no longer than `edge.list_cache_ms`), whatever caching the
/// upstream allowed.
#[tokio::test]
async fn a_stateless_request_is_forwarded_with_derived_headers_and_its_list_stays_private() {
    let upstream = Hostile::start(|_, message| {
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        let result = match message.get("method").and_then(Value::as_str) {
            Some("tools/list") => json!({"tools": [
                {"name": "read_public", "inputSchema": {"type": "object"}},
                {"name": "café", "inputSchema": {"type": "object"}}],
                "ttlMs": 600000, "cacheScope": "public", "resultType": "complete"}),
            _ => json!({"content": [{"type": "text", "text": "done"}], "resultType": "complete"}),
        };
        Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
    })
    .await;
    let policy = r#"{"version": "1", "default": "deny", "tools": {"read_public": {}}}"#;
    let router = edge(
        policy,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("public", &upstream.url)],
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {},
                      "io.modelcontextprotocol/logLevel": "debug"});
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}});
    let headers = [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/list")];
    let listed = send(&router, Method::POST, "/mcp/public", KEY_ALL, &headers, Some(&list)).await;
    let result = &listed.message["result"];
    assert_eq!(result["tools"].as_array().map(Vec::len), Some(1), "{result}");
    assert_eq!(result["cacheScope"], "private", "{result}");
    assert!(result["ttlMs"].as_u64().is_some_and(|t| t <= 5000), "{result}");

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "read_public", "arguments": {}, "_meta": meta}});
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "read_public"),
        ("mcp-param-region", "eu"),
    ];
    let answer = send(&router, Method::POST, "/mcp/public", KEY_ALL, &headers, Some(&call)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.message);
    let forwarded = upstream.received();
    let sent = forwarded.last().expect("the call reached the upstream");
    let header = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("mcp-method").as_deref(), Some("tools/call"));
    assert_eq!(header("mcp-name").as_deref(), Some("read_public"));
    assert_eq!(header("mcp-protocol-version").as_deref(), Some("2026-07-28"));
    assert_eq!(
        header("mcp-param-region"),
        None,
        "the agent's own Mcp-Param-* is not passed on"
    );
    // The request's `_meta` (a per-request log level among it) reaches the upstream as sent.
    let body: Value = serde_json::from_str(&sent.body).expect("JSON");
    assert_eq!(body["params"]["_meta"], meta, "{body}");
}

/// Issue 27, item 4: Multi Round-Trip Requests. The upstream's `requestState` never reaches
/// the agent: the edge seals it in an envelope bound to the grant, upstream, subject and
/// arguments. The retry carrying it is decided again but counted once (a limit of one call
/// admits the call and its retry), the upstream gets its own state back, and a forged
/// envelope, one replayed by another grant or for another tool is refused before the
/// upstream.
#[tokio::test]
async fn a_call_that_asks_for_input_is_charged_once_and_its_state_is_sealed() {
    let upstream = Hostile::start(|_, message| {
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        let state = message.pointer("/params/requestState").and_then(Value::as_str);
        let result = match (message.get("method").and_then(Value::as_str), state) {
            (Some("tools/call"), None) => json!({"resultType": "input_required", "requestState": "upstream-state-S1",
                "inputRequests": {"ok": {"method": "elicitation/create",
                    "params": {"message": "Confirm?", "requestedSchema": {"type": "object", "properties": {}}}}}}),
            (Some("tools/call"), Some("upstream-state-S1")) => {
                json!({"content": [{"type": "text", "text": "paid"}], "resultType": "complete"})
            }
            _ => {
                json!({"content": [{"type": "text", "text": "unexpected"}], "isError": true, "resultType": "complete"})
            }
        };
        Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
    })
    .await;
    let policy = r#"{"version": "1", "default": "deny", "tools": {
        "pay": {"limits": [{"counter": "pay", "window": "1m", "max": 1}]}, "refund": {}}}"#;
    let router = edge(
        policy,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("public", &upstream.url)],
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}});
    let call = |tool: &str, state: Option<&str>| {
        let mut params = json!({"name": tool, "arguments": {"amount": 5}, "_meta": meta});
        if let Some(state) = state {
            params["requestState"] = json!(state);
            params["inputResponses"] = json!({"ok": {"action": "accept", "content": {}}});
        }
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    };
    let headers = |tool: &'static str| {
        [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
        ]
    };

    let first = send(
        &router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &headers("pay"),
        Some(&call("pay", None)),
    )
    .await;
    let result = &first.message["result"];
    assert_eq!(result["resultType"], "input_required", "{}", first.message);
    let envelope = result["requestState"].as_str().expect("a requestState").to_owned();
    assert!(
        envelope.starts_with("tgr1.") && !envelope.contains("upstream-state"),
        "{envelope}"
    );

    for (key, tool, state) in [
        (KEY_ALL, "pay", "tgr1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        (KEY_OTHER, "pay", envelope.as_str()),
        (KEY_ALL, "refund", envelope.as_str()),
    ] {
        let name: &'static str = if tool == "pay" { "pay" } else { "refund" };
        let refused = send(
            &router,
            Method::POST,
            "/mcp/public",
            key,
            &headers(name),
            Some(&call(tool, Some(state))),
        )
        .await;
        assert_eq!(
            refused.message["error"]["code"], -32602,
            "{key} {tool}: {}",
            refused.message
        );
    }
    assert_eq!(
        posts_of(&upstream, "tools/call"),
        1,
        "nothing refused reached the upstream"
    );

    let retry = send(
        &router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &headers("pay"),
        Some(&call("pay", Some(&envelope))),
    )
    .await;
    assert_eq!(
        retry.message["result"]["content"][0]["text"], "paid",
        "charged once: {}",
        retry.message
    );
    let sent: Vec<Value> = upstream
        .bodies()
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|b| b["method"] == "tools/call")
        .collect();
    assert_eq!(
        sent.last().map(|b| b["params"]["requestState"].clone()),
        Some(json!("upstream-state-S1")),
        "the upstream's own state"
    );

    // Found by the hostile review: an envelope is good for one retry. Replayed, it would buy
    // executions the limit never counted.
    let calls_before = posts_of(&upstream, "tools/call");
    let replayed = send(
        &router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &headers("pay"),
        Some(&call("pay", Some(&envelope))),
    )
    .await;
    assert_eq!(replayed.message["error"]["code"], -32602, "{}", replayed.message);
    assert_eq!(
        posts_of(&upstream, "tools/call"),
        calls_before,
        "the replay reached no upstream"
    );

    // The limit of one was taken once, by the logical call: a new call is refused.
    let again = send(
        &router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &headers("pay"),
        Some(&call("pay", None)),
    )
    .await;
    assert!(again.message["result"]["isError"] == true, "{}", again.message);
    assert!(
        again.message["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("rate limit")),
        "{}",
        again.message
    );
}

/// From the hostile review of the 2026-07-28 paths: a session-scoped limit holds per grant
/// for stateless calls (they have no session: no shared bucket across grants, and no
/// agent-chosen `Mcp-Session-Id` escapes it); a GET or DELETE carries none of the agent's
/// routing headers; the answer to a decided read is private to its caller.
#[tokio::test]
async fn stateless_calls_cannot_escape_limits_or_smuggle_headers() {
    let upstream = Hostile::start(|method, message| {
        if method != Method::POST {
            return Reply::Json(200, "{}".into());
        }
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        let result = match message.get("method").and_then(Value::as_str) {
            Some("resources/read") => json!({"contents": [{"uri": "file:///srv/public/a.txt", "text": "a"}],
                                             "ttlMs": 600000, "cacheScope": "public", "resultType": "complete"}),
            _ => json!({"content": [{"type": "text", "text": "done"}], "resultType": "complete"}),
        };
        Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
    })
    .await;
    let policy = r#"{"version": "1", "default": "deny",
        "tools": {"chat": {"limits": [{"counter": "chat", "window": "1m", "max": 2, "scope": "session"}]}},
        "resources": {"file:///srv/public/*": {}}}"#;
    let router = edge(
        policy,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("public", &upstream.url)],
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "chat", "arguments": {}, "_meta": meta}});
    let refused = |answer: &Answer| answer.message["result"]["isError"] == true;
    for (i, session) in ["s-1", "s-2", "s-3"].iter().enumerate() {
        let headers = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "chat"),
            ("mcp-session-id", session),
        ];
        let answer = send(&router, Method::POST, "/mcp/public", KEY_ALL, &headers, Some(&call)).await;
        assert_eq!(
            refused(&answer),
            i == 2,
            "call {i} with a new session id: {}",
            answer.message
        );
    }
    // Another grant has a bucket of its own.
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "chat"),
    ];
    let other = send(&router, Method::POST, "/mcp/public", KEY_OTHER, &headers, Some(&call)).await;
    assert!(!refused(&other), "{}", other.message);
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r.headers.get("mcp-session-id").is_none()),
        "a stateless call carries no session id upstream"
    );

    // A decided read is private to its caller.
    let read = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read",
                      "params": {"uri": "file:///srv/public/a.txt", "_meta": meta}});
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "resources/read"),
        ("mcp-name", "file:///srv/public/a.txt"),
    ];
    let answer = send(&router, Method::POST, "/mcp/public", KEY_ALL, &headers, Some(&read)).await;
    assert_eq!(answer.message["result"]["cacheScope"], "private", "{}", answer.message);
    assert!(answer.message["result"]["ttlMs"].as_u64().is_some_and(|t| t <= 5000));

    // GET and DELETE carry none of the agent's routing headers.
    let smuggled = [
        ("mcp-session-id", "s-1"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "danger"),
        ("mcp-param-region", "attacker"),
    ];
    let _ = send(&router, Method::DELETE, "/mcp/public", KEY_ALL, &smuggled, None).await;
    let deleted = upstream
        .received()
        .into_iter()
        .find(|r| r.method == Method::DELETE)
        .expect("the DELETE reached the upstream");
    for name in ["mcp-method", "mcp-name", "mcp-param-region"] {
        assert!(deleted.headers.get(name).is_none(), "{name} was passed on");
    }
}

/// Found by the first hostile review of issue 23: on `/mcp/{server}`, a completion of a
/// resource the policy hides was forwarded (an existence oracle). It is answered like a
/// missing one now; a visible one is completed.
#[tokio::test]
async fn per_server_completions_of_hidden_resources_are_not_forwarded() {
    let policy = r#"{"version": "1", "default": "allow",
        "resources": {"file:///srv/hidden/*": {"action": "deny"}}}"#;
    let gate = gate(policy, EdgeSettings::default(), IdentitySettings::default()).await;
    let complete = |uri: &str| {
        json!({"jsonrpc": "2.0", "id": 10, "method": "completion/complete",
               "params": {"ref": {"type": "ref/resource", "uri": uri}, "argument": {"name": "x", "value": ""}}})
    };
    let hidden = send(
        &gate.router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &[],
        Some(&complete("file:///srv/hidden/b.txt")),
    )
    .await;
    assert_eq!(hidden.message["error"]["code"], -32602, "{}", hidden.message);
    assert_eq!(posts_of(&gate.public, "completion/complete"), 0);
    let visible = send(
        &gate.router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &[],
        Some(&complete("file:///srv/public/a.txt")),
    )
    .await;
    assert!(visible.message["result"].is_object(), "{}", visible.message);
    assert_eq!(posts_of(&gate.public, "completion/complete"), 1);
}

/// Issue 27, item 7 (the 2025-11-25 task shape on `/mcp/{server}`): an upstream knows only
/// the gateway's credential, so the edge never shows its task ids. A created task comes back
/// as a handle sealed for the caller's grant and the upstream; the handle works for that
/// grant only (another grant's request, or the upstream's raw id, is an unknown task and
/// reaches nothing), and a task list lists nothing (the upstream's holds every caller's).
#[tokio::test]
async fn task_ids_are_the_grants_own() {
    let upstream = Hostile::start(|method, message| {
        if *method == Method::GET {
            // The upstream tells every listener of every task (it sees one caller only).
            let status = json!({"jsonrpc": "2.0", "method": "notifications/tasks/status",
                                "params": {"taskId": "T-123", "status": "completed"}});
            return Reply::Hang(format!("event: message\ndata: {status}\n\n"));
        }
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        let result = match message.get("method").and_then(Value::as_str) {
            Some("tools/call") => json!({"task": {"taskId": "T-123", "status": "working", "ttl": 60000}}),
            Some("tasks/get") => json!({"taskId": message.pointer("/params/taskId"), "status": "completed"}),
            Some("tasks/list") => json!({"tasks": [{"taskId": "T-123"}, {"taskId": "T-999"}], "nextCursor": "2"}),
            _ => json!({}),
        };
        Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
    })
    .await;
    let policy = r#"{"version": "1", "default": "deny", "tools": {"slow": {}}}"#;
    let router = edge(
        policy,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("public", &upstream.url)],
    );
    let created = send(
        &router,
        Method::POST,
        "/mcp/public",
        KEY_ALL,
        &[],
        Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "slow", "arguments": {}, "task": {"ttl": 60000}}})),
    )
    .await;
    let handle = created.message["result"]["task"]["taskId"]
        .as_str()
        .expect("a task id")
        .to_owned();
    assert!(handle.starts_with("tgk1.") && handle != "T-123", "{handle}");
    let get = |task: &str| json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {"taskId": task}});
    let own = send(&router, Method::POST, "/mcp/public", KEY_ALL, &[], Some(&get(&handle))).await;
    assert_eq!(
        own.message["result"]["taskId"],
        json!(handle),
        "the same handle again: {}",
        own.message
    );
    let sent = upstream.bodies();
    assert!(
        sent.last().is_some_and(|b| b.contains("\"T-123\"")),
        "the upstream got its own id"
    );
    let before = posts_of(&upstream, "tasks/get");
    for (key, task) in [(KEY_OTHER, handle.as_str()), (KEY_ALL, "T-123"), (KEY_ALL, "tgk1.AAAA")] {
        let refused = send(&router, Method::POST, "/mcp/public", key, &[], Some(&get(task))).await;
        assert_eq!(
            refused.message["error"]["code"], -32602,
            "{key} {task}: {}",
            refused.message
        );
    }
    assert_eq!(
        posts_of(&upstream, "tasks/get"),
        before,
        "no foreign task request reached the upstream"
    );
    // The upstream lists every caller's tasks (T-123 is this grant's, T-999 nobody's here):
    // each grant sees only the tasks it made, by their handles.
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/list"});
    let listed = send(&router, Method::POST, "/mcp/public", KEY_ALL, &[], Some(&list)).await;
    assert_eq!(
        listed.message["result"]["tasks"],
        json!([{"taskId": handle}]),
        "{}",
        listed.message
    );
    let other = send(&router, Method::POST, "/mcp/public", KEY_OTHER, &[], Some(&list)).await;
    assert_eq!(other.message["result"]["tasks"], json!([]), "{}", other.message);
    // A notification about a task reaches only the grant whose task it is (as its handle).
    let stream = [("mcp-session-id", "s-1")];
    let own = send(&router, Method::GET, "/mcp/public", KEY_ALL, &stream, None).await;
    assert_eq!(own.message["params"]["taskId"], json!(handle), "{}", own.message);
    let theirs = send(&router, Method::GET, "/mcp/public", KEY_OTHER, &stream, None).await;
    assert_eq!(
        theirs.message,
        Value::Null,
        "another grant's task status reached it: {}",
        theirs.message
    );
}

/// From the second hostile review of issue 27: an answer to a decided call that the edge
/// cannot parse (here a duplicate key) is not passed on, since its `requestState` could not
/// be sealed nor its lists filtered.
#[tokio::test]
async fn an_answer_the_edge_cannot_parse_is_not_passed_on() {
    let upstream = Hostile::start(|_, message| {
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        Reply::Json(
            200,
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"x":1,"x":2,"resultType":"input_required","requestState":"UPSTREAM-RAW-STATE"}}}}"#
            ),
        )
    })
    .await;
    let router = edge(
        ALLOW_ALL,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("work", &upstream.url)],
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "quick", "arguments": {}, "_meta": meta}});
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "quick"),
    ];
    let answer = send(&router, Method::POST, "/mcp/work", KEY_ALL, &headers, Some(&call)).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.message);
    assert!(
        !answer.message.to_string().contains("UPSTREAM-RAW-STATE"),
        "{}",
        answer.message
    );
}

/// From the hostile review of the 2026-07-28 paths: on `/mcp`, the edge's own lookups that
/// route a stateless read are made in that revision too (with its envelope and headers), so
/// an upstream that speaks only 2026-07-28 answers them and the read is routed.
#[tokio::test]
async fn stateless_reads_on_mcp_are_routed_by_lookups_in_the_same_revision() {
    let upstream = Hostile::start(|_, message| {
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        if message
            .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
            .is_none()
        {
            let error = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "2026-07-28 only"}});
            return Reply::Json(400, error.to_string());
        }
        let result = match message.get("method").and_then(Value::as_str) {
            Some("resources/list") => json!({"resources": [{"uri": "file:///srv/public/a.txt", "name": "a"}],
                                             "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}),
            Some("resources/templates/list") => json!({"resourceTemplates": [], "resultType": "complete"}),
            _ => json!({"contents": [{"uri": "file:///srv/public/a.txt", "text": "a"}], "resultType": "complete"}),
        };
        Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
    })
    .await;
    let router = edge(
        ALLOW_ALL,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("public", &upstream.url)],
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let read = json!({"jsonrpc": "2.0", "id": 4, "method": "resources/read",
                      "params": {"uri": "file:///srv/public/a.txt", "_meta": meta}});
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "resources/read"),
        ("mcp-name", "file:///srv/public/a.txt"),
    ];
    let answer = send(&router, Method::POST, "/mcp", KEY_ALL, &headers, Some(&read)).await;
    assert_eq!(
        answer.message["result"]["contents"][0]["text"], "a",
        "{}",
        answer.message
    );
}

/// The whole body of a streamed answer (these streams end), as text.
async fn stream_text(router: &axum::Router, path: &str, key: &str, headers: &[(&str, &str)], body: &Value) -> String {
    let mut request = axum::http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("answer");
    let mut text = String::new();
    let mut body = response.into_body();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text
}

/// From the hostile review of issue 27's second part: a listen stream carries what was asked
/// for and may be read, whatever the upstream sends (an acknowledgment naming more URIs,
/// updates of URIs nobody subscribed to), on both endpoints.
#[tokio::test]
async fn a_listen_stream_passes_only_what_was_asked_and_may_be_read() {
    let upstream = Hostile::start(|_, message| {
        let Some(id) = message.get("id") else {
            return Reply::Accepted;
        };
        let meta = json!({"io.modelcontextprotocol/subscriptionId": id});
        match message.get("method").and_then(Value::as_str) {
            Some("subscriptions/listen") => {
                let events = [
                    json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                           "params": {"_meta": meta, "notifications": {"resourceSubscriptions": ["file:///pub/a", "file:///secret/b"]}}}),
                    json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                           "params": {"_meta": meta, "uri": "file:///secret/b"}}),
                    json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                           "params": {"_meta": meta, "uri": "file:///pub/a"}}),
                    json!({"jsonrpc": "2.0", "id": id, "result": {"resultType": "complete", "_meta": meta}}),
                ];
                Reply::Sse(events.iter().map(|e| format!("event: message\ndata: {e}\n\n")).collect())
            }
            Some("resources/list") => Reply::Json(
                200,
                json!({"jsonrpc": "2.0", "id": id, "result": {"resources": [
                    {"uri": "file:///pub/a", "name": "a"}, {"uri": "file:///secret/b", "name": "b"}]}})
                .to_string(),
            ),
            _ => Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string()),
        }
    })
    .await;
    let policy = r#"{"version": "1", "default": "deny", "resources": {"file:///pub/*": {}}}"#;
    let router = edge(
        policy,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("work", &upstream.url)],
    );
    let listen = json!({"jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}},
                   "notifications": {"resourceSubscriptions": ["file:///pub/a", "file:///secret/b"]}}});
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "subscriptions/listen"),
    ];
    for path in ["/mcp/work", "/mcp"] {
        let text = stream_text(&router, path, KEY_ALL, &headers, &listen).await;
        assert!(
            text.contains("notifications/subscriptions/acknowledged") && text.contains("file:///pub/a"),
            "{path}: {text}"
        );
        assert!(
            !text.contains("secret"),
            "{path}: the stream names a URI the grant may not read: {text}"
        );
        assert!(
            text.contains("\"resultType\":\"complete\""),
            "{path}: ended gracefully: {text}"
        );
        let asked = upstream.bodies();
        let asked = asked
            .iter()
            .rev()
            .find(|b| b.contains("subscriptions/listen"))
            .expect("a listen reached the upstream");
        assert!(!asked.contains("secret"), "{path}: the upstream was asked for {asked}");
    }
}

/// From the hostile review of issue 27's second part: what the edge checks cannot travel in
/// a JSON-RPC batch on `/mcp/{server}` (tasks, subscriptions, completions, discovery, a task
/// handle anywhere); what it forwards as it is still can.
#[tokio::test]
async fn batches_carry_nothing_the_edge_checks() {
    let upstream = Hostile::start(|_, message| match message {
        Value::Array(items) => Reply::Json(
            200,
            Value::Array(
                items
                    .iter()
                    .filter_map(|m| m.get("id"))
                    .map(|id| json!({"jsonrpc": "2.0", "id": id, "result": {}}))
                    .collect(),
            )
            .to_string(),
        ),
        _ => Reply::Accepted,
    })
    .await;
    let router = edge(
        ALLOW_ALL,
        EdgeSettings::default(),
        IdentitySettings::default(),
        &[("work", &upstream.url)],
    );
    let with = [("mcp-session-id", "s-1")];
    for item in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "tasks/list", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/result", "params": {"taskId": "T-1"}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "resources/subscribe", "params": {"uri": "file:///secret/b"}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "completion/complete",
               "params": {"ref": {"type": "ref/resource", "uri": "file:///secret/{x}"}, "argument": {"name": "x", "value": ""}}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "subscriptions/listen", "params": {}}),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 1, "_meta": {"io.modelcontextprotocol/related-task": {"taskId": "T-1"}}}}),
    ] {
        let batch = json!([{"jsonrpc": "2.0", "id": 9, "method": "ping"}, item]);
        let answer = send(&router, Method::POST, "/mcp/work", KEY_ALL, &with, Some(&batch)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{item}: {}", answer.message);
    }
    assert!(upstream.bodies().is_empty(), "nothing reached the upstream");
    let fine = json!([{"jsonrpc": "2.0", "id": 9, "method": "ping"},
                      {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
    let answer = send(&router, Method::POST, "/mcp/work", KEY_ALL, &with, Some(&fine)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.message);
}
