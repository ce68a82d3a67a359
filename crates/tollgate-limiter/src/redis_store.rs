//! The Redis counter store: counters shared by every decision replica, on a standalone
//! Redis or a Redis Cluster, decided by Lua scripts (`lua/acquire.lua`, `lua/release.lua`).
//!
//! A call's hits are grouped by tag; each group lives in one Cluster slot (the tag is the
//! key's hash tag) and is decided by one atomic script run. A call that spans several slots
//! reserves in each and releases the reservations if any slot refuses: it can briefly make
//! another call see less room than there is (under-admission), never more.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use futures_util::StreamExt;
use redis::Script;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::approvals::{Approval, ApprovalStore, Claim, NewApproval, RECHECK_ALL, Resolution};
use crate::{Admission, Algorithm, CounterStatus, CounterStore, Hit, Receipt, StoreError};

use crate::memory::REQUEST_MEMORY;
/// The script that checks and takes a call's hits (`lua/acquire.lua`).
pub const ACQUIRE_SCRIPT: &str = include_str!("../lua/acquire.lua");

/// Connections kept out of the pool for reuse (see [`Lanes`]).
const LANES: usize = 4;

/// A password: used by the code, never printed (`Debug` shows `<secret>`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<secret>\"")
    }
}

/// `[store]` settings for `kind = "redis"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// A standalone server, e.g. `redis://127.0.0.1:6379`.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Cluster seed nodes, e.g. `["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]`.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Redis Sentinel nodes (`kind = "redis-sentinel"`), e.g. `["redis://10.0.0.1:26379"]`;
    /// a URL's user and password are the sentinels' own.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under (`sentinel monitor NAME …`).
    #[serde(default)]
    pub master_name: Option<String>,
    /// With sentinels: the user and password for the master the sentinels name (and the
    /// replicas); a standalone or Cluster URL carries its own.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Most connections (or cluster clients) held open. Default 32.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Deadline to open a connection or wait for a free one, in milliseconds. Default 1000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First part of every key. Default `tollgate`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Live keys one counter may have per first scope value (per grant for scopes that
    /// start with `grant`); a call that would create one more is a store error. Default
    /// 100000.
    #[serde(default = "default_max_keys_per_counter")]
    pub max_keys_per_counter: usize,
    /// For `rediss://` URLs: CA certificates (PEM) that signed the servers' certificates
    /// (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For `rediss://` URLs: a client certificate (PEM) for servers that require one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Replicas that must acknowledge an admission's writes (Redis `WAIT`) before the call
    /// is admitted; 0 (default) does not wait.
    #[serde(default)]
    pub replica_ack: u32,
    /// How long an admission waits for `replica_ack` replicas, in milliseconds. Default 100.
    #[serde(default = "default_replica_ack_timeout_ms")]
    pub replica_ack_timeout_ms: u64,
}

fn default_replica_ack_timeout_ms() -> u64 {
    100
}

impl RedisSettings {
    /// The TLS material for `rediss://` URLs, read now (errors name the file).
    fn tls(&self) -> Result<Option<redis::TlsCertificates>, StoreError> {
        let urls: Vec<&String> = self.url.iter().chain(&self.cluster).chain(&self.sentinels).collect();
        let secure = urls.iter().filter(|u| u.starts_with("rediss://")).count();
        if secure != 0 && secure != urls.len() {
            return Err(StoreError::Config(
                "mix of redis:// and rediss:// URLs: use one scheme for every node".into(),
            ));
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| StoreError::Config(format!("cannot read {}: {e}", path.display())))
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(StoreError::Config(
                    "set store.client_cert and store.client_key together".into(),
                ));
            }
        };
        let root_cert = self.ca_file.as_ref().map(read).transpose()?;
        if root_cert.is_none() && client_tls.is_none() {
            return Ok(None);
        }
        if secure == 0 {
            return Err(StoreError::Config(
                "store.ca_file, client_cert and client_key need rediss:// URLs".into(),
            ));
        }
        Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
    }
}

/// `url` without its password (for messages): `redis://user:***@host:port`.
fn redacted(url: &str) -> String {
    // Whatever comes before the last `@` may hold a password, however malformed the URL.
    match url.rsplit_once('@') {
        Some((before, host)) => {
            let scheme = before
                .split_once("://")
                .map(|(s, _)| format!("{s}://"))
                .unwrap_or_default();
            format!("{scheme}***@{host}")
        }
        None => url.to_owned(),
    }
}

/// A client for one node, with the store's TLS material when it has some.
fn node_client(url: &str, tls: Option<&redis::TlsCertificates>) -> redis::RedisResult<redis::Client> {
    match tls {
        Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
        None => redis::Client::open(url),
    }
}

/// Redis Cluster connections for the pool, from a client that carries the store's TLS
/// material (deadpool-redis's own cluster manager cannot take certificates).
struct ClusterManager {
    client: redis::cluster::ClusterClient,
}

impl deadpool::managed::Manager for ClusterManager {
    type Type = redis::cluster_async::ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut Self::Type,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Self::Error> {
        redis::cmd("PING").query_async::<String>(conn).await?;
        Ok(())
    }
}

type ClusterPool = deadpool::managed::Pool<ClusterManager>;

/// Connections to the master a set of Redis Sentinels names now. A new connection asks
/// the sentinels again, so after a failover the pool's new connections go to the new master;
/// a kept connection whose server is no longer a master (an old master back as a replica)
/// is dropped when it is checked.
struct SentinelManager {
    client: Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    config: redis::AsyncConnectionConfig,
    /// The primary's address the last connection was made to (see [`SentinelBackend`]).
    primary: Arc<std::sync::Mutex<Option<String>>>,
}

/// The Sentinel backend. In a failover the sentinels name the new primary while the old one
/// may still answer as a primary for seconds (a manual `SENTINEL FAILOVER`, a partition):
/// writes sent there are lost when it is made a replica. So a watcher asks the sentinels every
/// [`SENTINEL_WATCH`] which server is the primary, and when it is not the one the connections
/// in use were made to, drops them (lanes and pool): the next call connects to the new one.
struct SentinelBackend {
    pool: SentinelPool,
    lanes: Lanes<redis::aio::MultiplexedConnection>,
    primary: Arc<std::sync::Mutex<Option<String>>>,
    sentinels: Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    watching: AtomicBool,
}

/// How often the sentinels are asked which server is the primary.
const SENTINEL_WATCH: Duration = Duration::from_millis(250);

impl SentinelBackend {
    /// Starts the watcher (once; it ends with the store).
    fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let backend = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SENTINEL_WATCH).await;
                let Some(this) = backend.upgrade() else { return };
                let named = tokio::time::timeout(Duration::from_secs(1), async {
                    let client = this.sentinels.lock().await.async_get_client().await?;
                    Ok::<_, redis::RedisError>(client.get_connection_info().addr().to_string())
                })
                .await;
                let Ok(Ok(named)) = named else { continue };
                let mut primary = this.primary.lock().unwrap_or_else(|e| e.into_inner());
                if primary.as_ref().is_some_and(|p| *p != named) {
                    tracing::info!(
                        old = primary.as_deref().unwrap_or_default(),
                        new = %named,
                        "the sentinels name a new primary: dropping the connections to the old one"
                    );
                    *primary = None;
                    drop(primary);
                    this.lanes.clear_all();
                    this.pool.retain(|_, _| false);
                }
            }
        });
    }
}

