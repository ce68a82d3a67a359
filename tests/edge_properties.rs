//! Property tests of the edge router, in process: thousands of generated bodies and headers
//! (malformed JSON, wrong types in every field, huge or fractional ids, deep nesting,
//! invalid UTF-8, duplicate and case-variant keys, batches, notifications, unknown
//! methods) against a real upstream over loopback that records what reaches it. Whatever
//! comes in: no panic, every answer a well-formed HTTP/JSON-RPC answer, no denied tool
//! forwarded, no denied tool listed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::hostile::{Hostile, Reply, tools_list};
use tollgate_decision::Engine;
use tollgate_edge::{EdgeParts, EdgeSettings, GrantSettings, UpstreamSettings};
use tollgate_limiter::MemoryStore;
use tower::ServiceExt;

const KEY: &str = "property-key";
const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"allowed": {}, "secret": {"action": "deny"},
    "limited": {"limits": [{"counter": "c", "window": "1s", "max": 100000, "scope": ["grant", "argument:ns"]}]}}}"#;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    upstream: Hostile,
}

fn harness() -> Harness {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (router, upstream) = runtime.block_on(async {
        let upstream = Hostile::start(|method, message| {
            if method != axum::http::Method::POST {
                return Reply::Sse(format!("data: {}\n\n", tools_list("1", &["allowed", "secret"])));
            }
            match (message.get("method").and_then(Value::as_str), message.get("id")) {
                (_, None) => Reply::Accepted,
                (Some("tools/list"), Some(id)) => Reply::Sse(format!(
                    "event: message\ndata: {}\n\n",
                    tools_list(&id.to_string(), &["allowed", "secret", "limited"])
                )),
                (_, Some(id)) => Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string()),
            }
        })
        .await;
        let policy = tollgate_policy::compile_str("policy.json", POLICY)
            .expect("policy")
            .policy;
        let engine = Arc::new(Engine::new(
            policy,
            Arc::new(MemoryStore::default()),
            Duration::from_secs(1),
        ));
        let router = tollgate_edge::router(EdgeParts {
            settings: EdgeSettings {
                max_body_bytes: 64 * 1024,
                ..EdgeSettings::default()
            },
            upstreams: vec![UpstreamSettings {
                name: "k8s".into(),
                url: upstream.url.clone(),
                ..Default::default()
            }],
            grants: vec![GrantSettings {
                name: "g".into(),
                agent: None,
                key_sha256: support::sha256_hex(KEY),
                servers: None,
            }],
            decider: engine,
            policy_status: None,
            identity: Default::default(),
        })
        .expect("router");
        (router, upstream)
    });
    Harness {
        runtime,
        router,
        upstream,
    }
}

fn tool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("allowed".to_owned()),
        Just("secret".to_owned()),
        Just("limited".to_owned()),
        Just(String::new()),
        Just("x".repeat(300)),
        Just("allowed\nsecret".to_owned()),
        "[a-z_/.-]{1,12}",
        any::<String>(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn id() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        8 => any::<i64>().prop_map(|n| Some(n.to_string())),
        1 => Just(Some("1.0".to_owned())),
        1 => Just(Some("1e0".to_owned())),
        1 => Just(Some("1.5".to_owned())),
        1 => Just(Some("123456789012345678901234567890".to_owned())),
        1 => Just(Some("null".to_owned())),
        1 => Just(Some("[1]".to_owned())),
        4 => "[a-z0-9]{0,8}".prop_map(|s| Some(format!("\"{s}\""))),
        1 => Just(Some(format!("\"{}\"", "i".repeat(400)))),
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("tools/call".to_owned()),
        Just("tools/call".to_owned()),
        Just("tools/list".to_owned()),
        Just("ping".to_owned()),
        Just("initialize".to_owned()),
        Just("notifications/initialized".to_owned()),
        Just("resources/read".to_owned()),
        Just("Tools/Call".to_owned()),
        ".{0,20}",
    ]
}

