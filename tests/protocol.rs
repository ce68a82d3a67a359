//! MCP 2026-07-28 (stateless) beside the session era on `/mcp/{server}` (issue 27, first
//! part), with real peers: the official Python SDK 2.3 as client in each of its modes and as
//! the upstream (`MCPServer`, which speaks both), behind `tollgate up`. The policy holds the
//! same way in both eras: lists filtered, denied calls refused, limits counted; a request
//! whose routing headers disagree with its body is refused before anything is decided.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{KEY_A, Proc, python, write_config};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "1m", "max": 3, "scope": ["grant", "argument:name"] }] }
  }
}"#;

/// The Python SDK's `MCPServer` on a free port; its `/mcp` URL once it accepts connections.
fn modern_upstream() -> (support::PythonUpstream, String) {
    support::python_upstream("py_modern_server.py")
}

/// The Python SDK client in `mode` against `url`: what it saw. A client that failed as a
/// whole (a transport error, seen once on a loaded CI machine) is run once more, after saying
/// so; a second failure is the answer.
fn client(url: &str, mode: &str, tool: &str, arguments: Value, calls: u32) -> Value {
    let first = client_once(url, mode, tool, arguments.clone(), calls);
    if first.get("error").is_none() {
        return first;
    }
    eprintln!("the Python client failed once ({}); running it again", first["error"]);
    client_once(url, mode, tool, arguments, calls)
}

fn client_once(url: &str, mode: &str, tool: &str, arguments: Value, calls: u32) -> Value {
    run_python(
        "py_modern_client.py",
        &[url, KEY_A, mode, tool, &arguments.to_string(), &calls.to_string()],
    )
}

