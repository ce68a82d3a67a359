//! `server/discover` on `/mcp/{server}` (MCP 2026-07-28): forwarded, and its capabilities
//! narrowed to what the caller may use. For each of `tools`, `prompts` and `resources` the
//! upstream offers, the edge reads the first page of that list (in the same revision) and
//! filters it as it filters any list; a capability whose filtered list is empty (and has no
//! further page) is left out, since nothing of it is the caller's to use. A list the edge
//! cannot read keeps its capability (calls are decided one by one anyway). The answer is
//! one caller's view: `cacheScope: "private"`, fresh no longer than `edge.list_cache_ms`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::exchange::Exchange;
use crate::guard::guarded;
use crate::request::content_type_is;
use crate::{jsonrpc, protocol, upstream};

/// The capabilities that name lists, and each list's method.
const LISTED: [(&str, &str); 3] = [
    ("tools", "tools/list"),
    ("prompts", "prompts/list"),
    ("resources", "resources/list"),
];

pub(crate) async fn per_server(exchange: &Exchange<'_>, message: &Value, id: &Value) -> Response {
    let response = match exchange.send(message, Some(id)).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    if !response.status().is_success() || content_type_is(response.headers(), "text/event-stream") {
        return guarded(response, exchange.list_filter(), Some(id.clone())).await;
    }
    let (parts, body) = response.into_parts();
    let Some(mut answer) = read(exchange, body).await else {
        let text = format!(
            "upstream MCP server \"{}\" answered server/discover with a body Tollgate cannot read",
            exchange.upstream.name
        );
        return jsonrpc::error_response(StatusCode::BAD_GATEWAY, Some(id), jsonrpc::UPSTREAM_ERROR, &text, None);
    };
    if let Some(result) = answer.get_mut("result").and_then(Value::as_object_mut) {
        let offered: Vec<&str> = LISTED
            .iter()
            .filter(|(name, _)| result.get("capabilities").and_then(|c| c.get(*name)).is_some())
            .map(|(name, _)| *name)
            .collect();
        let used = futures_util::future::join_all(offered.iter().map(|name| async move {
            let method = LISTED.iter().find(|(n, _)| n == name).map_or("", |(_, m)| m);
            (*name, uses_any(exchange, name, method).await)
        }))
        .await;
        if let Some(capabilities) = result.get_mut("capabilities").and_then(Value::as_object_mut) {
            for (name, any) in used {
                if !any {
                    capabilities.remove(name);
                }
            }
        }
        let most = exchange.gw.settings.list_cache_ms;
        let ttl = result.get("ttlMs").and_then(Value::as_u64).unwrap_or(0).min(most);
        result.insert("ttlMs".into(), json!(ttl));
        result.insert("cacheScope".into(), json!("private"));
    }
    let mut headers = upstream::response_headers(&parts.headers);
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    (parts.status, headers, answer.to_string()).into_response()
}

/// Whether the caller may use anything of the upstream's `name` list (its first page,
/// filtered); true when the edge cannot tell.
async fn uses_any(exchange: &Exchange<'_>, name: &str, method: &str) -> bool {
    let id = json!(format!("tollgate-discover-{name}"));
    let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"_meta": protocol::envelope()}});
    let Ok(response) = exchange.send(&request, Some(&id)).await else {
        return true;
    };
    if !response.status().is_success() || content_type_is(response.headers(), "text/event-stream") {
        return true;
    }
    let Some(mut answer) = read(exchange, response.into_body()).await else {
        return true;
    };
    if exchange.list_filter().filter(&mut answer).await.is_err() {
        return true;
    }
    let result = answer.get("result");
    let listed = result.and_then(|r| r.get(name)).and_then(Value::as_array);
    let more = result.and_then(|r| r.get("nextCursor")).is_some_and(|c| !c.is_null());
    listed.is_none_or(|l| !l.is_empty()) || more
}

/// A JSON answer, read within the edge's limits.
async fn read(exchange: &Exchange<'_>, body: hyper::body::Incoming) -> Option<Value> {
    let bytes = exchange
        .read_body(body, exchange.gw.settings.max_upstream_message_bytes)
        .await?;
    jsonrpc::parse_strict(&bytes).ok().filter(Value::is_object)
}
