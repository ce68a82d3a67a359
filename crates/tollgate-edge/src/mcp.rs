//! The MCP endpoint `/mcp/{server}`. Each POST is read within its limits
//! ([`crate::request`]), parsed strictly and classified once into a typed
//! [`McpMethod`]; then a `tools/call`, `resources/read` or `prompts/get` is decided before it
//! is forwarded ([`crate::calls`]), a `tools/list`, `resources/list` or `prompts/list` is
//! forwarded and its answer filtered ([`crate::lists`]), and everything else is forwarded.
//! What is forwarded is always the message as the edge parsed and decided it,
//! re-serialised, never the agent's raw bytes. GET and DELETE pass through; SSE answers
//! on every path go through the list guard ([`crate::guard`]). The edge keeps no session
//! state: `Mcp-Session-Id` travels end to end, so any edge can serve any request.

// Helpers return a ready answer for the agent as their error (`Result<_, Response>`); it is
// built only on the failing path, so its size costs nothing on the hot one.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use serde_json::Value;
use tollgate_api::Decider;
use tollgate_api::proto::{SubjectKind, Tool, ToolAnnotations};
use tollgate_telemetry::metrics::{GaugeUnit, metrics};
use tracing::Instrument;

use crate::aggregate::Aggregation;
use crate::auth::Caller;
use crate::guard::ListFilter;
use crate::jsonrpc::{self, Message};
use crate::method::McpMethod;
use crate::order::StreamOrder;
use crate::request::{
    MAX_SESSION_BYTES, bad_request, check_batch, check_session_header, classify, content_type_is, header_text,
    read_json,
};
use crate::settings::EdgeSettings;
use crate::upstream::{self, Upstream, UpstreamError};
use crate::visible::VisibleCache;
use crate::{calls, lists, spans};

/// Tools whose annotations one edge remembers per upstream.
const MAX_LEARNED_TOOLS: usize = 4096;

/// Shared state of the MCP handlers.
pub struct Gateway {
    pub(crate) settings: EdgeSettings,
    pub(crate) upstreams: HashMap<String, Upstream>,
    pub(crate) decider: Arc<dyn Decider>,
    /// Tool annotations per upstream, learnt from the tools lists upstreams sent. Only
    /// upstreams are trusted for them, never agents; a tool present here was listed.
    annotations: RwLock<HashMap<String, HashMap<String, ToolAnnotations>>>,
    /// Keeps each session's GET stream ahead of its calls on this edge.
    order: StreamOrder,
    /// The aggregated endpoint `/mcp`.
    pub(crate) aggregation: Aggregation,
    /// Visible sets of lists, per grant and policy.
    pub(crate) visible: VisibleCache,
}

impl Gateway {
    pub(crate) fn new(
        settings: EdgeSettings,
        upstreams: HashMap<String, Upstream>,
        decider: Arc<dyn Decider>,
        aggregation: Aggregation,
    ) -> Self {
        Gateway {
            upstreams,
            decider,
            annotations: RwLock::default(),
            order: StreamOrder::default(),
            aggregation,
            visible: VisibleCache::new(Duration::from_millis(settings.list_cache_ms)),
            settings,
        }
    }

    fn upstream(&self, server: &str) -> Result<&Upstream, Response> {
        self.upstreams.get(server).ok_or_else(|| {
            let mut known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
            known.sort_unstable();
            let message = format!(
                "unknown MCP server \"{}\"; this gateway serves: {}",
                jsonrpc::printable(server, 64),
                known.join(", ")
            );
            jsonrpc::error_response(StatusCode::NOT_FOUND, None, jsonrpc::INVALID_REQUEST, &message, None)
        })
    }

    /// Remembers the annotations of tools an upstream listed (bounded per upstream).
    pub(crate) fn learn_tools(&self, server: &str, tools: &[Tool]) {
        let mut cache = self.annotations.write().unwrap_or_else(|e| e.into_inner());
        let known = cache.entry(server.to_owned()).or_default();
        for t in tools {
            if let Some(a) = t.annotations
                && (known.len() < MAX_LEARNED_TOOLS || known.contains_key(&t.name))
            {
                known.insert(t.name.clone(), a);
            }
        }
    }

    pub(crate) fn annotations(&self, server: &str, tool: &str) -> Option<ToolAnnotations> {
        self.annotations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .and_then(|tools| tools.get(tool))
            .copied()
    }

    pub(crate) async fn forward(
        &self,
        upstream: &Upstream,
        method: Method,
        headers: &HeaderMap,
        body: Body,
        id: Option<&Value>,
    ) -> Result<axum::http::Response<Incoming>, Response> {
        let timeout = Duration::from_millis(self.settings.upstream_timeout_ms);
        let started = Instant::now();
        let result = upstream.send(method, headers, body, timeout).await;
        metrics().observe_upstream(
            &upstream.name,
            started.elapsed(),
            result.as_ref().err().map(UpstreamError::kind),
        );
        result.map_err(|e| {
            tracing::warn!(upstream = %upstream.name, "{e}");
            jsonrpc::error_response(e.status(), id, jsonrpc::UPSTREAM_ERROR, &e.public_message(), None)
        })
    }
}

