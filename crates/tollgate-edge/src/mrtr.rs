//! Multi Round-Trip Requests (MCP 2026-07-28): an upstream may answer a `tools/call`,
//! `prompts/get` or `resources/read` with an `InputRequiredResult`, and the client retries
//! the same request with `inputResponses` and the `requestState` it got.
//!
//! The edge never hands the upstream's `requestState` to the agent. It seals it inside an
//! envelope of its own (authenticated encryption under the aggregated session keys, bound to
//! the grant): the upstream, the call's subject, a digest of its arguments, the decision's
//! request id, the round, an expiry. A retry is recognised on any edge with the same keys:
//! it is decided again, on its own arguments, but with the first round's request id when its
//! arguments are the same, so the store counts one logical call once. A forged, expired or
//! foreign envelope (another grant, upstream or subject), or one past `edge.max_input_rounds`,
//! is refused before anything is decided. The upstream gets its own `requestState` back,
//! unchanged, or none if it gave none.
//!
//! An envelope is good for one retry: each carries a random id that the edge remembers until
//! the envelope expires (a bounded set; when it is full, retries are refused rather than
//! trusted), so replaying it cannot buy executions the limits did not count. The memory is
//! this edge's: behind several edges an envelope could be used once on each.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::gateway::Gateway;
use crate::protocol;
use crate::resolve::Call;

/// What an envelope binds; its text is `tgr1.` and the sealed JSON.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// Upstream.
    s: String,
    /// Subject (`tools/call` name, `resources/read <uri>`, `prompts/get <name>`).
    n: String,
    /// SHA-256 of the arguments as decided (hex).
    d: String,
    /// The decision's request id of the logical call.
    r: String,
    /// Rounds so far.
    k: u32,
    /// Expiry, milliseconds since the Unix epoch.
    e: u64,
    /// The upstream's own `requestState`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    /// A random id: the envelope is good for one retry.
    i: String,
    /// The approval the gateway itself asked the client's user to follow (a URL
    /// elicitation, [`Issuer::approval_answer`]); its input response is the gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
}

/// The key of the gateway's own input request (an approval to follow) in `inputRequests`
/// and `inputResponses`.
pub(crate) const APPROVAL_INPUT: &str = "tollgate_approval";

