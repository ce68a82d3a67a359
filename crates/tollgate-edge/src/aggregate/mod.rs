//! The front door of the aggregated endpoint `/mcp`: one MCP server made of every upstream
//! a caller reaches ([`crate::gateway::Gateway::reach`], the same check as on
//! `/mcp/{server}`).
//!
//! - `initialize` is answered by the gateway after initializing every reached upstream in
//!   parallel; the session id it returns seals the upstreams' session ids
//!   ([`crate::sealed`]), so any edge can serve any later request of the session. Every
//!   later request is limited to the session's upstreams the caller still reaches.
//! - Lists fan out in parallel and merge ([`fanout`]); each upstream's part is filtered by
//!   the policy like on its own endpoint, and its tools and prompts are renamed
//!   `{prefix}{separator}{name}`. The cursor of a merged page is sealed for the grant and
//!   holds at most one cursor per upstream.
//! - Calls and prompt gets are resolved by prefix into the upstream's own name, which is
//!   what is decided and forwarded; resource reads are routed to an upstream that lists the
//!   URI and could serve it to this caller ([`resources`]).
//! - Requests from an upstream to the client get ids that name the upstream
//!   ([`crate::marks`]), so that the client's answer finds its way back, to the session's
//!   upstreams only; the GET stream merges the upstreams' GET streams.

// Helpers return a ready answer for the agent as their error (`Result<_, Response>`).
#![allow(clippy::result_large_err)]

mod config;
mod fanout;
mod listen;
mod resources;
mod tasks;

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_api::proto::SubjectKind;
use tollgate_telemetry::metrics::{GaugeUnit, metrics};
use tracing::Instrument;

pub(crate) use config::Aggregation;

use crate::auth::Caller;
use crate::exchange::Exchange;
use crate::gateway::Gateway;
use crate::guard::{ListFilter, holding, too_many_streams};
use crate::jsonrpc::{self, Message};
use crate::method::McpMethod;
use crate::request::{
    accepts_event_stream, bad_request, check_session_header_max, classify, content_type_is, read_json,
};
use crate::resolve::{Call, invalid_params};
use crate::sealed::AggregateSession;
use crate::{calls, spans};

/// Longest aggregated session id accepted (it holds every upstream's session id).
const MAX_SEALED_SESSION_BYTES: usize = 4096;
/// An unknown or ended aggregated session (the client starts a new one).
const SESSION_UNKNOWN: i64 = -32001;

/// The state of `/mcp`: the gateway, and the aggregation's own configuration and routes.
pub struct AggregateDoor {
    pub(crate) gw: Arc<Gateway>,
    pub(crate) agg: Aggregation,
    pub(crate) routes: resources::Routes,
}

impl AggregateDoor {
    pub(crate) fn new(gw: Arc<Gateway>, agg: Aggregation) -> AggregateDoor {
        let routes = resources::Routes::new(&agg);
        AggregateDoor { gw, agg, routes }
    }
}

/// One request on `/mcp`.
struct Agg<'a> {
    gw: &'a Arc<Gateway>,
    door: &'a AggregateDoor,
    caller: &'a Arc<Caller>,
    headers: &'a HeaderMap,
    /// A 2026-07-28 request: no session; every upstream the caller reaches serves it.
    stateless: bool,
}

