//! How a refused `tools/call` reaches the agent: by default a `CallToolResult` with
//! `isError: true`, whose text the model reads and can act on, with machine-readable
//! details under `_meta["tollgate/decision"]`; or, if configured, a JSON-RPC error.

use serde_json::{Value, json};
use tollgate_api::proto::{Decision, Verdict};
use tollgate_api::{DecisionError, verdict_name};

use crate::jsonrpc;
use crate::settings::RefusalMode;

pub const META_KEY: &str = "tollgate/decision";

/// The decision as the agent sees it under `_meta` (or `error.data`).
pub fn details(decision: &Decision) -> Value {
    let limits: Vec<Value> = decision
        .limits
        .iter()
        .map(|l| {
            json!({
                "counter": l.counter, "scope": l.scope, "window": l.window, "limit": l.limit,
                "remaining": l.remaining, "reset_after_ms": l.reset_after_ms,
                "retry_after_ms": l.retry_after_ms, "exceeded": l.exceeded
            })
        })
        .collect();
    let mut details = json!({
        "verdict": verdict_name(decision.verdict()),
        "reason": decision.reason,
        "rule": decision.rule,
        "decision_id": decision.decision_id,
        "retry_after_ms": decision.retry_after_ms,
        "limits": limits,
    });
    if !decision.approval_id.is_empty() {
        details["approval_id"] = json!(decision.approval_id);
    }
    details
}

/// The full JSON-RPC answer to a refused `tools/call` with id `id`.
pub fn body(id: &Value, decision: &Decision, mode: RefusalMode) -> Value {
    let text = format!("Tollgate refused this call: {}", decision.reason);
    match mode {
        RefusalMode::Result => json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "content": [{"type": "text", "text": text}],
                "isError": true,
                "_meta": {META_KEY: details(decision)}
            }
        }),
        RefusalMode::Error => jsonrpc::error_body(Some(id), jsonrpc::REFUSED, &text, Some(details(decision))),
    }
}

/// The decision an edge makes for itself when it has no decision (fail closed). The agent
/// is not told replica addresses or error details; the edge logs them.
pub fn unavailable(error: &DecisionError) -> Decision {
    let (rule, reason) = match error {
        DecisionError::Unavailable(_) => (
            "edge.fail_open = false",
            "the decision service is unavailable, so the call was not forwarded; try again shortly",
        ),
        DecisionError::Failed(_) => (
            "edge",
            "the decision service could not decide this call, so it was not forwarded",
        ),
    };
    let mut decision = Decision {
        decision_id: uuid::Uuid::now_v7().to_string(),
        rule: rule.into(),
        reason: reason.into(),
        ..Default::default()
    };
    decision.set_verdict(Verdict::Deny);
    decision
}
