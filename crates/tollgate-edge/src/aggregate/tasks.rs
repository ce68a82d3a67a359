//! Tasks on `/mcp`. Task ids in answers are handles sealed for the caller's grant and the
//! upstream that made the task, as on `/mcp/{server}` ([`crate::tasks`]); a request naming a
//! task goes to the one upstream of the session whose handle it is (the handle opens for
//! that upstream only), with the upstream's own id. A handle that opens for none is an
//! unknown task and goes nowhere. `tasks/list` asks every upstream of the session for its
//! first page and merges the grant's own tasks (their records, [`crate::tasks`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Agg, own_session};
use crate::jsonrpc;
use crate::resolve::invalid_params;
use crate::sealed::AggregateSession;

impl Agg<'_> {
    /// A request (`id` given) or notification naming a task.
    pub(super) async fn task_message(&self, session: &AggregateSession, value: &Value, id: Option<&Value>) -> Response {
        let sealer = &self.gw.sealer;
        for (server, upstream_session) in &session.upstreams {
            let mut own = value.clone();
            if crate::tasks::open_ids(sealer, &self.caller.grant, server, &mut own).is_err() {
                continue;
            }
            if !crate::guard::owns_named_tasks(self.gw, &self.caller.grant, server, &own).await {
                break; // a handle of this grant, but not a task the store records for it
            }
            let headers = self.headers_for(upstream_session.as_deref());
            let Some(exchange) = self.exchange_for(session, server, &headers) else {
                continue;
            };
            return own_session(match id {
                Some(id) => match exchange.task_result_span(&own).await {
                    Some(span) => {
                        tracing::Instrument::instrument(exchange.forward_call(&own, id, None, None), span).await
                    }
                    None => exchange.forward_call(&own, id, None, None).await,
                },
                None => exchange.forward(&own, None).await,
            });
        }
        match id {
            Some(id) => invalid_params(id, "unknown task: no task of this grant has that id on /mcp"),
            None => StatusCode::ACCEPTED.into_response(),
        }
    }
}

impl Agg<'_> {
    /// `tasks/list` on `/mcp`: each upstream's first page, narrowed to the grant's own tasks
    /// (their ids sealed), merged; no cursor (pages of several upstreams are not merged).
    pub(super) async fn list_tasks(&self, session: &AggregateSession, message: &Value, id: &Value) -> Response {
        let mut message = message.clone();
        if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
            params.remove("cursor");
        }
        let parts = futures_util::future::join_all(session.upstreams.iter().map(|(server, upstream_session)| {
            let message = &message;
            async move { (server, self.ask(server, upstream_session.as_deref(), message, id).await) }
        }))
        .await;
        let mut tasks = Vec::new();
        for (server, part) in parts {
            match part {
                Ok((answer, _)) => {
                    if let Some(Value::Array(listed)) = answer.pointer("/result/tasks") {
                        tasks.extend(listed.iter().cloned());
                    }
                }
                Err(super::fanout::PartFailed::NotOffered) => {}
                Err(super::fanout::PartFailed::Failed(why)) => {
                    tracing::warn!(upstream = %server, "left out of tasks/list on /mcp: {why}");
                }
            }
        }
        jsonrpc::json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": {"tasks": tasks}}),
        )
    }
}
