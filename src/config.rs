//! One `Config` for every subcommand: a TOML file plus `TOLLGATE_*` environment variables
//! (`__` separates levels: `TOLLGATE_EDGE__LISTEN=0.0.0.0:8080`). Validated once at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;
use tollgate_decision::DecisionSettings;
use tollgate_edge::{EdgeSettings, GrantSettings, UpstreamSettings};
use tollgate_limiter::{
    ApprovalStore, Broadcast, CounterStore, DEFAULT_MAX_KEYS_PER_COUNTER, MemoryApprovals, MemoryBroadcast,
    MemoryStore, RedisSettings, RedisStore,
};
use tollgate_telemetry::TelemetrySettings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub edge: EdgeSettings,
    #[serde(default)]
    pub decision: Option<DecisionSettings>,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSettings>,
    #[serde(default)]
    pub grants: Vec<GrantSettings>,
    /// Who may approve or deny calls (`[[operators]] name = "…", key_sha256 = "…"`).
    #[serde(default)]
    pub operators: Vec<tollgate_decision::OperatorSettings>,
    #[serde(default)]
    pub approvals: crate::webhook::ApprovalSettings,
    /// How agents may authenticate besides static keys (`[[identity.jwt]]` issuers).
    #[serde(default)]
    pub identity: tollgate_edge::IdentitySettings,
    /// Envoy rate limit descriptors mapped to counters (`[[envoy.limits]]`), served by
    /// `tollgate decision` as `envoy.service.ratelimit.v3.RateLimitService`.
    #[serde(default)]
    pub envoy: tollgate_decision::envoy::EnvoySettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// The operators' web console on `decision.admin_listen`.
    #[serde(default)]
    pub console: ConsoleSettings,
    /// `[stdio]`: the stdio servers `tollgate up` runs (`[[upstreams]] command`).
    #[serde(default)]
    pub stdio: StdioSection,
}

/// `[stdio]`: limits of the stdio bridges `tollgate up` runs for `[[upstreams]] command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioSection {
    /// Sessions (child processes) of each stdio server one grant may hold at once; its next
    /// `initialize` gets 429 (default 8). Each server's `max_sessions` still bounds them all.
    #[serde(default = "default_max_sessions_per_grant")]
    pub max_sessions_per_grant: usize,
}

fn default_max_sessions_per_grant() -> usize {
    tollgate_stdio::StdioSettings::DEFAULT_MAX_SESSIONS_PER_GRANT
}

impl Default for StdioSection {
    fn default() -> Self {
        StdioSection {
            max_sessions_per_grant: default_max_sessions_per_grant(),
        }
    }
}

/// `[console]`: the operators' web console, served with the operators' API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve the console at `/console` (default true; it still needs `[[operators]]`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A signed-in session lasts this long (default 8 hours).
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Signs session cookies: at least 32 characters, the same on every replica so that a
    /// session works on all of them behind one address. Default: a random key per process
    /// (sessions then work only on the replica that signed them in).
    #[serde(default)]
    pub session_secret: Option<tollgate_edge::Secret>,
    /// Mark the session cookie `Secure` (set when operators reach the console over https,
    /// e.g. through a TLS-terminating proxy).
    #[serde(default)]
    pub secure_cookie: bool,
    /// A link to each decision's trace: a URL with `{trace_id}`, e.g.
    /// `http://localhost:16686/trace/{trace_id}` (Jaeger).
    #[serde(default)]
    pub trace_url: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_session_ttl_secs() -> u64 {
    8 * 3600
}

impl ConsoleSettings {
    /// A configured secret must be at least 32 characters, a trace URL an http(s) URL with
    /// `{trace_id}`, sessions must last.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.session_secret.as_ref().is_some_and(|s| s.0.len() < 32) {
            bail!("console.session_secret must be at least 32 characters (tollgate keygen prints one)");
        }
        if let Some(url) = &self.trace_url
            && !(url.contains("{trace_id}") && (url.starts_with("http://") || url.starts_with("https://")))
        {
            bail!(
                "console.trace_url must be an http(s) URL containing {{trace_id}}, e.g. http://localhost:16686/trace/{{trace_id}}"
            );
        }
        if self.session_ttl_secs == 0 {
            bail!("console.session_ttl_secs must be above 0");
        }
        Ok(())
    }
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            session_ttl_secs: default_session_ttl_secs(),
            session_secret: None,
            secure_cookie: false,
            trace_url: None,
        }
    }
}

