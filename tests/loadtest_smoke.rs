//! A short smoke run of the load harness (a few seconds, exactness check on): the harness
//! drives real MCP traffic, its verdict counts match the policy, and no window is exceeded.
//! It asserts behaviour only; speed is measured in BENCHMARKS.md, never here.

mod support;

use support::redis::RedisServer;
use support::{Deployment, KEY_A, KEY_B, Proc, write_config};
use tollgate_loadtest::{Load, Mode, Protocol, Scenario, Target, exactness, run};

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

/// The harness's 2026-07-28 mode (`--protocol 2026-07-28`, here `load.protocol` in the
/// scenario) through `tollgate up --demo`: stateless calls (no initialize, no session; the
/// envelope in `params._meta` and the routing headers) are decided and forwarded and none
/// fails. The limit is scoped per session, which a stateless call does not have: the gateway
/// counts it per grant, so exactly 10 per grant are admitted (in the session era each of the
/// harness's sessions gets its own 10, which shows the calls really went without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_smoke_2026_07_28_through_tollgate_up_demo() {
    for mode in [Mode::Closed, Mode::Open] {
        // A fresh `tollgate up --demo` per mode: the limit is 10 per minute.
        let demo_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let demo = format!("http://127.0.0.1:{demo_port}/mcp");
        let dir = support::temp_dir("smoke-modern");
        let policy = support::seed_policy("minute").replace(r#""scope": "grant""#, r#""scope": "session""#);
        assert!(policy.contains(r#""scope": "session""#));
        let config = write_config(&dir, &demo, &[], &policy, "");
        let demo_listen = format!("127.0.0.1:{demo_port}");
        let args = [
            "up",
            "--config",
            config.to_str().unwrap(),
            "--demo",
            "--demo-listen",
            &demo_listen,
        ];
        let up = Proc::start_until("up --demo", &args, &[], "tollgate up:");
        let mut s = scenario(vec![up.url("/mcp/k8s")], demo, mode);
        // As a scenario file says it, so the field's spelling is covered too.
        let text = r#"protocol = "2026-07-28""#;
        s.load.protocol = toml::from_str::<Load>(text).expect("load section").protocol;
        assert_eq!(s.load.protocol, Protocol::Stateless);
        let outcome = run(&s, Target::Gateway).await.expect("2026-07-28 load run");
        assert_eq!(outcome.summary().protocol, Protocol::Stateless);
        check(&policy, &outcome);
        // The demo upstream speaks 2026-07-28 itself: the baseline in the same mode.
        let direct = run(&s, Target::Direct).await.expect("baseline run").summary();
        assert_eq!(direct.errors, 0);
        assert!(
            direct.verdicts.get("ALLOW").is_some_and(|n| *n > 20),
            "the upstream alone refuses nothing: {:?}",
            direct.verdicts
        );
        // The same load in the session era: every session has its own 10.
        s.load.protocol = Protocol::Session;
        let sessions = run(&s, Target::Gateway).await.expect("session-era run").summary();
        assert_eq!(sessions.errors, 0);
        assert!(
            sessions.verdicts.get("ALLOW").is_some_and(|n| *n > 20),
            "{:?}",
            sessions.verdicts
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
