//! The edge's configuration: `[edge]`, `[[upstreams]]` and `[[grants]]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[edge]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSettings {
    /// HTTP listen address. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Decision service replicas, tried round-robin with failover (`tollgate edge` only).
    #[serde(default = "default_decision")]
    pub decision: Vec<String>,
    /// Deadline for one decision, failover included, in milliseconds. Default 1000.
    #[serde(default = "default_decision_timeout_ms")]
    pub decision_timeout_ms: u64,
    /// Most decisions one message of the edge's decision stream carries (`tollgate edge`
    /// only): concurrent calls' decisions travel together, one at a time when idle. 0 asks
    /// each decision with its own unary `Decide` call. Default 256.
    #[serde(default = "default_decision_batch_max")]
    pub decision_batch_max: usize,
    /// Deadline for an upstream to start answering, in milliseconds. Default 30000.
    /// Streams that have started are not cut.
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// Largest accepted request body in bytes; larger ones get 413. Default 4 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How refusals reach the agent: `result` (a `CallToolResult` with `isError: true`,
    /// which the model reads) or `error` (a JSON-RPC error). Default `result`.
    #[serde(default)]
    pub refusal: RefusalMode,
    /// Forward calls unchecked when no decision service answers. Default false (deny).
    #[serde(default)]
    pub fail_open: bool,
    /// How long SIGTERM waits for in-flight requests, in milliseconds. Default 10000.
    #[serde(default = "default_drain_ms")]
    pub drain_timeout_ms: u64,
    /// Token presented to the decision service (`authorization: Bearer`), matching its
    /// `decision.token_sha256` (`tollgate edge` only). Best set from the environment:
    /// `TOLLGATE_EDGE__DECISION_TOKEN`.
    #[serde(default)]
    pub decision_token: Option<Secret>,
    /// Most open agent connections; further clients wait in the kernel's backlog.
    /// Default 4096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and the longest an idle keep-alive
    /// connection stays open, in milliseconds. Default 10000.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's body, in milliseconds; slower ones get 408.
    /// Default 30000.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Largest upstream message the edge inspects: a `tools/list` answer, or one SSE event
    /// of any upstream stream. Larger ones end the answer with an error. Default 16 MiB.
    #[serde(default = "default_max_upstream_message_bytes")]
    pub max_upstream_message_bytes: usize,
    /// Browser origins (`scheme://host[:port]`) allowed to call the edge; requests with
    /// any other `Origin` get 403 (DNS-rebinding protection, as MCP requires). Requests
    /// without `Origin` (non-browser agents) are not affected. `["*"]` allows any.
    /// Default: loopback origins (`localhost`, `127.0.0.1`, `[::1]`, any port) when
    /// `listen` is a loopback address, none otherwise.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// `Host` values (`host` or `host:port`) the edge answers to; others get 403.
    /// `["*"]` allows any. Default: loopback names when `listen` is a loopback address
    /// (so a rebound DNS name cannot reach it), any otherwise.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// Longest the edge holds a call open waiting for an operator's approval, whatever the
    /// policy's `approval.hold` says, in milliseconds; 0 never holds (every call that needs
    /// approval is answered at once, naming the approval). Default 300000.
    #[serde(default = "default_max_hold_ms")]
    pub max_hold_ms: u64,
    /// MCP 2026-07-28 Multi Round-Trip Requests: how many times one call may ask for input
    /// before its retries are refused. Default 8.
    #[serde(default = "default_max_input_rounds")]
    pub max_input_rounds: u32,
    /// How long the `requestState` envelope of a call that asked for input stays valid
    /// (ms). Default 600000.
    #[serde(default = "default_input_state_ttl_ms")]
    pub input_state_ttl_ms: u64,
    /// How often a held call's stream carries a keep-alive, in milliseconds: an MCP
    /// `notifications/progress` when the call has a `progressToken`, an SSE comment
    /// otherwise. Default 10000.
    #[serde(default = "default_hold_keepalive_ms")]
    pub hold_keepalive_ms: u64,
    /// Serve agents over HTTPS with this certificate chain (PEM); needs `tls_key`. The files
    /// are re-read when they change (checked at most once a second), so a rotation needs
    /// no restart.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// For `https://` decision addresses: CA certificates (PEM) that signed the decision
    /// services' certificates (default: the system's roots).
    #[serde(default)]
    pub decision_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to decision services that require mutual TLS.
    #[serde(default)]
    pub decision_client_cert: Option<PathBuf>,
    /// The private key of `decision_client_cert` (PEM).
    #[serde(default)]
    pub decision_client_key: Option<PathBuf>,
    /// The aggregated endpoint `/mcp`.
    #[serde(default)]
    pub aggregate: AggregateSettings,
    /// How long the edge reuses the policy's answer on which entries of an upstream's
    /// tools (resources, prompts) list a grant may see, for the same list and policy; 0 asks
    /// for every list. A policy change shows at once on an edge that makes decisions, and
    /// within this time on any edge.
    #[serde(default = "default_list_cache_ms")]
    pub list_cache_ms: u64,
    /// Most calls one grant may have held open for an operator's approval on this edge at
    /// once; a call beyond it is answered at once, naming its approval (as in `retry`
    /// mode), so one grant cannot fill `max_connections`. Default 32.
    #[serde(default = "default_max_held_per_grant")]
    pub max_held_per_grant: usize,
    /// Most server-to-client streams (GET) one grant may have open on this edge at once;
    /// further ones get 429. Default 32.
    #[serde(default = "default_max_streams_per_grant")]
    pub max_streams_per_grant: usize,
    /// Interval of the keep-alive comments on `subscriptions/listen` streams (MCP
    /// 2026-07-28), so proxies and clients do not end an idle subscription; 0 sends none.
    /// Default 15000.
    #[serde(default = "default_stream_keepalive_ms")]
    pub stream_keepalive_ms: u64,
    /// Most resource URIs one `subscriptions/listen` may name; a longer list is refused
    /// (-32602). Default 256.
    #[serde(default = "default_max_subscription_uris")]
    pub max_subscription_uris: usize,
    /// The operators' console as the callers' users reach it (`https://tollgate.example.com`).
    /// When set, a 2026-07-28 call held for approval by a client that supports URL-mode
    /// elicitation is answered with an `InputRequiredResult` pointing at
    /// `{console_url}/console#{approval_id}`; its retry is decided again. Default: the
    /// `[approvals] console_url`, and in `tollgate up` the local console.
    #[serde(default)]
    pub console_url: Option<String>,
    /// Tool pinning for upstreams that do not set their own `pinning`: `off`, `record`
    /// (definitions recorded, the first of each name approved, changes shown for review,
    /// nothing refused) or `enforce` (a definition an operator has not approved is hidden
    /// from lists and its calls are refused). Default `record`.
    #[serde(default)]
    pub pinning: PinningMode,
    /// The edge reads each pinned upstream's tools, prompts and resource templates lists
    /// itself at least this often (ms), besides every list it forwards and at once on a
    /// `list_changed` notification: the longest a server can change a definition without
    /// telling before calls are checked against the new one. Default 30000.
    #[serde(default = "default_pins_refresh_ms")]
    pub pins_refresh_ms: u64,
    /// Approved definitions come from this lockfile (`tollgate pins export`) instead of the
    /// store: a change is approved by changing the file (it is re-read when it changes, at
    /// the next refresh). Default: none.
    #[serde(default)]
    pub pins_file: Option<PathBuf>,
    /// Longest canonical definition recorded for review (bytes); a longer one is recorded
    /// rejected (only its digest is kept). Default 65536.
    #[serde(default = "default_pins_max_definition_bytes")]
    pub pins_max_definition_bytes: usize,
}

