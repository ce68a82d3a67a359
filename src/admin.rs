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
use tollgate_decision::{Engine, Operators, check_reason};
use tollgate_limiter::Resolution;

#[derive(Clone)]
struct Admin {
    engine: Arc<Engine>,
    operators: Operators,
}

/// The admin router.
pub fn router(engine: Arc<Engine>, operators: Operators) -> axum::Router {
    axum::Router::new()
        .route("/admin/approvals", get(list))
        .route("/admin/approvals/{id}/approve", post(approve))
        .route("/admin/approvals/{id}/deny", post(deny))
        .route("/admin/pins", get(list_pins))
        .route("/admin/pins/resolve", post(resolve_pins))
        .with_state(Admin { engine, operators })
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
        self.operators.who(presented).map_err(|refusal| {
            let message = match refusal {
                tollgate_decision::OperatorRefusal::Missing => "send an operator key: Authorization: Bearer <key>",
                other => other.message(),
            };
            let mut response = problem(StatusCode::UNAUTHORIZED, message);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            Box::new(response)
        })
    }
}

async fn list(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Err(refused) = admin.operator(&headers) {
        return *refused;
    }
    match admin.engine.approvals().list().await {
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
    if let Err(message) = check_reason(&reason) {
        return problem(StatusCode::BAD_REQUEST, &message);
    }
    match admin.engine.resolve_approval(&id, approve, &operator, &reason).await {
        Ok(Resolution::Resolved(approval)) => Json(approval).into_response(),
        Ok(Resolution::NotFound) => problem(StatusCode::NOT_FOUND, "no such approval"),
        Ok(Resolution::NotPending(approval)) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "the approval is not pending", "approval": approval })),
        )
            .into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn list_pins(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Err(refused) = admin.operator(&headers) {
        return *refused;
    }
    match admin.engine.list_pins().await {
        Ok(all) => Json(all.iter().map(tollgate_decision::pins::pin_json).collect::<Vec<_>>()).into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolvePinsBody {
    #[serde(default)]
    ids: Vec<String>,
    /// Every pending definition.
    #[serde(default)]
    all_pending: bool,
    approve: bool,
    #[serde(default)]
    reason: String,
}

/// `POST /admin/pins/resolve`: approves or rejects definitions; answers what was resolved
/// and which ids were not (unknown, or not pending).
async fn resolve_pins(State(admin): State<Admin>, headers: HeaderMap, body: Json<ResolvePinsBody>) -> Response {
    let operator = match admin.operator(&headers) {
        Ok(operator) => operator,
        Err(refused) => return *refused,
    };
    let Json(body) = body;
    if let Err(message) = check_reason(&body.reason) {
        return problem(StatusCode::BAD_REQUEST, &message);
    }
    if body.ids.len() > tollgate_decision::pins::MAX_OBSERVED || (body.ids.is_empty() && !body.all_pending) {
        return problem(
            StatusCode::BAD_REQUEST,
            "name between 1 and 1000 definition ids, or all_pending",
        );
    }
    match admin
        .engine
        .resolve_pins(&body.ids, body.all_pending, body.approve, &operator, &body.reason)
        .await
    {
        Ok((resolved, not_resolved)) => Json(json!({
            "resolved": resolved.iter().map(tollgate_decision::pins::pin_json).collect::<Vec<_>>(),
            "not_resolved": not_resolved,
        }))
        .into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
