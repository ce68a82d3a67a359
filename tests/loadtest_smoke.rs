//! A short smoke run of the load harness (a few seconds, exactness check on): the harness
//! drives real MCP traffic, its verdict counts match the policy, and no window is exceeded.
//! It asserts behaviour only; speed is measured in BENCHMARKS.md, never here.

mod support;

use support::redis::RedisServer;
use support::{Deployment, KEY_A, KEY_B, Proc, write_config};
use tollgate_loadtest::{Load, Mode, Scenario, Target, exactness, run};

fn scenario(edges: Vec<String>, upstream: String, mode: Mode) -> Scenario {
    let text = format!(
        r#"
        edges = {edges:?}
        upstream = "{upstream}"
        [load]
        concurrency = 8
        rate = 300
        sessions = 4
        duration_s = 2
        [[grants]]
        name = "a"
        key = "{KEY_A}"
        agent = "agent-a"
        [[grants]]
        name = "b"
        key = "{KEY_B}"
        [[calls]]
        tool = "k8s_rollout_pause"
        arguments = {{ namespace = "default", name = "web" }}
        weight = 3
        [[calls]]
        tool = "k8s_get_pods"
        "#
    );
    let mut s: Scenario = toml::from_str(&text).expect("scenario");
    s.load = Load { mode, ..s.load };
    s
}

fn check(policy_text: &str, outcome: &tollgate_loadtest::Outcome) {
    let policy = tollgate_policy::compile_str("policy.json", policy_text)
        .expect("policy")
        .policy;
    let limits = exactness::check(&policy, &outcome.admitted);
    assert_eq!(limits.len(), 1);
    assert!(limits[0].violations.is_empty(), "{limits:?}");
    assert_eq!(limits[0].max_observed, 10, "each grant got exactly its 10");
    let summary = outcome.summary();
    assert_eq!(summary.errors, 0);
    assert_eq!(
        summary.verdicts.get("ALLOW"),
        Some(&20),
        "10 per grant, 2 grants: {:?}",
        summary.verdicts
    );
    assert!(summary.verdicts.get("RATE_LIMITED").is_some_and(|n| *n > 0));
    assert!(
        summary.verdicts.get("DENY").is_some_and(|n| *n > 0),
        "k8s_get_pods is denied by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_smoke_through_tollgate_up_closed_and_open_loop() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    for mode in [Mode::Closed, Mode::Open] {
        let dir = support::temp_dir("smoke");
        let policy = support::seed_policy("minute");
        let config = write_config(&dir, &upstream.url("/mcp"), &[], &policy, "");
        let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
        let s = scenario(vec![up.url("/mcp/k8s")], upstream.url("/mcp"), mode);
        let outcome = run(&s, Target::Gateway).await.expect("load run");
        check(&policy, &outcome);
        let direct = run(&s, Target::Direct).await.expect("baseline run").summary();
        assert_eq!(direct.errors, 0);
        assert!(
            direct.verdicts.get("ALLOW").is_some_and(|n| *n > 20),
            "the upstream alone refuses nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_smoke_three_edges_two_replicas_one_redis() {
    let redis = RedisServer::start();
    let policy = support::seed_policy("minute");
    let store = format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let deployment = Deployment::start("smoke-cluster", &policy, &store, 2, 3);
    assert_eq!(deployment.processes(), 6);
    let scenario = scenario(deployment.edges.clone(), deployment.upstream.clone(), Mode::Closed);
    let outcome = run(&scenario, Target::Gateway).await.expect("load run");
    check(&policy, &outcome);
}