/// One message as text: generated fields, some of them duplicated or case-varied.
fn message_text() -> impl Strategy<Value = String> {
    (
        id(),
        method(),
        tool_name(),
        json_value(),
        prop::bool::weighted(0.9),
        prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3), 1 => Just(4), 1 => Just(5)],
        tool_name(),
    )
        .prop_map(|(id, method, tool, arguments, jsonrpc_ok, twist, other_tool)| {
            let mut members = Vec::new();
            members.push(format!(
                "\"jsonrpc\":{}",
                if jsonrpc_ok { "\"2.0\"" } else { "\"1.0\"" }
            ));
            if let Some(id) = id {
                members.push(format!("\"id\":{id}"));
            }
            members.push(format!("\"method\":{}", Value::from(method)));
            let tool = Value::from(tool);
            let other = Value::from(other_tool);
            let params = match twist {
                0 => format!("{{\"name\":{tool},\"arguments\":{arguments}}}"),
                1 => format!("{{\"name\":{tool},\"name\":{other}}}"),
                2 => format!("{{\"Name\":{other},\"name\":{tool}}}"),
                3 => format!("{{\"name\":{tool},\"arguments\":{arguments},\"task\":{{}}}}"),
                4 => arguments.to_string(),
                _ => format!("{{\"name\":{tool}}}"),
            };
            members.push(format!("\"params\":{params}"));
            if twist == 5 {
                members.push("\"Method\":\"tools/call\"".to_owned());
            }
            format!("{{{}}}", members.join(","))
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        10 => message_text().prop_map(String::into_bytes),
        2 => prop::collection::vec(message_text(), 0..4).prop_map(|m| format!("[{}]", m.join(",")).into_bytes()),
        1 => (message_text(), 0usize..100).prop_map(|(m, cut)| m.as_bytes()[..cut.min(m.len())].to_vec()),
        1 => (0usize..400).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        1 => (0usize..400, message_text()).prop_map(|(n, m)| format!("{}{m}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

#[derive(Debug, Clone)]
struct Headers {
    content_type: Option<&'static str>,
    sessions: Vec<String>,
    origin: Option<&'static str>,
    authorized: bool,
}

fn headers() -> impl Strategy<Value = Headers> {
    (
        prop_oneof![
            12 => Just(Some("application/json")),
            2 => Just(Some("application/json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ],
        prop_oneof![
            4 => Just(Vec::new()),
            4 => "[a-f0-9-]{1,36}".prop_map(|s| vec![s]),
            1 => prop::collection::vec("[ -~]{0,40}", 0..3),
        ],
        prop_oneof![
            12 => Just(None),
            1 => Just(Some("http://localhost:3000")),
            1 => Just(Some("http://evil.example"))
        ],
        prop::bool::weighted(0.95),
    )
        .prop_map(|(content_type, sessions, origin, authorized)| Headers {
            content_type,
            sessions,
            origin,
            authorized,
        })
}

/// Checks one answer is a well-formed HTTP/JSON-RPC answer that lists no denied tool.
fn check_answer(status: u16, content_type: &str, body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        status < 500 || status == 502 || status == 503 || status == 504,
        "status {status}"
    );
    if status == 202 {
        return Ok(());
    }
    let messages: Vec<Value> = if content_type.starts_with("text/event-stream") {
        let text = std::str::from_utf8(body).map_err(|e| TestCaseError::fail(format!("SSE not UTF-8: {e}")))?;
        support::sse_messages(text)
    } else {
        prop_assert!(
            content_type.starts_with("application/json"),
            "content type {content_type:?}"
        );
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| TestCaseError::fail(format!("answer is not JSON ({e}): {}", String::from_utf8_lossy(body))))?;
        match value {
            Value::Array(items) => items,
            other => vec![other],
        }
    };
    for message in messages {
        prop_assert_eq!(message.get("jsonrpc"), Some(&json!("2.0")), "{}", message);
        prop_assert!(
            message.get("result").is_some() != message.get("error").is_some() || message.get("method").is_some(),
            "one of result or error: {}",
            message
        );
        if let Some(tools) = message.pointer("/result/tools").and_then(Value::as_array) {
            prop_assert!(
                tools.iter().all(|t| t.get("name") != Some(&json!("secret"))),
                "a denied tool was listed: {}",
                message
            );
        }
    }
    Ok(())
}

#[test]
fn the_edge_answers_anything_well_and_never_forwards_a_denied_call() {
    let h = harness();
    let config = ProptestConfig {
        cases: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let checked = std::sync::atomic::AtomicUsize::new(0);
    proptest!(config, |(body in body(), headers in headers(), get in prop::bool::weighted(0.05))| {
        let mut request = if get { Request::get("/mcp/k8s") } else { Request::post("/mcp/k8s") };
        request = request.header("accept", "application/json, text/event-stream");
        if headers.authorized {
            request = request.header("authorization", format!("Bearer {KEY}"));
        }
        if let Some(ct) = headers.content_type {
            request = request.header("content-type", ct);
        }
        for s in &headers.sessions {
            request = request.header("mcp-session-id", s.as_str());
        }
        if let Some(origin) = headers.origin {
            request = request.header("origin", origin);
        }
        let request = request.body(Body::from(body.clone())).expect("request");
        let (status, content_type, answer) = h.runtime.block_on(async {
            let response = h.router.clone().oneshot(request).await.expect("infallible");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let answer = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
                .await
                .expect("the answer completes")
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, content_type, answer)
        });
        check_answer(status, &content_type, &answer)?;
        let bodies = h.upstream.bodies();
        let seen = checked.swap(bodies.len(), std::sync::atomic::Ordering::SeqCst);
        for forwarded in &bodies[seen..] {
            let value: Value = serde_json::from_str(forwarded).expect("the edge forwards JSON");
            let calls: Vec<&Value> = match &value {
                Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            for call in calls {
                prop_assert!(
                    !(call.get("method") == Some(&json!("tools/call"))
                        && call.pointer("/params/name") == Some(&json!("secret"))),
                    "a denied call was forwarded: {forwarded}"
                );
                prop_assert!(
                    call.get("method") != Some(&json!("tools/call")) || call.get("id").is_some(),
                    "a tools/call notification was forwarded: {forwarded}"
                );
            }
        }
    });
}

/// The resolution's harness: a grant that reaches `public` only, and a `secret` upstream it
/// must never reach, whatever the path's spelling.
struct Resolution {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    public: Hostile,
    secret: Hostile,
}

const RESOLUTION_POLICY: &str = r#"{"version": "1", "default": "deny",
    "tools": {"allowed": {}},
    "resources": {"file:///srv/*": {}, "file:///srv/secret": {"action": "deny"}, "file:///srv/secret/*": {"action": "deny"}}}"#;

fn resolution_harness() -> Resolution {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (router, public, secret) = runtime.block_on(async {
        let answer = |_: &axum::http::Method, message: &Value| match message.get("id") {
            Some(id) => Reply::Json(200, json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string()),
            None => Reply::Accepted,
        };
        let public = Hostile::start(answer).await;
        let secret = Hostile::start(answer).await;
        let policy = tollgate_policy::compile_str("policy.json", RESOLUTION_POLICY)
            .expect("policy")
            .policy;
        let engine = Arc::new(Engine::new(
            policy,
            Arc::new(MemoryStore::default()),
            Duration::from_secs(1),
        ));
        // Not pinned: the edge's own reads of the upstreams' lists would reach both, and
        // this harness counts what agents' requests reach.
        let upstream = |name: &str, url: &str| UpstreamSettings {
            name: name.into(),
            url: url.into(),
            pinning: Some(tollgate_edge::PinningMode::Off),
            ..Default::default()
        };
        let router = tollgate_edge::router(EdgeParts {
            settings: EdgeSettings::default(),
            upstreams: vec![upstream("public", &public.url), upstream("secret", &secret.url)],
            grants: vec![GrantSettings {
                name: "g".into(),
                agent: None,
                key_sha256: support::sha256_hex(KEY),
                servers: Some(vec!["public".into()]),
            }],
            decider: engine,
            policy_status: None,
            identity: Default::default(),
        })
        .expect("router");
        (router, public, secret)
    });
    Resolution {
        runtime,
        router,
        public,
        secret,
    }
}

/// A spelling of `name`: each character as it is, in the other case, or percent-encoded
/// (either hex case); sometimes with a dot segment or a slash around it.
fn spelling(name: &'static str) -> impl Strategy<Value = String> {
    let chars: Vec<char> = name.chars().collect();
    (
        prop::collection::vec(0u8..6, chars.len()),
        prop_oneof![6 => Just(""), 1 => Just("/"), 1 => Just("/."), 1 => Just("/x/.."), 1 => Just("%2F"), 1 => Just(";x")],
        prop_oneof![8 => Just(""), 1 => Just("./"), 1 => Just("x/../"), 1 => Just("%2e/")],
    )
        .prop_map(move |(ways, suffix, prefix)| {
            let mut out = String::from(prefix);
            for (c, way) in chars.iter().zip(ways) {
                match way {
                    0..=2 => out.push(*c),
                    3 => out.push(c.to_ascii_uppercase()),
                    4 => out.push_str(&format!("%{:02x}", *c as u32)),
                    _ => out.push_str(&format!("%{:02X}", *c as u32)),
                }
            }
            out.push_str(suffix);
            out
        })
}

/// A spelling of a resource URI under `file:///srv/`: plain, or with empty segments, dot
/// segments, percent-encodings, case changes and trailing parts a pattern might miss.
fn uri_spelling() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => Just("secret".to_owned()),
        2 => Just("public".to_owned()),
        1 => Just("Secret".to_owned()),
        1 => Just("%73ecret".to_owned()),
        1 => Just("".to_owned()),
        1 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just("%2e%2e".to_owned()),
        1 => Just("a.txt".to_owned()),
    ];
    (
        prop_oneof![6 => Just("file:///srv/"), 1 => Just("file:////srv/"), 1 => Just("FILE:///srv/"), 1 => Just("file://localhost/srv/")],
        prop::collection::vec(segment, 1..4),
        prop_oneof![4 => Just(""), 1 => Just("/"), 1 => Just("?x=/../secret"), 1 => Just("#/../secret"), 1 => Just("%2Fsecret")],
    )
        .prop_map(|(start, segments, end)| format!("{start}{}{end}", segments.join("/")))
}

/// What a URI names once every spelling is undone: percent-decoded, the scheme and host
/// lowercased, empty and dot segments resolved, query and fragment dropped.
fn undone(uri: &str) -> String {
    let mut bytes = Vec::new();
    let raw = uri.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let Some(b) = uri.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            bytes.push(b);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let path = text.split(['?', '#']).next().unwrap_or_default();
    // Scheme and host are case-insensitive; the path is not.
    let path = match path.get(..7) {
        Some(start) if start.eq_ignore_ascii_case("file://") => &path[7..],
        _ => path,
    };
    let path = match path.get(..9) {
        Some(host) if host.eq_ignore_ascii_case("localhost") => &path[9..],
        _ => path,
    };
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

#[test]
fn every_check_agrees_with_what_the_upstream_acts_on() {
    let h = resolution_harness();
    let config = ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let read_public = std::sync::atomic::AtomicUsize::new(0);
    let path = prop_oneof![spelling("public"), spelling("secret")];
    let name = prop_oneof![3 => spelling("allowed"), 1 => "[a-zA-Z_]{1,10}"];
    let arguments = prop_oneof![
        Just(json!({"ns": "default"})),
        Just(json!({"ns": "007", "n": 7})),
        Just(json!({"n": 12345678901234567890u64, "m": 1e300})),
        Just(json!({"a": {"b": [1, "1", 1.5]}})),
    ];
    proptest!(config, |(path in path, name in name, uri in uri_spelling(), arguments in arguments, read in prop::bool::weighted(0.3))| {
        let message = if read {
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}})
        } else {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        };
        let request = Request::post(format!("/mcp/{path}"))
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Body::from(message.to_string()))
            .expect("request");
        let status = h.runtime.block_on(async {
            let response = h.router.clone().oneshot(request).await.expect("infallible");
            let status = response.status().as_u16();
            let _ = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
            status
        });
        prop_assert!(status < 500, "status {status} for /mcp/{path}");
        prop_assert!(h.secret.received().is_empty(), "/mcp/{path} reached the secret upstream");
        let bodies = h.public.bodies();
        let seen = read_public.swap(bodies.len(), std::sync::atomic::Ordering::SeqCst);
        for forwarded in &bodies[seen..] {
            let forwarded: Value = serde_json::from_str(forwarded).expect("JSON");
            // Only the exact upstream name routes; what arrives is what was decided.
            let decoded = percent_decode(&path);
            prop_assert_eq!(decoded.as_str(), "public", "routed {} to public", path);
            match forwarded["method"].as_str() {
                Some("tools/call") => {
                    prop_assert_eq!(&forwarded["params"]["name"], &json!("allowed"), "only the allowed tool");
                    prop_assert_eq!(&forwarded["params"]["arguments"], &arguments, "arguments as sent");
                }
                Some("resources/read") => {
                    let got = forwarded["params"]["uri"].as_str().unwrap_or_default();
                    prop_assert_eq!(got, uri.as_str(), "the URI as decided");
                    let named = undone(got);
                    prop_assert!(
                        named != "/srv/secret" && !named.starts_with("/srv/secret/"),
                        "a denied resource was read as {}",
                        got
                    );
                }
                other => prop_assert!(false, "unexpected method {:?}", other),
            }
        }
    });
}

fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let raw = text.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