/// `[store]`: where rate-limit counters live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `memory` (default): counters in this process. `redis`: shared by every replica.
    #[serde(default)]
    pub kind: StoreKind,
    /// Standalone Redis, e.g. `redis://127.0.0.1:6379` (kind = "redis").
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Cluster seed nodes (kind = "redis").
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Most open Redis connections. Default 32.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Deadline to open a Redis connection or wait for a free one (ms). Default 1000.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// First part of every Redis key. Default `tollgate`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Live keys one counter may have (scope values such as argument values come from
    /// callers); a call needing one more is a store error, decided by the rule's
    /// `on_store_error`. Memory store: per counter. Redis: per counter and hash tag, i.e.
    /// per grant, agent or server when the scope starts with one, else per counter.
    /// Default 100000.
    #[serde(default)]
    pub max_keys_per_counter: Option<usize>,
    /// For `rediss://` URLs: CA certificates (PEM) besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For `rediss://` URLs: a client certificate (PEM), for servers that require one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

impl StoreSettings {
    /// Builds the counter store these settings describe, and the approval store beside it
    /// (the same Redis, or this process's memory).
    /// The counter store, the approval store and the console's broadcast channel.
    pub fn build(&self) -> anyhow::Result<Stores> {
        Ok(match self.kind {
            StoreKind::Memory => (
                Arc::new(
                    MemoryStore::default()
                        .with_max_keys_per_counter(self.max_keys_per_counter.unwrap_or(DEFAULT_MAX_KEYS_PER_COUNTER)),
                ),
                Arc::new(MemoryApprovals::default()),
                Arc::new(MemoryBroadcast::default()),
            ),
            StoreKind::Redis => {
                let defaults = RedisSettings::default();
                let redis = RedisSettings {
                    url: self.url.clone(),
                    cluster: self.cluster.clone(),
                    pool_size: self.pool_size.unwrap_or(defaults.pool_size),
                    connect_timeout_ms: self.connect_timeout_ms.unwrap_or(defaults.connect_timeout_ms),
                    key_prefix: self.key_prefix.clone().unwrap_or(defaults.key_prefix),
                    max_keys_per_counter: self.max_keys_per_counter.unwrap_or(defaults.max_keys_per_counter),
                    ca_file: self.ca_file.clone(),
                    client_cert: self.client_cert.clone(),
                    client_key: self.client_key.clone(),
                };
                let store = Arc::new(RedisStore::new(&redis)?);
                (store.clone(), store.clone(), store)
            }
        })
    }
}

/// The counter store, the approval store and the console's broadcast channel.
pub type Stores = (Arc<dyn CounterStore>, Arc<dyn ApprovalStore>, Arc<dyn Broadcast>);

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter, e.g. `info` or `tollgate=debug,info`. `RUST_LOG` wins when set.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { level: default_level() }
    }
}

fn default_level() -> String {
    "info".into()
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        if !path.exists() {
            bail!("config file {} does not exist", path.display());
        }
        let source = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("TOLLGATE")
                    .prefix_separator("_")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("edge.decision")
                    .with_list_parse_key("store.cluster")
                    .with_list_parse_key("edge.aggregate.session_keys")
                    .try_parsing(true)
                    .source(Some(section_overrides())),
            )
            .build()
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Config = source
            .try_deserialize()
            .with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(decision) = &mut config.decision {
            decision.policy = resolve(base, &decision.policy);
        }
        // Every file a config names is relative to the config file.
        let files = [&mut config.edge.tls_cert, &mut config.edge.tls_key].into_iter().chain(
            config
                .upstreams
                .iter_mut()
                .flat_map(|u| [&mut u.ca_file, &mut u.client_cert, &mut u.client_key, &mut u.cwd]),
        );
        for file in files.flatten() {
            *file = resolve(base, file);
        }
        Ok(config)
    }

    /// The `[decision]` section, which `up` and `decision` need.
    pub fn decision(&self) -> anyhow::Result<&DecisionSettings> {
        self.decision
            .as_ref()
            .context("the config has no [decision] section: set at least decision.policy = \"policy.json\"")
    }
}

/// The `TOLLGATE_SECTION__KEY` variables. Others, like `TOLLGATE_CONFIG` (the config file's
/// path), are not configuration keys and must not be read as such.
fn section_overrides() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with("TOLLGATE_") && name.contains("__"))
        .collect()
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}
