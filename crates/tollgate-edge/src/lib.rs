//! The edge: an HTTP server speaking MCP Streamable HTTP to agents at `/mcp/{server}`.
//!
//! A connection is admitted within the listener's limits ([`server`]); a request passes
//! the `Host`/`Origin` check ([`origin`]) and the bearer-key layer ([`auth`]), then a front
//! door ([`per_server`], [`aggregate`]) resolves it once ([`resolve`]): the upstream it
//! reaches, checked against the grant and its scopes, and the call it makes. A `tools/call`
//! (read, get) is decided before it is forwarded ([`calls`]), lists are filtered on their
//! way back ([`guard`]), everything else streams through. The edge holds
//! no state a request needs: any edge serves any session. `/healthz` and `/readyz` sit
//! outside authentication.

// The layers of a request's way through the edge, each importing only from those below it:
// front doors → decided exchange → response guard → resolution → shared state → basics.
// Front doors: one per upstream, and the aggregated endpoint.
mod aggregate;
mod per_server;
// The decided exchange: decide, hold, forward; lists forwarded and filtered; subscriptions.
mod calls;
mod discover;
mod held;
mod listen;
mod lists;
// One exchange with one upstream, and the guard every answer passes.
mod exchange;
mod guard;
// One resolution of every request.
mod resolve;
// What every request shares.
mod gateway;
// Basics: authentication, parsing, upstream clients, settings.
mod auth;
mod eras;
mod identity;
mod jsonrpc;
mod marks;
mod method;
mod mrtr;
mod order;
mod origin;
pub mod pin_refresh;
pub mod pins;
mod protocol;
mod refusal;
mod request;
mod sealed;
mod server;
mod settings;
mod spans;
mod sse;
mod tasks;
mod upstream;
mod visible;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tollgate_api::proto::VisibleToolsRequest;
use tollgate_api::{Decider, PolicyHealth};

pub use auth::{Caller, Keyring};
pub use identity::{IdentitySettings, JwtSettings};
pub use server::{PeerAddr, serve, serve_tls};
pub use settings::{EdgeSettings, GrantSettings, PinningMode, RefusalMode, Secret, UpstreamSettings};
pub use tollgate_api::listener::ListenerLimits;
pub use upstream::Upstream;

impl EdgeSettings {
    /// The bounds of the edge's listener.
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            handshake_timeout: Duration::from_millis(self.header_read_timeout_ms),
            http2: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("invalid edge configuration: {0}")]
    Config(String),
}

/// Everything an edge is built from.
pub struct EdgeParts {
    pub settings: EdgeSettings,
    pub upstreams: Vec<UpstreamSettings>,
    pub grants: Vec<GrantSettings>,
    pub decider: Arc<dyn Decider>,
    /// When the policy is loaded in this process (`tollgate up`), its reload status is
    /// shown on `/readyz`.
    pub policy_status: Option<Arc<dyn PolicyHealth>>,
    /// `[identity]`: JWT issuers and required scopes, besides the grants' static keys.
    pub identity: IdentitySettings,
}

