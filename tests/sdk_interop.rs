//! Interop with the official MCP TypeScript SDK (`@modelcontextprotocol/sdk`): a real
//! third-party client must be able to use Tollgate exactly as it would use the server.
//!
//! Needs `node` and `tests/interop/node_modules`, which `scripts/test.sh` installs. The test
//! fails, never skips, when they are missing.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{KEY_A, Proc, write_config};

fn run_sdk_client(url: &str) -> Value {
    run_sdk_client_as(url, KEY_A, None)
}

/// The SDK client with `bearer` as its credential; `extra_ca` is trusted for https (Node's
/// `NODE_EXTRA_CA_CERTS`).
fn run_sdk_client_as(url: &str, bearer: &str, extra_ca: Option<&std::path::Path>) -> Value {
    let interop = std::path::Path::new("tests/interop");
    assert!(
        interop.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "the MCP TypeScript SDK is not installed: run scripts/test.sh, or `npm ci --prefix tests/interop`"
    );
    let mut node = Command::new("node");
    node.arg(interop.join("sdk_client.mjs")).args([url, bearer]);
    if let Some(ca) = extra_ca {
        node.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let out = node
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js 18+ or run scripts/test.sh"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("SDK client printed no JSON ({e}): {stdout}"))
}

fn check_sdk_view(seen: &Value) {
    assert_eq!(seen["server"]["name"], "tollgate-demo-upstream");
    assert!(
        seen["sessionId"].as_str().is_some_and(|s| !s.is_empty()),
        "session id reached the SDK"
    );
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tools, ["k8s_rollout_pause"]);
    assert_eq!(
        seen["tools"][0]["annotations"]["readOnlyHint"], false,
        "tool definitions pass unchanged"
    );
    let pauses = seen["pauses"].as_array().expect("pauses");
    for (i, p) in pauses.iter().take(10).enumerate() {
        assert_ne!(p["isError"], true, "call {}: {p}", i + 1);
    }
    let limited = &pauses[10];
    assert_eq!(limited["isError"], true, "{limited}");
    assert_eq!(limited["_meta"]["tollgate/decision"]["verdict"], "RATE_LIMITED");
    assert!(
        limited["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("retry in")
    );
    assert_eq!(seen["denied"]["_meta"]["tollgate/decision"]["verdict"], "DENY");
}

#[tokio::test]
async fn typescript_sdk_client_through_tollgate_up() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("sdk-up");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], &support::seed_policy("minute"), "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let url = up.url("/mcp/k8s");
    let seen = tokio::task::spawn_blocking(move || run_sdk_client(&url))
        .await
        .expect("sdk client task");
    check_sdk_view(&seen);
}

#[tokio::test]
async fn typescript_sdk_client_through_an_edge_over_sse() {
    let upstream = Proc::start(
        "demo-upstream",
        &["demo-upstream", "--listen", "127.0.0.1:0", "--sse"],
        &[],
    );
    let dir = support::temp_dir("sdk-edge");
    let decision = support::start_decision(&dir, &upstream.url("/mcp"), &support::seed_policy("minute"));
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &[decision.url("")],
        &support::seed_policy("minute"),
        "",
    );
    let edge = Proc::start("edge", &["edge", "--config", config.to_str().unwrap()], &[]);
    let url = edge.url("/mcp/k8s");
    let seen = tokio::task::spawn_blocking(move || run_sdk_client(&url))
        .await
        .expect("sdk client task");
    check_sdk_view(&seen);
}

/// The SDK client, holding a JWT access token instead of a static key, through an edge that
/// serves https with a certificate from a private CA.
#[tokio::test]
async fn typescript_sdk_client_with_a_bearer_token_through_an_https_edge() {
    use support::jwt::{Jwks, claims, es256, identity_section, sign};
    let key = es256("sdk-key");
    let jwks = Jwks::start(vec![key.jwk.clone()]).await;
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("sdk-https-jwt");
    let ca = support::pki::Ca::new(&dir, "edge");
    let cert = ca.server("edge");
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &[],
        &support::seed_policy("minute"),
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.cert.display(),
            cert.key.display()
        ),
    );
    support::append(&config, &identity_section(&jwks.url));
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(up.scheme, "https");
    let url = up.url("/mcp/k8s").replace("127.0.0.1", "localhost");
    let token = sign(&key, &claims());
    let ca_file = ca.pem.clone();
    let seen = tokio::task::spawn_blocking(move || run_sdk_client_as(&url, &token, Some(&ca_file)))
        .await
        .expect("sdk client task");
    check_sdk_view(&seen);
}
