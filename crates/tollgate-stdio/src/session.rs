//! One MCP session: its child process, and where each message the child writes goes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::lines::{Line, read_line};
use crate::{Bridge, Reservation, UPSTREAM_ERROR, child};

/// Server messages kept for a GET stream that is not open yet; older ones are dropped.
const MAX_BACKLOG: usize = 256;
/// Messages queued for one stream before routing skips it.
const STREAM_QUEUE: usize = 64;
/// Longest stderr line logged, in bytes (the rest is cut).
const MAX_STDERR_LINE: usize = 4096;

/// One session of a stdio server.
pub struct Session {
    id: String,
    server: String,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    routes: Mutex<Routes>,
    last_active: Mutex<Instant>,
    /// Response streams (POST and GET) being read by a client now.
    streams_open: AtomicUsize,
    stop: Notify,
}

#[derive(Default)]
struct Routes {
    /// Requests waiting for the child's answer, by their id as JSON text.
    pending: HashMap<String, Pending>,
    get: Option<mpsc::Sender<Value>>,
    backlog: VecDeque<Value>,
    /// Why the session ended, once it has.
    ended: Option<String>,
}

struct Pending {
    id: Value,
    response: oneshot::Sender<Value>,
    /// For a request answered as an SSE stream: its progress, and server requests made
    /// while no GET stream is open.
    related: Option<mpsc::Sender<Value>>,
    progress_token: Option<String>,
    since: Instant,
}

/// What a POST waits on.
pub(crate) struct Waiter {
    pub(crate) response: oneshot::Receiver<Value>,
    related: Option<mpsc::Receiver<Value>>,
    id: Value,
}

impl Session {
    /// Starts the child of a new session in the slot `reservation` holds (given back if the
    /// child cannot be started), makes it one of the bridge's sessions, then starts the tasks
    /// that read its stdout and stderr and wait for it to exit (so that a child that exits at
    /// once is forgotten after it was added, never before).
    pub(crate) fn start(bridge: &Arc<Bridge>, reservation: Reservation<'_>) -> Result<Arc<Session>, String> {
        let settings = &bridge.settings;
        let started = child::spawn(settings)?;
        let session = Arc::new(Session {
            id: uuid::Uuid::new_v4().simple().to_string(),
            server: settings.name.clone(),
            stdin: tokio::sync::Mutex::new(Some(started.stdin)),
            routes: Mutex::default(),
            last_active: Mutex::new(Instant::now()),
            streams_open: AtomicUsize::new(0),
            stop: Notify::new(),
        });
        tracing::info!(
            server = %session.server,
            session = %session.id,
            pid = started.child.id().unwrap_or_default(),
            "started stdio MCP server"
        );
        reservation.commit(session.clone());
        let reader = tokio::spawn(read_stdout(session.clone(), started.stdout, settings.max_message_bytes));
        tokio::spawn(log_stderr(session.server.clone(), session.id.clone(), started.stderr));
        tokio::spawn(supervise(
            session.clone(),
            Arc::downgrade(bridge),
            started.child,
            reader,
        ));
        Ok(session)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// How long nothing has happened: zero while a request waits or a stream is open.
    pub(crate) fn idle_for(&self) -> Duration {
        if self.streams_open.load(Ordering::SeqCst) > 0 || !self.routes().pending.is_empty() {
            return Duration::ZERO;
        }
        self.last_active.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    /// Asks the child to stop (stdin closed, then killed after a grace period); the
    /// supervisor then fails whatever still waits.
    pub(crate) fn end(&self) {
        self.stop.notify_one();
    }

    /// Writes one message to the child's stdin, as one line. `Err` when the session is over.
    pub(crate) async fn send(&self, message: &Value) -> Result<(), ()> {
        let mut line = serde_json::to_vec(message).map_err(|_| ())?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        let Some(pipe) = stdin.as_mut() else {
            return Err(());
        };
        let written = async {
            pipe.write_all(&line).await?;
            pipe.flush().await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(server = %self.server, session = %self.id, "cannot write to the stdio server: {e}");
            *stdin = None;
            return Err(());
        }
        self.touch();
        Ok(())
    }

    /// Registers a request about to be sent, so that its answer finds its way back.
    pub(crate) fn expect(&self, id: &Value, progress_token: Option<String>, streams: bool) -> Result<Waiter, String> {
        let key = id.to_string();
        let mut routes = self.routes();
        if let Some(why) = &routes.ended {
            return Err(format!("the session has ended: {why}"));
        }
        if routes.pending.contains_key(&key) {
            return Err(format!(
                "request id {key} is already waiting for an answer in this session"
            ));
        }
        let (response_tx, response) = oneshot::channel();
        let (related_tx, related) = if streams {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        routes.pending.insert(
            key,
            Pending {
                id: id.clone(),
                response: response_tx,
                related: related_tx,
                progress_token,
                since: Instant::now(),
            },
        );
        Ok(Waiter {
            response,
            related,
            id: id.clone(),
        })
    }

    /// Stops waiting for the answer to `id` (its POST gave up).
    pub(crate) fn forget_request(&self, id: &Value) {
        self.routes().pending.remove(&id.to_string());
    }

    /// Where a message from the child goes: a response to the POST that asked; progress to
    /// the stream of the request it reports on; anything else to the GET stream, else to the
    /// oldest request answered as a stream, else into the backlog for the next GET stream.
    fn route(&self, message: Value) {
        let mut routes = self.routes();
        let is_response =
            message.get("method").is_none() && (message.get("result").is_some() || message.get("error").is_some());
        if is_response {
            let key = message.get("id").map(Value::to_string).unwrap_or_default();
            match routes.pending.remove(&key) {
                Some(pending) => {
                    let _ = pending.response.send(message);
                }
                None => tracing::warn!(
                    server = %self.server,
                    session = %self.id,
                    id = ?key,
                    "the stdio server answered a request nobody waits for (any more)"
                ),
            }
            return;
        }
        if message.get("method").and_then(Value::as_str) == Some("notifications/progress") {
            let token = message.pointer("/params/progressToken").map(Value::to_string);
            let target = routes
                .pending
                .values()
                .find(|p| p.progress_token.is_some() && p.progress_token == token)
                .and_then(|p| p.related.as_ref());
            if let Some(tx) = target
                && tx.try_send(message.clone()).is_ok()
            {
                return;
            }
        }
        if let Some(get) = &routes.get {
            match get.try_send(message) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                    routes.get = None;
                    return self.to_stream_or_backlog(&mut routes, m);
                }
            }
        }
        self.to_stream_or_backlog(&mut routes, message);
    }

    fn to_stream_or_backlog(&self, routes: &mut Routes, message: Value) {
        let oldest = routes
            .pending
            .values()
            .filter_map(|p| Some((p.since, p.related.as_ref()?)))
            .min_by_key(|(since, _)| *since)
            .map(|(_, tx)| tx);
        let message = match oldest {
            Some(tx) => match tx.try_send(message) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => m,
            },
            None => message,
        };
        if routes.backlog.len() == MAX_BACKLOG {
            routes.backlog.pop_front();
            tracing::warn!(server = %self.server, session = %self.id, "no stream open for the stdio server's messages: dropped the oldest kept");
        }
        routes.backlog.push_back(message);
    }

