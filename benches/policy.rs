//! Policy evaluation alone (no store, no I/O): picking the rule and building counter keys,
//! for the seed policy and for a 500-rule policy (exact names, patterns, grant overrides).
//!
//! Run: `cargo bench --bench policy`

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tollgate_policy::{Annotations, Call, Policy};

const SEED: &str = r#"{"version": "1", "default": "deny", "tools": {"k8s_rollout_pause": {"limits": [
    {"counter": "k8s_rollout_pause_rate", "window": "minute", "max": 10, "scope": "grant"}]}}}"#;

/// 250 exact tool names, 200 patterns (`svcN_*`), 50 grant overrides: 500 rules.
fn large_policy() -> String {
    let mut tools = serde_json::Map::new();
    for i in 0..250 {
        tools.insert(format!("tool_{i}"), json!({"limits": [{"counter": format!("c{i}"), "window": "minute", "max": 100, "scope": ["grant", "argument:namespace"]}]}));
    }
    for i in 0..200 {
        tools.insert(
            format!("svc{i}_*"),
            json!({"action": if i % 2 == 0 { "allow" } else { "deny" }}),
        );
    }
    let mut grants = serde_json::Map::new();
    for i in 0..50 {
        grants.insert(
            format!("grant{i}"),
            json!({"tools": {format!("tool_{i}"): {"action": "deny"}}}),
        );
    }
    json!({"version": "1", "default": "deny", "tools": tools, "grants": grants}).to_string()
}

fn compile(text: &str) -> Policy {
    tollgate_policy::compile_str("bench.json", text)
        .expect("bench policy")
        .policy
}

fn evaluate(policy: &Policy, tool: &str, arguments: &Value) -> usize {
    let call = Call {
        server: "k8s",
        tool,
        grant: "ci-bot",
        agent: "ci-bot",
        session: "s",
        arguments,
        annotations: Annotations::default(),
    };
    let rule = policy.rule_for(call.server, call.tool, call.grant, call.annotations);
    policy.counter_hits(rule, &call).len()
}

fn policies(c: &mut Criterion) {
    let args = json!({"namespace": "default", "name": "web"});
    let seed = compile(SEED);
    let large_text = large_policy();
    let large = compile(&large_text);
    let mut group = c.benchmark_group("policy");
    group.bench_function("seed/limited_tool", |b| {
        b.iter(|| evaluate(&seed, "k8s_rollout_pause", &args))
    });
    group.bench_function("seed/default_deny", |b| {
        b.iter(|| evaluate(&seed, "k8s_get_pods", &args))
    });
    group.bench_function("500_rules/exact_name", |b| {
        b.iter(|| evaluate(&large, "tool_240", &args))
    });
    group.bench_function("500_rules/pattern", |b| {
        b.iter(|| evaluate(&large, "svc150_restart", &args))
    });
    group.bench_function("500_rules/no_match_default", |b| {
        b.iter(|| evaluate(&large, "unknown_tool", &args))
    });
    group.bench_function("500_rules/compile", |b| b.iter(|| compile(&large_text)));
    group.finish();
}

criterion_group!(benches, policies);
criterion_main!(benches);
