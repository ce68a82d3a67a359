//! Human approvals end to end, through real processes, on Redis with 2 edges × 2 decision
//! replicas and in `tollgate up` on the memory store.
//!
//! Held calls (the default), driven by the official MCP TypeScript SDK client: the call
//! waits on its edge with progress notifications; an operator approves it with
//! `tollgate approvals` on another replica and the client receives the upstream's real
//! answer at once. Answer-now mode (`"mode": "retry"`): the call is refused with an
//! approval id; once approved, the identical call goes through, once. In both: denials
//! reach the agent with their reason, approvals expire, other arguments need their own
//! approval.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::{Deployment, KEY_A, Mcp, Proc, refusal, run, sha256_hex, text, write_config};

const OPERATOR_KEY: &str = "tg_operator_alice_key";
const WEBHOOK_SECRET: &str = "webhook-secret-of-at-least-32-characters";

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_scale": { "action": "require_approval", "approval": { "timeout": "5m", "mode": "retry" } },
    "k8s_rollout_resume": { "action": "require_approval", "approval": { "timeout": "1s", "mode": "retry" } }
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
             headers: axum::http::HeaderMap,
             raw: axum::body::Bytes| async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let Ok(mut body) = serde_json::from_slice::<Value>(&raw) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                // What a receiver does: recompute the signature over the raw body.
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let signed = header("x-tollgate-timestamp").parse::<u64>().is_ok_and(|timestamp| {
                    use hmac::Mac;
                    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("key");
                    mac.update(format!("v1:{timestamp}:").as_bytes());
                    mac.update(&raw);
                    header("x-tollgate-signature")
                        .strip_prefix("v1=")
                        .and_then(|h| hex::decode(h).ok())
                        .is_some_and(|tag| mac.verify_slice(&tag).is_ok())
                });
                body["_signature_ok"] = json!(signed);
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
        &format!(
            "{}\n[approvals]\nwebhook_url = \"{hook}\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\
             console_url = \"https://tollgate.example.com/\"\n",
            operators()
        ),
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
            // Issue 24, item 10: signed, with the whole arguments, their digest and a link.
            assert_eq!(first["_signature_ok"], true, "signed with webhook_secret: {first}");
            let id = first["id"].as_str().unwrap_or_default();
            assert_eq!(
                first["console"].as_str(),
                Some(format!("https://tollgate.example.com/console#{id}").as_str())
            );
            let arguments = first["arguments"].as_str().unwrap_or_default();
            assert_eq!(
                first["arguments_sha256"].as_str(),
                Some(support::sha256_hex(arguments).as_str()),
                "{first}"
            );
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
    let metrics = support::get_text(&up.url("/metrics")).await;
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

/// Held by default: the rules of the held-call tests.
const HELD_POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_scale": { "action": "require_approval", "approval": { "hold": "30s" } },
    "k8s_delete_namespace": { "action": "require_approval", "approval": { "hold": "1s" } },
    "k8s_rollout_resume": { "action": "require_approval", "approval": { "timeout": "2s" } }
  }
}"#;

/// The MCP TypeScript SDK client of `tests/interop/held_client.mjs`, driven line by line.
struct SdkClient {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<Value>,
    /// Lines read while looking for another tag's.
    early: Vec<Value>,
}