impl deadpool::managed::Manager for SentinelManager {
    type Type = redis::aio::MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        let client = self.client.lock().await.async_get_client().await?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        is_master(&mut conn).await?;
        *self.primary.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.get_connection_info().addr().to_string());
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut Self::Type,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Self::Error> {
        is_master(conn).await?;
        Ok(())
    }
}

/// An error unless the server on `conn` is a master (`ROLE`).
async fn is_master(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
    match role.first() {
        Some(redis::Value::BulkString(b)) if b.as_slice() == b"master" => Ok(()),
        Some(redis::Value::SimpleString(s)) if s == "master" => Ok(()),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the server is not a master (any more)",
        ))),
    }
}

type SentinelPool = deadpool::managed::Pool<SentinelManager>;

/// A sentinel client for `settings` (kind = "redis-sentinel").
fn sentinel_client(
    settings: &RedisSettings,
    tls: Option<&redis::TlsCertificates>,
) -> Result<redis::sentinel::SentinelClient, StoreError> {
    use redis::IntoConnectionInfo;
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    let master = settings
        .master_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StoreError::Config("store.kind = \"redis-sentinel\" needs store.master_name".into()))?;
    let mut addrs = Vec::new();
    let mut sentinel_auth = None;
    for url in &settings.sentinels {
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| StoreError::Config(format!("store.sentinels \"{}\": {e}", redacted(url))))?;
        let auth = info.redis_settings();
        if sentinel_auth.is_none() && auth.password().is_some() {
            sentinel_auth = Some((
                auth.username().map(str::to_owned),
                auth.password().map(str::to_owned).unwrap_or_default(),
            ));
        }
        addrs.push(info.addr().clone());
    }
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| StoreError::Config(format!("store.sentinels: {e}")))?;
    if settings.sentinels.iter().any(|u| u.starts_with("rediss://")) {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certs) = tls {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs.clone());
        }
    }
    if let Some((username, password)) = sentinel_auth {
        if let Some(username) = username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let Some(username) = &settings.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &settings.password {
        builder = builder.set_client_to_redis_password(&password.0);
    }
    builder
        .build()
        .map_err(|e| StoreError::Config(format!("store.sentinels: {e}")))
}

fn default_max_keys_per_counter() -> usize {
    crate::DEFAULT_MAX_KEYS_PER_COUNTER
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            cluster: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            username: None,
            password: None,
            pool_size: default_pool_size(),
            connect_timeout_ms: default_connect_timeout_ms(),
            key_prefix: default_key_prefix(),
            max_keys_per_counter: default_max_keys_per_counter(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            replica_ack: 0,
            replica_ack_timeout_ms: default_replica_ack_timeout_ms(),
        }
    }
}

fn default_pool_size() -> usize {
    32
}

fn default_connect_timeout_ms() -> u64 {
    1000
}

fn default_key_prefix() -> String {
    "tollgate".into()
}

enum Backend {
    Standalone(deadpool_redis::Pool, Lanes<redis::aio::MultiplexedConnection>),
    Cluster(ClusterPool, Lanes<redis::cluster_async::ClusterConnection>),
    /// The master a set of Redis Sentinels names (followed through failovers).
    Sentinel(Arc<SentinelBackend>),
}

/// Connections taken from the pool once and reused. redis-rs connections multiplex: one
/// carries any number of concurrent requests, pipelined. Checking a connection out of
/// deadpool for every call would cost a health check (`UNWATCH` + `PING`, a full round trip)
/// each time, doubling Redis round trips per decision. A lane whose connection fails is
/// emptied (all lanes are) and refilled from the pool on next use, where deadpool's check weeds out
/// broken connections and opens new ones.
struct Lanes<C> {
    /// Each lane's connection, with an id of its own (never reused).
    slots: Vec<std::sync::Mutex<Option<(u64, C)>>>,
    next: std::sync::atomic::AtomicUsize,
    ids: AtomicU64,
}

impl<C: Clone> Lanes<C> {
    fn new() -> Self {
        Lanes {
            slots: (0..LANES).map(|_| std::sync::Mutex::new(None)).collect(),
            next: Default::default(),
            ids: AtomicU64::new(1),
        }
    }

    fn slot(&self, lane: usize) -> std::sync::MutexGuard<'_, Option<(u64, C)>> {
        self.slots[lane].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next lane and its connection (with its id), if it has one.
    fn pick(&self) -> (usize, Option<(u64, C)>) {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        (lane, self.slot(lane).clone())
    }

    /// Puts `conn` in `lane`; its id.
    fn fill(&self, lane: usize, conn: C) -> u64 {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        *self.slot(lane) = Some((id, conn));
        id
    }

    /// Empties every lane: a failed connection usually means Redis restarted or failed
    /// over, and then every kept connection is dead.
    fn clear_all(&self) {
        for lane in 0..self.slots.len() {
            *self.slot(lane) = None;
        }
    }
}

impl<C: Clone + redis::aio::ConnectionLike + Send> Lanes<C> {
    /// Runs a script on the next lane's connection, taking one from the pool (`checkout`)
    /// when the lane is empty, and emptying every lane when the call or the checkout fails.
    async fn invoke<T, F, Fut>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        checkout: F,
    ) -> Result<(T, u64, C), String>
    where
        T: redis::FromRedisValue,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<C, String>>,
    {
        let (lane, conn) = self.pick();
        let (id, mut conn) = match conn {
            Some(conn) => conn,
            None => {
                let conn = checkout().await.inspect_err(|_| self.clear_all())?;
                (self.fill(lane, conn.clone()), conn)
            }
        };
        // A slot being moved answers ASK or TRYAGAIN, and a node that never ran the script
        // NOSCRIPT: the script did not run, so it is sent again (a few times, milliseconds
        // apart) rather than failing the decision. The client follows most of these itself;
        // these are the ones it hands back (an ASK to a node without the script, say).
        let mut attempt = 0;
        let answer = loop {
            match invocation.invoke_async(&mut conn).await {
                Ok(answer) => break answer,
                Err(e) if attempt < 4 && matches!(e.code(), Some("ASK" | "TRYAGAIN" | "MOVED" | "NOSCRIPT")) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                }
                Err(e) => {
                    self.clear_all();
                    return Err(e.to_string());
                }
            }
        };
        Ok((answer, id, conn))
    }
}

/// Counters in Redis.
pub struct RedisStore {
    backend: Backend,
    acquire: Script,
    release: Script,
    approval: Script,
    /// Tool pinning ([`crate::PinStore`]): compare-and-set of records, reads.
    pins_cas: Script,
    pins_read: Script,
    pins_all: Script,
    pins_by_id: Script,
    prefix: String,
    max_keys_per_counter: usize,
    errors: AtomicU64,
    /// Where approval wake-ups are subscribed: the standalone URL or the Cluster's seeds.
    nodes: Nodes,
    wakeups: Arc<broadcast::Sender<String>>,
    /// Whether the wake-up subscriber runs (started by the first waiter).
    subscribed: AtomicBool,
    /// The console's cluster-wide channel ([`Broadcast`]), relayed from its subscription.
    broadcasts: Arc<broadcast::Sender<Arc<str>>>,
    broadcast_subscribed: AtomicBool,
    publish: Script,
    /// Task records ([`TaskStore`]): one `SET … PX`, and an `MGET` of one grant's keys.
    task_record: Script,
    task_owned: Script,
    /// Remembers and looks up signed-out console sessions.
    revoked: Script,
    /// TLS material for `rediss://` nodes.
    tls: Option<redis::TlsCertificates>,
    /// Replicas that must acknowledge an admission (`WAIT`), and for how long it waits.
    replica_ack: u32,
    replica_ack_timeout: Duration,
    /// Admissions sharing `WAIT`s, per connection or slot.
    acks: std::sync::Mutex<std::collections::HashMap<AckKey, Arc<AckLane>>>,
}

