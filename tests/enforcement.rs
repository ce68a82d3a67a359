//! The seed policy enforced end to end, through real processes: a split deployment (one
//! decision service, two edges used alternately) and `tollgate up`; argument rules and the
//! seed page's `rate_limit` shorthand.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{KEY_A, KEY_B, Mcp, Proc, refusal, text, write_config};

const WINDOW: &str = "3s";

/// The acceptance scenario of the foundation issue. `endpoints` are `/mcp/k8s` URLs of one
/// or more edges; calls alternate between them.
async fn seed_policy_is_enforced(endpoints: &[String]) {
    let edge = |i: usize| endpoints[i % endpoints.len()].as_str();
    let mut a = Mcp::new(edge(0), KEY_A);
    let init = a.initialize().await;
    assert_eq!(
        init.message.pointer("/result/serverInfo/name"),
        Some(&json!("tollgate-demo-upstream"))
    );
    assert!(a.session.is_some(), "the upstream's Mcp-Session-Id reaches the agent");

    // tools/list shows only what the grant could ever call: the seed denies all but one.
    let mut a = a.via(edge(1));
    assert_eq!(a.tool_names().await, ["k8s_rollout_pause"]);

    // Default deny, with a reason the model can read.
    let denied = a.call("k8s_get_pods", json!({"namespace": "default"})).await;
    let details = refusal(&denied).unwrap_or_else(|| panic!("k8s_get_pods must be refused: {denied}"));
    assert_eq!(details["verdict"], "DENY");
    assert_eq!(details["rule"], "default");
    assert!(
        text(&denied).contains("k8s_get_pods") && text(&denied).contains("default is deny"),
        "{denied}"
    );

    // 10 calls per window for grant A, through both edges alternately; the 11th is refused.
    let args = json!({"namespace": "default", "name": "web"});
    for i in 0..10 {
        let mut client = a.via(edge(i));
        let result = client.call("k8s_rollout_pause", args.clone()).await;
        assert!(refusal(&result).is_none(), "call {} must be admitted: {result}", i + 1);
        assert!(
            text(&result).contains("paused rollout of deployment default/web"),
            "{result}"
        );
    }
    let limited = a.via(edge(10)).call("k8s_rollout_pause", args.clone()).await;
    let details = refusal(&limited).unwrap_or_else(|| panic!("11th call must be refused: {limited}"));
    assert_eq!(details["verdict"], "RATE_LIMITED");
    assert_eq!(details["rule"], "tools[\"k8s_rollout_pause\"]");
    let retry_after_ms = details["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(
        retry_after_ms > 0 && retry_after_ms <= 3000,
        "retry after {retry_after_ms} ms"
    );
    assert_eq!(details["limits"][0]["remaining"], 0);
    assert!(
        text(&limited).contains("rate limit k8s_rollout_pause_rate: 10 per 3s per grant; retry in"),
        "{limited}"
    );

    // Grant B has its own budget.
    let mut b = Mcp::new(edge(1), KEY_B);
    b.initialize().await;
    for i in 0..10 {
        let result = b.via(edge(i)).call("k8s_rollout_pause", args.clone()).await;
        assert!(
            refusal(&result).is_none(),
            "grant B call {} must be admitted: {result}",
            i + 1
        );
    }
    assert!(
        refusal(&b.call("k8s_rollout_pause", args.clone()).await).is_some(),
        "grant B's 11th is refused"
    );

    // Once the window has slid past the first calls, A is admitted again.
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 50)).await;
    let again = a.via(edge(0)).call("k8s_rollout_pause", args.clone()).await;
    assert!(refusal(&again).is_none(), "admitted after the window slid: {again}");
}