    /// Ends the session for good: every request still waiting is answered with an error
    /// saying `why`, and the GET stream ends.
    fn finish(&self, why: &str) {
        let mut routes = self.routes();
        routes.ended = Some(why.to_owned());
        routes.get = None;
        for (_, pending) in routes.pending.drain() {
            let text = format!("stdio MCP server \"{}\" {why} before answering", self.server);
            let error = json!({"jsonrpc": "2.0", "id": pending.id, "error": {"code": UPSTREAM_ERROR, "message": text}});
            let _ = pending.response.send(error);
        }
    }
}

/// Routes every message the child writes to stdout; ends the session on a message larger
/// than the limit. Lines that are not JSON are logged (escaped) and skipped: MCP forbids
/// them, and passing them on could only confuse the client.
async fn read_stdout(session: Arc<Session>, stdout: ChildStdout, max: usize) {
    let mut reader = BufReader::new(stdout);
    loop {
        match read_line(&mut reader, max).await {
            Ok(Line::Complete(line)) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<Value>(&line) {
                    Ok(message @ Value::Object(_)) => session.route(message),
                    Ok(_) | Err(_) => {
                        let text = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                        tracing::warn!(server = %session.server, session = %session.id, line = ?text, "the stdio server wrote a line to stdout that is not a JSON-RPC message; skipped");
                    }
                }
            }
            Ok(Line::TooLong(_)) => {
                tracing::warn!(server = %session.server, session = %session.id, "the stdio server sent a message larger than max_message_bytes ({max}); ending the session");
                session.end();
                return;
            }
            Ok(Line::End) => return,
            Err(e) => {
                tracing::warn!(server = %session.server, session = %session.id, "reading the stdio server's stdout failed: {e}");
                return;
            }
        }
    }
}

