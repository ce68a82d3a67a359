//! Who may use a stdio bridge, and how much of it (issue 23, holes 8, 9 and 13), over real
//! HTTP on loopback with real child processes: bridges served in this process (so that
//! their settings and worker threads are the test's), and the bridges `tollgate up` starts.
//!
//! The child is a small stdio MCP server in Python (`python3`, standard library only) that
//! writes its pid to a file when it starts, so the tests count children, not only answers.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde_json::{Value, json};
use support::{KEY_A, KEY_B, Mcp, write_config};
use tollgate_stdio::{Bridge, GRANT_HEADER, StdioSettings};

/// A stdio MCP server: answers `initialize`, `tools/list` and `tools/call` (echo).
const CHILD: &str = r#"
import json, os, sys
log = os.environ.get("CHILD_LOG")
if log:
    with open(log, "a") as f:
        f.write("%d\n" % os.getpid())
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    message = json.loads(line)
    if "id" not in message or "method" not in message:
        continue
    method = message["method"]
    if method == "initialize":
        version = message.get("params", {}).get("protocolVersion", "2025-06-18")
        result = {"protocolVersion": version, "capabilities": {"tools": {}},
                  "serverInfo": {"name": "tiny", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        text = json.dumps(message.get("params", {}).get("arguments"))
        result = {"content": [{"type": "text", "text": text}]}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

const TOKEN: &str = "the-bridges-token-for-these-tests";

/// The child's command line; its pid goes to `log` (through the bridge's environment).
fn child_command(dir: &Path) -> Vec<String> {
    let script = dir.join("tiny_mcp.py");
    std::fs::write(&script, CHILD).expect("write the child's script");
    // The interpreter itself, not a version manager's shim: children start quicker.
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for these tests");
    let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!python.is_empty(), "python3 did not name its executable");
    vec![python, script.display().to_string()]
}

fn children_started(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A bridge served in this process on a loopback port; stopped (children ended) when the
/// test's runtime ends.
struct Served {
    addr: SocketAddr,
    bridge: Arc<Bridge>,
    log: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    async fn start(tag: &str, configure: impl FnOnce(&mut StdioSettings)) -> Served {
        let dir = support::temp_dir(tag);
        let log = dir.join("children.log");
        let mut settings = StdioSettings::new("tiny", child_command(&dir));
        settings.env.insert("CHILD_LOG".into(), log.display().to_string());
        configure(&mut settings);
        let bridge = Bridge::new(settings).expect("bridge settings");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tollgate_stdio::serve(listener, bridge.clone(), async move {
            let _ = stopped.await;
        }));
        Served {
            addr,
            bridge,
            log,
            _stop: stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    fn children(&self) -> usize {
        children_started(&self.log)
    }
}

fn initialize_body(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}}})
    .to_string()
}

/// An `initialize` POST with the JSON content type and, when given, a bearer token and a
/// grant header; answers (status, JSON body or Null, session id).
async fn initialize(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    grant: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut request = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(initialize_body(1));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(grant) = grant {
        request = request.header(GRANT_HEADER, grant);
    }
    let response = request.send().await.expect("POST to the bridge");
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body, session)
}

async fn delete(http: &reqwest::Client, url: &str, token: Option<&str>, session: &str) -> u16 {
    let mut request = http.delete(url).header("Mcp-Session-Id", session);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("DELETE").status().as_u16()
}

