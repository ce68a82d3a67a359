//! `[approvals] webhook_url`: a JSON POST for every new pending approval, so an operator
//! hears of it (a chat bot, an incident tool). Sent by the replica that created the
//! approval, in the background: a decision never waits for it. Retried with backoff; a
//! failure is logged and counted, and the approval stays pending either way.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tollgate_limiter::Approval;
use tollgate_telemetry::metrics::metrics;

/// `[approvals]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    /// Where to POST new pending approvals (http://). Unset: no notifications.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Deadline for one POST (ms). Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub webhook_timeout_ms: u64,
    /// POSTs per approval at most, 1 s, 2 s, 4 s … apart. Default 5.
    #[serde(default = "default_attempts")]
    pub webhook_attempts: u32,
    /// Approvals one grant may have pending at once; calls that would ask for more are
    /// refused, so an agent cannot flood the operators' queue. Default 100.
    #[serde(default = "default_max_pending_per_grant")]
    pub max_pending_per_grant: usize,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            webhook_url: None,
            webhook_timeout_ms: default_timeout_ms(),
            webhook_attempts: default_attempts(),
            max_pending_per_grant: default_max_pending_per_grant(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_max_pending_per_grant() -> usize {
    tollgate_limiter::DEFAULT_MAX_PENDING_PER_GRANT
}

fn default_attempts() -> u32 {
    5
}

/// Notifications waiting to be sent at most; past that they are dropped (and counted).
const QUEUE: usize = 1024;

/// The first bytes of the arguments a notification carries (the record has them all).
const ARGUMENTS_SUMMARY_BYTES: usize = 1024;

/// Starts the sender when a webhook is configured; the engine sends approvals to the
/// returned channel.
pub fn start(settings: &ApprovalSettings) -> anyhow::Result<Option<mpsc::Sender<Approval>>> {
    let Some(url) = settings.webhook_url.clone() else {
        return Ok(None);
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        anyhow::bail!("approvals.webhook_url must be an http:// or https:// URL, not {url:?}");
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.webhook_timeout_ms))
        .build()?;
    let attempts = settings.webhook_attempts.max(1);
    let (tx, mut rx) = mpsc::channel::<Approval>(QUEUE);
    tokio::spawn(async move {
        while let Some(approval) = rx.recv().await {
            // One task per notification, so a slow endpoint delays no other.
            tokio::spawn(notify(client.clone(), url.clone(), approval, attempts));
        }
    });
    Ok(Some(tx))
}

async fn notify(client: reqwest::Client, url: String, approval: Approval, attempts: u32) {
    let summary = tollgate_limiter::cut_short(&approval.arguments, ARGUMENTS_SUMMARY_BYTES);
    let body = serde_json::json!({
        "event": "approval.pending",
        "id": approval.id,
        "server": approval.server,
        "tool": approval.tool,
        "grant": approval.grant,
        "agent": approval.agent,
        "rule": approval.rule,
        "arguments": summary,
        "created_ms": approval.created_ms,
        "expires_ms": approval.expires_ms,
    });
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=attempts {
        let outcome = client.post(&url).json(&body).send().await;
        let failure = match outcome {
            Ok(response) if response.status().is_success() => {
                metrics().approval_event("notified");
                return;
            }
            Ok(response) => format!("HTTP {}", response.status()),
            Err(e) => e.to_string(),
        };
        if attempt == attempts {
            metrics().approval_event("notification_failed");
            tracing::warn!(approval_id = %approval.id, "approval webhook failed {attempts} times, giving up: {failure}");
            return;
        }
        tracing::info!(approval_id = %approval.id, attempt, "approval webhook failed, retrying in {wait:?}: {failure}");
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}