/// Validates the configuration and builds the edge's routes.
pub fn router(parts: EdgeParts) -> Result<Router, EdgeError> {
    if parts.upstreams.is_empty() {
        return Err(EdgeError::Config(
            "no [[upstreams]] configured: the edge would have nothing to serve".into(),
        ));
    }
    if parts.grants.is_empty() && parts.identity.jwt.is_empty() {
        return Err(EdgeError::Config(
            "no [[grants]] configured: no agent could authenticate".into(),
        ));
    }
    if let Some(url) = &parts.settings.console_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(EdgeError::Config(format!(
            "edge.console_url must be an http:// or https:// URL, not {url:?}"
        )));
    }
    let connect_timeout = Duration::from_millis(parts.settings.upstream_timeout_ms.min(10_000));
    let mut upstreams = HashMap::new();
    for u in &parts.upstreams {
        let upstream = upstream::Upstream::new(u, connect_timeout)?;
        tollgate_telemetry::metrics::metrics().register_upstream(&u.name);
        if upstreams.insert(u.name.clone(), upstream).is_some() {
            return Err(EdgeError::Config(format!("two upstreams are named \"{}\"", u.name)));
        }
    }
    for server in parts.identity.required_scopes.keys() {
        if !upstreams.contains_key(server) {
            return Err(EdgeError::Config(format!(
                "identity.required_scopes names \"{server}\", which is no [[upstreams]] entry"
            )));
        }
    }
    let auth = Arc::new(auth::Authenticator {
        keyring: Keyring::new(&parts.grants)?,
        verifier: identity::Verifier::new(&parts.identity)?,
        required_scopes: parts.identity.required_scopes.clone(),
        public_url: parts
            .identity
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        scheme: if parts.settings.tls_cert.is_some() {
            "https"
        } else {
            "http"
        },
        servers: upstreams.keys().cloned().collect(),
    });
    let readiness = Arc::new(Readiness {
        decider: parts.decider.clone(),
        policy_status: parts.policy_status,
    });
    let origins = Arc::new(origin::OriginPolicy::new(&parts.settings, parts.settings.listen));
    let aggregation = aggregate::Aggregation::new(&parts.settings.aggregate, &parts.upstreams)?;
    if !aggregate::Aggregation::has_configured_keys(&parts.settings.aggregate) {
        tracing::info!(
            "edge.aggregate.session_keys is not set: sessions of the aggregated endpoint /mcp work on this process \
             only (set the same keys on every edge of a cluster)"
        );
    }
    let pins = pins::EdgePins::new(&parts.settings, &parts.upstreams)?;
    let gateway = Arc::new(gateway::Gateway::new(
        parts.settings,
        upstreams,
        &parts.grants,
        parts.decider,
        auth.clone(),
        pins,
    )?);
    pin_refresh::start_refreshers(&gateway);
    let door = Arc::new(aggregate::AggregateDoor::new(gateway.clone(), aggregation));

    let aggregated = Router::new()
        .route(
            "/mcp",
            post(aggregate::post).get(aggregate::get).delete(aggregate::delete),
        )
        .with_state(door);
    let mcp_routes = Router::new()
        .route(
            "/mcp/{server}",
            post(per_server::post).get(per_server::get).delete(per_server::delete),
        )
        .with_state(gateway)
        .merge(aggregated)
        .layer(axum::middleware::from_fn_with_state(auth.clone(), auth::require_key));
    let metadata = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp/{server}",
            get(auth::resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(auth::aggregate_metadata),
        )
        .with_state(auth);
    let health = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .with_state(readiness);
    Ok(mcp_routes
        .merge(metadata)
        .merge(health)
        .layer(axum::middleware::from_fn_with_state(origins, origin::check)))
}

struct Readiness {
    decider: Arc<dyn Decider>,
    policy_status: Option<Arc<dyn PolicyHealth>>,
}

/// Ready when a decision service answers; a rejected policy reload is reported but does not
/// make the node unready, since the last good policy is still enforced. The endpoint is
/// unauthenticated, so it says only what state the node is in: the reasons (replica
/// addresses, policy diagnostics) are in the logs.
async fn readyz(State(r): State<Arc<Readiness>>) -> Response {
    let probe = r.decider.visible_tools(VisibleToolsRequest::default()).await;
    let policy = match r.policy_status.as_ref().and_then(|s| s.last_error()) {
        Some(_) => "last reload rejected, previous policy still in force (see the log)",
        None => "ok",
    };
    let (status, decision) = match probe {
        Ok(_) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::warn!("not ready: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable (see the log)")
        }
    };
    let body = json!({"ready": status == StatusCode::OK, "decision": decision, "policy": policy});
    (status, axum::Json(body)).into_response()
}

/// Prometheus metrics of this process (OpenMetrics text format).
pub async fn metrics() -> Response {
    let body = tollgate_telemetry::metrics::metrics().encode();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
