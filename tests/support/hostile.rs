//! A scriptable upstream MCP server for the hostile-path tests: it records every request
//! that reaches it (so a test can assert what the edge forwarded, byte for byte) and
//! answers whatever the test scripted, including answers no honest server would send.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One answer of the scripted upstream.
pub enum Reply {
    /// A body with `application/json`.
    Json(u16, String),
    /// A complete `text/event-stream` body.
    Sse(String),
    /// An SSE stream that sends `first` and then nothing, never ending; the upstream counts
    /// when the edge lets go of it.
    Hang(String),
    /// `202 Accepted`, no body.
    Accepted,
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub headers: HeaderMap,
    pub body: String,
}

type Script = dyn Fn(&Method, &Value) -> Reply + Send + Sync;

struct Shared {
    script: Box<Script>,
    received: Mutex<Vec<Received>>,
    released: Arc<AtomicUsize>,
}

pub struct Hostile {
    /// The upstream's MCP URL.
    pub url: String,
    shared: Arc<Shared>,
}

impl Hostile {
    /// Starts the upstream on a free loopback port; `script` answers each request (the
    /// JSON body, or `null` for GET and DELETE).
    pub async fn start(script: impl Fn(&Method, &Value) -> Reply + Send + Sync + 'static) -> Hostile {
        let shared = Arc::new(Shared {
            script: Box::new(script),
            received: Mutex::default(),
            released: Arc::default(),
        });
        let app = axum::Router::new()
            .route("/mcp", axum::routing::any(answer))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hostile { url, shared }
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Bodies of the POSTs received.
    pub fn bodies(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.method == Method::POST)
            .map(|r| r.body)
            .collect()
    }

    /// How many [`Reply::Hang`] streams the edge has let go of.
    pub fn released(&self) -> usize {
        self.shared.released.load(Ordering::SeqCst)
    }
}

async fn answer(State(shared): State<Arc<Shared>>, method: Method, headers: HeaderMap, body: String) -> Response {
    let value = serde_json::from_str(&body).unwrap_or(Value::Null);
    shared.received.lock().expect("lock").push(Received {
        method: method.clone(),
        headers,
        body,
    });
    match (shared.script)(&method, &value) {
        Reply::Json(status, body) => (
            StatusCode::from_u16(status).expect("status"),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        Reply::Sse(body) => (StatusCode::OK, [("content-type", "text/event-stream")], body).into_response(),
        Reply::Hang(first) => {
            let guard = Released(shared.released.clone());
            let stream = futures_util::stream::unfold((Some(first), guard), |(first, guard)| async move {
                match first {
                    Some(first) => Some((Ok::<_, std::io::Error>(first), (None, guard))),
                    None => {
                        std::future::pending::<()>().await;
                        None
                    }
                }
            });
            (
                StatusCode::OK,
                [("content-type", "text/event-stream")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Reply::Accepted => StatusCode::ACCEPTED.into_response(),
    }
}

struct Released(Arc<AtomicUsize>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A `tools/list` result listing `names`, as JSON-RPC text with the raw `id` text given
/// (e.g. `1.0`), exactly as a lenient upstream might write it.
pub fn tools_list(id: &str, names: &[&str]) -> String {
    let tools: Vec<Value> = names
        .iter()
        .map(|n| serde_json::json!({"name": n, "inputSchema": {"type": "object"}}))
        .collect();
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":{}}}}}"#,
        Value::Array(tools)
    )
}