/// One POST being handled: who sent it, to which upstream, with which headers.
pub(crate) struct Exchange<'a> {
    pub(crate) gw: &'a Arc<Gateway>,
    pub(crate) upstream: &'a Upstream,
    pub(crate) caller: &'a Arc<Caller>,
    /// The headers the upstream request is made from (on the aggregated endpoint: the
    /// agent's, with this upstream's own session id).
    pub(crate) headers: &'a HeaderMap,
    /// On the aggregated endpoint: the upstream's prefix (see [`ListFilter::aggregate`]).
    pub(crate) aggregate: Option<Arc<str>>,
}

impl Exchange<'_> {
    pub(crate) fn list_filter(&self) -> ListFilter {
        ListFilter {
            gw: self.gw.clone(),
            server: self.upstream.name.clone(),
            caller: self.caller.clone(),
            aggregate: self.aggregate.clone(),
        }
    }

    /// Sends `message` upstream, re-serialised: the upstream receives exactly what was
    /// decided, never the agent's bytes.
    pub(crate) async fn send(
        &self,
        message: &Value,
        id: Option<&Value>,
    ) -> Result<axum::http::Response<Incoming>, Response> {
        self.gw
            .order
            .before_post(&self.caller.grant, &header_text(self.headers, "mcp-session-id"))
            .await;
        let body = Body::from(message.to_string());
        self.gw
            .forward(self.upstream, Method::POST, self.headers, body, id)
            .await
    }

    /// [`Exchange::send`], with the answer streamed back through the list guard.
    pub(crate) async fn forward(&self, message: &Value, id: Option<&Value>) -> Response {
        match self.send(message, id).await {
            Ok(response) => guarded(response, self.list_filter(), id.cloned()),
            Err(response) => response,
        }
    }
}

pub async fn post(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let upstream = match gw.upstream(&server) {
        Ok(u) => u,
        Err(response) => return response,
    };
    let value = match read_json(&headers, body, &gw.settings, MAX_SESSION_BYTES).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    let exchange = Exchange {
        gw: &gw,
        upstream,
        caller: &caller,
        headers: &headers,
        aggregate: None,
    };
    if let Value::Array(items) = &value {
        return match check_batch(items) {
            Ok(()) => exchange.forward(&value, None).await,
            Err(message) => bad_request(StatusCode::BAD_REQUEST, &message),
        };
    }
    let message = match classify(&value) {
        Ok(m) => m,
        Err(response) => return response,
    };
    let span = spans::request_span(&message, &server, &caller, &headers);
    let _in_flight = GaugeUnit::hold(&metrics().requests_in_flight);
    async {
        match message {
            Message::Request {
                id,
                method: method @ (McpMethod::ToolsCall | McpMethod::ResourcesRead | McpMethod::PromptsGet),
                params,
                ..
            } => {
                let kind = match method {
                    McpMethod::ResourcesRead => SubjectKind::Resource,
                    McpMethod::PromptsGet => SubjectKind::Prompt,
                    _ => SubjectKind::Tool,
                };
                calls::decide_and_forward(&exchange, kind, &value, id, params).await
            }
            Message::Request {
                id,
                method: McpMethod::ToolsList | McpMethod::ResourcesList | McpMethod::PromptsList,
                name,
                ..
            } => lists::list(&exchange, name, &value, id).await,
            Message::Notification {
                method: McpMethod::NotificationsInitialized,
                ..
            } => {
                let response = exchange.forward(&value, None).await;
                let session = header_text(&headers, "mcp-session-id");
                if response.status().is_success() && !session.is_empty() {
                    gw.order.initialized(&caller.grant, &session);
                }
                response
            }
            message => exchange.forward(&value, message.id()).await,
        }
    }
    .instrument(span)
    .await
}

pub async fn get(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    bodyless(&gw, &server, caller, &headers, Method::GET).await
}

pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    bodyless(&gw, &server, caller, &headers, Method::DELETE).await
}

/// GET (the server-to-client stream; replays on `Last-Event-ID` and server messages are
/// guarded like any other stream) and DELETE (end of session).
async fn bodyless(
    gw: &Arc<Gateway>,
    server: &str,
    caller: Arc<Caller>,
    headers: &HeaderMap,
    method: Method,
) -> Response {
    let upstream = match gw.upstream(server) {
        Ok(u) => u,
        Err(response) => return response,
    };
    if let Err(response) = check_session_header(headers) {
        return response;
    }
    let session = header_text(headers, "mcp-session-id");
    let opening = (method == Method::GET && !session.is_empty()).then(|| gw.order.opening(&caller.grant, &session));
    let forwarded = gw.forward(upstream, method, headers, Body::empty(), None).await;
    drop(opening);
    match forwarded {
        Ok(response) => {
            let filter = ListFilter {
                gw: gw.clone(),
                server: upstream.name.clone(),
                caller,
                aggregate: None,
            };
            guarded(response, filter, None)
        }
        Err(response) => response,
    }
}

/// An upstream answer as the agent receives it: only the headers agents may see, and an
/// SSE body through the list guard. A JSON body of anything but the list methods streams as
/// it came (it answers the request it was sent for).
pub(crate) fn guarded(
    response: axum::http::Response<Incoming>,
    filter: ListFilter,
    request_id: Option<Value>,
) -> Response {
    let sse = content_type_is(response.headers(), "text/event-stream");
    let (parts, body) = response.into_parts();
    let body = if sse {
        filter.event_stream(request_id, body)
    } else {
        Body::new(body)
    };
    (parts.status, upstream::response_headers(&parts.headers), body).into_response()
}
