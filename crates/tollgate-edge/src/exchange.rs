//! One exchange with one upstream, on behalf of one resolved caller: a message sent exactly
//! as it was decided (re-serialised, never the agent's bytes), and the answer streamed back
//! through the response guard ([`crate::guard`]).

// Helpers return a ready answer for the agent as their error (`Result<_, Response>`).
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use hyper::body::Incoming;
use serde_json::Value;
use tollgate_api::proto::{DecideRequest, SubjectKind};

use crate::auth::Caller;
use crate::gateway::Gateway;
use crate::guard::{ListFilter, guarded};
use crate::request::header_text;
use crate::resolve::Call;
use crate::upstream::Upstream;
use crate::{jsonrpc, protocol};

/// One request being handled: who sent it, to which upstream, with which headers.
pub(crate) struct Exchange<'a> {
    pub(crate) gw: &'a Arc<Gateway>,
    pub(crate) upstream: &'a Upstream,
    pub(crate) caller: &'a Arc<Caller>,
    /// The headers the upstream request is made from (on the aggregated endpoint: the
    /// agent's, with this upstream's own session id).
    pub(crate) headers: &'a HeaderMap,
    /// On the aggregated endpoint: the upstream's prefix (see [`ListFilter::aggregate`]).
    pub(crate) aggregate: Option<Arc<str>>,
}