/// `pinning`: how an upstream's tool, prompt and resource template definitions are pinned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinningMode {
    Off,
    #[default]
    Record,
    Enforce,
}

fn default_pins_refresh_ms() -> u64 {
    30_000
}

fn default_pins_max_definition_bytes() -> usize {
    64 * 1024
}

fn default_stream_keepalive_ms() -> u64 {
    15_000
}

fn default_max_subscription_uris() -> usize {
    256
}

fn default_max_held_per_grant() -> usize {
    32
}

fn default_max_streams_per_grant() -> usize {
    32
}

fn default_max_input_rounds() -> u32 {
    8
}

fn default_input_state_ttl_ms() -> u64 {
    600_000
}

fn default_list_cache_ms() -> u64 {
    5_000
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            listen: default_listen(),
            decision: default_decision(),
            decision_timeout_ms: default_decision_timeout_ms(),
            decision_batch_max: default_decision_batch_max(),
            upstream_timeout_ms: default_upstream_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            refusal: RefusalMode::default(),
            fail_open: false,
            drain_timeout_ms: default_drain_ms(),
            decision_token: None,
            max_connections: default_max_connections(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            max_upstream_message_bytes: default_max_upstream_message_bytes(),
            allowed_origins: None,
            allowed_hosts: None,
            max_hold_ms: default_max_hold_ms(),
            max_input_rounds: default_max_input_rounds(),
            input_state_ttl_ms: default_input_state_ttl_ms(),
            hold_keepalive_ms: default_hold_keepalive_ms(),
            tls_cert: None,
            tls_key: None,
            decision_ca_file: None,
            decision_client_cert: None,
            decision_client_key: None,
            aggregate: AggregateSettings::default(),
            list_cache_ms: default_list_cache_ms(),
            max_held_per_grant: default_max_held_per_grant(),
            max_streams_per_grant: default_max_streams_per_grant(),
            stream_keepalive_ms: default_stream_keepalive_ms(),
            max_subscription_uris: default_max_subscription_uris(),
            console_url: None,
            pinning: PinningMode::default(),
            pins_refresh_ms: default_pins_refresh_ms(),
            pins_file: None,
            pins_max_definition_bytes: default_pins_max_definition_bytes(),
        }
    }
}