impl SdkClient {
    fn connect(url: &str) -> SdkClient {
        let interop = std::path::Path::new("tests/interop");
        assert!(
            interop.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
            "the MCP TypeScript SDK is not installed: run scripts/test.sh, or `npm ci --prefix tests/interop`"
        );
        let mut child = Command::new("node")
            .arg(interop.join("held_client.mjs"))
            .args([url, KEY_A])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js 18+ or run scripts/test.sh"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "unparsed": line }));
                if tx.send(parsed).is_err() {
                    return;
                }
            }
        });
        let mut client = SdkClient {
            child,
            stdin,
            lines,
            early: Vec::new(),
        };
        let ready = client.next(|l| l.get("ready").is_some(), Duration::from_secs(20));
        assert_eq!(ready["ready"], true);
        client
    }

    /// Starts a `tools/call` (answered later; see [`SdkClient::result`]).
    fn call(&mut self, tag: &str, name: &str, arguments: Value, progress: bool) {
        let command = json!({"op": "call", "tag": tag, "name": name, "arguments": arguments, "progress": progress});
        writeln!(self.stdin, "{command}").expect("write to the SDK client");
    }

    /// The next line that `wanted` accepts, within `within`.
    fn next(&mut self, wanted: impl Fn(&Value) -> bool, within: Duration) -> Value {
        if let Some(i) = self.early.iter().position(&wanted) {
            return self.early.remove(i);
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.get("error").is_some() && line.get("tag").is_none() => panic!("SDK client: {line}"),
                Ok(line) if wanted(&line) => return line,
                Ok(line) => self.early.push(line),
                Err(_) => panic!(
                    "the SDK client said nothing expected within {within:?}; it said: {:?}",
                    self.early
                ),
            }
        }
    }

    /// The approval id a held call's progress notifications name.
    fn approval_of(&mut self, tag: &str) -> String {
        let line = self.next(
            |l| l["tag"] == tag && l.get("progress").is_some(),
            Duration::from_secs(10),
        );
        let message = line["progress"]["message"].as_str().unwrap_or_default();
        let id = message
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("apr_"))
            .unwrap_or_else(|| panic!("progress names the approval: {line}"));
        id.to_owned()
    }

    /// The answer to call `tag`: (result, milliseconds the call took).
    fn result(&mut self, tag: &str, within: Duration) -> (Value, u64) {
        let line = self.next(
            |l| l["tag"] == tag && (l.get("result").is_some() || l.get("error").is_some()),
            within,
        );
        let result = line
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("call {tag} failed: {line}"));
        (result, line["ms"].as_u64().unwrap_or_default())
    }

    /// Whether call `tag` has been answered yet (looks for `within`).
    fn answered(&mut self, tag: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.early.push(line);
            }
        }
        self.early
            .iter()
            .any(|l| l["tag"] == tag && (l.get("result").is_some() || l.get("error").is_some()))
    }
}