impl<'a> Agg<'a> {
    fn agg(&self) -> &'a Aggregation {
        &self.door.agg
    }

    /// The upstreams the caller reaches through `/mcp`, in configuration order.
    fn reachable(&self) -> Vec<String> {
        self.agg()
            .prefixes
            .iter()
            .map(|(_, server)| server)
            .filter(|server| self.gw.reach(self.caller, server).is_ok())
            .cloned()
            .collect()
    }

    /// The agent's headers for one upstream: its own session id, no `Last-Event-ID`.
    fn headers_for(&self, session: Option<&str>) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.remove("mcp-session-id");
        headers.remove("last-event-id");
        if let Some(value) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert("mcp-session-id", value);
        }
        headers
    }

    /// The session this request belongs to, limited to the upstreams the caller still
    /// reaches (the configuration may have changed since it began).
    fn session(&self) -> Result<AggregateSession, Response> {
        if self.stateless {
            // Stateless: the session is every upstream the caller reaches, in configuration
            // order, each asked without a session of its own.
            return Ok(AggregateSession {
                upstreams: self.reachable().into_iter().map(|server| (server, None)).collect(),
            });
        }
        check_session_header_max(self.headers, MAX_SEALED_SESSION_BYTES)?;
        let Some(id) = self.headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) else {
            return Err(bad_request(
                StatusCode::BAD_REQUEST,
                "no Mcp-Session-Id: a session on /mcp starts with initialize",
            ));
        };
        let Some(mut session) = self.agg().sealer.open(&self.caller.grant, id) else {
            return Err(jsonrpc::error_response(
                StatusCode::NOT_FOUND,
                None,
                SESSION_UNKNOWN,
                "unknown session (it was not issued to this grant, or the session keys changed): initialize again",
                None,
            ));
        };
        session
            .upstreams
            .retain(|(server, _)| self.gw.reach(self.caller, server).is_ok());
        Ok(session)
    }

    /// An exchange with one upstream of the session (`None` for any other upstream).
    fn exchange_for<'h>(
        &'h self,
        session: &AggregateSession,
        server: &str,
        headers: &'h HeaderMap,
    ) -> Option<Exchange<'h>> {
        session.session_of(server)?;
        Some(Exchange {
            gw: self.gw,
            upstream: self.gw.reach(self.caller, server).ok()?,
            caller: self.caller,
            headers,
            aggregate: Some(self.agg().prefix_of(server)),
        })
    }

    /// Forwards `message` to `server` of the session, with its own session id.
    async fn forward_to(
        &self,
        session: &AggregateSession,
        server: &str,
        message: &Value,
        id: Option<&Value>,
    ) -> Response {
        let headers = self.headers_for(session.session_of(server).flatten());
        match self.exchange_for(session, server, &headers) {
            Some(exchange) => own_session(exchange.forward(message, id).await),
            None => bad_request(StatusCode::BAD_REQUEST, "no such upstream in this session"),
        }
    }

    /// `tools/call` and `prompts/get`: resolved by prefix into the upstream's own name,
    /// which is what is decided and forwarded.
    async fn call(&self, session: &AggregateSession, kind: SubjectKind, mut message: Value, id: &Value) -> Response {
        let what = if kind == SubjectKind::Tool { "tool" } else { "prompt" };
        let name = message
            .pointer("/params/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let routed = self
            .agg()
            .split(name)
            .filter(|(server, _)| session.session_of(server).is_some())
            .map(|(server, inner)| (server.to_owned(), inner.to_owned()));
        let Some((server, inner)) = routed else {
            let text = format!(
                "unknown {what} \"{}\": on /mcp, {what}s are named {{server}}{}{{name}}, as the list shows them",
                jsonrpc::printable(name, 128),
                self.agg().separator
            );
            return invalid_params(id, &text);
        };
        message["params"]["name"] = json!(inner);
        let call = match Call::new(kind, message) {
            Ok(call) => call,
            Err(text) => return invalid_params(id, &text),
        };
        let headers = self.headers_for(session.session_of(&server).flatten());
        let Some(exchange) = self.exchange_for(session, &server, &headers) else {
            return unknown_method(id, "this upstream");
        };
        own_session(calls::decide_and_forward(&exchange, call).await)
    }
}

/// An upstream's answer as the agent of `/mcp` sees it: never with the upstream's own
/// session id (the agent's session is the sealed one).
fn own_session(mut response: Response) -> Response {
    response.headers_mut().remove("mcp-session-id");
    response
}

