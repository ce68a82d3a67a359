//! One resolution of every request. Each front door (`/mcp/{server}`, `/mcp`) resolves a
//! request once, here, into typed values that every later step takes as they are:
//!
//! - the upstream it reaches ([`upstream`]): from the decoded path segment or the
//!   aggregated name, checked once against the grant's `servers` and the token's scopes by
//!   [`Gateway::reach`], on every method (POST, GET, DELETE);
//! - the protocol era ([`Era`]);
//! - for a decided method, the [`Call`]: its kind, the name (tool, prompt) or URI the
//!   upstream acts on, and its exact arguments. The decision request, approvals, counters
//!   and the forwarded message all read the one message the call owns, so what is decided
//!   is byte for byte what is forwarded.
//!
//! Nothing after this module reads the raw path, the agent's name or its arguments again.

// Helpers return a ready answer for the agent as their error (`Result<_, Response>`).
#![allow(clippy::result_large_err)]

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tollgate_api::proto::SubjectKind;

use crate::auth::Caller;
use crate::gateway::{Gateway, Unreached};
use crate::jsonrpc;
use crate::settings::{EdgeSettings, RefusalMode};
use crate::upstream::Upstream;

/// The MCP protocol era a request belongs to, from its `MCP-Protocol-Version` header (MCP:
/// a request without one is 2025-03-26). The handlers take it from the resolved request;
/// eras differ in how sessions and server-to-client messages work, not in what is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Era {
    /// 2025-03-26 to 2025-11-25: sessions (`initialize`, `Mcp-Session-Id`).
    Sessions,
    /// 2026-07-28 and later: stateless requests.
    Stateless,
}

impl Era {
    /// The first revision of the stateless era.
    const STATELESS: &'static str = "2026-07-28";

    pub(crate) fn of(headers: &HeaderMap) -> Era {
        match headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok()) {
            // Revisions are dates: later ones sort after earlier ones.
            Some(v) if v.len() == Self::STATELESS.len() && v >= Self::STATELESS => Era::Stateless,
            _ => Era::Sessions,
        }
    }
}

/// The upstream of a `/mcp/{server}` request: `server` is the decoded path segment, the
/// same text the request is routed by. Unknown upstreams and those outside the grant's
/// `servers` get the same 404 (listing only what the caller reaches); a token without the
/// upstream's scopes gets 403 `insufficient_scope`.
pub(crate) fn upstream<'g>(
    gw: &'g Gateway,
    caller: &Caller,
    server: &str,
    headers: &HeaderMap,
) -> Result<&'g Upstream, Response> {
    gw.reach(caller, server)
        .map_err(|why| unreached(gw, caller, server, headers, why))
}

/// The answer for a request to an upstream the caller does not reach.
pub(crate) fn unreached(gw: &Gateway, caller: &Caller, server: &str, headers: &HeaderMap, why: Unreached) -> Response {
    match why {
        Unreached::Unknown => {
            if gw.upstreams.contains_key(server) {
                tracing::info!(grant = %caller.grant, server = %server, "refused: the upstream is outside the grant's [[grants]] servers");
            }
            let message = format!(
                "unknown MCP server \"{}\"; this grant reaches: {}",
                jsonrpc::printable(server, 64),
                gw.reachable_names(caller).join(", ")
            );
            jsonrpc::error_response(StatusCode::NOT_FOUND, None, jsonrpc::INVALID_REQUEST, &message, None)
        }
        Unreached::MissingScopes { required, missing } => {
            tracing::info!(issuer = ?caller.issuer, subject = ?caller.subject, server = %server, "token lacks required scopes");
            gw.auth.insufficient_scope(headers, server, &required, &missing)
        }
    }
}

/// A `tools/call`, `resources/read` or `prompts/get`, resolved: the message as it will be
/// decided and forwarded, and what was checked of it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) kind: SubjectKind,
    /// The request's id.
    pub(crate) id: Value,
    /// The whole message; its `params.name` (`params.uri`) and `params.arguments` are what
    /// the call is decided on.
    message: Value,
    /// Task-augmented (`params.task`, protocol 2025-11-25): refusals must be JSON-RPC
    /// errors, since such clients expect a task, not a tool result.
    pub(crate) is_task: bool,
    /// `params._meta.progressToken`, when the agent asked for progress notifications.
    pub(crate) progress_token: Option<Value>,
}