/// Runs `tests/interop/SCRIPT` with the SDK's Python and `args`: the JSON it prints.
fn run_python(script: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/interop")
                .join(script),
        )
        .args(args)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn text(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// What the Python client saw calling `k8s_rollout_pause` (listed as `tool`) four times with
/// `name`: it spoke a revision starting with `expected`, the list was filtered to that one
/// tool, three calls ran and the fourth was refused by the limit.
fn three_admitted_then_limited(seen: &Value, label: &str, expected: &str, tool: &str, name: &str) {
    assert!(seen.get("error").is_none(), "{label}: {seen}");
    assert!(
        seen["protocol"].as_str().is_some_and(|p| p.starts_with(expected)),
        "{label} spoke {}: {seen}",
        seen["protocol"]
    );
    assert_eq!(seen["tools"], json!([tool]), "{label}: the list is filtered");
    let results = seen["results"].as_array().expect("results");
    for result in &results[..3] {
        assert!(
            result["isError"] != true && text(result).contains(&format!("web/{name}")),
            "{label}: {result}"
        );
    }
    let fourth = &results[3];
    assert!(
        fourth["isError"] == true && text(fourth).contains("rate limit"),
        "{label}: the fourth call is refused by the limit: {fourth}"
    );
}

#[test]
fn both_eras_hold_the_policy_on_both_endpoints() {
    let (_python, python_url) = modern_upstream();
    // The bundled demo server speaks both eras too (it is what the quick start protects).
    let demo = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    for (upstream, url) in [("python", python_url), ("demo", demo.url("/mcp"))] {
        let dir = support::temp_dir(&format!("protocol-eras-{upstream}"));
        let config = write_config(&dir, &url, &[], POLICY, "");
        let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
        let edge = up.url("/mcp/k8s");
        for (mode, expected) in [
            ("2026-07-28", "2026-07-28"),
            ("auto", "2026-07-28"),
            ("legacy", "2025-"),
        ] {
            let seen = client(
                &edge,
                mode,
                "k8s_rollout_pause",
                json!({"namespace": "web", "name": mode}),
                4,
            );
            let label = format!("{upstream}, {mode}");
            three_admitted_then_limited(&seen, &label, expected, "k8s_rollout_pause", mode);
            let denied = client(&edge, mode, "k8s_delete_namespace", json!({"namespace": "prod"}), 1);
            let refused = &denied["results"][0];
            assert!(
                refused["isError"] == true && text(refused).contains("not allowed"),
                "{upstream}, {mode}: a denied tool is refused: {denied}"
            );

            // The aggregated endpoint: both eras too, tools named {prefix}__{name}.
            let aggregated = up.url("/mcp");
            let name = format!("{mode}-agg");
            let seen = client(
                &aggregated,
                mode,
                "k8s__k8s_rollout_pause",
                json!({"namespace": "web", "name": name}),
                4,
            );
            let label = format!("/mcp, {upstream}, {mode}");
            three_admitted_then_limited(&seen, &label, expected, "k8s__k8s_rollout_pause", &name);
        }
    }
}

/// Headers that disagree with the body are refused before the decision and the upstream;
/// an unknown revision is told which ones this endpoint speaks.
#[tokio::test]
async fn routing_headers_that_disagree_with_the_body_are_refused() {
    let (_upstream, url) = modern_upstream();
    let dir = support::temp_dir("protocol-headers");
    let config = write_config(&dir, &url, &[], POLICY, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    let edge = up.url("/mcp/k8s");
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let call = |name: &str| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": name, "arguments": {"namespace": "prod"}, "_meta": meta}})
    };
    let http = reqwest::Client::new();
    let post = |body: Value, headers: Vec<(&'static str, &'static str)>| {
        let mut request = http
            .post(&edge)
            .bearer_auth(KEY_A)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    // The body names the denied tool; the headers name the allowed one (a proxy routing on
    // headers would see an allowed call).
    let answer = post(
        call("k8s_delete_namespace"),
        vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "k8s_rollout_pause"),
        ],
    )
    .await
    .expect("send");
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    // The right headers: decided (and denied) as the body says.
    let answer = post(
        call("k8s_delete_namespace"),
        vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "k8s_delete_namespace"),
        ],
    )
    .await
    .expect("send");
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.expect("text");
    assert!(text.contains("not allowed"), "{text}");
    // An unknown revision.
    let unknown = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        vec![("mcp-protocol-version", "1999-01-01")],
    )
    .await
    .expect("send");
    assert_eq!(unknown.status(), 400);
    let body: Value = unknown.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], -32022, "{body}");
    assert!(
        body["error"]["data"]["supported"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("2026-07-28")) && v.contains(&json!("2025-11-25"))),
        "{body}"
    );
    // A version string of most of a megabyte, in the envelope and in the header: refused
    // with an answer that does not echo it.
    let huge = "2".repeat(900_000);
    for in_header in [false, true] {
        let mut request = http
            .post(&edge)
            .bearer_auth(KEY_A)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list",
                          "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": huge}}}));
        if in_header {
            request = request.header("mcp-protocol-version", &huge[..16_000]);
        }
        let answer = request.send().await.expect("send");
        let status = answer.status().as_u16();
        let text = answer.text().await.expect("text");
        assert!(
            status == 400 || status == 431,
            "{status}: {}",
            &text[..text.len().min(300)]
        );
        assert!(
            text.len() < 4096,
            "the answer echoes the version ({} bytes)",
            text.len()
        );
    }
}

