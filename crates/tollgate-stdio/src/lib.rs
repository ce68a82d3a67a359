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
//! Every buffer is bounded by [`StdioSettings`]: message size, sessions (per server and per
//! grant), backlog, waits. A slot is reserved under the same lock that counts the sessions,
//! before the child is started, so concurrent `initialize`s never start more children than
//! the limits allow.
//!
//! Who may talk to it: with a token ([`StdioSettings::token_sha256`]), every request must carry
//! it as a bearer token, and only then is the caller's grant taken from [`GRANT_HEADER`] (the
//! edge sends it for upstreams with `forward_grant`); without a token, every session counts
//! against one anonymous bucket. Requests with an `Origin` (browsers) are refused, and so is a
//! `Host` other than the bridge's own address when it listens on loopback (DNS rebinding), and
//! a POST whose `Content-Type` is not `application/json`.

mod child;
mod lines;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use session::Session;

/// JSON-RPC error codes the bridge answers with.
const INVALID_REQUEST: i64 = -32600;
const PARSE_ERROR: i64 = -32700;
/// The server is gone or did not answer (Tollgate's upstream-error code).
const UPSTREAM_ERROR: i64 = -32003;
/// An unknown or ended session.
const SESSION_ENDED: i64 = -32001;

/// The header naming the caller's grant, as the edge sends it to upstreams with
/// `[[upstreams]] forward_grant = true` (the edge's `GRANT_HEADER`). Believed only on
/// requests that carry the bridge's token.
pub const GRANT_HEADER: &str = "tollgate-grant";
/// Longest grant name taken from [`GRANT_HEADER`]; a longer one counts as anonymous.
const MAX_GRANT_BYTES: usize = 256;

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
    /// Sessions one grant may hold at once; `initialize` beyond it gets 429. The grant comes
    /// from [`GRANT_HEADER`] on requests with the token; without a token (or without the
    /// header) sessions count against one anonymous bucket, which has the same quota.
    pub max_sessions_per_grant: usize,
    /// Largest message either way (a line on stdout, a POST body).
    pub max_message_bytes: usize,
    /// How long a POST waits for the child's answer.
    pub request_timeout: Duration,
    /// Hex SHA-256 of the bearer token requests must carry; `None` accepts any request
    /// (for a bridge on loopback, next to its caller) and trusts no grant header.
    pub token_sha256: Option<String>,
}

impl StdioSettings {
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const DEFAULT_MAX_SESSIONS: usize = 100;
    pub const DEFAULT_MAX_SESSIONS_PER_GRANT: usize = 8;
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
            max_sessions_per_grant: Self::DEFAULT_MAX_SESSIONS_PER_GRANT,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            token_sha256: None,
        }
    }
}

/// A new random bearer token (32 bytes from the operating system's generator, in hex), for
/// a bridge and the one caller it serves (`tollgate up` makes one per bridge and process).
pub fn new_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the operating system's random number generator failed".to_owned())?;
    Ok(hex::encode(bytes))
}

/// Hex SHA-256 of `token`: what [`StdioSettings::token_sha256`] holds.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whose quota a session counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Bucket {
    Grant(String),
    /// No trusted grant: a bridge without a token, or a request without [`GRANT_HEADER`].
    Anonymous,
}

/// The sessions of a bridge, and the slots reserved for sessions being started.
#[derive(Default)]
struct Table {
    live: HashMap<String, Live>,
    /// Slots taken by `initialize`s whose child is being started.
    reserved: usize,
    /// Live and reserved sessions per bucket; a bucket with none is removed.
    per_bucket: HashMap<Bucket, usize>,
}

struct Live {
    session: Arc<Session>,
    bucket: Bucket,
}

impl Table {
    fn release(&mut self, bucket: &Bucket) {
        if let Some(n) = self.per_bucket.get_mut(bucket) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_bucket.remove(bucket);
            }
        }
    }
}

/// Why a new session was refused.
enum Full {
    /// The server has `max_sessions`.
    Server,
    /// The bucket has `max_sessions_per_grant`.
    Bucket(Bucket),
}

/// A slot for a session being started, counted against both limits from the moment it is
/// taken; given back when dropped unless [`Reservation::commit`] made it a live session.
pub(crate) struct Reservation<'a> {
    bridge: &'a Bridge,
    bucket: Option<Bucket>,
}

