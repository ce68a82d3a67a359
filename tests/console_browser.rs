//! The operators' console in a real headless Chromium (Debian's `chromium` package, driven
//! by puppeteer-core from npm; `scripts/test.sh` installs both), with agents on the official
//! MCP TypeScript SDK: sign in, a held call appearing in the queue within a second, approve
//! and deny from the page reaching the SDK client, live decisions and filters, the explain
//! form against the CLI, CSRF refusal, sign-out, and agents' markup rendered inert. The
//! steps are in `tests/interop/console_browser.mjs`; its screenshots land in
//! `target/screenshots/` (the README's come from there).

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
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
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
