//! `tollgate-loadtest held`: how much memory calls held for approval cost. Opens N calls
//! that need approval (each with its own arguments, so each asks for its own approval),
//! waits until every one is held (its stream has sent the first keep-alive), and reads the
//! resident memory of the given processes before and after.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

/// What one run measured.
pub struct Held {
    /// Calls that were held open at the same time.
    pub held: usize,
    /// Seconds it took to get them all held.
    pub took: Duration,
    /// Per process: (pid, resident KiB before, resident KiB while all were held).
    pub memory: Vec<(u32, u64, u64)>,
}

/// `VmRSS` of `pid`, in KiB (Linux).
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))
}

/// Holds `calls` calls of `tool` open on `url` (an edge's `/mcp/{server}`) at once.
pub async fn run(url: &str, key: &str, tool: &str, calls: usize, pids: &[u32]) -> anyhow::Result<Held> {
    crate::check_loopback(url)?;
    let before = pids
        .iter()
        .map(|&pid| resident_kib(pid))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut streams = Vec::with_capacity(calls);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..calls {
        // One connection per call, as separate agents would have.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .context("HTTP client")?;
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": tool, "arguments": {"namespace": "load", "name": format!("held-{i}"), "replicas": i}}});
        let (url, key) = (url.to_owned(), key.to_owned());
        opening.spawn(async move {
            let mut response = client
                .post(&url)
                .bearer_auth(&key)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json, text/event-stream")
                .body(body.to_string())
                .send()
                .await?;
            let first = response.chunk().await?;
            anyhow::ensure!(
                first.is_some_and(|c| c.starts_with(b": waiting")),
                "call {i} was not held (is the rule require_approval with a hold?)"
            );
            Ok::<_, anyhow::Error>(response)
        });
        // Keep the number of connection attempts in flight modest.
        if opening.len() >= 64
            && let Some(joined) = opening.join_next().await
        {
            streams.push(joined??);
        }
    }
    while let Some(joined) = opening.join_next().await {
        streams.push(joined??);
    }
    let took = started.elapsed();
    // Let allocators settle before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut memory = Vec::new();
    for (&pid, before) in pids.iter().zip(before) {
        memory.push((pid, before, resident_kib(pid)?));
    }
    drop(streams);
    Ok(Held {
        held: calls,
        took,
        memory,
    })
}
