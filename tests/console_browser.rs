//! The operators' console in a real headless Chromium (Debian's `chromium` package, driven
//! by puppeteer-core from npm; `scripts/test.sh` installs both), with agents on the official
//! MCP TypeScript SDK: sign in, a held call appearing in the queue within a second, approve
//! and deny from the page reaching the SDK client, live decisions and filters, the explain
//! form against the CLI, CSRF refusal, sign-out, and agents' markup rendered inert. The
//! steps are in `tests/interop/console_browser.mjs`; its screenshots land in
//! `target/screenshots/` (the README's come from there). A second test
//! (`tests/interop/console_sessions.mjs`) follows sessions across restarts of a replica on
//! Redis: signed out stays signed out, a rotated key ends its sessions, and bidirectional
//! controls in arguments show as marked code points.

mod support;

use std::process::Command;

use support::{KEY_A, Proc, run, sha256_hex, write_config};

const OPERATOR_KEY: &str = "tg_operator_alice_key";

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "1m", "max": 10, "scope": "grant" }] },
    "k8s_scale": {
      "action": "require_approval",
      "approval": { "timeout": "5m", "hold": "45s" },
      "limits": [{ "counter": "scale", "window": "1h", "max": 5, "scope": "grant" }]
    }
  }
}"#;

const CANDIDATE: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "1m", "max": 10, "scope": "grant" }] },
    "k8s_scale": { "action": "deny", "reason": "scaling moves to the change process" }
  }
}"#;

#[test]
fn the_console_works_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run scripts/test.sh (it installs Debian's chromium) or set CHROMIUM"
    );
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        interop.join("node_modules/puppeteer-core").is_dir(),
        "puppeteer-core is not installed: run scripts/test.sh (npm ci --prefix tests/interop)"
    );

    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("console-browser");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "hold_keepalive_ms = 500");
    support::append(
        &config,
        &format!(
            "\n[[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
            sha256_hex(OPERATOR_KEY)
        ),
    );
    // A candidate that denies k8s_scale: the Candidate policy page lists those calls.
    let candidate = dir.join("candidate.json");
    std::fs::write(&candidate, CANDIDATE).expect("write the candidate");
    let up = Proc::start(
        "up",
        &["up", "--config", config.to_str().unwrap()],
        &[("TOLLGATE_DECISION__SHADOW_POLICY", candidate.to_str().unwrap())],
    );
    let admin = up.admin_url.clone().expect("the admin listener");

    let (code, explained, stderr) = run(&[
        "policy",
        "explain",
        dir.join("policy.json").to_str().unwrap(),
        "--tool",
        "k8s_scale",
        "--grant",
        "a",
        "--server",
        "k8s",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let explain_file = dir.join("explain.txt");
    std::fs::write(&explain_file, explained).expect("write explain");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let output = Command::new("node")
        .arg(interop.join("console_browser.mjs"))
        .args([
            admin.as_str(),
            &up.url("/mcp/k8s"),
            KEY_A,
            OPERATOR_KEY,
            shots.to_str().unwrap(),
            explain_file.to_str().unwrap(),
        ])
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/test.sh"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("all console browser checks passed"),
        "the browser checks failed:\n{stdout}\n{stderr}"
    );
    for shot in [
        "console-sign-in",
        "console-approvals",
        "console-decisions",
        "console-counters",
        "console-policy",
        "console-candidate",
    ] {
        let png = shots.join(format!("{shot}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{} is a screenshot",
            png.display()
        );
    }
}

/// Issue 24, items 2, 3 and 5 in real Chromium, on Redis across restarts of the replica: an
/// argument's bidirectional controls show as marked code points; a session signed out from
/// the page stays signed out after a restart; a session outlives neither its operator's key
/// nor a rotation of it.
#[test]
fn console_sessions_hold_across_restarts_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run scripts/test.sh"
    );
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        interop.join("node_modules/puppeteer-core").is_dir(),
        "puppeteer-core is not installed: run scripts/test.sh (npm ci --prefix tests/interop)"
    );
    let redis = support::redis::RedisServer::start();
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("console-sessions");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    support::append(
        &config,
        &format!(
            "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\n[console]\nsession_secret = \"{}\"\n\n\
             [[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
            redis.url(),
            "s".repeat(40),
            sha256_hex(OPERATOR_KEY)
        ),
    );
    let start = || Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let node = |args: &[&str]| {
        let output = Command::new("node")
            .arg(interop.join("console_sessions.mjs"))
            .args(args)
            .env("CHROMIUM", &chromium)
            .output()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/test.sh"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success() && stdout.contains("console session checks passed"),
            "the browser checks failed ({args:?}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };

    let up = start();
    let admin = up.admin_url.clone().expect("admin");
    // A pending approval whose arguments carry bidirectional controls.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut agent = support::Mcp::new(&up.url("/mcp/k8s"), KEY_A);
        agent.initialize().await;
        let asking = agent.call(
            "k8s_scale",
            serde_json::json!({"namespace": "web\u{202E}metsys-ebuk\u{202C}", "name": "api", "replicas": 2}),
        );
        // Held (the rule holds calls): look, do not wait for it.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), asking).await;
    });
    let jar = dir.to_str().unwrap().to_owned();
    node(&["sign-in", &admin, OPERATOR_KEY, &jar]);
    let signed_out = format!("{jar}/signed-out.json");
    let kept = format!("{jar}/kept.json");
    drop(up);

    // Restarted: its memory is new; the store remembers the sign-out.
    let up = start();
    let admin = up.admin_url.clone().expect("admin");
    node(&["expect", &admin, &signed_out, "401"]);
    node(&["expect", &admin, &kept, "200"]);
    drop(up);

    // The operator's key rotated: the kept session ends with it.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(&sha256_hex(OPERATOR_KEY), &sha256_hex("tg_operator_alice_rotated_key")),
    )
    .expect("write");
    let up = start();
    let admin = up.admin_url.clone().expect("admin");
    node(&["expect", &admin, &kept, "401"]);
}