/// `Mcp-Param-*` headers (issue 27, item 3): a tool whose schema marks an argument with
/// `x-mcp-header` works through the edge (the edge forwards the header derived from the
/// decided argument), and an agent's header that disagrees with the argument is refused.
#[tokio::test]
async fn param_headers_follow_the_decided_arguments() {
    let (_upstream, url) = modern_upstream();
    let dir = support::temp_dir("protocol-params");
    let policy = r#"{"version": "1", "default": "deny", "tools": {"k8s_scale": {}}}"#;
    let config = write_config(&dir, &url, &[], policy, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    let edge = up.url("/mcp/k8s");
    let seen = tokio::task::spawn_blocking({
        let edge = edge.clone();
        move || {
            client(
                &edge,
                "2026-07-28",
                "k8s_scale",
                json!({"namespace": "web", "region": "eu-1", "replicas": 2}),
                1,
            )
        }
    })
    .await
    .expect("client");
    assert_eq!(text(&seen["results"][0]), "scaled web in eu-1 to 2", "{seen}");

    // The body says eu-1, the header says us-1: a proxy routing on the header would send
    // the call elsewhere than where it was decided.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    // On both endpoints (on /mcp the tool is named with its prefix).
    for (url, name) in [(edge.clone(), "k8s_scale"), (up.url("/mcp"), "k8s__k8s_scale")] {
        let answer = reqwest::Client::new()
            .post(&url)
            .bearer_auth(KEY_A)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", name)
            .header("mcp-param-region", "us-1")
            .json(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                          "params": {"name": name, "arguments": {"namespace": "web", "region": "eu-1", "replicas": 2},
                                     "_meta": meta}}))
            .send()
            .await
            .expect("send");
        assert_eq!(answer.status(), 400, "{url}");
        let body: Value = answer.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], -32020, "{url}: {body}");
    }
}

/// The Python SDK client's `subscriptions/listen` through `url`, asking for `uris`; calls
/// `tool` once the stream is acknowledged (see tests/interop/py_listen_client.py).
fn listen_client(url: &str, tool: &str, uris: &[&str]) -> Value {
    run_python("py_listen_client.py", &[url, KEY_A, tool, &json!(uris).to_string()])
}

const PUBLIC: &str = "file:///etc/app/public.json";
const SECRET: &str = "file:///etc/app/secret.json";