/// Sends `n` initializes at once: every connection is opened first, then each writes its
/// whole request as soon as all are open (raw HTTP/1.1, so that nothing staggers them);
/// their statuses.
async fn burst(addr: SocketAddr, n: usize, token: Option<&str>, grant: Option<&str>) -> Vec<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = initialize_body(1);
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(grant) = grant {
        head.push_str(&format!("{GRANT_HEADER}: {grant}\r\n"));
    }
    let request = format!("{head}\r\n{body}");
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let request = request.clone();
            let start = start.clone();
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                start.wait().await;
                stream.write_all(request.as_bytes()).await.expect("write");
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.expect("read");
                let text = String::from_utf8_lossy(&answer);
                text.split(' ')
                    .nth(1)
                    .and_then(|code| code.parse::<u16>().ok())
                    .unwrap_or_else(|| panic!("not an HTTP answer: {text}"))
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for task in tasks {
        statuses.push(task.await.expect("initialize task"));
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Hole 13: 24 initializes at once against `max_sessions = 3` start exactly 3 children and
/// 3 sessions; the other 21 get 503 (the slot is taken under the lock that counts them).
#[tokio::test(flavor = "multi_thread", worker_threads = 16)]
async fn concurrent_initializes_start_no_more_children_than_max_sessions() {
    let served = Served::start("stdio-race", |s| {
        s.max_sessions = 3;
        s.max_sessions_per_grant = 100;
    })
    .await;
    let statuses = burst(served.addr, 24, None, None).await;
    assert_eq!(count(&statuses, 200), 3, "{statuses:?}");
    assert_eq!(count(&statuses, 503), 21, "{statuses:?}");
    assert_eq!(served.bridge.session_count(), 3);
    assert_eq!(served.children(), 3, "children started");
}

/// Hole 13 for the per-grant quota: 24 initializes of one grant at once against a quota of
/// 2 (and room for 100 on the server) start exactly 2 children; the others get 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 16)]
async fn concurrent_initializes_of_one_grant_stop_at_its_quota() {
    let served = Served::start("stdio-race-grant", |s| {
        s.max_sessions_per_grant = 2;
        s.token_sha256 = Some(tollgate_stdio::token_sha256(TOKEN));
    })
    .await;
    let statuses = burst(served.addr, 24, Some(TOKEN), Some("greedy")).await;
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 22, "{statuses:?}");
    assert_eq!(served.children(), 2, "children started");
}

/// A slot reserved for a child that cannot be started is given back: with room for one
/// session, every attempt gets 502 (cannot start), never 503 or 429 (full).
#[tokio::test]
async fn a_child_that_cannot_start_gives_its_slot_back() {
    let served = Served::start("stdio-no-program", |s| {
        s.command = vec!["/nonexistent/tollgate-test-no-such-program".into()];
        s.max_sessions = 1;
        s.max_sessions_per_grant = 1;
    })
    .await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let (status, body, _) = initialize(&http, &served.url(), None, None).await;
        assert_eq!(status, 502, "{body}");
    }
    assert_eq!(served.bridge.session_count(), 0);
}

/// Hole 8: a grant at its quota gets 429 (a JSON-RPC error naming the grant and the quota)
/// while another grant, and callers without a grant, still get sessions; a session the
/// grant ends gives its slot back.
#[tokio::test]
async fn one_grant_cannot_take_every_child_of_the_bridge() {
    let served = Served::start("stdio-quota", |s| {
        s.max_sessions = 10;
        s.max_sessions_per_grant = 2;
        s.token_sha256 = Some(tollgate_stdio::token_sha256(TOKEN));
    })
    .await;
    let url = served.url();
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (status, body, session) = initialize(&http, &url, Some(TOKEN), Some("a")).await;
        assert_eq!(status, 200, "{body}");
        sessions.push(session.expect("a session id"));
    }
    let (status, body, session) = initialize(&http, &url, Some(TOKEN), Some("a")).await;
    assert_eq!(status, 429, "{body}");
    assert!(session.is_none());
    assert_eq!(body["error"]["code"], -32003, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("grant \"a\"") && message.contains("(2)") && message.contains("\"tiny\""),
        "{message}"
    );

    let (status, body, _) = initialize(&http, &url, Some(TOKEN), Some("b")).await;
    assert_eq!(status, 200, "another grant still gets a session: {body}");
    for _ in 0..2 {
        let (status, body, _) = initialize(&http, &url, Some(TOKEN), None).await;
        assert_eq!(status, 200, "no grant header: the anonymous bucket: {body}");
    }
    let (status, body, _) = initialize(&http, &url, Some(TOKEN), None).await;
    assert_eq!(status, 429, "the anonymous bucket has the same quota: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("without a grant"), "{message}");

    assert_eq!(delete(&http, &url, Some(TOKEN), &sessions[0]).await, 200);
    let (status, body, _) = initialize(&http, &url, Some(TOKEN), Some("a")).await;
    assert_eq!(status, 200, "an ended session gives its slot back: {body}");
    assert_eq!(served.children(), 6);
}