#[tokio::test]
async fn split_deployment_two_edges_share_one_decision_service() {
    // The upstream answers with SSE streams, so pass-through and tools/list filtering of
    // event streams are exercised too.
    let upstream = Proc::start(
        "demo-upstream",
        &["demo-upstream", "--listen", "127.0.0.1:0", "--sse"],
        &[],
    );
    let dir = support::temp_dir("split");
    let decision = support::start_decision(&dir, &upstream.url("/mcp"), &support::seed_policy(WINDOW));
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &[decision.url("")],
        &support::seed_policy(WINDOW),
        "",
    );
    let edge1 = Proc::start("edge-1", &["edge", "--config", config.to_str().unwrap()], &[]);
    let edge2 = Proc::start("edge-2", &["edge", "--config", config.to_str().unwrap()], &[]);
    assert_ne!(edge1.pid(), edge2.pid());
    seed_policy_is_enforced(&[edge1.url("/mcp/k8s"), edge2.url("/mcp/k8s")]).await;
}

#[tokio::test]
async fn tollgate_up_enforces_the_seed_policy_in_one_process() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("up");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], &support::seed_policy(WINDOW), "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    seed_policy_is_enforced(&[up.url("/mcp/k8s")]).await;
}

#[tokio::test]
async fn quick_start_example_config_works_with_the_bundled_demo() {
    // The README's first command, with the example config pointed at free ports.
    let example = std::fs::read_to_string("examples/tollgate.toml").expect("examples/tollgate.toml");
    let demo_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = support::temp_dir("quickstart");
    std::fs::copy("examples/policy.json", dir.join("policy.json")).expect("copy example policy");
    let config = example
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("[decision]", "[decision]\nadmin_listen = \"127.0.0.1:0\"")
        .replace(
            "http://127.0.0.1:9000/mcp",
            &format!("http://127.0.0.1:{demo_port}/mcp"),
        );
    std::fs::write(dir.join("tollgate.toml"), config).expect("write config");
    let demo_listen = format!("127.0.0.1:{demo_port}");
    let config = dir.join("tollgate.toml");
    let args = [
        "up",
        "--config",
        config.to_str().unwrap(),
        "--demo",
        "--demo-listen",
        &demo_listen,
    ];
    let up = Proc::start_until("up --demo", &args, &[], "tollgate up:");
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), "tg_demo_key");
    agent.initialize().await;
    let result = agent
        .call("k8s_rollout_pause", json!({"namespace": "default", "name": "web"}))
        .await;
    assert!(refusal(&result).is_none(), "{result}");
    let denied = agent.call("k8s_delete_namespace", json!({"namespace": "prod"})).await;
    assert_eq!(
        refusal(&denied).map(|d| d["verdict"].clone()),
        Some(json!("DENY")),
        "{denied}"
    );
}

/// Argument rules (a JSON Schema on the rule) and the seed page's `rate_limit` shorthand,
/// through `tollgate up` and the demo upstream: a violation is refused before limits, naming
/// the JSON pointer and the constraint, and takes nothing from the budget; the shorthand
/// limits per session.
#[tokio::test]
async fn argument_rules_refuse_with_pointer_and_constraint_and_charge_nothing() {
    let policy = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_scale": {
      "arguments": {
        "type": "object",
        "required": ["namespace", "replicas"],
        "properties": {
          "namespace": { "not": { "const": "kube-system" } },
          "replicas": { "type": "integer", "minimum": 0, "maximum": 10 }
        }
      },
      "rate_limit": { "max": 1, "window": 60 }
    }
  }
}"#;
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("arguments");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], policy, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    assert!(agent.session.is_some(), "a session to count per");

    for (arguments, expected) in [
        (
            json!({"namespace": "web", "replicas": 300}),
            "/replicas: 300 is greater than the maximum of 10",
        ),
        (json!({"namespace": "kube-system", "replicas": 1}), "/namespace:"),
        (json!({"namespace": "web"}), "\"replicas\" is a required property"),
    ] {
        let refused = agent.call("k8s_scale", arguments.clone()).await;
        let details = refusal(&refused).unwrap_or_else(|| panic!("{arguments} is refused: {refused}"));
        assert_eq!(details["verdict"], "DENY", "{refused}");
        assert!(text(&refused).contains(expected), "{arguments}: {}", text(&refused));
    }
    // Nothing was charged: the one call a minute this session may make is still there.
    let admitted = agent
        .call("k8s_scale", json!({"namespace": "web", "name": "api", "replicas": 3}))
        .await;
    assert!(refusal(&admitted).is_none(), "{admitted}");
    assert!(
        text(&admitted).contains("replicas"),
        "the upstream's real answer: {admitted}"
    );
    let limited = agent
        .call("k8s_scale", json!({"namespace": "web", "name": "api", "replicas": 3}))
        .await;
    let details = refusal(&limited).unwrap_or_else(|| panic!("rate_limit holds: {limited}"));
    assert_eq!(details["verdict"], "RATE_LIMITED", "{limited}");
    assert!(text(&limited).contains("k8s_scale_rate"), "{}", text(&limited));
    // Per session: a new session has its own budget.
    let mut other = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    other.initialize().await;
    let fresh = other
        .call("k8s_scale", json!({"namespace": "web", "name": "api", "replicas": 3}))
        .await;
    assert!(refusal(&fresh).is_none(), "another session: {fresh}");
}

