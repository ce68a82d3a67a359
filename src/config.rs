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
    /// `[audit]`: the decision journal.
    #[serde(default)]
    pub audit: tollgate_decision::audit::AuditSettings,
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
    /// Redis Sentinel nodes (kind = "redis-sentinel"), e.g. `["redis://10.0.0.1:26379"]`.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The master's name at the sentinels (kind = "redis-sentinel").
    #[serde(default)]
    pub master_name: Option<String>,
    /// With sentinels: the user and password for the master and replicas they name.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<tollgate_limiter::Secret>,
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
    /// Redis replicas that must acknowledge an admission's writes (`WAIT`) before the call
    /// is admitted; 0 (default) does not wait. See "Replica-acknowledged admissions".
    #[serde(default)]
    pub replica_ack: Option<u32>,
    /// How long an admission waits for `replica_ack` replicas (ms). Default 100.
    #[serde(default)]
    pub replica_ack_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
    /// A master (with replicas) found through Redis Sentinel.
    #[serde(rename = "redis-sentinel")]
    RedisSentinel,
}

impl StoreSettings {
    /// Builds the counter store these settings describe, and the approval store beside it
    /// (the same Redis, or this process's memory).
    /// The counter store, the approval store and the console's broadcast channel.
    pub fn build(&self) -> anyhow::Result<Stores> {
        Ok(match self.kind {
            StoreKind::Memory if self.replica_ack.unwrap_or(0) > 0 || !self.sentinels.is_empty() => {
                anyhow::bail!("store.replica_ack and store.sentinels are for Redis stores (store.kind is \"memory\")")
            }
            StoreKind::Memory => (
                Arc::new(
                    MemoryStore::default()
                        .with_max_keys_per_counter(self.max_keys_per_counter.unwrap_or(DEFAULT_MAX_KEYS_PER_COUNTER)),
                ),
                Arc::new(MemoryApprovals::default()),
                Arc::new(MemoryBroadcast::default()),
                Arc::new(tollgate_limiter::MemoryTasks::default()),
                Arc::new(tollgate_limiter::MemoryPins::default()),
                false,
            ),
            StoreKind::Redis | StoreKind::RedisSentinel => {
                if self.kind == StoreKind::Redis
                    && (self.username.is_some() || self.password.is_some() || self.master_name.is_some())
                {
                    anyhow::bail!(
                        "store.username, store.password and store.master_name are for store.kind = \"redis-sentinel\" \
                         (with kind = \"redis\", a URL carries its own credentials: redis://user:password@host:port)"
                    );
                }
                match (self.kind, self.sentinels.is_empty()) {
                    (StoreKind::Redis, false) => {
                        anyhow::bail!("store.sentinels is for store.kind = \"redis-sentinel\" (kind is \"redis\")")
                    }
                    (StoreKind::RedisSentinel, true) => {
                        anyhow::bail!("store.kind = \"redis-sentinel\" needs store.sentinels (and store.master_name)")
                    }
                    _ => {}
                }
                let defaults = RedisSettings::default();
                let redis = RedisSettings {
                    url: self.url.clone(),
                    cluster: self.cluster.clone(),
                    sentinels: self.sentinels.clone(),
                    master_name: self.master_name.clone(),
                    username: self.username.clone(),
                    password: self.password.clone(),
                    pool_size: self.pool_size.unwrap_or(defaults.pool_size),
                    connect_timeout_ms: self.connect_timeout_ms.unwrap_or(defaults.connect_timeout_ms),
                    key_prefix: self.key_prefix.clone().unwrap_or(defaults.key_prefix),
                    max_keys_per_counter: self.max_keys_per_counter.unwrap_or(defaults.max_keys_per_counter),
                    ca_file: self.ca_file.clone(),
                    client_cert: self.client_cert.clone(),
                    client_key: self.client_key.clone(),
                    replica_ack: self.replica_ack.unwrap_or(defaults.replica_ack),
                    replica_ack_timeout_ms: self.replica_ack_timeout_ms.unwrap_or(defaults.replica_ack_timeout_ms),
                };
                let store = Arc::new(RedisStore::new(&redis)?);
                (store.clone(), store.clone(), store.clone(), store.clone(), store, true)
            }
        })
    }
}

