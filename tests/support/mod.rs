//! Test harness: starts real `tollgate` processes on free loopback ports, waits until each
//! prints its listening address, and kills them by PID when dropped. Also a minimal MCP
//! client over real HTTP that understands JSON and SSE answers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub mod everything;
pub mod hostile;
pub mod jwt;
pub mod pki;
pub mod redis;

pub const KEY_A: &str = "key-for-grant-a";
pub const KEY_B: &str = "key-for-grant-b";

/// A running `tollgate` subcommand.
pub struct Proc {
    child: Child,
    pub addr: String,
    /// `http` or `https`.
    pub scheme: String,
    pub name: String,
    /// The `/metrics` URL from the ready line, for processes that print one there.
    pub metrics_url: Option<String>,
    /// The operators' API (`http://ADDR`), for processes that serve one.
    pub admin_url: Option<String>,
}

impl Proc {
    /// Starts `tollgate ARGS…` and waits for its "listening on http(s)://ADDR" line.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::start_until(name, args, env, "listening on ")
    }

    /// Like [`Proc::start`], waiting for the listening line that also contains `marker`.
    pub fn start_until(name: &str, args: &[&str], env: &[(&str, &str)], marker: &str) -> Proc {
        Proc::start_with(name, args, env, marker, Stdio::inherit())
    }

    /// Like [`Proc::start`], its log (stderr) written to `log`.
    pub fn start_logging(name: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        Proc::start_with(name, args, env, "listening on ", Stdio::from(file))
    }

    fn start_with(name: &str, args: &[&str], env: &[(&str, &str)], marker: &str, stderr: Stdio) -> Proc {
        let marker = marker.to_owned();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tollgate {args:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut admin = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("operators' API on ").nth(1) {
                    admin = rest.split("/admin").next().map(str::to_owned);
                }
                if !line.contains(&marker) {
                    continue;
                }
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some((scheme, rest)) = rest.split_once("://")
                {
                    let addr = rest.split(['/', ' ']).next().unwrap_or_default().to_owned();
                    let scheme = scheme.rsplit(' ').next().unwrap_or(scheme).to_owned();
                    let metrics = line
                        .split("metrics: ")
                        .nth(1)
                        .map(|m| m.trim_end_matches(')').to_owned());
                    let _ = tx.send((scheme, addr, metrics, admin.clone()));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((scheme, addr, metrics_url, admin_url)) => Proc {
                child,
                scheme,
                addr,
                name: name.to_owned(),
                metrics_url,
                admin_url,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("{name} (tollgate {args:?}) did not report a listening address; exit status {status:?}");
            }
        }
    }

    /// `scheme://host:port` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (killed, crashed or panicked).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for tollgate")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tollgate ARGS…` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A fresh directory for one test's files.
/// A program of the test virtualenv `target/py` (which `scripts/test.sh` installs), by
/// absolute path; not canonicalized: the virtualenv's python is a symlink that must stay one.
pub fn venv(program: &str) -> String {
    let path = std::env::current_dir()
        .expect("cwd")
        .join("target/py/bin")
        .join(program);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which installs tests/interop/requirements.txt into target/py",
        path.display()
    );
    path.display().to_string()
}

/// An address on loopback where connections are refused for as long as the returned socket
/// lives: the socket holds the port (bound, never listening), so no other process of a
/// parallel test can take it and answer instead.
pub fn refusing_address() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = socket.local_addr().expect("address");
    (socket, addr)
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The seed policy with a short window, so tests can watch it slide.
pub fn seed_policy(window: &str) -> String {
    format!(
        r#"{{
  "version": "1",
  "default": "deny",
  "tools": {{
    "k8s_rollout_pause": {{
      "limits": [
        {{ "counter": "k8s_rollout_pause_rate", "window": "{window}", "max": 10, "scope": "grant" }}
      ]
    }}
  }}
}}"#
    )
}

