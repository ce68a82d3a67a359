//! The aggregated endpoint `/mcp` (SPEC §4 "Aggregation"): the demo upstream (paged tools),
//! `@modelcontextprotocol/server-everything` over Streamable HTTP, and server-everything over
//! stdio behind `tollgate stdio-bridge`, behind one endpoint on two edges that share session
//! keys, driven by the official TypeScript and Python SDK clients.
//!
//! Needs `node`, `tests/interop/node_modules` and `target/py`, which `scripts/test.sh`
//! installs; fails, never skips, when they are missing.

mod support;

use serde_json::{Value, json};
use support::everything::Everything;
use support::{KEY_A, KEY_B, Mcp, Proc, write_config};

const SESSION_KEY: &str = "aggregate-test-session-key-0123456789";

const POLICY: &str = r#"{
  "version": "1",
  "default": "allow",
  "servers": {
    "k8s": {
      "default": "deny",
      "tools": {
        "k8s_rollout_pause": {"limits": [{"counter": "pause", "window": "minute", "max": 3, "scope": "grant"}]}
      }
    }
  },
  "tools": {"get-env": {"action": "deny"}},
  "resources": {
    "demo://resource/static/document/*": {"action": "deny"},
    "demo://resource/static/document/features.md": {"action": "allow"}
  },
  "prompts": {"args-prompt": {"action": "deny"}}
}"#;

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// Everything a cluster test needs: three upstreams, a decision replica, two edges.
struct Cluster {
    demo: Proc,
    _everything: Everything,
    _bridge: Proc,
    _decision: Proc,
    edges: [Proc; 2],
}

fn start_cluster(tag: &str) -> Cluster {
    let demo = Proc::start(
        "demo-upstream",
        &["demo-upstream", "--listen", "127.0.0.1:0", "--page-size", "2"],
        &[],
    );
    let everything = Everything::start_http();
    let mut args = vec!["stdio-bridge", "--listen", "127.0.0.1:0", "--name", "everything", "--"];
    let stdio = support::everything::stdio_command();
    args.extend(stdio.iter().map(String::as_str));
    let bridge = Proc::start("stdio-bridge", &args, &[]);
    let dir = support::temp_dir(tag);
    let decision = support::start_decision(&dir, &demo.url("/mcp"), POLICY);
    let edge_extra = format!("aggregate = {{ session_keys = [\"{SESSION_KEY}\"] }}");
    let config = write_config(&dir, &demo.url("/mcp"), &[decision.url("")], POLICY, &edge_extra);
    support::append(
        &config,
        &format!(
            "\n[[upstreams]]\nname = \"ev\"\nurl = \"{}\"\n\n[[upstreams]]\nname = \"evs\"\nurl = \"{}\"\n",
            everything.url(),
            bridge.url("/mcp")
        ),
    );
    let path = config.to_str().expect("path");
    let edges = [
        Proc::start("edge-1", &["edge", "--config", path], &[]),
        Proc::start("edge-2", &["edge", "--config", path], &[]),
    ];
    Cluster {
        demo,
        _everything: everything,
        _bridge: bridge,
        _decision: decision,
        edges,
    }
}

