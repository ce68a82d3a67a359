//! `tollgate demo-upstream`: an MCP server (Streamable HTTP at `/mcp`) exposing
//! Kubernetes-style tools that change nothing, so Tollgate has something to protect in the
//! quick start and in tests. Every tool answers with text that echoes its arguments.
//!
//! Built on the official Rust SDK (`rmcp`, its tower Streamable HTTP server), so it speaks
//! what the SDK speaks: MCP 2026-07-28 statelessly (`server/discover`, the `_meta` envelope,
//! `Mcp-Method`/`Mcp-Name` checked against the body) and, for older clients, the
//! `initialize` handshake (2024-11-05 up to 2025-11-25) with sessions, the GET stream and
//! `DELETE`. Like the hand-written demo before it, it also serves a session-era request sent
//! without a session (as `curl` does in the quick start) on its own. What the SDK does not know about lives here: the tools (`tools.rs`), paged
//! `tools/list` answers, and `GET /stats`, which counts the `tools/call` requests that
//! reached this server, per tool, and its POSTs per HTTP version, so tests can check that
//! nothing was forwarded without a decision. It speaks HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge, or ALPN `h2` over TLS) through whatever serves its router.

mod tools;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::StreamableHttpService;
use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const INSTRUCTIONS: &str = "A demo Kubernetes server: every tool only echoes what it would have done.";

/// How the demo server answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoOptions {
    /// Answer with SSE streams instead of JSON (when the client accepts both).
    pub sse: bool,
    /// Page `tools/list` answers this many tools at a time (`nextCursor`); all at once
    /// when `None`.
    pub page_size: Option<usize>,
}

/// The MCP side: what `rmcp` calls for each request.
#[derive(Clone)]
struct Demo {
    options: DemoOptions,
    tools: Arc<Vec<Tool>>,
}

impl Demo {
    fn new(options: DemoOptions) -> Self {
        let tools = tools::definitions()
            .into_iter()
            .map(|definition| {
                serde_json::from_value(definition).expect("the demo's tool definitions are valid MCP tools")
            })
            .collect();
        Demo {
            options,
            tools: Arc::new(tools),
        }
    }

    /// One page of the tools: the cursor is the offset of the page's first tool.
    fn page(&self, cursor: Option<&str>) -> Result<ListToolsResult, ErrorData> {
        let all = self.tools.as_slice();
        let Some(size) = self.options.page_size.filter(|n| *n > 0) else {
            return Ok(ListToolsResult::with_all_items(all.to_vec()));
        };
        let start = match cursor {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .ok()
                .filter(|n| *n < all.len())
                .ok_or_else(|| ErrorData::invalid_params("invalid cursor", None))?,
        };
        let end = (start + size).min(all.len());
        let mut page = ListToolsResult::with_all_items(all[start..end].to_vec());
        if end < all.len() {
            page.next_cursor = Some(end.to_string());
        }
        Ok(page)
    }
}

impl rmcp::ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("tollgate-demo-upstream", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(INSTRUCTIONS.into());
        info
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|tool| tool.name == name).cloned()
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.page(request.as_ref().and_then(|r| r.cursor.as_deref()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = request.arguments.map(Value::Object).unwrap_or(Value::Null);
        match tools::call(&request.name, &arguments) {
            Ok(answer) => {
                let content = vec![ContentBlock::text(answer.text)];
                Ok(if answer.is_error {
                    CallToolResult::error(content)
                } else {
                    CallToolResult::success(content)
                }
                .into())
            }
            Err(message) => Err(ErrorData::invalid_params(message, Some(json!({"tool": request.name})))),
        }
    }
}

/// The two SDK servers behind `/mcp`: one with sessions, one serving each request on its own.
#[derive(Clone)]
struct Servers {
    sessions: StreamableHttpService<Demo, LocalSessionManager>,
    stateless: StreamableHttpService<Demo, NeverSessionManager>,
}

/// The largest request body the demo reads.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The demo server's routes, for embedding (`tollgate up --demo`) and tests.
pub fn router(options: DemoOptions) -> Router {
    let demo = Demo::new(options);
    // The demo is reached through the gateway or a container network under any host name;
    // it protects nothing, so the SDK's DNS-rebinding guard (loopback only) is off.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_json_response(!options.sse)
        .with_max_request_body_bytes(MAX_BODY_BYTES);
    let servers = Servers {
        // Sessions end on DELETE or after the SDK's default five idle minutes.
        sessions: {
            let demo = demo.clone();
            StreamableHttpService::new(
                move || Ok(demo.clone()),
                Arc::new(LocalSessionManager::default()),
                config.clone().with_legacy_session_mode(true),
            )
        },
        stateless: StreamableHttpService::new(
            move || Ok(demo.clone()),
            Arc::new(NeverSessionManager::default()),
            config.with_legacy_session_mode(false),
        ),
    };
    Router::new()
        .route("/mcp", any(mcp))
        .with_state(servers)
        .layer(middleware::from_fn(count_posts))
        .route("/stats", axum::routing::get(|| async { axum::Json(tools::stats()) }))
}

/// Which SDK server answers: a request with an `Mcp-Session-Id`, a GET or DELETE, and the
/// `initialize` that opens a session go to the one with sessions; any other POST without a
/// session (every 2026-07-28 request, and a session-era request sent without the handshake,
/// as `curl` in the quick start does) is served on its own.
async fn mcp(State(servers): State<Servers>, request: Request) -> Response {
    let has_session = request.headers().contains_key("mcp-session-id");
    if request.method() != Method::POST || has_session {
        return servers.sessions.handle(request).await.map(Body::new);
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large or broken").into_response();
    };
    #[derive(serde::Deserialize)]
    struct Probe {
        method: Option<String>,
    }
    let initialize = serde_json::from_slice::<Probe>(&bytes).is_ok_and(|p| p.method.as_deref() == Some("initialize"));
    let request = Request::from_parts(parts, Body::from(bytes));
    if initialize {
        servers.sessions.handle(request).await.map(Body::new)
    } else {
        servers.stateless.handle(request).await.map(Body::new)
    }
}

/// Counts every POST to `/mcp` by HTTP version (`GET /stats`).
async fn count_posts(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST {
        tools::count_version(request.version());
    }
    next.run(request).await
}

/// Serves the demo server on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    options: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(options))
        .with_graceful_shutdown(shutdown)
        .await
}