impl Drop for SdkClient {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "close"}));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabelled gauge in a Prometheus text page.
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until `tollgate_held_calls` on `metrics_url` is `want`.
async fn held_calls_become(metrics_url: &str, want: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = gauge(&support::get_text(metrics_url).await, "tollgate_held_calls");
        if held == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tollgate_held_calls stayed at {held:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Held calls, the whole flow. `edges` are `/mcp/k8s` URLs (the SDK client uses the first,
/// a raw client the last), `admins` the decision replicas' operators' APIs (the last one
/// approves).
async fn held_flow(edges: &[String], admins: &[String]) {
    let admin = admins.last().expect("an operators' API");
    let mut sdk = SdkClient::connect(&edges[0]);

    // Held, then approved on another replica: the SDK receives the upstream's real answer,
    // at once (well before the 30 s hold ends).
    sdk.call("first", "k8s_scale", scale(3), true);
    let first = sdk.approval_of("first");
    assert!(
        !sdk.answered("first", Duration::from_millis(500)),
        "the call is held while pending"
    );
    let (code, _, stderr) = approvals(admin, OPERATOR_KEY, &["approve", &first]);
    assert_eq!(code, 0, "{stderr}");
    let approved_at = std::time::Instant::now();
    let (result, _) = sdk.result("first", Duration::from_secs(10));
    let woke = approved_at.elapsed();
    assert!(refusal(&result).is_none(), "approved: {result}");
    assert_ne!(result["isError"], true, "{result}");
    assert!(text(&result).contains("api"), "the upstream's real answer: {result}");
    assert!(woke < Duration::from_secs(3), "woken at once, not by a timer: {woke:?}");

    // Single use, and bound to the arguments: the same call again and a call with other
    // arguments each wait for their own approval; approving one admits only that one.
    sdk.call("again", "k8s_scale", scale(3), true);
    sdk.call("bigger", "k8s_scale", scale(300), true);
    let again = sdk.approval_of("again");
    let bigger = sdk.approval_of("bigger");
    assert_ne!(again, first, "an approval is used once");
    assert_ne!(bigger, again, "other arguments need their own approval");
    let (code, _, stderr) = approvals(admin, OPERATOR_KEY, &["approve", &again]);
    assert_eq!(code, 0, "{stderr}");
    let (result, _) = sdk.result("again", Duration::from_secs(10));
    assert!(refusal(&result).is_none(), "approved: {result}");
    assert!(
        !sdk.answered("bigger", Duration::from_millis(500)),
        "replicas: 300 is still held"
    );

    // A denial reaches the held call with the operator's reason.
    let (code, _, stderr) = approvals(
        &admins[0],
        OPERATOR_KEY,
        &["deny", &bigger, "--reason", "change freeze"],
    );
    assert_eq!(code, 0, "{stderr}");
    let (denied, _) = sdk.result("bigger", Duration::from_secs(10));
    let details = refusal(&denied).unwrap_or_else(|| panic!("denied: {denied}"));
    assert_eq!(details["verdict"], "DENY", "{denied}");
    assert!(text(&denied).contains("denied by alice: change freeze"), "{denied}");

    // Past its hold the call is answered now, naming the approval; approved later, the
    // same call goes through at once (answer-now, the fallback).
    sdk.call("late", "k8s_delete_namespace", json!({"namespace": "tmp"}), true);
    let (late, took) = sdk.result("late", Duration::from_secs(10));
    let late_id = approval_id(&late);
    assert!(took >= 900, "held for its 1 s hold first: {took} ms");
    let (code, _, stderr) = approvals(admin, OPERATOR_KEY, &["approve", &late_id]);
    assert_eq!(code, 0, "{stderr}");
    sdk.call("late-again", "k8s_delete_namespace", json!({"namespace": "tmp"}), false);
    let (result, took) = sdk.result("late-again", Duration::from_secs(10));
    assert!(refusal(&result).is_none(), "approved: {result}");
    assert!(took < 1000, "an approved call is not held: {took} ms");

    // Nobody decides: the approval expires, and the held call is told so.
    sdk.call(
        "expiring",
        "k8s_rollout_resume",
        json!({"namespace": "web", "name": "api"}),
        true,
    );
    let (expired, took) = sdk.result("expiring", Duration::from_secs(10));
    let details = refusal(&expired).unwrap_or_else(|| panic!("expired: {expired}"));
    assert_eq!(details["verdict"], "DENY", "{expired}");
    assert!(text(&expired).contains("expired"), "{expired}");
    assert!(took >= 1900, "held until the approval expired: {took} ms");
    drop(sdk);

    // An agent that goes away while held leaves nothing behind on its edge.
    let edge = edges.last().expect("an edge");
    let metrics_url = edge.replace("/mcp/k8s", "/metrics");
    held_calls_become(&metrics_url, 0).await;
    let mut agent = Mcp::new(edge, KEY_A);
    agent.initialize().await;
    let mut response = reqwest::Client::new()
        .post(edge)
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", agent.session.clone().unwrap_or_default())
        .body(
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                     "params": {"name": "k8s_scale", "arguments": scale(5)}})
            .to_string(),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/event-stream")),
        "a held call is answered as an SSE stream"
    );
    let first_chunk = response.chunk().await.expect("read").expect("a keep-alive at once");
    let first_chunk = String::from_utf8_lossy(&first_chunk);
    assert!(first_chunk.starts_with(": waiting for an operator"), "{first_chunk}");
    held_calls_become(&metrics_url, 1).await;
    drop(response);
    held_calls_become(&metrics_url, 0).await;
}

#[tokio::test]
async fn held_calls_work_across_two_edges_and_two_replicas_on_redis() {
    let redis = RedisServer::start();
    let store = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n{}",
        redis.url(),
        operators()
    );
    let deployment = Deployment::start("held", HELD_POLICY, &store, 2, 2);
    held_flow(&deployment.edges, &deployment.admins).await;
}

/// A held call outlives the decision replica it follows the approval on: the edge follows
/// it on the other replica, which hears the resolution through Redis.
#[tokio::test]
async fn a_held_call_survives_the_loss_of_its_decision_replica() {
    let redis = RedisServer::start();
    let store = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n{}",
        redis.url(),
        operators()
    );
    let mut deployment = Deployment::start("held-failover", HELD_POLICY, &store, 2, 1);
    let mut sdk = SdkClient::connect(&deployment.edges[0]);
    // The edge picks replicas round-robin for every request it makes (each held call: one
    // Decide, then WaitApproval); a refused call in between puts the two waits on
    // different replicas, so killing either replica takes one of them away.
    sdk.call("one", "k8s_scale", scale(11), true);
    let one = sdk.approval_of("one");
    sdk.call("refused", "k8s_get_pods", json!({"namespace": "web"}), false);
    let (refused, _) = sdk.result("refused", Duration::from_secs(10));
    assert!(refusal(&refused).is_some(), "{refused}");
    sdk.call("two", "k8s_scale", scale(12), true);
    let two = sdk.approval_of("two");
    deployment.kill_decision(0);
    let survivor = deployment.admins[1].clone();
    for id in [&one, &two] {
        let (code, _, stderr) = approvals(&survivor, OPERATOR_KEY, &["approve", id]);
        assert_eq!(code, 0, "{stderr}");
    }
    for tag in ["one", "two"] {
        let (result, _) = sdk.result(tag, Duration::from_secs(15));
        assert!(refusal(&result).is_none(), "call {tag} went through: {result}");
        assert!(text(&result).contains("api"), "{result}");
    }
}

