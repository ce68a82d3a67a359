//! The MCP endpoint `/mcp/{server}`: each POST is read, classified, and either forwarded
//! untouched, decided first (`tools/call`), or forwarded and filtered on the way back
//! (`tools/list`). GET and DELETE pass straight through. The edge keeps no session state:
//! `Mcp-Session-Id` travels end to end, so any edge can serve any request.

// Helpers return a ready answer for the agent as their error (`Result<_, Response>`); it is
// built only on the failing path, so its size costs nothing on the hot one.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_decision::proto::{DecideRequest, Tool, ToolAnnotations, Verdict, VisibleToolsRequest};
use tollgate_decision::{Decider, DecisionUnavailable};
use tollgate_telemetry::metrics::metrics;
use tollgate_telemetry::propagation;
use tracing::Instrument;

use crate::auth::Caller;
use crate::jsonrpc::{self, Message};
use crate::settings::EdgeSettings;
use crate::upstream::{self, HttpClient, Upstream, UpstreamError};
use crate::{refusal, sse};

/// Largest upstream `tools/list` answer the edge will buffer to filter.
const MAX_TOOLS_LIST_BYTES: usize = 32 * 1024 * 1024;

/// Shared state of the MCP handlers.
pub struct Gateway {
    pub(crate) settings: EdgeSettings,
    pub(crate) upstreams: HashMap<String, Upstream>,
    pub(crate) client: HttpClient,
    pub(crate) decider: Arc<dyn Decider>,
    /// Tool annotations per upstream, learnt from the `tools/list` answers this edge saw.
    /// Only upstreams are trusted for them, never agents.
    annotations: RwLock<HashMap<String, HashMap<String, ToolAnnotations>>>,
}

impl Gateway {
    pub(crate) fn new(
        settings: EdgeSettings,
        upstreams: HashMap<String, Upstream>,
        client: HttpClient,
        decider: Arc<dyn Decider>,
    ) -> Self {
        Gateway {
            settings,
            upstreams,
            client,
            decider,
            annotations: RwLock::default(),
        }
    }

    fn upstream(&self, server: &str) -> Result<&Upstream, Response> {
        self.upstreams.get(server).ok_or_else(|| {
            let mut known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
            known.sort_unstable();
            let message = format!(
                "unknown MCP server \"{server}\"; this gateway serves: {}",
                known.join(", ")
            );
            jsonrpc::error_response(StatusCode::NOT_FOUND, None, jsonrpc::INVALID_REQUEST, &message, None)
        })
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
        let result = upstream.send(&self.client, method, headers, body, timeout).await;
        metrics().observe_upstream(
            &upstream.name,
            started.elapsed(),
            result.as_ref().err().map(UpstreamError::kind),
        );
        result.map_err(|e| {
            tracing::warn!(upstream = %upstream.name, "{e}");
            upstream_error(&e, id)
        })
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
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return jsonrpc::error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            jsonrpc::INVALID_REQUEST,
            "Content-Type must be application/json",
            None,
        );
    }
    let bytes = match read_body(body, gw.settings.max_body_bytes).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let value: Value = match serde_json::from_slice(&bytes) {
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

    if let Value::Array(items) = &value {
        return match check_batch(items) {
            Ok(()) => pass_through(&gw, upstream, &headers, bytes, None).await,
            Err(message) => {
                jsonrpc::error_response(StatusCode::BAD_REQUEST, None, jsonrpc::INVALID_REQUEST, &message, None)
            }
        };
    }
    let span = request_span(&value, &server, &caller, &headers);
    let _in_flight = InFlight::start();
    handle_message(&gw, upstream, &caller, &headers, &value, bytes)
        .instrument(span)
        .await
}

