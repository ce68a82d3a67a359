//! Bad input and faults (SPEC §6): each gets a clear, specific answer and nothing panics.

mod support;

use serde_json::{Value, json};
use support::{KEY_A, Mcp, Proc, refusal, run, text, write_config};

/// `tollgate up` in front of a JSON demo upstream, with the seed policy.
fn gateway(tag: &str) -> (Proc, Proc, std::path::PathBuf) {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir(tag);
    let config = write_config(&dir, &upstream.url("/mcp"), &[], &support::seed_policy("minute"), "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    (upstream, up, dir)
}

async fn raw_post(
    url: &str,
    key: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", content_type)
        .header("Accept", "application/json, text/event-stream")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_default())
}

fn error_code(body: &str) -> i64 {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON-RPC error body expected ({e}): {body}"));
    v.pointer("/error/code")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no error code: {body}"))
}

#[tokio::test]
async fn malformed_and_invalid_messages_get_json_rpc_errors() {
    let (_upstream, up, _dir) = gateway("malformed");
    let url = up.url("/mcp/k8s");
    let (status, _, body) = raw_post(&url, Some(KEY_A), "application/json", "{\"jsonrpc\": \"2.0\", ").await;
    assert_eq!((status, error_code(&body)), (400, -32700), "{body}");

    for bad in [
        json!({"id": 1, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": 1}),
        json!(42),
        json!([]),
    ] {
        let (status, _, body) = raw_post(&url, Some(KEY_A), "application/json", bad.to_string()).await;
        assert_eq!((status, error_code(&body)), (400, -32600), "{bad} -> {body}");
    }
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "k8s_rollout_pause"}}]);
    let (status, _, body) = raw_post(&url, Some(KEY_A), "application/json", batch.to_string()).await;
    assert_eq!((status, error_code(&body)), (400, -32600));
    assert!(body.contains("batch"), "{body}");

    let (status, _, body) = raw_post(&url, Some(KEY_A), "text/plain", "{}").await;
    assert_eq!((status, error_code(&body)), (415, -32600), "{body}");

    let mut agent = Mcp::new(&url, KEY_A);
    let answer = agent.request("tools/call", json!({"arguments": {}})).await;
    assert_eq!(
        answer.message.pointer("/error/code"),
        Some(&json!(-32602)),
        "{}",
        answer.message
    );
    let answer = agent
        .request("tools/call", json!({"name": "k8s_rollout_pause", "arguments": [1, 2]}))
        .await;
    assert_eq!(
        answer.message.pointer("/error/code"),
        Some(&json!(-32602)),
        "{}",
        answer.message
    );

    // Still serving after all of that.
    assert_eq!(
        reqwest::get(up.url("/healthz"))
            .await
            .expect("healthz")
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn unknown_server_is_404_and_oversized_body_is_413() {
    let (_upstream, up, _dir) = gateway("sizes");
    let (status, _, body) = raw_post(&up.url("/mcp/nope"), Some(KEY_A), "application/json", "{}").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("unknown MCP server \\\"nope\\\"") && body.contains("k8s"),
        "{body}"
    );

    let padding = "x".repeat(4 * 1024 * 1024 + 1);
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "k8s_rollout_pause", "arguments": {"pad": padding}}});
    let (status, _, _) = raw_post(&up.url("/mcp/k8s"), Some(KEY_A), "application/json", big.to_string()).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_with_www_authenticate() {
    let (_upstream, up, _dir) = gateway("auth");
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    for key in [None, Some("not-a-key")] {
        let (status, headers, _) = raw_post(&up.url("/mcp/k8s"), key, "application/json", ping.clone()).await;
        assert_eq!(status, 401, "key {key:?}");
        let challenge = headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(challenge.starts_with("Bearer realm=\"tollgate\""), "{challenge}");
    }
    // Unknown servers are not revealed to unauthenticated callers.
    let (status, _, _) = raw_post(&up.url("/mcp/nope"), None, "application/json", ping).await;
    assert_eq!(status, 401);
}