/// Writes `tollgate.toml` + `policy.json` into `dir`: one upstream `k8s`, grants `a` and `b`.
/// `extra` is appended to the `[edge]` section.
pub fn write_config(
    dir: &Path,
    upstream_url: &str,
    decision_urls: &[String],
    policy: &str,
    extra_edge: &str,
) -> PathBuf {
    std::fs::write(dir.join("policy.json"), policy).expect("write policy");
    let decision = decision_urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        r#"[edge]
listen = "127.0.0.1:0"
decision = [{decision}]
{extra_edge}

[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
reload_interval_ms = 100

[[upstreams]]
name = "k8s"
url = "{upstream_url}"

[[grants]]
name = "a"
agent = "agent-a"
key_sha256 = "{}"

[[grants]]
name = "b"
key_sha256 = "{}"
"#,
        sha256_hex(KEY_A),
        sha256_hex(KEY_B)
    );
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// Starts a `tollgate decision` serving `policy`, configured from `dir` (whose
/// `tollgate.toml` is then free to be rewritten for the edges).
pub fn start_decision(dir: &Path, upstream_url: &str, policy: &str) -> Proc {
    let config = write_config(dir, upstream_url, &[], policy, "");
    Proc::start("decision", &["decision", "--config", config.to_str().unwrap()], &[])
}

/// A split deployment on loopback: the demo upstream, decision replicas and edges.
pub struct Deployment {
    /// The edges' `/mcp/k8s` URLs.
    pub edges: Vec<String>,
    /// The demo upstream's own MCP URL.
    pub upstream: String,
    /// The decision replicas' operators' APIs (`http://ADDR`).
    pub admins: Vec<String>,
    procs: Vec<Proc>,
}

impl Deployment {
    /// Starts the demo upstream, `replicas` decision services with `store` (a `[store]`
    /// section) and `edges` edges listing every replica, all serving `policy`.
    pub fn start(tag: &str, policy: &str, store: &str, replicas: usize, edges: usize) -> Deployment {
        let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
        let dir = temp_dir(tag);
        let mut procs = Vec::new();
        let mut decision_urls = Vec::new();
        let mut admins = Vec::new();
        for i in 0..replicas {
            let config = write_config(&dir, &upstream.url("/mcp"), &[], policy, "");
            append(&config, store);
            let decision = Proc::start(
                &format!("decision-{i}"),
                &["decision", "--config", config.to_str().unwrap()],
                &[],
            );
            decision_urls.push(decision.url(""));
            admins.extend(decision.admin_url.clone());
            procs.push(decision);
        }
        let config = write_config(
            &dir,
            &upstream.url("/mcp"),
            &decision_urls,
            policy,
            "decision_timeout_ms = 5000\nhold_keepalive_ms = 300",
        );
        let mut edge_urls = Vec::new();
        for i in 0..edges {
            let edge = Proc::start(
                &format!("edge-{i}"),
                &["edge", "--config", config.to_str().unwrap()],
                &[],
            );
            edge_urls.push(edge.url("/mcp/k8s"));
            procs.push(edge);
        }
        let upstream_url = upstream.url("/mcp");
        procs.push(upstream);
        Deployment {
            edges: edge_urls,
            upstream: upstream_url,
            admins,
            procs,
        }
    }

    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    /// The names of the processes that are no longer running.
    pub fn exited(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| p.exited().then(|| p.name.clone()))
            .collect()
    }

    /// The process named `name` (`demo-upstream`, `decision-0`, `edge-1`, …).
    pub fn process(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// SIGKILLs decision replica `i` (replicas are started first, in order).
    pub fn kill_decision(&mut self, i: usize) {
        assert!(i < self.admins.len(), "no decision replica {i}");
        self.procs[i].kill();
    }
}

/// Appends `text` (e.g. a `[store]` or `[telemetry]` section) to a config file.
pub fn append(path: &Path, text: &str) {
    let mut config = std::fs::read_to_string(path).expect("read config");
    config.push_str(text);
    std::fs::write(path, config).expect("write config");
}

/// A minimal MCP client: JSON-RPC over Streamable HTTP, accepting JSON or SSE answers.
pub struct Mcp {
    http: reqwest::Client,
    pub endpoint: String,
    pub key: String,
    pub session: Option<String>,
    /// Sent as the W3C `traceparent` header when set.
    pub traceparent: Option<String>,
    next_id: u64,
}

/// One HTTP exchange: status, headers and the JSON-RPC message that answered our id.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub content_type: String,
    pub message: Value,
}

impl Mcp {
    pub fn new(endpoint: &str, key: &str) -> Mcp {
        Mcp {
            http: reqwest::Client::new(),
            endpoint: endpoint.to_owned(),
            key: key.to_owned(),
            session: None,
            traceparent: None,
            next_id: 1,
        }
    }

    /// A client that uses `http` (e.g. one that trusts a test CA).
    pub fn with_client(endpoint: &str, key: &str, http: reqwest::Client) -> Mcp {
        Mcp {
            http,
            ..Mcp::new(endpoint, key)
        }
    }

    /// The same session through another edge.
    pub fn via(&self, endpoint: &str) -> Mcp {
        Mcp {
            endpoint: endpoint.to_owned(),
            session: self.session.clone(),
            key: self.key.clone(),
            http: self.http.clone(),
            traceparent: self.traceparent.clone(),
            next_id: self.next_id + 1000,
        }
    }

