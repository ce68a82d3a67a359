//! stdio MCP servers (SPEC §4 "stdio servers"): `tollgate stdio-bridge` and `[[upstreams]]
//! command` in `tollgate up`, with real servers from the registries — `mcp-server-time`
//! (PyPI) and `@modelcontextprotocol/server-everything` (npm) — driven by the official
//! Python and TypeScript SDK clients.
//!
//! Needs `target/py` (the MCP Python SDK and mcp-server-time) and `tests/interop/node_modules`,
//! which `scripts/test.sh` installs; fails, never skips, when they are missing.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use support::{KEY_A, Mcp, Proc, venv, write_config};

fn time_server() -> Vec<String> {
    vec![venv("mcp-server-time"), "--local-timezone".into(), "UTC".into()]
}

const TIME_POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "get_current_time": {"limits": [{"counter": "time", "window": "minute", "max": 2, "scope": "grant"}]}
  }
}"#;

/// A `tollgate.toml` whose upstream `k8s` is the stdio server `command` (run by `up`).
fn command_config(dir: &std::path::Path, command: &[String], policy: &str, extra: &str) -> PathBuf {
    let config = write_config(dir, "http://replaced", &[], policy, "");
    let text = std::fs::read_to_string(&config).expect("config");
    let command = serde_json::to_string(command).expect("command as a TOML array");
    let text = text.replace("url = \"http://replaced\"", &format!("command = {command}\n{extra}"));
    std::fs::write(&config, text).expect("config");
    config
}

