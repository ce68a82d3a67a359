//! `@modelcontextprotocol/server-everything` (npm), the MCP reference test server, started
//! over Streamable HTTP on a free loopback port. Installed into `tests/interop` by
//! `scripts/test.sh`; a test that needs it fails, never skips, when it is missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PACKAGE: &str = "tests/interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js";

/// The command line that runs server-everything over stdio (for `[[upstreams]] command`
/// and `tollgate stdio-bridge`).
pub fn stdio_command() -> Vec<String> {
    let script = std::fs::canonicalize(PACKAGE).unwrap_or_else(|e| panic!("{}", missing(&e)));
    vec!["node".into(), script.display().to_string(), "stdio".into()]
}

fn missing(e: &dyn std::fmt::Display) -> String {
    format!(
        "@modelcontextprotocol/server-everything is not installed ({e}): run scripts/test.sh, or \
         `npm ci --prefix tests/interop`"
    )
}

/// A running server-everything; killed when dropped.
pub struct Everything {
    child: Child,
    pub port: u16,
}

impl Everything {
    /// Starts it over Streamable HTTP and waits until it listens.
    pub fn start_http() -> Everything {
        assert!(Path::new(PACKAGE).is_file(), "{}", missing(&"no dist/index.js"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = Command::new("node")
            .args(["--require", "./tests/interop/loopback.cjs", PACKAGE, "streamableHttp"])
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js 18+ or run scripts/test.sh"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on port") {
                    let _ = tx.send(());
                }
                if std::env::var_os("TOLLGATE_TEST_VERBOSE").is_some() {
                    eprintln!("[server-everything] {line}");
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("server-everything did not start listening on port {port}");
        }
        Everything { child, port }
    }

    /// Its MCP endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