#[tokio::test]
async fn one_endpoint_for_three_servers_across_two_edges_with_both_sdks() {
    let mut cluster = start_cluster("aggregate");
    let url = cluster.edges[0].url("/mcp");
    let seen = tokio::task::spawn_blocking(move || {
        support::run_json("node", &["tests/interop/aggregate_client.mjs", &url, KEY_A])
    })
    .await
    .expect("sdk client task");

    assert_eq!(seen["server"]["name"], "tollgate", "{}", seen["server"]);
    let tools = names(&seen["tools"]);
    assert!(
        seen["pages"].as_u64().unwrap_or_default() >= 3,
        "the demo's pages came through: {seen}"
    );
    assert!(tools.contains(&"k8s__k8s_rollout_pause"), "{tools:?}");
    assert!(
        !tools
            .iter()
            .any(|t| *t == "k8s__k8s_get_pods" || *t == "k8s__k8s_scale"),
        "denied k8s tools hidden: {tools:?}"
    );
    assert!(tools.contains(&"ev__echo") && tools.contains(&"evs__echo"), "{tools:?}");
    assert!(
        !tools.iter().any(|t| t.ends_with("__get-env")),
        "get-env is denied everywhere: {tools:?}"
    );
    let prompts = names(&seen["prompts"]);
    assert!(
        prompts.contains(&"ev__simple-prompt") && prompts.contains(&"evs__simple-prompt"),
        "{prompts:?}"
    );
    assert!(!prompts.iter().any(|p| p.ends_with("__args-prompt")), "{prompts:?}");
    let resources = names(&seen["resources"]);
    assert!(
        resources.contains(&"demo://resource/static/document/features.md"),
        "{resources:?}"
    );
    assert!(
        !resources.contains(&"demo://resource/static/document/architecture.md"),
        "{resources:?}"
    );

    let pauses = seen["pauses"].as_array().expect("pauses");
    for pause in &pauses[..3] {
        assert_ne!(pause["isError"], true, "{pause}");
    }
    assert_eq!(
        pauses[3]["_meta"]["tollgate/decision"]["verdict"], "RATE_LIMITED",
        "{}",
        pauses[3]
    );
    assert!(
        support::text(&seen["echo"]).contains("through stdio"),
        "{}",
        seen["echo"]
    );
    // A resource the policy hides is answered like one nobody lists (no existence oracle).
    assert_eq!(seen["secret"]["error"]["code"], -32002, "{}", seen["secret"]);
    assert!(
        seen["secret"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("resource not found")),
        "{}",
        seen["secret"]
    );
    assert!(
        seen["features"]["ok"]["contents"][0]["text"].is_string(),
        "{}",
        seen["features"]
    );
    assert!(seen["prompt"]["ok"]["messages"].is_array(), "{}", seen["prompt"]);
    assert!(
        support::text(&seen["sampling"]).contains("sampled through the aggregated endpoint"),
        "the upstream's sampling request reached the client and its answer came back: {}",
        seen["sampling"]
    );

    // The session goes on through the other edge: no session store, the id is sealed.
    let session = seen["sessionId"].as_str().expect("session id").to_owned();
    let mut mcp = Mcp::new(&cluster.edges[1].url("/mcp"), KEY_A);
    mcp.session = Some(session.clone());
    let echo = mcp.call("evs__echo", json!({"message": "edge two"})).await;
    assert!(support::text(&echo).contains("edge two"), "{echo}");
    let fifth = mcp
        .call("k8s__k8s_rollout_pause", json!({"namespace": "default", "name": "web"}))
        .await;
    assert_eq!(
        support::refusal(&fifth).map(|d| d["verdict"].clone()),
        Some(json!("RATE_LIMITED"))
    );
    let read = mcp
        .request(
            "resources/read",
            json!({"uri": "demo://resource/static/document/features.md"}),
        )
        .await;
    assert!(
        read.message.pointer("/result/contents/0/text").is_some(),
        "an edge that never saw the list finds the resource's server: {}",
        read.message
    );
    let mut other_grant = Mcp::new(&cluster.edges[1].url("/mcp"), KEY_B);
    other_grant.session = Some(session.clone());
    let stolen = other_grant.request("tools/list", json!({})).await;
    assert_eq!(
        stolen.status, 404,
        "a session id is bound to its grant: {}",
        stolen.message
    );

    // The official Python SDK on the second edge.
    let url = cluster.edges[1].url("/mcp");
    let python = support::venv("python");
    let seen = tokio::task::spawn_blocking(move || {
        support::run_json(
            &python,
            &[
                "tests/interop/py_client.py",
                &url,
                KEY_A,
                "ev__echo",
                r#"{"message": "from python"}"#,
                "1",
            ],
        )
    })
    .await
    .expect("python client task");
    assert_eq!(seen["server"]["name"], "tollgate");
    assert!(names(&seen["tools"]).contains(&"evs__echo"), "{seen}");
    assert_ne!(seen["results"][0]["isError"], true, "{seen}");

    // One upstream dies mid-session: it is left out of lists, its calls fail, the rest works.
    let mut grant_b = Mcp::new(&cluster.edges[1].url("/mcp"), KEY_B);
    grant_b.initialize().await;
    cluster.demo.kill();
    let listed = mcp.request("tools/list", json!({})).await;
    let tools: Vec<&str> = listed.message["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        tools.contains(&"ev__echo") && !tools.iter().any(|t| t.starts_with("k8s__")),
        "{tools:?}"
    );
    assert_eq!(
        listed.message["result"]["_meta"]["tollgate/unavailable"],
        json!(["k8s"]),
        "{}",
        listed.message
    );
    let dead = grant_b
        .request("tools/call", json!({"name": "k8s__k8s_rollout_pause", "arguments": {}}))
        .await;
    assert_eq!(dead.status, 502, "{}", dead.message);
    assert!(
        dead.message["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"k8s\""),
        "{}",
        dead.message
    );
    let echo = mcp.call("ev__echo", json!({"message": "still here"})).await;
    assert!(support::text(&echo).contains("still here"), "{echo}");
}