fn unknown_method(id: &Value, name: &str) -> Response {
    let text = format!(
        "method \"{}\" is not available on the aggregated endpoint /mcp",
        jsonrpc::printable(name, 128)
    );
    jsonrpc::json_response(
        StatusCode::OK,
        &jsonrpc::error_body(Some(id), jsonrpc::METHOD_NOT_FOUND, &text, None),
    )
}

fn ok_empty(id: &Value) -> Response {
    jsonrpc::json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": {}}))
}

pub async fn post(
    State(door): State<Arc<AggregateDoor>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let gw = &door.gw;
    let value = match read_json(&headers, body, &gw.settings, MAX_SEALED_SESSION_BYTES).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    // The 2026-07-28 revision's headers say what the body says; both eras are served here.
    if let Err(response) = crate::protocol::check(&headers, &value, true) {
        return response;
    }
    let stateless = crate::protocol::is_stateless(&value);
    if value.is_array() {
        return bad_request(
            StatusCode::BAD_REQUEST,
            "JSON-RPC batches are not supported on the aggregated endpoint /mcp: send one message per POST",
        );
    }
    let (method, name, id, span) = match classify(&value) {
        Ok(message) => {
            let span = spans::request_span(&message, "", &caller, &headers);
            match message {
                Message::Request { id, method, name, .. } => (Some(method), name.to_owned(), Some(id.clone()), span),
                Message::Notification { .. } => (None, String::new(), None, span),
                Message::Response => (None, String::new(), None, span),
            }
        }
        Err(response) => return response,
    };
    let _in_flight = GaugeUnit::hold(&metrics().requests_in_flight);
    let agg = Agg {
        gw,
        door: &door,
        caller: &caller,
        headers: &headers,
        stateless,
    };
    async {
        let (Some(method), Some(id)) = (method, id) else {
            let session = match agg.session() {
                Ok(s) => s,
                Err(response) => return response,
            };
            let method_name = value.get("method").and_then(Value::as_str).unwrap_or_default();
            return if crate::tasks::names_a_task(&value) {
                // Routed by its task handle only when it is about a task; anything else
                // naming one goes nowhere (its handle is not a way around routing).
                if method_name.starts_with("notifications/tasks/") {
                    agg.task_message(&session, &value, None).await
                } else {
                    StatusCode::ACCEPTED.into_response()
                }
            } else if value.get("method").is_some() {
                agg.notification(&session, &value).await
            } else {
                agg.answer_to_upstream(&session, &value).await
            };
        };
        if stateless {
            match (method, name.as_str()) {
                (_, "server/discover") => return agg.discover(&value, &id).await,
                (McpMethod::Initialize | McpMethod::Ping, _) => {
                    return unknown_method(&id, &format!("{name} (not part of MCP 2026-07-28)"));
                }
                _ => {}
            }
        }
        if method == McpMethod::Initialize {
            return agg.initialize(&value, &id).await;
        }
        let session = match agg.session() {
            Ok(s) => s,
            Err(response) => return response,
        };
        if crate::tasks::names_a_task(&value) {
            // A tasks/… request goes to the upstream its handle opens for; any other request
            // naming a task would skip its own routing and decision that way, so it is refused.
            if !name.starts_with("tasks/") {
                return invalid_params(
                    &id,
                    "on /mcp only tasks/… requests may name a task (params.taskId, or the related-task _meta)",
                );
            }
            return agg.task_message(&session, &value, Some(&id)).await;
        }
        if name == "tasks/list" {
            return agg.list_tasks(&session, &value, &id).await;
        }
        match method {
            McpMethod::Ping => ok_empty(&id),
            McpMethod::ToolsList => agg.list(&session, "tools", &value, &id).await,
            McpMethod::PromptsList => agg.list(&session, "prompts", &value, &id).await,
            McpMethod::ResourcesList => agg.list(&session, "resources", &value, &id).await,
            McpMethod::ResourcesTemplatesList => agg.list(&session, "resourceTemplates", &value, &id).await,
            McpMethod::ToolsCall => agg.call(&session, SubjectKind::Tool, value, &id).await,
            McpMethod::PromptsGet => agg.call(&session, SubjectKind::Prompt, value, &id).await,
            McpMethod::ResourcesRead | McpMethod::ResourcesSubscribe | McpMethod::ResourcesUnsubscribe => {
                agg.resource(&session, method, value, &id).await
            }
            McpMethod::CompletionComplete => agg.complete(&session, value, &id).await,
            McpMethod::SubscriptionsListen => agg.listen(&session, value, &id).await,
            McpMethod::LoggingSetLevel => {
                agg.broadcast(&session, &value).await;
                ok_empty(&id)
            }
            _ => unknown_method(&id, &name),
        }
    }
    .instrument(span)
    .await
}

