//! `tollgate policy test` (issue 29, item 1): case files run offline against a policy, with a
//! virtual clock, operator actions, a readable report naming file:line, and JUnit XML.

mod support;

use support::{run, temp_dir};

#[test]
fn the_example_policys_cases_pass() {
    let (code, out, err) = run(&[
        "policy",
        "test",
        "examples/policy.json",
        "--cases",
        "examples/policy.cases.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 cases, 4 passed, 0 failed"), "{out}");
}

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "pause": { "limits": [{ "counter": "pauses", "window": "1m", "max": 2, "scope": "grant" }] },
    "scale": { "action": "require_approval", "approval": { "timeout": "5m", "mode": "retry" } }
  },
  "prompts": { "incident_*": {} },
  "resources": { "file:///public/*": {} }
}"#;

#[test]
fn limits_approvals_prompts_and_resources_are_checked_and_a_failure_names_its_line() {
    let dir = temp_dir("policy-cases");
    let policy = dir.join("policy.json");
    std::fs::write(&policy, POLICY).expect("policy");
    let cases = dir.join("cases.yaml");
    std::fs::write(
        &cases,
        r#"defaults: { server: k8s, grant: a }
cases:
  - name: two pauses a minute
    steps:
      - { tool: pause, repeat: 2, expect: { verdict: ALLOW } }
      - { tool: pause, expect: { verdict: RATE_LIMITED, remaining: { pauses: 0 } } }
      - { after: 61s, tool: pause, expect: { verdict: ALLOW, remaining: { pauses: 1 } } }
  - name: scaling waits for an operator
    steps:
      - { tool: scale, arguments: { replicas: 3 }, expect: { verdict: APPROVAL_REQUIRED } }
      - { approve: true }
      - { tool: scale, arguments: { replicas: 3 }, expect: { verdict: ALLOW } }
      - { tool: scale, arguments: { replicas: 9 }, expect: { verdict: APPROVAL_REQUIRED } }
      - { approve: false }
      - { tool: scale, arguments: { replicas: 9 }, expect: { verdict: DENY } }
  - name: prompts and resources
    steps:
      - { prompt: incident_summary, expect: { verdict: ALLOW } }
      - { prompt: secrets_dump, expect: { verdict: DENY } }
      - { resource: "file:///public/a.txt", expect: { verdict: ALLOW } }
      - { resource: "file:///etc/shadow", expect: { verdict: DENY } }
  - name: a wrong expectation fails
    steps:
      - { tool: pause, expect: { verdict: DENY } }
"#,
    )
    .expect("cases");
    let junit = dir.join("report.xml");
    let (code, out, err) = run(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        "--cases",
        cases.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a failed case exits 1: {out}{err}");
    assert!(out.contains("ok    two pauses a minute"), "{out}");
    assert!(out.contains("ok    scaling waits for an operator"), "{out}");
    assert!(out.contains("ok    prompts and resources"), "{out}");
    let at = format!(
        "FAIL  a wrong expectation fails ({}:22): step 1 (pause): expected DENY, got ALLOW",
        cases.display()
    );
    assert!(out.contains(&at), "{out}");
    assert!(out.contains("4 cases, 3 passed, 1 failed"), "{out}");
    let report = std::fs::read_to_string(&junit).expect("JUnit written");
    assert!(report.contains("tests=\"4\" failures=\"1\""), "{report}");
    assert!(
        report.contains("<failure message=\"step 1 (pause): expected DENY, got ALLOW"),
        "{report}"
    );
}

/// A case can expect what the policy's `"mode": "shadow"` rules would answer; a wrong
/// expectation, or one against a policy without such rules, fails with what was found.
#[test]
fn shadow_verdicts_are_expected_like_live_ones() {
    let dir = temp_dir("policy-cases-shadow");
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"version": "1", "default": "deny", "tools": {"scale": {}},
            "grants": {"ci": {"tools": {"scale": {"action": "deny", "mode": "shadow"}}}}}"#,
    )
    .expect("policy");
    let plain = dir.join("plain.json");
    std::fs::write(&plain, r#"{"version": "1", "tools": {"scale": {}}}"#).expect("policy");
    let cases = dir.join("cases.yaml");
    std::fs::write(
        &cases,
        r#"defaults: { server: k8s, grant: ci }
cases:
  - name: recorded, not enforced
    steps:
      - { tool: scale, expect: { verdict: ALLOW, shadow: { verdict: DENY, rule: 'grants["ci"].tools["scale"]' } } }
  - name: a wrong shadow expectation fails
    steps:
      - { tool: scale, expect: { shadow: { verdict: ALLOW } } }
"#,
    )
    .expect("cases");
    let (code, out, err) = run(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        "--cases",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ok    recorded, not enforced"), "{out}");
    assert!(
        out.contains("expected the shadow verdict ALLOW, got DENY by grants[\"ci\"].tools[\"scale\"]"),
        "{out}"
    );
    let (code, out, _) = run(&[
        "policy",
        "test",
        plain.to_str().unwrap(),
        "--cases",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("the policy has no \"mode\": \"shadow\" rules"), "{out}");
}

#[test]
fn a_broken_case_file_is_refused_with_its_position() {
    let dir = temp_dir("policy-cases-bad");
    let cases = dir.join("cases.json");
    std::fs::write(&cases, "{\"cases\": [{\"name\": \"x\", \"stepz\": []}]}").expect("cases");
    let (code, _out, err) = run(&[
        "policy",
        "test",
        "examples/policy.json",
        "--cases",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}:1:", cases.display())) && err.contains("stepz"),
        "{err}"
    );
}

/// The JSON examples of README's "Policy reference", in order; a rule fragment
/// (`"k8s_scale": {…}`) as the only rule of a `tools` map under a default of deny.
fn reference_examples() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let start = readme.find("## Policy reference").expect("a Policy reference section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    section
        .split("```json\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .map(|block| {
            if block.trim_start().starts_with('{') {
                block.to_owned()
            } else {
                format!("{{\"version\": \"1\", \"default\": \"deny\", \"tools\": {{ {block} }}}}")
            }
        })
        .collect()
}

#[test]
fn every_policy_reference_example_has_cases_that_pass() {
    let examples = reference_examples();
    let dir = temp_dir("policy-reference");
    let case_files = std::fs::read_dir("examples/readme")
        .expect("examples/readme")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".cases.yaml"))
        })
        .count();
    assert_eq!(
        examples.len(),
        case_files,
        "each JSON example of the README's policy reference has its case file examples/readme/policy-N.cases.yaml"
    );
    for (i, example) in examples.iter().enumerate() {
        let n = i + 1;
        let policy = dir.join(format!("policy-{n}.json"));
        std::fs::write(&policy, example).expect("policy");
        let cases = format!("examples/readme/policy-{n}.cases.yaml");
        let (code, out, err) = run(&["policy", "test", policy.to_str().unwrap(), "--cases", &cases]);
        assert_eq!(code, 0, "example {n}:\n{example}\n{out}{err}");
        assert!(out.contains(" failed") && out.contains(", 0 failed"), "{out}");
    }
}