impl Reservation<'_> {
    /// The session is started: it takes the slot (and keeps its bucket's count until it is
    /// forgotten).
    pub(crate) fn commit(mut self, session: Arc<Session>) {
        let Some(bucket) = self.bucket.take() else { return };
        let mut table = self.bridge.lock();
        table.reserved = table.reserved.saturating_sub(1);
        table.live.insert(session.id().to_owned(), Live { session, bucket });
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(bucket) = self.bucket.take() {
            let mut table = self.bridge.lock();
            table.reserved = table.reserved.saturating_sub(1);
            table.release(&bucket);
        }
    }
}

/// The sessions of one stdio server.
pub struct Bridge {
    settings: StdioSettings,
    /// SHA-256 of the token, from `settings.token_sha256`.
    token: Option<[u8; 32]>,
    sessions: Mutex<Table>,
}

/// The program `command` starts, found as the child will find it: a path with a `/` as it is
/// (relative to `cwd`), otherwise on the `PATH` the child gets (`env`'s, else this process's).
/// It must be an executable file; the error says what is missing, for `tollgate check` and at
/// start, rather than on the first agent's call.
pub fn find_program(
    command: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: Option<&std::path::Path>,
) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let program = command
        .first()
        .filter(|p| !p.is_empty())
        .ok_or("the command is empty")?;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match cwd {
            Some(cwd) if !program.starts_with('/') => cwd.join(program),
            _ => std::path::PathBuf::from(program),
        };
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("its program {} is not an executable file", path.display()))
        } else {
            Err(format!("its program {} does not exist", path.display()))
        };
    }
    let search = env
        .get("PATH")
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| {
            format!(
                "its program \"{program}\" was not found on PATH ({}): install it, or give its full path in command",
                search.to_string_lossy()
            )
        })
}