/// The session's server-to-client stream: every upstream's GET stream, merged, each through
/// its list guard (requests marked with the upstream's prefix), counted as one stream
/// against the grant's `edge.max_streams_per_grant`. Upstreams without one are left out;
/// without any, 405.
pub async fn get(
    State(door): State<Arc<AggregateDoor>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    if !accepts_event_stream(&headers) {
        return bad_request(
            StatusCode::NOT_ACCEPTABLE,
            "GET /mcp opens an event stream: Accept must include text/event-stream",
        );
    }
    let gw = &door.gw;
    let agg = Agg {
        gw,
        door: &door,
        caller: &caller,
        headers: &headers,
        stateless: false,
    };
    let session = match agg.session() {
        Ok(s) => s,
        Err(response) => return response,
    };
    let slot = match gw.streams.take(&caller.grant) {
        Ok(slot) => slot,
        Err(full) => return too_many_streams(&caller, full),
    };
    let opened = futures_util::future::join_all(session.upstreams.iter().map(|(server, upstream_session)| {
        let (agg, gw, caller) = (&agg, gw, &caller);
        async move {
            let upstream = gw.reach(caller, server).ok()?;
            let headers = agg.headers_for(upstream_session.as_deref());
            let response = gw
                .forward(upstream, caller, Method::GET, &headers, Body::empty(), None)
                .await
                .ok()?;
            if !response.status().is_success() || !content_type_is(response.headers(), "text/event-stream") {
                return None;
            }
            let filter = ListFilter {
                gw: gw.clone(),
                server: server.clone(),
                caller: caller.clone(),
                aggregate: Some(agg.agg().prefix_of(server)),
                input_state: None,
                seal_tasks: true,
                task_origin: None,
            };
            Some(filter.event_stream(None, response.into_body()).into_data_stream())
        }
    }))
    .await;
    let streams: Vec<_> = opened.into_iter().flatten().collect();
    if streams.is_empty() {
        return jsonrpc::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            jsonrpc::INVALID_REQUEST,
            "no upstream of this session offers a server-to-client stream",
            None,
        );
    }
    let merged = futures_util::stream::select_all(streams);
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let body = Body::from_stream(merged.map(|chunk| chunk.map_err(std::io::Error::other)));
    holding((StatusCode::OK, response_headers, body).into_response(), Some(slot))
}

/// Ends the session on every upstream of it that has one.
pub async fn delete(
    State(door): State<Arc<AggregateDoor>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    let gw = &door.gw;
    let agg = Agg {
        gw,
        door: &door,
        caller: &caller,
        headers: &headers,
        stateless: false,
    };
    let session = match agg.session() {
        Ok(s) => s,
        Err(response) => return response,
    };
    futures_util::future::join_all(session.upstreams.iter().filter_map(|(server, upstream_session)| {
        let upstream = gw.reach(&caller, server).ok()?;
        let headers = agg.headers_for(Some(upstream_session.as_deref()?));
        let caller = &caller;
        Some(async move {
            let _ = gw
                .forward(upstream, caller, Method::DELETE, &headers, Body::empty(), None)
                .await;
        })
    }))
    .await;
    StatusCode::OK.into_response()
}
