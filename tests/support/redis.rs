//! Real Redis for tests: a `redis-server` per test on a free loopback port, or a 6-node
//! Redis Cluster (3 primaries, 3 replicas) made with `redis-cli --cluster create`. Killed
//! by PID on drop. A missing `redis-server` fails the test with what to install; it never
//! skips.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn require(binary: &str) {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{binary} is not installed: run scripts/test.sh, which installs Debian's redis-server package"
    );
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port > 0 && port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for redis");
}

/// libfaketime's preload library, which shifts a process's wall clock (Debian's `faketime`).
pub fn libfaketime() -> &'static str {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime is not installed: run scripts/test.sh, which installs Debian's faketime package")
}

/// One `redis-server` process. `DEBUG` is enabled for local connections, so a test can
/// make it slow (`DEBUG SLEEP`).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    tls: Option<Tls>,
    /// Append-only file, fsynced on every write: a SIGKILL loses nothing acknowledged.
    persistent: bool,
}

/// A TLS port beside the plain one (which the harness itself keeps using).
struct Tls {
    port: u16,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    require_client_cert: bool,
}

impl Tls {
    /// TLS settings on a free port.
    fn new(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path, require_client_cert: bool) -> Tls {
        Tls {
            port: free_port(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
            require_client_cert,
        }
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_node(false)
    }

    /// A server that writes every command to its append-only file before answering
    /// (`appendfsync always`), so that [`RedisServer::restart`] after a SIGKILL keeps every
    /// acknowledged counter.
    pub fn start_persistent() -> RedisServer {
        let mut server = RedisServer::start_node(false);
        server.kill();
        server.persistent = true;
        server.spawn();
        server
    }

    /// A server that also listens for TLS (`--tls-port`) with `cert`/`key`; with
    /// `require_client_cert`, TLS clients must present a certificate `ca` signed. Fails
    /// loudly when this `redis-server` was built without TLS.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        require_client_cert: bool,
    ) -> RedisServer {
        RedisServer::start_with(false, Some(Tls::new(cert, key, ca, require_client_cert)))
    }

    /// `rediss://127.0.0.1:TLS_PORT` of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("started with start_tls");
        format!("rediss://127.0.0.1:{}", tls.port)
    }

    fn start_node(cluster: bool) -> RedisServer {
        RedisServer::start_with(cluster, None)
    }

    fn start_with(cluster: bool, tls: Option<Tls>) -> RedisServer {
        require("redis-server");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tollgate-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            cluster,
            tls,
            persistent: false,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if self.persistent { "yes" } else { "no" },
                "--appendfsync",
                "always",
                "--enable-debug-command",
                "local",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(tls) = &self.tls {
            command
                .args(["--tls-port", &tls.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", if tls.require_client_cert { "yes" } else { "no" }])
                .arg("--logfile")
                .arg(self.dir.join("redis.log"));
            if self.cluster {
                // The bus and replication over TLS too; TLS clients are told TLS ports.
                command.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
        }
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                // A replica may always take over from a failed master: with the default (10)
                // a replica that had little traffic from its master refuses ("disconnected
                // from master for longer than allowed") and the drills' failover never comes.
                "--cluster-replica-validity-factor",
                "0",
                // Replicas sync at once instead of after the default 5 s pause.
                "--repl-diskless-sync-delay",
                "0",
            ]);
        }
        let mut child = command.spawn().expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!(
                    "redis-server on port {} exited ({status}); a TLS test needs a redis-server built with TLS \
                     (Debian's is):\n{log}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p PORT ARGS…` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// This server as the `[store]` section of a `tollgate.toml`.
    pub fn store_toml(&self) -> String {
        format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n", self.url())
    }

    /// Makes the server unresponsive for `seconds` (`DEBUG SLEEP`): every command sent
    /// meanwhile waits. The command is written on its own connection, which is returned
    /// (the sleep happens whether or not it is kept); 20 ms later the server has read it.
    pub fn sleep(&self, seconds: f64) -> std::net::TcpStream {
        use std::io::Write;
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        let seconds = seconds.to_string();
        let command = format!(
            "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{seconds}\r\n",
            seconds.len()
        );
        conn.write_all(command.as_bytes()).expect("send DEBUG SLEEP");
        std::thread::sleep(Duration::from_millis(20));
        conn
    }

    /// Kills the server (as a crash would: no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: empty, or with its append-only file when persistent.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 6-node Redis Cluster: 3 primaries with one replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_nodes(|| RedisServer::start_node(true))
    }

    /// A cluster whose nodes also serve TLS (clients, bus and replication), with
    /// `cert`/`key` signed by `ca`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> RedisCluster {
        RedisCluster::start_nodes(|| RedisServer::start_with(true, Some(Tls::new(cert, key, ca, false))))
    }

    /// The nodes' `rediss://` URLs (clusters made with [`RedisCluster::start_tls`]).
    pub fn tls_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::tls_url).collect()
    }

    fn start_nodes(start: impl Fn() -> RedisServer) -> RedisCluster {
        require("redis-cli");
        let nodes: Vec<RedisServer> = (0..6).map(|_| start()).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Every replica has finished its first sync: before that, a master's failure would
        // lose everything it held, which says nothing about a cluster in steady state.
        for node in &nodes {
            loop {
                let replication = node.cli(&["INFO", "replication"]);
                if replication.contains("role:master") || replication.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica did not sync: {replication}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// This cluster as the `[store]` section of a `tollgate.toml`.
    pub fn store_toml(&self) -> String {
        format!("\n[store]\nkind = \"redis\"\ncluster = {:?}\n", self.urls())
    }

    /// `SCRIPT FLUSH` on every node, as after a failover to a fresh replica.
    pub fn flush_scripts(&self) {
        for node in &self.nodes {
            node.cli(&["SCRIPT", "FLUSH"]);
        }
    }
}

/// A Redis Sentinel (`redis-server CONF --sentinel`) monitoring the master on `master_port`
/// under `name`: the master is down after 1 s without an answer, and a failover may start
/// when `quorum` sentinels agree.
pub struct Sentinel {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Sentinel {
    pub fn start(master_port: u16, name: &str, quorum: u32) -> Sentinel {
        require("redis-server");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tollgate-sentinel-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create sentinel dir");
        // A sentinel rewrites its configuration file as it learns the topology.
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 2\n",
                dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let sentinel = Sentinel {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sentinel.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "the sentinel on port {port} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

/// Runs `redis-cli -p PORT ARGS…` and returns its output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