/// Logs the child's stderr line by line, escaped and cut at [`MAX_STDERR_LINE`].
async fn log_stderr(server: String, session: String, stderr: ChildStderr) {
    let mut reader = BufReader::new(stderr);
    loop {
        let (line, cut) = match read_line(&mut reader, MAX_STDERR_LINE).await {
            Ok(Line::Complete(line)) => (line, false),
            Ok(Line::TooLong(line)) => (line, true),
            Ok(Line::End) | Err(_) => return,
        };
        let text = String::from_utf8_lossy(&line);
        tracing::info!(target: "tollgate::stdio", server = %server, session = %session, cut, line = ?text, "stderr");
    }
}

/// Waits for the child to exit or to be asked to stop, then ends the session: its answers
/// already written are routed first, then whatever still waits fails naming the exit.
async fn supervise(
    session: Arc<Session>,
    bridge: Weak<Bridge>,
    mut child: tokio::process::Child,
    reader: tokio::task::JoinHandle<()>,
) {
    let (status, asked) = tokio::select! {
        status = child.wait() => (status, false),
        () = session.stop.notified() => {
            // Closing stdin is the MCP stdio way to ask a server to exit.
            session.stdin.lock().await.take();
            (child::stop(&mut child).await, true)
        }
    };
    // What the child wrote before exiting still reaches its requests.
    let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    let why = match &status {
        Ok(s) => format!("exited ({s})"),
        Err(e) => format!("could not be waited for ({e})"),
    };
    if asked {
        tracing::info!(server = %session.server, session = %session.id, "stdio session ended; the server {why}");
    } else {
        tracing::warn!(server = %session.server, session = %session.id, "stdio MCP server {why}");
    }
    session.stdin.lock().await.take();
    session.finish(&why);
    if let Some(bridge) = bridge.upgrade() {
        bridge.forget(&session.id);
    }
}

/// Counts a stream as open for as long as it lives.
struct OpenStream(Arc<Session>);

impl OpenStream {
    fn new(session: Arc<Session>) -> OpenStream {
        session.streams_open.fetch_add(1, Ordering::SeqCst);
        OpenStream(session)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

fn sse_event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

fn sse_response(body: Body) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, body).into_response()
}

/// A request's answer as an SSE stream: its progress and related server messages as they
/// come, then its response, then the end.
pub(crate) fn event_stream(session: Arc<Session>, waiter: Waiter, timeout: Duration) -> Response {
    struct State {
        open: OpenStream,
        waiter: Waiter,
        deadline: tokio::time::Instant,
        done: bool,
    }
    let state = State {
        open: OpenStream::new(session),
        waiter,
        deadline: tokio::time::Instant::now() + timeout,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let related = async {
            match s.waiter.related.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            biased;
            Some(message) = related => message,
            answer = &mut s.waiter.response => {
                s.done = true;
                match answer {
                    Ok(answer) => answer,
                    Err(_) => {
                        let text = format!("stdio MCP server \"{}\": the session ended", s.open.0.server);
                        json!({"jsonrpc": "2.0", "id": s.waiter.id, "error": {"code": UPSTREAM_ERROR, "message": text}})
                    }
                }
            }
            () = tokio::time::sleep_until(s.deadline) => {
                s.done = true;
                s.open.0.forget_request(&s.waiter.id);
                let text = format!("stdio MCP server \"{}\" did not answer in time", s.open.0.server);
                json!({"jsonrpc": "2.0", "id": s.waiter.id, "error": {"code": UPSTREAM_ERROR, "message": text}})
            }
        };
        Some((Ok::<_, Infallible>(sse_event(&message)), s))
    });
    sse_response(Body::from_stream(stream))
}

/// The session's GET stream: the backlog first, then every server message no request
/// stream took, until the session ends or the client goes away. A new GET replaces the
/// previous one.
pub(crate) fn get_stream(session: Arc<Session>) -> Response {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE.max(MAX_BACKLOG));
    {
        let mut routes = session.routes();
        if routes.ended.is_some() {
            drop(routes);
            return (StatusCode::NOT_FOUND, "session ended").into_response();
        }
        while let Some(message) = routes.backlog.pop_front() {
            if tx.try_send(message).is_err() {
                break;
            }
        }
        routes.get = Some(tx);
    }
    let open = OpenStream::new(session);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |message| {
        let _keep = &open;
        Ok::<_, Infallible>(sse_event(&message))
    });
    sse_response(Body::from_stream(stream))
}
