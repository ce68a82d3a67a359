//! `tools/list`, `resources/list` and `prompts/list`: forwarded, and the answer filtered to
//! what the caller could ever call, read or get ([`crate::guard`]); an answer the edge cannot
//! check is not passed on.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::exchange::Exchange;
use crate::guard::{Refused, guarded};
use crate::request::content_type_is;
use crate::{jsonrpc, upstream};

/// `method` is the list method's name, for messages.
pub(crate) async fn list(exchange: &Exchange<'_>, method: &str, message: &Value, id: &Value) -> Response {
    let gw = exchange.gw;
    let upstream = exchange.upstream;
    let response = match exchange.send(message, Some(id)).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    if content_type_is(response.headers(), "text/event-stream") {
        return guarded(response, exchange.list_filter(), Some(id.clone())).await;
    }
    let (parts, body) = response.into_parts();
    // Nothing of an answer the edge could not check is passed on: not its body, and for a
    // server error not its status either. An error status never carries a list through.
    let fail = |what: &str| {
        tracing::warn!(upstream = %upstream.name, status = parts.status.as_u16(), "upstream sent {what} to {method}");
        let status = if parts.status.is_client_error() {
            parts.status
        } else {
            StatusCode::BAD_GATEWAY
        };
        let message = format!(
            "upstream MCP server \"{}\" answered {method} with HTTP {} and {what}",
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
