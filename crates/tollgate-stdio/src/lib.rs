//! A stdio MCP server behind MCP Streamable HTTP, so that the edge (or any MCP client) can
//! reach servers that speak only stdio.
//!
//! Each MCP session gets a child process of its own: an `initialize` POST without
//! `Mcp-Session-Id` starts one, and the session id the bridge answers with names it from
//! then on. Messages go to the child's stdin as newline-delimited JSON; what the child
//! writes to stdout is routed back: a response to the POST that sent its request (as JSON,
//! or as an SSE stream that also carries the request's progress and any server request made
//! meanwhile), everything else to the session's GET stream (kept in a bounded backlog until
//! one opens). A child is ended by `DELETE`, by the idle timeout, or when the bridge shuts
//! down (stdin closed, then killed after a grace period). Its stderr is logged line by line,
//! escaped. A child that exits while requests wait fails each of them with an error naming
//! the server and its exit status; its session is gone (404), so clients start a new one.
//!
//! Every buffer is bounded by [`StdioSettings`]: message size, sessions, backlog, waits.

mod child;
mod lines;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub use session::Session;

/// JSON-RPC error codes the bridge answers with.
const INVALID_REQUEST: i64 = -32600;
const PARSE_ERROR: i64 = -32700;
/// The server is gone or did not answer (Tollgate's upstream-error code).
const UPSTREAM_ERROR: i64 = -32003;
/// An unknown or ended session.
const SESSION_ENDED: i64 = -32001;

/// How one stdio server is run.
#[derive(Debug, Clone)]
pub struct StdioSettings {
    /// The server's name, in logs and in errors agents see.
    pub name: String,
    /// The program and its arguments, e.g. `["uvx", "mcp-server-time"]`.
    pub command: Vec<String>,
    /// Variables set for the child, besides the bridge's own environment (whose
    /// `TOLLGATE_*` variables are removed: they may hold credentials).
    pub env: BTreeMap<String, String>,
    /// The child's working directory (the bridge's by default).
    pub cwd: Option<PathBuf>,
    /// A session with no request, no open stream and no message for this long is ended.
    pub idle_timeout: Duration,
    /// Sessions (child processes) at once; `initialize` beyond it gets 503.
    pub max_sessions: usize,
    /// Largest message either way (a line on stdout, a POST body).
    pub max_message_bytes: usize,
    /// How long a POST waits for the child's answer.
    pub request_timeout: Duration,
    /// Hex SHA-256 of the bearer token requests must carry; `None` accepts any request
    /// (for a bridge on loopback, next to its caller).
    pub token_sha256: Option<String>,
}

impl StdioSettings {
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const DEFAULT_MAX_SESSIONS: usize = 100;
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

    /// Settings with the defaults for everything but the name and the command.
    pub fn new(name: &str, command: Vec<String>) -> StdioSettings {
        StdioSettings {
            name: name.to_owned(),
            command,
            env: BTreeMap::new(),
            cwd: None,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            token_sha256: None,
        }
    }
}

/// The sessions of one stdio server.
pub struct Bridge {
    settings: StdioSettings,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Bridge {
    /// A bridge with no sessions yet; starts the idle reaper (which ends with the bridge).
    pub fn new(settings: StdioSettings) -> Result<Arc<Bridge>, String> {
        if settings.command.first().is_none_or(String::is_empty) {
            return Err(format!("stdio MCP server \"{}\": command is empty", settings.name));
        }
        let bridge = Arc::new(Bridge {
            settings,
            sessions: Mutex::default(),
        });
        let weak = Arc::downgrade(&bridge);
        let tick = (bridge.settings.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let Some(bridge) = weak.upgrade() else { return };
                bridge.end_idle();
            }
        });
        Ok(bridge)
    }

    pub fn settings(&self) -> &StdioSettings {
        &self.settings
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn end_idle(&self) {
        let idle: Vec<Arc<Session>> = self
            .lock()
            .values()
            .filter(|s| s.idle_for() >= self.settings.idle_timeout)
            .cloned()
            .collect();
        for session in idle {
            tracing::info!(server = %self.settings.name, session = %session.id(), "ending an idle stdio session");
            self.forget(session.id());
            session.end();
        }
    }

    /// Ends every session (their children are stopped); for shutdown.
    pub fn end_all(&self) {
        let all: Vec<Arc<Session>> = self.lock().drain().map(|(_, s)| s).collect();
        for session in all {
            session.end();
        }
    }

    fn check_token(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.settings.token_sha256 else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        given.is_some_and(|token| session::sha256_hex(token.as_bytes()).eq_ignore_ascii_case(want))
    }
}

/// The bridge's routes: `POST`, `GET` and `DELETE` on `/mcp`.
pub fn router(bridge: Arc<Bridge>) -> Router {
    let limit = bridge.settings.max_message_bytes;
    Router::new()
        .route("/mcp", post(post_message).get(get_stream).delete(delete_session))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(bridge)
}

