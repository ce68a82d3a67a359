//! Calls held open for an operator's approval (`"approval": {"mode": "hold"}`, the default).
//!
//! The agent's `tools/call` POST is answered at once as an SSE stream. While the approval is
//! pending the stream carries keep-alives (MCP `notifications/progress` when the call has a
//! `progressToken`, SSE comments otherwise). The edge follows the approval through the
//! decision service (`WaitApproval`, woken by the store's pub/sub on whichever replica the
//! operator used) and, once it is resolved, asks for a decision again: an approved call is
//! decided (the approval consumed, the rule's limits taken), forwarded, and the upstream's
//! answer streamed back on the same stream. A call still pending after the hold, or denied,
//! gets the refusal the decision service gives (naming the approval and, for a denial, the
//! operator's reason).
//!
//! One task per held call, ended by whichever comes first: the answer, or the agent going
//! away (its stream is dropped, and with it the wait on the decision service).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate_api::proto::{DecideRequest, Decision, Verdict};
use tollgate_telemetry::metrics::{GaugeUnit, metrics};
use tracing::Instrument;

use crate::auth::Caller;
use crate::exchange::Exchange;
use crate::gateway::{Gateway, QuotaSlot};
use crate::guard::guarded;
use crate::request::content_type_is;
use crate::resolve::Call;
use crate::settings::RefusalMode;
use crate::{jsonrpc, protocol, refusal};

/// Events queued for a held call's stream before the task waits for the agent to read.
const QUEUED_EVENTS: usize = 16;

/// Answers `message` (a `tools/call`, `resources/read` or `prompts/get` whose first decision was APPROVAL_REQUIRED with a
/// hold) with an SSE stream, and spawns the task that follows the approval.
/// `slot` counts the held call against its grant's `edge.max_held_per_grant` until it ends.
pub(crate) fn hold(
    exchange: &Exchange<'_>,
    call: Call,
    request_id: uuid::Uuid,
    decision: Decision,
    slot: QuotaSlot,
) -> Response {
    let gw = exchange.gw;
    let hold = Duration::from_millis(decision.hold_ms.min(gw.settings.max_hold_ms));
    let held = Held {
        gw: gw.clone(),
        server: exchange.upstream.name.clone(),
        caller: exchange.caller.clone(),
        headers: exchange.headers.clone(),
        request: exchange.decide_request(&call, String::new()),
        request_id,
        progress_token: call.progress_token.clone(),
        refusal: call.refusal_mode(&gw.settings),
        id: call.id.clone(),
        message: call.message().clone(),
        aggregate: exchange.aggregate.clone(),
        decision,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED_EVENTS);
    let task = async move {
        let _slot = slot;
        let _held = GaugeUnit::hold(&metrics().held_calls);
        tokio::select! {
            () = tx.closed() => {
                tracing::info!("the agent went away while its call was held for approval");
            }
            () = held.run(&tx, hold) => {}
        }
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, body).into_response()
}

/// Everything a held call needs once its request handler has returned.
struct Held {
    gw: Arc<Gateway>,
    server: String,
    caller: Arc<Caller>,
    headers: HeaderMap,
    /// The call (read, get) as parsed and decided.
    message: Value,
    id: Value,
    /// The first decision's request; later decisions use derived request ids.
    request: DecideRequest,
    request_id: uuid::Uuid,
    progress_token: Option<Value>,
    /// How a refusal reaches the agent.
    refusal: RefusalMode,
    /// On the aggregated endpoint: the upstream's prefix.
    aggregate: Option<Arc<str>>,
    /// The latest decision: APPROVAL_REQUIRED, naming the approval followed.
    decision: Decision,
}

/// One SSE `message` event carrying `message` (compact JSON: no raw newlines).
fn event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

