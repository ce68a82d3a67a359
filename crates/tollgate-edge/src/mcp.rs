//! The MCP endpoint `/mcp/{server}`. Each POST is read within its limits, parsed strictly
//! and classified once; then a `tools/call` is decided before it is forwarded, a
//! `tools/list` is forwarded and its answer filtered, and everything else is forwarded.
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
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tollgate_decision::Decider;
use tollgate_decision::proto::{DecideRequest, Tool, ToolAnnotations, Verdict};
use tollgate_telemetry::metrics::{GaugeUnit, metrics};
use tollgate_telemetry::propagation;
use tracing::Instrument;

use crate::auth::Caller;
use crate::guard::{ListFilter, Refused};
use crate::held;
use crate::jsonrpc::{self, GUARDED_METHODS, Message};
use crate::order::StreamOrder;
use crate::refusal;
use crate::settings::{EdgeSettings, RefusalMode};
use crate::upstream::{self, Upstream, UpstreamError};

/// Tools whose annotations one edge remembers per upstream.
const MAX_LEARNED_TOOLS: usize = 4096;
/// Longest `Mcp-Session-Id` accepted.
const MAX_SESSION_ID_BYTES: usize = 256;

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
}

impl Gateway {
    pub(crate) fn new(settings: EdgeSettings, upstreams: HashMap<String, Upstream>, decider: Arc<dyn Decider>) -> Self {
        Gateway {
            settings,
            upstreams,
            decider,
            annotations: RwLock::default(),
            order: StreamOrder::default(),
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

    fn annotations(&self, server: &str, tool: &str) -> Option<ToolAnnotations> {
        self.annotations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .and_then(|tools| tools.get(tool))
            .copied()
    }

    async fn forward(
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
    pub(crate) caller: &'a Caller,
    pub(crate) headers: &'a HeaderMap,
}

impl Exchange<'_> {
    pub(crate) fn list_filter(&self) -> ListFilter {
        ListFilter {
            gw: self.gw.clone(),
            server: self.upstream.name.clone(),
            caller: self.caller.clone(),
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
    async fn forward(&self, message: &Value, id: Option<&Value>) -> Response {
        match self.send(message, id).await {
            Ok(response) => guarded(response, self.list_filter(), id.cloned()),
            Err(response) => response,
        }
    }
}

pub async fn post(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let upstream = match gw.upstream(&server) {
        Ok(u) => u,
        Err(response) => return response,
    };
    if !content_type_is(&headers, "application/json") {
        return bad_request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    if let Err(response) = check_session_header(&headers) {
        return response;
    }
    let bytes = match read_body(body, &gw.settings).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let value = match jsonrpc::parse_strict(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return jsonrpc::error_response(
                StatusCode::BAD_REQUEST,
                None,
                jsonrpc::PARSE_ERROR,
                &format!("parse error: {e}"),
                None,
            );
        }
    };
    let exchange = Exchange {
        gw: &gw,
        upstream,
        caller: &caller,
        headers: &headers,
    };
    if let Value::Array(items) = &value {
        return match check_batch(items) {
            Ok(()) => exchange.forward(&value, None).await,
            Err(message) => bad_request(StatusCode::BAD_REQUEST, &message),
        };
    }
    let message = match jsonrpc::classify(&value) {
        Ok(m) => m,
        Err(message) => {
            return jsonrpc::error_response(
                StatusCode::BAD_REQUEST,
                value.get("id").filter(|id| jsonrpc::valid_id(id)),
                jsonrpc::INVALID_REQUEST,
                &format!("invalid JSON-RPC message: {message}"),
                None,
            );
        }
    };
    let span = request_span(&message, &server, &caller, &headers);
    let _in_flight = GaugeUnit::hold(&metrics().requests_in_flight);
    async {
        match message {
            Message::Request {
                id,
                method: "tools/call",
                params,
            } => call_tool(&exchange, &value, id, params).await,
            Message::Request {
                id,
                method: "tools/list",
                ..
            } => list_tools(&exchange, &value, id).await,
            Message::Notification {
                method: "notifications/initialized",
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
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    bodyless(&gw, &server, caller, &headers, Method::GET).await
}

pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    bodyless(&gw, &server, caller, &headers, Method::DELETE).await
}

/// GET (the server-to-client stream; replays on `Last-Event-ID` and server messages are
/// guarded like any other stream) and DELETE (end of session).
async fn bodyless(gw: &Arc<Gateway>, server: &str, caller: Caller, headers: &HeaderMap, method: Method) -> Response {
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
            };
            guarded(response, filter, None)
        }
        Err(response) => response,
    }
}

/// One `Mcp-Session-Id` at most, and a bounded one: the upstream must see the same single
/// session the edge reports in spans and session-scoped counters.
fn check_session_header(headers: &HeaderMap) -> Result<(), Response> {
    let mut values = headers.get_all("mcp-session-id").iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(bad_request(
            StatusCode::BAD_REQUEST,
            "send one Mcp-Session-Id header, not several",
        ));
    }
    if first.is_some_and(|v| v.len() > MAX_SESSION_ID_BYTES || v.to_str().is_err()) {
        return Err(bad_request(
            StatusCode::BAD_REQUEST,
            "Mcp-Session-Id must be visible ASCII of at most 256 bytes",
        ));
    }
    Ok(())
}

fn bad_request(status: StatusCode, message: &str) -> Response {
    jsonrpc::error_response(status, None, jsonrpc::INVALID_REQUEST, message, None)
}

/// The span of one MCP request, named after its method (`mcp tools/call`), continuing the
/// agent's trace: `params._meta.traceparent` when the request carries one, else the
/// `traceparent` header. Every field is bounded: the method and id were checked by
/// [`jsonrpc::classify`], the session id by [`check_session_header`].
fn request_span(message: &Message<'_>, server: &str, caller: &Caller, headers: &HeaderMap) -> tracing::Span {
    let (method, params) = match message {
        Message::Request { method, params, .. } => (*method, *params),
        Message::Notification { method } => (*method, None),
        Message::Response => ("response", None),
    };
    let span = tracing::info_span!(
        "mcp",
        otel.name = %format!("mcp {method}"),
        otel.kind = "server",
        mcp.method.name = %method,
        mcp.session.id = %header_text(headers, "mcp-session-id"),
        jsonrpc.request.id = %message.id().map(serde_json::Value::to_string).unwrap_or_default(),
        gen_ai.tool.name = tracing::field::Empty,
        tollgate.server = %server,
        tollgate.grant = %caller.grant,
        tollgate.agent = %caller.agent,
        enduser.id = caller.subject.as_deref().unwrap_or_default(),
        tollgate.token.issuer = caller.issuer.as_deref().unwrap_or_default(),
    );
    let meta = params.and_then(|p| p.get("_meta"));
    let text = |name: &str| meta.and_then(|m| m.get(name)).and_then(Value::as_str);
    let from_meta = text("traceparent").and_then(|tp| propagation::from_traceparent(tp, text("tracestate")));
    propagation::set_parent(&span, from_meta.or_else(|| propagation::from_http_headers(headers)));
    span
}

/// Reads a request body within `edge.max_body_bytes` and `edge.body_read_timeout_ms`.
async fn read_body(body: Body, settings: &EdgeSettings) -> Result<Bytes, Response> {
    let limit = settings.max_body_bytes;
    let timeout = Duration::from_millis(settings.body_read_timeout_ms);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(bad_request(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within {} ms", timeout.as_millis()),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(bad_request(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds the limit of {limit} bytes"),
        )),
        Ok(Err(_)) => Err(bad_request(StatusCode::BAD_REQUEST, "could not read the request body")),
    }
}