impl Exchange<'_> {
    pub(crate) fn list_filter(&self) -> ListFilter {
        ListFilter {
            gw: self.gw.clone(),
            server: self.upstream.name.clone(),
            caller: self.caller.clone(),
            aggregate: self.aggregate.clone(),
            input_state: None,
            seal_tasks: true,
            task_origin: None,
        }
    }

    /// Sends `message` upstream, re-serialised: the upstream receives exactly what was
    /// decided, never the agent's bytes.
    pub(crate) async fn send(
        &self,
        message: &Value,
        id: Option<&Value>,
    ) -> Result<axum::http::Response<Incoming>, Response> {
        self.gw
            .order
            .before_post(&self.caller.grant, &header_text(self.headers, "mcp-session-id"))
            .await;
        let body = Body::from(message.to_string());
        // The routing headers say what this message says, whatever the agent sent.
        let declared = (message.get("method").and_then(serde_json::Value::as_str) == Some("tools/call"))
            .then(|| message.pointer("/params/name").and_then(serde_json::Value::as_str))
            .flatten()
            .and_then(|tool| self.gw.param_headers(&self.upstream.name, tool));
        let derived = protocol::forwarded_headers(self.headers, message, declared.as_deref());
        let headers = derived.as_ref().unwrap_or(self.headers);
        let response = self
            .gw
            .forward(self.upstream, self.caller, Method::POST, headers, body, id)
            .await?;
        if protocol::is_stateless(message) && matches!(response.status().as_u16(), 400 | 404 | 405 | 406) {
            return Err(self.refused_stateless(message, id, response).await);
        }
        Ok(response)
    }

    /// An upstream's HTTP refusal of a 2026-07-28 request, read (bounded) and named
    /// ([`crate::eras::upstream_refused`]): most often an upstream of the session era only.
    async fn refused_stateless(
        &self,
        message: &Value,
        id: Option<&Value>,
        response: axum::http::Response<Incoming>,
    ) -> Response {
        let status = response.status();
        let method = jsonrpc::printable(message.get("method").and_then(Value::as_str).unwrap_or("a request"), 64);
        let limit = self.gw.settings.max_upstream_message_bytes.min(64 * 1024);
        let body = self.read_body(response.into_body(), limit).await.unwrap_or_default();
        tracing::info!(upstream = %self.upstream.name, status = status.as_u16(), method = %method,
            "the upstream refused a 2026-07-28 request");
        crate::eras::upstream_refused(&self.upstream.name, &method, status, &body, id)
    }

    /// An upstream's body, read whole within `limit` bytes and `edge.upstream_timeout_ms`;
    /// `None` when it is larger, slower, or broken off.
    pub(crate) async fn read_body(&self, body: Incoming, limit: usize) -> Option<axum::body::Bytes> {
        let timeout = std::time::Duration::from_millis(self.gw.settings.upstream_timeout_ms);
        let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
        Some(tokio::time::timeout(timeout, read).await.ok()?.ok()?.to_bytes())
    }

    /// What the decision service is asked about `call` on this exchange.
    pub(crate) fn decide_request(&self, call: &Call, request_id: String) -> DecideRequest {
        let server = &self.upstream.name;
        let annotations = match call.kind {
            SubjectKind::Tool => self.gw.annotations(server, call.name()),
            _ => None,
        };
        let mut request = DecideRequest {
            request_id,
            server: server.clone(),
            tool: call.name().to_owned(),
            grant: self.caller.grant.clone(),
            agent: self.caller.agent.clone(),
            // MCP 2026-07-28 has no sessions: a stateless call's session is its grant (a
            // session-scoped limit then holds per grant, and no agent-chosen id escapes it).
            session_id: if protocol::is_stateless(call.message()) {
                format!("stateless grant {}", self.caller.grant)
            } else {
                header_text(self.headers, "mcp-session-id")
            },
            arguments_json: call.arguments().map(Value::to_string).unwrap_or_default(),
            annotations,
            subject: self.caller.subject.clone().unwrap_or_default(),
            issuer: self.caller.issuer.clone().unwrap_or_default(),
            pin: match call.kind {
                SubjectKind::Resource => None,
                kind => self.gw.pins.check(server, kind, call.name(), None),
            },
            ..Default::default()
        };
        request.set_kind(call.kind);
        request
    }

    /// [`Exchange::forward`] for a decided call, or a request about a task: a 2026-07-28 answer
    /// that asks for input gets its `requestState` sealed by `issuer`, and on `/mcp/{server}`
    /// task ids become the caller's handles (streamed answers event by event, JSON answers
    /// read whole within `edge.max_upstream_message_bytes`).
    pub(crate) async fn forward_call(
        &self,
        message: &Value,
        id: &Value,
        issuer: Option<Arc<crate::mrtr::Issuer>>,
        origin: Option<Arc<crate::guard::TaskOrigin>>,
    ) -> Response {
        // Answers that may name a task are read whole too, so their task ids are sealed.
        let names_tasks = crate::tasks::may_answer_with_tasks(message);
        if issuer.is_none() && !names_tasks {
            return self.forward(message, Some(id)).await;
        }
        let response = match self.send(message, Some(id)).await {
            Ok(response) => response,
            Err(response) => return response,
        };
        let mut filter = self.list_filter();
        filter.input_state = issuer;
        filter.task_origin = origin;
        if crate::request::content_type_is(response.headers(), "text/event-stream") {
            return guarded(response, filter, Some(id.clone())).await;
        }
        let (parts, body) = response.into_parts();
        let limit = self.gw.settings.max_upstream_message_bytes;
        let Ok(collected) = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await else {
            let text = format!(
                "upstream MCP server \"{}\" sent an answer larger than edge.max_upstream_message_bytes",
                self.upstream.name
            );
            return jsonrpc::error_response(StatusCode::BAD_GATEWAY, Some(id), jsonrpc::UPSTREAM_ERROR, &text, None);
        };
        let bytes = collected.to_bytes();
        if crate::guard::nothing_to_filter(&bytes) {
            // Most answers: nothing in them the guard changes, so they are not parsed at all.
            return (parts.status, crate::upstream::response_headers(&parts.headers), bytes).into_response();
        }
        let mut answer = match jsonrpc::parse_strict(&bytes) {
            Ok(answer) => answer,
            // What the edge cannot read, it cannot check: nothing of it is passed on (as on
            // the SSE path).
            Err(e) => {
                let e = jsonrpc::printable(&e.to_string(), 200);
                tracing::warn!(upstream = %self.upstream.name, status = parts.status.as_u16(), "upstream sent an answer Tollgate cannot parse ({e}); not passed on");
                let text = format!(
                    "upstream MCP server \"{}\" sent an answer Tollgate cannot parse ({e})",
                    self.upstream.name
                );
                return jsonrpc::error_response(
                    StatusCode::BAD_GATEWAY,
                    Some(id),
                    jsonrpc::UPSTREAM_ERROR,
                    &text,
                    None,
                );
            }
        };
        if jsonrpc::answers_another(&answer, id) {
            let text = format!(
                "upstream MCP server \"{}\" sent an answer that does not answer the request it was sent for",
                self.upstream.name
            );
            return jsonrpc::error_response(StatusCode::BAD_GATEWAY, Some(id), jsonrpc::UPSTREAM_ERROR, &text, None);
        }
        let body = match filter.filter(&mut answer).await {
            Ok(true) => axum::body::Bytes::from(answer.to_string()),
            Ok(false) => bytes,
            Err(refused) => {
                let error = jsonrpc::error_body(Some(id), jsonrpc::INTERNAL_ERROR, &refused.message, None);
                return jsonrpc::json_response(refused.status, &error);
            }
        };
        (parts.status, crate::upstream::response_headers(&parts.headers), body).into_response()
    }

    /// For a `tasks/result` (with the upstream's own task id) of a task this edge's cluster
    /// recorded: a span in the trace of the call that made the task, naming its decision, so
    /// the task's result is audited with it.
    pub(crate) async fn task_result_span(&self, message: &Value) -> Option<tracing::Span> {
        if message.get("method").and_then(Value::as_str) != Some("tasks/result") {
            return None;
        }
        let task_id = message.pointer("/params/taskId")?.as_str()?;
        let request = tollgate_api::proto::OwnedTasksRequest {
            grant: self.caller.grant.clone(),
            server: self.upstream.name.clone(),
            task_ids: vec![task_id.to_owned()],
        };
        let record = self.gw.decider.owned_tasks(request).await.ok()?.into_iter().next()?;
        let span = tracing::info_span!(
            "tollgate.task.result",
            otel.name = "tollgate task result",
            tollgate.grant = self.caller.grant.as_str(),
            tollgate.server = self.upstream.name.as_str(),
            tollgate.decision_id = record.decision_id.as_str(),
        );
        tollgate_telemetry::propagation::set_parent(
            &span,
            tollgate_telemetry::propagation::from_traceparent(&record.traceparent, None),
        );
        span.in_scope(|| tracing::info!("the result of a task is fetched; it belongs to the decision named here"));
        Some(span)
    }

    /// [`Exchange::send`], with the answer streamed back through the list guard.
    pub(crate) async fn forward(&self, message: &Value, id: Option<&Value>) -> Response {
        match self.send(message, id).await {
            Ok(response) => guarded(response, self.list_filter(), id.cloned()).await,
            Err(response) => response,
        }
    }
}