async fn handle_message(
    gw: &Arc<Gateway>,
    upstream: &Upstream,
    caller: &Caller,
    headers: &HeaderMap,
    value: &Value,
    bytes: Bytes,
) -> Response {
    match jsonrpc::classify(value) {
        Err(message) => jsonrpc::error_response(
            StatusCode::BAD_REQUEST,
            value.get("id").filter(|id| id.is_string() || id.is_number()),
            jsonrpc::INVALID_REQUEST,
            &format!("invalid JSON-RPC message: {message}"),
            None,
        ),
        Ok(Message::Request {
            id,
            method: "tools/call",
            params,
        }) => call_tool(gw, upstream, caller, headers, id, params, bytes).await,
        Ok(Message::Request {
            id,
            method: "tools/list",
            ..
        }) => list_tools(gw, upstream, caller, headers, id, bytes).await,
        Ok(message) => pass_through(gw, upstream, headers, bytes, message.id()).await,
    }
}

pub async fn get(State(gw): State<Arc<Gateway>>, Path(server): Path<String>, headers: HeaderMap) -> Response {
    forward_bodyless(&gw, &server, Method::GET, &headers).await
}

pub async fn delete(State(gw): State<Arc<Gateway>>, Path(server): Path<String>, headers: HeaderMap) -> Response {
    forward_bodyless(&gw, &server, Method::DELETE, &headers).await
}

/// GET (the server-to-client stream) and DELETE (end of session) pass straight through.
async fn forward_bodyless(gw: &Gateway, server: &str, method: Method, headers: &HeaderMap) -> Response {
    let upstream = match gw.upstream(server) {
        Ok(u) => u,
        Err(response) => return response,
    };
    match gw.forward(upstream, method, headers, Body::empty(), None).await {
        Ok(response) => stream_back(response),
        Err(response) => response,
    }
}

/// The span of one MCP request, named after its method (`mcp tools/call`), continuing the
/// agent's trace: `params._meta.traceparent` when the request carries one, else the
/// `traceparent` header.
fn request_span(message: &Value, server: &str, caller: &Caller, headers: &HeaderMap) -> tracing::Span {
    let method = message.get("method").and_then(Value::as_str).unwrap_or("response");
    let span = tracing::info_span!(
        "mcp",
        otel.name = %format!("mcp {method}"),
        otel.kind = "server",
        mcp.method.name = %method,
        mcp.session.id = %header_text(headers, "mcp-session-id"),
        jsonrpc.request.id = %message.get("id").map(serde_json::Value::to_string).unwrap_or_default(),
        gen_ai.tool.name = tracing::field::Empty,
        tollgate.server = %server,
        tollgate.grant = %caller.grant,
        tollgate.agent = %caller.agent,
    );
    if method == "tools/call"
        && let Some(tool) = message.pointer("/params/name").and_then(Value::as_str)
    {
        span.record("gen_ai.tool.name", tool);
    }
    let meta = message.pointer("/params/_meta");
    let from_meta = meta
        .and_then(|m| m.get("traceparent"))
        .and_then(Value::as_str)
        .and_then(|tp| {
            propagation::from_traceparent(tp, meta.and_then(|m| m.get("tracestate")).and_then(Value::as_str))
        });
    propagation::set_parent(&span, from_meta.or_else(|| propagation::from_http_headers(headers)));
    span
}

/// Counts a request in `tollgate_requests_in_flight` while it is alive.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        metrics().requests_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().requests_in_flight.dec();
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(jsonrpc::error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            jsonrpc::INVALID_REQUEST,
            &format!("request body exceeds the limit of {limit} bytes"),
            None,
        )),
        Err(e) => Err(jsonrpc::error_response(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::INVALID_REQUEST,
            &format!("could not read the request body: {e}"),
            None,
        )),
    }
}