    pub async fn post(&self, body: &Value) -> Answer {
        let mut request = self
            .http
            .post(&self.endpoint)
            .bearer_auth(&self.key)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .body(body.to_string());
        if let Some(s) = &self.session {
            request = request.header("Mcp-Session-Id", s);
        }
        if let Some(tp) = &self.traceparent {
            request = request.header("traceparent", tp);
        }
        let response = request.send().await.expect("HTTP request to the edge");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await.expect("response body");
        let message = if content_type.starts_with("text/event-stream") {
            let id = body.get("id").cloned().unwrap_or(Value::Null);
            sse_messages(&text)
                .into_iter()
                .find(|m| m.get("id") == Some(&id))
                .unwrap_or_else(|| panic!("no answer for id {id} in SSE stream:\n{text}"))
        } else if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"))
        };
        Answer {
            status,
            headers,
            content_type,
            message,
        }
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Answer {
        self.next_id += 1;
        self.post(&json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}))
            .await
    }

    pub async fn initialize(&mut self) -> Answer {
        let params = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "tollgate-tests", "version": "1"}});
        let answer = self.request("initialize", params).await;
        assert_eq!(answer.status, 200, "initialize: {}", answer.message);
        self.session = answer
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let note = self
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(note.status, 202, "notifications/initialized is accepted");
        answer
    }

    pub async fn tool_names(&mut self) -> Vec<String> {
        let answer = self.request("tools/list", json!({})).await;
        let tools = answer
            .message
            .pointer("/result/tools")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("tools/list result: {}", answer.message));
        tools
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    /// `tools/call`; returns the JSON-RPC `result` (or the whole message on an error).
    pub async fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let answer = self
            .request("tools/call", json!({"name": tool, "arguments": arguments}))
            .await;
        assert_eq!(answer.status, 200, "tools/call {tool}: {}", answer.message);
        answer.message.get("result").cloned().unwrap_or(answer.message)
    }
}

/// Runs a client program (an SDK client script) and parses the JSON it prints; fails the
/// test, naming scripts/test.sh, when it cannot run or fails.
/// The body of a GET of `url` (a `/metrics` page, a status page) as text.
pub async fn get_text(url: &str) -> String {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: the body: {e}"))
}

pub fn run_json(program: &str, args: &[&str]) -> Value {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): run scripts/test.sh, which installs it"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{program} printed no JSON ({e}): {stdout}"))
}

/// The JSON messages in an SSE body.
pub fn sse_messages(text: &str) -> Vec<Value> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty())
                .then(|| serde_json::from_str(&data.join("\n")).ok())
                .flatten()
        })
        .collect()
}

/// Whether a `tools/call` result is a Tollgate refusal, and its decision details.
pub fn refusal(result: &Value) -> Option<&Value> {
    (result.get("isError") == Some(&Value::Bool(true)))
        .then(|| result.pointer("/_meta/tollgate~1decision"))
        .flatten()
}

pub fn text(result: &Value) -> String {
    result
        .pointer("/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The test virtualenv's Python (`target/py`, made by `scripts/test.sh` with the MCP SDK).
pub fn python() -> std::path::PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    assert!(
        python.exists(),
        "the MCP Python SDK is not installed: run scripts/test.sh (it makes target/py)"
    );
    python
}

/// A Python MCP server of `tests/interop/` (killed when dropped).
pub struct PythonUpstream(Child);

impl Drop for PythonUpstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tests/interop/{script}` on a free port (the script binds port 0 and prints the
/// port it got); its `/mcp` URL once it accepts connections.
pub fn python_upstream(script: &str) -> (PythonUpstream, String) {
    let mut child = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop").join(script))
        .arg("0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the Python upstream {script} did not print its port: {line:?}"));
    let upstream = PythonUpstream(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the Python upstream {script} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (upstream, format!("http://127.0.0.1:{port}/mcp"))
}

/// A client that follows no redirects and keeps no cookies: each request shows exactly what
/// the server answered (the console's tests).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in to the console at `admin` with the operator key `key`: the session cookie
/// (`tg_console=…`).
pub async fn console_sign_in(admin: &str, key: &str) -> String {
    let answer = no_redirects()
        .post(format!("{admin}/console/login"))
        .form(&[("key", key)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(answer.status(), reqwest::StatusCode::SEE_OTHER, "signing in");
    let cookie = answer
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    cookie.split(';').next().unwrap_or_default().to_owned()
}

/// The console page at `url` with the session `cookie`, once it answers 200.
pub async fn console_page(url: &str, cookie: &str) -> String {
    let answer = no_redirects()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), reqwest::StatusCode::OK, "{url}");
    answer.text().await.unwrap_or_default()
}
