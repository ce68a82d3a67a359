//! Load on the decision service alone: decisions over gRPC from N concurrent callers,
//! for comparing decisions per second with what Redis itself does running the same script
//! (`loadtest/decision-vs-redis.sh`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tollgate_decision::proto::{DecideRequest, Verdict};
use tollgate_decision::{Decider, GrpcDecider};

/// What a `decide` run measured.
pub struct DecideOutcome {
    pub decisions: u64,
    pub admitted: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

/// Sends decisions for `tool` (on the batched `DecideStream`, `batch_max` per message at
/// most, or as unary `Decide` calls when `batch_max` is 0) from `concurrency` callers for `duration`, cycling through
/// `grants` distinct grants (`{grant}-0`, `{grant}-1`, …; just `grant` when 1), so that a
/// per-grant limit keeps that many counter keys alive.
pub async fn run(
    url: &str,
    tool: &str,
    grant: &str,
    grants: u64,
    concurrency: usize,
    duration: Duration,
    batch_max: usize,
) -> anyhow::Result<DecideOutcome> {
    crate::check_loopback(url)?;
    let client =
        Arc::new(GrpcDecider::new(&[url.to_owned()], Duration::from_secs(5), None, None)?.with_batch_max(batch_max));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    // Request ids are unique per run: the store answers a repeated id with its first answer
    // (idempotent retries), so ids reused from an earlier run would replay its verdicts.
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let (admitted, errors, seq) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (client, latency, admitted, errors, seq) = (
            client.clone(),
            latency.clone(),
            admitted.clone(),
            errors.clone(),
            seq.clone(),
        );
        let (tool, grant, run) = (tool.to_owned(), grant.to_owned(), run.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let grant = if grants > 1 {
                    format!("{grant}-{}", n % grants)
                } else {
                    grant.clone()
                };
                let request = DecideRequest {
                    request_id: format!("load-{run}-{n}"),
                    server: "bench".into(),
                    tool: tool.clone(),
                    agent: grant.clone(),
                    grant,
                    ..Default::default()
                };
                let sent = Instant::now();
                match client.decide(request).await {
                    Ok(d) if d.verdict() == Verdict::Allow => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let micros = sent.elapsed().as_micros().max(1) as u64;
                let _ = latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(micros.min(60_000_000));
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let latency = Arc::try_unwrap(latency).map_err(|_| anyhow::anyhow!("callers still running"))?;
    let latency = latency.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(DecideOutcome {
        decisions: latency.len(),
        admitted: admitted.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latency,
    })
}
