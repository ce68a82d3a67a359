//! README blocks run as written (issue 26): the "Running with Redis" block, its commands
//! taken from README.md itself (with `tollgate` as the binary under test), on the ports it
//! names, then a tool called through the edge it starts with the demo key.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shell block of README.md that starts two decision replicas on Redis.
fn redis_block() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let blocks: Vec<&str> = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    let block = blocks
        .into_iter()
        .find(|b| b.contains("tollgate decision -c examples/tollgate-redis.toml"))
        .expect("README's Redis block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The README's blocks use the same fixed ports (8080, 9000, …): one at a time.
static PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `sh` block of README.md that contains `marker`, whole.
fn block_with(marker: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("a README block with {marker}"))
        .to_owned()
}

struct Started(Vec<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn the_redis_block_runs_as_written() {
    let _ports = PORTS.lock().await;
    let lines = redis_block();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    // A port of the block can be taken by another test: its ports lie in the ephemeral range,
    // so an outgoing connection, or a server another test bound to port 0, can hold one for
    // as long as that test runs. The block is started again, for up to about 40 s. A conflict
    // between the block's own processes fails every time.
    let mut attempt = 0;
    let _started = loop {
        attempt += 1;
        match start_block(&lines) {
            Ok(started) => break started,
            Err(why) if attempt < 10 && why.contains("Address already in use") => {
                eprintln!(
                    "the Redis block lost a port to another process (attempt {attempt}); starting it again:\n{why}"
                );
                std::thread::sleep(Duration::from_secs(4));
            }
            Err(why) => panic!("{why}"),
        }
    };
    // The edge of examples/tollgate-redis.toml, with the demo key.
    let client = reqwest::Client::new();
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "k8s_rollout_pause", "arguments": {"namespace": "web", "name": "api"}}});
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let sent = client
            .post("http://127.0.0.1:8080/mcp/k8s")
            .bearer_auth("tg_demo_key")
            .header("accept", "application/json, text/event-stream")
            .json(&call)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => break response.text().await.expect("body"),
            other if Instant::now() > deadline => panic!("the edge did not answer: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(answer.contains("api"), "{answer}");
    assert!(!answer.contains("\"isError\":true"), "{answer}");
}

/// The quick start (README's first command, with the binary under test for `cargo run --`),
/// then the README's curl blocks as written through `bash`: the call on `/mcp/k8s`, and the
/// `initialize` then call on `/mcp`.
#[tokio::test]
async fn the_quick_start_and_its_curl_blocks_run_as_written() {
    let _ports = PORTS.lock().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let first = readme
        .lines()
        .find(|l| l.starts_with("cargo run -- up"))
        .expect("the quick start command");
    let command = first.split('#').next().unwrap_or_default().trim();
    let args: Vec<&str> = command.split_whitespace().skip(3).collect();
    let mut up = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tollgate up");
    // What `up` prints: the calls to try, run below as printed.
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    if let Some(stdout) = up.stdout.take() {
        let printed = printed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                printed.lock().expect("lines").push(line);
            }
        });
    }
    let _started = Started(vec![up]);
    let bash = |block: &str| {
        let out = Command::new("bash")
            .args(["-c", block])
            .output()
            .expect("bash (and curl) run README blocks");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let per_server = block_with("http://127.0.0.1:8080/mcp/k8s -H");
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let out = bash(&per_server);
        if out.contains("\"result\"") || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        answer.contains("\"result\"") && !answer.contains("\"isError\":true"),
        "{answer}"
    );
    let modern = bash(&block_with("MCP-Protocol-Version: 2026-07-28"));
    assert!(
        modern.contains("\"resultType\":\"complete\"") && modern.contains("paused rollout"),
        "the 2026-07-28 block as written: {modern}"
    );
    // The calls `up --demo` prints (session era, then 2026-07-28) run as printed.
    let calls: Vec<String> = printed
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.trim_start().starts_with("curl -s "))
        .cloned()
        .collect();
    assert_eq!(calls.len(), 2, "two calls to try: {:?}", printed.lock().expect("lines"));
    for call in &calls {
        let out = bash(call);
        assert!(
            out.contains("\"result\"") && out.contains("paused rollout") && !out.contains("\"isError\":true"),
            "{call}\n{out}"
        );
    }
    assert!(calls[1].contains("MCP-Protocol-Version: 2026-07-28"), "{}", calls[1]);
    let aggregated = bash(&block_with("http://127.0.0.1:8080/mcp -H"));
    assert!(
        aggregated.contains("\"result\"") && !aggregated.contains("\"error\""),
        "the /mcp block as written: {aggregated}"
    );
}

