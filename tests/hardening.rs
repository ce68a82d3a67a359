//! The edge as an attacker meets it: every way around the policy that a hostile review
//! found, each as a test that failed before the fix. Agents are raw HTTP clients sending
//! what no SDK would; the upstream is scripted ([`support::hostile`]) to answer what no
//! honest server would, and records what the edge forwarded.

mod support;

use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};
use support::hostile::{Hostile, Reply, tools_list};
use support::{KEY_A, Proc, write_config};

/// The hostile upstream records every request it gets: the edges here do not read its lists
/// for tool pinning (tests/pinning.rs covers that), so what it records is what agents sent.
const NOT_PINNED: &str = "pinning = \"off\"";
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "allowed": {},
    "limited": { "limits": [ { "counter": "per_ns", "window": "minute", "max": 100, "scope": ["grant", "argument:ns"] } ] },
    "secret": { "action": "deny" }
  }
}"#;

const LISTED: [&str; 3] = ["allowed", "secret", "limited"];

/// The honest part of the scripted upstream: lists every tool, answers every call.
fn honest(method: &Method, message: &Value) -> Reply {
    if method != Method::POST {
        return Reply::Sse(": nothing\n\n".into());
    }
    let id = message.get("id").map(Value::to_string);
    match (message.get("method").and_then(Value::as_str), id) {
        (_, None) => Reply::Accepted,
        (Some("tools/list"), Some(id)) => Reply::Json(200, tools_list(&id, &LISTED)),
        (_, Some(id)) => Reply::Json(
            200,
            json!({"jsonrpc": "2.0", "id": serde_json::from_str::<Value>(&id).unwrap_or_default(),
                   "result": {"content": [{"type": "text", "text": "done"}]}})
            .to_string(),
        ),
    }
}

/// `tollgate up` in front of `upstream`, with `extra` appended to `[edge]`.
fn gateway(tag: &str, upstream: &Hostile, extra: &str) -> (Proc, std::path::PathBuf) {
    let dir = support::temp_dir(tag);
    let config = write_config(&dir, &upstream.url, &[], POLICY, &format!("{NOT_PINNED}\n{extra}"));
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    (up, dir)
}

struct Raw {
    status: u16,
    text: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("JSON expected ({e}): {}", self.text))
    }
    fn error_code(&self) -> i64 {
        self.json()
            .pointer("/error/code")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("JSON-RPC error expected: {}", self.text))
    }
}