/// What one slot group's script run answered.
struct GroupAnswer {
    admitted: bool,
    counters: Vec<(CounterStatus, i64)>,
    /// The connection it ran on (its lane), for a `WAIT` after it.
    used: Used,
}

/// Where subscriptions go: a standalone server or a Cluster's seeds, taken in turn, or the
/// master the sentinels name at each (re)subscription.
#[derive(Clone)]
enum Nodes {
    Fixed(Vec<String>),
    Sentinel(Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

/// The connection a script ran on: a `WAIT` sent on it afterwards covers that script's
/// writes (and every earlier write on the connection).
#[derive(Clone)]
enum Used {
    /// The connection's id (see [`Lanes`]) and the connection.
    Standalone(u64, redis::aio::MultiplexedConnection),
    /// The connection's id, the group's slot (a key in it): the `WAIT` goes to that slot's
    /// master on the same cluster connection (each lane's has connections of its own).
    Cluster(u64, String, redis::cluster_async::ClusterConnection),
}

impl Used {
    /// Admissions with the same key can share one `WAIT`: the same connection (standalone),
    /// the same slot and so the same master's connection (Cluster).
    fn ack_key(&self) -> AckKey {
        match self {
            Used::Standalone(id, _) => AckKey::Connection(*id),
            Used::Cluster(id, key, _) => AckKey::Slot(*id, redis::cluster_routing::Slot::for_key(key.as_bytes())),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum AckKey {
    Connection(u64),
    Slot(u64, redis::cluster_routing::Slot),
}

/// Admissions waiting for their replicas on one connection (or slot). A `WAIT` covers every
/// write sent on its connection before it: admissions that join the group before its `WAIT`
/// is sent (each after its script answered) share that one `WAIT`. At most one `WAIT` per
/// connection is in flight; admissions arriving meanwhile form the next group.
#[derive(Default)]
struct AckLane {
    /// The group forming (its `WAIT` not sent yet).
    forming: std::sync::Mutex<Option<Arc<AckGroup>>>,
    /// Held while a `WAIT` is in flight.
    in_flight: tokio::sync::Mutex<()>,
}

struct AckGroup {
    outcome: tokio::sync::watch::Sender<Option<Result<(), String>>>,
}

impl RedisStore {
    /// Builds the connection pool; connections are opened on first use, so a Redis that is
    /// down now only makes calls fail (per `on_store_error`) until it is back.
    pub fn new(settings: &RedisSettings) -> Result<RedisStore, StoreError> {
        let wait = Duration::from_millis(settings.connect_timeout_ms);
        let mut pool = PoolConfig::new(settings.pool_size.max(1));
        pool.timeouts = Timeouts {
            wait: Some(wait),
            create: Some(wait),
            recycle: Some(wait),
        };
        let tls = settings.tls()?;
        if settings.replica_ack > 0 && !(1..=10_000).contains(&settings.replica_ack_timeout_ms) {
            return Err(StoreError::Config(
                "store.replica_ack_timeout_ms must be between 1 and 10000 (keep it below decision.store_timeout_ms)"
                    .into(),
            ));
        }
        // A WAIT holds its connection (and the scripts pipelined behind it) for up to
        // replica_ack_timeout_ms: the client's own answer deadline must be longer.
        let response_timeout = if settings.replica_ack > 0 {
            Duration::from_millis(500 + settings.replica_ack_timeout_ms)
        } else {
            Duration::from_millis(500)
        };
        let mut nodes = Nodes::Fixed(settings.url.iter().chain(&settings.cluster).cloned().collect());
        let sentinel = if settings.sentinels.is_empty() {
            None
        } else {
            if settings.url.is_some() || !settings.cluster.is_empty() {
                return Err(StoreError::Config(
                    "set one of store.url (standalone), store.cluster or store.sentinels".into(),
                ));
            }
            // One client for the sentinels: the pool's new connections, subscriptions
            // (approval wake-ups, console broadcasts) and the watcher of the primary ask it.
            let sentinels = Arc::new(tokio::sync::Mutex::new(sentinel_client(settings, tls.as_ref())?));
            nodes = Nodes::Sentinel(sentinels.clone());
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(response_timeout));
            let primary = Arc::new(std::sync::Mutex::new(None));
            let manager = SentinelManager {
                client: sentinels.clone(),
                config,
                primary: primary.clone(),
            };
            let pool = deadpool::managed::Pool::builder(manager)
                .config(pool)
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Config(format!("store.sentinels: {e}")))?;
            Some(Backend::Sentinel(Arc::new(SentinelBackend {
                pool,
                lanes: Lanes::new(),
                primary,
                sentinels,
                watching: AtomicBool::new(false),
            })))
        };
        let backend = match (sentinel, &settings.url, settings.cluster.is_empty()) {
            (Some(sentinel), _, _) => sentinel,
            (None, Some(_), false) => {
                return Err(StoreError::Config(
                    "set either store.url (standalone) or store.cluster, not both".into(),
                ));
            }
            (None, None, true) => {
                return Err(StoreError::Config(
                    "store.kind = \"redis\" needs store.url (standalone) or store.cluster (Redis Cluster)".into(),
                ));
            }
            (None, Some(url), true) => {
                let client = node_client(url, tls.as_ref())
                    .map_err(|e| StoreError::Config(format!("store.url \"{}\": {e}", redacted(url))))?;
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(response_timeout));
                let manager = deadpool_redis::Manager::new_with_config(client.get_connection_info().clone(), config)
                    .map_err(|e| StoreError::Config(format!("store.url \"{}\": {e}", redacted(url))))?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .config(pool)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| StoreError::Config(format!("store.url \"{}\": {e}", redacted(url))))?;
                Backend::Standalone(pool, Lanes::new())
            }
            (None, None, false) => {
                // No answer deadline of the client's own (as before replica_ack): a WAIT's
                // timeout bounds it, and the decision's deadline bounds the call.
                // Retries (MOVED, ASK, TRYAGAIN while a slot moves, a failover's connection
                // errors) come within milliseconds, not after the client's default of at
                // least 1.28 s: a decision waits at most decision.store_timeout_ms (250 ms).
                let mut builder = redis::cluster::ClusterClientBuilder::new(settings.cluster.clone())
                    .retries(12)
                    .min_retry_wait(2)
                    .max_retry_wait(100)
                    .retry_wait_formula(10, 2);
                if let Some(certs) = &tls {
                    builder = builder.certs(certs.clone());
                }
                let client = builder
                    .build()
                    .map_err(|e| StoreError::Config(format!("store.cluster: {e}")))?;
                let pool = deadpool::managed::Pool::builder(ClusterManager { client })
                    .config(pool)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| StoreError::Config(format!("store.cluster: {e}")))?;
                Backend::Cluster(pool, Lanes::new())
            }
        };
        Ok(RedisStore {
            backend,
            acquire: Script::new(ACQUIRE_SCRIPT),
            release: Script::new(include_str!("../lua/release.lua")),
            approval: Script::new(include_str!("../lua/approval.lua")),
            pins_cas: Script::new(include_str!("../lua/pins_cas.lua")),
            pins_read: Script::new("return redis.call('HMGET', KEYS[1], unpack(ARGV))"),
            pins_all: Script::new("return redis.call('HVALS', KEYS[1])"),
            pins_by_id: Script::new(
                "local f = redis.call('HGET', KEYS[2], ARGV[1]) \
                 if not f then return {} end \
                 local r = redis.call('HGET', KEYS[1], f) \
                 if not r then return {} end \
                 return {f, r}",
            ),
            prefix: settings.key_prefix.clone(),
            max_keys_per_counter: settings.max_keys_per_counter,
            errors: AtomicU64::new(0),
            replica_ack: settings.replica_ack,
            replica_ack_timeout: Duration::from_millis(settings.replica_ack_timeout_ms),
            acks: Default::default(),
            nodes,
            tls,
            wakeups: Arc::new(broadcast::channel(crate::approvals::WAKEUP_BUFFER).0),
            subscribed: AtomicBool::new(false),
            broadcasts: Arc::new(broadcast::channel(crate::BROADCAST_BUFFER).0),
            broadcast_subscribed: AtomicBool::new(false),
            publish: Script::new("return redis.call('PUBLISH', KEYS[1], ARGV[1])"),
            // KEYS: the record, the grant's index of records (by expiry). A grant holds at
            // most ARGV[3] unexpired records; the index lives as long as the longest record.
            task_record: Script::new(
                "local t = redis.call('TIME') \
                 local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
                 redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) \
                 if not redis.call('ZSCORE', KEYS[2], KEYS[1]) and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then \
                   return 0 \
                 end \
                 redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
                 redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), KEYS[1]) \
                 redis.call('PEXPIRE', KEYS[2], ARGV[4]) \
                 return 1",
            ),
            task_owned: Script::new("return redis.call('MGET', unpack(KEYS))"),
            revoked: Script::new(
                "if ARGV[1] == 'revoke' then redis.call('SET', KEYS[1], '1', 'PX', ARGV[2]) return 1 end \
                 return redis.call('EXISTS', KEYS[1])",
            ),
        })
    }

    /// Runs `source` instead of [`ACQUIRE_SCRIPT`]: a test hook, for tests that give the
    /// script a clock they can step (a copy of the script whose `TIME` line adds an offset).
    #[doc(hidden)]
    pub fn with_acquire_script(mut self, source: &str) -> Self {
        self.acquire = Script::new(source);
        self
    }

    /// Store errors so far (connection failures, timeouts inside the pool, script errors).
    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn counter_key(&self, hit: &Hit) -> String {
        format!("{}:{{{}}}:{}", self.prefix, hit.tag, hit.key)
    }

    /// The registry of a counter's live keys in the hit's slot.
    fn registry_key(&self, hit: &Hit) -> String {
        format!("{}:{{{}}}:live:{}", self.prefix, hit.tag, hit.counter_name())
    }

    /// The slot's request records (a hash by request id) and their expiry (a sorted set).
    fn record_keys(&self, tag: &str) -> (String, String) {
        (
            format!("{}:{{{tag}}}:reqs", self.prefix),
            format!("{}:{{{tag}}}:reqs:expire", self.prefix),
        )
    }

    async fn run<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, StoreError> {
        self.run_on(invocation, "").await.map(|(answer, _)| answer)
    }

    /// [`RedisStore::run`], also returning the connection it ran on (`slot_key`: a key of the
    /// script's slot, for a Cluster).
    async fn run_on<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        slot_key: &str,
    ) -> Result<(T, Used), StoreError> {
        let answer = match &self.backend {
            Backend::Standalone(pool, lanes) => lanes
                .invoke(invocation, || async {
                    pool.get().await.map(|c| (*c).clone()).map_err(|e| e.to_string())
                })
                .await
                .map(|(answer, id, conn)| (answer, Used::Standalone(id, conn))),
            Backend::Cluster(pool, lanes) => lanes
                .invoke(invocation, || async {
                    pool.get().await.map(|c| (*c).clone()).map_err(|e| e.to_string())
                })
                .await
                .map(|(answer, id, conn)| (answer, Used::Cluster(id, slot_key.to_owned(), conn))),
            Backend::Sentinel(backend) => {
                backend.watch();
                backend
                    .lanes
                    .invoke(invocation, || async {
                        backend
                            .pool
                            .get()
                            .await
                            .map(|c| (*c).clone())
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map(|(answer, id, conn)| (answer, Used::Standalone(id, conn)))
            }
        };
        answer.map_err(|cause| self.fail(cause))
    }

    /// Waits until `replica_ack` replicas hold every write made on `used` so far, sharing one
    /// `WAIT` with the other admissions on the same connection (see [`AckLane`]).
    async fn replicated_together(&self, used: Used) -> Result<(), String> {
        let lane = {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: one per lane connection and per Cluster slot; lanes of connections
            // gone (refilled) are dropped when idle.
            if acks.len() > 4 * 16_384 + 64 {
                acks.retain(|_, lane| Arc::strong_count(lane) > 1);
            }
            acks.entry(used.ack_key()).or_default().clone()
        };
        let (group, leads) = {
            let mut forming = lane.forming.lock().unwrap_or_else(|e| e.into_inner());
            match &*forming {
                Some(group) => (group.clone(), false),
                None => {
                    let group = Arc::new(AckGroup {
                        outcome: tokio::sync::watch::channel(None).0,
                    });
                    *forming = Some(group.clone());
                    (group, true)
                }
            }
        };
        let mut outcome = group.outcome.subscribe();
        if leads {
            // In a task of its own: a leader whose decision is abandoned (its caller gone)
            // must not leave the group, and everyone who joins it, without an outcome.
            let (count, timeout) = (self.replica_ack, self.replica_ack_timeout);
            tokio::spawn(async move {
                let in_flight = lane.in_flight.lock().await;
                // From here on, admissions form the next group: this WAIT is sent after every
                // member's script answered.
                lane.forming.lock().unwrap_or_else(|e| e.into_inner()).take();
                let result = replicated(used, count, timeout).await;
                drop(in_flight);
                group.outcome.send_replace(Some(result));
            });
        } else {
            // Members keep only the receiver: should the leader's task end without an
            // outcome, the channel closes and they hear of it.
            drop(group);
        }
        loop {
            if let Some(result) = outcome.borrow_and_update().clone() {
                return result;
            }
            if outcome.changed().await.is_err() {
                return Err("the WAIT shared with other admissions was abandoned".into());
            }
        }
    }

    fn fail(&self, cause: String) -> StoreError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        StoreError::Unavailable(format!("redis: {cause}"))
    }

    async fn acquire_group(
        &self,
        request_id: &str,
        members: &str,
        tag: &str,
        hits: &[&Hit],
    ) -> Result<GroupAnswer, StoreError> {
        let mut invocation = self.acquire.prepare_invoke();
        let (records, expiry) = self.record_keys(tag);
        invocation.key(records).key(expiry);
        for hit in hits {
            invocation.key(self.counter_key(hit));
        }
        for hit in hits {
            invocation.key(self.registry_key(hit));
        }
        invocation.arg(request_id).arg(record_ttl_ms()).arg(members);
        for hit in hits {
            let algorithm = match hit.algorithm {
                Algorithm::SlidingLog => 0,
                Algorithm::SlidingWindow => 1,
            };
            invocation
                .arg(algorithm)
                .arg(hit.window_micros()?)
                .arg(hit.max)
                .arg(hit.cost);
        }
        invocation.arg(self.max_keys_per_counter);
        let slot_key = hits.first().map(|h| self.counter_key(h)).unwrap_or_default();
        let (raw, used): (Vec<i64>, Used) = self.run_on(&invocation, &slot_key).await?;
        if raw == [-1] {
            return Err(StoreError::Full(format!(
                "a counter already has {} live keys for {tag} (store.max_keys_per_counter)",
                self.max_keys_per_counter
            )));
        }
        if raw.len() != 1 + 4 * hits.len() {
            return Err(StoreError::Rejected(format!(
                "unexpected answer from acquire.lua: {raw:?}"
            )));
        }
        let counters = raw[1..]
            .chunks(4)
            .map(|c| {
                let status = CounterStatus {
                    remaining: c[0].max(0) as u64,
                    reset_after: Duration::from_micros(c[1].max(0) as u64),
                    retry_after: (c[2] >= 0).then(|| Duration::from_micros(c[2] as u64)),
                };
                (status, c[3])
            })
            .collect();
        Ok(GroupAnswer {
            admitted: raw[0] == 1,
            counters,
            used,
        })
    }

    /// The statuses of a group's counters as they are (the script's read-only mode:
    /// nothing taken, nothing recorded).
    async fn read_group(&self, tag: &str, hits: &[&Hit]) -> Result<Vec<CounterStatus>, StoreError> {
        let answer = self.acquire_group("", "", tag, hits).await?;
        Ok(answer.counters.into_iter().map(|(status, _)| status).collect())
    }

    async fn release_group(
        &self,
        request_id: &str,
        members: &str,
        tag: &str,
        hits: &[&Hit],
        buckets: &[i64],
    ) -> Result<(), StoreError> {
        let mut invocation = self.release.prepare_invoke();
        let (records, expiry) = self.record_keys(tag);
        invocation.key(records).key(expiry);
        for hit in hits {
            invocation.key(self.counter_key(hit));
        }
        invocation.arg(request_id).arg(record_ttl_ms()).arg(members);
        for (hit, bucket) in hits.iter().zip(buckets) {
            let algorithm = u8::from(hit.algorithm == Algorithm::SlidingWindow);
            invocation.arg(algorithm).arg(hit.cost).arg(*bucket);
        }
        self.run::<i64>(&invocation).await.map(|_| ())
    }
}