/// Batches pass through, unless they hold something the edge must decide or filter.
fn check_batch(items: &[Value]) -> Result<(), String> {
    if items.is_empty() {
        return Err("invalid JSON-RPC message: empty batch".into());
    }
    for item in items {
        match jsonrpc::classify(item) {
            Err(message) => return Err(format!("invalid JSON-RPC message in batch: {message}")),
            Ok(Message::Request {
                method: "tools/call" | "tools/list",
                ..
            }) => {
                return Err("Tollgate does not accept tools/call or tools/list inside a JSON-RPC batch: send them one per request".into());
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

async fn pass_through(
    gw: &Gateway,
    upstream: &Upstream,
    headers: &HeaderMap,
    bytes: Bytes,
    id: Option<&Value>,
) -> Response {
    match gw.forward(upstream, Method::POST, headers, Body::from(bytes), id).await {
        Ok(response) => stream_back(response),
        Err(response) => response,
    }
}

async fn call_tool(
    gw: &Gateway,
    upstream: &Upstream,
    caller: &Caller,
    headers: &HeaderMap,
    id: &Value,
    params: Option<&Value>,
    bytes: Bytes,
) -> Response {
    let Some(tool) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return jsonrpc::json_response(
            StatusCode::OK,
            &jsonrpc::error_body(
                Some(id),
                jsonrpc::INVALID_PARAMS,
                "tools/call needs params.name (a string)",
                None,
            ),
        );
    };
    let arguments = params.and_then(|p| p.get("arguments"));
    if arguments.is_some_and(|a| !a.is_object() && !a.is_null()) {
        return jsonrpc::json_response(
            StatusCode::OK,
            &jsonrpc::error_body(
                Some(id),
                jsonrpc::INVALID_PARAMS,
                "tools/call params.arguments must be an object",
                None,
            ),
        );
    }
    let annotations = gw
        .annotations
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&upstream.name)
        .and_then(|tools| tools.get(tool))
        .copied();
    let request = DecideRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        server: upstream.name.clone(),
        tool: tool.to_owned(),
        grant: caller.grant.clone(),
        agent: caller.agent.clone(),
        session_id: header_text(headers, "mcp-session-id"),
        arguments_json: arguments.map(Value::to_string).unwrap_or_default(),
        annotations,
    };
    let decision = match gw.decider.decide(request).await {
        Ok(decision) => decision,
        Err(DecisionUnavailable(cause)) if gw.settings.fail_open => {
            metrics().decision_unavailable.inc();
            tracing::warn!(tool, grant = %caller.grant, "decision service unavailable, forwarding unchecked (edge.fail_open): {cause}");
            return pass_through(gw, upstream, headers, bytes, Some(id)).await;
        }
        Err(DecisionUnavailable(cause)) => {
            metrics().decision_unavailable.inc();
            tracing::error!(tool, grant = %caller.grant, "decision service unavailable, refusing the call: {cause}");
            refusal::unavailable(&cause)
        }
    };
    if decision.verdict() == Verdict::Allow {
        return pass_through(gw, upstream, headers, bytes, Some(id)).await;
    }
    jsonrpc::json_response(StatusCode::OK, &refusal::body(id, &decision, gw.settings.refusal))
}

async fn list_tools(
    gw: &Arc<Gateway>,
    upstream: &Upstream,
    caller: &Caller,
    headers: &HeaderMap,
    id: &Value,
    bytes: Bytes,
) -> Response {
    let response = match gw
        .forward(upstream, Method::POST, headers, Body::from(bytes), Some(id))
        .await
    {
        Ok(r) => r,
        Err(response) => return response,
    };
    let (parts, body) = response.into_parts();
    let out_headers = upstream::response_headers(&parts.headers);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/event-stream") {
        let body = filter_event_stream(gw.clone(), upstream.name.clone(), caller.clone(), id.clone(), body);
        return (parts.status, out_headers, body).into_response();
    }
    if !parts.status.is_success() {
        return (parts.status, out_headers, Body::new(body)).into_response();
    }
    let bad_answer = |what: String| {
        let message = format!("upstream MCP server \"{}\" sent {what}", upstream.name);
        jsonrpc::error_response(
            StatusCode::BAD_GATEWAY,
            Some(id),
            jsonrpc::UPSTREAM_ERROR,
            &message,
            None,
        )
    };
    let bytes = match Limited::new(body, MAX_TOOLS_LIST_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return bad_answer(format!("an unreadable tools/list answer: {e}")),
    };
    let Ok(mut message) = serde_json::from_slice::<Value>(&bytes) else {
        return bad_answer("a tools/list answer that is not JSON".into());
    };
    filter_tools_answer(gw, &upstream.name, caller, &mut message).await;
    (parts.status, out_headers, message.to_string()).into_response()
}

