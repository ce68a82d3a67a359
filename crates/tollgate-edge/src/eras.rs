//! An upstream that does not speak the client's revision: what the agent is told when an
//! upstream refuses a 2026-07-28 request at the HTTP level.

use axum::response::Response;
use serde_json::{Value, json};

use crate::jsonrpc;
use crate::protocol::{MODERN_VERSIONS, SESSION_VERSIONS, UNSUPPORTED_PROTOCOL_VERSION};

/// The agent's answer when an upstream refused a 2026-07-28 request at the HTTP level (400,
/// 404, 405, 406). An upstream that answers without reading the request (a JSON-RPC error
/// with no id, a body that is not JSON-RPC, 405/406), or says `UnsupportedProtocolVersion`,
/// does not speak the revision: the agent gets 400 `-32022` naming the upstream and the
/// revisions it can use with it, so a client that falls back (the SDKs' "auto" modes) starts
/// a session instead. Any other refusal is named with its status and (escaped) text.
pub(crate) fn upstream_refused(
    server: &str,
    method: &str,
    status: axum::http::StatusCode,
    body: &[u8],
    id: Option<&Value>,
) -> Response {
    let answer = jsonrpc::parse_strict(body).ok().filter(Value::is_object);
    let error = answer.as_ref().and_then(|a| a.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_i64);
    let said = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(|t| format!(": \"{}\"", jsonrpc::printable(t, 200)))
        .unwrap_or_default();
    let unread = answer.as_ref().is_none_or(|a| a.get("id").is_none_or(Value::is_null));
    if code == Some(UNSUPPORTED_PROTOCOL_VERSION) || unread || matches!(status.as_u16(), 405 | 406) {
        // What the upstream says it speaks, when it says (visible text only, bounded).
        let theirs: Vec<String> = error
            .and_then(|e| e.pointer("/data/supported"))
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(Value::as_str)
                    .filter(|s| s.len() <= 32 && s.bytes().all(|b| b.is_ascii_graphic()))
                    .take(16)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let supported: Vec<String> = if theirs.is_empty() {
            SESSION_VERSIONS.iter().rev().map(|v| (*v).to_owned()).collect()
        } else {
            theirs
        };
        let text = format!(
            "upstream MCP server \"{server}\" does not speak MCP {} (it answered {method} with HTTP {}{said}); \
             it speaks {}: connect to it in one of those (for the session era, start with initialize)",
            MODERN_VERSIONS[0],
            status.as_u16(),
            supported.join(", ")
        );
        let data = json!({"supported": supported, "server": server});
        return jsonrpc::error_response(
            axum::http::StatusCode::BAD_REQUEST,
            id,
            UNSUPPORTED_PROTOCOL_VERSION,
            &text,
            Some(data),
        );
    }
    let text = format!(
        "upstream MCP server \"{server}\" answered {method} with HTTP {}{said}",
        status.as_u16()
    );
    jsonrpc::error_response(status, id, jsonrpc::UPSTREAM_ERROR, &text, None)
}