/// Serves `bridge` on `listener` until `shutdown` completes, then ends every session.
pub async fn serve(
    listener: tokio::net::TcpListener,
    bridge: Arc<Bridge>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = axum::serve(listener, router(bridge.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    bridge.end_all();
    served
}

fn error(status: StatusCode, id: Option<&Value>, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": {"code": code, "message": message}});
    json_response(status, &body, None)
}

fn json_response(status: StatusCode, body: &Value, session: Option<&str>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert("mcp-session-id", id);
    }
    (status, headers, body.to_string()).into_response()
}

fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        None,
        INVALID_REQUEST,
        "a valid bearer token is needed",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn session_ended(bridge: &Bridge, id: Option<&Value>) -> Response {
    let text = format!(
        "no such session of stdio MCP server \"{}\" (it ended, or never existed): send initialize to start a new one",
        bridge.settings.name
    );
    error(StatusCode::NOT_FOUND, id, SESSION_ENDED, &text)
}

async fn post_message(State(bridge): State<Arc<Bridge>>, headers: HeaderMap, body: Bytes) -> Response {
    if !bridge.check_token(&headers) {
        return unauthorized();
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, None, PARSE_ERROR, &format!("parse error: {e}")),
    };
    let Value::Object(object) = &message else {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            INVALID_REQUEST,
            "send one JSON-RPC message per POST (batches are not supported)",
        );
    };
    let id = object.get("id").filter(|id| !id.is_null());
    let method = object.get("method").and_then(Value::as_str);
    let session = match session_header(&headers) {
        Some(sid) => match bridge.session(sid) {
            Some(session) => session,
            None => return session_ended(&bridge, id),
        },
        None if method == Some("initialize") && id.is_some() => {
            if bridge.session_count() >= bridge.settings.max_sessions {
                tracing::warn!(server = %bridge.settings.name, "refusing a new session: max_sessions reached");
                let text = format!(
                    "stdio MCP server \"{}\" has as many sessions as it may have ({}); try again later",
                    bridge.settings.name, bridge.settings.max_sessions
                );
                return error(StatusCode::SERVICE_UNAVAILABLE, id, UPSTREAM_ERROR, &text);
            }
            match Session::start(&bridge) {
                Ok(session) => {
                    bridge.lock().insert(session.id().to_owned(), session.clone());
                    session
                }
                Err(e) => {
                    tracing::error!(server = %bridge.settings.name, "{e}");
                    let text = format!("stdio MCP server \"{}\" could not be started", bridge.settings.name);
                    return error(StatusCode::BAD_GATEWAY, id, UPSTREAM_ERROR, &text);
                }
            }
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                id,
                INVALID_REQUEST,
                "no Mcp-Session-Id: a session starts with an initialize request",
            );
        }
    };
    session.touch();
    let (Some(id), Some(method)) = (id, method) else {
        // A notification, or the client's answer to a server request.
        return match session.send(&message).await {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(_) => session_ended(&bridge, None),
        };
    };
    let progress_token = message.pointer("/params/_meta/progressToken").map(Value::to_string);
    let streams = method != "initialize" && accepts_event_stream(&headers);
    let waiter = match session.expect(id, progress_token, streams) {
        Ok(w) => w,
        Err(text) => return error(StatusCode::BAD_REQUEST, Some(id), INVALID_REQUEST, &text),
    };
    if session.send(&message).await.is_err() {
        return session_ended(&bridge, Some(id));
    }
    if streams {
        return session::event_stream(session, waiter, bridge.settings.request_timeout);
    }
    match tokio::time::timeout(bridge.settings.request_timeout, waiter.response).await {
        Ok(Ok(answer)) => {
            let initialize = method == "initialize";
            if initialize && answer.get("error").is_some() {
                // A session whose initialize failed is of no use to anyone.
                bridge.forget(session.id());
                session.end();
                return json_response(StatusCode::OK, &answer, None);
            }
            json_response(StatusCode::OK, &answer, initialize.then_some(session.id()))
        }
        Ok(Err(_)) => session_ended(&bridge, Some(id)),
        Err(_) => {
            session.forget_request(id);
            let text = format!(
                "stdio MCP server \"{}\" did not answer within {} s",
                bridge.settings.name,
                bridge.settings.request_timeout.as_secs()
            );
            error(StatusCode::GATEWAY_TIMEOUT, Some(id), UPSTREAM_ERROR, &text)
        }
    }
}

async fn get_stream(State(bridge): State<Arc<Bridge>>, headers: HeaderMap) -> Response {
    if !bridge.check_token(&headers) {
        return unauthorized();
    }
    if !accepts_event_stream(&headers) {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            None,
            INVALID_REQUEST,
            "GET opens an event stream: Accept must include text/event-stream",
        );
    }
    let Some(session) = session_header(&headers).and_then(|sid| bridge.session(sid)) else {
        return session_ended(&bridge, None);
    };
    session.touch();
    session::get_stream(session)
}

async fn delete_session(State(bridge): State<Arc<Bridge>>, headers: HeaderMap) -> Response {
    if !bridge.check_token(&headers) {
        return unauthorized();
    }
    let Some(session) = session_header(&headers).and_then(|sid| bridge.session(sid)) else {
        return session_ended(&bridge, None);
    };
    bridge.forget(session.id());
    session.end();
    (StatusCode::OK, Body::empty()).into_response()
}