/// `subscriptions/listen` (issue 27, item 6): on both endpoints a subscription carries the
/// list changes and the updates of the resources the grant may read, never of the others
/// (the upstream is not even asked for them); streams count against the grant's stream quota
/// (a flood gets 429), carry keep-alives, and a filter naming too many URIs is refused.
#[tokio::test]
async fn subscriptions_carry_only_what_the_grant_may_read() {
    let (_upstream, url) = modern_upstream();
    let dir = support::temp_dir("protocol-listen");
    let policy = format!(
        r#"{{"version": "1", "default": "deny", "tools": {{"k8s_touch_config": {{}}}},
            "resources": {{"{PUBLIC}": {{}}, "{SECRET}": {{"action": "deny"}}}}}}"#
    );
    let config = write_config(
        &dir,
        &url,
        &[],
        &policy,
        "max_streams_per_grant = 2\nstream_keepalive_ms = 200",
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    for (endpoint, tool) in [
        (up.url("/mcp/k8s"), "k8s_touch_config"),
        (up.url("/mcp"), "k8s__k8s_touch_config"),
    ] {
        let seen = tokio::task::spawn_blocking({
            let endpoint = endpoint.clone();
            move || listen_client(&endpoint, tool, &[PUBLIC, SECRET])
        })
        .await
        .expect("client");
        assert!(seen.get("error").is_none(), "{endpoint}: {seen}");
        assert_eq!(
            seen["honored"],
            json!({"toolsListChanged": true, "resourceSubscriptions": [PUBLIC]}),
            "{endpoint}: the secret's updates are not the grant's to follow: {seen}"
        );
        assert_eq!(
            seen["events"],
            json!([{"kind": "ResourceUpdated", "uri": PUBLIC}, {"kind": "ToolsListChanged", "uri": null}]),
            "{endpoint}: {seen}"
        );
    }

    // Raw requests: quota, keep-alives, bounds.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let http = reqwest::Client::new();
    let listen = |endpoint: String, id: u32, uris: Vec<String>| {
        http.post(endpoint)
            .bearer_auth(KEY_A)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .json(&json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
                          "params": {"_meta": meta, "notifications": {"toolsListChanged": true, "resourceSubscriptions": uris}}}))
            .send()
    };
    let mut first = listen(up.url("/mcp/k8s"), 1, vec![]).await.expect("listen");
    assert_eq!(first.status(), 200);
    let second = listen(up.url("/mcp"), 2, vec![]).await.expect("listen");
    assert_eq!(second.status(), 200);
    // Past edge.max_streams_per_grant (2), on either endpoint.
    for endpoint in [up.url("/mcp/k8s"), up.url("/mcp")] {
        let third = listen(endpoint.clone(), 3, vec![]).await.expect("listen");
        assert_eq!(third.status(), 429, "{endpoint}");
    }
    // The stream: the acknowledgment, then keep-alives while nothing happens.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen.contains("notifications/subscriptions/acknowledged") && seen.contains(": keep-alive")) {
        assert!(Instant::now() < deadline, "no acknowledgment and keep-alive: {seen}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), first.chunk())
            .await
            .expect("a keep-alive within 5 s")
            .expect("chunk")
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(first);
    drop(second);
    // A slot is given back when its stream ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = listen(up.url("/mcp/k8s"), 4, vec![]).await.expect("listen");
        if again.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quota was not given back: {}",
            again.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session era's resources/subscribe: a resource the grant may not read is answered
    // like one that does not exist, before the upstream (which would tell of its changes).
    let subscribe = |uri: &str| {
        http.post(up.url("/mcp/k8s"))
            .bearer_auth(KEY_A)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "resources/subscribe", "params": {"uri": uri}}))
            .send()
    };
    let secret: Value = subscribe(SECRET).await.expect("send").json().await.expect("JSON");
    assert_eq!(secret["error"]["code"], -32602, "{secret}");
    assert!(
        secret["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no resource of this server")),
        "{secret}"
    );
    let public = subscribe(PUBLIC).await.expect("send").text().await.expect("text");
    assert!(!public.contains("no resource of this server"), "{public}");
    // A listen sent as a notification (no id to answer on) and one with a filter of the
    // wrong shape go nowhere.
    let bare = |body: Value| {
        http.post(up.url("/mcp/k8s"))
            .bearer_auth(KEY_A)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .json(&body)
            .send()
    };
    let notification = bare(json!({"jsonrpc": "2.0", "method": "subscriptions/listen",
                                    "params": {"_meta": meta, "notifications": {"toolsListChanged": true}}}))
    .await
    .expect("send");
    assert_eq!(notification.status(), 400);
    let shaped = bare(json!({"jsonrpc": "2.0", "id": 6, "method": "subscriptions/listen",
                             "params": {"_meta": meta, "notifications": {"resourceSubscriptions": "file:///etc/app/public.json"}}}))
    .await
    .expect("send");
    let body: Value = shaped.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], -32602, "{body}");
    // Too many URIs.
    let uris: Vec<String> = (0..257).map(|i| format!("file:///etc/app/{i}.json")).collect();
    let refused = listen(up.url("/mcp/k8s"), 5, uris).await.expect("listen");
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], -32602, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("edge.max_subscription_uris")),
        "{body}"
    );
}

