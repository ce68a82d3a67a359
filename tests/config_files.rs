//! Issue 26, items 2 and 3: every file a configuration names is relative to the config
//! file, whatever the working directory; and every list setting can come from the
//! environment, comma-separated.

mod support;

use std::process::Command;

use support::jwt::{ISSUER, es256};

fn check(config: &std::path::Path, role: &str, cwd: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--role", role, "--config", config.to_str().expect("path")])
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .expect("tollgate check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A config whose files (policy, JWKS, TLS certificate and key) sit next to it, named by
/// relative paths, checked from another working directory.
#[test]
fn every_path_is_relative_to_the_config_file() {
    let dir = support::temp_dir("config-paths");
    let conf = dir.join("conf");
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&conf).expect("conf");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    let key = es256("k1");
    std::fs::write(
        conf.join("jwks.json"),
        serde_json::json!({"keys": [key.jwk]}).to_string(),
    )
    .expect("jwks");
    std::fs::write(conf.join("policy.json"), r#"{"version": "1", "default": "deny"}"#).expect("policy");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(conf.join("edge.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(conf.join("edge.key"), cert.signing_key.serialize_pem()).expect("key");
    std::fs::write(conf.join("ca.pem"), cert.cert.pem()).expect("ca");
    let config = conf.join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[edge]
listen = "127.0.0.1:0"
tls_cert = "edge.pem"
tls_key = "edge.key"
decision = ["https://127.0.0.1:50051"]
decision_ca_file = "ca.pem"

[decision]
policy = "policy.json"
tls_cert = "edge.pem"
tls_key = "edge.key"

[[upstreams]]
name = "k8s"
url = "https://127.0.0.1:9/mcp"
ca_file = "ca.pem"

[[grants]]
name = "a"
key_sha256 = "{}"

[[identity.jwt]]
issuer = "{ISSUER}"
audiences = ["tollgate"]
jwks_file = "jwks.json"
grant = "a"
"#,
            support::sha256_hex("k")
        ),
    )
    .expect("config");
    for role in ["edge", "decision", "up"] {
        let (ok, out) = check(&config, role, &elsewhere, &[]);
        assert!(ok, "--role {role} from another folder:\n{out}");
    }
}

/// Every list setting from the environment, comma-separated, on any working directory.
#[test]
fn every_list_setting_can_come_from_the_environment() {
    let dir = support::temp_dir("config-lists");
    std::fs::write(dir.join("policy.json"), r#"{"version": "1", "default": "deny"}"#).expect("policy");
    let config = dir.join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[edge]\nlisten = \"127.0.0.1:0\"\n\n[decision]\npolicy = \"policy.json\"\n\n[[upstreams]]\nname = \"k8s\"\n\
             url = \"http://127.0.0.1:9/mcp\"\n\n[[grants]]\nname = \"a\"\nkey_sha256 = \"{}\"\n",
            support::sha256_hex("k")
        ),
    )
    .expect("config");
    let session_keys = format!("{},{}", "a".repeat(40), "b".repeat(40));
    let lists = [
        ("TOLLGATE_EDGE__ALLOWED_HOSTS", "mcp.example.com,mcp2.example.com"),
        (
            "TOLLGATE_EDGE__ALLOWED_ORIGINS",
            "https://a.example.com,https://b.example.com",
        ),
        (
            "TOLLGATE_EDGE__DECISION",
            "http://127.0.0.1:50051,http://127.0.0.1:50052",
        ),
        ("TOLLGATE_EDGE__AGGREGATE__SESSION_KEYS", session_keys.as_str()),
        (
            "TOLLGATE_STORE__CLUSTER",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        ),
    ];
    for (name, value) in lists {
        let (ok, out) = check(&config, "edge", &dir, &[(name, value)]);
        assert!(ok, "{name}={value}:\n{out}");
    }
    // A malformed list still names the setting.
    let (ok, out) = check(&config, "edge", &dir, &[("TOLLGATE_EDGE__ALLOWED_HOSTS", "")]);
    assert!(ok || out.contains("allowed_hosts"), "{out}");
}

/// Issue 26, item 4: a stdio server whose program is missing is found by `tollgate check`
/// and at start, naming the server and the program, not by the first agent's call.
#[test]
fn a_missing_stdio_program_is_found_before_the_first_call() {
    let dir = support::temp_dir("config-stdio-program");
    std::fs::write(dir.join("policy.json"), r#"{"version": "1", "default": "deny"}"#).expect("policy");
    let config = dir.join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[edge]\nlisten = \"127.0.0.1:0\"\n\n[decision]\npolicy = \"policy.json\"\nlisten = \"127.0.0.1:0\"\n\
             admin_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"time\"\n\
             command = [\"tollgate-no-such-launcher\", \"mcp-server-time\"]\n\n[[grants]]\nname = \"a\"\nkey_sha256 = \"{}\"\n",
            support::sha256_hex("k")
        ),
    )
    .expect("config");
    let (ok, out) = check(&config, "up", &dir, &[]);
    assert!(!ok, "check passed a missing program:\n{out}");
    assert!(
        out.contains("upstream \"time\"") && out.contains("\"tollgate-no-such-launcher\" was not found on PATH"),
        "{out}"
    );
    let started = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["up", "--config", config.to_str().expect("path")])
        .output()
        .expect("tollgate up");
    assert!(!started.status.success(), "up started with a missing program");
    assert!(String::from_utf8_lossy(&started.stderr).contains("was not found on PATH"));
}