/// The name a stdio server goes by when none is given: for a launcher (`uvx mcp-server-time`,
/// `npx -y @modelcontextprotocol/server-everything`), the package it launches; otherwise
/// the program's file name.
pub fn default_name(command: &[String]) -> String {
    const LAUNCHERS: [&str; 9] = ["uvx", "npx", "pipx", "bunx", "uv", "node", "python", "python3", "deno"];
    let file_name = |text: &str| text.rsplit('/').next().unwrap_or(text).to_owned();
    let Some(program) = command.first() else {
        return "stdio".into();
    };
    let program_name = file_name(program);
    if LAUNCHERS.contains(&program_name.as_str())
        && let Some(package) = command[1..].iter().find(|a| !a.starts_with('-') && *a != "run")
    {
        // `@scope/name@1.2` → `name`
        let unscoped = package.rsplit('/').next().unwrap_or(package);
        let name = unscoped.split('@').find(|p| !p.is_empty()).unwrap_or(unscoped);
        let name = name.trim_end_matches(".py").trim_end_matches(".js");
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    program_name
}

impl Bridge {
    /// A bridge with no sessions yet; starts the idle reaper (which ends with the bridge).
    pub fn new(settings: StdioSettings) -> Result<Arc<Bridge>, String> {
        if settings.command.first().is_none_or(String::is_empty) {
            return Err(format!("stdio MCP server \"{}\": command is empty", settings.name));
        }
        if settings.max_sessions_per_grant == 0 {
            return Err(format!(
                "stdio MCP server \"{}\": max_sessions_per_grant must be at least 1",
                settings.name
            ));
        }
        let token = match &settings.token_sha256 {
            None => None,
            Some(text) => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(text, &mut digest).map_err(|_| {
                    format!(
                        "stdio MCP server \"{}\": the token's SHA-256 must be 64 hex digits",
                        settings.name
                    )
                })?;
                Some(digest)
            }
        };
        let bridge = Arc::new(Bridge {
            settings,
            token,
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
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().live.get(id).map(|live| live.session.clone())
    }

    fn forget(&self, id: &str) {
        let mut table = self.lock();
        if let Some(live) = table.live.remove(id) {
            table.release(&live.bucket);
        }
    }

    /// Takes a slot for a new session of `bucket`, checking both limits under the lock that
    /// counts them (so that concurrent `initialize`s cannot all pass the check).
    fn reserve(&self, bucket: Bucket) -> Result<Reservation<'_>, Full> {
        let mut table = self.lock();
        if table.per_bucket.get(&bucket).copied().unwrap_or(0) >= self.settings.max_sessions_per_grant {
            return Err(Full::Bucket(bucket));
        }
        if table.live.len() + table.reserved >= self.settings.max_sessions {
            return Err(Full::Server);
        }
        table.reserved += 1;
        *table.per_bucket.entry(bucket.clone()).or_default() += 1;
        Ok(Reservation {
            bridge: self,
            bucket: Some(bucket),
        })
    }

    /// The grant a request's sessions count against: the one the edge names in
    /// [`GRANT_HEADER`], believed only by a bridge with a token (every request that gets this
    /// far has carried it).
    fn bucket(&self, headers: &HeaderMap) -> Bucket {
        if self.token.is_none() {
            return Bucket::Anonymous;
        }
        headers
            .get(GRANT_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|g| !g.is_empty() && g.len() <= MAX_GRANT_BYTES)
            .map_or(Bucket::Anonymous, |g| Bucket::Grant(g.to_owned()))
    }

    fn end_idle(&self) {
        let idle: Vec<Arc<Session>> = self
            .lock()
            .live
            .values()
            .filter(|live| live.session.idle_for() >= self.settings.idle_timeout)
            .map(|live| live.session.clone())
            .collect();
        for session in idle {
            tracing::info!(server = %self.settings.name, session = %session.id(), "ending an idle stdio session");
            self.forget(session.id());
            session.end();
        }
    }

    /// Ends every session (their children are stopped); for shutdown.
    pub fn end_all(&self) {
        let all: Vec<Arc<Session>> = {
            let mut table = self.lock();
            let all: Vec<Live> = table.live.drain().map(|(_, live)| live).collect();
            for live in &all {
                table.release(&live.bucket);
            }
            all.into_iter().map(|live| live.session).collect()
        };
        for session in all {
            session.end();
        }
    }

    /// Whether `headers` carry the token, compared in constant time (as SHA-256 digests, so
    /// the length of the token given tells nothing either). Always true without a token.
    fn check_token(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(given) = given else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let difference = digest.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

/// What the bridge admits before looking at a request: no `Origin`, its own `Host` (when
/// listening on loopback), the token (when it has one), and JSON POST bodies.
struct Guard {
    bridge: Arc<Bridge>,
    /// `Host` values accepted (lowercase); `None`: any.
    hosts: Option<Vec<String>>,
}

impl Guard {
    fn new(bridge: Arc<Bridge>, listen: SocketAddr) -> Guard {
        let hosts = listen.ip().is_loopback().then(|| {
            vec![
                listen.to_string().to_ascii_lowercase(),
                format!("localhost:{}", listen.port()),
            ]
        });
        Guard { bridge, hosts }
    }

    fn check(&self, request: &Request) -> Result<(), Refused> {
        let headers = request.headers();
        if headers.contains_key(header::ORIGIN) {
            tracing::warn!(server = %self.bridge.settings.name, "refused a request with an Origin header (a browser?)");
            return Err(Refused::Origin);
        }
        if let Some(hosts) = &self.hosts {
            let host = match headers.get(header::HOST) {
                Some(value) => value.to_str().ok().map(str::to_ascii_lowercase),
                // HTTP/2 names the host in the request's authority.
                None => request.uri().authority().map(|a| a.as_str().to_ascii_lowercase()),
            };
            if !host.is_some_and(|h| hosts.contains(&h)) {
                tracing::warn!(server = %self.bridge.settings.name, "refused a request for another Host (DNS rebinding?)");
                return Err(Refused::Host);
            }
        }
        if !self.bridge.check_token(headers) {
            return Err(Refused::Token);
        }
        if request.method() == Method::POST && !is_json(headers) {
            return Err(Refused::MediaType);
        }
        Ok(())
    }
}

/// Why the guard refused a request.
enum Refused {
    Origin,
    Host,
    Token,
    MediaType,
}

impl Refused {
    fn response(self) -> Response {
        match self {
            Refused::Origin => error(
                StatusCode::FORBIDDEN,
                None,
                INVALID_REQUEST,
                "requests with an Origin header are not accepted here",
            ),
            Refused::Host => error(
                StatusCode::FORBIDDEN,
                None,
                INVALID_REQUEST,
                "this Host is not served here",
            ),
            Refused::Token => unauthorized(),
            Refused::MediaType => error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                INVALID_REQUEST,
                "Content-Type must be application/json",
            ),
        }
    }
}

async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(&request) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.response(),
    }
}