impl RedisStore {
    /// A task record's key: one hash slot per grant (so one script reads a grant's records
    /// on a Cluster), the server's length first so that no server and id pair reads as
    /// another.
    fn task_key(&self, grant: &str, server: &str, task_id: &str) -> String {
        format!("{}:{}:{server}:{task_id}", self.task_slot(grant), server.len())
    }

    /// One grant's index of its task records (same hash slot as the records).
    fn task_index_key(&self, grant: &str) -> String {
        format!("{}:index", self.task_slot(grant))
    }

    /// The start of every key of one grant's task records: its hash tag is the grant (hex,
    /// so that no grant name can end the tag).
    fn task_slot(&self, grant: &str) -> String {
        let grant: String = grant.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}:{{tasks:{grant}}}", self.prefix)
    }

    /// Tool pinning's records and their id index: one `{pins}` slot.
    fn pin_keys(&self) -> (String, String) {
        (
            format!("{}:{{pins}}:records", self.prefix),
            format!("{}:{{pins}}:ids", self.prefix),
        )
    }

    /// Reads the records of `fields` as JSON text (`None`: absent).
    async fn pin_texts(&self, fields: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let (records, _) = self.pin_keys();
        let mut invocation = self.pins_read.prepare_invoke();
        invocation.key(records);
        for field in fields {
            invocation.arg(field);
        }
        self.run(&invocation).await
    }

    /// Writes `changed` (each with the text it was read as) unless one changed meanwhile:
    /// `Ok(false)` then. Indexes the definitions' ids, forgetting those no record holds.
    async fn pin_cas(&self, changed: &[(Option<String>, crate::Pin)]) -> Result<bool, StoreError> {
        if changed.is_empty() {
            return Ok(true);
        }
        let (records, ids) = self.pin_keys();
        let mut invocation = self.pins_cas.prepare_invoke();
        invocation
            .key(records)
            .key(ids)
            .arg(changed.len())
            .arg(crate::pins::MAX_PINNED);
        let mut index: Vec<(String, String)> = Vec::new();
        let mut forget: Vec<String> = Vec::new();
        for (before, pin) in changed {
            let field = pin.key.field();
            let text = serde_json::to_string(pin).map_err(|e| StoreError::Rejected(e.to_string()))?;
            invocation.arg(&field).arg(before.as_deref().unwrap_or("")).arg(text);
            let old: Vec<String> = before
                .as_deref()
                .and_then(|t| serde_json::from_str::<crate::Pin>(t).ok())
                .map(|p| p.definitions.into_iter().map(|d| d.id).collect())
                .unwrap_or_default();
            for d in &pin.definitions {
                if !old.contains(&d.id) {
                    index.push((d.id.clone(), field.clone()));
                }
            }
            forget.extend(old.into_iter().filter(|id| pin.definitions.iter().all(|d| &d.id != id)));
        }
        invocation.arg(index.len());
        for (id, field) in &index {
            invocation.arg(id).arg(field);
        }
        for id in &forget {
            invocation.arg(id);
        }
        match self.run::<i64>(&invocation).await? {
            1 => Ok(true),
            -1 => Err(StoreError::Full(format!(
                "the store pins {} names already",
                crate::pins::MAX_PINNED
            ))),
            _ => Ok(false),
        }
    }

    fn approval_key(&self, part: &str) -> String {
        format!("{}:{{approvals}}:{part}", self.prefix)
    }

    /// The prefix of the pending-approval sets `approval.lua` keeps: one per grant (then the
    /// grant's SHA-1) and `all`. Claim, resolve and count must agree on it.
    fn pending_prefix(&self) -> String {
        self.approval_key("pending:")
    }

    /// The channel `approval.lua` publishes resolved ids on. A Redis Cluster forwards
    /// PUBLISH to every node, so a subscriber on any node hears every resolution.
    fn wakeup_channel(&self) -> String {
        self.approval_key("resolved")
    }

    /// The console's channel ([`Broadcast`]).
    fn broadcast_channel(&self) -> String {
        format!("{}:{{console}}:broadcast", self.prefix)
    }

    async fn approval_script(&self, second_key: String, args: &[&str]) -> Result<Vec<String>, StoreError> {
        let mut invocation = self.approval.prepare_invoke();
        invocation.key(self.approval_key("index")).key(second_key);
        let retention = crate::approvals::duration_ms(crate::approvals::RETENTION).to_string();
        let record_prefix = self.approval_key("a:");
        invocation.arg(args[0]).arg(&record_prefix).arg(&retention);
        for arg in &args[1..] {
            invocation.arg(*arg);
        }
        self.run(&invocation).await
    }
}