/// A client of the new revision in front of an upstream that speaks only the session era
/// (`@modelcontextprotocol/server-everything`): the SDK's "auto" mode is told the revisions
/// it can use (`-32022` with `data.supported`) and falls back to a session; a client pinned
/// to 2026-07-28 gets an error naming the upstream and the versions (issue 27, item 1).
#[test]
fn a_modern_client_is_told_what_a_session_era_upstream_speaks() {
    let everything = support::everything::Everything::start_http();
    let dir = support::temp_dir("protocol-legacy-upstream");
    let policy = r#"{"version": "1", "default": "deny", "tools": {"echo": {}}}"#;
    let config = write_config(&dir, &everything.url(), &[], policy, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    let edge = up.url("/mcp/k8s");
    let auto = client(&edge, "auto", "echo", json!({"message": "hello"}), 1);
    assert!(auto.get("error").is_none(), "{auto}");
    assert!(
        auto["protocol"].as_str().is_some_and(|p| p.starts_with("2025-")),
        "auto mode falls back to a session: {auto}"
    );
    assert_eq!(auto["tools"], json!(["echo"]), "{auto}");
    assert!(text(&auto["results"][0]).contains("hello"), "{auto}");

    let pinned = client_once(&edge, "2026-07-28", "echo", json!({"message": "hello"}), 1);
    let error = pinned["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("upstream MCP server \"k8s\" does not speak MCP 2026-07-28") && error.contains("2025-11-25"),
        "a pinned client is told which upstream and which versions: {pinned}"
    );
}

/// The seed's limit (10 per window per grant) is exact for stateless calls spread over two
/// edges and two decision replicas on Redis, with no session between the calls: 30 calls at
/// once, alternating edges, and exactly 10 are admitted; the Python SDK's 2026-07-28 client
/// on either edge is then refused by the limit (issue 27, tests).
#[tokio::test]
async fn the_seed_limit_is_exact_across_two_edges_without_sessions() {
    let redis = support::redis::RedisServer::start();
    let store = format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let deployment = support::Deployment::start("protocol-exact", &support::seed_policy("1m"), &store, 2, 2);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let http = reqwest::Client::new();
    let calls = (0..30).map(|i| {
        let edge = deployment.edges[i % 2].clone();
        let http = http.clone();
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                          "params": {"name": "k8s_rollout_pause", "arguments": {"namespace": "default", "name": "web"},
                                     "_meta": meta}});
        async move {
            let answer = http
                .post(&edge)
                .bearer_auth(KEY_A)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "k8s_rollout_pause")
                .header("mcp-session-id", format!("random-{i}"))
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(answer.status(), 200);
            let text = answer.text().await.expect("text");
            let message = support::sse_messages(&text)
                .into_iter()
                .next()
                .or_else(|| serde_json::from_str(&text).ok())
                .unwrap_or_else(|| panic!("no answer: {text}"));
            message["result"].clone()
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let admitted = results.iter().filter(|r| r["isError"] != true).count();
    let limited = results
        .iter()
        .filter(|r| r["isError"] == true && text(r).contains("rate limit"))
        .count();
    assert_eq!((admitted, limited), (10, 20), "{results:?}");
    for edge in &deployment.edges {
        let seen = tokio::task::spawn_blocking({
            let edge = edge.clone();
            move || {
                client(
                    &edge,
                    "2026-07-28",
                    "k8s_rollout_pause",
                    json!({"namespace": "default", "name": "web"}),
                    1,
                )
            }
        })
        .await
        .expect("client");
        assert_eq!(seen["protocol"], "2026-07-28", "{seen}");
        let result = &seen["results"][0];
        assert!(
            result["isError"] == true && text(result).contains("rate limit"),
            "{edge}: {seen}"
        );
    }
}

/// The Python SDK client (2026-07-28, with URL-mode elicitation) calling `tool` through
/// `url`; resolves the approval it is pointed at with `verb` (see
/// tests/interop/py_approval_client.py).
fn approval_client(url: &str, admin: &str, verb: &str, tool: &str, arguments: Value) -> Value {
    run_python(
        "py_approval_client.py",
        &[url, KEY_A, admin, OPERATOR_KEY, verb, tool, &arguments.to_string()],
    )
}

const OPERATOR_KEY: &str = "tg_test_operator_key_for_protocol_tests";