/// `[edge.aggregate]`: the aggregated endpoint `/mcp`, one MCP server made of several
/// upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSettings {
    /// Between an upstream's prefix and its tool (prompt) name: `k8s__rollout_pause`.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Keys that seal the aggregated session id (which holds the upstreams' session ids),
    /// shared by every edge of a cluster. The first seals new sessions; all of them open
    /// sessions, so a key can be rotated by putting the new one first and removing the old
    /// one later. Empty: a random key per process (sessions then work on this process only,
    /// and not across a restart). At least 32 characters each (`tollgate keygen`).
    #[serde(default)]
    pub session_keys: Vec<Secret>,
    /// How long the edge waits for each upstream's part of a fanned-out request
    /// (`initialize`, lists); a slower upstream is left out, with a warning.
    #[serde(default = "default_fanout_timeout_ms")]
    pub fanout_timeout_ms: u64,
    /// A resource read on `/mcp` whose URI no upstream of the session is known to list
    /// makes the edge read the resource lists of the upstreams that could serve it; each
    /// upstream's lists are read again at most this often (in milliseconds), whatever is
    /// asked meanwhile. Default 30000.
    #[serde(default = "default_lookup_interval_ms")]
    pub lookup_interval_ms: u64,
}

fn default_lookup_interval_ms() -> u64 {
    30_000
}

impl Default for AggregateSettings {
    fn default() -> Self {
        AggregateSettings {
            separator: default_separator(),
            session_keys: Vec::new(),
            fanout_timeout_ms: default_fanout_timeout_ms(),
            lookup_interval_ms: default_lookup_interval_ms(),
        }
    }
}

fn default_separator() -> String {
    "__".into()
}

fn default_fanout_timeout_ms() -> u64 {
    5_000
}

impl EdgeSettings {
    /// The TLS configuration of the agents' listener, when `tls_cert` and `tls_key` are set.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, crate::EdgeError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => tollgate_tls::server_config(cert, key, None, &[b"http/1.1"])
                .map(Some)
                .map_err(|e| crate::EdgeError::Config(format!("edge TLS: {e}"))),
            (None, None) => Ok(None),
            _ => Err(crate::EdgeError::Config(
                "edge TLS: set edge.tls_cert and edge.tls_key together".into(),
            )),
        }
    }
}