fn parse_approval(json: &str) -> Result<Approval, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Rejected(format!("unreadable approval record: {e}")))
}

#[async_trait::async_trait]
impl ApprovalStore for RedisStore {
    async fn claim(&self, call: &NewApproval) -> Result<Claim, StoreError> {
        let template =
            serde_json::to_string(&call.record(String::new(), 0)).map_err(|e| StoreError::Rejected(e.to_string()))?;
        let id = crate::approvals::new_id();
        let timeout = crate::approvals::duration_ms(call.timeout).to_string();
        let max_pending = call.max_pending.to_string();
        let pending_prefix = self.pending_prefix();
        let answer = self
            .approval_script(
                self.approval_key(&format!("bind:{}", call.digest)),
                &["claim", &id, &template, &timeout, &max_pending, &pending_prefix],
            )
            .await?;
        let [outcome, record] = answer.as_slice() else {
            return Err(StoreError::Rejected(format!(
                "unexpected answer from approval.lua: {answer:?}"
            )));
        };
        if outcome == "too_many" {
            return Ok(Claim::TooMany);
        }
        let approval = parse_approval(record)?;
        Ok(match outcome.as_str() {
            "pending" => Claim::Pending {
                approval,
                created: false,
            },
            "created" => Claim::Pending {
                approval,
                created: true,
            },
            "approved" => Claim::Approved(approval),
            "denied" => Claim::Denied(approval),
            "expired" => Claim::Expired(approval),
            other => return Err(StoreError::Rejected(format!("unexpected claim outcome {other:?}"))),
        })
    }

