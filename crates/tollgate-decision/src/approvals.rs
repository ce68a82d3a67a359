//! Approvals as the decision service serves them: operators resolve them (admin HTTP API
//! or gRPC), edges wait for them (`WaitApproval`), and every replica counts the pending
//! ones of the whole cluster.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tollgate_limiter::{Approval, ApprovalStatus, RECHECK_ALL, Resolution, StoreError};
use tollgate_telemetry::metrics::metrics;

use crate::Engine;
use crate::proto;

/// The longest reason an operator may give (it reaches the agent and the audit trail).
pub const MAX_REASON_BYTES: usize = 1024;

/// The longest a single `WaitApproval` follows an approval, whatever the caller asks.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// How often each replica counts the cluster's pending approvals for its gauge.
const PENDING_GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// `[[operators]]`: who may resolve approvals.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSettings {
    /// Written into the audit trail with every approval this operator resolves.
    pub name: String,
    /// Hex SHA-256 of the operator's key (`tollgate keygen` prints one).
    pub key_sha256: String,
}

/// Operator keys by SHA-256 (the keys themselves are never stored).
#[derive(Debug, Clone, Default)]
pub struct Operators(Arc<Vec<([u8; 32], String)>>);

/// Why an operator key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRefusal {
    NoneConfigured,
    Missing,
    Unknown,
}

impl OperatorRefusal {
    pub fn message(self) -> &'static str {
        match self {
            OperatorRefusal::NoneConfigured => {
                "no operators are configured: add [[operators]] with name and key_sha256 (tollgate keygen)"
            }
            OperatorRefusal::Missing => "send an operator key",
            OperatorRefusal::Unknown => "unknown operator key",
        }
    }
}

impl Operators {
    /// Checks every `key_sha256`: a malformed one is a configuration error.
    pub fn new(settings: &[OperatorSettings]) -> Result<Operators, String> {
        let mut keys = Vec::with_capacity(settings.len());
        for operator in settings {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(operator.key_sha256.trim(), &mut hash).map_err(|_| {
                format!(
                    "[[operators]] \"{}\": key_sha256 must be 64 hex digits (tollgate keygen prints one)",
                    operator.name
                )
            })?;
            keys.push((hash, operator.name.clone()));
        }
        Ok(Operators(Arc::new(keys)))
    }

    /// The stored key hashes of the operators named `name` (the configuration may give one
    /// operator several keys), for sessions bound to the key they signed in with.
    pub fn key_hashes<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8; 32]> + 'a {
        self.0.iter().filter(move |(_, n)| n == name).map(|(h, _)| h)
    }

    /// The operator whose key this is: name and the key's stored hash.
    pub fn who_with_key(&self, key: Option<&str>) -> Result<(String, [u8; 32]), OperatorRefusal> {
        if self.0.is_empty() {
            return Err(OperatorRefusal::NoneConfigured);
        }
        let key = key.ok_or(OperatorRefusal::Missing)?;
        let hash: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
        self.0
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(h, name)| (name.clone(), *h))
            .ok_or(OperatorRefusal::Unknown)
    }

    /// The name of the operator whose key this is.
    pub fn who(&self, key: Option<&str>) -> Result<String, OperatorRefusal> {
        self.who_with_key(key).map(|(name, _)| name)
    }
}

/// An operator's reason: bounded, and free of control characters (it reaches logs).
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(format!(
            "reason: at most {MAX_REASON_BYTES} bytes, without control characters"
        ));
    }
    Ok(())
}

impl Engine {
    /// Approves or denies approval `id` as `operator`. This is an audit record: a
    /// `tollgate.approval` span (the record keeps its trace context, and the decision that
    /// consumes the approval links to it), a `tollgate::audit` log event and a metric. The
    /// replicas holding calls for it are woken through the store.
    pub async fn resolve_approval(
        &self,
        id: &str,
        approve: bool,
        operator: &str,
        reason: &str,
    ) -> Result<Resolution, StoreError> {
        let outcome = if approve { "approved" } else { "denied" };
        let span = tracing::info_span!(
            target: "tollgate::audit",
            "tollgate.approval",
            tollgate.approval.id = ?id,
            tollgate.approval.operator = %operator,
            tollgate.approval.outcome = outcome,
            tollgate.approval.reason = ?reason,
        );
        let trace = tollgate_telemetry::propagation::traceparent_of(&span);
        let resolved = tracing::Instrument::instrument(
            self.approvals().resolve(id, approve, operator, reason, &trace),
            span.clone(),
        )
        .await;
        if let Ok(Resolution::Resolved(approval)) = &resolved {
            metrics().approval_event(outcome);
            span.in_scope(|| {
                tracing::info!(
                    target: "tollgate::audit",
                    approval_id = %approval.id,
                    operator = %operator,
                    outcome,
                    reason = ?reason,
                    server = ?approval.server,
                    tool = ?approval.tool,
                    grant = ?approval.grant,
                    "approval resolved"
                )
            });
        }
        resolved
    }

