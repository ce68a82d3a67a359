//! Limits hold across a whole Tollgate cluster: several edges and decision replicas sharing
//! one Redis (or a Redis Cluster) admit exactly `max` calls, however the calls spread.

mod support;

use serde_json::json;
use support::redis::{RedisCluster, RedisServer};
use support::{KEY_A, Mcp, Proc, append, refusal, write_config};

const CALLS: usize = 300;

/// Starts 2 decision replicas on `store` and 3 edges over them; returns the edges' MCP URLs
/// and every process (kept alive by the caller).
fn gateway_cluster(tag: &str, store: &str) -> (Vec<String>, Vec<Proc>) {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir(tag);
    let policy = support::seed_policy("minute");
    let mut procs = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..2 {
        let config = write_config(&dir, &upstream.url("/mcp"), &[], &policy, "");
        append(&config, store);
        let decision = Proc::start(
            &format!("decision-{i}"),
            &["decision", "--config", config.to_str().unwrap()],
            &[],
        );
        replicas.push(decision.url(""));
        procs.push(decision);
    }
    let config = write_config(
        &dir,
        &upstream.url("/mcp"),
        &replicas,
        &policy,
        "decision_timeout_ms = 5000",
    );
    let mut edges = Vec::new();
    for i in 0..3 {
        let edge = Proc::start(
            &format!("edge-{i}"),
            &["edge", "--config", config.to_str().unwrap()],
            &[],
        );
        edges.push(edge.url("/mcp/k8s"));
        procs.push(edge);
    }
    procs.push(upstream);
    (edges, procs)
}

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
    let (edges, _procs) = gateway_cluster(
        "exact-redis",
        &format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url()),
    );
    let (admitted, limited) = burst(&edges).await;
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
    let (edges, _procs) = gateway_cluster(
        "exact-cluster",
        &format!("\n[store]\nkind = \"redis\"\ncluster = [{seeds}]\n"),
    );
    let (admitted, limited) = burst(&edges).await;
    assert_eq!((admitted, limited), (10, CALLS - 10));
}

/// The control that shows the two tests above can fail: without a shared store each
/// decision replica counts alone, so two replicas admit twice the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_memory_store_counts_per_replica() {
    let (edges, _procs) = gateway_cluster("exact-memory", "\n[store]\nkind = \"memory\"\n");
    let (admitted, _) = burst(&edges).await;
    assert_eq!(admitted, 20, "each of the 2 replicas admitted its own 10");
}
