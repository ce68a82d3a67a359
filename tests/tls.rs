//! TLS on every hop, with certificates made in the test: an https upstream reached through
//! the gateway (with its CA, and with a client certificate when it asks for one), clear
//! errors for a certificate the gateway does not trust, and the edge serving agents over
//! https with a certificate that is replaced on disk while it runs.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::pki::Ca;
use support::{KEY_A, Mcp, Proc, refusal, seed_policy, text, write_config};

fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read CA");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA certificate"))
        .build()
        .expect("client")
}

/// Adds `lines` to the `[[upstreams]]` entry of a config written by `write_config`.
fn upstream_settings(config: &Path, lines: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let text = text.replacen("\n[[grants]]", &format!("{lines}\n\n[[grants]]"), 1);
    std::fs::write(config, text).expect("write config");
}

/// The demo MCP server over https with `server`'s certificate; with `client_ca`, it asks
/// clients for a certificate that CA signed.
fn https_upstream(server: &support::pki::Leaf, client_ca: Option<&Path>) -> Proc {
    let mut args = vec![
        "demo-upstream".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        server.cert.display().to_string(),
        "--tls-key".into(),
        server.key.display().to_string(),
    ];
    if let Some(ca) = client_ca {
        args.extend(["--tls-client-ca".to_owned(), ca.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start("demo-upstream", &args, &[])
}

fn toml_path(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

#[tokio::test]
async fn https_upstreams_are_reached_with_their_ca_and_refused_without_it() {
    let dir = support::temp_dir("tls-upstream");
    let ca = Ca::new(&dir, "upstream");
    let server = ca.server("upstream");
    let upstream = https_upstream(&server, None);
    assert_eq!(upstream.scheme, "https");
    let url = upstream.url("/mcp");

    // Trusted through ca_file: the call goes through and the upstream answers.
    let trusted = support::temp_dir("tls-upstream-trusted");
    let config = write_config(&trusted, &url, &[], &seed_policy("minute"), "");
    upstream_settings(&config, &format!("ca_file = {}", toml_path(&ca.pem)));
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let paused = agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    assert!(refusal(&paused).is_none(), "{paused}");
    assert!(
        text(&paused).contains("api"),
        "the upstream's answer over https: {paused}"
    );
    drop(up);

    // Another CA: nothing is forwarded, and the agent is told it was TLS, naming the
    // upstream (the operator's log has the certificate error itself).
    let other = support::temp_dir("tls-upstream-other");
    let wrong = Ca::new(&other, "other");
    let config = write_config(&other, &url, &[], &seed_policy("minute"), "");
    upstream_settings(&config, &format!("ca_file = {}", toml_path(&wrong.pem)));
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    let answer = agent
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(answer.status, 502, "{}", answer.message);
    let message = answer.message["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"k8s\"") && message.contains("TLS"),
        "the agent learns which upstream and that TLS failed: {message}"
    );
    let metrics = support::get_text(&up.url("/metrics")).await;
    assert!(
        metrics.contains("tollgate_upstream_errors_total{upstream=\"k8s\",kind=\"tls\"}"),
        "{metrics}"
    );

    // A config that cannot work is refused at start, naming the file.
    let broken = support::temp_dir("tls-upstream-broken");
    let config = write_config(&broken, &url, &[], &seed_policy("minute"), "");
    upstream_settings(&config, "ca_file = \"missing-ca.pem\"");
    let (code, _, stderr) = support::run(&["up", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("upstream \"k8s\"") && stderr.contains("missing-ca.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_upstream_that_wants_a_client_certificate_gets_the_configured_one() {
    let dir = support::temp_dir("tls-mtls-upstream");
    let ca = Ca::new(&dir, "mesh");
    let server = ca.server("upstream");
    let client = ca.issue("gateway", &["tollgate-gateway"]);
    let upstream = https_upstream(&server, Some(&ca.pem));
    let url = upstream.url("/mcp");
    let config = write_config(&dir, &url, &[], &seed_policy("minute"), "");
    upstream_settings(&config, &format!("ca_file = {}", toml_path(&ca.pem)));
    let without = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let refused = Mcp::new(&without.url("/mcp/k8s"), KEY_A)
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .await;
    assert_eq!(
        refused.status, 502,
        "no client certificate, no connection: {}",
        refused.message
    );
    drop(without);

    upstream_settings(
        &config,
        &format!(
            "client_cert = {}\nclient_key = {}",
            toml_path(&client.cert),
            toml_path(&client.key)
        ),
    );
    let with = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&with.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let listed = agent.tool_names().await;
    assert!(listed.contains(&"k8s_rollout_pause".to_owned()), "{listed:?}");
}

/// POSTs the demo upstream at `upstream` received per HTTP version.
async fn upstream_versions(upstream: &Proc) -> serde_json::Value {
    let stats: serde_json::Value = https_or_plain_client()
        .get(upstream.url("/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    stats["http_versions"].clone()
}

fn https_or_plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client")
}

/// Calls the upstream through a fresh `tollgate up` whose `[[upstreams]]` entry gets `lines`,
/// and returns the POSTs the upstream received per HTTP version afterwards.
async fn call_through(dir: &Path, upstream: &Proc, lines: &str) -> serde_json::Value {
    let config = write_config(dir, &upstream.url("/mcp"), &[], &seed_policy("minute"), "");
    upstream_settings(&config, lines);
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let paused = agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    assert!(refusal(&paused).is_none() && text(&paused).contains("api"), "{paused}");
    upstream_versions(upstream).await
}

#[tokio::test]
async fn upstreams_are_reached_over_http2_when_they_offer_it_or_are_told_to() {
    // Cleartext: HTTP/1.1 unless the upstream is configured for HTTP/2 (prior knowledge).
    let plain = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("http2-plain");
    let seen = call_through(&dir, &plain, "").await;
    assert!(
        seen["HTTP/1.1"].as_u64() >= Some(2) && seen["HTTP/2"].is_null(),
        "{seen}"
    );
    let seen = call_through(&dir, &plain, "http = \"http2\"").await;
    assert!(seen["HTTP/2"].as_u64() >= Some(2), "h2c with http = \"http2\": {seen}");

    // TLS: `auto` (the default) takes HTTP/2 when the server offers it by ALPN; `http1`
    // keeps HTTP/1.1.
    let dir = support::temp_dir("http2-tls");
    let ca = Ca::new(&dir, "upstream");
    let server = ca.server("upstream");
    let tls = https_upstream(&server, None);
    let ca_file = format!("ca_file = {}", toml_path(&ca.pem));
    let seen = call_through(&dir, &tls, &ca_file).await;
    assert!(
        seen["HTTP/2"].as_u64() >= Some(2) && seen["HTTP/1.1"].is_null(),
        "ALPN h2: {seen}"
    );
    let seen = call_through(&dir, &tls, &format!("{ca_file}\nhttp = \"http1\"")).await;
    assert!(seen["HTTP/1.1"].as_u64() >= Some(2), "http = \"http1\": {seen}");

    // An unknown value is refused at start, naming the setting.
    let config = write_config(&dir, &plain.url("/mcp"), &[], &seed_policy("minute"), "");
    upstream_settings(&config, "http = \"http3\"");
    let (code, _, stderr) = support::run(&["up", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("http3") && stderr.contains("http2"), "{stderr}");
}

#[tokio::test]
async fn the_edge_serves_https_and_picks_up_a_replaced_certificate() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("tls-edge");
    let ca = Ca::new(&dir, "edge");
    let first = ca.server("edge-first");
    let (cert, key) = (dir.join("edge.crt"), dir.join("edge.key"));
    std::fs::copy(&first.cert, &cert).expect("copy");
    std::fs::copy(&first.key, &key).expect("copy");
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &[],
        &seed_policy("minute"),
        "tls_cert = \"edge.crt\"\ntls_key = \"edge.key\"",
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(up.scheme, "https", "the edge says it serves https");
    let endpoint = up.url("/mcp/k8s");
    let mut agent = Mcp::with_client(&endpoint, KEY_A, https_client(&ca.pem));
    agent.initialize().await;
    let paused = agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    assert!(refusal(&paused).is_none(), "{paused}");
    assert_eq!(served_certificate(&up.addr, &ca.pem).await, first.der);

    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .post(endpoint.replace("https://", "http://"))
        .body("{}")
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // cert-manager style rotation: new files in place; the next connection gets them.
    let second = ca.server("edge-second");
    std::fs::copy(&second.cert, &cert).expect("copy");
    std::fs::copy(&second.key, &key).expect("copy");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(served_certificate(&up.addr, &ca.pem).await, second.der);
    let mut again = Mcp::with_client(&endpoint, KEY_A, https_client(&ca.pem));
    again.initialize().await;
}

/// The leaf certificate a TLS server at `addr` presents, checked against `ca`.
async fn served_certificate(addr: &str, ca: &Path) -> Vec<u8> {
    let config = tollgate_tls::client_config(Some(ca), None, &[b"http/1.1"]).expect("client config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Edge ↔ decision over mutual TLS: an edge with a client certificate the decision service's
/// CA signed is served; one without is refused (and fails closed), and so is a direct gRPC
/// caller without one.
#[tokio::test]
async fn the_decision_service_serves_only_edges_with_a_client_certificate() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("tls-mtls-decision");
    let ca = Ca::new(&dir, "cluster");
    let server = ca.server("decision");
    let edge_cert = ca.issue("edge", &["tollgate-edge"]);
    let config = write_config(&dir, &upstream.url("/mcp"), &[], &seed_policy("minute"), "");
    let text = std::fs::read_to_string(&config).expect("read");
    let text = text.replacen(
        "reload_interval_ms = 100\n",
        &format!(
            "reload_interval_ms = 100\ntls_cert = {}\ntls_key = {}\ntls_client_ca = {}\n",
            toml_path(&server.cert),
            toml_path(&server.key),
            toml_path(&ca.pem)
        ),
        1,
    );
    std::fs::write(&config, text).expect("write");
    let decision = Proc::start("decision", &["decision", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(decision.scheme, "https");

    let edge_config = |tag: &str, extra: String| {
        let dir = support::temp_dir(tag);
        write_config(
            &dir,
            &upstream.url("/mcp"),
            &[decision.url("")],
            &seed_policy("minute"),
            &extra,
        )
    };
    let member = edge_config(
        "tls-mtls-edge",
        format!(
            "decision_ca_file = {}\ndecision_client_cert = {}\ndecision_client_key = {}",
            toml_path(&ca.pem),
            toml_path(&edge_cert.cert),
            toml_path(&edge_cert.key)
        ),
    );
    let edge = Proc::start("edge", &["edge", "--config", member.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&edge.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let paused = agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    assert!(refusal(&paused).is_none(), "decided over mutual TLS: {paused}");

    let stranger = edge_config(
        "tls-mtls-stranger",
        format!("decision_ca_file = {}", toml_path(&ca.pem)),
    );
    let edge = Proc::start("edge", &["edge", "--config", stranger.to_str().unwrap()], &[]);
    let mut agent = Mcp::new(&edge.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let refused = agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    let details = refusal(&refused).unwrap_or_else(|| panic!("no client certificate, no decision: {refused}"));
    assert_eq!(details["verdict"], "DENY", "{refused}");

    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(
        std::fs::read(&ca.pem).expect("read"),
    ));
    let direct = tollgate_decision::GrpcDecider::new(&[decision.url("")], Duration::from_secs(2), None, Some(tls))
        .expect("client");
    let answer = tollgate_decision::Decider::decide(
        &direct,
        tollgate_decision::proto::DecideRequest {
            tool: "k8s_rollout_pause".into(),
            grant: "a".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        answer.is_err(),
        "a caller without a client certificate is not served: {answer:?}"
    );
}