#[test]
fn invalid_policy_refuses_to_start_with_file_line_and_column() {
    let dir = support::temp_dir("badpolicy");
    let policy = "{\n  \"version\": \"1\",\n  \"tools\": {\n    \"t\": {\"limits\": [{\"counter\": \"c\", \"window\": \"7x\", \"max\": 1}]}\n  }\n}";
    let config = write_config(&dir, "http://127.0.0.1:9/mcp", &[], policy, "");
    let (code, _, stderr) = run(&["decision", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let expected = format!("{}:4:", dir.join("policy.json").display());
    assert!(
        stderr.contains(&expected) && stderr.contains("invalid window \"7x\""),
        "{stderr}"
    );

    let (code, _, stderr) = run(&["policy", "check", dir.join("policy.json").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains(&expected), "{stderr}");
    let (code, stdout, _) = run(&["policy", "check", "examples/policy.json"]);
    assert_eq!(code, 0, "{stdout}");
}

/// `policy check` warns where a more specific rule silently widens access, at that rule's
/// line; `policy explain` shows the shadowed rules and what of them is not applied.
#[test]
fn policy_check_and_explain_show_shadowed_rules() {
    let dir = support::temp_dir("shadowed");
    let file = dir.join("policy.json");
    let policy = r#"{
  "version": "1",
  "tools": { "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "minute", "max": 10, "scope": "global" }] } },
  "servers": { "k8s": { "tools": { "k8s_delete_*": { "action": "deny" } } } },
  "grants": { "ci-bot": { "tools": {
    "k8s_rollout_pause": { "reason": "CI pauses rollouts" },
    "k8s_delete_namespace": {}
  } } }
}"#;
    std::fs::write(&file, policy).expect("policy");
    let path = file.to_str().expect("path");
    let (code, stdout, stderr) = run(&["policy", "check", path]);
    assert_eq!(code, 0, "warnings are not errors: {stderr}");
    assert!(
        stdout.contains(&format!("{path}:6:")) && stdout.contains("pause (10 per minute)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{path}:7:")) && stdout.contains("denies it"),
        "{stdout}"
    );
    assert!(stdout.contains("ok (2 warnings)"), "{stdout}");

    let (code, stdout, stderr) = run(&[
        "policy",
        "explain",
        path,
        "--server",
        "k8s",
        "--tool",
        "k8s_rollout_pause",
        "--grant",
        "ci-bot",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("rule:   grants[\"ci-bot\"].tools[\"k8s_rollout_pause\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("shadowed"), "{stdout}");
    assert!(
        stdout.contains("  tools[\"k8s_rollout_pause\"]: allow, limits pause = 10 per minute"),
        "{stdout}"
    );
    assert!(stdout.contains("not applied:"), "{stdout}");
}

#[tokio::test]
async fn upstream_down_is_a_json_rpc_error_naming_the_upstream() {
    let dir = support::temp_dir("upstream-down");
    let (_reserved, dead) = support::refusing_address();
    let config = write_config(
        &dir,
        &format!("http://{dead}/mcp"),
        &[],
        &support::seed_policy("minute"),
        "",
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    let answer = agent
        .request(
            "tools/call",
            json!({"name": "k8s_rollout_pause", "arguments": {"namespace": "a", "name": "b"}}),
        )
        .await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.message["id"], json!(2), "the error answers the request's id");
    let message = answer
        .message
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(message.contains("upstream MCP server \"k8s\""), "{message}");
    assert!(
        !message.contains(&dead.to_string()) && !message.contains("127.0.0.1"),
        "agents are not told internal addresses: {message}"
    );
}

#[tokio::test]
async fn decision_service_down_refuses_and_never_forwards() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("decision-down");
    let (_reserved, dead) = support::refusing_address();
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &[format!("http://{dead}")],
        &support::seed_policy("minute"),
        "decision_timeout_ms = 500",
    );
    let edge = Proc::start("edge", &["edge", "--config", config.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&edge.url("/mcp/k8s"), KEY_A);
    let result = agent
        .call("k8s_rollout_pause", json!({"namespace": "a", "name": "b"}))
        .await;
    let details = refusal(&result).unwrap_or_else(|| panic!("must be refused: {result}"));
    assert_eq!(details["verdict"], "DENY");
    assert!(text(&result).contains("decision service is unavailable"), "{result}");
    assert!(
        !text(&result).contains(&dead.to_string()),
        "agents are not told replica addresses: {result}"
    );
    let ready = reqwest::get(edge.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
}

#[tokio::test]
async fn edge_fails_over_to_a_live_decision_replica() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("failover");
    let live = support::start_decision(&dir, &upstream.url("/mcp"), &support::seed_policy("minute"));
    let (_reserved, dead) = support::refusing_address();
    let replicas = [format!("http://{dead}"), live.url("")];
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &replicas,
        &support::seed_policy("minute"),
        "",
    );
    let edge = Proc::start("edge", &["edge", "--config", config.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&edge.url("/mcp/k8s"), KEY_A);
    for i in 0..4 {
        let result = agent
            .call("k8s_rollout_pause", json!({"namespace": "a", "name": "b"}))
            .await;
        assert!(
            refusal(&result).is_none(),
            "call {i} answered by the live replica: {result}"
        );
    }
}

#[tokio::test]
async fn invalid_policy_on_reload_keeps_the_last_good_policy() {
    let (_upstream, up, dir) = gateway("reload");
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    let args = json!({"namespace": "default"});
    assert!(refusal(&agent.call("k8s_get_pods", args.clone()).await).is_some());

    std::fs::write(
        dir.join("policy.json"),
        "{\"version\": \"1\", \"tools\": {\"k8s_get_pods\": {\"action\": \"maybe\"}}}",
    )
    .expect("write");
    let mut detail = String::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let ready = reqwest::get(up.url("/readyz")).await.expect("readyz");
        assert_eq!(ready.status().as_u16(), 200, "the old policy still serves");
        detail = ready.text().await.unwrap_or_default();
        if detail.contains("rejected") {
            break;
        }
    }
    assert!(detail.contains("last reload rejected"), "{detail}");
    assert!(
        !detail.contains("policy.json") && !detail.contains("maybe"),
        "the unauthenticated /readyz keeps policy diagnostics for the logs: {detail}"
    );
    assert!(
        refusal(&agent.call("k8s_get_pods", args.clone()).await).is_some(),
        "still the old policy"
    );

    let allow_reads = "{\"version\": \"1\", \"default\": \"deny\", \"tools\": {\"k8s_get_pods\": {}}}";
    std::fs::write(dir.join("policy.json"), allow_reads).expect("write");
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if refusal(&agent.call("k8s_get_pods", args.clone()).await).is_none() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "the corrected policy is picked up without a restart");
}

#[tokio::test]
async fn get_stream_and_delete_pass_through_with_the_session() {
    let (_upstream, up, _dir) = gateway("stream");
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let session = agent.session.clone().expect("session id");
    let client = reqwest::Client::new();
    let mut stream = client
        .get(up.url("/mcp/k8s"))
        .bearer_auth(KEY_A)
        .header("Accept", "text/event-stream")
        .header("Mcp-Session-Id", &session)
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status().as_u16(), 200);
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
        .await
        .expect("first event in time")
        .expect("chunk")
        .expect("data");
    // The SDK's server opens the stream with a priming event (an id to resume from).
    assert!(
        stream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "{:?}",
        stream.headers()
    );
    assert!(String::from_utf8_lossy(&first).contains("id: "), "{first:?}");

    let deleted = client
        .delete(up.url("/mcp/k8s"))
        .bearer_auth(KEY_A)
        .header("Mcp-Session-Id", &session)
        .send()
        .await
        .expect("DELETE");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let after = client
        .post(up.url("/mcp/k8s"))
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .header("Mcp-Session-Id", &session)
        .body(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}).to_string())
        .send()
        .await
        .expect("ping after DELETE");
    assert_eq!(
        after.status().as_u16(),
        404,
        "the upstream's answer for an ended session passes through"
    );
}