    async fn resolve(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: &str,
        trace: &str,
    ) -> Result<Resolution, StoreError> {
        // Ids are ours (`apr_` + hex): anything else cannot name a record.
        if !crate::approvals::is_approval_id(id) {
            return Ok(Resolution::NotFound);
        }
        let status = if approve { "approved" } else { "denied" };
        let channel = self.wakeup_channel();
        let answer = self
            .approval_script(
                self.approval_key(&format!("a:{id}")),
                &["resolve", status, by, reason, &channel, trace, &self.pending_prefix()],
            )
            .await?;
        let [outcome, record] = answer.as_slice() else {
            return Err(StoreError::Rejected(format!(
                "unexpected answer from approval.lua: {answer:?}"
            )));
        };
        Ok(match outcome.as_str() {
            "resolved" => Resolution::Resolved(parse_approval(record)?),
            "not_pending" => Resolution::NotPending(parse_approval(record)?),
            _ => Resolution::NotFound,
        })
    }

    async fn restore(&self, approval: &Approval) -> Result<(), StoreError> {
        let id = &approval.id;
        if !crate::approvals::is_approval_id(id) {
            return Ok(());
        }
        let bind_prefix = self.approval_key("bind:");
        self.approval_script(self.approval_key(&format!("a:{id}")), &["restore", &bind_prefix])
            .await
            .map(|_| ())
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        if !crate::approvals::is_approval_id(id) {
            return Ok(None);
        }
        let answer = self
            .approval_script(self.approval_key(&format!("a:{id}")), &["get"])
            .await?;
        let now = crate::approvals::wall_clock_ms();
        answer
            .first()
            .map(|json| parse_approval(json).map(|a| a.as_seen_at(now)))
            .transpose()
    }

    async fn count_pending(&self) -> Result<usize, StoreError> {
        let prefix = self.pending_prefix();
        let answer = self
            .approval_script(self.approval_key("index"), &["pending", &prefix])
            .await?;
        answer
            .first()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| StoreError::Rejected(format!("unexpected answer from approval.lua: {answer:?}")))
    }

    fn wakeups(&self) -> broadcast::Receiver<String> {
        let receiver = self.wakeups.subscribe();
        if !self.subscribed.swap(true, Ordering::AcqRel) {
            tokio::spawn(listen_for_wakeups(
                self.nodes.clone(),
                self.tls.clone(),
                self.wakeup_channel(),
                Arc::downgrade(&self.wakeups),
            ));
        }
        receiver
    }

    async fn list(&self) -> Result<Vec<Approval>, StoreError> {
        let most = crate::approvals::MAX_LISTED.to_string();
        let answer = self
            .approval_script(self.approval_key("index"), &["list", &most])
            .await?;
        let now = crate::approvals::wall_clock_ms();
        answer
            .iter()
            .map(|json| parse_approval(json).map(|a| a.as_seen_at(now)))
            .collect()
    }
}

#[async_trait::async_trait]
impl crate::Broadcast for RedisStore {
    /// PUBLISH through a one-line script keyed by the channel; a Redis Cluster forwards it
    /// to every node.
    async fn publish(&self, message: String) -> Result<(), StoreError> {
        if message.len() > crate::MAX_BROADCAST_BYTES {
            return Err(StoreError::Rejected(format!(
                "a broadcast message is at most {} bytes",
                crate::MAX_BROADCAST_BYTES
            )));
        }
        let mut invocation = self.publish.prepare_invoke();
        invocation.key(self.broadcast_channel()).arg(message);
        self.run::<i64>(&invocation).await.map(|_| ())
    }

    /// `SET …:{console}:revoked:ID 1 PX ttl`: kept until the session would have expired.
    async fn revoke_session(&self, session_id: &str, until_ms: u64) -> Result<(), StoreError> {
        crate::broadcast::check_session_id(session_id)?;
        let ttl = until_ms.saturating_sub(crate::approvals::wall_clock_ms()).max(1);
        let mut invocation = self.revoked.prepare_invoke();
        invocation
            .key(format!("{}:{{console}}:revoked:{session_id}", self.prefix))
            .arg("revoke")
            .arg(ttl);
        self.run::<i64>(&invocation).await.map(|_| ())
    }

    async fn is_session_revoked(&self, session_id: &str) -> Result<bool, StoreError> {
        crate::broadcast::check_session_id(session_id)?;
        let mut invocation = self.revoked.prepare_invoke();
        invocation
            .key(format!("{}:{{console}}:revoked:{session_id}", self.prefix))
            .arg("check");
        self.run::<i64>(&invocation).await.map(|n| n > 0)
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        let receiver = self.broadcasts.subscribe();
        if !self.broadcast_subscribed.swap(true, Ordering::AcqRel) {
            let broadcasts = Arc::downgrade(&self.broadcasts);
            let alive = broadcasts.clone();
            tokio::spawn(relay(
                self.nodes.clone(),
                self.tls.clone(),
                self.broadcast_channel(),
                "console broadcasts",
                move || alive.strong_count() > 0,
                move |message: Option<&str>| {
                    let Some(sender) = broadcasts.upgrade() else {
                        return false;
                    };
                    if let Some(text) = message.filter(|m| m.len() <= crate::MAX_BROADCAST_BYTES) {
                        let _ = sender.send(text.into());
                    }
                    true
                },
            ));
        }
        receiver
    }
}

/// Relays approval ids published on `channel` to `wakeups` until the store is dropped;
/// after every (re)subscription it sends [`RECHECK_ALL`], since resolutions published while
/// no subscription stood were missed.
async fn listen_for_wakeups(
    nodes: Nodes,
    tls: Option<redis::TlsCertificates>,
    channel: String,
    wakeups: Weak<broadcast::Sender<String>>,
) {
    let alive = wakeups.clone();
    let alive = move || alive.strong_count() > 0;
    relay(
        nodes,
        tls,
        channel,
        "approval wake-ups",
        alive,
        move |message: Option<&str>| {
            let Some(sender) = wakeups.upgrade() else { return false };
            match message {
                None => {
                    let _ = sender.send(RECHECK_ALL.to_owned());
                }
                Some(id) if crate::approvals::is_approval_id(id) => {
                    let _ = sender.send(id.to_owned());
                }
                Some(_) => {}
            }
            true
        },
    )
    .await
}

