//! Resources and prompts as policy subjects (SPEC §2, §4 "Methods"), against the MCP
//! reference server `@modelcontextprotocol/server-everything` (npm), driven by the official
//! TypeScript SDK client: lists filtered, a resource read denied, reads limited, prompts
//! allowed, refused by an argument schema, or hidden and denied by a pattern.
//!
//! Needs `node` and `tests/interop/node_modules`, which `scripts/test.sh` installs; fails,
//! never skips, when they are missing.

mod support;

use serde_json::{Value, json};
use support::everything::Everything;
use support::{KEY_A, Mcp, Proc, write_config};

const POLICY: &str = r#"{
  "version": "1",
  "default": "allow",
  "resources": {
    "demo://resource/static/document/*": {"action": "deny", "reason": "documents stay inside"},
    "demo://resource/static/document/features.md": {"action": "allow"},
    "demo://resource/dynamic/*": {"limits": [{"counter": "dynamic_reads", "window": "minute", "max": 2}]}
  },
  "prompts": {
    "simple-prompt": {},
    "args-prompt": {"arguments": {"type": "object", "properties": {"city": {"enum": ["Paris"]}}}},
    "*": {"action": "deny"}
  }
}"#;

fn run_methods_client(url: &str) -> Value {
    support::run_json("node", &["tests/interop/methods_client.mjs", url, KEY_A])
}

/// The refusal an attempt ended with: its JSON-RPC error code and Tollgate's verdict.
fn refused(attempt: &Value) -> (i64, String, String) {
    let error = attempt
        .get("error")
        .unwrap_or_else(|| panic!("expected a refusal, got {attempt}"));
    (
        error["code"].as_i64().unwrap_or_default(),
        error["data"]["verdict"].as_str().unwrap_or_default().to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn resources_and_prompts_are_decided_by_policy_for_the_official_sdk() {
    let everything = Everything::start_http();
    let dir = support::temp_dir("methods");
    let config = write_config(&dir, &everything.url(), &[], POLICY, "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let url = up.url("/mcp/k8s");
    let seen = tokio::task::spawn_blocking(move || run_methods_client(&url))
        .await
        .expect("sdk client task");

    let documents: Vec<&str> = seen["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .filter(|u| u.starts_with("demo://resource/static/document/"))
        .collect();
    assert_eq!(
        documents,
        ["demo://resource/static/document/features.md"],
        "denied documents are left out of resources/list: {}",
        seen["resources"]
    );
    assert_eq!(
        seen["prompts"],
        json!(["simple-prompt", "args-prompt"]),
        "prompts/list is filtered"
    );

    let (code, verdict, message) = refused(&seen["document"]);
    assert_eq!((code, verdict.as_str()), (-32001, "DENY"));
    assert!(message.contains("documents stay inside"), "{message}");

    assert!(seen["dynamic"][0].get("ok").is_some(), "{}", seen["dynamic"][0]);
    assert!(seen["dynamic"][1].get("ok").is_some(), "{}", seen["dynamic"][1]);
    let (_, verdict, message) = refused(&seen["dynamic"][2]);
    assert_eq!(verdict, "RATE_LIMITED", "{message}");
    assert!(
        message.contains("rate limit dynamic_reads: 2 per minute per grant"),
        "{message}"
    );

    let simple = seen["simple"]["ok"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(simple.contains("simple prompt"), "{}", seen["simple"]);
    let paris = seen["paris"]["ok"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(paris.contains("Paris"), "{}", seen["paris"]);
    let (_, verdict, message) = refused(&seen["london"]);
    assert_eq!(verdict, "DENY");
    assert!(
        message.contains("/city"),
        "the denial names the failing argument: {message}"
    );
    let (_, verdict, message) = refused(&seen["completable"]);
    assert_eq!(verdict, "DENY");
    assert!(message.contains("prompts[\"*\"]"), "{message}");
}

/// A policy without `resources` or `prompts` sections (the seed's) leaves reads and gets as
/// they were; malformed URIs and prompt names are refused before any decision, whatever the
/// policy.
#[tokio::test]
async fn uncovered_methods_pass_and_malformed_subjects_are_refused() {
    let everything = Everything::start_http();
    let dir = support::temp_dir("methods-uncovered");
    let config = write_config(&dir, &everything.url(), &[], &support::seed_policy("minute"), "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let mut mcp = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    mcp.initialize().await;

    let read = mcp
        .request(
            "resources/read",
            json!({"uri": "demo://resource/static/document/architecture.md"}),
        )
        .await;
    assert!(
        read.message.pointer("/result/contents/0/text").is_some(),
        "no resources section: the read passes: {}",
        read.message
    );
    let prompts = mcp.request("prompts/list", json!({})).await;
    let listed = prompts
        .message
        .pointer("/result/prompts")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert!(
        listed >= 4,
        "no prompts section: nothing is hidden: {}",
        prompts.message
    );

    for (method, params, why) in [
        (
            "resources/read",
            json!({"uri": "demo://resource/static/document/../document/architecture.md"}),
            "'.' or '..'",
        ),
        (
            "resources/read",
            json!({"uri": "DEMO://resource/static/document/architecture.md"}),
            "scheme",
        ),
        (
            "resources/read",
            json!({"uri": "demo://resource/static/%64ocument/architecture.md"}),
            "percent-encodes",
        ),
        ("resources/read", json!({"uri": 7}), "params.uri"),
        ("prompts/get", json!({"name": "simple prompt"}), "prompt name"),
        (
            "prompts/get",
            json!({"name": "args-prompt", "arguments": {"city": 7}}),
            "must be strings",
        ),
    ] {
        let answer = mcp.request(method, params.clone()).await;
        assert_eq!(
            answer.message["error"]["code"], -32602,
            "{method} {params}: {}",
            answer.message
        );
        let message = answer.message["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{method} {params}: {message}");
    }
}
