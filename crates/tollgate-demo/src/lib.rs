//! `tollgate demo-upstream`: an MCP server (Streamable HTTP at `/mcp`) exposing
//! Kubernetes-style tools that change nothing, so Tollgate has something to protect in the
//! quick start and in tests. Every tool answers with text that echoes its arguments.
//!
//! Sessions: `initialize` hands out an `Mcp-Session-Id`; requests without one are served
//! too (stateless), requests with an unknown one get 404, `DELETE` ends a session. It also
//! speaks MCP 2026-07-28 (`modern.rs`): requests that declare it in `params._meta` are
//! served without a session, with `server/discover`.
//! `GET /stats` counts the `tools/call` requests received, per tool, and the POSTs per HTTP
//! version. It speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN `h2` over TLS).

mod modern;
mod tools;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Protocol revisions this server speaks, newest first.
const PROTOCOL_VERSIONS: [&str; 2] = ["2025-06-18", "2025-03-26"];
const SESSION_HEADER: &str = "mcp-session-id";

/// How the demo server answers POSTs.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoOptions {
    /// Answer requests as an SSE stream (when the client accepts it) instead of JSON.
    pub sse: bool,
    /// Page `tools/list` answers this many tools at a time (`nextCursor`); all at once
    /// when `None`.
    pub page_size: Option<usize>,
}

#[derive(Clone)]
struct Demo {
    options: DemoOptions,
    sessions: Arc<Mutex<HashSet<String>>>,
}

/// The demo server's routes, for embedding (`tollgate up --demo`) and tests.
pub fn router(options: DemoOptions) -> Router {
    let state = Demo {
        options,
        sessions: Arc::default(),
    };
    Router::new()
        .route("/mcp", post(handle_post).get(handle_get).delete(handle_delete))
        .route("/stats", axum::routing::get(|| async { axum::Json(tools::stats()) }))
        .with_state(state)
}

/// Serves the demo server on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    options: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(options))
        .with_graceful_shutdown(shutdown)
        .await
}

impl Demo {
    /// Checks the session header: the 404 answer for a session this server does not know.
    fn unknown_session(&self, headers: &HeaderMap) -> Option<Response> {
        let id = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok())?;
        let known = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).contains(id);
        (!known).then(|| jsonrpc_error_response(StatusCode::NOT_FOUND, Value::Null, -32001, "session not found"))
    }
}

async fn handle_post(
    State(demo): State<Demo>,
    version: axum::http::Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tools::count_version(version);
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        )
            .into_response();
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return jsonrpc_error_response(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                &format!("parse error: {e}"),
            );
        }
    };
    if modern::declared(&message).is_some() {
        return handle_modern(&demo, &headers, &message);
    }
    let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
    if !is_initialize && let Some(response) = demo.unknown_session(&headers) {
        return response;
    }
    let (batch, messages) = match message {
        Value::Array(items) => (true, items),
        single => (false, vec![single]),
    };
    let mut replies = Vec::new();
    for m in &messages {
        if let Some(reply) = handle_message(m, demo.options.page_size) {
            replies.push(reply);
        }
    }
    if replies.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    let mut extra = HeaderMap::new();
    if is_initialize {
        let id = uuid::Uuid::new_v4().to_string();
        demo.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        if let Ok(v) = HeaderValue::from_str(&id) {
            extra.insert(SESSION_HEADER, v);
        }
    }
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let mut response = if demo.options.sse && accepts_sse {
        let events: String = replies
            .iter()
            .map(|r| format!("event: message\ndata: {r}\n\n"))
            .collect();
        ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response()
    } else {
        let body = if batch {
            Value::Array(replies)
        } else {
            replies.remove(0)
        };
        ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    };
    response.headers_mut().extend(extra);
    response
}

/// A 2026-07-28 request: checked, answered without a session (JSON, or one SSE event when
/// the server answers in SSE and the client accepts it).
fn handle_modern(demo: &Demo, headers: &HeaderMap, message: &Value) -> Response {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    if let Err((status, code, text, data)) = modern::check(headers, message, &PROTOCOL_VERSIONS) {
        let mut error = json!({"code": code, "message": text});
        if let Some(data) = data {
            error["data"] = data;
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "error": error});
        return (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    }
    let method = message.get("method").and_then(Value::as_str).unwrap_or_default();
    if message.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "server/discover" => Ok(modern::discover(&PROTOCOL_VERSIONS)),
        "tools/list" => list_tools(&params, demo.options.page_size),
        "tools/call" => tools::call(&params),
        // `initialize` and `ping` are gone from 2026-07-28.
        other => Err((-32601, format!("method not found: {other}"))),
    };
    let reply = match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": modern::finish(method, result)}),
        Err((code, text)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": text}}),
    };
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if demo.options.sse && accepts_sse {
        let event = format!("event: message\ndata: {reply}\n\n");
        return ([(header::CONTENT_TYPE, "text/event-stream")], event).into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], reply.to_string()).into_response()
}

/// One page of the tools: the cursor is the offset of the page's first tool.
fn list_tools(params: &Value, page_size: Option<usize>) -> Result<Value, (i64, String)> {
    let all = tools::definitions();
    let Some(size) = page_size.filter(|n| *n > 0) else {
        return Ok(json!({"tools": all}));
    };
    let start = match params.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(cursor) => cursor
            .as_str()
            .and_then(|c| c.parse::<usize>().ok())
            .filter(|n| *n < all.len())
            .ok_or((-32602, "invalid cursor".to_owned()))?,
    };
    let end = (start + size).min(all.len());
    let mut page = json!({"tools": all[start..end]});
    if end < all.len() {
        page["nextCursor"] = json!(end.to_string());
    }
    Ok(page)
}

/// Answers one JSON-RPC message; `None` for notifications and responses.
fn handle_message(message: &Value, page_size: Option<usize>) -> Option<Value> {
    let method = message.get("method").and_then(Value::as_str)?;
    let id = message.get("id")?.clone();
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or("");
            let version = PROTOCOL_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .copied()
                .unwrap_or(PROTOCOL_VERSIONS[0]);
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "tollgate-demo-upstream", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "A demo Kubernetes server: every tool only echoes what it would have done."
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => list_tools(&params, page_size),
        "tools/call" => tools::call(&params),
        other => Err((-32601, format!("method not found: {other}"))),
    };
    Some(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    })
}

async fn handle_get(State(demo): State<Demo>, headers: HeaderMap) -> Response {
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !accepts_sse {
        return (StatusCode::NOT_ACCEPTABLE, "GET /mcp needs Accept: text/event-stream").into_response();
    }
    if let Some(response) = demo.unknown_session(&headers) {
        return response;
    }
    let hello = json!({
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"level": "info", "logger": "demo-upstream", "data": "server-to-client stream open"}
    });
    let first = futures_util::stream::once(async move {
        Ok::<_, std::convert::Infallible>(Bytes::from(format!("event: message\ndata: {hello}\n\n")))
    });
    let keepalive = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(Duration::from_secs(15))),
        |_| Ok(Bytes::from_static(b": keep-alive\n\n")),
    );
    let body = Body::from_stream(futures_util::StreamExt::chain(first, keepalive));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn handle_delete(State(demo): State<Demo>, headers: HeaderMap) -> Response {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "DELETE /mcp needs an Mcp-Session-Id header").into_response();
    };
    if demo.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

fn jsonrpc_error_response(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
