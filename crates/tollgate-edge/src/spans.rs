//! The span of each MCP request, in the agent's trace.

use axum::http::HeaderMap;
use serde_json::Value;
use tollgate_telemetry::propagation;

use crate::auth::Caller;
use crate::jsonrpc::Message;
use crate::request::header_text;
use crate::resolve::Era;

/// The span of one MCP request, named after its method (`mcp tools/call`), continuing the
/// agent's trace: `params._meta.traceparent` when the request carries one, else the
/// `traceparent` header. Every field is bounded: the method and id were checked by
/// [`jsonrpc::classify`], the session id by [`crate::request::check_session_header`].
pub(crate) fn request_span(message: &Message<'_>, server: &str, caller: &Caller, headers: &HeaderMap) -> tracing::Span {
    let era = match Era::of(headers) {
        Era::Sessions => "sessions",
        Era::Stateless => "stateless",
    };
    let (method, params) = match message {
        Message::Request { name, params, .. } => (*name, *params),
        Message::Notification { name, .. } => (*name, None),
        Message::Response => ("response", None),
    };
    // Text that came over the wire is recorded as `&str`: quoted and escaped in log lines
    // (a session header cannot forge another field), as it is in OpenTelemetry attributes.
    let session = header_text(headers, "mcp-session-id");
    let id = message.id().map(serde_json::Value::to_string).unwrap_or_default();
    let span = tracing::info_span!(
        "mcp",
        otel.name = %format!("mcp {method}"),
        otel.kind = "server",
        mcp.method.name = %method,
        tollgate.mcp.era = era,
        mcp.session.id = tracing::field::Empty,
        jsonrpc.request.id = id.as_str(),
        gen_ai.tool.name = tracing::field::Empty,
        gen_ai.prompt.name = tracing::field::Empty,
        mcp.resource.uri = tracing::field::Empty,
        tollgate.server = server,
        tollgate.grant = caller.grant.as_str(),
        tollgate.agent = caller.agent.as_str(),
        enduser.id = caller.subject.as_deref().unwrap_or_default(),
        tollgate.token.issuer = caller.issuer.as_deref().unwrap_or_default(),
    );
    if !session.is_empty() {
        span.record("mcp.session.id", session.as_str());
    }
    let meta = params.and_then(|p| p.get("_meta"));
    let text = |name: &str| meta.and_then(|m| m.get(name)).and_then(Value::as_str);
    let from_meta = text("traceparent").and_then(|tp| propagation::from_traceparent(tp, text("tracestate")));
    propagation::set_parent(&span, from_meta.or_else(|| propagation::from_http_headers(headers)));
    span
}
