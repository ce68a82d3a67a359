//! The front door of one upstream, `/mcp/{server}`. A request is resolved once
//! ([`crate::resolve`]): the upstream from the decoded path segment, checked against the
//! caller's grant and scopes on every method; then each POST is read within its limits
//! ([`crate::request`]), parsed strictly and classified into a typed [`McpMethod`]: a
//! `tools/call`, `resources/read` or `prompts/get` becomes a [`Call`] that is decided before
//! it is forwarded ([`crate::calls`]), a `tools/list`, `resources/list` or `prompts/list` is
//! forwarded and its answer filtered ([`crate::lists`]), and everything else is forwarded.
//! What is forwarded is the message as the edge parsed and decided it, re-serialised, never
//! the agent's raw bytes. GET and DELETE pass through; SSE answers on every path go through
//! the list guard ([`crate::guard`]). The edge keeps no session state: `Mcp-Session-Id`
//! travels end to end, so any edge can serve any request.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use tollgate_api::proto::SubjectKind;
use tollgate_telemetry::metrics::{GaugeUnit, metrics};
use tracing::Instrument;

use crate::auth::Caller;
use crate::exchange::Exchange;
use crate::gateway::Gateway;
use crate::guard::{ListFilter, guarded, holding, too_many_streams};
use crate::jsonrpc::Message;
use crate::method::McpMethod;
use crate::protocol;
use crate::request::{
    MAX_SESSION_BYTES, bad_request, check_batch, check_session_header, classify, header_text, read_json,
};
use crate::resolve::{self, Call, invalid_params};
use crate::{calls, lists, spans};

/// What the door does with one classified message.
enum Route {
    /// Decided before it is forwarded.
    Decided(SubjectKind),
    /// Forwarded, and the list in its answer filtered.
    Listed(McpMethod),
    /// `notifications/initialized`: forwarded, then the session's GET stream is awaited.
    Initialized,
    /// `subscriptions/listen`: its filter narrowed, its stream held ([`crate::listen`]).
    Listen(serde_json::Value),
    /// Forwarded as it is (with its id, if a request).
    Forward(Option<serde_json::Value>),
}

impl Route {
    fn of(message: &Message<'_>) -> Route {
        match message {
            Message::Request { method, .. } => match method {
                McpMethod::ToolsCall => Route::Decided(SubjectKind::Tool),
                McpMethod::ResourcesRead => Route::Decided(SubjectKind::Resource),
                McpMethod::PromptsGet => Route::Decided(SubjectKind::Prompt),
                m @ (McpMethod::ToolsList
                | McpMethod::ResourcesList
                | McpMethod::PromptsList
                | McpMethod::ResourcesTemplatesList) => Route::Listed(*m),
                McpMethod::SubscriptionsListen => Route::Listen(message.id().cloned().unwrap_or_default()),
                _ => Route::Forward(message.id().cloned()),
            },
            Message::Notification {
                method: McpMethod::NotificationsInitialized,
                ..
            } => Route::Initialized,
            _ => Route::Forward(message.id().cloned()),
        }
    }
}