/// A call resumed from an envelope: the request id to decide it with, and its round.
pub(crate) struct Resumed {
    pub(crate) request_id: String,
    pub(crate) round: u32,
    /// The approval the gateway's own elicitation pointed at, and whether the user declined
    /// or cancelled it (the call then goes no further).
    pub(crate) approval: Option<(String, bool)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The call's subject as approvals and envelopes name it.
fn subject(call: &Call) -> String {
    tollgate_api::subject_label(call.kind, call.name())
}

/// SHA-256 of the call's arguments as decided.
fn digest(call: &Call) -> String {
    let arguments = call.arguments().map(Value::to_string).unwrap_or_default();
    hex::encode(Sha256::digest(arguments.as_bytes()))
}

/// Opens the envelope a stateless retry carries in `params.requestState` and puts the
/// upstream's own state back in its place; `Ok(None)` for a call that carries none (or is
/// not of the stateless revision), `Err` (the refusal's text) for an envelope this edge
/// cannot accept.
pub(crate) fn resume(gw: &Gateway, grant: &str, server: &str, call: &mut Call) -> Result<Option<Resumed>, String> {
    if !protocol::is_stateless(call.message()) {
        return Ok(None);
    }
    let Some(state) = call.message().pointer("/params/requestState") else {
        return Ok(None);
    };
    let refused = || {
        "params.requestState is not one this gateway issued for this call (it is forged, expired, or for another call, grant or server): make the call again without it".to_owned()
    };
    let text = state.as_str().ok_or_else(refused)?;
    let envelope: Envelope = gw
        .sealer
        .open_input_state(grant, text)
        .and_then(|plain| serde_json::from_slice(&plain).ok())
        .ok_or_else(refused)?;
    if envelope.s != server || envelope.n != subject(call) || envelope.e <= now_ms() {
        return Err(refused());
    }
    let most = gw.settings.max_input_rounds;
    if envelope.k >= most {
        return Err(format!(
            "this call asked for input {most} times already (edge.max_input_rounds): make it again from the start"
        ));
    }
    match gw.used_envelopes.take(grant, &envelope.i, envelope.e, now_ms()) {
        Ok(()) => {}
        Err(crate::sealed::NotTaken::Used) => {
            return Err(
                "params.requestState was used already: each one is good for one retry (make the call again without it)"
                    .into(),
            );
        }
        Err(crate::sealed::NotTaken::Full) => {
            tracing::warn!(grant = %grant, "refused a retry: the grant has {} unexpired requestState envelopes used on this edge", crate::sealed::MAX_USED_ENVELOPES_PER_GRANT);
            return Err(format!(
                "this grant has retried {} calls that asked for input on this gateway within edge.input_state_ttl_ms; \
                 retry later",
                crate::sealed::MAX_USED_ENVELOPES_PER_GRANT
            ));
        }
    }
    // The same arguments: the same logical call, counted once. Others are a new call.
    let request_id = if envelope.d == digest(call) {
        envelope.r.clone()
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    let mut approval = None;
    if let Some(params) = call.message_mut().get_mut("params").and_then(Value::as_object_mut) {
        match envelope.u {
            Some(upstream_state) => params.insert("requestState".into(), json!(upstream_state)),
            None => params.remove("requestState"),
        };
        // The answer to the gateway's own input request is the gateway's: the upstream never
        // asked for it. A retry after an approval elicitation carries only that one.
        if let Some(approval_id) = envelope.a {
            let responses = params.get_mut("inputResponses").and_then(Value::as_object_mut);
            let ours = responses.and_then(|r| r.remove(APPROVAL_INPUT));
            let action = ours.as_ref().and_then(|r| r.get("action")).and_then(Value::as_str);
            let declined = matches!(action, Some("decline" | "cancel"));
            if params
                .get("inputResponses")
                .is_some_and(|r| r.as_object().is_none_or(serde_json::Map::is_empty))
            {
                params.remove("inputResponses");
            }
            approval = Some((approval_id, declined));
        }
    }
    Ok(Some(Resumed {
        request_id,
        round: envelope.k,
        approval,
    }))
}

/// Seals the `requestState` of an `InputRequiredResult` answering one stateless call.
pub(crate) struct Issuer {
    gw: Arc<Gateway>,
    grant: String,
    server: String,
    subject: String,
    digest: String,
    request_id: String,
    round: u32,
}

impl Issuer {
    /// For a stateless `call` (decided with `request_id`, `round` rounds in), else none.
    pub(crate) fn for_call(
        gw: &Arc<Gateway>,
        grant: &str,
        server: &str,
        call: &Call,
        request_id: &str,
        round: u32,
    ) -> Option<Arc<Issuer>> {
        protocol::is_stateless(call.message()).then(|| {
            Arc::new(Issuer {
                gw: gw.clone(),
                grant: grant.to_owned(),
                server: server.to_owned(),
                subject: subject(call),
                digest: digest(call),
                request_id: request_id.to_owned(),
                round,
            })
        })
    }

    /// Makes the answer to a decided call private to its caller (caching directives: it was
    /// decided for this grant) and replaces the upstream's `requestState` of an
    /// `InputRequiredResult` with an envelope; `true` when it changed something.
    pub(crate) fn seal_into(&self, message: &mut Map<String, Value>) -> bool {
        let Some(Value::Object(result)) = message.get_mut("result") else {
            return false;
        };
        let mut changed = false;
        if result.contains_key("cacheScope") || result.contains_key("ttlMs") {
            let most = self.gw.settings.list_cache_ms;
            let ttl = result.get("ttlMs").and_then(Value::as_u64).unwrap_or(0).min(most);
            result.insert("ttlMs".into(), json!(ttl));
            result.insert("cacheScope".into(), json!("private"));
            changed = true;
        }
        if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
            return changed;
        }
        let upstream_state = match result.get("requestState") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        match self.seal(upstream_state, None) {
            Some(text) => {
                result.insert("requestState".into(), json!(text));
            }
            // Nothing the edge cannot stand behind reaches the agent.
            None => {
                result.remove("requestState");
            }
        }
        true
    }
}

impl Issuer {
    /// The next round's envelope, sealed for the grant: the upstream's own state, or the
    /// approval the gateway asked the user to follow.
    fn seal(&self, upstream_state: Option<String>, approval: Option<String>) -> Option<String> {
        let envelope = Envelope {
            s: self.server.clone(),
            n: self.subject.clone(),
            d: self.digest.clone(),
            r: self.request_id.clone(),
            k: self.round + 1,
            e: now_ms().saturating_add(self.gw.settings.input_state_ttl_ms),
            u: upstream_state,
            i: uuid::Uuid::new_v4().simple().to_string(),
            a: approval,
        };
        serde_json::to_vec(&envelope)
            .ok()
            .and_then(|plain| self.gw.sealer.seal_input_state(&self.grant, &plain))
    }

    /// The answer to a stateless call held for approval, for a client that supports URL-mode
    /// elicitation: an `InputRequiredResult` asking its user to follow the approval at `url`,
    /// with an envelope whose retry is decided again (same request id: charged once).
    pub(crate) fn approval_answer(&self, id: &Value, approval_id: &str, what: &str, url: &str) -> Value {
        let sealed = self.seal(None, Some(approval_id.to_owned()));
        let message = format!(
            "An operator must approve this call ({what}) before it runs: approval {approval_id}. \
             The link opens it in Tollgate's console; once it is decided, continue to retry the call."
        );
        let mut result = json!({
            "resultType": "input_required",
            "inputRequests": {
                APPROVAL_INPUT: {
                    "method": "elicitation/create",
                    "params": {"mode": "url", "message": message, "url": url, "elicitationId": approval_id},
                }
            },
        });
        if let Some(sealed) = sealed {
            result["requestState"] = json!(sealed);
        }
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    }
}

/// Whether a stateless `message`'s client says it can follow URL-mode elicitations.
pub(crate) fn elicits_urls(message: &Value) -> bool {
    message
        .pointer("/params/_meta")
        .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
        .and_then(|c| c.get("elicitation"))
        .and_then(|e| e.get("url"))
        .is_some_and(Value::is_object)
}
