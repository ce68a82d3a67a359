//! The edge's configuration: `[edge]`, `[[upstreams]]` and `[[grants]]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

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
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            listen: default_listen(),
            decision: default_decision(),
            decision_timeout_ms: default_decision_timeout_ms(),
            upstream_timeout_ms: default_upstream_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            refusal: RefusalMode::default(),
            fail_open: false,
            drain_timeout_ms: default_drain_ms(),
        }
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub name: String,
    /// The server's Streamable HTTP endpoint, e.g. `http://127.0.0.1:9000/mcp`.
    pub url: String,
    /// Headers the edge adds to every upstream request, e.g. the upstream's own
    /// `Authorization`. Never shown to agents.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
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
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_decision() -> Vec<String> {
    vec!["http://127.0.0.1:50051".into()]
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