#[tokio::test]
async fn held_calls_work_in_tollgate_up() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("held-up");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], HELD_POLICY, "hold_keepalive_ms = 300");
    support::append(&config, &operators());
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("tollgate up serves the operators' API");
    held_flow(&[up.url("/mcp/k8s")], std::slice::from_ref(&admin)).await;
    let metrics = support::get_text(&up.url("/metrics")).await;
    assert!(
        gauge(&metrics, "tollgate_approvals_pending").is_some(),
        "the pending-approvals gauge is exported: {metrics}"
    );
}

/// The decision service's approval API over gRPC: `WaitApproval` streams the record now and
/// again the moment it is resolved (here through the HTTP API); `ListApprovals` and
/// `ResolveApproval` need an operator key besides the cluster token.
#[tokio::test]
async fn the_grpc_approval_api_follows_lists_and_resolves_with_an_operator_key() {
    use tollgate_decision::proto::decision_service_client::DecisionServiceClient;
    use tollgate_decision::proto::{
        ApprovalStatus, DecideRequest, ListApprovalsRequest, ResolveApprovalRequest, Verdict, WaitApprovalRequest,
    };

    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("approvals-grpc");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], HELD_POLICY, "");
    support::append(&config, &operators());
    let decision = Proc::start("decision", &["decision", "--config", config.to_str().unwrap()], &[]);
    let admin = decision.admin_url.clone().expect("operators' API");
    let mut client = DecisionServiceClient::connect(decision.url("")).await.expect("connect");
    let ask = |replicas: u64| DecideRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        server: "k8s".into(),
        tool: "k8s_scale".into(),
        grant: "a".into(),
        agent: "agent-a".into(),
        arguments_json: scale(replicas).to_string(),
        ..Default::default()
    };
    let asked = client.decide(ask(4)).await.expect("decide").into_inner();
    assert_eq!(asked.verdict(), Verdict::ApprovalRequired);
    assert_eq!(asked.hold_ms, 30_000, "the rule's hold reaches the edge");
    let id = asked.approval_id.clone();

    let mut updates = client
        .wait_approval(WaitApprovalRequest {
            approval_id: id.clone(),
            max_wait_ms: 20_000,
        })
        .await
        .expect("wait")
        .into_inner();
    let now = updates.message().await.expect("stream").expect("the record now");
    assert_eq!(now.approval.as_ref().map(|a| a.status()), Some(ApprovalStatus::Pending));
    assert_eq!(
        now.approval.as_ref().map(|a| a.arguments_json.as_str()),
        Some(""),
        "edges are not sent the arguments"
    );
    let resolved = reqwest::Client::new()
        .post(format!("{admin}/admin/approvals/{id}/deny"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"reason": "not now"}))
        .send()
        .await
        .expect("deny");
    assert_eq!(resolved.status(), 200);
    let then = tokio::time::timeout(Duration::from_secs(3), updates.message())
        .await
        .expect("woken at once")
        .expect("stream")
        .expect("the resolution");
    let record = then.approval.expect("record");
    assert_eq!(record.status(), ApprovalStatus::Denied);
    assert_eq!(
        (record.resolved_by.as_str(), record.reason.as_str()),
        ("alice", "not now")
    );
    assert!(
        updates.message().await.expect("stream").is_none(),
        "the stream ends after the resolution"
    );

    // Waiting for what does not exist is an error, not a hang.
    let missing = client
        .wait_approval(WaitApprovalRequest {
            approval_id: "apr_00000000000000000000000000000000".into(),
            max_wait_ms: 20_000,
        })
        .await;
    let status = match missing {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.expect_err("no such approval"),
    };
    assert_eq!(status.code(), tonic::Code::NotFound);

    fn with_key<M>(message: M, key: &str) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("x-tollgate-operator-key", key.parse().expect("ascii"));
        request
    }
    let refused = client
        .list_approvals(ListApprovalsRequest {})
        .await
        .expect_err("no key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = client
        .list_approvals(with_key(ListApprovalsRequest {}, "wrong"))
        .await
        .expect_err("wrong key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let second = client.decide(ask(5)).await.expect("decide").into_inner().approval_id;
    let listed = client
        .list_approvals(with_key(ListApprovalsRequest {}, OPERATOR_KEY))
        .await
        .expect("list")
        .into_inner()
        .approvals;
    let entry = listed.iter().find(|a| a.id == second).expect("listed");
    assert_eq!(entry.status(), ApprovalStatus::Pending);
    assert!(
        entry.arguments_json.contains("\"replicas\":5"),
        "operators see the arguments"
    );

    let resolve = |id: &str, reason: &str| ResolveApprovalRequest {
        approval_id: id.into(),
        approve: true,
        reason: reason.into(),
    };
    let refused = client.resolve_approval(resolve(&second, "")).await.expect_err("no key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = client
        .resolve_approval(with_key(resolve(&second, "a\nforged: line"), OPERATOR_KEY))
        .await
        .expect_err("control characters");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = client
        .resolve_approval(with_key(resolve("apr_0000", ""), OPERATOR_KEY))
        .await
        .expect_err("unknown");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let approved = client
        .resolve_approval(with_key(resolve(&second, "go"), OPERATOR_KEY))
        .await
        .expect("approve")
        .into_inner()
        .approval
        .expect("record");
    assert_eq!(approved.status(), ApprovalStatus::Approved);
    assert_eq!(approved.resolved_by, "alice");
    let refused = client
        .resolve_approval(with_key(resolve(&second, ""), OPERATOR_KEY))
        .await
        .expect_err("not pending");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let admitted = client.decide(ask(5)).await.expect("decide").into_inner();
    assert_eq!(admitted.verdict(), Verdict::Allow, "{}", admitted.reason);
}

/// Issue 23, hole 3: an approval binds the exact arguments the operator saw. Other
/// spellings of "the same" values (a string that spells the number, `4.0` for `4`, an
/// integer past 2^53 that rounds to the approved one) are other calls and need their own
/// approval; the approved call itself, its keys in any order, goes through.
#[tokio::test]
async fn an_approval_admits_only_the_exact_arguments_it_was_given() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("approvals-exact");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    support::append(&config, &operators());
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("operators' API");
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;

    let approved = json!({"namespace": "12345678901234567890", "name": "api", "replicas": 4});
    let id = approval_id(&agent.call("k8s_scale", approved.clone()).await);
    let (code, _, stderr) = approvals(&admin, OPERATOR_KEY, &["approve", &id]);
    assert_eq!(code, 0, "{stderr}");

    let spellings = [
        json!({"namespace": "12345678901234567891", "name": "api", "replicas": 4}),
        json!({"namespace": "12345678901234567890", "name": "api", "replicas": "4"}),
        json!({"namespace": "12345678901234567890", "name": "api", "replicas": 4.0}),
        json!({"namespace": "12345678901234567890", "name": "api", "replicas": "0004.000"}),
        json!({"namespace": "12345678901234567890", "name": "api\u{0}", "replicas": 4}),
        json!({"namespace": "12345678901234567890", "name": "api", "replicas": 4, "force": true}),
    ];
    for other in spellings {
        let answer = agent.call("k8s_scale", other.clone()).await;
        let asked = approval_id(&answer);
        assert_ne!(asked, id, "{other} is not the approved call");
    }
    // Key order is not part of the call: the approved arguments in another order go through.
    let reordered: Value =
        serde_json::from_str(r#"{"replicas":4,"name":"api","namespace":"12345678901234567890"}"#).expect("JSON");
    let admitted = agent.call("k8s_scale", reordered).await;
    assert!(refusal(&admitted).is_none(), "approved: {admitted}");
    assert!(
        text(&admitted).contains("12345678901234567890"),
        "the upstream acted on the approved arguments: {admitted}"
    );
}

/// An operator's yes goes to the caller they saw: with the default `bind = "agent"` another
/// JWT subject of the same grant asks anew; with `bind = "grant"` any caller of the grant
/// may use it. The record names who asked.
#[tokio::test]
async fn an_approval_goes_to_the_caller_the_operator_saw_unless_bound_to_the_grant() {
    use tollgate_decision::proto::decision_service_client::DecisionServiceClient;
    use tollgate_decision::proto::{DecideRequest, Verdict};

    const BIND_POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_scale": { "action": "require_approval", "approval": { "mode": "retry" } },
    "k8s_rollout_pause": { "action": "require_approval", "approval": { "mode": "retry", "bind": "grant" } }
  }
}"#;
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("approvals-bind");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], BIND_POLICY, "");
    support::append(&config, &operators());
    let decision = Proc::start("decision", &["decision", "--config", config.to_str().unwrap()], &[]);
    let admin = decision.admin_url.clone().expect("operators' API");
    let mut client = DecisionServiceClient::connect(decision.url("")).await.expect("connect");
    let ask = |tool: &str, subject: &str| DecideRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        server: "k8s".into(),
        tool: tool.into(),
        grant: "a".into(),
        agent: "agent-a".into(),
        subject: subject.into(),
        issuer: "https://idp.example".into(),
        arguments_json: json!({"namespace": "web", "name": "api"}).to_string(),
        ..Default::default()
    };

    // Found by the hostile review of issue 23: arguments longer than a record shows would let
    // a padding key push the dangerous value past the cut the operator sees. Refused.
    let mut padded = ask("k8s_scale", "alice");
    padded.arguments_json = json!({"a_memo": "x".repeat(70_000), "namespace": "kube-system"}).to_string();
    let refused = client.decide(padded).await.expect("decide").into_inner();
    assert_eq!(refused.verdict(), Verdict::Deny, "{}", refused.reason);
    assert!(
        refused.reason.contains("more than an operator can be shown"),
        "{}",
        refused.reason
    );
    assert!(refused.approval_id.is_empty(), "no approval was asked for");

    for (tool, shared) in [("k8s_scale", false), ("k8s_rollout_pause", true)] {
        let asked = client.decide(ask(tool, "alice")).await.expect("decide").into_inner();
        assert_eq!(asked.verdict(), Verdict::ApprovalRequired, "{tool}");
        let id = asked.approval_id.clone();
        let (code, listed, _) = approvals(&admin, OPERATOR_KEY, &["list", "--json"]);
        assert_eq!(code, 0);
        let listed: Vec<Value> = serde_json::from_str(&listed).expect("JSON");
        let entry = listed.iter().find(|a| a["id"] == id.as_str()).expect("listed");
        assert_eq!(entry["subject"], "alice", "the operator sees who asked: {entry}");
        let (code, _, stderr) = approvals(&admin, OPERATOR_KEY, &["approve", &id]);
        assert_eq!(code, 0, "{stderr}");

        let bob = client.decide(ask(tool, "bob")).await.expect("decide").into_inner();
        if shared {
            assert_eq!(bob.verdict(), Verdict::Allow, "bind = grant: any caller of the grant");
            assert_eq!(bob.approval_id, id);
        } else {
            assert_eq!(bob.verdict(), Verdict::ApprovalRequired, "bind = agent: bob asks anew");
            assert_ne!(bob.approval_id, id);
            let alice = client.decide(ask(tool, "alice")).await.expect("decide").into_inner();
            assert_eq!(alice.verdict(), Verdict::Allow, "alice's approved call");
            assert_eq!(alice.approval_id, id);
        }
    }
}

/// Issue 30, item 3: approvals and their wake-ups through Redis Sentinel (the primary the
/// sentinel names): a held call on one replica is resolved on the other.
#[tokio::test]
async fn held_calls_work_through_redis_sentinel() {
    let redis = RedisServer::start();
    let sentinel = support::redis::Sentinel::start(redis.port, "tollgate", 1);
    let store = format!(
        "\n[store]\nkind = \"redis-sentinel\"\nsentinels = [\"{}\"]\nmaster_name = \"tollgate\"\n{}",
        sentinel.url(),
        operators()
    );
    let deployment = Deployment::start("held-sentinel", HELD_POLICY, &store, 2, 2);
    held_flow(&deployment.edges, &deployment.admins).await;
}
