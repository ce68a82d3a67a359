//! Human approvals end to end, through real processes: an agent's call needing approval is
//! refused with an approval id; an operator lists and approves it with `tollgate approvals`
//! on any decision replica; the identical call then goes through, once. Denials reach the
//! agent with their reason; approvals expire; other arguments need their own approval. On
//! Redis with 2 edges × 2 decision replicas, and in `tollgate up` on the memory store.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::{Deployment, KEY_A, Mcp, Proc, refusal, run, sha256_hex, text, write_config};

const OPERATOR_KEY: &str = "tg_operator_alice_key";

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_scale": { "action": "require_approval", "approval": { "timeout": "5m" } },
    "k8s_rollout_resume": { "action": "require_approval", "approval": { "timeout": "1s" } }
  }
}"#;

fn operators() -> String {
    format!(
        "\n[[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
        sha256_hex(OPERATOR_KEY)
    )
}

/// `tollgate approvals ARGS… --url ADMIN --key KEY`: (exit code, stdout, stderr).
fn approvals(admin: &str, key: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["approvals"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", admin, "--key", key]);
    run(&all)
}

fn approval_id(result: &Value) -> String {
    let details = refusal(result).unwrap_or_else(|| panic!("refused: {result}"));
    assert_eq!(details["verdict"], "APPROVAL_REQUIRED", "{result}");
    let id = details["approval_id"]
        .as_str()
        .expect("approval_id in _meta")
        .to_owned();
    assert!(
        text(result).contains(&id),
        "the model reads the id too: {}",
        text(result)
    );
    id
}

fn scale(replicas: u64) -> Value {
    json!({"namespace": "web", "name": "api", "replicas": replicas})
}

/// The whole flow. `edges` are `/mcp/k8s` URLs (calls alternate between them), `admins`
/// the operators' APIs of the decision replicas (the last one approves).
async fn approvals_flow(edges: &[String], admins: &[String]) {
    let mut agent = Mcp::new(&edges[0], KEY_A);
    agent.initialize().await;
    let mut elsewhere = agent.via(&edges[edges.len() - 1]);
    let admin = admins.last().expect("an operators' API");

    let first = approval_id(&agent.call("k8s_scale", scale(3)).await);
    assert_eq!(
        approval_id(&elsewhere.call("k8s_scale", scale(3)).await),
        first,
        "an identical call waits for the same approval"
    );

    let (code, listed, stderr) = approvals(&admins[0], OPERATOR_KEY, &["list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<Value> = serde_json::from_str(&listed).expect("list --json is a JSON array");
    let entry = listed
        .iter()
        .find(|a| a["id"] == first.as_str())
        .expect("listed on any replica");
    assert_eq!(entry["status"], "pending");
    assert_eq!(entry["tool"], "k8s_scale");
    assert_eq!(entry["server"], "k8s");
    assert_eq!(entry["grant"], "a");
    assert_eq!(entry["agent"], "agent-a");
    assert_eq!(entry["arguments"]["replicas"], 3, "the approver sees the arguments");
    assert!(
        entry["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{entry}"
    );

    let (code, out, stderr) = approvals(admin, "not-a-key", &["approve", &first]);
    assert_ne!(code, 0, "a wrong key is refused: {out}");
    assert!(stderr.contains("401"), "{stderr}");
    let (code, out, stderr) = approvals(admin, OPERATOR_KEY, &["approve", &first, "--reason", "planned change"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains(&format!("approved {first}")), "{out}");

    // Other arguments are another call: the approval does not admit them.
    let bigger = approval_id(&agent.call("k8s_scale", scale(300)).await);
    assert_ne!(bigger, first);
    // The approved call goes through, on another edge, with the upstream's real answer.
    let admitted = elsewhere.call("k8s_scale", scale(3)).await;
    assert!(refusal(&admitted).is_none(), "approved: {admitted}");
    assert!(text(&admitted).contains("api"), "the upstream's answer: {admitted}");
    // Single use: the next identical call needs a new approval.
    let again = approval_id(&agent.call("k8s_scale", scale(3)).await);
    assert_ne!(again, first);

    // A denial reaches the agent with its reason, once; then the call asks anew.
    let (code, _, stderr) = approvals(admin, OPERATOR_KEY, &["deny", &again, "--reason", "change freeze"]);
    assert_eq!(code, 0, "{stderr}");
    let denied = agent.call("k8s_scale", scale(3)).await;
    let details = refusal(&denied).expect("denied");
    assert_eq!(details["verdict"], "DENY", "{denied}");
    assert!(
        text(&denied).contains("denied by alice: change freeze"),
        "{}",
        text(&denied)
    );
    let (code, _, stderr) = approvals(admin, OPERATOR_KEY, &["approve", &again]);
    assert_ne!(code, 0, "a resolved approval cannot be resolved again");
    assert!(stderr.contains("409") || stderr.contains("not pending"), "{stderr}");
    assert_ne!(approval_id(&agent.call("k8s_scale", scale(3)).await), again);

    // Expiry: nobody decided within the rule's 1 s.
    let resume = json!({"namespace": "web", "name": "api"});
    let soon = approval_id(&agent.call("k8s_rollout_resume", resume.clone()).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (code, _, _) = approvals(admin, OPERATOR_KEY, &["approve", &soon]);
    assert_ne!(code, 0, "too late to approve");
    let expired = agent.call("k8s_rollout_resume", resume).await;
    assert!(text(&expired).contains("expired"), "{}", text(&expired));

    let (code, listed, _) = approvals(admin, OPERATOR_KEY, &["list"]);
    assert_eq!(code, 0);
    assert!(listed.contains(&first) && listed.contains("consumed"), "{listed}");
}

#[tokio::test]
async fn approvals_work_across_two_edges_and_two_replicas_on_redis() {
    let redis = RedisServer::start();
    let store = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n{}",
        redis.url(),
        operators()
    );
    let deployment = Deployment::start("approvals", POLICY, &store, 2, 2);
    assert_eq!(deployment.admins.len(), 2);
    approvals_flow(&deployment.edges, &deployment.admins).await;
}

/// What the webhook receiver keeps: the bodies, and how many POSTs came.
type Receiver = (Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>);

/// A webhook receiver that fails its first POST (so the sender must retry) and records
/// the bodies of the others.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let state = (received.clone(), calls);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            |axum::extract::State((received, calls)): axum::extract::State<Receiver>,
             axum::Json(body): axum::Json<Value>| async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                received.lock().expect("lock").push(body);
                axum::http::StatusCode::NO_CONTENT
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await });
    (url, received)
}

#[tokio::test]
async fn approvals_work_in_tollgate_up() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("approvals-up");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    let (hook, received) = webhook_receiver().await;
    support::append(
        &config,
        &format!("{}\n[approvals]\nwebhook_url = \"{hook}\"\n", operators()),
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("tollgate up serves the operators' API");
    approvals_flow(&[up.url("/mcp/k8s")], std::slice::from_ref(&admin)).await;

    // What a hostile caller of the operators' API gets: no key, a forged id, a reason that
    // could forge log lines or is endless, a body that is not the expected JSON.
    let client = reqwest::Client::new();
    let listed = client
        .get(format!("{admin}/admin/approvals"))
        .send()
        .await
        .expect("send");
    assert_eq!(listed.status(), 401);
    assert!(listed.headers().contains_key("www-authenticate"));
    let post = |path: String, body: Value| {
        client
            .post(format!("{admin}{path}"))
            .bearer_auth(OPERATOR_KEY)
            .json(&body)
            .send()
    };
    let forged = post("/admin/approvals/apr_..%2F..%2Fx/approve".into(), json!({}))
        .await
        .expect("send");
    assert_eq!(forged.status(), 404);
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let id = approval_id(&agent.call("k8s_scale", scale(7)).await);
    for reason in ["line\nforged: yes".to_owned(), "x".repeat(2000)] {
        let answer = post(format!("/admin/approvals/{id}/approve"), json!({"reason": reason}))
            .await
            .expect("send");
        assert_eq!(answer.status(), 400, "{reason:.20}");
    }
    let unknown = post(
        format!("/admin/approvals/{id}/approve"),
        json!({"reason": 1, "extra": true}),
    )
    .await
    .expect("send");
    assert!(unknown.status().is_client_error(), "{}", unknown.status());
    let (code, listed, _) = approvals(&admin, OPERATOR_KEY, &["list", "--json"]);
    assert_eq!(code, 0);
    let listed: Vec<Value> = serde_json::from_str(&listed).expect("JSON");
    let entry = listed.iter().find(|a| a["id"] == id.as_str()).expect("listed");
    assert_eq!(entry["status"], "pending", "nothing above resolved it");

    // Every new pending approval was POSTed to the webhook (the first POST failed and was
    // retried), with what an operator needs to decide.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = received.lock().expect("lock").clone();
        let first = got.iter().find(|b| b["tool"] == "k8s_scale");
        if let Some(first) = first {
            assert_eq!(first["event"], "approval.pending");
            assert!(first["id"].as_str().is_some_and(|id| id.starts_with("apr_")), "{first}");
            assert_eq!(first["grant"], "a");
            assert!(
                first["arguments"].as_str().is_some_and(|a| a.contains("replicas")),
                "{first}"
            );
            assert!(got.len() >= 4, "one POST per new approval: {got:#?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the webhook was not called: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(up.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for event in ["requested", "consumed", "approved", "denied", "expired", "notified"] {
        assert!(
            metrics.contains(&format!("tollgate_approvals_total{{event=\"{event}\"}}")),
            "{event} in {metrics}"
        );
    }
}

/// An approved call that its rule's limits refuse does not use the approval up: the next
/// identical call, once there is room, goes through on it.
#[tokio::test]
async fn an_approval_is_used_only_by_a_call_that_goes_through() {
    use tollgate_decision::Engine;
    use tollgate_decision::proto::{DecideRequest, Verdict};
    use tollgate_limiter::{ApprovalStore, MemoryApprovals, MemoryStore};

    let text = r#"{"version": "1", "tools": {"k8s_scale": {"action": "require_approval",
        "limits": [{"counter": "scale", "window": "1s", "max": 1}]}}}"#;
    let policy = tollgate_policy::compile_str("p.json", text).expect("policy").policy;
    let approvals = Arc::new(MemoryApprovals::default());
    let engine =
        Engine::new(policy, Arc::new(MemoryStore::default()), Duration::from_secs(1)).with_approvals(approvals.clone());
    let call = |replicas: u64| DecideRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        server: "k8s".into(),
        tool: "k8s_scale".into(),
        grant: "a".into(),
        agent: "a".into(),
        arguments_json: scale(replicas).to_string(),
        ..Default::default()
    };
    let approve = |id: String| {
        let approvals = approvals.clone();
        async move { approvals.resolve(&id, true, "alice", "", "").await.expect("resolve") }
    };

    let asked = engine.decide(&call(3)).await;
    assert_eq!(asked.verdict(), Verdict::ApprovalRequired);
    approve(asked.approval_id.clone()).await;
    assert_eq!(
        engine.decide(&call(3)).await.verdict(),
        Verdict::Allow,
        "takes the 1 per second"
    );

    let second = engine.decide(&call(3)).await;
    approve(second.approval_id.clone()).await;
    let limited = engine.decide(&call(3)).await;
    assert_eq!(limited.verdict(), Verdict::RateLimited, "{limited:?}");
    assert!(limited.reason.contains("stays approved"), "{}", limited.reason);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = engine.decide(&call(3)).await;
    assert_eq!(
        later.verdict(),
        Verdict::Allow,
        "the kept approval is used now: {later:?}"
    );
    assert_eq!(later.approval_id, second.approval_id);
}