/// Whether the media type of `Content-Type` is exactly `application/json` (parameters such
/// as `charset` aside).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The bridge's routes: `POST`, `GET` and `DELETE` on `/mcp`, served on `listen` (whose
/// address is the only `Host` accepted when it is a loopback address), behind the checks
/// of the bridge's guard.
pub fn router(bridge: Arc<Bridge>, listen: SocketAddr) -> Router {
    let limit = bridge.settings.max_message_bytes;
    let guard_state = Arc::new(Guard::new(bridge.clone(), listen));
    Router::new()
        .route("/mcp", post(post_message).get(get_stream).delete(delete_session))
        .layer(axum::middleware::from_fn_with_state(guard_state, guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(bridge)
}

/// Serves `bridge` on `listener` until `shutdown` completes, then ends every session.
pub async fn serve(
    listener: tokio::net::TcpListener,
    bridge: Arc<Bridge>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let served = axum::serve(listener, router(bridge.clone(), listen))
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

/// The answer to an `initialize` that would exceed a limit: 503 when the server is full,
/// 429 when the caller's grant has its quota.
fn refuse_session(bridge: &Bridge, id: Option<&Value>, full: Full) -> Response {
    let name = &bridge.settings.name;
    match full {
        Full::Server => {
            tracing::warn!(server = %name, "refusing a new session: max_sessions reached");
            let text = format!(
                "stdio MCP server \"{name}\" has as many sessions as it may have ({}); try again later",
                bridge.settings.max_sessions
            );
            error(StatusCode::SERVICE_UNAVAILABLE, id, UPSTREAM_ERROR, &text)
        }
        Full::Bucket(bucket) => {
            let max = bridge.settings.max_sessions_per_grant;
            let who = match &bucket {
                Bucket::Grant(grant) => format!("grant \"{grant}\" has"),
                Bucket::Anonymous => "callers without a grant have".to_owned(),
            };
            tracing::warn!(server = %name, bucket = ?bucket, "refusing a new session: max_sessions_per_grant reached");
            let text = format!(
                "{who} as many sessions of stdio MCP server \"{name}\" as one grant may have ({max}); end one \
                 (DELETE) or try again later"
            );
            error(StatusCode::TOO_MANY_REQUESTS, id, UPSTREAM_ERROR, &text)
        }
    }
}

fn session_ended(bridge: &Bridge, id: Option<&Value>) -> Response {
    let text = format!(
        "no such session of stdio MCP server \"{}\" (it ended, or never existed): send initialize to start a new one",
        bridge.settings.name
    );
    error(StatusCode::NOT_FOUND, id, SESSION_ENDED, &text)
}

async fn post_message(State(bridge): State<Arc<Bridge>>, headers: HeaderMap, body: Bytes) -> Response {
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
            let reservation = match bridge.reserve(bridge.bucket(&headers)) {
                Ok(reservation) => reservation,
                Err(full) => return refuse_session(&bridge, id, full),
            };
            match Session::start(&bridge, reservation) {
                Ok(session) => session,
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
    let Some(session) = session_header(&headers).and_then(|sid| bridge.session(sid)) else {
        return session_ended(&bridge, None);
    };
    bridge.forget(session.id());
    session.end();
    (StatusCode::OK, Body::empty()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    /// Issue 26, item 4: a server is named after what it runs, not after its launcher.
    #[test]
    fn a_launched_server_is_named_after_its_package() {
        assert_eq!(default_name(&words("uvx mcp-server-time")), "mcp-server-time");
        assert_eq!(
            default_name(&words("npx -y @modelcontextprotocol/server-everything@2.0.0 stdio")),
            "server-everything"
        );
        assert_eq!(default_name(&words("python3 -u /srv/tools/server.py")), "server");
        assert_eq!(default_name(&words("/usr/local/bin/my-server --flag")), "my-server");
        assert_eq!(default_name(&[]), "stdio");
    }

    /// Issue 26, item 4: a missing or non-executable program is found before the first call.
    #[test]
    fn a_missing_program_is_named_before_anything_starts() {
        let empty = BTreeMap::new();
        assert!(find_program(&words("sh -c true"), &empty, None).is_ok());
        let missing = find_program(&words("tollgate-no-such-program-xyz"), &empty, None).expect_err("missing");
        assert!(missing.contains("was not found on PATH"), "{missing}");
        let path = BTreeMap::from([("PATH".to_owned(), "/nonexistent".to_owned())]);
        assert!(
            find_program(&words("sh"), &path, None).is_err(),
            "the child's own PATH is searched"
        );
        let dir = std::env::temp_dir();
        let plain = dir.join(format!("tollgate-not-executable-{}", std::process::id()));
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        let refused = find_program(&[plain.display().to_string()], &empty, None).expect_err("not executable");
        assert!(refused.contains("not an executable file"), "{refused}");
        let _ = std::fs::remove_file(&plain);
        let relative = find_program(&words("./nope"), &empty, Some(&dir)).expect_err("relative");
        assert!(relative.contains("does not exist"), "{relative}");
    }
}