#[test]
fn sigterm_exits_cleanly() {
    let dir = support::temp_dir("sigterm");
    let config = write_config(&dir, "http://127.0.0.1:9/mcp", &[], &support::seed_policy("minute"), "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let status = up.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn environment_overrides_the_config_file() {
    let dir = support::temp_dir("env");
    let config = write_config(
        &dir,
        "http://127.0.0.1:9/mcp",
        &["http://127.0.0.1:1".into()],
        &support::seed_policy("minute"),
        "",
    );
    // TOLLGATE_CONFIG names the file and is not itself read as a config key.
    let env = [
        ("TOLLGATE_CONFIG", config.to_str().unwrap()),
        ("TOLLGATE_EDGE__DECISION", "http://127.0.0.1:2,http://127.0.0.1:3"),
    ];
    let _edge = Proc::start_until(
        "edge",
        &["edge"],
        &env,
        "(decision: http://127.0.0.1:2, http://127.0.0.1:3)",
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["edge", "--config", config.to_str().unwrap()])
        .env("TOLLGATE_EDGE__MAX_BODY_BYTES", "lots")
        .output()
        .expect("run tollgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("max_body_bytes"), "a bad override is named: {stderr}");
}

/// `tollgate policy explain --args`: the argument schema's verdict, and whether (and how)
/// the call would wait for an operator.
#[test]
fn policy_explain_reports_argument_rules_and_approvals() {
    let dir = support::temp_dir("explain-args");
    let file = dir.join("policy.json");
    let policy = r#"{"version": "1", "tools": {
  "k8s_scale": {"action": "require_approval", "approval": {"timeout": "10m", "hold": "30s"},
                "arguments": {"properties": {"replicas": {"maximum": 10}}}},
  "k8s_delete_namespace": {"action": "require_approval", "approval": {"mode": "retry"}}
}}"#;
    std::fs::write(&file, policy).expect("policy");
    let path = file.to_str().expect("path");
    let explain = |tool: &str, args: &str| {
        let (code, stdout, stderr) = run(&[
            "policy", "explain", path, "--server", "k8s", "--tool", tool, "--grant", "ci", "--args", args,
        ]);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let refused = explain("k8s_scale", r#"{"replicas": 300}"#);
    assert!(
        refused.contains("/replicas: 300 is greater than the maximum of 10"),
        "{refused}"
    );
    assert!(
        !refused.contains("approval: required"),
        "a refused call asks no one: {refused}"
    );
    let held = explain("k8s_scale", r#"{"replicas": 3}"#);
    assert!(
        held.contains("approval: required")
            && held.contains("held open up to 30s")
            && held.contains("expires after 10m"),
        "{held}"
    );
    let retry = explain("k8s_delete_namespace", r#"{"namespace": "tmp"}"#);
    assert!(
        retry.contains("answered at once, naming the approval (mode retry)"),
        "{retry}"
    );
}

#[test]
fn policy_explain_decides_resource_reads_and_prompt_gets() {
    let dir = support::temp_dir("explain-kinds");
    let file = dir.join("policy.json");
    let policy = r#"{"version": "1", "default": "allow",
  "resources": {"file:///secrets/*": {"action": "deny", "reason": "no secrets"}},
  "prompts": {"triage": {"arguments": {"properties": {"severity": {"enum": ["low", "high"]}}}}}
}"#;
    std::fs::write(&file, policy).expect("policy");
    let seed = dir.join("seed.json");
    std::fs::write(&seed, support::seed_policy("minute")).expect("seed");
    let explain = |args: &[&str]| {
        let mut all = vec!["policy", "explain"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--grant", "ci"]);
        run(&all)
    };
    let path = file.to_str().expect("path");
    let (code, out, err) = explain(&[path, "--resource", "file:///secrets/db"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rule:   resources[\"file:///secrets/*\"]") && out.contains("reason: no secrets"),
        "{out}"
    );
    let (_, out, _) = explain(&[path, "--prompt", "triage", "--args", r#"{"severity": "urgent"}"#]);
    assert!(
        out.contains("rule:   prompts[\"triage\"]") && out.contains("/severity"),
        "{out}"
    );
    let (_, out, _) = explain(&[seed.to_str().expect("path"), "--resource", "file:///secrets/db"]);
    assert!(
        out.contains("no `resources` section") && out.contains("passes unchecked"),
        "{out}"
    );
    let (code, _, err) = explain(&[path, "--resource", "file:///a", "--args", "{}"]);
    assert_ne!(code, 0);
    assert!(err.contains("no arguments"), "{err}");
}

/// `tollgate --version` names the commit the binary was built from.
#[test]
fn version_names_the_commit() {
    let (code, out, err) = run(&["--version"]);
    assert_eq!(code, 0, "{err}");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let expected = match commit {
        Some(commit) => format!("tollgate {} (commit {commit})", env!("CARGO_PKG_VERSION")),
        None => format!("tollgate {} (commit ", env!("CARGO_PKG_VERSION")),
    };
    assert!(out.starts_with(&expected), "{out:?} should start with {expected:?}");
}

/// `tollgate check` says whether a configuration would start a role, without starting it.
#[test]
fn check_names_the_first_problem_without_starting_anything() {
    let dir = support::temp_dir("check");
    let replicas = ["http://127.0.0.1:1".to_owned()];
    let config = write_config(
        &dir,
        "http://127.0.0.1:9/mcp",
        &replicas,
        &support::seed_policy("minute"),
        "",
    );
    let path = config.to_str().expect("path");
    for role in ["up", "edge", "decision"] {
        let (code, out, err) = run(&["check", "--config", path, "--role", role]);
        assert_eq!(code, 0, "{role}: {out}{err}");
        assert!(out.contains("ok"), "{role}: {out}");
    }

    // Reachable from other hosts without a cluster token: refused, and said why.
    let open = dir.join("open.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let changed = text.replacen(
        "[decision]\nlisten = \"127.0.0.1:0\"",
        "[decision]\nlisten = \"0.0.0.0:0\"",
        1,
    );
    assert_ne!(changed, text, "the decision listen address was replaced");
    std::fs::write(&open, changed).expect("write");
    let (code, _, err) = run(&["check", "--config", open.to_str().expect("path"), "--role", "decision"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("decision.token_sha256"), "{err}");

    // An invalid policy: file:line, and nothing was started.
    std::fs::write(
        dir.join("policy.json"),
        "{\"version\": \"1\",\n \"tools\": {\"x\": {\"action\": \"maybe\"}}}",
    )
    .expect("write");
    let (code, _, err) = run(&["check", "--config", path, "--role", "decision"]);
    assert_eq!(code, 1);
    assert!(err.contains("policy.json:2:"), "{err}");

    // An unknown key is named.
    std::fs::write(&config, format!("[log]\nformat = \"json\"\n{text}")).expect("write");
    let (code, _, err) = run(&["check", "--config", path, "--role", "edge"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `format`"), "{err}");
}