/// Batches are forwarded (re-serialised) unless they hold a message the edge must decide
/// or filter, which must come one per request.
fn check_batch(items: &[Value]) -> Result<(), String> {
    if items.is_empty() {
        return Err("invalid JSON-RPC message: empty batch".into());
    }
    for item in items {
        match jsonrpc::classify(item) {
            Err(message) => return Err(format!("invalid JSON-RPC message in batch: {message}")),
            Ok(Message::Request { method, .. }) if GUARDED_METHODS.contains(&method) => {
                return Err("Tollgate does not accept tools/call or tools/list inside a JSON-RPC batch: send them one per request".into());
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// What a `tools/call` asks for, checked before anything else looks at it.
pub(crate) struct ToolCall<'a> {
    pub(crate) name: &'a str,
    pub(crate) arguments: Option<&'a Value>,
    /// Task-augmented (`params.task`, protocol 2025-11-25): refusals must be JSON-RPC
    /// errors, since such clients expect a task, not a tool result.
    pub(crate) is_task: bool,
    /// `params._meta.progressToken`, when the agent asked for progress notifications.
    pub(crate) progress_token: Option<&'a Value>,
}

fn tool_call(params: Option<&Value>) -> Result<ToolCall<'_>, String> {
    let Some(params) = params.and_then(Value::as_object) else {
        return Err("tools/call needs params.name (a string)".into());
    };
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err("tools/call needs params.name (a string)".into());
    };
    tollgate_policy::check_tool_name(name).map_err(|e| format!("invalid tool name: {e}"))?;
    let arguments = params.get("arguments").filter(|a| !a.is_null());
    if arguments.is_some_and(|a| !a.is_object()) {
        return Err("tools/call params.arguments must be an object".into());
    }
    let progress_token = params
        .get("_meta")
        .and_then(|m| m.get("progressToken"))
        .filter(|t| t.as_str().is_some_and(|s| s.len() <= 256) || t.is_i64() || t.is_u64());
    Ok(ToolCall {
        name,
        arguments,
        is_task: params.get("task").is_some_and(|t| !t.is_null()),
        progress_token,
    })
}

async fn call_tool(exchange: &Exchange<'_>, message: &Value, id: &Value, params: Option<&Value>) -> Response {
    let call = match tool_call(params) {
        Ok(call) => call,
        Err(text) => {
            let body = jsonrpc::error_body(Some(id), jsonrpc::INVALID_PARAMS, &text, None);
            return jsonrpc::json_response(StatusCode::OK, &body);
        }
    };
    tracing::Span::current().record("gen_ai.tool.name", call.name);
    let gw = exchange.gw;
    let request_id = uuid::Uuid::new_v4();
    let request = decide_request(exchange, &call, request_id.to_string());
    let decision = match gw.decider.decide(request).await {
        Ok(decision) => decision,
        Err(e) => {
            metrics().decision_unavailable.inc();
            let grant = &exchange.caller.grant;
            // Only a real outage may fail open: an error answer may have been provoked.
            if e.is_unavailable() && gw.settings.fail_open {
                tracing::warn!(tool = call.name, %grant, "decision service unavailable, forwarding unchecked (edge.fail_open): {e}");
                return exchange.forward(message, Some(id)).await;
            }
            tracing::error!(tool = call.name, %grant, "no decision, refusing the call: {e}");
            refusal::unavailable(&e)
        }
    };
    if decision.verdict() == Verdict::Allow {
        return exchange.forward(message, Some(id)).await;
    }
    if decision.verdict() == Verdict::ApprovalRequired
        && decision.hold_ms > 0
        && gw.settings.max_hold_ms > 0
        && !call.is_task
        && accepts_event_stream(exchange.headers)
    {
        return held::hold(exchange, &call, message, id, request_id, decision);
    }
    let mode = if call.is_task {
        RefusalMode::Error
    } else {
        gw.settings.refusal
    };
    jsonrpc::json_response(StatusCode::OK, &refusal::body(id, &decision, mode))
}

/// What the decision service is asked about `call`.
pub(crate) fn decide_request(exchange: &Exchange<'_>, call: &ToolCall<'_>, request_id: String) -> DecideRequest {
    let server = &exchange.upstream.name;
    DecideRequest {
        request_id,
        server: server.clone(),
        tool: call.name.to_owned(),
        grant: exchange.caller.grant.clone(),
        agent: exchange.caller.agent.clone(),
        session_id: header_text(exchange.headers, "mcp-session-id"),
        arguments_json: call.arguments.map(Value::to_string).unwrap_or_default(),
        annotations: exchange.gw.annotations(server, call.name),
        subject: exchange.caller.subject.clone().unwrap_or_default(),
        issuer: exchange.caller.issuer.clone().unwrap_or_default(),
    }
}

/// Whether the agent takes an SSE answer (`Accept: text/event-stream`, as MCP clients
/// must send); only such an agent's call can be held open.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().to_ascii_lowercase().starts_with("text/event-stream"))
        })
    })
}

