//! One function per subcommand: load what it needs, start the components, wait.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tollgate_decision::{Decider, Engine, GrpcDecider, PolicyStatus};
use tollgate_edge::{EdgeParts, ListenerLimits};
use tollgate_policy::Kind;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// The key the quick-start config's `demo` grant is made for (see examples/tollgate.toml).
const DEMO_KEY: &str = "tg_demo_key";

pub fn up(config_path: &Path, demo_listen: Option<String>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    runtime()?.block_on(async move {
        let level = match demo_listen {
            Some(_) => quiet_sdk(&config.log.level),
            None => config.log.level.clone(),
        };
        let telemetry = tollgate_telemetry::init(&config.telemetry, &level, "up")?;
        let shutdown = Shutdown::on_signals();
        if let Some(listen) = &demo_listen {
            let listener = bind(listen, "demo MCP server").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(tollgate_demo::serve(listener, Default::default(), shutdown.requested()));
            println!("tollgate demo-upstream listening on http://{addr}/mcp");
        }
        let mut config = config;
        start_stdio_servers(&mut config, &shutdown).await?;
        let (engine, status) = start_engine(&config, "up").await?;
        let admin = serve_admin(&config, &engine, &status, &shutdown).await?;
        // Approvals offered through the protocol point at this process's own console, unless
        // configured otherwise.
        if config.edge.console_url.is_none() && config.approvals.console_url.is_none() && config.console.enabled {
            config.edge.console_url = Some(format!("http://{admin}"));
        }
        let store = engine.store_kind();
        let scheme = scheme(&config);
        let banner = |addr| {
            format!("tollgate up: edge + decision in one process, {store} store, listening on {scheme}://{addr}")
        };
        let journal = engine.journal().cloned();
        let served = run_edge(&config, engine, Some(status), &shutdown, banner, demo_listen.is_some()).await;
        close_journal(journal).await;
        flush(telemetry).await;
        served
    })
}

pub fn edge(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    runtime()?.block_on(async move {
        let telemetry = tollgate_telemetry::init(&config.telemetry, &config.log.level, "edge")?;
        let shutdown = Shutdown::on_signals();
        let decider = grpc_decider(&config, &config.edge.decision)?;
        let replicas = config.edge.decision.join(", ");
        let scheme = scheme(&config);
        let banner = |addr| format!("tollgate edge listening on {scheme}://{addr} (decision: {replicas})");
        let served = run_edge(&config, Arc::new(decider), None, &shutdown, banner, false).await;
        flush(telemetry).await;
        served
    })
}

/// The edge's client of the decision replicas at `addresses`, as `[edge]` configures it.
fn grpc_decider(config: &Config, addresses: &[String]) -> anyhow::Result<GrpcDecider> {
    let timeout = Duration::from_millis(config.edge.decision_timeout_ms);
    let token = config.edge.decision_token.as_ref().map(|t| t.0.as_str());
    Ok(GrpcDecider::new(addresses, timeout, token, decision_tls(config)?)?
        .with_batch_max(config.edge.decision_batch_max))
}

/// What the edge's router is built from.
fn edge_parts(config: &Config, decider: Arc<dyn Decider>, policy_status: Option<Arc<PolicyStatus>>) -> EdgeParts {
    let mut settings = config.edge.clone();
    if settings.console_url.is_none() {
        settings.console_url = config.approvals.console_url.clone();
    }
    EdgeParts {
        settings,
        upstreams: config.upstreams.clone(),
        grants: config.grants.clone(),
        decider,
        policy_status: policy_status.map(|s| s as Arc<dyn tollgate_decision::PolicyHealth>),
        identity: config.identity.clone(),
    }
}

/// Builds the edge from `config`, prints `banner` and the endpoints, and serves until
/// shutdown has been requested and in-flight requests have drained.
async fn run_edge(
    config: &Config,
    decider: Arc<dyn Decider>,
    policy_status: Option<Arc<PolicyStatus>>,
    shutdown: &Shutdown,
    banner: impl FnOnce(SocketAddr) -> String,
    demo: bool,
) -> anyhow::Result<()> {
    let router = tollgate_edge::router(edge_parts(config, decider, policy_status))?;
    let tls = config.edge.tls()?;
    let listener = bind(&config.edge.listen.to_string(), "edge (edge.listen)").await?;
    let addr = listener.local_addr()?;
    println!("{}", banner(addr));
    print_endpoints(config, addr, demo);
    let drain = Duration::from_millis(config.edge.drain_timeout_ms);
    let served = shutdown
        .drain(
            drain,
            tollgate_edge::serve_tls(listener, router, config.edge.limits(), tls, shutdown.requested()),
        )
        .await;
    served.transpose()?;
    Ok(())
}

