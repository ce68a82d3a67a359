//! Tasks on `/mcp`. Task ids in answers are handles sealed for the caller's grant and the
//! upstream that made the task, as on `/mcp/{server}` ([`crate::tasks`]); a request naming a
//! task goes to the one upstream of the session whose handle it is (the handle opens for
//! that upstream only), with the upstream's own id. A handle that opens for none is an
//! unknown task and goes nowhere. `tasks/list` lists nothing: the upstreams' lists hold
//! every caller's tasks.

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
            let headers = self.headers_for(upstream_session.as_deref());
            let Some(exchange) = self.exchange_for(session, server, &headers) else {
                continue;
            };
            return own_session(match id {
                Some(id) => exchange.forward_call(&own, id, None).await,
                None => exchange.forward(&own, None).await,
            });
        }
        match id {
            Some(id) => invalid_params(id, "unknown task: no task of this grant has that id on /mcp"),
            None => StatusCode::ACCEPTED.into_response(),
        }
    }
}

/// `tasks/list` on `/mcp`: nothing the upstreams list can be told apart by caller.
pub(super) fn no_tasks(id: &Value) -> Response {
    jsonrpc::json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": {"tasks": []}}),
    )
}