/// Hands every message published on `channel` to `deliver` (`None` after each
/// (re)subscription) until `deliver` answers false or `alive` does (the receiving side is
/// gone). Subscribes to one node at a time, moving to the next when the connection fails.
async fn relay(
    nodes: Nodes,
    tls: Option<redis::TlsCertificates>,
    channel: String,
    what: &'static str,
    alive: impl Fn() -> bool + Send,
    mut deliver: impl FnMut(Option<&str>) -> bool + Send,
) {
    let mut backoff = Duration::from_millis(100);
    for turn in 0usize.. {
        if !alive() {
            return;
        }
        let node = match &nodes {
            Nodes::Fixed(list) if list.is_empty() => return,
            Nodes::Fixed(list) => list[turn % list.len()].clone(),
            Nodes::Sentinel(_) => "the master the sentinels name".to_owned(),
        };
        let subscribed = async {
            let client = match &nodes {
                Nodes::Fixed(_) => node_client(&node, tls.as_ref())?,
                Nodes::Sentinel(sentinels) => sentinels.lock().await.async_get_client().await?,
            };
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(100);
                tracing::debug!(node = %node, "listening for {what}");
                let mut messages = pubsub.into_on_message();
                if !deliver(None) {
                    return;
                }
                while let Some(message) = messages.next().await {
                    let payload = message.get_payload::<String>().ok();
                    if let Some(payload) = payload
                        && !deliver(Some(&payload))
                    {
                        return;
                    }
                }
                tracing::warn!(node = %node, "lost the {what} subscription; subscribing again");
            }
            Ok(Err(e)) => tracing::warn!(node = %node, "cannot subscribe to {what}: {e}"),
            Err(_) => tracing::warn!(node = %node, "cannot subscribe to {what}: no answer within 5 s"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A call's hits by tag (one Redis Cluster slot each), as indexes into `hits`, in the order
/// their hits are taken: see [`crate::tag_order`].
fn slot_groups(hits: &[Hit]) -> Vec<(&str, Vec<usize>)> {
    let mut groups: BTreeMap<(u8, &str), Vec<usize>> = BTreeMap::new();
    for (i, hit) in hits.iter().enumerate() {
        groups.entry(crate::tag_order(&hit.tag)).or_default().push(i);
    }
    groups.into_iter().map(|((_, tag), indexes)| (tag, indexes)).collect()
}

fn record_ttl_ms() -> u64 {
    REQUEST_MEMORY.as_millis() as u64
}

#[async_trait::async_trait]
impl CounterStore for RedisStore {
    async fn read(&self, hits: &[Hit]) -> Result<Vec<CounterStatus>, StoreError> {
        Hit::check_all(hits)?;
        let mut statuses: Vec<Option<CounterStatus>> = vec![None; hits.len()];
        for (tag, indexes) in slot_groups(hits) {
            let group: Vec<&Hit> = indexes.iter().map(|&i| &hits[i]).collect();
            for (&i, status) in indexes.iter().zip(self.read_group(tag, &group).await?) {
                statuses[i] = Some(status);
            }
        }
        statuses
            .into_iter()
            .map(|s| s.ok_or_else(|| StoreError::Rejected("acquire.lua answered fewer counters than asked".into())))
            .collect()
    }

    async fn acquire(&self, request_id: &str, hits: &[Hit]) -> Result<Admission, StoreError> {
        Hit::check_all(hits)?;
        if hits.is_empty() {
            return Ok(Admission {
                admitted: true,
                counters: Vec::new(),
                receipt: Receipt::default(),
                unreplicated: None,
            });
        }
        let members = if request_id.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            request_id.to_owned()
        };
        let groups = slot_groups(hits);

        // Reserve slot group by slot group, narrow counters first and global ones last, and
        // stop at the first group that refuses: a call refused by its own grant's counter
        // never holds a hit on a counter other grants share (a held hit, given back
        // milliseconds later, could refuse someone else's call meanwhile).
        let mut statuses: Vec<Option<CounterStatus>> = vec![None; hits.len()];
        let mut buckets = vec![0i64; hits.len()];
        let mut taken: Vec<(&str, Vec<usize>, Vec<i64>)> = Vec::new();
        let mut admitted = true;
        let mut failure = None;
        let mut refused_at = groups.len();
        let mut used: Vec<Used> = Vec::new();
        for (position, (tag, indexes)) in groups.iter().enumerate() {
            let group: Vec<&Hit> = indexes.iter().map(|&i| &hits[i]).collect();
            match self.acquire_group(request_id, &members, tag, &group).await {
                Ok(answer) => {
                    // One WAIT per connection (and Cluster slot) covers every script run on it
                    // before.
                    if !used.iter().any(|u| u.ack_key() == answer.used.ack_key()) {
                        used.push(answer.used);
                    }
                    let group_buckets = answer.counters.iter().map(|(_, b)| *b).collect();
                    for (&i, (status, bucket)) in indexes.iter().zip(answer.counters) {
                        statuses[i] = Some(status);
                        buckets[i] = bucket;
                    }
                    if answer.admitted {
                        taken.push((tag, indexes.clone(), group_buckets));
                    } else {
                        admitted = false;
                        refused_at = position;
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    admitted = false;
                    break;
                }
            }
        }
        // Refused (or failed) somewhere: give back what the other groups took.
        if !admitted && groups.len() > 1 {
            for (tag, indexes, buckets) in &taken {
                let group: Vec<&Hit> = indexes.iter().map(|&i| &hits[i]).collect();
                match self.release_group(request_id, &members, tag, &group, buckets).await {
                    Ok(()) => {
                        for &i in indexes {
                            if let Some(s) = statuses[i].as_mut() {
                                s.remaining = (s.remaining + hits[i].cost).min(hits[i].max);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(tag, "could not release a reservation (it expires with its window): {e}"),
                }
            }
        }
        // The groups after a refusal were not asked to take anything: their counters are
        // read (nothing taken), so the refusal still reports every counter.
        if failure.is_none() {
            for (tag, indexes) in groups.iter().skip(refused_at + 1) {
                let group: Vec<&Hit> = indexes.iter().map(|&i| &hits[i]).collect();
                match self.read_group(tag, &group).await {
                    Ok(read) => {
                        for (&i, status) in indexes.iter().zip(read) {
                            statuses[i] = Some(status);
                        }
                    }
                    Err(e) => {
                        // The call is refused whatever these say; say what is not known.
                        tracing::warn!(tag, "cannot read counters after a refusal: {e}");
                        for &i in indexes {
                            statuses[i] = Some(CounterStatus {
                                remaining: 0,
                                reset_after: Duration::ZERO,
                                retry_after: None,
                            });
                        }
                    }
                }
            }
        }

        if let Some(e) = failure {
            return Err(e);
        }
        let counters = statuses
            .into_iter()
            .map(|s| s.ok_or_else(|| StoreError::Rejected("a counter got no answer".into())))
            .collect::<Result<_, _>>()?;
        // Admitted: with store.replica_ack, only once the replicas hold the hits (a master
        // that fails over before they do would hand them out again). Refusals never wait.
        let mut unreplicated = None;
        if admitted && self.replica_ack > 0 {
            let waits = used.into_iter().map(|u| self.replicated_together(u));
            unreplicated = futures_util::future::join_all(waits)
                .await
                .into_iter()
                .find_map(Result::err);
        }
        Ok(Admission {
            admitted,
            counters,
            receipt: Receipt { at: 0, buckets },
            unreplicated,
        })
    }

    async fn release(&self, request_id: &str, hits: &[Hit], admission: &Admission) -> Result<(), StoreError> {
        if !admission.admitted || hits.is_empty() {
            return Ok(());
        }
        if request_id.is_empty() {
            // The members acquire added are named after a random prefix this store no
            // longer knows: there is nothing it could remove by name.
            return Err(StoreError::Rejected(
                "hits taken without a request id cannot be given back".into(),
            ));
        }
        let mut first_error = None;
        for (tag, indexes) in slot_groups(hits) {
            let group: Vec<&Hit> = indexes.iter().map(|&i| &hits[i]).collect();
            let buckets: Vec<i64> = indexes
                .iter()
                .map(|&i| admission.receipt.buckets.get(i).copied().unwrap_or(0))
                .collect();
            if let Err(e) = self.release_group(request_id, request_id, tag, &group, &buckets).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn may_give_back_admissions(&self) -> bool {
        self.replica_ack > 0
    }

    fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Standalone(..) => "redis",
            Backend::Cluster(..) => "redis-cluster",
            Backend::Sentinel(..) => "redis-sentinel",
        }
    }
}

#[async_trait::async_trait]
impl crate::TaskStore for RedisStore {
    async fn record(&self, record: &crate::TaskRecord, ttl: Duration) -> Result<(), StoreError> {
        if record.task_id.len() > crate::MAX_TASK_ID_BYTES {
            return Err(StoreError::Rejected("task id too long".into()));
        }
        let value = serde_json::to_string(record).map_err(|e| StoreError::Rejected(e.to_string()))?;
        let mut invocation = self.task_record.prepare_invoke();
        invocation
            .key(self.task_key(&record.grant, &record.server, &record.task_id))
            .key(self.task_index_key(&record.grant))
            .arg(value)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(crate::MAX_TASKS_PER_GRANT)
            .arg(crate::MAX_TASK_TTL.as_millis() as u64);
        match self.run::<i64>(&invocation).await? {
            1 => Ok(()),
            _ => Err(StoreError::Full(format!(
                "grant {:?} has {} task records",
                record.grant,
                crate::MAX_TASKS_PER_GRANT
            ))),
        }
    }

    async fn owned(
        &self,
        grant: &str,
        server: &str,
        task_ids: &[String],
    ) -> Result<Vec<crate::TaskRecord>, StoreError> {
        let ids: Vec<&String> = task_ids
            .iter()
            .filter(|id| id.len() <= crate::MAX_TASK_ID_BYTES)
            .take(crate::MAX_TASKS_PER_QUERY)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.task_owned.prepare_invoke();
        for id in &ids {
            invocation.key(self.task_key(grant, server, id));
        }
        let found: Vec<Option<String>> = self.run(&invocation).await?;
        Ok(found
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str::<crate::TaskRecord>(&json).ok())
            .filter(|r| r.grant == grant && r.server == server)
            .collect())
    }
}

/// Compare-and-set rounds a pin write tries before giving up (another edge or operator
/// writing the same name each time).
const PIN_CAS_ROUNDS: usize = 16;

fn parse_pin(text: &str) -> Result<crate::Pin, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Rejected(format!("unreadable pin record: {e}")))
}

#[async_trait::async_trait]
impl crate::PinStore for RedisStore {
    async fn observe(&self, seen: &[crate::Seen], now_ms: u64) -> Result<Vec<crate::Pin>, StoreError> {
        let fields: Vec<String> = seen.iter().map(|s| s.key.field()).collect();
        // New names are added while the script finds room; when it does not, the round is
        // made again without them, so that changes to the names held are still recorded.
        let mut room = None;
        for _ in 0..PIN_CAS_ROUNDS {
            let texts = self.pin_texts(&fields).await?;
            let read: HashMap<String, String> = fields
                .iter()
                .zip(&texts)
                .filter_map(|(f, t)| Some((f.clone(), t.clone()?)))
                .collect();
            let mut parsed: HashMap<String, crate::Pin> = HashMap::new();
            for (field, text) in &read {
                parsed.insert(field.clone(), parse_pin(text)?);
            }
            let (answer, changed) = crate::pins::apply_seen(seen, now_ms, |k| parsed.get(&k.field()).cloned(), room);
            let writes: Vec<(Option<String>, crate::Pin)> = changed
                .into_iter()
                .map(|pin| (read.get(&pin.key.field()).cloned(), pin))
                .collect();
            match self.pin_cas(&writes).await {
                Ok(true) => return Ok(answer),
                Ok(false) => {}
                Err(StoreError::Full(_)) if room.is_none() => room = Some(0),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Rejected(
            "pin records kept changing while they were written; try again".into(),
        ))
    }

    async fn pins(&self, keys: &[crate::PinKey]) -> Result<Vec<Option<crate::Pin>>, StoreError> {
        let fields: Vec<String> = keys.iter().map(crate::PinKey::field).collect();
        self.pin_texts(&fields)
            .await?
            .into_iter()
            .map(|t| t.as_deref().map(parse_pin).transpose())
            .collect()
    }

    async fn list(&self) -> Result<Vec<crate::Pin>, StoreError> {
        let (records, _) = self.pin_keys();
        let mut invocation = self.pins_all.prepare_invoke();
        invocation.key(records);
        let texts: Vec<String> = self.run(&invocation).await?;
        let mut all = texts.iter().map(|t| parse_pin(t)).collect::<Result<Vec<_>, _>>()?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    async fn resolve(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<crate::PinResolution, StoreError> {
        if !crate::pins::is_pin_id(id) {
            return Ok(crate::PinResolution::NotFound);
        }
        let (records, ids) = self.pin_keys();
        for _ in 0..PIN_CAS_ROUNDS {
            let mut invocation = self.pins_by_id.prepare_invoke();
            invocation.key(&records).key(&ids).arg(id);
            let found: Vec<String> = self.run(&invocation).await?;
            let [_, text] = found.as_slice() else {
                return Ok(crate::PinResolution::NotFound);
            };
            let mut pin = parse_pin(text)?;
            match pin.resolve(id, approve, by, reason, now_ms) {
                None => return Ok(crate::PinResolution::NotFound),
                Some(false) => return Ok(crate::PinResolution::NotPending(pin)),
                Some(true) => {}
            }
            if self.pin_cas(&[(Some(text.clone()), pin.clone())]).await? {
                return Ok(crate::PinResolution::Resolved(pin));
            }
        }
        Err(StoreError::Rejected(
            "pin records kept changing while they were written; try again".into(),
        ))
    }
}

/// Waits until `count` replicas hold every write made on `used` (Redis `WAIT`, at most
/// `timeout`); why not, when they do not.
async fn replicated(used: Used, count: u32, timeout: Duration) -> Result<(), String> {
    let timeout_ms = timeout.as_millis() as u64;
    let mut wait = redis::cmd("WAIT");
    wait.arg(count).arg(timeout_ms);
    // The client's own deadline: WAIT answers by its timeout, plus a round trip.
    let deadline = timeout + Duration::from_millis(100);
    let acknowledged: Result<i64, String> = match used {
        Used::Standalone(_, mut conn) => tokio::time::timeout(deadline, wait.query_async::<i64>(&mut conn))
            .await
            .map_err(|_| "no answer".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string())),
        Used::Cluster(_, key, mut conn) => {
            use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                key.as_bytes(),
                SlotAddr::Master,
            )));
            tokio::time::timeout(deadline, conn.route_command(wait, route))
                .await
                .map_err(|_| "no answer".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|v| redis::from_redis_value::<i64>(v).map_err(|e| e.to_string()))
        }
    };
    match acknowledged {
        Ok(n) if n >= i64::from(count) => Ok(()),
        Ok(n) => Err(format!(
            "{n} of the {count} replicas store.replica_ack asks for acknowledged the admission within {timeout_ms} ms"
        )),
        Err(e) => Err(format!("WAIT for {count} replicas failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_in_messages() {
        assert_eq!(super::redacted("redis://u:secret@h:1"), "redis://***@h:1");
        assert_eq!(super::redacted("rediss://:secret@h:1/0"), "rediss://***@h:1/0");
        assert_eq!(super::redacted("redis//:secret@h:1"), "***@h:1");
        assert_eq!(super::redacted(":secret@redis://h"), "***@redis://h");
        assert_eq!(super::redacted("redis://h:1"), "redis://h:1");
        assert_eq!(super::redacted("not a url"), "not a url");
    }
}