/// What the aggregated endpoint refuses, and how.
#[tokio::test]
async fn bad_requests_on_the_aggregated_endpoint_are_refused_clearly() {
    let demo = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("aggregate-bad");
    let config = write_config(&dir, &demo.url("/mcp"), &[], POLICY, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let endpoint = up.url("/mcp");

    let mut none = Mcp::new(&endpoint, KEY_A);
    let answer = none.request("tools/list", json!({})).await;
    assert_eq!(answer.status, 400, "no session: {}", answer.message);

    let mut mcp = Mcp::new(&endpoint, KEY_A);
    mcp.initialize().await;
    let session = mcp.session.clone().expect("session");
    assert!(session.starts_with("tg1."), "{session}");
    let mut tampered = mcp.via(&endpoint);
    let mut bytes = session.into_bytes();
    let at = bytes.len() - 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    tampered.session = Some(String::from_utf8(bytes).expect("ascii"));
    let answer = tampered.request("tools/list", json!({})).await;
    assert_eq!(
        answer.status, 404,
        "a changed session id is unknown: {}",
        answer.message
    );

    let answer = mcp
        .request("tools/call", json!({"name": "k8s_rollout_pause", "arguments": {}}))
        .await;
    assert_eq!(answer.message["error"]["code"], -32602, "no prefix: {}", answer.message);
    assert!(
        answer.message["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("{server}__{name}")
    );
    let answer = mcp.request("nonsense/method", json!({})).await;
    assert_eq!(answer.message["error"]["code"], -32601, "{}", answer.message);
    let answer = mcp.post(&json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])).await;
    assert_eq!(answer.status, 400, "no batches: {}", answer.message);
    let answer = mcp.post(&json!({"jsonrpc": "2.0", "id": "k8s~99", "result": {}})).await;
    assert_eq!(
        answer.status, 202,
        "an answer to an unknown server request still reaches its upstream: {}",
        answer.message
    );
    let answer = mcp.post(&json!({"jsonrpc": "2.0", "id": 5, "result": {}})).await;
    assert_eq!(answer.status, 400, "an answer to no server request: {}", answer.message);
    let ping = mcp.request("ping", json!({})).await;
    assert_eq!(ping.message["result"], json!({}));
    let answer = mcp
        .request(
            "tools/call",
            json!({"name": "k8s__k8s_get_pods", "arguments": {"namespace": "default"}}),
        )
        .await;
    assert_eq!(
        support::refusal(&answer.message["result"]).map(|d| d["verdict"].clone()),
        Some(json!("DENY")),
        "the policy decides on the upstream's own name: {}",
        answer.message
    );
}