async fn list_tools(exchange: &Exchange<'_>, message: &Value, id: &Value) -> Response {
    let gw = exchange.gw;
    let upstream = exchange.upstream;
    let response = match exchange.send(message, Some(id)).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    if content_type_is(response.headers(), "text/event-stream") {
        return guarded(response, exchange.list_filter(), Some(id.clone()));
    }
    let (parts, body) = response.into_parts();
    // Nothing of an answer the edge could not check is passed on: not its body, and for a
    // server error not its status either. An error status never carries a list through.
    let fail = |what: &str| {
        tracing::warn!(upstream = %upstream.name, status = parts.status.as_u16(), "upstream sent {what} to tools/list");
        let status = if parts.status.is_client_error() {
            parts.status
        } else {
            StatusCode::BAD_GATEWAY
        };
        let message = format!(
            "upstream MCP server \"{}\" answered tools/list with HTTP {} and {what}",
            upstream.name,
            parts.status.as_u16()
        );
        jsonrpc::error_response(status, Some(id), jsonrpc::UPSTREAM_ERROR, &message, None)
    };
    if !parts.status.is_success() {
        return fail("an error status");
    }
    let limit = gw.settings.max_upstream_message_bytes;
    let timeout = Duration::from_millis(gw.settings.upstream_timeout_ms);
    let bytes = match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => return fail("a body that could not be read within edge.max_upstream_message_bytes"),
        Err(_) => return fail("a body that did not arrive within edge.upstream_timeout_ms"),
    };
    let mut answer = match jsonrpc::parse_strict(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return fail("JSON that is not one JSON-RPC message"),
        Err(_) => return fail("a body that is not valid JSON"),
    };
    let status = match exchange.list_filter().filter(&mut answer).await {
        Ok(_) => parts.status,
        Err(Refused { status, message }) => {
            answer = jsonrpc::error_body(Some(id), jsonrpc::INTERNAL_ERROR, &message, None);
            status
        }
    };
    let mut headers = upstream::response_headers(&parts.headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (status, headers, answer.to_string()).into_response()
}

/// Whether `Content-Type` names `media_type` (case-insensitive, parameters allowed).
pub(crate) fn content_type_is(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with(media_type))
}

/// An upstream answer as the agent receives it: only the headers agents may see, and an
/// SSE body through the list guard. A JSON body of anything but `tools/list` streams as it
/// came (it answers the request it was sent for).
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

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
