//! The console's live tail of decisions from every replica.
//!
//! Each replica's [`Engine`](crate::Engine) hands every decision to its [`DecisionTail`],
//! which publishes them in batches (one message per [`FLUSH_EVERY`]) on the store's
//! [`Broadcast`] channel: Redis pub/sub across a cluster, in-process for `tollgate up`.
//! Every replica listens to that channel and keeps the last [`RECENT`] decisions for pages
//! that open, and relays them live to its console's event streams. The tail is capped, never
//! on a decision's path, and lossy by design: past [`MAX_PER_FLUSH`] decisions per batch the
//! rest are counted (`tollgate_console_tail_skipped_total`) and not shown. The audit trail
//! is the spans and logs, not this.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tollgate_limiter::Broadcast;

/// How often a replica publishes the decisions it made meanwhile.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Decisions one replica publishes per batch; the rest are skipped (and counted).
pub const MAX_PER_FLUSH: usize = 200;
/// Decisions kept for a console page that opens.
pub const RECENT: usize = 200;
/// Longest text field shown (reasons, tools, arguments digests are shorter).
const MAX_FIELD: usize = 512;

/// One decision as the console shows it (no arguments: their SHA-256 only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DecisionRecord {
    pub id: String,
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The replica that decided.
    pub replica: String,
    pub verdict: String,
    pub rule: String,
    pub reason: String,
    /// `tools/call`, `resources/read` or `prompts/get`.
    pub method: String,
    pub server: String,
    /// The tool, resource URI or prompt name.
    pub tool: String,
    pub grant: String,
    pub agent: String,
    pub session: String,
    pub arguments_sha256: String,
    /// The decision span's trace (32 hex digits), empty when not traced.
    pub trace_id: String,
    pub approval_id: String,
    pub retry_after_ms: u64,
    pub limits: Vec<LimitRecord>,
    /// Tool pinning: the state of the definition checked (`approved`, `pending`,
    /// `changed`, `rejected`, `unknown`), empty when the upstream is not pinned.
    pub pin_state: String,
    /// The digest of the definition checked.
    pub pin_digest: String,
    /// The candidate (shadow) policy's verdict and rule, empty when none is loaded.
    pub shadow_verdict: String,
    pub shadow_rule: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct LimitRecord {
    pub counter: String,
    pub remaining: u64,
    pub max: u64,
}

impl DecisionRecord {
    /// Every text field cut to a bounded length: records arrive from other replicas through
    /// the store, and a page shows them.
    fn bounded(mut self) -> DecisionRecord {
        for field in [
            &mut self.id,
            &mut self.replica,
            &mut self.verdict,
            &mut self.rule,
            &mut self.reason,
            &mut self.method,
            &mut self.server,
            &mut self.tool,
            &mut self.grant,
            &mut self.agent,
            &mut self.session,
            &mut self.arguments_sha256,
            &mut self.trace_id,
            &mut self.approval_id,
            &mut self.pin_state,
            &mut self.pin_digest,
            &mut self.shadow_verdict,
            &mut self.shadow_rule,
        ] {
            if field.len() > MAX_FIELD {
                *field = tollgate_limiter::cut_short(field, MAX_FIELD);
            }
        }
        self.limits.truncate(32);
        for limit in &mut self.limits {
            limit.counter = tollgate_limiter::cut_short(&limit.counter, MAX_FIELD);
        }
        self
    }
}

/// A replica's side of the tail: what it publishes and what it has heard.
pub struct DecisionTail {
    pending: Mutex<Vec<DecisionRecord>>,
    /// `pending`'s length, read without the lock on every decision.
    queued: AtomicUsize,
    recent: Mutex<VecDeque<Arc<DecisionRecord>>>,
    live: broadcast::Sender<Arc<DecisionRecord>>,
    replica: String,
    channel: Arc<dyn Broadcast>,
}

impl DecisionTail {
    /// Starts publishing and listening on `channel`; `replica` names this replica in records.
    pub fn start(channel: Arc<dyn Broadcast>, replica: String) -> Arc<DecisionTail> {
        let tail = Arc::new(DecisionTail {
            pending: Mutex::default(),
            queued: AtomicUsize::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            live: broadcast::channel(1024).0,
            replica,
            channel: channel.clone(),
        });
        let heard = channel.subscribe();
        tokio::spawn(publish(Arc::downgrade(&tail), channel));
        tokio::spawn(listen(Arc::downgrade(&tail), heard));
        tail
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The cluster-wide channel the batches travel on (the console also announces signed-out
    /// sessions there; batches are JSON arrays, other messages are objects).
    pub fn channel(&self) -> &Arc<dyn Broadcast> {
        &self.channel
    }

    /// Queues a decision for the next batch, or skips it when the batch is full.
    pub fn record(&self, record: DecisionRecord) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() < MAX_PER_FLUSH {
            pending.push(record);
            self.queued.store(pending.len(), Ordering::Relaxed);
        } else {
            drop(pending);
            tollgate_telemetry::metrics::metrics().console_tail_skipped.inc();
        }
    }

    /// Whether a batch has room: callers skip building records that would be dropped.
    pub fn has_room(&self) -> bool {
        let room = self.queued.load(Ordering::Relaxed) < MAX_PER_FLUSH;
        if !room {
            tollgate_telemetry::metrics::metrics().console_tail_skipped.inc();
        }
        room
    }

    /// The last decisions heard, oldest first.
    pub fn recent(&self) -> Vec<Arc<DecisionRecord>> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Decisions heard from now on, from every replica.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DecisionRecord>> {
        self.live.subscribe()
    }

    fn heard(&self, records: Vec<DecisionRecord>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            let record = Arc::new(record.bounded());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(record.clone());
            let _ = self.live.send(record);
        }
    }
}

async fn publish(tail: std::sync::Weak<DecisionTail>, channel: Arc<dyn Broadcast>) {
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(tail) = tail.upgrade() else { return };
        let batch = {
            let mut pending = tail.pending.lock().unwrap_or_else(|e| e.into_inner());
            tail.queued.store(0, Ordering::Relaxed);
            std::mem::take(&mut *pending)
        };
        drop(tail);
        if batch.is_empty() {
            continue;
        }
        let message = match serde_json::to_string(&batch) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!("console tail: cannot encode decisions: {e}");
                continue;
            }
        };
        if let Err(e) = channel.publish(message).await {
            tracing::debug!("console tail: cannot publish {} decisions: {e}", batch.len());
        }
    }
}

async fn listen(tail: std::sync::Weak<DecisionTail>, mut heard: broadcast::Receiver<Arc<str>>) {
    loop {
        let message = match heard.recv().await {
            Ok(message) => message,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!("console tail: missed {missed} batches");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(tail) = tail.upgrade() else { return };
        if !message.starts_with('[') {
            continue; // not a batch of decisions
        }
        match serde_json::from_str::<Vec<DecisionRecord>>(&message) {
            Ok(records) => tail.heard(records),
            Err(e) => tracing::debug!("console tail: ignoring an unreadable message: {e}"),
        }
    }
}
