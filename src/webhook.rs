//! `[approvals] webhook_url`: a JSON POST for every new pending approval, so an operator
//! hears of it (a chat bot, an incident tool). Sent by the replica that created the
//! approval, in the background: a decision never waits for it. Retried with backoff; a
//! failure is logged and counted, and the approval stays pending either way.
//!
//! With `webhook_secret`, every POST is signed as Slack and GitHub sign theirs: headers
//! `X-Tollgate-Timestamp` (Unix seconds) and `X-Tollgate-Signature: v1=<hex>`, the
//! HMAC-SHA256 under the secret of `v1:{timestamp}:{body}`. A receiver recomputes it over the
//! raw body, compares in constant time, and refuses timestamps more than a few minutes old
//! (replays). The body carries the whole arguments the operator will be shown, their
//! SHA-256, and, with `console_url`, a link to the approval in the console.

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
    /// Signs every POST (HMAC-SHA256, see the module documentation); at least 32
    /// characters. Unset: posts are unsigned (and a warning says so at start).
    #[serde(default)]
    pub webhook_secret: Option<tollgate_edge::Secret>,
    /// The console's address as operators reach it (e.g. `https://tollgate.example.com`):
    /// notifications link to the approval there.
    #[serde(default)]
    pub console_url: Option<String>,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            webhook_url: None,
            webhook_timeout_ms: default_timeout_ms(),
            webhook_attempts: default_attempts(),
            max_pending_per_grant: default_max_pending_per_grant(),
            webhook_secret: None,
            console_url: None,
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

/// How a notification is sent.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: String,
    attempts: u32,
    secret: Option<Vec<u8>>,
    console_url: Option<String>,
}

/// Starts the sender when a webhook is configured; the engine sends approvals to the
/// returned channel.
pub fn start(settings: &ApprovalSettings) -> anyhow::Result<Option<mpsc::Sender<Approval>>> {
    let Some(url) = settings.webhook_url.clone() else {
        return Ok(None);
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        anyhow::bail!("approvals.webhook_url must be an http:// or https:// URL, not {url:?}");
    }
    let secret = match &settings.webhook_secret {
        Some(secret) if secret.0.len() < 32 => {
            anyhow::bail!("approvals.webhook_secret must be at least 32 characters (tollgate keygen prints one)")
        }
        Some(secret) => Some(secret.0.as_bytes().to_vec()),
        None => {
            tracing::warn!(
                "approvals.webhook_url is set without approvals.webhook_secret: notifications are unsigned, so a \
                 receiver cannot tell them from forged ones"
            );
            None
        }
    };
    let console_url = match &settings.console_url {
        Some(url) if !url.starts_with("http://") && !url.starts_with("https://") => {
            anyhow::bail!("approvals.console_url must be an http:// or https:// URL, not {url:?}")
        }
        other => other.as_ref().map(|u| u.trim_end_matches('/').to_owned()),
    };
    let sender = Sender {
        client: reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.webhook_timeout_ms))
            .build()?,
        url,
        attempts: settings.webhook_attempts.max(1),
        secret,
        console_url,
    };
    let (tx, mut rx) = mpsc::channel::<Approval>(QUEUE);
    tokio::spawn(async move {
        while let Some(approval) = rx.recv().await {
            // One task per notification, so a slow endpoint delays no other.
            tokio::spawn(notify(sender.clone(), approval));
        }
    });
    Ok(Some(tx))
}

/// `v1=<hex HMAC-SHA256 of "v1:{timestamp}:{body}">`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("v1:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn notify(sender: Sender, approval: Approval) {
    use sha2::Digest;
    let body = serde_json::json!({
        "event": "approval.pending",
        "id": approval.id,
        "server": approval.server,
        "tool": approval.tool,
        "grant": approval.grant,
        "agent": approval.agent,
        "subject": approval.subject,
        "issuer": approval.issuer,
        "rule": approval.rule,
        // Whole: calls whose arguments a record cannot hold in full are refused.
        "arguments": approval.arguments,
        "arguments_sha256": hex::encode(sha2::Sha256::digest(approval.arguments.as_bytes())),
        "console": sender.console_url.as_ref().map(|base| format!("{base}/console#{}", approval.id)),
        "created_ms": approval.created_ms,
        "expires_ms": approval.expires_ms,
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut wait = Duration::from_secs(1);
    let attempts = sender.attempts;
    for attempt in 1..=attempts {
        let mut request = sender
            .client
            .post(&sender.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(secret) = &sender.secret {
            // Signed per attempt: a retry carries a fresh timestamp.
            let timestamp = tollgate_limiter::wall_clock_ms() / 1000;
            request = request
                .header("x-tollgate-timestamp", timestamp.to_string())
                .header("x-tollgate-signature", signature(secret, timestamp, &body));
        }
        let failure = match request.send().await {
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
