//! The operators' HTTP API on `decision.admin_listen`: list approvals, approve or deny one.
//! Every replica serves every approval of the cluster (they live in the shared store).
//!
//! Operators authenticate with `Authorization: Bearer <key>`; the key's SHA-256 is looked up
//! in `[[operators]]`, and the operator's name goes into the audit trail.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tollgate_limiter::{ApprovalStore, Resolution};

/// `[[operators]]`: who may resolve approvals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSettings {
    /// Written into the audit trail with every approval this operator resolves.
    pub name: String,
    /// Hex SHA-256 of the operator's key (`tollgate keygen` prints one).
    pub key_sha256: String,
}

/// The longest reason an operator may give (it reaches the agent and the audit trail).
const MAX_REASON_BYTES: usize = 1024;

#[derive(Clone)]
struct Admin {
    approvals: Arc<dyn ApprovalStore>,
    operators: Arc<Vec<([u8; 32], String)>>,
}

/// The admin router. Operator keys are checked here: a malformed `key_sha256` is a
/// configuration error.
pub fn router(approvals: Arc<dyn ApprovalStore>, operators: &[OperatorSettings]) -> anyhow::Result<axum::Router> {
    let mut keys = Vec::with_capacity(operators.len());
    for operator in operators {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(operator.key_sha256.trim(), &mut hash).map_err(|_| {
            anyhow::anyhow!(
                "[[operators]] \"{}\": key_sha256 must be 64 hex digits (tollgate keygen prints one)",
                operator.name
            )
        })?;
        keys.push((hash, operator.name.clone()));
    }
    let state = Admin {
        approvals,
        operators: Arc::new(keys),
    };
    Ok(axum::Router::new()
        .route("/admin/approvals", get(list))
        .route("/admin/approvals/{id}/approve", post(approve))
        .route("/admin/approvals/{id}/deny", post(deny))
        .with_state(state))
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl Admin {
    /// The operator presenting the request's bearer key.
    fn operator(&self, headers: &HeaderMap) -> Result<String, Box<Response>> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let unauthorized = |message: &str| {
            let mut response = problem(StatusCode::UNAUTHORIZED, message);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        };
        if self.operators.is_empty() {
            return Err(Box::new(unauthorized(
                "no operators are configured: add [[operators]] with name and key_sha256 (tollgate keygen)",
            )));
        }
        let Some(key) = presented else {
            return Err(Box::new(unauthorized(
                "send an operator key: Authorization: Bearer <key>",
            )));
        };
        let hash: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
        self.operators
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, name)| name.clone())
            .ok_or_else(|| Box::new(unauthorized("unknown operator key")))
    }
}

async fn list(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Err(refused) = admin.operator(&headers) {
        return *refused;
    }
    match admin.approvals.list().await {
        Ok(all) => Json(all).into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    #[serde(default)]
    reason: String,
}

async fn approve(
    state: State<Admin>,
    headers: HeaderMap,
    id: Path<String>,
    body: Option<Json<ResolveBody>>,
) -> Response {
    resolve(state, headers, id, body, true).await
}

async fn deny(state: State<Admin>, headers: HeaderMap, id: Path<String>, body: Option<Json<ResolveBody>>) -> Response {
    resolve(state, headers, id, body, false).await
}

async fn resolve(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ResolveBody>>,
    approve: bool,
) -> Response {
    let operator = match admin.operator(&headers) {
        Ok(operator) => operator,
        Err(refused) => return *refused,
    };
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return problem(
            StatusCode::BAD_REQUEST,
            "reason: at most 1024 bytes, without control characters",
        );
    }
    let outcome = if approve { "approved" } else { "denied" };
    let span = tracing::info_span!(
        target: "tollgate::audit",
        "tollgate.approval",
        tollgate.approval.id = ?id,
        tollgate.approval.operator = %operator,
        tollgate.approval.outcome = outcome,
        tollgate.approval.reason = ?reason,
    );
    let _entered = span.enter();
    match admin.approvals.resolve(&id, approve, &operator, &reason).await {
        Ok(Resolution::Resolved(approval)) => {
            tollgate_telemetry::metrics::metrics().approval_event(outcome);
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
            );
            Json(approval).into_response()
        }
        Ok(Resolution::NotFound) => problem(StatusCode::NOT_FOUND, "no such approval"),
        Ok(Resolution::NotPending(approval)) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "the approval is not pending", "approval": approval })),
        )
            .into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