pub fn decision(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    runtime()?.block_on(async move {
        let telemetry = tollgate_telemetry::init(&config.telemetry, &config.log.level, "decision")?;
        let shutdown = Shutdown::on_signals();
        let settings = config.decision()?;
        let token_hash = settings.token_hash().map_err(anyhow::Error::msg)?;
        let tls = settings.server_tls().map_err(anyhow::Error::msg)?;
        let envoy = tollgate_decision::envoy::EnvoyLimits::new(&config.envoy).map_err(anyhow::Error::msg)?;
        envoy
            .check_credentials(settings, token_hash)
            .map_err(anyhow::Error::msg)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (engine, status) = start_engine(&config, "decision").await?;
        serve_admin(&config, &engine, &status, &shutdown).await?;
        let listener = bind(&settings.listen.to_string(), "decision service (decision.listen)").await?;
        let addr = listener.local_addr()?;
        let metrics = bind(
            &settings.metrics_listen.to_string(),
            "decision metrics (decision.metrics_listen)",
        )
        .await?;
        let metrics_addr = metrics.local_addr()?;
        let metrics_router = axum::Router::new().route("/metrics", axum::routing::get(tollgate_edge::metrics));
        tokio::spawn(tollgate_edge::serve(
            metrics,
            metrics_router,
            settings.limits(),
            shutdown.requested(),
        ));
        println!(
            "tollgate decision listening on {scheme}://{addr} (store: {}; metrics: http://{metrics_addr}/metrics{})",
            engine.store_kind(),
            if config.envoy.limits.is_empty() {
                String::new()
            } else {
                format!("; Envoy rate limit service with {} limits", config.envoy.limits.len())
            }
        );
        let drain = Duration::from_millis(config.edge.drain_timeout_ms);
        let journal = engine.journal().cloned();
        let served = shutdown
            .drain(
                drain,
                tollgate_decision::serve(
                    listener,
                    engine,
                    token_hash,
                    tollgate_decision::ServeOptions {
                        operators: operators(&config)?,
                        limits: settings.service_limits(),
                        tls,
                        envoy: Arc::new(envoy),
                    },
                    shutdown.requested(),
                ),
            )
            .await;
        close_journal(journal).await;
        flush(telemetry).await;
        served.transpose()?;
        Ok(())
    })
}

fn operators(config: &Config) -> anyhow::Result<tollgate_decision::Operators> {
    tollgate_decision::Operators::new(&config.operators).map_err(anyhow::Error::msg)
}

/// Serves the operators' API (approvals) and the console on `decision.admin_listen`.
async fn serve_admin(
    config: &Config,
    engine: &Arc<Engine>,
    status: &Arc<PolicyStatus>,
    shutdown: &Shutdown,
) -> anyhow::Result<SocketAddr> {
    let settings = config.decision()?;
    let mut router = crate::admin::router(engine.clone(), operators(config)?);
    if config.console.enabled {
        let console =
            crate::console::Console::new(&config.console, engine.clone(), operators(config)?, status.clone())?;
        router = router.merge(crate::console::router(console.start()));
    }
    engine.spawn_pending_gauge();
    let listener = bind(
        &settings.admin_listen.to_string(),
        "operators' API (decision.admin_listen)",
    )
    .await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tollgate_edge::serve(
        listener,
        router,
        settings.limits(),
        shutdown.requested(),
    ));
    if config.operators.is_empty() {
        println!("operators' API on http://{addr}/admin (no [[operators]] configured: every request is refused)");
    } else {
        println!(
            "operators' API on http://{addr}/admin ({} operators)",
            config.operators.len()
        );
    }
    if config.console.enabled {
        println!("console on http://{addr}/console (sign in with an [[operators]] key)");
    }
    Ok(addr)
}

/// TLS to the decision services (`edge.decision_ca_file`, `decision_client_cert`/`_key`).
fn decision_tls(config: &Config) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let edge = &config.edge;
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("edge TLS to the decision service: cannot read {}", path.display()))
    };
    if edge.decision_ca_file.is_none() && edge.decision_client_cert.is_none() && edge.decision_client_key.is_none() {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    match &edge.decision_ca_file {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls = tls.with_native_roots(),
    }
    match (&edge.decision_client_cert, &edge.decision_client_key) {
        (Some(cert), Some(key)) => {
            // The same checks as every other TLS client (names the file that is wrong).
            tollgate_tls::client_config(
                edge.decision_ca_file.as_deref(),
                Some(&tollgate_tls::Identity {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                &[],
            )?;
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => anyhow::bail!("set edge.decision_client_cert and edge.decision_client_key together"),
    }
    Ok(Some(tls))
}

/// `http` or `https`, as the edge serves agents.
fn scheme(config: &Config) -> &'static str {
    if config.edge.tls_cert.is_some() {
        "https"
    } else {
        "http"
    }
}

/// The log filter `level` with the MCP SDK the demo runs on (`rmcp`) at `warn`, unless the
/// filter names it: at `info` it logs every session it opens and every client that finishes
/// its handshake, a line per agent session that helps nobody running the demo.
fn quiet_sdk(level: &str) -> String {
    if level.contains("rmcp") {
        level.to_owned()
    } else {
        format!("{level},rmcp=warn")
    }
}

pub fn demo_upstream(
    listen: &str,
    options: tollgate_demo::DemoOptions,
    tls: Option<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let _telemetry = tollgate_telemetry::init(&Default::default(), &quiet_sdk("info"), "demo-upstream")?;
        let shutdown = Shutdown::on_signals();
        let tls = match &tls {
            Some((cert, key)) => Some(tollgate_tls::server_config(
                cert,
                key,
                client_ca.as_deref(),
                &[b"h2", b"http/1.1"],
            )?),
            None => None,
        };
        let listener = bind(listen, "demo MCP server").await?;
        println!(
            "tollgate demo-upstream listening on {}://{}/mcp",
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr()?
        );
        let router = tollgate_demo::router(options);
        shutdown
            .drain(
                Duration::from_secs(5),
                tollgate_edge::serve_tls(
                    listener,
                    router,
                    ListenerLimits {
                        http2: true,
                        ..Default::default()
                    },
                    tls,
                    shutdown.requested(),
                ),
            )
            .await
            .transpose()?;
        Ok(())
    })
}