/// Filters the `tools` of a `tools/list` answer to what `caller` may call, learning the
/// tools' annotations on the way. Without a decision service the answer becomes an error
/// (fail closed) unless `edge.fail_open` is set.
async fn filter_tools_answer(gw: &Gateway, server: &str, caller: &Caller, message: &mut Value) {
    let Some(tools) = message.pointer("/result/tools").and_then(Value::as_array) else {
        return;
    };
    let listed: Vec<Tool> = tools
        .iter()
        .filter_map(|t| {
            let name = t.get("name")?.as_str()?.to_owned();
            Some(Tool {
                name,
                annotations: Some(annotations_of(t)),
            })
        })
        .collect();
    {
        let mut cache = gw.annotations.write().unwrap_or_else(|e| e.into_inner());
        let known = cache.entry(server.to_owned()).or_default();
        for t in &listed {
            if let Some(a) = t.annotations {
                known.insert(t.name.clone(), a);
            }
        }
    }
    let request = VisibleToolsRequest {
        server: server.to_owned(),
        grant: caller.grant.clone(),
        agent: caller.agent.clone(),
        tools: listed,
    };
    match gw.decider.visible_tools(request).await {
        Ok(answer) => {
            let visible: std::collections::HashSet<&str> = answer.visible.iter().map(String::as_str).collect();
            if let Some(Value::Array(tools)) = message.pointer_mut("/result/tools") {
                tools.retain(|t| {
                    t.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| visible.contains(n))
                });
            }
        }
        Err(DecisionUnavailable(cause)) if gw.settings.fail_open => {
            tracing::warn!(
                server,
                "decision service unavailable, tools/list unfiltered (edge.fail_open): {cause}"
            );
        }
        Err(DecisionUnavailable(cause)) => {
            tracing::error!(server, "decision service unavailable, refusing tools/list: {cause}");
            let id = message.get("id").cloned();
            let text = format!(
                "the decision service is unavailable ({cause}), so Tollgate cannot tell which tools you may use; try again shortly"
            );
            *message = jsonrpc::error_body(id.as_ref(), jsonrpc::INTERNAL_ERROR, &text, None);
        }
    }
}

fn annotations_of(tool: &Value) -> ToolAnnotations {
    let hint = |name: &str| {
        tool.get("annotations")
            .and_then(|a| a.get(name))
            .and_then(Value::as_bool)
    };
    ToolAnnotations {
        read_only_hint: hint("readOnlyHint"),
        destructive_hint: hint("destructiveHint"),
        idempotent_hint: hint("idempotentHint"),
        open_world_hint: hint("openWorldHint"),
    }
}

/// Passes an SSE answer through event by event, rewriting only the `tools/list` response.
fn filter_event_stream(gw: Arc<Gateway>, server: String, caller: Caller, id: Value, mut body: Incoming) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut splitter = sse::EventSplitter::default();
        while let Some(frame) = body.frame().await {
            let chunk = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            splitter.push(&chunk);
            while let Some(event) = splitter.next_event() {
                let event = match sse::data(&event).and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
                    Some(mut message) if message.get("id") == Some(&id) => {
                        filter_tools_answer(&gw, &server, &caller, &mut message).await;
                        sse::with_data(&event, &message.to_string())
                    }
                    _ => event,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return; // the agent went away
                }
            }
        }
        let rest = splitter.rest();
        if !rest.is_empty() {
            let _ = tx.send(Ok(rest)).await;
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}

/// Streams an upstream answer back with only the headers agents may see.
fn stream_back(response: axum::http::Response<Incoming>) -> Response {
    let (parts, body) = response.into_parts();
    (
        parts.status,
        upstream::response_headers(&parts.headers),
        Body::new(body),
    )
        .into_response()
}

fn upstream_error(error: &UpstreamError, id: Option<&Value>) -> Response {
    jsonrpc::error_response(error.status(), id, jsonrpc::UPSTREAM_ERROR, &error.to_string(), None)
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