/// Approvals through the protocol (issue 27, item 5): a 2026-07-28 client that supports
/// URL-mode elicitation is pointed at the approval in the console (an `InputRequiredResult`);
/// once an operator approves, the SDK's retry goes through; a denial reaches it with the
/// operator's reason; a user who declines to follow it ends the call. On both endpoints.
#[tokio::test]
async fn approvals_reach_modern_clients_as_url_elicitations() {
    let (_upstream, url) = modern_upstream();
    let dir = support::temp_dir("protocol-approvals");
    let policy = r#"{"version": "1", "default": "deny", "tools": {"k8s_rollout_pause":
        {"action": "require_approval", "approval": {"timeout": "5m", "mode": "retry"}}}}"#;
    let config = write_config(&dir, &url, &[], policy, "");
    support::append(
        &config,
        &format!(
            "\n[[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
            support::sha256_hex(OPERATOR_KEY)
        ),
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    let admin = up.admin_url.clone().expect("the operators' API");
    for (endpoint, tool) in [
        (up.url("/mcp/k8s"), "k8s_rollout_pause"),
        (up.url("/mcp"), "k8s__k8s_rollout_pause"),
    ] {
        let run = |verb: &'static str, name: &'static str| {
            let (endpoint, admin) = (endpoint.clone(), admin.clone());
            tokio::task::spawn_blocking(move || {
                approval_client(&endpoint, &admin, verb, tool, json!({"namespace": "web", "name": name}))
            })
        };
        let approved = run("approve", "approved").await.expect("client");
        let elicitations = approved["elicitations"].as_array().expect("elicitations");
        assert_eq!(elicitations.len(), 1, "{endpoint}: {approved}");
        let asked = &elicitations[0];
        assert_eq!(asked["mode"], "url", "{approved}");
        assert!(
            asked["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&format!("{admin}/console#apr_"))),
            "{endpoint}: the elicitation points at the approval in the console: {approved}"
        );
        assert_eq!(asked["operator_status"], 200, "{approved}");
        let result = &approved["result"];
        assert!(
            result["isError"] != true && text(result).contains("paused web/approved"),
            "{endpoint}: the approved call ran: {approved}"
        );

        let denied = run("deny", "denied").await.expect("client");
        let result = &denied["result"];
        assert!(
            result["isError"] == true && text(result).contains("said deny in a test"),
            "{endpoint}: the denial and its reason reach the client: {denied}"
        );

        let declined = run("decline", "declined").await.expect("client");
        let result = &declined["result"];
        assert!(
            result["isError"] == true && text(result).contains("declined to follow approval apr_"),
            "{endpoint}: {declined}"
        );
    }
}

/// `server/discover` on `/mcp/{server}` (issue 27, item 2): forwarded, with the capabilities
/// narrowed to what the grant may use (the policy admits one tool and no resource, so the
/// upstream's resources are not offered), private to the caller.
#[tokio::test]
async fn discover_offers_what_the_grant_may_use() {
    let (_upstream, url) = modern_upstream();
    let dir = support::temp_dir("protocol-discover");
    // Resources closed ("resources": {} under default deny), one tool open.
    let policy = r#"{"version": "1", "default": "deny", "tools": {"k8s_rollout_pause": {}}, "resources": {}}"#;
    let config = write_config(&dir, &url, &[], policy, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let discover = |url: String| {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(KEY_A)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "server/discover")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}))
            .send()
    };
    // What the upstream itself offers.
    let direct: Value = discover(url.clone()).await.expect("send").json().await.expect("JSON");
    let offered = &direct["result"]["capabilities"];
    assert!(
        offered.get("tools").is_some() && offered.get("resources").is_some(),
        "{direct}"
    );
    let answer = discover(up.url("/mcp/k8s")).await.expect("send");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("JSON");
    let result = &body["result"];
    assert!(result["capabilities"].get("tools").is_some(), "{body}");
    assert!(
        result["capabilities"].get("resources").is_none(),
        "no resource is the grant's: {body}"
    );
    assert_eq!(result["cacheScope"], "private", "{body}");
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"],
        direct["result"]["_meta"]["io.modelcontextprotocol/serverInfo"],
        "{body}"
    );
}
