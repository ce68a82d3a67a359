//! Limits hold across a whole Tollgate cluster: several edges and decision replicas sharing
//! one Redis (or a Redis Cluster) admit exactly `max` calls, however the calls spread.

mod support;

use serde_json::json;
use support::redis::{RedisCluster, RedisServer};
use support::{Deployment, KEY_A, Mcp, refusal};

const CALLS: usize = 300;

/// Fires `CALLS` concurrent `k8s_rollout_pause` calls for one grant, spread over the edges;
/// returns (admitted, rate limited).
async fn burst(edges: &[String]) -> (usize, usize) {
    let mut tasks = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let endpoint = edges[i % edges.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut agent = Mcp::new(&endpoint, KEY_A);
            let result = agent
                .call("k8s_rollout_pause", json!({"namespace": "default", "name": "web"}))
                .await;
            refusal(&result).map(|d| d["verdict"].as_str().unwrap_or_default().to_owned())
        }));
    }
    let (mut admitted, mut limited) = (0, 0);
    for task in tasks {
        match task.await.expect("call task") {
            None => admitted += 1,
            Some(v) if v == "RATE_LIMITED" => limited += 1,
            Some(other) => panic!("unexpected verdict {other}"),
        }
    }
    (admitted, limited)
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