pub async fn post(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let upstream = match resolve::upstream(&gw, &caller, &server, &headers) {
        Ok(u) => u,
        Err(response) => return response,
    };
    let value = match read_json(&headers, body, &gw.settings, MAX_SESSION_BYTES).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    // The 2026-07-28 revision's headers say what the body says (or the request goes no
    // further); this endpoint serves that revision and the session era alike.
    if let Err(response) = protocol::check(&headers, &value, true) {
        return response;
    }
    // Task handles name the caller's own tasks: one this grant does not hold for this
    // upstream, or whose task the store does not record for this grant, is answered like an
    // unknown task, and goes nowhere.
    let mut value = value;
    if crate::tasks::names_a_task(&value)
        && (crate::tasks::open_ids(&gw.sealer, &caller.grant, &upstream.name, &mut value).is_err()
            || !crate::guard::owns_named_tasks(&gw, &caller.grant, &upstream.name, &value).await)
    {
        return match value.get("id").filter(|_| value.get("method").is_some()) {
            Some(id) => invalid_params(id, "unknown task: no task of this grant has that id on this server"),
            None => axum::response::IntoResponse::into_response(StatusCode::ACCEPTED),
        };
    }
    let exchange = Exchange {
        gw: &gw,
        upstream,
        caller: &caller,
        headers: &headers,
        aggregate: None,
    };
    if let serde_json::Value::Array(items) = &value {
        return match check_batch(items) {
            Ok(()) => exchange.forward(&value, None).await,
            Err(message) => bad_request(StatusCode::BAD_REQUEST, &message),
        };
    }
    let (route, span) = match classify(&value) {
        Ok(message) => (
            Route::of(&message),
            spans::request_span(&message, &upstream.name, &caller, &headers),
        ),
        Err(response) => return response,
    };
    let _in_flight = GaugeUnit::hold(&metrics().requests_in_flight);
    async {
        match route {
            Route::Decided(kind) => {
                let id = value.get("id").cloned().unwrap_or_default();
                match Call::new(kind, value) {
                    Ok(call) => calls::decide_and_forward(&exchange, call).await,
                    Err(text) => invalid_params(&id, &text),
                }
            }
            Route::Listed(method) => {
                let id = value.get("id").cloned().unwrap_or_default();
                lists::list(&exchange, method.name(), &value, &id).await
            }
            Route::Listen(id) => crate::listen::per_server(&exchange, value, &id).await,
            Route::Initialized => {
                let response = exchange.forward(&value, None).await;
                let session = header_text(&headers, "mcp-session-id");
                if response.status().is_success() && !session.is_empty() {
                    gw.order.initialized(&caller.grant, &session);
                }
                response
            }
            Route::Forward(Some(id))
                if value.get("method").and_then(serde_json::Value::as_str) == Some("completion/complete") =>
            {
                // A completion names a prompt or resource: one the policy hides from this
                // caller is answered like one that does not exist (no existence oracle).
                match completion_visible(&exchange, &value).await {
                    Ok(true) => exchange.forward(&value, Some(&id)).await,
                    Ok(false) => invalid_params(
                        &id,
                        "completion/complete: params.ref names no prompt or resource of this server",
                    ),
                    Err(response) => response,
                }
            }
            Route::Forward(Some(id))
                if value.get("method").and_then(serde_json::Value::as_str) == Some("server/discover") =>
            {
                crate::discover::per_server(&exchange, &value, &id).await
            }
            Route::Forward(Some(id))
                if value.get("method").and_then(serde_json::Value::as_str) == Some("resources/subscribe") =>
            {
                // Updates of a resource the caller may not read are not its to follow.
                let uri = value.pointer("/params/uri").and_then(serde_json::Value::as_str);
                let uri = uri.filter(|u| tollgate_api::check_resource_uri(u).is_ok());
                let seen = match uri {
                    Some(uri) => exchange.list_filter().sees(SubjectKind::Resource, uri).await,
                    None => Ok(false),
                };
                match seen {
                    Ok(true) => exchange.forward(&value, Some(&id)).await,
                    Ok(false) => invalid_params(&id, "resources/subscribe: no resource of this server has that URI"),
                    Err(refused) => {
                        let body = crate::jsonrpc::error_body(
                            Some(&id),
                            crate::jsonrpc::INTERNAL_ERROR,
                            &refused.message,
                            None,
                        );
                        crate::jsonrpc::json_response(refused.status, &body)
                    }
                }
            }
            Route::Forward(Some(id)) if crate::tasks::may_answer_with_tasks(&value) => {
                match exchange.task_result_span(&value).await {
                    Some(span) => exchange.forward_call(&value, &id, None, None).instrument(span).await,
                    None => exchange.forward_call(&value, &id, None, None).await,
                }
            }
            Route::Forward(id) => exchange.forward(&value, id.as_ref()).await,
        }
    }
    .instrument(span)
    .await
}

/// Whether the prompt or resource a `completion/complete` names is one the caller could see
/// listed (other references pass: they name nothing the policy decides).
async fn completion_visible(exchange: &Exchange<'_>, message: &serde_json::Value) -> Result<bool, Response> {
    let reference = message.pointer("/params/ref");
    let text = |field: &str| {
        reference
            .and_then(|r| r.get(field))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let (kind, name) = match reference
        .and_then(|r| r.get("type"))
        .and_then(serde_json::Value::as_str)
    {
        Some("ref/prompt") => (SubjectKind::Prompt, text("name")),
        Some("ref/resource") => (SubjectKind::Resource, text("uri")),
        // MCP has these two: any other spelling ("ref/prompt ", "REF/PROMPT") is not passed
        // on, so an upstream lenient about it cannot be reached past the check.
        _ => return Ok(false),
    };
    let Some(name) = name else { return Ok(false) };
    match exchange.list_filter().sees(kind, &name).await {
        Ok(seen) => Ok(seen),
        Err(refused) => {
            let body = crate::jsonrpc::error_body(
                message.get("id"),
                crate::jsonrpc::INTERNAL_ERROR,
                &refused.message,
                None,
            );
            Err(crate::jsonrpc::json_response(StatusCode::SERVICE_UNAVAILABLE, &body))
        }
    }
}

pub async fn get(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    bodyless(&gw, &server, caller, &headers, Method::GET).await
}

pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    bodyless(&gw, &server, caller, &headers, Method::DELETE).await
}

/// GET (the server-to-client stream, counted against the grant's
/// `edge.max_streams_per_grant`; replays on `Last-Event-ID` and server messages are guarded
/// like any other stream) and DELETE (end of session).
async fn bodyless(
    gw: &Arc<Gateway>,
    server: &str,
    caller: Arc<Caller>,
    headers: &HeaderMap,
    method: Method,
) -> Response {
    let upstream = match resolve::upstream(gw, &caller, server, headers) {
        Ok(u) => u,
        Err(response) => return response,
    };
    if let Err(response) = check_session_header(headers) {
        return response;
    }
    let slot = if method == Method::GET {
        match gw.streams.take(&caller.grant) {
            Ok(slot) => Some(slot),
            Err(full) => return too_many_streams(&caller, full),
        }
    } else {
        None
    };
    let session = header_text(headers, "mcp-session-id");
    let opening = (method == Method::GET && !session.is_empty()).then(|| gw.order.opening(&caller.grant, &session));
    let forwarded = gw
        .forward(upstream, &caller, method, headers, Body::empty(), None)
        .await;
    drop(opening);
    match forwarded {
        Ok(response) => {
            let filter = ListFilter {
                gw: gw.clone(),
                server: upstream.name.clone(),
                caller,
                aggregate: None,
                input_state: None,
                seal_tasks: true,
                task_origin: None,
            };
            holding(guarded(response, filter, None).await, slot)
        }
        Err(response) => response,
    }
}