/// A call held for an operator's approval on `/mcp`: the approval names the upstream and its
/// own tool name, and once approved the call goes to that upstream and its answer reaches
/// the agent on the held stream.
#[tokio::test]
async fn a_call_held_for_approval_on_the_aggregated_endpoint_goes_through_once_approved() {
    const OPERATOR_KEY: &str = "operator-key-for-aggregate";
    let demo = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("aggregate-held");
    let policy = r#"{"version": "1", "default": "allow",
        "tools": {"k8s_scale": {"action": "require_approval", "approval": {"hold": "30s"}}}}"#;
    let config = write_config(&dir, &demo.url("/mcp"), &[], policy, "hold_keepalive_ms = 300");
    support::append(
        &config,
        &format!(
            "\n[[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
            support::sha256_hex(OPERATOR_KEY)
        ),
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("operators' API");
    let mut mcp = Mcp::new(&up.url("/mcp"), KEY_A);
    mcp.initialize().await;
    let held = {
        let mcp = mcp.via(&up.url("/mcp"));
        tokio::spawn(async move {
            mcp.post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "k8s__k8s_scale", "arguments": {"namespace": "web", "name": "api", "replicas": 2}}}))
                .await
        })
    };
    let mut pending: Option<Value> = None;
    for _ in 0..100 {
        let (code, out, err) = support::run(&["approvals", "list", "--json", "--url", &admin, "--key", OPERATOR_KEY]);
        assert_eq!(code, 0, "{err}");
        let listed: Value = serde_json::from_str(&out).expect("json");
        pending = listed
            .as_array()
            .and_then(|all| all.iter().find(|a| a["status"] == "pending").cloned());
        if pending.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pending = pending.expect("the held call asked for an approval");
    assert_eq!(
        (pending["server"].as_str(), pending["tool"].as_str()),
        (Some("k8s"), Some("k8s_scale")),
        "{pending}"
    );
    let id = pending["id"].as_str().expect("id");
    let (code, _, err) = support::run(&[
        "approvals",
        "approve",
        id,
        "--reason",
        "ok",
        "--url",
        &admin,
        "--key",
        OPERATOR_KEY,
    ]);
    assert_eq!(code, 0, "{err}");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), held)
        .await
        .expect("the held call is answered")
        .expect("task");
    assert_eq!(answer.content_type, "text/event-stream");
    let result = &answer.message["result"];
    assert!(support::refusal(result).is_none(), "{}", answer.message);
    assert!(support::text(result).contains("scaled"), "{}", answer.message);
}

/// Issue 27, item 7: a task's whole lifecycle with the TypeScript SDK, on `/mcp/{server}`
/// and on `/mcp`, against server-everything's task-only tool: the call is decided, its task
/// streamed to its result; the task id the client holds is its grant's handle, which the
/// grant can look up and another grant cannot (an unknown task for it).
#[tokio::test]
async fn a_task_runs_to_its_result_on_both_endpoints_and_stays_its_grants() {
    let everything = Everything::start_http();
    let dir = support::temp_dir("aggregate-tasks");
    let policy = r#"{"version": "1", "default": "deny", "tools": {"simulate-research-query": {}}}"#;
    let config = write_config(&dir, &everything.url(), &[], policy, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    for (url, tool) in [
        (up.url("/mcp/k8s"), "simulate-research-query"),
        (up.url("/mcp"), "k8s__simulate-research-query"),
    ] {
        let seen = tokio::task::spawn_blocking({
            let url = url.clone();
            move || support::run_json("node", &["tests/interop/tasks_client.mjs", &url, KEY_A, KEY_B, tool])
        })
        .await
        .expect("sdk client task");
        let handle = seen["taskId"].as_str().unwrap_or_default();
        assert!(handle.starts_with("tgk1."), "{url}: the client holds a handle: {seen}");
        assert!(
            seen["messages"]
                .as_array()
                .is_some_and(|m| m.contains(&json!("result"))),
            "{url}: the task ran to its result: {seen}"
        );
        assert!(
            seen["result"]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("tollgate")),
            "{url}: {seen}"
        );
        assert_eq!(seen["own"]["ok"]["taskId"], json!(handle), "{url}: {seen}");
        // The upstream lists every caller's tasks; each grant sees its own.
        assert!(
            seen["listed"]["ok"]
                .as_array()
                .is_some_and(|l| l.contains(&json!(handle))),
            "{url}: the grant lists its task: {seen}"
        );
        assert!(
            seen["otherListed"]["ok"].as_array().is_some_and(|l| l
                .iter()
                .all(|t| t.as_str().is_some_and(|t| t.starts_with("tgk1.")) && *t != json!(handle))),
            "{url}: another grant lists none of it: {seen}"
        );
        for refused in ["other", "otherResult"] {
            assert!(
                seen[refused]["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unknown task")),
                "{url}: another grant's {refused}: {seen}"
            );
        }
    }
}