/// A configured secret: usable by the code, never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalMode {
    #[default]
    Result,
    Error,
}

/// One `[[upstreams]]` entry: an MCP server the edge fronts at `/mcp/{name}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub name: String,
    /// The server's Streamable HTTP endpoint, e.g. `http://127.0.0.1:9000/mcp`. Empty for
    /// a stdio server (`command`).
    #[serde(default)]
    pub url: String,
    /// A stdio server instead of a url: its program and arguments, run by `tollgate up`
    /// behind a Streamable HTTP adapter, one child per MCP session. Edges (`tollgate
    /// edge`) reach stdio servers through a `tollgate stdio-bridge` sidecar's url instead.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables for a `command` server.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of a `command` server.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// A `command` server's session ends after this long without a request or an open
    /// stream (default 10 minutes).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Most sessions (child processes) of a `command` server at once (default 100).
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// On the aggregated endpoint `/mcp`, this upstream's tools and prompts are named
    /// `{prefix}{separator}{name}` (default prefix: the upstream's name).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Headers the edge adds to every upstream request, e.g. the upstream's own
    /// `Authorization`. Never shown to agents.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// For `https://` urls: a PEM file of CA certificates trusted besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For `https://` urls: a client certificate (PEM chain) presented to the upstream.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// HTTP version to the upstream: `auto` (default: over https, HTTP/2 when the server
    /// offers it by ALPN, else HTTP/1.1; over http, HTTP/1.1), `http1`, or `http2` (over
    /// http, HTTP/2 with prior knowledge, "h2c"; over https, HTTP/2 only).
    #[serde(default)]
    pub http: HttpVersion,
    /// Send the caller's grant to the upstream in a `tollgate-grant` header (agents cannot
    /// set it: the edge forwards only a fixed list of their headers). For a
    /// `tollgate stdio-bridge`, whose per-grant session quotas need it; `tollgate up` sets it
    /// for its own bridges. Default false.
    #[serde(default)]
    pub forward_grant: bool,
    /// Tool pinning for this upstream (`off`, `record`, `enforce`); default `edge.pinning`.
    #[serde(default)]
    pub pinning: Option<PinningMode>,
}

/// `[[upstreams]] http`: which HTTP version the edge speaks to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    #[default]
    Auto,
    Http1,
    Http2,
}

/// One `[[grants]]` entry: a bearer key and who presents it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSettings {
    pub name: String,
    /// Agent name for audit and `agent`-scoped limits. Defaults to the grant name.
    #[serde(default)]
    pub agent: Option<String>,
    /// Hex SHA-256 of the bearer key (`printf %s "$KEY" | sha256sum`).
    pub key_sha256: String,
    /// The upstreams this grant reaches, on every endpoint: `/mcp/{server}` of any other
    /// answers as an unknown server, and `/mcp` leaves the others out (default: every
    /// upstream).
    #[serde(default)]
    pub servers: Option<Vec<String>>,
}

fn default_max_hold_ms() -> u64 {
    300_000
}

fn default_hold_keepalive_ms() -> u64 {
    10_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_decision() -> Vec<String> {
    vec!["http://127.0.0.1:50051".into()]
}

fn default_decision_batch_max() -> usize {
    tollgate_api::DEFAULT_BATCH_MAX
}

fn default_decision_timeout_ms() -> u64 {
    1000
}

fn default_upstream_timeout_ms() -> u64 {
    30_000
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_drain_ms() -> u64 {
    10_000
}

fn default_max_connections() -> usize {
    4096
}

fn default_header_read_timeout_ms() -> u64 {
    10_000
}

fn default_body_read_timeout_ms() -> u64 {
    30_000
}

fn default_max_upstream_message_bytes() -> usize {
    16 * 1024 * 1024
}