/// The counter store, the approval store, the console's broadcast channel, the task
/// records, tool pins, and whether they are shared with other processes (Redis).
pub type Stores = (
    Arc<dyn CounterStore>,
    Arc<dyn ApprovalStore>,
    Arc<dyn Broadcast>,
    Arc<dyn tollgate_limiter::TaskStore>,
    Arc<dyn tollgate_limiter::PinStore>,
    bool,
);

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
        let mut environment = config::Environment::with_prefix("TOLLGATE")
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .try_parsing(true)
            .source(Some(section_overrides()));
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let source = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Config = source
            .try_deserialize()
            .with_context(|| format!("invalid config {}", path.display()))?;
        // Every file a config names is relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        for file in config.paths_mut() {
            *file = resolve(base, file);
        }
        Ok(config)
    }

    /// Every path the configuration holds, in one walk: what [`Config::load`] resolves
    /// against the config file's folder. A new path setting goes here (a test compares
    /// this list with the settings' `PathBuf` fields).
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let edge = &mut self.edge;
        let mut paths: Vec<&mut Option<PathBuf>> = vec![
            &mut edge.tls_cert,
            &mut edge.tls_key,
            &mut edge.decision_ca_file,
            &mut edge.decision_client_cert,
            &mut edge.decision_client_key,
            &mut edge.pins_file,
            &mut self.store.ca_file,
            &mut self.store.client_cert,
            &mut self.store.client_key,
        ];
        for upstream in &mut self.upstreams {
            paths.extend([
                &mut upstream.ca_file,
                &mut upstream.client_cert,
                &mut upstream.client_key,
                &mut upstream.cwd,
            ]);
        }
        for issuer in &mut self.identity.jwt {
            paths.extend([&mut issuer.jwks_file, &mut issuer.ca_file]);
        }
        let mut all: Vec<&mut PathBuf> = paths.into_iter().flatten().collect();
        if let Some(decision) = &mut self.decision {
            all.push(&mut decision.policy);
            all.extend(
                [
                    &mut decision.shadow_policy,
                    &mut decision.tls_cert,
                    &mut decision.tls_key,
                    &mut decision.tls_client_ca,
                ]
                .into_iter()
                .flatten(),
            );
        }
        all
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
/// Every list setting an environment variable can give, comma-separated
/// (`TOLLGATE_EDGE__ALLOWED_HOSTS=a.example,b.example`). Lists inside arrays of tables
/// (`[[upstreams]]`, `[[grants]]`, `[[identity.jwt]]`) come from the file only. A test compares
/// this with the settings' list fields.
pub const LIST_KEYS: &[&str] = &[
    "edge.decision",
    "edge.allowed_origins",
    "edge.allowed_hosts",
    "edge.aggregate.session_keys",
    "store.cluster",
    "store.sentinels",
];

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The path and list settings' fields, counted in the settings' sources.
    fn fields_of(kind: &str) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        for file in [
            "crates/tollgate-edge/src/settings.rs",
            "crates/tollgate-edge/src/identity.rs",
            "crates/tollgate-decision/src/service.rs",
            "src/config.rs",
        ] {
            let source = std::fs::read_to_string(root.join(file)).expect("source");
            for line in source.lines() {
                let line = line.trim();
                let Some(rest) = line.strip_prefix("pub ") else {
                    continue;
                };
                let Some((name, ty)) = rest.split_once(": ") else {
                    continue;
                };
                let ty = ty.trim_end_matches(',');
                if ty == kind || ty == format!("Option<{kind}>") {
                    found.push(format!("{file}:{name}"));
                }
            }
        }
        found
    }

    /// Every `PathBuf` setting is in [`Config::paths_mut`], so every one is resolved against
    /// the config file (issue 26, item 2).
    #[test]
    fn every_path_setting_is_walked() {
        let dir = std::env::temp_dir().join(format!("tollgate-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("all.toml");
        std::fs::write(
            &path,
            r#"[edge]
tls_cert = "a"
tls_key = "a"
decision_ca_file = "a"
decision_client_cert = "a"
decision_client_key = "a"
pins_file = "a"
[decision]
policy = "a"
shadow_policy = "a"
tls_cert = "a"
tls_key = "a"
tls_client_ca = "a"
[store]
ca_file = "a"
client_cert = "a"
client_key = "a"
[[upstreams]]
name = "u"
url = "http://127.0.0.1:9/mcp"
ca_file = "a"
client_cert = "a"
client_key = "a"
cwd = "a"
[[identity.jwt]]
issuer = "https://i"
audiences = ["x"]
jwks_file = "a"
ca_file = "a"
"#,
        )
        .expect("write");
        let mut config = Config::load(&path).expect("load");
        let paths = config.paths_mut();
        let fields = fields_of("PathBuf");
        assert_eq!(paths.len(), fields.len(), "paths walked vs path fields: {fields:#?}");
        assert!(
            paths.iter().all(|p| p.starts_with(&dir)),
            "all resolved against the config's folder"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every list setting of a section (not inside an array of tables) is in [`LIST_KEYS`]
    /// (issue 26, item 3).
    #[test]
    fn every_list_setting_is_parsed_from_the_environment() {
        let lists: Vec<String> = fields_of("Vec<String>")
            .into_iter()
            .chain(fields_of("Vec<Secret>"))
            .collect();
        // Lists inside arrays of tables ([[upstreams]] command, [[grants]] servers,
        // [[identity.jwt]] audiences and algorithms) cannot be addressed from the environment;
        // `scopes` is a token's, not a setting.
        let in_tables = ["command", "servers", "audiences", "algorithms", "scopes"];
        let section_lists: Vec<&String> = lists
            .iter()
            .filter(|f| !in_tables.iter().any(|t| f.ends_with(&format!(":{t}"))))
            .collect();
        assert_eq!(
            section_lists.len(),
            LIST_KEYS.len(),
            "{section_lists:#?} vs {LIST_KEYS:?}"
        );
        for field in section_lists {
            let name = field.rsplit(':').next().unwrap_or_default();
            assert!(
                LIST_KEYS.iter().any(|k| k.ends_with(&format!(".{name}"))),
                "{field} is not in LIST_KEYS"
            );
        }
    }
}
