//! Checks every MCP POST passes before anything looks at its content: content type, one
//! bounded `Mcp-Session-Id`, a body read within its size and time limits, batches that
//! hold nothing the edge must decide one at a time; and the header helpers the handlers
//! share.

// Helpers return a ready answer for the agent as their error (`Result<_, Response>`).
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::jsonrpc::{self, Message};
use crate::method::McpMethod;
use crate::settings::EdgeSettings;

/// Longest `Mcp-Session-Id` accepted.
const MAX_SESSION_ID_BYTES: usize = 256;

/// One `Mcp-Session-Id` at most, and a bounded one: the upstream must see the same single
/// session the edge reports in spans and session-scoped counters.
/// Longest `Mcp-Session-Id` of a per-server endpoint.
pub(crate) const MAX_SESSION_BYTES: usize = MAX_SESSION_ID_BYTES;

pub(crate) fn check_session_header(headers: &HeaderMap) -> Result<(), Response> {
    check_session_header_max(headers, MAX_SESSION_ID_BYTES)
}

/// [`check_session_header`] with another bound (the aggregated endpoint's session ids hold
/// the upstreams' ones).
pub(crate) fn check_session_header_max(headers: &HeaderMap, max: usize) -> Result<(), Response> {
    let mut values = headers.get_all("mcp-session-id").iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(bad_request(
            StatusCode::BAD_REQUEST,
            "send one Mcp-Session-Id header, not several",
        ));
    }
    if first.is_some_and(|v| v.len() > max || v.to_str().is_err()) {
        return Err(bad_request(
            StatusCode::BAD_REQUEST,
            &format!("Mcp-Session-Id must be visible ASCII of at most {max} bytes"),
        ));
    }
    Ok(())
}

pub(crate) fn bad_request(status: StatusCode, message: &str) -> Response {
    jsonrpc::error_response(status, None, jsonrpc::INVALID_REQUEST, message, None)
}

/// Reads a request body within `edge.max_body_bytes` and `edge.body_read_timeout_ms`.
pub(crate) async fn read_body(body: Body, settings: &EdgeSettings) -> Result<Bytes, Response> {
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

/// A POST's JSON body: `Content-Type` checked, at most one session id of at most
/// `max_session_bytes`, the body read within its limits and parsed strictly.
pub(crate) async fn read_json(
    headers: &HeaderMap,
    body: Body,
    settings: &EdgeSettings,
    max_session_bytes: usize,
) -> Result<Value, Response> {
    if !content_type_is(headers, "application/json") {
        return Err(bad_request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    check_session_header_max(headers, max_session_bytes)?;
    let bytes = read_body(body, settings).await?;
    jsonrpc::parse_request(&bytes).map_err(|e| {
        jsonrpc::error_response(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::PARSE_ERROR,
            &format!("parse error: {e}"),
            None,
        )
    })
}

/// One message classified; one that is not a valid JSON-RPC message is answered 400.
pub(crate) fn classify(value: &Value) -> Result<jsonrpc::Message<'_>, Response> {
    jsonrpc::classify(value).map_err(|message| {
        jsonrpc::error_response(
            StatusCode::BAD_REQUEST,
            value.get("id").filter(|id| jsonrpc::valid_id(id)),
            jsonrpc::INVALID_REQUEST,
            &format!("invalid JSON-RPC message: {message}"),
            None,
        )
    })
}

/// Batches are forwarded (re-serialised) unless they hold a message the edge must decide
/// or filter, which must come one per request.
pub(crate) fn check_batch(items: &[Value]) -> Result<(), String> {
    if items.is_empty() {
        return Err("invalid JSON-RPC message: empty batch".into());
    }
    // Only what the edge forwards as it is may travel in a batch: responses, notifications
    // and a few requests whose answers hold nothing the edge filters or seals. Anything the
    // edge decides, filters, checks or seals (calls, lists, subscriptions, completions,
    // tasks, discovery) goes one per POST, where it is checked.
    for item in items {
        match jsonrpc::classify(item) {
            Err(message) => return Err(format!("invalid JSON-RPC message in batch: {message}")),
            Ok(Message::Request { method, name, .. })
                if !matches!(
                    method,
                    McpMethod::Ping | McpMethod::LoggingSetLevel | McpMethod::ResourcesUnsubscribe
                ) =>
            {
                return Err(format!(
                    "Tollgate accepts only ping, logging/setLevel and resources/unsubscribe requests inside a \
                     JSON-RPC batch (with notifications and responses): send {} in its own POST",
                    jsonrpc::printable(name, 64)
                ));
            }
            Ok(_) if crate::tasks::names_a_task(item) || item.pointer("/params/task").is_some() => {
                return Err(
                    "a message naming a task cannot travel in a JSON-RPC batch: send it in its own POST".into(),
                );
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Whether the agent takes an SSE answer (`Accept: text/event-stream`, as MCP clients
/// must send); only such an agent's call can be held open.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().to_ascii_lowercase().starts_with("text/event-stream"))
        })
    })
}

/// Whether `Content-Type` names `media_type` (case-insensitive, parameters allowed).
pub(crate) fn content_type_is(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with(media_type))
}

pub(crate) fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