impl Call {
    /// Resolves a decided method's message; the error is the text of an invalid-params
    /// answer. On `/mcp`, `message` already names the upstream's own tool or prompt.
    pub(crate) fn new(kind: SubjectKind, message: Value) -> Result<Call, String> {
        let method = tollgate_api::subject_method(kind);
        let field = subject_field(kind);
        let needs = || format!("{method} needs params.{field} (a string)");
        let params = message.get("params").and_then(Value::as_object).ok_or_else(needs)?;
        let name = params.get(field).and_then(Value::as_str).ok_or_else(needs)?;
        tollgate_api::check_subject(kind, name).map_err(|e| match kind {
            SubjectKind::Tool => format!("invalid tool name: {e}"),
            SubjectKind::Resource => format!("invalid resource URI: {e}"),
            SubjectKind::Prompt => format!("invalid prompt name: {e}"),
        })?;
        match (kind, params.get("arguments").filter(|a| !a.is_null())) {
            (SubjectKind::Resource, Some(_)) => return Err("resources/read takes no params.arguments".into()),
            (_, Some(a)) if !a.is_object() => return Err(format!("{method} params.arguments must be an object")),
            // MCP: prompt arguments are strings. Anything else is refused rather than passed
            // to a server that may read it differently from the policy.
            (SubjectKind::Prompt, Some(Value::Object(a))) if !a.values().all(Value::is_string) => {
                return Err("prompts/get params.arguments values must be strings".into());
            }
            _ => {}
        }
        let progress_token = params
            .get("_meta")
            .and_then(|m| m.get("progressToken"))
            .filter(|t| t.as_str().is_some_and(|s| s.len() <= 256) || t.is_i64() || t.is_u64())
            .cloned();
        let is_task = params.get("task").is_some_and(|t| !t.is_null());
        let id = message.get("id").cloned().unwrap_or_default();
        Ok(Call {
            kind,
            id,
            is_task,
            progress_token,
            message,
        })
    }

    /// The tool name, resource URI or prompt name the upstream acts on.
    pub(crate) fn name(&self) -> &str {
        self.params()
            .and_then(|p| p.get(subject_field(self.kind)))
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The arguments exactly as they are forwarded (`None` when absent or null).
    pub(crate) fn arguments(&self) -> Option<&Value> {
        self.params().and_then(|p| p.get("arguments")).filter(|a| !a.is_null())
    }

    /// The message to forward: the one that was decided.
    pub(crate) fn message(&self) -> &Value {
        &self.message
    }

    /// The message, to put an upstream's own `requestState` back before the decision (see
    /// [`crate::mrtr`]); name and arguments stay as resolved.
    pub(crate) fn message_mut(&mut self) -> &mut Value {
        &mut self.message
    }

    fn params(&self) -> Option<&serde_json::Map<String, Value>> {
        self.message.get("params").and_then(Value::as_object)
    }

    /// How a refusal reaches the agent: only a `tools/call` result can carry `isError`, so
    /// reads, gets and task-augmented calls are refused with a JSON-RPC error.
    pub(crate) fn refusal_mode(&self, settings: &EdgeSettings) -> RefusalMode {
        if self.kind != SubjectKind::Tool || self.is_task {
            RefusalMode::Error
        } else {
            settings.refusal
        }
    }
}

/// The params field that names a subject of `kind`.
pub(crate) fn subject_field(kind: SubjectKind) -> &'static str {
    if kind == SubjectKind::Resource { "uri" } else { "name" }
}

/// An invalid-params answer to request `id`.
pub(crate) fn invalid_params(id: &Value, text: &str) -> Response {
    let body = jsonrpc::error_body(Some(id), jsonrpc::INVALID_PARAMS, text, None);
    jsonrpc::json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_era_comes_from_the_protocol_version_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(Era::of(&headers), Era::Sessions);
        headers.insert("mcp-protocol-version", "2025-11-25".parse().expect("value"));
        assert_eq!(Era::of(&headers), Era::Sessions);
        headers.insert("mcp-protocol-version", "2026-07-28".parse().expect("value"));
        assert_eq!(Era::of(&headers), Era::Stateless);
        headers.insert("mcp-protocol-version", "2026-07-28x".parse().expect("value"));
        assert_eq!(Era::of(&headers), Era::Sessions);
    }

    #[test]
    fn a_call_decides_on_what_it_forwards() {
        let message = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "pay", "arguments": {"to": "12345678901234567890", "amount": "0100.000"}}});
        let call = Call::new(SubjectKind::Tool, message.clone()).expect("valid");
        assert_eq!(call.name(), "pay");
        assert_eq!(call.id, json!(7));
        assert_eq!(call.arguments(), message.pointer("/params/arguments"));
        assert_eq!(call.message(), &message);
        assert!(Call::new(SubjectKind::Tool, json!({"id": 1, "params": {"name": 5}})).is_err());
        assert!(
            Call::new(
                SubjectKind::Resource,
                json!({"id": 1, "params": {"uri": "file:///a", "arguments": {}}})
            )
            .is_err()
        );
        assert!(
            Call::new(
                SubjectKind::Prompt,
                json!({"id": 1, "params": {"name": "p", "arguments": {"a": 1}}})
            )
            .is_err()
        );
    }
}