impl Held {
    async fn run(mut self, tx: &mpsc::Sender<Bytes>, hold: Duration) {
        let deadline = Instant::now() + hold;
        let keepalive = Duration::from_millis(self.gw.settings.hold_keepalive_ms.max(100));
        let mut beats = 0u64;
        // At once: the agent (and its user) learn what the call waits for.
        if !self.notify(tx, &mut beats).await {
            return;
        }
        for round in 1u32.. {
            let left = deadline.saturating_duration_since(Instant::now());
            let approval_id = self.decision.approval_id.clone();
            let waited = {
                let wait = self.gw.decider.wait_approval(&approval_id, left);
                tokio::pin!(wait);
                let mut ticks = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
                loop {
                    tokio::select! {
                        waited = &mut wait => break waited,
                        _ = ticks.tick() => {
                            if !self.notify(tx, &mut beats).await {
                                return;
                            }
                        }
                    }
                }
            };
            let followed = match &waited {
                Ok(approval) => {
                    tracing::debug!(approval_id = %approval_id, status = ?approval.status(), "approval followed");
                    true
                }
                Err(e) => {
                    tracing::warn!(approval_id = %approval_id, "cannot follow the approval, answering now: {e}");
                    false
                }
            };
            // Whatever happened, the decision service says what the call gets now: an
            // approved call consumes its approval here, a pending one is refused naming it.
            let mut request = self.request.clone();
            request.request_id = format!("{}~{round}", self.request_id);
            let decision = match self.gw.decider.decide(request).await {
                Ok(decision) => decision,
                Err(e) => {
                    metrics().decision_unavailable.inc();
                    tracing::error!(approval_id = %approval_id, "no decision for a held call, refusing it: {e}");
                    refusal::unavailable(&e)
                }
            };
            match decision.verdict() {
                Verdict::Allow => return self.forward(tx).await,
                // The approval went to an identical call held elsewhere: wait for the next.
                Verdict::ApprovalRequired if followed && decision.hold_ms > 0 && Instant::now() < deadline => {
                    self.decision = decision;
                }
                _ => {
                    let body = protocol::answer_for(&self.message, refusal::body(&self.id, &decision, self.refusal));
                    let _ = tx.send(event(&body)).await;
                    return;
                }
            }
        }
    }

    /// A keep-alive; false when the agent has gone away.
    async fn notify(&self, tx: &mpsc::Sender<Bytes>, beats: &mut u64) -> bool {
        let approval_id = &self.decision.approval_id;
        let text = match &self.progress_token {
            Some(token) => event(&json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {
                    "progressToken": token,
                    "progress": *beats,
                    "message": format!("waiting for an operator to approve this call (approval {approval_id})"),
                }
            })),
            None => Bytes::from(format!(
                ": waiting for an operator to approve this call (approval {approval_id})\n\n"
            )),
        };
        *beats += 1;
        tx.send(text).await.is_ok()
    }

    /// Forwards the approved call and streams the upstream's answer onto the held stream.
    async fn forward(&self, tx: &mpsc::Sender<Bytes>) {
        let Some(upstream) = self.gw.upstreams.get(&self.server) else {
            return;
        };
        let exchange = Exchange {
            gw: &self.gw,
            upstream,
            caller: &self.caller,
            headers: &self.headers,
            aggregate: self.aggregate.clone(),
        };
        let response = match exchange.send(&self.message, Some(&self.id)).await {
            Ok(response) => response,
            Err(refused) => {
                // The edge's own error answer (upstream unreachable, timed out, …).
                let body = refused.into_body().collect().await.map(|c| c.to_bytes());
                let message = body
                    .ok()
                    .and_then(|b| jsonrpc::parse_strict(&b).ok())
                    .unwrap_or_else(|| self.upstream_error("no answer"));
                let _ = tx.send(event(&message)).await;
                return;
            }
        };
        if content_type_is(response.headers(), "text/event-stream") {
            let mut body = guarded(response, exchange.list_filter(), Some(self.id.clone()))
                .await
                .into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Ok(data) = frame.into_data()
                    && tx.send(data).await.is_err()
                {
                    return;
                }
            }
            return;
        }
        let status = response.status();
        let settings = &self.gw.settings;
        let read = tokio::time::timeout(
            Duration::from_millis(settings.upstream_timeout_ms),
            Limited::new(response.into_body(), settings.max_upstream_message_bytes).collect(),
        )
        .await;
        let answer = match read {
            Ok(Ok(collected)) if status.is_success() => match jsonrpc::parse_strict(&collected.to_bytes()) {
                Ok(message @ Value::Object(_)) => message,
                _ => self.upstream_error("an answer that is not one JSON-RPC message"),
            },
            Ok(Ok(_)) => self.upstream_error(&format!("HTTP {}", status.as_u16())),
            Ok(Err(_)) => self.upstream_error("an answer larger than edge.max_upstream_message_bytes"),
            Err(_) => self.upstream_error("no answer within edge.upstream_timeout_ms"),
        };
        let _ = tx.send(event(&answer)).await;
    }

    fn upstream_error(&self, what: &str) -> Value {
        tracing::warn!(upstream = %self.server, "upstream answered an approved call with {what}");
        let text = format!("upstream MCP server \"{}\" answered with {what}", self.server);
        jsonrpc::error_body(Some(&self.id), jsonrpc::UPSTREAM_ERROR, &text, None)
    }
}