/// The TLS walk-through: README's openssl block as written (in a fresh folder), then an edge
/// with the certificate it made, reached over HTTPS by a client that trusts only its CA.
#[tokio::test]
async fn the_tls_walk_through_runs_as_written() {
    let block = block_with("openssl req -x509");
    let dir = std::env::temp_dir().join(format!("tollgate-readme-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let made = Command::new("bash")
        .args(["-c", &block])
        .current_dir(&dir)
        .output()
        .expect("bash and openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    for file in ["ca.pem", "edge.crt", "edge.key"] {
        assert!(dir.join(file).exists(), "the block made {file}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policy.json");
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "[edge]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"edge.crt\"\ntls_key = \"edge.key\"\n\
             allowed_hosts = [\"mcp.example.com\"]\n\n[decision]\npolicy = \"{examples}\"\nlisten = \"127.0.0.1:0\"\n\
             admin_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"k8s\"\n\
             url = \"http://127.0.0.1:9/mcp\"\n\n[[grants]]\nname = \"demo\"\n\
             key_sha256 = \"aa09ab5d6fa2b35c24cecd57e67c61e83903dc652ea05190dded171e1ff0fd43\"\n"
        ),
    )
    .expect("config");
    let up = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["up", "--config", "tollgate.toml"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tollgate up");
    let _started = Started(vec![up]);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).expect("ca")).expect("PEM");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("mcp.example.com", std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
        .expect("client");
    let list = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let sent = client
            .post(format!("https://mcp.example.com:{port}/mcp/k8s"))
            .bearer_auth("tg_demo_key")
            .header("accept", "application/json, text/event-stream")
            .json(&list)
            .send()
            .await;
        match sent {
            Ok(response) => break response.status(),
            Err(e) if Instant::now() > deadline => panic!("no TLS answer: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // An answer came through TLS with the walk-through's certificate, past the Host check;
    // the upstream (absent here) is not the point.
    assert_ne!(
        status,
        reqwest::StatusCode::FORBIDDEN,
        "the Host check refused mcp.example.com"
    );
    assert_ne!(status, reqwest::StatusCode::UNAUTHORIZED);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the README's Redis block, line by line as written; every process but `redis-server`
/// must still run a second later (none lost its address).
fn start_block(lines: &[String]) -> Result<Started, String> {
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let mut started = Started(Vec::new());
    for line in lines {
        let line = line.trim().trim_end_matches('&').trim();
        // `A=1 B=2 program args…`
        let mut words = line.split_whitespace().peekable();
        let mut env = Vec::new();
        while let Some(word) = words.peek() {
            match word.split_once('=') {
                Some((name, value)) if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
                    env.push((name.to_owned(), value.to_owned()));
                    words.next();
                }
                _ => break,
            }
        }
        let program = words.next().expect("a program");
        let program = if program == "tollgate" { bin } else { program };
        let child = Command::new(program)
            .args(words)
            .envs(env)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{line}: {e}"))?;
        started.0.push(child);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every process of the block stays up (none lost its address to another).
    std::thread::sleep(Duration::from_millis(700));
    for (child, line) in started.0.iter_mut().zip(lines).skip(1) {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            return Err(format!("`{line}` exited ({status}):\n{stderr}"));
        }
    }
    Ok(started)
}