/// `mcp-server-time` (PyPI) behind `tollgate stdio-bridge`, as the upstream of `tollgate up`,
/// used by the official Python SDK: tools filtered, calls forwarded and limited.
#[tokio::test]
async fn a_pypi_stdio_server_through_stdio_bridge_with_the_python_sdk() {
    let mut args = vec!["stdio-bridge", "--listen", "127.0.0.1:0", "--"];
    let command = time_server();
    args.extend(command.iter().map(String::as_str));
    let bridge = Proc::start("stdio-bridge", &args, &[]);
    let dir = support::temp_dir("stdio-bridge");
    let config = write_config(&dir, &bridge.url("/mcp"), &[], TIME_POLICY, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let url = up.url("/mcp/k8s");
    let python = venv("python");
    let seen = tokio::task::spawn_blocking(move || {
        support::run_json(
            &python,
            &[
                "tests/interop/py_client.py",
                &url,
                KEY_A,
                "get_current_time",
                r#"{"timezone": "Europe/Paris"}"#,
                "3",
            ],
        )
    })
    .await
    .expect("python client task");
    assert_eq!(seen["server"]["name"], "mcp-time", "{seen}");
    assert_eq!(
        seen["tools"],
        json!(["get_current_time"]),
        "convert_time is denied, so hidden"
    );
    for result in &seen["results"].as_array().expect("results")[..2] {
        assert_ne!(result["isError"], true, "{result}");
        assert_eq!(result["structuredContent"]["timezone"], "Europe/Paris", "{result}");
    }
    let limited = &seen["results"][2];
    assert_eq!(limited["isError"], true, "{limited}");
    assert_eq!(
        limited["_meta"]["tollgate/decision"]["verdict"], "RATE_LIMITED",
        "{limited}"
    );
}

/// `tollgate up` runs a `command` upstream itself: one child per session, a session ended by
/// DELETE is gone while the others go on.
#[tokio::test]
async fn tollgate_up_runs_command_upstreams_one_child_per_session() {
    let dir = support::temp_dir("stdio-up");
    let config = command_config(&dir, &time_server(), TIME_POLICY, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let endpoint = up.url("/mcp/k8s");
    let mut first = Mcp::new(&endpoint, KEY_A);
    first.initialize().await;
    let mut second = Mcp::new(&endpoint, KEY_A);
    second.initialize().await;
    assert_ne!(first.session, second.session, "each session has its own server");
    let result = first.call("get_current_time", json!({"timezone": "Asia/Tokyo"})).await;
    assert_eq!(result["structuredContent"]["timezone"], "Asia/Tokyo", "{result}");
    assert_eq!(first.tool_names().await, ["get_current_time"]);

    let deleted = reqwest::Client::new()
        .delete(&endpoint)
        .bearer_auth(KEY_A)
        .header("Mcp-Session-Id", first.session.clone().expect("session"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 200);
    let gone = first.request("tools/list", json!({})).await;
    assert_eq!(gone.status, 404, "a deleted session is gone: {}", gone.message);
    let result = second.call("get_current_time", json!({"timezone": "UTC"})).await;
    assert_eq!(
        result["structuredContent"]["timezone"], "UTC",
        "the other session goes on: {result}"
    );
}

/// server-everything (npm) over stdio: the child gets the configured environment but none
/// of Tollgate's `TOLLGATE_*` variables; a crash answers the waiting call with an error naming
/// the server and ends the session; an idle session is ended.
#[tokio::test]
async fn children_get_their_env_crash_into_errors_and_idle_out() {
    let command = support::everything::stdio_command();
    let mut args = vec![
        "stdio-bridge",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "everything",
        "--env",
        "GREETING=hello from the config",
        "--idle-timeout-ms",
        "1500",
        "--",
    ];
    args.extend(command.iter().map(String::as_str));
    let bridge = Proc::start("stdio-bridge", &args, &[("TOLLGATE_SECRET_FOR_TEST", "must-not-leak")]);
    let endpoint = bridge.url("/mcp");

    let mut mcp = Mcp::new(&endpoint, KEY_A);
    mcp.initialize().await;
    let env = mcp.call("get-env", json!({})).await;
    let text = support::text(&env);
    assert!(text.contains("hello from the config"), "{text}");
    assert!(
        !text.contains("must-not-leak") && !text.contains("TOLLGATE_SECRET_FOR_TEST"),
        "{text}"
    );

    // A call in flight when the server dies is answered, naming the server and the exit.
    let slow = {
        let mcp = mcp.via(&endpoint);
        tokio::spawn(async move {
            mcp.post(&json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                "params": {"name": "trigger-long-running-operation", "arguments": {"duration": 20, "steps": 2}}}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = std::process::Command::new("pkill")
        .args(["-9", "-P", &bridge.pid().to_string()])
        .status()
        .expect("pkill");
    assert!(killed.success(), "the session's child was found");
    let answer = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the waiting call is answered")
        .expect("task");
    let message = answer.message["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("\"everything\"") && message.contains("exited"),
        "{}",
        answer.message
    );
    let after = mcp.request("tools/list", json!({})).await;
    assert_eq!(after.status, 404, "the crashed session is gone: {}", after.message);

    // An idle session is ended; a new one starts a new child.
    let mut idle = Mcp::new(&endpoint, KEY_A);
    idle.initialize().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = idle.request("tools/list", json!({})).await;
    assert_eq!(after.status, 404, "an idle session is ended: {}", after.message);
    let mut fresh = Mcp::new(&endpoint, KEY_A);
    fresh.initialize().await;
    assert!(fresh.tool_names().await.contains(&"echo".to_owned()));
}

/// A server request (sampling, from server-everything over stdio in `tollgate up`) reaches
/// the official TypeScript SDK client through the edge, and its answer reaches the server.
#[tokio::test]
async fn a_sampling_request_from_a_stdio_server_is_answered_through_the_edge() {
    let dir = support::temp_dir("stdio-sampling");
    let policy = r#"{"version": "1", "default": "allow"}"#;
    let config = command_config(&dir, &support::everything::stdio_command(), policy, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let url = up.url("/mcp/k8s");
    let seen = tokio::task::spawn_blocking(move || {
        support::run_json("node", &["tests/interop/sampling_client.mjs", &url, KEY_A])
    })
    .await
    .expect("sampling client task");
    assert_eq!(
        seen["asked"][0], "Resource trigger-sampling-request context: hello",
        "{seen}"
    );
    let text = seen["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("sampled through Tollgate"), "{seen}");
}

/// Bad configurations are refused with a clear error before anything starts.
#[test]
fn bad_stdio_configurations_are_refused() {
    let (code, _, err) = support::run(&["stdio-bridge", "--listen", "0.0.0.0:0", "--", "true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("not a loopback address") && err.contains("--token-sha256"),
        "{err}"
    );
    let (code, _, err) = support::run(&["stdio-bridge", "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0, "a command is required: {err}");

    let dir = support::temp_dir("stdio-bad");
    let config = command_config(
        &dir,
        &["true".to_owned()],
        TIME_POLICY,
        "url = \"http://127.0.0.1:1/mcp\"",
    );
    let (code, _, err) = support::run(&["up", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("either url or command"), "{err}");
    let config = command_config(&dir, &["true".to_owned()], TIME_POLICY, "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("decision = []", "decision = [\"http://127.0.0.1:1\"]"),
    )
    .expect("config");
    let (code, _, err) = support::run(&["edge", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("stdio-bridge"), "{err}");
}

/// What a hostile client gets from `tollgate stdio-bridge`: oversized bodies, non-JSON,
/// batches, requests without or with an unknown session, and a request id already waiting
/// are refused before the child sees them.
#[tokio::test]
async fn the_stdio_bridge_refuses_what_it_cannot_pass_on() {
    let mut args = vec![
        "stdio-bridge",
        "--listen",
        "127.0.0.1:0",
        "--max-message-bytes",
        "4096",
        "--",
    ];
    let command = time_server();
    args.extend(command.iter().map(String::as_str));
    let bridge = Proc::start("stdio-bridge", &args, &[]);
    let url = bridge.url("/mcp");
    let http = reqwest::Client::new();
    let post = |body: String, session: Option<&str>| {
        let mut request = http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body);
        if let Some(s) = session {
            request = request.header("Mcp-Session-Id", s);
        }
        request.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();

    let huge = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"pad": "x".repeat(10_000)}});
    assert_eq!(status(post(huge.to_string(), None).await.expect("post")), 413);
    assert_eq!(status(post("{not json".into(), None).await.expect("post")), 400);
    assert_eq!(status(post("[]".into(), None).await.expect("post")), 400, "batches");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    assert_eq!(status(post(list.clone(), None).await.expect("post")), 400, "no session");
    assert_eq!(
        status(post(list.clone(), Some("forged")).await.expect("post")),
        404,
        "unknown session"
    );

    let mut mcp = Mcp::new(&url, KEY_A);
    mcp.initialize().await;
    let session = mcp.session.clone().expect("session");
    // Two requests with one id in flight at once: the second is refused.
    let slow = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "get_current_time", "arguments": {"timezone": "UTC"}}})
    .to_string();
    let (first, second) = tokio::join!(post(slow.clone(), Some(&session)), post(slow, Some(&session)));
    let codes = [status(first.expect("post")), status(second.expect("post"))];
    assert!(codes.contains(&200), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 400), "{codes:?}");
    // The session still works.
    let result = mcp.call("get_current_time", json!({"timezone": "UTC"})).await;
    assert_eq!(result["structuredContent"]["timezone"], "UTC", "{result}");
}