/// The bridge `tollgate up` runs for a `command` upstream, checked; `token_sha256` is the
/// hash of the token every request to it must carry.
fn command_bridge(
    upstream: &tollgate_edge::UpstreamSettings,
    config: &Config,
    token_sha256: Option<String>,
) -> anyhow::Result<Arc<tollgate_stdio::Bridge>> {
    if !upstream.url.is_empty() {
        bail!("upstream \"{}\": set either url or command, not both", upstream.name);
    }
    tollgate_stdio::find_program(&upstream.command, &upstream.env, upstream.cwd.as_deref())
        .map_err(|e| anyhow::anyhow!("upstream \"{}\" (command): {e}", upstream.name))?;
    let mut settings = tollgate_stdio::StdioSettings::new(&upstream.name, upstream.command.clone());
    settings.env = upstream.env.clone();
    settings.cwd = upstream.cwd.clone();
    if let Some(ms) = upstream.idle_timeout_ms {
        settings.idle_timeout = Duration::from_millis(ms);
    }
    if let Some(max) = upstream.max_sessions {
        settings.max_sessions = max;
    }
    settings.max_sessions_per_grant = config.stdio.max_sessions_per_grant;
    settings.max_message_bytes = config.edge.max_upstream_message_bytes;
    settings.token_sha256 = token_sha256;
    tollgate_stdio::Bridge::new(settings).map_err(|e| anyhow::anyhow!(e))
}

/// Runs every `command` upstream behind an in-process stdio bridge on a loopback port, and
/// points the upstream's url at it. Each bridge gets a random token of its own, which only
/// the edge knows (as the upstream's `Authorization` header), and the edge tells it each
/// caller's grant (`forward_grant`), for `[stdio] max_sessions_per_grant`.
async fn start_stdio_servers(config: &mut Config, shutdown: &Shutdown) -> anyhow::Result<()> {
    for i in 0..config.upstreams.len() {
        if config.upstreams[i].command.is_empty() {
            continue;
        }
        let token = tollgate_stdio::new_token().map_err(anyhow::Error::msg)?;
        let bridge = command_bridge(&config.upstreams[i], config, Some(tollgate_stdio::token_sha256(&token)))?;
        let listener = bind("127.0.0.1:0", "stdio bridge").await?;
        let url = format!("http://{}/mcp", listener.local_addr()?);
        let upstream = &mut config.upstreams[i];
        println!(
            "tollgate up: stdio MCP server \"{}\" behind a bridge on {url} (for this edge only: it needs the \
             edge's per-process token)",
            upstream.name
        );
        tracing::info!(upstream = %upstream.name, command = ?upstream.command, "serving a stdio MCP server");
        upstream.headers.retain(|name, _| {
            !name.eq_ignore_ascii_case("authorization") && !name.eq_ignore_ascii_case(tollgate_stdio::GRANT_HEADER)
        });
        upstream
            .headers
            .insert("Authorization".into(), format!("Bearer {token}"));
        upstream.forward_grant = true;
        upstream.url = url;
        upstream.command.clear();
        tokio::spawn(tollgate_stdio::serve(listener, bridge, shutdown.requested()));
    }
    Ok(())
}

/// What `tollgate check` checks a configuration for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Up,
    Edge,
    Decision,
}