async fn send(
    method: reqwest::Method,
    url: &str,
    body: impl Into<reqwest::Body>,
    extra_headers: &[(&str, &str)],
) -> Raw {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .timeout(Duration::from_secs(20))
        .body(body);
    for (name, value) in extra_headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("HTTP request to the edge");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Raw { status, text }
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> Raw {
    send(reqwest::Method::POST, url, body, &[]).await
}

fn list_request(cursor: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": cursor}}).to_string()
}

fn cursor(message: &Value) -> &str {
    message.pointer("/params/cursor").and_then(Value::as_str).unwrap_or("")
}

fn sse_event(data: &str) -> String {
    format!("event: message\ndata: {data}\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_tools_list_is_filtered_whatever_form_its_id_takes() {
    let upstream = Hostile::start(|method, message| match cursor(message) {
        "float" => Reply::Sse(sse_event(&tools_list("1.0", &LISTED))),
        "exp" => Reply::Sse(sse_event(&tools_list("1e0", &LISTED))),
        "other-id" => Reply::Sse(sse_event(&tools_list("\"x\"", &LISTED))),
        _ => honest(method, message),
    })
    .await;
    let (up, _dir) = gateway("float-id", &upstream, "");
    for case in ["float", "exp", "other-id"] {
        let answer = post(&up.url("/mcp/k8s"), list_request(case)).await;
        assert_eq!(answer.status, 200, "{case}: {}", answer.text);
        assert!(answer.text.contains("\"allowed\""), "{case}: {}", answer.text);
        assert!(
            !answer.text.contains("secret"),
            "{case} leaked a denied tool: {}",
            answer.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_receives_exactly_the_message_that_was_decided() {
    let upstream = Hostile::start(honest).await;
    let (up, _dir) = gateway("reserialise", &upstream, "");
    let url = up.url("/mcp/k8s");

    // Duplicate keys: decided as the last, read as the first by other parsers.
    let duplicate = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"secret","name":"allowed"}}"#;
    let answer = post(&url, duplicate).await;
    assert_eq!((answer.status, answer.error_code()), (400, -32700), "{}", answer.text);
    let second_method = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping","params":{"name":"secret"}}"#;
    let answer = post(&url, second_method).await;
    assert_eq!((answer.status, answer.error_code()), (400, -32700), "{}", answer.text);
    let nested =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"limited","arguments":{"ns":"a","ns":"b"}}}"#;
    assert_eq!(post(&url, nested).await.status, 400);

    // Case variants a lenient upstream might read as the member.
    for variant in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"secret","name":"allowed"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"allowed"},"Params":{"name":"secret"}}"#,
    ] {
        let answer = post(&url, variant).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (400, -32600),
            "{variant}: {}",
            answer.text
        );
    }
    // Fractional ids could be read as another id.
    let answer = post(&url, r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#).await;
    assert_eq!(answer.status, 400);
    assert!(
        upstream.bodies().iter().all(|b| !b.contains("secret")),
        "nothing refused reached the upstream: {:?}",
        upstream.bodies()
    );

    // What is forwarded is the parsed message, re-serialised: escapes resolved, one key each.
    let escaped =
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"n\u0061me":"allowed","arguments":{"x":1}}}"#;
    let answer = post(&url, escaped).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let forwarded = upstream.bodies().pop().expect("the call was forwarded");
    assert!(forwarded.contains(r#""name":"allowed""#), "{forwarded}");
    assert_eq!(
        serde_json::from_str::<Value>(&forwarded).expect("JSON"),
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "allowed", "arguments": {"x": 1}}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_methods_sent_as_notifications_are_refused() {
    let upstream = Hostile::start(honest).await;
    let (up, _dir) = gateway("notifications", &upstream, "");
    let url = up.url("/mcp/k8s");
    let call = json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "secret"}});
    let list = json!({"jsonrpc": "2.0", "method": "tools/list"});
    let ping = json!({"jsonrpc": "2.0", "id": 3, "method": "ping"});
    for body in [
        call.clone(),
        list.clone(),
        json!([call]),
        json!([ping, list]),
        json!({"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": "file:///etc/passwd"}}),
    ] {
        let answer = post(&url, body.to_string()).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (400, -32600),
            "{body}: {}",
            answer.text
        );
    }
    assert!(upstream.bodies().is_empty(), "{:?}", upstream.bodies());
    // Real notifications still pass.
    let answer = post(
        &url,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_upstream_cannot_get_an_unfiltered_list_out() {
    let deep = format!("{}{}{}", "[".repeat(300), tools_list("1", &LISTED), "]".repeat(300));
    let upstream = Hostile::start(move |method, message| {
        if method == Method::GET {
            // A resumed GET stream replaying the answer of an earlier tools/list.
            return Reply::Sse(format!("id: 5\n{}", sse_event(&tools_list("1", &LISTED))));
        }
        match cursor(message) {
            "deep" => Reply::Sse(sse_event(&deep)),
            "500" => Reply::Json(500, tools_list("1", &LISTED)),
            "404" => Reply::Json(404, tools_list("1", &LISTED)),
            "array" => Reply::Json(200, format!("[{}]", tools_list("1", &LISTED))),
            "sse-array" => Reply::Sse(sse_event(&format!("[{}]", tools_list("1", &LISTED)))),
            "not-json" => Reply::Sse(sse_event("tools: secret")),
            "not-array" => Reply::Json(
                200,
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":{"secret":{}}}}"#.into(),
            ),
            "sse-not-array" => Reply::Sse(sse_event(
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":{"secret":{}}}}"#,
            )),
            "duplicate" => Reply::Json(
                200,
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"}]},"result":{"tools":[]}}"#.to_owned(),
            ),
            "huge" => Reply::Sse(sse_event(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"secret","description":"{}"}}]}}}}"#,
                "x".repeat(100_000)
            ))),
            _ => honest(method, message),
        }
    })
    .await;
    let (up, _dir) = gateway("misbehaving", &upstream, "max_upstream_message_bytes = 65536");
    let url = up.url("/mcp/k8s");
    for case in [
        "deep",
        "500",
        "404",
        "array",
        "sse-array",
        "not-json",
        "not-array",
        "sse-not-array",
        "duplicate",
        "huge",
    ] {
        let answer = post(&url, list_request(case)).await;
        assert!(
            !answer.text.contains("secret"),
            "{case} leaked: {} {}",
            answer.status,
            answer.text
        );
        if case != "sse-array" {
            assert!(
                answer.text.contains("error"),
                "{case} must end in an error: {}",
                answer.text
            );
        }
        match case {
            "500" | "array" | "not-array" | "duplicate" => assert_eq!(answer.status, 502, "{case}"),
            "404" => assert_eq!(answer.status, 404, "{case}"),
            _ => {}
        }
    }
    // A list inside another request's SSE stream is filtered too.
    let answer = send(reqwest::Method::GET, &url, "", &[("Last-Event-ID", "4")]).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.text.contains("allowed") && !answer.text.contains("secret"),
        "GET replay: {}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_inside_a_call_stream_is_filtered() {
    let upstream = Hostile::start(|method, message| {
        if message.get("method").and_then(Value::as_str) == Some("tools/call") {
            let notice = sse_event(&tools_list("99", &LISTED));
            let answer = sse_event(r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#);
            return Reply::Sse(format!("{notice}{answer}"));
        }
        honest(method, message)
    })
    .await;
    let (up, _dir) = gateway("call-stream", &upstream, "");
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "allowed"}});
    let answer = post(&up.url("/mcp/k8s"), call.to_string()).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.text.contains("\"id\":2") && !answer.text.contains("secret"),
        "{}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_lets_go_of_the_upstream_when_the_agent_leaves() {
    // Streams that send one event and then nothing: a tools/list answer being filtered, and
    // the GET stream.
    let upstream = Hostile::start(|method, message| {
        if method == Method::GET || message.get("method").and_then(Value::as_str) == Some("tools/list") {
            return Reply::Hang(": open\n\n".into());
        }
        honest(method, message)
    })
    .await;
    let (up, _dir) = gateway("agent-leaves", &upstream, "");
    let http = reqwest::Client::new();
    for i in 0..6 {
        let request = if i % 2 == 0 {
            http.post(up.url("/mcp/k8s")).body(list_request(""))
        } else {
            http.get(up.url("/mcp/k8s"))
        };
        let mut response = request
            .bearer_auth(KEY_A)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 200);
        let first = response.chunk().await.expect("first chunk").expect("bytes");
        assert!(first.starts_with(b": open"), "{first:?}");
        drop(response);
    }
    for _ in 0..100 {
        if upstream.released() == 6 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the edge still holds {} idle upstream stream(s) of agents that left",
        6 - upstream.released()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_names_are_checked_before_anything_else_sees_them() {
    let upstream = Hostile::start(honest).await;
    let (up, _dir) = gateway("tool-names", &upstream, "");
    let url = up.url("/mcp/k8s");
    let long = "x".repeat(5000);
    for name in [
        long.as_str(),
        "allowed\ntollgate::audit: verdict=ALLOW tool=secret",
        "bad name",
        "",
        "sécret",
    ] {
        let call = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": name}});
        let answer = post(&url, call.to_string()).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.error_code(), -32602, "{name:?}: {}", answer.text);
    }
    assert!(upstream.bodies().is_empty(), "{:?}", upstream.bodies());
    // Only tools an upstream listed become metric labels.
    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "never-listed"}});
    assert_eq!(post(&url, call.to_string()).await.status, 200);
    let metrics = support::get_text(&up.url("/metrics")).await;
    assert!(
        !metrics.contains("never-listed") && !metrics.contains("xxxxxxxx"),
        "{metrics}"
    );
    assert!(metrics.contains("tool=\"_unlisted\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_augmented_calls_are_refused_with_a_json_rpc_error() {
    let upstream = Hostile::start(honest).await;
    let (up, _dir) = gateway("tasks", &upstream, "");
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "secret", "arguments": {}, "task": {"ttl": 60000}}});
    let answer = post(&up.url("/mcp/k8s"), call.to_string()).await;
    let message = answer.json();
    assert_eq!(message["id"], 9);
    assert_eq!(message.pointer("/error/code"), Some(&json!(-32001)), "{message}");
    assert!(
        message
            .pointer("/error/message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("Tollgate refused this call")),
        "{message}"
    );
    assert_eq!(
        message.pointer("/error/data/verdict"),
        Some(&json!("DENY")),
        "{message}"
    );
    assert!(message.get("result").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_header_is_forwarded_and_several_are_refused() {
    let upstream = Hostile::start(honest).await;
    let (up, _dir) = gateway("session-header", &upstream, "");
    let url = up.url("/mcp/k8s");
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let answer = send(
        reqwest::Method::POST,
        &url,
        ping.clone(),
        &[("Mcp-Session-Id", "s1"), ("Mcp-Session-Id", "s2")],
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    let long = "s".repeat(300);
    let answer = send(reqwest::Method::POST, &url, ping.clone(), &[("Mcp-Session-Id", &long)]).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(upstream.received().is_empty());
    let answer = send(reqwest::Method::POST, &url, ping, &[("Mcp-Session-Id", "s1")]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let received = upstream.received();
    let sessions: Vec<_> = received[0].headers.get_all("mcp-session-id").iter().collect();
    assert_eq!(sessions, ["s1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_origins_are_refused() {
    let upstream = Hostile::start(honest).await;
    let (up, _dir) = gateway("origins", &upstream, "");
    let url = up.url("/mcp/k8s");
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let answer = send(
        reqwest::Method::POST,
        &url,
        ping.clone(),
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text);
    let answer = send(
        reqwest::Method::POST,
        &url,
        ping.clone(),
        &[("Host", "rebound.evil.example")],
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text);
    assert!(upstream.received().is_empty());
    let answer = send(
        reqwest::Method::POST,
        &url,
        ping.clone(),
        &[("Origin", "http://localhost:5173")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    // Configured: only the listed origin, any Host.
    let (up, _dir) = gateway(
        "origins-configured",
        &upstream,
        "allowed_origins = [\"https://console.example.com\"]\nallowed_hosts = [\"*\"]",
    );
    let url = up.url("/mcp/k8s");
    let answer = send(
        reqwest::Method::POST,
        &url,
        ping.clone(),
        &[("Origin", "http://localhost:5173")],
    )
    .await;
    assert_eq!(answer.status, 403);
    let answer = send(
        reqwest::Method::POST,
        &url,
        ping,
        &[("Origin", "https://console.example.com"), ("Host", "mcp.example.com")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_cannot_starve_the_rest() {
    let upstream = Hostile::start(honest).await;
    let (up, _dir) = gateway(
        "slow-clients",
        &upstream,
        "max_connections = 16\nheader_read_timeout_ms = 400\nbody_read_timeout_ms = 400",
    );
    let addr = up.addr.clone();
    // Far more connections than the cap: half say nothing, half never finish their headers.
    let mut hogs = Vec::new();
    for i in 0..64 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        if i % 2 == 0 {
            let _ = stream.write_all(b"POST /mcp/k8s HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
        }
        hogs.push(stream);
    }
    let started = std::time::Instant::now();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let answer = post(&up.url("/mcp/k8s"), ping).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // The hogs were closed by the edge.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection is closed: {read:?}"
    );

    // A body that never completes gets 408.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /mcp/k8s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\""
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_scoped_keys_stay_small_and_bounded_in_number() {
    let upstream = Hostile::start(honest).await;
    let dir = support::temp_dir("argument-keys");
    let config = write_config(&dir, &upstream.url, &[], POLICY, NOT_PINNED);
    support::append(&config, "\n[store]\nmax_keys_per_counter = 3\n");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let url = up.url("/mcp/k8s");
    let call = |ns: &str| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "limited", "arguments": {"ns": ns}}})
            .to_string()
    };
    let huge = "n".repeat(1_000_000);
    for ns in ["a", "b", huge.as_str()] {
        let answer = post(&url, call(ns)).await;
        assert!(answer.text.contains("done"), "{ns:.10}: {}", answer.text);
    }
    let answer = post(&url, call("d")).await;
    let message = answer.json();
    assert_eq!(message.pointer("/result/isError"), Some(&json!(true)), "{message}");
    assert!(
        message.to_string().contains("max_keys_per_counter"),
        "the fourth distinct value is refused: {message}"
    );
    assert!(
        post(&url, call("a")).await.text.contains("done"),
        "existing keys still work"
    );
}

/// Starts `tollgate decision` with a cluster token and an edge in front of `upstream`.
fn split(tag: &str, upstream: &Hostile, edge_extra: &str) -> (Proc, Proc) {
    let dir = support::temp_dir(tag);
    let config = write_config(&dir, &upstream.url, &[], POLICY, NOT_PINNED);
    let text = std::fs::read_to_string(&config).expect("config");
    let with_token = text.replace(
        "reload_interval_ms = 100",
        &format!(
            "reload_interval_ms = 100\ntoken_sha256 = \"{}\"",
            support::sha256_hex("cluster-secret")
        ),
    );
    std::fs::write(&config, with_token).expect("write");
    let decision = Proc::start("decision", &["decision", "--config", config.to_str().unwrap()], &[]);
    let edge_config = write_config(
        &dir,
        &upstream.url,
        &[decision.url("")],
        POLICY,
        &format!("{NOT_PINNED}\n{edge_extra}"),
    );
    let edge = Proc::start("edge", &["edge", "--config", edge_config.to_str().unwrap()], &[]);
    (decision, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_service_serves_only_callers_with_the_cluster_token() {
    let upstream = Hostile::start(honest).await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "allowed"}}).to_string();

    let (_decision, edge) = split("token-ok", &upstream, "decision_token = \"cluster-secret\"");
    let answer = post(&edge.url("/mcp/k8s"), call.clone()).await;
    assert!(answer.text.contains("done"), "{}", answer.text);
    assert_eq!(upstream.bodies().len(), 1);

    // Without the token, or with a wrong one, nothing is decided: even with fail_open, an
    // answer the caller provoked is not an outage.
    for extra in ["fail_open = true", "fail_open = true\ndecision_token = \"guess\""] {
        let (_decision, edge) = split("token-missing", &upstream, extra);
        let answer = post(&edge.url("/mcp/k8s"), call.clone()).await;
        let message = answer.json();
        assert_eq!(
            message.pointer("/result/isError"),
            Some(&json!(true)),
            "{extra}: {message}"
        );
        assert_eq!(upstream.bodies().len(), 1, "{extra}: nothing more was forwarded");
    }

    // A stranger talking gRPC directly is refused too, and its errors are not outages.
    let (decision, _edge) = split("token-grpc", &upstream, "");
    let stranger =
        tollgate_decision::GrpcDecider::new(&[decision.url("")], Duration::from_secs(5), None, None).expect("client");
    let request = tollgate_decision::proto::DecideRequest {
        tool: "allowed".into(),
        grant: "a".into(),
        ..Default::default()
    };
    let refused = tollgate_decision::Decider::decide(&stranger, request.clone()).await;
    assert!(
        matches!(&refused, Err(tollgate_decision::DecisionError::Failed(m)) if m.contains("cluster token")),
        "{refused:?}"
    );
    let member = tollgate_decision::GrpcDecider::new(
        &[decision.url("")],
        Duration::from_secs(5),
        Some("cluster-secret"),
        None,
    )
    .expect("client");
    let forged = tollgate_decision::proto::DecideRequest {
        tool: "allowed\nforged".into(),
        ..request
    };
    let refused = tollgate_decision::Decider::decide(&member, forged).await;
    assert!(
        matches!(&refused, Err(tollgate_decision::DecisionError::Failed(m)) if m.contains("tool")),
        "{refused:?}"
    );
}

#[test]
fn a_decision_service_off_loopback_needs_a_token() {
    let dir = support::temp_dir("token-required");
    let config = write_config(&dir, "http://127.0.0.1:9/mcp", &[], POLICY, NOT_PINNED);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replacen(
            "listen = \"127.0.0.1:0\"\nmetrics_listen",
            "listen = \"0.0.0.0:0\"\nmetrics_listen",
            1,
        ),
    )
    .expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["decision", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("tollgate decision started on 0.0.0.0 without a cluster token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert!(!status.success());
    assert!(stderr.contains("decision.token_sha256"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_listeners_close_silent_connections() {
    let upstream = Hostile::start(honest).await;
    let dir = support::temp_dir("decision-silent");
    let config = write_config(&dir, &upstream.url, &[], POLICY, NOT_PINNED);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            "reload_interval_ms = 100",
            "reload_interval_ms = 100\nhandshake_timeout_ms = 300\nmax_connections = 8",
        ),
    )
    .expect("write");
    let decision = Proc::start("decision", &["decision", "--config", config.to_str().unwrap()], &[]);
    let metrics = decision.metrics_url.clone().expect("metrics url");
    let metrics_addr = metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    for addr in [decision.addr.clone(), metrics_addr] {
        // More silent connections than the cap: each is closed, and the listener serves again.
        let mut silent = Vec::new();
        for _ in 0..16 {
            silent.push(tokio::net::TcpStream::connect(&addr).await.expect("connect"));
        }
        let mut buf = [0u8; 16];
        for stream in &mut silent {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{addr}: {read:?}");
        }
    }
    let answer = reqwest::get(&metrics).await.expect("metrics after the flood");
    assert_eq!(answer.status().as_u16(), 200);
}

/// Found by the hostile review of issue 23: text that came over the wire (the session
/// header, a JWT's subject) reached span fields unquoted, so a header could forge fields of
/// the audit log line (`… tollgate.grant=other verdict="ALLOW"`) and put a raw TAB in it.
/// Every such field is quoted and escaped now.
#[tokio::test]
async fn wire_text_cannot_forge_fields_of_a_log_line() {
    let upstream = Hostile::start(honest).await;
    let dir = support::temp_dir("log-forging");
    let config = write_config(&dir, &upstream.url, &[], POLICY, NOT_PINNED);
    let log = dir.join("up.log");
    let up = Proc::start_logging(
        "up",
        &["up", "--config", config.to_str().unwrap()],
        &[("RUST_LOG", "info")],
        &log,
    );
    let forged = "x} tollgate.grant=forged verdict=\"ALLOW\"\tz";
    let answer = reqwest::Client::new()
        .post(up.url("/mcp/k8s"))
        .bearer_auth(KEY_A)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", forged)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "k8s_delete_namespace", "arguments": {"namespace": "x"}}}))
        .send()
        .await
        .expect("send");
    assert!(answer.status().is_client_error() || answer.status().is_success());
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("forged") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains("forged"), "the request was logged:\n{text}");
    for line in text.lines().filter(|l| l.contains("forged")) {
        assert!(!line.contains('\t'), "a raw TAB reached the log: {line:?}");
        assert!(
            line.contains(r#"mcp.session.id="x} tollgate.grant=forged verdict=\"ALLOW\"\tz""#),
            "the header is one quoted, escaped field: {line}"
        );
    }
}

/// A JSON answer to a request that is not a list is read too: an upstream cannot slip a list
/// past the filter by answering a ping (or any forwarded method, or a call) with a tools list,
/// and an answer with another request's id (which a client would take for that request's
/// answer) is not passed on at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_smuggled_into_another_answer_is_filtered_or_refused() {
    let upstream = Hostile::start(|method, message| {
        let name = message.pointer("/params/name").and_then(Value::as_str);
        match (message.get("method").and_then(Value::as_str), name) {
            // Another request's id, with every tool.
            (Some("ping"), _) => Reply::Json(200, tools_list("999", &LISTED)),
            // A stateless call answered with another id.
            (Some("tools/call"), Some("limited")) => Reply::Json(200, tools_list("77", &LISTED)),
            // Its own id, with a tools list as the call's result.
            (Some("tools/call"), Some("allowed")) => {
                let id = message.get("id").map(Value::to_string).unwrap_or_default();
                Reply::Json(200, tools_list(&id, &LISTED))
            }
            _ => honest(method, message),
        }
    })
    .await;
    let (up, _dir) = gateway("smuggled", &upstream, "");
    let url = up.url("/mcp/k8s");
    let ping = post(&url, json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}).to_string()).await;
    assert_eq!(ping.status, 502, "{}", ping.text);
    assert!(!ping.text.contains("\"secret\""), "{}", ping.text);
    assert!(ping.text.contains("does not answer the request"), "{}", ping.text);
    let call = post(
        &url,
        json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "allowed", "arguments": {}}})
            .to_string(),
    )
    .await;
    assert_eq!(call.status, 200, "{}", call.text);
    let tools = call.json()["result"]["tools"].clone();
    assert_eq!(
        tools.as_array().map(Vec::len),
        Some(2),
        "filtered to what the grant may call: {tools}"
    );
    assert!(!call.text.contains("\"secret\""), "{}", call.text);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    let stateless = send(
        reqwest::Method::POST,
        &url,
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "limited", "arguments": {"ns": "a"}, "_meta": meta}})
        .to_string(),
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "limited"),
        ],
    )
    .await;
    assert_eq!(stateless.status, 502, "{}", stateless.text);
    assert!(
        stateless.text.contains("does not answer the request"),
        "{}",
        stateless.text
    );
}