/// An edge reuses the policy's answer on which listed tools a grant may see (same list,
/// same policy), so repeated `tools/list` calls need no decision service: one that went away
/// still leaves lists answered, while calls fail closed. A changed policy shows at once after
/// the next decision the edge makes (its digest changed); `edge.list_cache_ms = 0` asks
/// every time.
#[tokio::test]
async fn tools_lists_are_reused_per_policy_and_calls_are_still_decided() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("list-cache");
    let policy = r#"{"version": "1", "default": "deny", "tools": {"k8s_get_pods": {}, "k8s_list_namespaces": {}}}"#;
    let mut decision = support::start_decision(&dir, &upstream.url("/mcp"), policy);
    let config = write_config(&dir, &upstream.url("/mcp"), &[decision.url("")], policy, "");
    let edge = Proc::start("edge", &["edge", "--config", config.to_str().unwrap()], &[]);
    let mut mcp = Mcp::new(&edge.url("/mcp/k8s"), KEY_A);
    mcp.initialize().await;
    assert_eq!(mcp.tool_names().await, ["k8s_list_namespaces", "k8s_get_pods"]);

    // The policy changes: the next decision carries its new digest, and lists follow.
    let denied = r#"{"version": "1", "default": "deny", "tools": {"k8s_list_namespaces": {}}}"#;
    std::fs::write(dir.join("policy.json"), denied).expect("policy");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = mcp.call("k8s_list_namespaces", json!({})).await;
    assert!(refusal(&answer).is_none(), "{answer}");
    assert_eq!(mcp.tool_names().await, ["k8s_list_namespaces"], "the new policy's list");

    // Without the decision service the list is still answered; calls are refused.
    decision.kill();
    assert_eq!(mcp.tool_names().await, ["k8s_list_namespaces"]);
    let refused = mcp.call("k8s_list_namespaces", json!({})).await;
    assert_eq!(
        refusal(&refused).map(|d| d["verdict"].clone()),
        Some(json!("DENY")),
        "{refused}"
    );

    // Turned off, every list asks, and without a decision service it is refused.
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &[decision.url("")],
        denied,
        "list_cache_ms = 0",
    );
    let uncached = Proc::start("edge", &["edge", "--config", config.to_str().unwrap()], &[]);
    let mut mcp = Mcp::new(&uncached.url("/mcp/k8s"), KEY_A);
    mcp.initialize().await;
    let answer = mcp.request("tools/list", json!({})).await;
    // A JSON answer carries 503; an SSE stream (how the demo answers in a session) has
    // already sent its 200, so the refusal is the event in it.
    assert!(
        answer.status == 503 || answer.content_type.starts_with("text/event-stream"),
        "{} {}",
        answer.status,
        answer.message
    );
    assert!(answer.message["result"].is_null(), "no list: {}", answer.message);
    assert!(
        answer.message["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("decision service is unavailable")),
        "{}",
        answer.message
    );
}