/// Checks that `config_path` (with the `TOLLGATE_*` environment) would start `role`: every
/// check the process makes before it binds a port (settings, policy, store, TLS files, cluster
/// token, upstreams, grants, identity), without binding, connecting or starting anything.
/// Prints one line per part checked; the first problem is the error.
pub fn check(config_path: &Path, role: Role) -> anyhow::Result<()> {
    let mut config = Config::load(config_path)?;
    runtime()?.block_on(async move {
        if role != Role::Edge {
            let settings = config.decision()?;
            if role == Role::Decision {
                let edges = settings.token_hash().map_err(anyhow::Error::msg)?;
                settings.server_tls().map_err(anyhow::Error::msg)?;
                tollgate_decision::envoy::EnvoyLimits::new(&config.envoy)
                    .and_then(|envoy| envoy.check_credentials(settings, edges))
                    .map_err(anyhow::Error::msg)?;
            }
            let compiled =
                tollgate_policy::load_file(&settings.policy).map_err(|e| anyhow::anyhow!("invalid policy:\n{e}"))?;
            for w in &compiled.warnings {
                println!("policy warning: {w}");
            }
            if let Some(shadow) = &settings.shadow_policy {
                let compiled = tollgate_policy::load_file(shadow)
                    .map_err(|e| anyhow::anyhow!("invalid shadow policy (decision.shadow_policy):\n{e}"))?;
                for w in &compiled.warnings {
                    println!("shadow policy warning: {w}");
                }
                println!("shadow policy: ok ({})", shadow.display());
            }
            let (store, ..) = config.store.build()?;
            operators(&config)?;
            config.console.check()?;
            config.audit.journal().map_err(anyhow::Error::msg)?;
            println!(
                "decision: ok (policy {}, {} store, {} operators)",
                settings.policy.display(),
                store.kind(),
                config.operators.len()
            );
        }
        if role != Role::Decision {
            if role == Role::Up {
                // `up` serves command upstreams through in-process bridges; check the command
                // the way it does, then stand a loopback address in for the bridge.
                for i in 0..config.upstreams.len() {
                    if config.upstreams[i].command.is_empty() {
                        continue;
                    }
                    command_bridge(&config.upstreams[i], &config, None)?;
                    let upstream = &mut config.upstreams[i];
                    upstream.url = "http://127.0.0.1:1/mcp".into();
                    upstream.command.clear();
                }
            }
            let addresses = match role {
                Role::Edge => config.edge.decision.clone(),
                _ => vec!["http://127.0.0.1:1".to_owned()],
            };
            let decider = grpc_decider(&config, &addresses)?;
            let _router = tollgate_edge::router(edge_parts(&config, Arc::new(decider), None))?;
            config.edge.tls()?;
            println!(
                "edge: ok ({} upstreams, {} grants{})",
                config.upstreams.len(),
                config.grants.len(),
                if role == Role::Edge {
                    format!(", decision {}", config.edge.decision.join(", "))
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    })
}

/// `tollgate stdio-bridge` arguments besides the address.
pub struct BridgeArgs {
    pub name: Option<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_grant: Option<usize>,
    pub max_message_bytes: usize,
    pub request_timeout: Duration,
    pub token_sha256: Option<String>,
    pub command: Vec<String>,
}

pub fn stdio_bridge(listen: &str, args: BridgeArgs) -> anyhow::Result<()> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| tollgate_stdio::default_name(&args.command));
    let mut env = std::collections::BTreeMap::new();
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--env {pair:?}: expected KEY=VALUE"))?;
        env.insert(key.to_owned(), value.to_owned());
    }
    tollgate_stdio::find_program(&args.command, &env, args.cwd.as_deref())
        .map_err(|e| anyhow::anyhow!("stdio MCP server \"{name}\": {e}"))?;
    if let Some(hash) = &args.token_sha256
        && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("--token-sha256 must be 64 hex digits (the SHA-256 of the token; `tollgate keygen` makes one)");
    }
    // Without a token the bridge cannot tell its callers' grants apart (it believes no grant
    // header), so only --max-sessions limits them; with one, each grant the edge names
    // (forward_grant) has the default per-grant quota.
    let max_sessions_per_grant = match args.max_sessions_per_grant {
        Some(0) => bail!("--max-sessions-per-grant must be at least 1"),
        Some(n) => n,
        None if args.token_sha256.is_some() => tollgate_stdio::StdioSettings::DEFAULT_MAX_SESSIONS_PER_GRANT,
        None => args.max_sessions.max(1),
    };
    let settings = tollgate_stdio::StdioSettings {
        env,
        cwd: args.cwd,
        idle_timeout: args.idle_timeout,
        max_sessions: args.max_sessions,
        max_sessions_per_grant,
        max_message_bytes: args.max_message_bytes,
        request_timeout: args.request_timeout,
        token_sha256: args.token_sha256,
        ..tollgate_stdio::StdioSettings::new(&name, args.command)
    };
    runtime()?.block_on(async move {
        let _telemetry = tollgate_telemetry::init(&Default::default(), "info", "stdio-bridge")?;
        let shutdown = Shutdown::on_signals();
        let listener = bind(listen, "stdio bridge").await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && settings.token_sha256.is_none() {
            bail!(
                "{addr} is not a loopback address: anyone who reaches it could use the server, so set \
                 --token-sha256 (and send the token from the edge with [[upstreams]] headers)"
            );
        }
        let bridge = tollgate_stdio::Bridge::new(settings).map_err(|e| anyhow::anyhow!(e))?;
        println!(
            "tollgate stdio-bridge listening on http://{addr}/mcp (server \"{name}\": {})",
            bridge.settings().command.join(" ")
        );
        shutdown
            .drain(
                Duration::from_secs(5),
                tollgate_stdio::serve(listener, bridge, shutdown.requested()),
            )
            .await
            .transpose()?;
        Ok(())
    })
}

