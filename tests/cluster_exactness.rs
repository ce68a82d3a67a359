//! Limits hold across a whole Tollgate cluster: several edges and decision replicas sharing
//! one Redis (or a Redis Cluster) admit exactly `max` calls, however the calls spread.

mod support;

use serde_json::json;
use support::redis::{RedisCluster, RedisServer};
use support::{Deployment, KEY_A, KEY_B, Mcp, refusal};

const CALLS: usize = 300;

/// Fires `CALLS` concurrent `k8s_rollout_pause` calls for one grant, spread over the edges;
/// returns (admitted, rate limited).
async fn burst(edges: &[String]) -> (usize, usize) {
    // Every call not admitted is RATE_LIMITED (`fire` fails on any other refusal).
    let admitted = fire(edges, KEY_A, CALLS).await;
    (admitted, CALLS - admitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_edges_two_replicas_one_redis_admit_exactly_max() {
    let redis = RedisServer::start();
    let deployment = Deployment::start(
        "exact-redis",
        &support::seed_policy("minute"),
        &format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url()),
        2,
        3,
    );
    let (admitted, limited) = burst(&deployment.edges).await;
    assert_eq!((admitted, limited), (10, CALLS - 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_edges_two_replicas_on_a_redis_cluster_admit_exactly_max() {
    let cluster = RedisCluster::start();
    let seeds = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let deployment = Deployment::start(
        "exact-cluster",
        &support::seed_policy("minute"),
        &format!("\n[store]\nkind = \"redis\"\ncluster = [{seeds}]\n"),
        2,
        3,
    );
    let (admitted, limited) = burst(&deployment.edges).await;
    assert_eq!((admitted, limited), (10, CALLS - 10));
}

/// The control that shows the two tests above can fail: without a shared store each
/// decision replica counts alone, so two replicas admit twice the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_memory_store_counts_per_replica() {
    let deployment = Deployment::start(
        "exact-memory",
        &support::seed_policy("minute"),
        "\n[store]\nkind = \"memory\"\n",
        2,
        3,
    );
    let (admitted, _) = burst(&deployment.edges).await;
    assert_eq!(admitted, 20, "each of the 2 replicas admitted its own 10");
}

/// A per-grant limit (10/min) and a global one (15/min, another slot group).
const TWO_LIMITS: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [
      { "counter": "pause_per_grant", "window": "minute", "max": 10, "scope": "grant" },
      { "counter": "pause_everyone", "window": "minute", "max": 15, "scope": "global" }
    ] }
  }
}"#;

/// Fires `n` concurrent calls as `key`, spread over the edges; returns how many were admitted
/// (every other one must be RATE_LIMITED).
async fn fire(edges: &[String], key: &'static str, n: usize) -> usize {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let endpoint = edges[i % edges.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut agent = Mcp::new(&endpoint, key);
            let result = agent
                .call("k8s_rollout_pause", json!({"namespace": "default", "name": "web"}))
                .await;
            match refusal(&result) {
                None => 1,
                Some(d) if d["verdict"] == "RATE_LIMITED" => 0,
                Some(d) => panic!("unexpected refusal {d}"),
            }
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.expect("call task");
    }
    admitted
}

/// Issue 30, item 5: never under-admit. Grant a spends its 10, then fires 60 more at once
/// while grant b fires 40: the global counter has exactly 5 left for b, and b gets exactly
/// 5. Before, a's over-budget calls took a global hit first, were refused on their own
/// counter and gave it back; meanwhile those held hits refused b's calls, and the replicas
/// remembered "global is full for a minute" and refused b's calls without asking.
async fn two_grants_share_the_global_budget_exactly(store: &str, tag: &str) {
    let deployment = Deployment::start(tag, TWO_LIMITS, store, 2, 3);
    let edges = deployment.edges.clone();
    assert_eq!(fire(&edges, KEY_A, 10).await, 10, "a spends its own 10");
    let a = tokio::spawn({
        let edges = edges.clone();
        async move { fire(&edges, KEY_A, 60).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let b = fire(&edges, KEY_B, 40).await;
    let a = a.await.expect("a's burst");
    assert_eq!(
        (a, b),
        (0, 5),
        "a has no budget left; b gets exactly what the global limit has left"
    );
    // And nothing more for either once the global limit is spent.
    assert_eq!(fire(&edges, KEY_B, 10).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_grants_share_the_global_budget_exactly_on_redis() {
    let redis = RedisServer::start();
    two_grants_share_the_global_budget_exactly(&redis.store_toml(), "exact-two-limits").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_grants_share_the_global_budget_exactly_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    two_grants_share_the_global_budget_exactly(&cluster.store_toml(), "exact-two-limits-cluster").await;
}
