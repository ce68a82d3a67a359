//! `tools/call`, `resources/read` and `prompts/get`: the call is checked, decided, and then
//! forwarded, held for an operator's approval ([`crate::held`]) or refused. What the edge does without a decision is decided
//! in one place, [`without_decision`], for calls and for tools lists alike.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use tollgate_api::DecisionError;
use tollgate_api::proto::{DecideRequest, SubjectKind, Verdict};
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

/// What a `tools/call`, `resources/read` or `prompts/get` asks for, checked before anything
/// else looks at it.
pub(crate) struct Subject<'a> {
    pub(crate) kind: SubjectKind,
    /// The tool name, resource URI or prompt name.
    pub(crate) name: &'a str,
    pub(crate) arguments: Option<&'a Value>,
    /// Task-augmented (`params.task`, protocol 2025-11-25): refusals must be JSON-RPC
    /// errors, since such clients expect a task, not a tool result.
    pub(crate) is_task: bool,
    /// `params._meta.progressToken`, when the agent asked for progress notifications.
    pub(crate) progress_token: Option<&'a Value>,
}

impl Subject<'_> {
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

/// Reads the subject of a decided method from its params; the error is the text of an
/// invalid-params answer.
pub(crate) fn subject(kind: SubjectKind, params: Option<&Value>) -> Result<Subject<'_>, String> {
    let method = tollgate_api::subject_method(kind);
    let field = if kind == SubjectKind::Resource { "uri" } else { "name" };
    let needs = || format!("{method} needs params.{field} (a string)");
    let Some(params) = params.and_then(Value::as_object) else {
        return Err(needs());
    };
    let Some(name) = params.get(field).and_then(Value::as_str) else {
        return Err(needs());
    };
    tollgate_api::check_subject(kind, name).map_err(|e| match kind {
        SubjectKind::Tool => format!("invalid tool name: {e}"),
        SubjectKind::Resource => format!("invalid resource URI: {e}"),
        SubjectKind::Prompt => format!("invalid prompt name: {e}"),
    })?;
    let arguments = params.get("arguments").filter(|a| !a.is_null());
    match (kind, arguments) {
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
        .filter(|t| t.as_str().is_some_and(|s| s.len() <= 256) || t.is_i64() || t.is_u64());
    Ok(Subject {
        kind,
        name,
        arguments,
        is_task: params.get("task").is_some_and(|t| !t.is_null()),
        progress_token,
    })
}

/// Decides a `tools/call`, `resources/read` or `prompts/get`, then forwards it, holds it for
/// an operator's approval, or refuses it.
pub(crate) async fn decide_and_forward(
    exchange: &Exchange<'_>,
    kind: SubjectKind,
    message: &Value,
    id: &Value,
    params: Option<&Value>,
) -> Response {
    let call = match subject(kind, params) {
        Ok(call) => call,
        Err(text) => {
            let body = jsonrpc::error_body(Some(id), jsonrpc::INVALID_PARAMS, &text, None);
            return jsonrpc::json_response(StatusCode::OK, &body);
        }
    };
    tracing::Span::current().record(tollgate_api::subject_attribute(kind), call.name);
    let gw = exchange.gw;
    let request_id = uuid::Uuid::new_v4();
    let request = decide_request(exchange, &call, request_id.to_string());
    let decision = match gw.decider.decide(request).await {
        Ok(decision) => {
            gw.visible.saw(decision.policy_digest);
            decision
        }
        Err(e) => {
            metrics().decision_unavailable.inc();
            let what = format!(
                "{} {} by grant {}",
                tollgate_api::subject_method(kind),
                call.name,
                exchange.caller.grant
            );
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
    let body = refusal::body(id, &decision, call.refusal_mode(&gw.settings));
    jsonrpc::json_response(StatusCode::OK, &body)
}

/// What the decision service is asked about `call`.
pub(crate) fn decide_request(exchange: &Exchange<'_>, call: &Subject<'_>, request_id: String) -> DecideRequest {
    let server = &exchange.upstream.name;
    let annotations = match call.kind {
        SubjectKind::Tool => exchange.gw.annotations(server, call.name),
        _ => None,
    };
    let mut request = DecideRequest {
        request_id,
        server: server.clone(),
        tool: call.name.to_owned(),
        grant: exchange.caller.grant.clone(),
        agent: exchange.caller.agent.clone(),
        session_id: header_text(exchange.headers, "mcp-session-id"),
        arguments_json: call.arguments.map(Value::to_string).unwrap_or_default(),
        annotations,
        subject: exchange.caller.subject.clone().unwrap_or_default(),
        issuer: exchange.caller.issuer.clone().unwrap_or_default(),
        ..Default::default()
    };
    request.set_kind(call.kind);
    request
}
