//! The demo server's 2026-07-28 (stateless) side: a request that carries
//! `io.modelcontextprotocol/protocolVersion` in `params._meta` is answered without a session,
//! after its routing headers are checked against its body, and its results say they are
//! complete (`resultType`) and how they may be cached. `server/discover` tells clients which
//! revisions it speaks.
//!
//! Written by hand rather than on the official Rust SDK (`rmcp`). Evaluated (rmcp 3.11.0,
//! December 2026): rmcp speaks 2026-07-28 (its tower Streamable HTTP server serves requests
//! of that revision statelessly, with `server/discover` and MRTR types), so building the demo
//! on it is possible now. It has not been done yet because the demo is also the fixture the
//! gateway's tests pin wire details on, in both eras: `GET /stats` counters per tool and HTTP
//! version, h2c, the JSON-or-SSE switch (`--sse`), `tools/list` pages (`--page-size`), serving
//! session-era requests without a session, 404 for unknown sessions; each would have to be
//! rebuilt around rmcp's server and re-checked against those tests. Interop with real SDK
//! servers of the new revision is shown with the Python SDK's `MCPServer`
//! (`tests/protocol.rs`).

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// The stateless revision this server speaks.
pub(crate) const VERSION: &str = "2026-07-28";
const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// The revision a message declares in its `params._meta`, if it declares one.
pub(crate) fn declared(message: &Value) -> Option<&Value> {
    message.get("params")?.get("_meta")?.get(PROTOCOL_VERSION_KEY)
}

/// Why a stateless request is refused before it is served: HTTP status, JSON-RPC code,
/// message and data.
pub(crate) type Refusal = (StatusCode, i64, String, Option<Value>);

/// Checks the revision and the routing headers of a stateless request.
pub(crate) fn check(headers: &HeaderMap, message: &Value, legacy: &[&str]) -> Result<(), Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let declared = declared(message).and_then(Value::as_str).unwrap_or_default();
    let mismatch = |what: &str| {
        Err((
            StatusCode::BAD_REQUEST,
            -32020,
            format!("the {what} header does not match the request body"),
            None,
        ))
    };
    if header("mcp-protocol-version") != Some(declared) {
        return mismatch("MCP-Protocol-Version");
    }
    let method = message.get("method").and_then(Value::as_str);
    if header("mcp-method") != method {
        return mismatch("Mcp-Method");
    }
    let named = match method {
        Some("tools/call") => message.pointer("/params/name").and_then(Value::as_str),
        _ => None,
    };
    if named.is_some() && header("mcp-name") != named {
        return mismatch("Mcp-Name");
    }
    if declared != VERSION {
        let supported: Vec<&str> = std::iter::once(VERSION).chain(legacy.iter().copied()).collect();
        return Err((
            StatusCode::BAD_REQUEST,
            -32022,
            "Unsupported protocol version".into(),
            Some(json!({"supported": supported, "requested": declared})),
        ));
    }
    Ok(())
}

/// `server/discover`'s result.
pub(crate) fn discover(legacy: &[&str]) -> Value {
    let supported: Vec<&str> = std::iter::once(VERSION).chain(legacy.iter().copied()).collect();
    json!({
        "supportedVersions": supported,
        "capabilities": {"tools": {"listChanged": false}},
        "instructions": "A demo Kubernetes server: every tool only echoes what it would have done.",
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "tollgate-demo-upstream", "version": env!("CARGO_PKG_VERSION")}},
        "ttlMs": 0,
        "cacheScope": "public",
        "resultType": "complete",
    })
}

/// A result of the stateless revision: complete, and (for lists, the same for every caller
/// of this demo) cacheable by anyone for a minute.
pub(crate) fn finish(method: &str, mut result: Value) -> Value {
    if let Some(object) = result.as_object_mut() {
        object.insert("resultType".into(), json!("complete"));
        if method == "tools/list" {
            object.insert("ttlMs".into(), json!(60_000));
            object.insert("cacheScope".into(), json!("public"));
        }
    }
    result
}
