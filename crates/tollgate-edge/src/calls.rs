//! `tools/call`, `resources/read` and `prompts/get`: the resolved [`Call`] is decided, and
//! then forwarded, held for an operator's approval ([`crate::held`]) or refused. What is
//! decided and what is forwarded are the same message.

use axum::http::StatusCode;
use axum::response::Response;
use tollgate_api::proto::Verdict;
use tollgate_telemetry::metrics::metrics;

use crate::exchange::Exchange;
use crate::gateway::{WithoutDecision, without_decision};
use crate::request::accepts_event_stream;
use crate::resolve::Call;
use crate::{held, jsonrpc, mrtr, protocol, refusal};

/// Decides `call`, then forwards it, holds it for an operator's approval, or refuses it.
pub(crate) async fn decide_and_forward(exchange: &Exchange<'_>, mut call: Call) -> Response {
    tracing::Span::current().record(tollgate_api::subject_attribute(call.kind), call.name());
    let gw = exchange.gw;
    // A 2026-07-28 retry that carries input: the same logical call keeps its request id (the
    // store counts it once); a forged or foreign envelope goes no further.
    let (grant, server) = (&exchange.caller.grant, &exchange.upstream.name);
    // The `Mcp-Param-*` headers a tool declares say what its arguments say (both doors).
    if call.kind == tollgate_api::proto::SubjectKind::Tool
        && let Some(declared) = gw.param_headers(server, call.name())
        && let Err(text) = protocol::check_params(exchange.headers, call.message(), &declared)
    {
        return jsonrpc::error_response(
            StatusCode::BAD_REQUEST,
            Some(&call.id),
            protocol::HEADER_MISMATCH,
            &text,
            None,
        );
    }
    let resumed = match mrtr::resume(gw, grant, server, &mut call) {
        Ok(resumed) => resumed,
        Err(text) => return crate::resolve::invalid_params(&call.id, &text),
    };
    let round = resumed.as_ref().map_or(0, |r| r.round);
    if let Some((approval_id, true)) = resumed.as_ref().and_then(|r| r.approval.as_ref()) {
        // The user would not follow the approval: the call stops here (the approval stays
        // pending until an operator resolves it or it expires).
        let mut decision = tollgate_api::proto::Decision {
            decision_id: uuid::Uuid::now_v7().to_string(),
            rule: "approval".into(),
            reason: format!("its user declined to follow approval {approval_id}; make the call again to ask anew"),
            approval_id: approval_id.clone(),
            ..Default::default()
        };
        decision.set_verdict(Verdict::ApprovalRequired);
        let body = refusal::body(&call.id, &decision, call.refusal_mode(&gw.settings));
        return jsonrpc::json_response(StatusCode::OK, &protocol::answer_for(call.message(), body));
    }
    let request_id = resumed
        .and_then(|r| uuid::Uuid::parse_str(&r.request_id).ok())
        .unwrap_or_else(uuid::Uuid::new_v4);
    let request = exchange.decide_request(&call, request_id.to_string());
    let decision = match gw.decider.decide(request).await {
        Ok(decision) => {
            gw.visible.saw(decision.policy_digest);
            decision
        }
        Err(e) => {
            metrics().decision_unavailable.inc();
            let what = format!(
                "{} {} by grant {}",
                tollgate_api::subject_method(call.kind),
                call.name(),
                exchange.caller.grant
            );
            match without_decision(&gw.settings, &e, &what) {
                WithoutDecision::ForwardUnchecked => return exchange.forward(call.message(), Some(&call.id)).await,
                WithoutDecision::Refuse => refusal::unavailable(&e),
            }
        }
    };
    if decision.verdict() == Verdict::Allow {
        let issuer = mrtr::Issuer::for_call(gw, grant, server, &call, &request_id.to_string(), round);
        // A call that may create a task: the task is recorded with this decision and trace.
        // (The trace is read only if a task is created: most answers create none.)
        let origin = (call.is_task || protocol::is_stateless(call.message())).then(|| {
            std::sync::Arc::new(crate::guard::TaskOrigin {
                decision_id: decision.decision_id.clone(),
                span: tracing::Span::current(),
            })
        });
        return exchange.forward_call(call.message(), &call.id, issuer, origin).await;
    }
    // A 2026-07-28 client that can follow URLs is asked to follow the approval in the
    // console (a URL elicitation); its retry is decided again, as the same logical call.
    if decision.verdict() == Verdict::ApprovalRequired
        && !decision.approval_id.is_empty()
        && !call.is_task
        && mrtr::elicits_urls(call.message())
        && let Some(console) = &gw.settings.console_url
        && let Some(issuer) = mrtr::Issuer::for_call(gw, grant, server, &call, &request_id.to_string(), round)
    {
        let url = format!("{}/console#{}", console.trim_end_matches('/'), decision.approval_id);
        let what = tollgate_api::subject_label(call.kind, call.name());
        let what = format!("{} on {server}", jsonrpc::printable(&what, 128));
        return jsonrpc::json_response(
            StatusCode::OK,
            &issuer.approval_answer(&call.id, &decision.approval_id, &what, &url),
        );
    }
    if decision.verdict() == Verdict::ApprovalRequired
        && decision.hold_ms > 0
        && gw.settings.max_hold_ms > 0
        && !call.is_task
        && accepts_event_stream(exchange.headers)
    {
        match gw.held.take(&exchange.caller.grant) {
            Ok(slot) => return held::hold(exchange, call, request_id, decision, slot),
            Err(full) => tracing::warn!(
                grant = %exchange.caller.grant,
                approval_id = %decision.approval_id,
                "not holding the call: the grant has {} calls held on this edge ({}); answered at once, naming its approval",
                full.max,
                full.setting
            ),
        }
    }
    let body = protocol::answer_for(
        call.message(),
        refusal::body(&call.id, &decision, call.refusal_mode(&gw.settings)),
    );
    jsonrpc::json_response(StatusCode::OK, &body)
}
