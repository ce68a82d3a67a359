//! Redis faults seen from an agent (SPEC §6): when Redis goes away each rule's
//! `on_store_error` applies, with a reason that says the store is unavailable, and Tollgate
//! recovers by itself when Redis returns. Also: decision replicas with skewed clocks agree.

mod support;

use std::time::Duration;

use serde_json::json;
use support::redis::RedisServer;
use support::{KEY_A, Mcp, Proc, refusal, text, write_config};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": {
      "limits": [{ "counter": "pause", "window": "minute", "max": 3 }]
    },
    "k8s_get_pods": {
      "on_store_error": "allow",
      "limits": [{ "counter": "reads", "window": "minute", "max": 100 }]
    }
  }
}"#;

fn up_on_redis(tag: &str, redis: &RedisServer) -> (Proc, Proc) {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir(tag);
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    let store = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\nconnect_timeout_ms = 300\n",
        redis.url()
    );
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        "reload_interval_ms = 100",
        "reload_interval_ms = 100\nstore_timeout_ms = 500",
    );
    std::fs::write(&config, text).expect("config");
    support::append(&config, &store);
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    (upstream, up)
}

#[tokio::test]
async fn redis_outage_applies_on_store_error_and_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let (_upstream, up) = up_on_redis("redis-outage", &redis);
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    let pause = json!({"namespace": "default", "name": "web"});
    let pods = json!({"namespace": "default"});
    assert!(refusal(&agent.call("k8s_rollout_pause", pause.clone()).await).is_none());

    redis.kill();
    let denied = agent.call("k8s_rollout_pause", pause.clone()).await;
    let details = refusal(&denied).unwrap_or_else(|| panic!("default on_store_error is deny: {denied}"));
    assert_eq!(details["verdict"], "DENY");
    assert!(text(&denied).contains("counter store unavailable"), "{denied}");
    let allowed = agent.call("k8s_get_pods", pods.clone()).await;
    assert!(refusal(&allowed).is_none(), "on_store_error = allow admits: {allowed}");

    redis.restart();
    let mut recovered = None;
    for _ in 0..50 {
        let result = agent.call("k8s_rollout_pause", pause.clone()).await;
        if refusal(&result).is_none() {
            recovered = Some(result);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered.is_some(), "calls are admitted again once Redis is back");
    // And counted again: the restarted Redis is empty, so 2 more fit before the limit.
    for _ in 0..2 {
        let again = agent.call("k8s_rollout_pause", pause.clone()).await;
        assert!(refusal(&again).is_none(), "counted again after recovery: {again}");
    }
    let limited = agent.call("k8s_rollout_pause", pause.clone()).await;
    assert_eq!(
        refusal(&limited).map(|d| d["verdict"].clone()),
        Some(json!("RATE_LIMITED")),
        "{limited}"
    );
}

#[tokio::test]
async fn decision_replica_an_hour_off_gives_the_same_verdicts() {
    let libfaketime = support::redis::libfaketime();
    let redis = RedisServer::start();
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("skew");
    let mut replicas = Vec::new();
    let mut procs = Vec::new();
    for (name, env) in [
        ("on-time", vec![]),
        (
            "hour-behind",
            vec![
                ("LD_PRELOAD", libfaketime),
                ("FAKETIME", "-1h"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        ),
    ] {
        let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
        support::append(
            &config,
            &format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url()),
        );
        let decision = Proc::start(name, &["decision", "--config", config.to_str().unwrap()], &env);
        replicas.push(decision.url(""));
        procs.push(decision);
    }
    // One edge per replica, so each call is decided by a known replica.
    let mut edges = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let config = write_config(&dir, &upstream.url("/mcp"), std::slice::from_ref(replica), POLICY, "");
        let edge = Proc::start(
            &format!("edge-{i}"),
            &["edge", "--config", config.to_str().unwrap()],
            &[],
        );
        edges.push(edge);
    }
    let mut verdicts = Vec::new();
    for i in 0..6 {
        let mut agent = Mcp::new(&edges[i % 2].url("/mcp/k8s"), KEY_A);
        let result = agent
            .call("k8s_rollout_pause", json!({"namespace": "default", "name": "web"}))
            .await;
        let verdict = refusal(&result).map_or("ALLOW".to_owned(), |d| {
            d["verdict"].as_str().unwrap_or_default().to_owned()
        });
        if verdict == "RATE_LIMITED" {
            let retry = refusal(&result)
                .and_then(|d| d["retry_after_ms"].as_u64())
                .unwrap_or_default();
            assert!(
                retry <= 60_000,
                "retry-after from Redis time, not the skewed clock: {retry} ms"
            );
        }
        verdicts.push(verdict);
    }
    assert_eq!(
        verdicts,
        [
            "ALLOW",
            "ALLOW",
            "ALLOW",
            "RATE_LIMITED",
            "RATE_LIMITED",
            "RATE_LIMITED"
        ]
    );
}

#[test]
fn example_redis_configs_start_against_real_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("TOLLGATE_DECISION__LISTEN", "127.0.0.1:0"),
        ("TOLLGATE_DECISION__METRICS_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE_DECISION__ADMIN_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE_STORE__URL", url.as_str()),
    ];
    let args = ["decision", "--config", "examples/tollgate-redis.toml"];
    drop(Proc::start_until("decision", &args, &env, "(store: redis;"));

    let cluster = support::redis::RedisCluster::start();
    let seeds = cluster.urls().join(",");
    let env = [
        ("TOLLGATE_DECISION__LISTEN", "127.0.0.1:0"),
        ("TOLLGATE_DECISION__METRICS_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE_DECISION__ADMIN_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE_STORE__CLUSTER", seeds.as_str()),
    ];
    let marker = "(store: redis-cluster;";
    let _decision = Proc::start_until(
        "decision",
        &["decision", "--config", "examples/tollgate-redis-cluster.toml"],
        &env,
        marker,
    );
}
