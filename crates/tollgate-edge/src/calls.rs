//! `tools/call`: the call is checked, decided, and then forwarded, held for an operator's
//! approval ([`crate::held`]) or refused. What the edge does without a decision is decided
//! in one place, [`without_decision`], for calls and for tools lists alike.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use tollgate_api::DecisionError;
use tollgate_api::proto::{DecideRequest, Verdict};
use tollgate_telemetry::metrics::metrics;

use crate::held;
use crate::jsonrpc;
use crate::mcp::Exchange;
use crate::refusal;
use crate::request::{accepts_event_stream, header_text};
use crate::settings::{EdgeSettings, RefusalMode};

/// What the edge does when it has no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WithoutDecision {
    /// `edge.fail_open`, and no replica could be reached: let it through unchecked.
    ForwardUnchecked,
    /// Everything else: fail closed.
    Refuse,
}

/// Only a real outage may fail open, and only with `edge.fail_open`: an error answer may
/// have been provoked by the caller. Logs what happens to `what`.
pub(crate) fn without_decision(settings: &EdgeSettings, error: &DecisionError, what: &str) -> WithoutDecision {
    if error.is_unavailable() && settings.fail_open {
        tracing::warn!("decision service unavailable, {what} goes through unchecked (edge.fail_open): {error}");
        WithoutDecision::ForwardUnchecked
    } else {
        tracing::error!("no decision, {what} is refused: {error}");
        WithoutDecision::Refuse
    }
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

pub(crate) fn tool_call(params: Option<&Value>) -> Result<ToolCall<'_>, String> {
    let Some(params) = params.and_then(Value::as_object) else {
        return Err("tools/call needs params.name (a string)".into());
    };
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err("tools/call needs params.name (a string)".into());
    };
    tollgate_api::check_tool_name(name).map_err(|e| format!("invalid tool name: {e}"))?;
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

pub(crate) async fn call_tool(
    exchange: &Exchange<'_>,
    message: &Value,
    id: &Value,
    params: Option<&Value>,
) -> Response {
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
            let what = format!("tools/call {} by grant {}", call.name, exchange.caller.grant);
            match without_decision(&gw.settings, &e, &what) {
                WithoutDecision::ForwardUnchecked => return exchange.forward(message, Some(id)).await,
                WithoutDecision::Refuse => refusal::unavailable(&e),
            }
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