pub fn policy_check(file: &Path) -> ExitCode {
    match tollgate_policy::load_file(file) {
        Ok(compiled) => {
            for w in &compiled.warnings {
                println!("{w}");
            }
            println!(
                "{}: ok ({} warning{})",
                file.display(),
                compiled.warnings.len(),
                if compiled.warnings.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: {} error{}",
                file.display(),
                e.errors.len(),
                if e.errors.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

pub fn policy_explain(
    file: &Path,
    server: &str,
    (kind, tool): (Kind, String),
    grant: &str,
    agent: &str,
    args: Option<&str>,
) -> anyhow::Result<()> {
    let compiled = tollgate_policy::load_file(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let arguments = crate::explain::arguments(kind, args).map_err(anyhow::Error::msg)?;
    for line in crate::explain::explain(&compiled.policy, server, (kind, &tool), grant, agent, &arguments) {
        println!("{line}");
    }
    Ok(())
}

pub enum ApprovalAction {
    List { json: bool },
    Resolve { id: String, approve: bool, reason: String },
}

/// JSON for a terminal: pretty, with bidirectional and invisible controls (only ever inside
/// strings) as `\u` escapes, so that it reads as it parses and stays valid JSON.
pub(crate) fn terminal_json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)?
        .chars()
        .map(|c| {
            if crate::console::is_invisible_control(c) {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect())
}

/// The operators' API a command talks to (`tollgate approvals`, `tollgate pins`): its
/// address (`--url`, else `decision.admin_listen` of the config) and the operator key.
pub(crate) struct OperatorsApi {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl OperatorsApi {
    pub(crate) fn new(config_path: &Path, url: Option<String>, key: Option<String>) -> anyhow::Result<OperatorsApi> {
        let base = match url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let config = Config::load(config_path).with_context(
                    || "the operators' API address comes from decision.admin_listen: pass --url or --config",
                )?;
                format!("http://{}", config.decision()?.admin_listen)
            }
        };
        let key = key.ok_or_else(|| anyhow::anyhow!("an operator key is needed: --key or TOLLGATE_ADMIN_KEY"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("HTTP client")?;
        Ok(OperatorsApi { base, key, client })
    }

    pub(crate) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    pub(crate) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base))
    }

    /// Sends `request` with the operator key; the JSON answer, or the API's refusal as an
    /// error.
    pub(crate) async fn ask(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let base = &self.base;
        let response = request
            .bearer_auth(self.key.trim())
            .send()
            .await
            .with_context(|| format!("cannot reach the operators' API at {base}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("unreadable answer from {base} ({status})"))?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("request refused");
            bail!("{status}: {message}");
        }
        Ok(body)
    }
}

/// `tollgate approvals …`: a client of the operators' API.
pub fn approvals(
    config_path: &Path,
    url: Option<String>,
    key: Option<String>,
    action: ApprovalAction,
) -> anyhow::Result<()> {
    let api = OperatorsApi::new(config_path, url, key)?;
    runtime()?.block_on(async move {
        let request = match &action {
            ApprovalAction::List { .. } => api.get("/admin/approvals"),
            ApprovalAction::Resolve { id, approve, reason } => {
                let verb = if *approve { "approve" } else { "deny" };
                let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                api.post(&format!("/admin/approvals/{id}/{verb}"))
                    .json(&serde_json::json!({ "reason": reason }))
            }
        };
        let body = api.ask(request).await?;
        match action {
            ApprovalAction::List { json: true } => {
                let listed: Vec<tollgate_limiter::Approval> =
                    serde_json::from_value(body).context("unreadable approval list")?;
                let out: Vec<serde_json::Value> = listed.iter().map(approval_json).collect();
                println!("{}", terminal_json(&out)?);
            }
            ApprovalAction::List { json: false } => {
                let listed: Vec<tollgate_limiter::Approval> =
                    serde_json::from_value(body).context("unreadable approval list")?;
                if listed.is_empty() {
                    println!("no approvals");
                }
                for a in &listed {
                    let caller = match (&a.subject, &a.issuer) {
                        (Some(sub), Some(iss)) => format!(", subject {} of {}", sub.escape_debug(), iss.escape_debug()),
                        (Some(sub), None) => format!(", subject {}", sub.escape_debug()),
                        _ => String::new(),
                    };
                    println!(
                        "{}  {:<9} {}/{}  grant {} (agent {}{caller})  expires {}  arguments {}",
                        a.id,
                        format!("{:?}", a.status).to_lowercase(),
                        a.server,
                        a.tool,
                        a.grant,
                        a.agent,
                        rfc3339(a.expires_ms),
                        shown_text(&a.arguments)
                    );
                }
            }
            ApprovalAction::Resolve { approve, .. } => {
                let a: tollgate_limiter::Approval = serde_json::from_value(body).context("unreadable approval")?;
                println!(
                    "{} {}: {}/{} for grant {} with {}",
                    if approve { "approved" } else { "denied" },
                    a.id,
                    a.server,
                    a.tool,
                    a.grant,
                    shown_text(&a.arguments)
                );
            }
        }
        Ok(())
    })
}

/// Text from an agent as a terminal line: as it is (quotes and all), but for control,
/// invisible and bidirectional characters, written as `\u{…}` escapes.
fn shown_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || crate::console::is_invisible_control(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An approval as `tollgate approvals list --json` prints it: the record, with the
/// arguments as JSON and times as RFC 3339.
fn approval_json(a: &tollgate_limiter::Approval) -> serde_json::Value {
    let arguments: serde_json::Value =
        serde_json::from_str(&a.arguments).unwrap_or_else(|_| serde_json::Value::String(a.arguments.clone()));
    serde_json::json!({
        "id": a.id,
        "status": a.status,
        "server": a.server,
        "tool": a.tool,
        "grant": a.grant,
        "agent": a.agent,
        "subject": a.subject,
        "issuer": a.issuer,
        "arguments": arguments,
        "rule": a.rule,
        "created_at": rfc3339(a.created_ms),
        "expires_at": rfc3339(a.expires_ms),
        "resolved_at": a.resolved_ms.map(rfc3339),
        "resolved_by": a.resolved_by,
        "reason": a.reason,
    })
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2026-12-04T10:15:00.123Z`.
pub(crate) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        (rest % 3600) / 60,
        rest % 60,
        ms % 1000
    )
}

pub fn keygen() -> anyhow::Result<()> {
    let key = format!("tg_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    println!("key (give to the agent, store nowhere else): {key}");
    println!("[[grants]] entry:\n  key_sha256 = \"{hash}\"");
    println!("or, as a cluster token: edge.decision_token = the key; decision.token_sha256 = \"{hash}\"");
    println!(
        "or, as an operator key: [[operators]] name = \"…\", key_sha256 = \"{hash}\" (give the key to the operator)"
    );
    Ok(())
}

async fn start_engine(config: &Config, role: &str) -> anyhow::Result<(Arc<Engine>, Arc<PolicyStatus>)> {
    let settings = config.decision()?;
    let compiled = tollgate_policy::load_file(&settings.policy)
        .map_err(|e| anyhow::anyhow!("invalid policy, refusing to start:\n{e}"))?;
    for w in &compiled.warnings {
        tracing::warn!("policy warning: {w}");
    }
    let status = PolicyStatus::loaded(&settings.policy, &compiled.source);
    let (ack, wait) = (
        config.store.replica_ack.unwrap_or(0),
        config.store.replica_ack_timeout_ms.unwrap_or(100),
    );
    if ack > 0 && wait >= settings.store_timeout_ms {
        anyhow::bail!(
            "store.replica_ack_timeout_ms ({wait}) must be below decision.store_timeout_ms ({}): an admission \
             waiting longer would be refused by the decision's deadline while its hits stay taken",
            settings.store_timeout_ms
        );
    }
    let (store, approvals, broadcast, tasks, pins, shared) = config.store.build()?;
    let journal = config.audit.journal().map_err(anyhow::Error::msg)?;
    let mut engine = Engine::new(compiled.policy, store, Duration::from_millis(settings.store_timeout_ms))
        .with_approvals(approvals)
        .with_tasks(tasks)
        .with_pins(
            pins,
            // In one process every write goes through this engine, which updates its cache:
            // it is never stale, so it is kept for a minute.
            Duration::from_millis(if shared { settings.pins_cache_ms } else { 60_000 }),
        )
        .with_max_pending_per_grant(config.approvals.max_pending_per_grant.max(1))
        .with_recorded_arguments(config.telemetry.record_arguments)
        .with_full_cache_entries(settings.full_cache_entries);
    // The candidate every decision is also evaluated against; like the live policy, one that
    // does not compile refuses the start.
    let candidate_status = match &settings.shadow_policy {
        Some(path) => {
            let compiled = tollgate_policy::load_file(path).map_err(|e| {
                anyhow::anyhow!("invalid shadow policy (decision.shadow_policy), refusing to start:\n{e}")
            })?;
            for w in &compiled.warnings {
                tracing::warn!("shadow policy warning: {w}");
            }
            let status = PolicyStatus::loaded(path, &compiled.source);
            engine.replace_candidate(Some(compiled.policy));
            tracing::info!(shadow_policy = %path.display(), "shadow policy loaded: decisions are also evaluated against it");
            Some(status)
        }
        None => None,
    };
    if let Some(journal) = journal {
        let dir = journal.dir.clone();
        let journal = tollgate_journal::Journal::open(journal)
            .map_err(|e| anyhow::anyhow!("audit.journal_dir {}: {e}", dir.display()))?;
        println!(
            "decision journal in {}{}",
            dir.display(),
            if config.audit.required {
                " (audit.required: a decision waits for its record)"
            } else {
                ""
            }
        );
        // With on_full = "refuse" a call whose record finds the journal full is refused, so
        // its decision waits for the record as in required mode.
        spawn_journal_metrics(journal.clone(), dir.clone(), config.telemetry.otlp_endpoint.is_some());
        let durable = journal.stats().clone();
        let waits = config.audit.required || config.audit.on_full == tollgate_decision::audit::OnFullSetting::Refuse;
        engine = engine.with_journal(journal, waits);
        // Decision spans go to the collector from the journal, so an outage loses none.
        if let Some(endpoint) = &config.telemetry.otlp_endpoint {
            tollgate_decision::journal_export::JournalExport {
                dir,
                durable,
                endpoint: endpoint.clone(),
                service: config
                    .telemetry
                    .service_name
                    .clone()
                    .unwrap_or_else(|| format!("tollgate-{role}")),
                timeout: Duration::from_millis(config.telemetry.export_timeout_ms),
                spans_per_second: config.audit.export_spans_per_second,
            }
            .spawn()
            .map_err(anyhow::Error::msg)?;
        }
    }
    if let Some(notify) = crate::webhook::start(&config.approvals)? {
        engine = engine.with_new_approvals(notify);
    }
    if config.console.enabled {
        // host/pid: unique per process, and a pod's name in Kubernetes.
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && h.len() <= 253)
            .unwrap_or_else(|| "localhost".to_owned());
        let replica = format!("{host}/{}", std::process::id());
        engine = engine.with_shadow_log(tollgate_decision::shadow::ShadowLog::start(
            broadcast.clone(),
            replica.clone(),
            candidate_status.clone(),
        ));
        engine = engine.with_tail(tollgate_decision::DecisionTail::start(broadcast, replica));
    }
    let engine = Arc::new(engine);
    tracing::info!(policy = %settings.policy.display(), "policy loaded");
    if settings.reload_interval_ms > 0 {
        tollgate_decision::watch_policy(
            engine.clone(),
            settings.policy.clone(),
            Duration::from_millis(settings.reload_interval_ms),
            status.clone(),
        );
        if let (Some(path), Some(candidate)) = (&settings.shadow_policy, &candidate_status) {
            tollgate_decision::watch_shadow_policy(
                engine.clone(),
                path.clone(),
                Duration::from_millis(settings.reload_interval_ms),
                candidate.clone(),
            );
        }
    }
    Ok((engine, status))
}

fn print_endpoints(config: &Config, addr: SocketAddr, demo: bool) {
    for u in &config.upstreams {
        println!("  MCP endpoint http://{addr}/mcp/{}  ->  {}", u.name, u.url);
    }
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    println!(
        "  MCP endpoint http://{addr}/mcp  ->  aggregated: {} (tools and prompts named {{server}}{}{{name}})",
        names.join(", "),
        config.edge.aggregate.separator
    );
    let demo_grant = config.grants.iter().find(|g| {
        g.key_sha256
            .eq_ignore_ascii_case(&hex::encode(Sha256::digest(DEMO_KEY)))
    });
    if let (true, Some(grant), Some(upstream)) = (demo, demo_grant, config.upstreams.first()) {
        println!("Try it (grant \"{}\"):", grant.name);
        println!(
            "  curl -s http://{addr}/mcp/{} -H 'Authorization: Bearer {DEMO_KEY}' -H 'Content-Type: application/json' \
             -H 'Accept: application/json, text/event-stream' \
             -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"k8s_rollout_pause\",\"arguments\":{{\"namespace\":\"default\",\"name\":\"web\"}}}}}}'",
            upstream.name
        );
        println!("The same call in MCP 2026-07-28 (stateless: no session; the routing headers must match the body):");
        println!(
            "  curl -s http://{addr}/mcp/{} -H 'Authorization: Bearer {DEMO_KEY}' -H 'Content-Type: application/json' \
             -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \
             -H 'Mcp-Method: tools/call' -H 'Mcp-Name: k8s_rollout_pause' \
             -d '{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{\"name\":\"k8s_rollout_pause\",\"arguments\":{{\"namespace\":\"default\",\"name\":\"web\"}},\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}'",
            upstream.name
        );
    }
}

/// Binds `address` for `what` (which names its setting, e.g. "edge (edge.listen)"); when
/// the address is taken, the error says which setting to change, e.g. for a second process
/// of the same kind on one host.
async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            let setting = what.rsplit_once('(').map_or("", |(_, s)| s.trim_end_matches(')'));
            let env = format!("TOLLGATE_{}", setting.to_uppercase().replace('.', "__"));
            if setting.is_empty() {
                String::new()
            } else {
                format!(
                    ": another process listens there; give this one its own address with {setting} \
                     (or {env}=127.0.0.1:PORT, or 127.0.0.1:0 for any free port)"
                )
            }
        } else {
            String::new()
        };
        anyhow::anyhow!("cannot listen on {address} for the {what}: {e}{hint}")
    })
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Exports the spans still queued before the process exits.
async fn flush(telemetry: tollgate_telemetry::Telemetry) {
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
}

/// `tollgate audit verify DIR`.
pub fn audit_verify(dir: &Path, key: Option<&str>) -> anyhow::Result<()> {
    let key = match key {
        Some(text) => Some(
            hex::decode(text.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| anyhow::anyhow!("--key must be an Ed25519 public key, 64 hex digits"))?,
        ),
        None => None,
    };
    match tollgate_journal::verify(dir, key.as_deref()) {
        Ok(verified) => {
            let range = match (verified.first_seq, verified.last_seq) {
                (Some(first), Some(last)) => format!("records {first} to {last}"),
                _ => "no records".to_owned(),
            };
            println!(
                "{}: the chain holds: {} records in {} segments ({range}), head {}",
                dir.display(),
                verified.records,
                verified.segments,
                verified.head
            );
            if key.is_some() {
                println!("{} closed segments carry a valid signature", verified.signed_segments);
            }
            if verified.torn_tail {
                println!(
                    "the last segment ends inside a record (a write cut short by a crash): it is cut when the journal is next opened"
                );
            }
            Ok(())
        }
        Err(broken) => anyhow::bail!(
            "the journal's chain is broken at record {} ({}): {broken}",
            broken.seq,
            broken.segment.display()
        ),
    }
}

/// `tollgate audit export DIR`: JSON lines, reading one segment at a time.
pub fn audit_export(dir: &Path, from: u64, since: Option<u64>, format: &str) -> anyhow::Result<()> {
    if format != "jsonl" {
        anyhow::bail!("--format {format:?}: only jsonl is supported");
    }
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // A failure to write the output is its own error, not the journal's.
    let mut written = Ok(());
    tollgate_journal::each_record(dir, from.max(1), |record| {
        let decoded = match tollgate_decision::audit::decode_record(&record.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                eprintln!("tollgate: record {} skipped: {e}", record.seq);
                return Ok(true);
            }
        };
        if since.is_some_and(|t| decoded.decision.at_ms < t) {
            return Ok(true);
        }
        let Ok(serde_json::Value::Object(mut fields)) = serde_json::to_value(&decoded) else {
            return Ok(true);
        };
        fields.insert("seq".into(), record.seq.into());
        fields.insert("hash".into(), hex::encode(record.hash).into());
        written = writeln!(out, "{}", serde_json::Value::Object(fields));
        Ok(written.is_ok())
    })
    .map_err(|e| anyhow::anyhow!("cannot read the journal in {}: {e}", dir.display()))?;
    written?;
    out.flush()?;
    // Reading stops where the chain breaks: say so, rather than end as if it were all.
    if let Err(broken) = tollgate_journal::verify(dir, None) {
        anyhow::bail!(
            "the export stopped where the journal's chain breaks, at record {} ({broken})",
            broken.seq
        );
    }
    Ok(())
}

/// On a clean stop: the journal's last records written and synced, its segment ending at the
/// last record.
async fn close_journal(journal: Option<tollgate_journal::Journal>) {
    if let Some(journal) = journal
        && let Err(e) = journal.close(Duration::from_secs(5)).await
    {
        tracing::error!("closing the decision journal: {e}");
    }
}

/// Refreshes the journal's gauges every second (the backlog only when spans are exported
/// from the journal), and has a refusing journal check whether it could take records again.
fn spawn_journal_metrics(journal: tollgate_journal::Journal, dir: PathBuf, exporting: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = journal.stats().clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticks.tick().await;
            // A journal that refuses records checks by itself whether it could take them again.
            if stats.failing.load(Relaxed) {
                journal.probe();
            }
            let m = tollgate_telemetry::metrics::metrics();
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            m.journal_bytes.set(gauge(stats.bytes.load(Relaxed)));
            m.journal_appended.set(gauge(stats.appended.load(Relaxed)));
            m.journal_dropped.set(gauge(stats.dropped.load(Relaxed)));
            m.journal_refused.set(gauge(stats.refused.load(Relaxed)));
            m.journal_failures.set(gauge(stats.failures.load(Relaxed)));
            if !exporting {
                continue;
            }
            let exported = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || tollgate_journal::read_exported(&dir)
            })
            .await
            .unwrap_or(0);
            m.journal_backlog
                .set(gauge(stats.last_seq.load(Relaxed).saturating_sub(exported)));
        }
    });
}

/// `tollgate audit keygen`.
pub fn audit_keygen() -> anyhow::Result<()> {
    let (seed, public) = tollgate_journal::generate_signing_key().map_err(anyhow::Error::msg)?;
    println!("signing key (audit.signing_key, secret): {seed}");
    println!("public key (tollgate audit verify --key): {public}");
    Ok(())
}