    /// Waits until approval `id` is no longer pending (approved, denied or expired, on any
    /// replica), or for at most `max` (capped at [`MAX_WAIT`]); the record as it is then,
    /// `None` when there is no such approval. Woken by the store's wake-ups, never by
    /// polling; the approval's own expiry is a timer.
    pub async fn wait_approval(&self, id: &str, max: Duration) -> Result<Option<Approval>, StoreError> {
        let deadline = Instant::now() + max.min(MAX_WAIT);
        // Subscribe before reading, so a resolution in between is heard.
        let mut wakeups = self.approvals().wakeups();
        loop {
            let Some(approval) = self.read_approval(id).await? else {
                return Ok(None);
            };
            let now = Instant::now();
            if approval.status != ApprovalStatus::Pending || now >= deadline {
                return Ok(Some(approval));
            }
            let left = approval.expires_ms.saturating_sub(tollgate_limiter::wall_clock_ms());
            // A little past the expiry, so the record reads as expired when checked.
            let recheck = deadline.min(now + Duration::from_millis(left.saturating_add(5)));
            loop {
                match tokio::time::timeout_at(recheck, wakeups.recv()).await {
                    Err(_) => break,
                    Ok(Ok(woken)) if woken == id || woken == RECHECK_ALL => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) => {
                        tokio::time::sleep_until(recheck).await;
                        break;
                    }
                }
            }
        }
    }

    async fn read_approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        match tokio::time::timeout(self.store_timeout(), self.approvals().get(id)).await {
            Ok(read) => read,
            Err(_) => Err(StoreError::Timeout(self.store_timeout())),
        }
    }

    /// Keeps `tollgate_approvals_pending` at the number of pending approvals in the store
    /// (the whole cluster's), counted every few seconds until the engine is dropped.
    pub fn spawn_pending_gauge(self: &Arc<Engine>) {
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PENDING_GAUGE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else { return };
                if let Ok(pending) = engine.approvals().count_pending().await {
                    metrics()
                        .approvals_pending
                        .set(i64::try_from(pending).unwrap_or(i64::MAX));
                }
            }
        });
    }
}

/// An approval record as the gRPC API shows it; `with_arguments` is false for edges,
/// which have the call itself.
pub fn approval_message(approval: &Approval, with_arguments: bool) -> proto::Approval {
    let status = match approval.status {
        ApprovalStatus::Pending => proto::ApprovalStatus::Pending,
        ApprovalStatus::Approved => proto::ApprovalStatus::Approved,
        ApprovalStatus::Denied => proto::ApprovalStatus::Denied,
        ApprovalStatus::Expired => proto::ApprovalStatus::Expired,
        ApprovalStatus::Consumed => proto::ApprovalStatus::Consumed,
    };
    proto::Approval {
        id: approval.id.clone(),
        status: status as i32,
        server: approval.server.clone(),
        tool: approval.tool.clone(),
        grant: approval.grant.clone(),
        agent: approval.agent.clone(),
        arguments_json: if with_arguments {
            approval.arguments.clone()
        } else {
            String::new()
        },
        rule: approval.rule.clone(),
        created_ms: approval.created_ms,
        expires_ms: approval.expires_ms,
        resolved_ms: approval.resolved_ms.unwrap_or_default(),
        resolved_by: approval.resolved_by.clone().unwrap_or_default(),
        reason: approval.reason.clone().unwrap_or_default(),
        subject: approval.subject.clone().unwrap_or_default(),
        issuer: approval.issuer.clone().unwrap_or_default(),
    }
}