/// Hole 8 with hole 9: without a token the bridge believes no grant header (anything on
/// loopback could send one), so every session counts against the anonymous bucket; with a
/// token, a grant header on a request without it gets 401.
#[tokio::test]
async fn a_grant_header_is_believed_only_with_the_token() {
    let open = Served::start("stdio-open", |s| s.max_sessions_per_grant = 2).await;
    let http = reqwest::Client::new();
    for grant in ["a", "b"] {
        let (status, body, _) = initialize(&http, &open.url(), None, Some(grant)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body, _) = initialize(&http, &open.url(), None, Some("c")).await;
    assert_eq!(status, 429, "grants a, b and c are one anonymous caller here: {body}");
    assert_eq!(open.children(), 2);

    let guarded = Served::start("stdio-guarded", |s| {
        s.max_sessions_per_grant = 2;
        s.token_sha256 = Some(tollgate_stdio::token_sha256(TOKEN));
    })
    .await;
    let (status, _, _) = initialize(&http, &guarded.url(), None, Some("a")).await;
    assert_eq!(status, 401);
    let (status, _, _) = initialize(&http, &guarded.url(), Some("not-the-token"), Some("a")).await;
    assert_eq!(status, 401);
    assert_eq!(guarded.children(), 0);
}

/// Hole 9: a bridge with a token answers 401 without it (or with a wrong one, saying
/// nothing more), 403 to any request with an Origin and to a Host other than its own, and 415
/// to a POST that is not application/json; its own caller gets through.
#[tokio::test]
async fn the_bridge_admits_only_its_caller() {
    let served = Served::start("stdio-guard", |s| {
        s.token_sha256 = Some(tollgate_stdio::token_sha256(TOKEN));
    })
    .await;
    let url = served.url();
    let http = reqwest::Client::new();
    let post = |content_type: Option<&str>| {
        let mut request = http.post(&url).body(initialize_body(1));
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        request
    };

    for token in [None, Some("not-the-token"), Some("")] {
        let mut request = post(Some("application/json"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST");
        assert_eq!(response.status(), 401, "token {token:?}");
        let text = response.text().await.expect("body");
        assert!(
            !text.contains(TOKEN) && !text.contains(&tollgate_stdio::token_sha256(TOKEN)),
            "{text}"
        );
    }
    let basic = post(Some("application/json"))
        .header("Authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .expect("POST");
    assert_eq!(basic.status(), 401);
    let get = http
        .get(&url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 401);
    let delete = http
        .delete(&url)
        .header("Mcp-Session-Id", "x")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(delete.status(), 401);

    for origin in ["http://evil.example", "null", "http://127.0.0.1"] {
        let response = post(Some("application/json"))
            .bearer_auth(TOKEN)
            .header("Origin", origin)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 403, "Origin {origin}");
    }
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{}", served.addr.port()),
        "127.0.0.1:1".to_owned(),
    ] {
        let response = post(Some("application/json"))
            .bearer_auth(TOKEN)
            .header("Host", host.as_str())
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 403, "Host {host}");
    }

    for content_type in [Some("text/plain"), Some("application/jsonp"), None] {
        let response = post(content_type).bearer_auth(TOKEN).send().await.expect("POST");
        assert_eq!(response.status(), 415, "Content-Type {content_type:?}");
    }
    assert_eq!(served.children(), 0, "nothing above reached a child");

    let response = post(Some("application/json; charset=utf-8"))
        .bearer_auth(TOKEN)
        .header("Host", format!("localhost:{}", served.addr.port()))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let mut mcp = Mcp::new(&url, TOKEN);
    mcp.initialize().await;
    let result = mcp.call("echo", json!({"said": "hi"})).await;
    assert_eq!(support::text(&result), r#"{"said": "hi"}"#, "{result}");
    assert_eq!(served.children(), 2);
}

/// `tollgate up` with a `command` upstream, started here so that the bridge's address (which
/// it prints) can be read besides the edge's.
struct Up {
    child: Child,
    edge: String,
    bridge: String,
    log: PathBuf,
}

impl Up {
    fn start(tag: &str, extra: &str) -> Up {
        let dir = support::temp_dir(tag);
        let log = dir.join("children.log");
        let policy = r#"{"version": "1", "default": "allow"}"#;
        // Not pinned: pinning's own session would start a child too, and these tests count the
        // children agents' sessions start.
        let config = write_config(&dir, "http://replaced", &[], policy, "pinning = \"off\"");
        let command = serde_json::to_string(&child_command(&dir)).expect("command as a TOML array");
        let text = std::fs::read_to_string(&config).expect("config");
        let env = format!("env = {{ CHILD_LOG = {} }}", serde_json::to_string(&log).expect("path"));
        let text = text.replace("url = \"http://replaced\"", &format!("command = {command}\n{env}"));
        std::fs::write(&config, format!("{text}\n{extra}\n")).expect("config");

        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["up", "--config", &config.display().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start tollgate up");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let after = |line: &str, marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .map(|s| s.trim_end_matches('/').to_owned())
        };
        let (mut edge, mut bridge) = (None, None);
        while edge.is_none() || bridge.is_none() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                panic!("tollgate up did not print both its edge and its bridge address");
            };
            bridge = bridge.or_else(|| after(&line, "behind a bridge on "));
            edge = edge.or_else(|| after(&line, "listening on "));
        }
        Up {
            child,
            edge: edge.unwrap_or_default(),
            bridge: bridge.unwrap_or_default(),
            log,
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hole 8 through `tollgate up`: the edge names each caller's grant to its bridge
/// (forward_grant), so grant a stops at `[stdio] max_sessions_per_grant` (429, also when it
/// sends a grant header of its own: the edge does not pass it on) while grant b still gets a
/// session.
#[tokio::test]
async fn tollgate_up_gives_each_grant_its_own_stdio_sessions() {
    let up = Up::start("stdio-up-quota", "[stdio]\nmax_sessions_per_grant = 2");
    let endpoint = format!("{}/mcp/k8s", up.edge);
    for _ in 0..2 {
        Mcp::new(&endpoint, KEY_A).initialize().await;
    }
    let mut third = Mcp::new(&endpoint, KEY_A);
    let refused = third
        .request(
            "initialize",
            json!({"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}}),
        )
        .await;
    assert_eq!(refused.status, 429, "{}", refused.message);
    let message = refused.message["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("grant \"a\"") && message.contains("(2)"), "{message}");

    let disguised = reqwest::Client::new()
        .post(&endpoint)
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header(GRANT_HEADER, "b")
        .body(initialize_body(5))
        .send()
        .await
        .expect("POST");
    assert_eq!(disguised.status(), 429, "an agent's own grant header is not believed");

    let mut other = Mcp::new(&endpoint, KEY_B);
    other.initialize().await;
    let result = other.call("echo", json!({"from": "b"})).await;
    assert_eq!(support::text(&result), r#"{"from": "b"}"#, "{result}");
    assert_eq!(children_started(&up.log), 3);
}

/// Hole 9 through `tollgate up`: the loopback bridge it starts serves its edge (which has
/// the per-process token) and nobody else: no or another token gets 401, an Origin or a
/// rebound Host 403.
#[tokio::test]
async fn tollgate_up_bridges_refuse_everyone_but_the_edge() {
    let up = Up::start("stdio-up-guard", "");
    let mut agent = Mcp::new(&format!("{}/mcp/k8s", up.edge), KEY_A);
    agent.initialize().await;
    let result = agent.call("echo", json!({"through": "the edge"})).await;
    assert_eq!(support::text(&result), r#"{"through": "the edge"}"#, "{result}");

    let http = reqwest::Client::new();
    let bridge = up.bridge.clone();
    assert!(bridge.starts_with("http://127.0.0.1:"), "{bridge}");
    for token in [None, Some(KEY_A), Some("tg_demo_key")] {
        let (status, body, _) = initialize(&http, &bridge, token, Some("a")).await;
        assert_eq!(status, 401, "token {token:?}: {body}");
    }
    let origin = http
        .post(&bridge)
        .header("Content-Type", "application/json")
        .header("Origin", "http://evil.example")
        .body(initialize_body(1))
        .send()
        .await
        .expect("POST");
    assert_eq!(origin.status(), 403);
    let port = bridge
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or_default();
    let rebound = http
        .post(&bridge)
        .header("Content-Type", "application/json")
        .header("Host", format!("evil.example:{port}"))
        .body(initialize_body(1))
        .send()
        .await
        .expect("POST");
    assert_eq!(rebound.status(), 403);
    assert_eq!(children_started(&up.log), 1, "only the edge's session started a child");
}
