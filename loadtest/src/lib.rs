//! `tollgate-loadtest`: drives real MCP Streamable HTTP traffic through one or more Tollgate
//! edges (or straight at the upstream, as a baseline), and reports throughput, latency
//! percentiles (HDR histogram), verdicts, errors, and whether any limit was exceeded.
//!
//! Two modes: `closed` (N clients, each sending its next call when the last is answered) and
//! `open` (calls started at a fixed rate whatever the answers do; latency is measured from
//! when a call was due, so a slow gateway cannot hide its latency by slowing the load).
//! Runs are bounded in time and in calls, and only loopback targets are accepted.
//!
//! Two protocol eras (`load.protocol`): `session` (default; `initialize`, then calls on an
//! `Mcp-Session-Id`) and `2026-07-28` (stateless: no `initialize`, every request carries the
//! revision, client info and capabilities in `params._meta` and the `MCP-Protocol-Version`,
//! `Mcp-Method` and `Mcp-Name` headers). Request bodies and headers are prepared once per run
//! in both, so each call only writes its id: the client's work per call is the same in both
//! eras, and a comparison of the two measures the server.

pub mod decide;
pub mod exactness;
pub mod held;

/// Load goes only to loopback addresses (127.0.0.0/8, localhost, [::1]).
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or_default();
    if host == "localhost" || host.starts_with("127.") || url.contains("://[::1]") {
        return Ok(());
    }
    anyhow::bail!("{url}: load is only sent to loopback addresses (127.0.0.0/8, localhost, [::1])")
}

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A scenario file (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// MCP endpoints of the edges, e.g. `http://127.0.0.1:8080/mcp/k8s`; calls go round-robin.
    pub edges: Vec<String>,
    /// The upstream's own MCP endpoint, for `--baseline`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Upstream name as the policy sees it. Default: the last path segment of the first edge.
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub load: Load,
    /// Who calls: bearer keys with weights.
    pub grants: Vec<GrantSpec>,
    /// What is called: tools, arguments and weights.
    pub calls: Vec<CallSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// `closed` (default) or `open`.
    #[serde(default)]
    pub mode: Mode,
    /// Closed mode: concurrent clients. Default 16.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Open mode: calls started per second. Default 1000.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Open mode: MCP sessions the calls are spread over. Default 16.
    #[serde(default = "default_concurrency")]
    pub sessions: usize,
    /// How long to send, in seconds. Default 10.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// Stop after this many calls. Default 1,000,000.
    #[serde(default = "default_max_requests")]
    pub max_requests: u64,
    /// Deadline for one call, in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The MCP era the calls speak: `session` (default) or `2026-07-28`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Seconds of calls sent before the measured `duration_s`, e.g. to get past connection
    /// setup and the first call of each session. Their verdicts and latencies are not
    /// counted; their errors are, the calls they admitted are in the exactness check, and
    /// `max_requests` includes them. Default 0, at most 60.
    #[serde(default)]
    pub warmup_s: f64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            mode: Mode::Closed,
            concurrency: default_concurrency(),
            rate: default_rate(),
            sessions: default_concurrency(),
            duration_s: default_duration(),
            max_requests: default_max_requests(),
            timeout_ms: default_timeout_ms(),
            protocol: Protocol::Session,
            warmup_s: 0.0,
        }
    }
}

fn default_concurrency() -> usize {
    16
}
fn default_rate() -> f64 {
    1000.0
}
fn default_duration() -> f64 {
    10.0
}
fn default_max_requests() -> u64 {
    1_000_000
}
fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Closed,
    Open,
}

/// The MCP era of the calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Protocol {
    /// The session era: `initialize` (asking for 2025-06-18, the newest revision the demo
    /// upstream speaks), `notifications/initialized`, then every call on its `Mcp-Session-Id`.
    #[default]
    #[serde(rename = "session")]
    Session,
    /// MCP 2026-07-28: no `initialize` and no session; each request declares the revision in
    /// `params._meta` and repeats its method and name in the routing headers.
    #[serde(rename = "2026-07-28")]
    Stateless,
}

impl Protocol {
    /// The name used in scenarios and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Session => "session",
            Protocol::Stateless => STATELESS_VERSION,
        }
    }
}

/// The revision a session-era client asks for in `initialize` and names in
/// `MCP-Protocol-Version`.
const SESSION_VERSION: &str = "2025-06-18";
/// The stateless revision.
const STATELESS_VERSION: &str = "2026-07-28";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// Grant name as configured in Tollgate (for the exactness check's counter keys).
    pub name: String,
    /// The bearer key.
    pub key: String,
    /// Agent name of the grant. Default: the grant name.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// The tool of a `tools/call`; ignored for other methods.
    #[serde(default)]
    pub tool: String,
    /// `tools/call` (default) or `tools/list` (timed like a call; counted as `ALLOW`).
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub arguments: Option<toml::Table>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Scenario {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read scenario {}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).with_context(|| format!("invalid scenario {}", path.display()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.edges.is_empty() || self.grants.is_empty() || self.calls.is_empty() {
            bail!("a scenario needs at least one of each: edges, [[grants]], [[calls]]");
        }
        for url in self.edges.iter().chain(&self.upstream) {
            check_loopback(url)?;
        }
        if self.grants.iter().all(|g| g.weight == 0) || self.calls.iter().all(|c| c.weight == 0) {
            bail!("every weight is 0: nothing would be called");
        }
        if !(self.load.duration_s > 0.0 && self.load.duration_s <= 600.0) {
            bail!("load.duration_s must be within (0, 600]");
        }
        if self.load.mode == Mode::Open && !(self.load.rate > 0.0 && self.load.rate <= 200_000.0) {
            bail!("load.rate must be within (0, 200000] calls per second");
        }
        if !(self.load.warmup_s >= 0.0 && self.load.warmup_s <= 60.0) {
            bail!("load.warmup_s must be within [0, 60]");
        }
        Ok(())
    }

    /// The server name used for counter keys.
    pub fn server(&self) -> String {
        self.server.clone().unwrap_or_else(|| {
            self.edges[0]
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
    }
}

fn weighted<T>(items: &[T], i: u64, weight: impl Fn(&T) -> u32) -> &T {
    let total: u64 = items.iter().map(|t| u64::from(weight(t))).sum();
    let mut at = i % total.max(1);
    for item in items {
        let w = u64::from(weight(item));
        if at < w {
            return item;
        }
        at -= w;
    }
    &items[0]
}

/// Where the calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Gateway,
    /// Straight to the upstream, no gateway: the baseline.
    Direct,
}

/// What a run measured.
pub struct Outcome {
    pub target: Target,
    pub mode: Mode,
    pub protocol: Protocol,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub verdicts: BTreeMap<String, u64>,
    pub errors: u64,
    pub admitted: Vec<exactness::Admitted>,
}

/// The figures of one run, as printed and written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: Target,
    pub mode: Mode,
    pub protocol: Protocol,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub latency_ms: BTreeMap<String, f64>,
    pub verdicts: BTreeMap<String, u64>,
}

impl Outcome {
    pub fn summary(&self) -> Summary {
        let requests = self.latency.len();
        let seconds = self.elapsed.as_secs_f64();
        let ms = |us: u64| us as f64 / 1000.0;
        let mut latency_ms = BTreeMap::new();
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            latency_ms.insert(name.to_owned(), ms(self.latency.value_at_quantile(q)));
        }
        latency_ms.insert("max".to_owned(), ms(self.latency.max()));
        Summary {
            target: self.target,
            mode: self.mode,
            protocol: self.protocol,
            requests,
            errors: self.errors,
            seconds,
            throughput: if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
            latency_ms,
            verdicts: self.verdicts.clone(),
        }
    }
}

/// The header names and values every request of a run carries, built once per run.
struct Wire {
    protocol: Protocol,
    json: HeaderValue,
    accept: HeaderValue,
    version_name: HeaderName,
    version: HeaderValue,
    session_name: HeaderName,
    method_name: HeaderName,
    name_name: HeaderName,
}

impl Wire {
    fn new(protocol: Protocol) -> Wire {
        Wire {
            protocol,
            json: HeaderValue::from_static("application/json"),
            accept: HeaderValue::from_static("application/json, text/event-stream"),
            version_name: HeaderName::from_static("mcp-protocol-version"),
            version: HeaderValue::from_static(match protocol {
                Protocol::Session => SESSION_VERSION,
                Protocol::Stateless => STATELESS_VERSION,
            }),
            session_name: HeaderName::from_static("mcp-session-id"),
            method_name: HeaderName::from_static("mcp-method"),
            name_name: HeaderName::from_static("mcp-name"),
        }
    }
}

/// A grant of the scenario, ready to send: its `Authorization` value, and the session a
/// stateless call of it is counted under (the gateway counts a 2026-07-28 call's
/// session-scoped limits per grant).
struct PreparedGrant {
    spec: GrantSpec,
    authorization: HeaderValue,
    stateless_session: String,
}

/// A call of the scenario, ready to send: its arguments, its body after the JSON-RPC id, and
/// (2026-07-28) its `Mcp-Method` and `Mcp-Name` values.
struct PreparedCall {
    spec: CallSpec,
    arguments: Value,
    body_tail: String,
    method: HeaderValue,
    name: Option<HeaderValue>,
}

/// Everything a run sends, prepared once: grants and calls with their request parts.
struct Plan {
    server: String,
    grants: Vec<PreparedGrant>,
    calls: Vec<PreparedCall>,
}

/// What opens every request body; the id and the prepared tail follow.
const BODY_HEAD: &str = r#"{"jsonrpc":"2.0","id":"#;

/// `params._meta` of a 2026-07-28 request.
fn envelope() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "tollgate-loadtest", "version": env!("CARGO_PKG_VERSION")},
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

impl Plan {
    fn new(scenario: &Scenario) -> anyhow::Result<Plan> {
        let protocol = scenario.load.protocol;
        let mut grants = Vec::with_capacity(scenario.grants.len());
        for g in &scenario.grants {
            let mut authorization = HeaderValue::try_from(format!("Bearer {}", g.key))
                .with_context(|| format!("grant {}: the key cannot be sent in a header", g.name))?;
            authorization.set_sensitive(true);
            grants.push(PreparedGrant {
                spec: g.clone(),
                authorization,
                stateless_session: format!("stateless grant {}", g.name),
            });
        }
        let mut calls = Vec::with_capacity(scenario.calls.len());
        for c in &scenario.calls {
            let arguments = arguments_of(c);
            let method = c.method.as_deref().unwrap_or("tools/call");
            let mut params = if method == "tools/call" {
                json!({"name": c.tool, "arguments": arguments})
            } else {
                json!({})
            };
            let mut name = None;
            if protocol == Protocol::Stateless {
                params["_meta"] = envelope();
                if method == "tools/call" {
                    name = Some(
                        HeaderValue::from_str(&c.tool)
                            .ok()
                            .filter(|_| is_plain(&c.tool))
                            .with_context(|| {
                                format!("tool {:?}: only names of visible ASCII are sent as Mcp-Name", c.tool)
                            })?,
                    );
                }
            }
            let tail = json!({"method": method, "params": params}).to_string();
            calls.push(PreparedCall {
                spec: c.clone(),
                arguments,
                // `{"method":…,"params":…}` without its opening brace, after `"id":N,`.
                body_tail: format!(",{}", &tail[1..]),
                method: HeaderValue::from_str(method).with_context(|| format!("method {method:?}"))?,
                name,
            });
        }
        Ok(Plan {
            server: scenario.server(),
            grants,
            calls,
        })
    }

    /// Grant and call of the `i`-th call: the weighted mixes, interleaved deterministically.
    fn pick(&self, i: u64) -> (&PreparedGrant, &PreparedCall) {
        (
            weighted(&self.grants, i, |g| g.spec.weight),
            weighted(&self.calls, i / 7 + i, |c| c.spec.weight),
        )
    }
}

/// Whether `name` goes into `Mcp-Name` as it is (visible ASCII, no edge spaces, not the
/// Base64 sentinel's form).
fn is_plain(name: &str) -> bool {
    let visible = name.bytes().all(|b| (0x20..0x7f).contains(&b));
    let sentinel = name.starts_with("=?") && name.ends_with("?=");
    visible && !name.starts_with(' ') && !name.ends_with(' ') && !sentinel
}

/// One client of the run: in the session era an MCP session (its endpoint and
/// `Mcp-Session-Id`), in 2026-07-28 just the endpoint.
struct Session {
    http: reqwest::Client,
    url: reqwest::Url,
    wire: Arc<Wire>,
    id: Option<String>,
    id_header: Option<HeaderValue>,
}

impl Session {
    /// A client of `url`; in the session era, initializes a session as `authorization`.
    async fn open(
        http: reqwest::Client,
        url: &str,
        wire: Arc<Wire>,
        authorization: &HeaderValue,
    ) -> anyhow::Result<Session> {
        let mut session = Session {
            http,
            url: reqwest::Url::parse(url).with_context(|| format!("invalid URL {url}"))?,
            wire,
            id: None,
            id_header: None,
        };
        if session.wire.protocol == Protocol::Stateless {
            return Ok(session);
        }
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": SESSION_VERSION, "capabilities": {}, "clientInfo": {"name": "tollgate-loadtest", "version": "1"}}});
        let response = session
            .request(authorization, init.to_string(), None)
            .send()
            .await
            .with_context(|| format!("initialize at {url}"))?;
        if !response.status().is_success() {
            bail!("initialize at {url}: HTTP {}", response.status());
        }
        session.id_header = response.headers().get("mcp-session-id").cloned();
        session.id = session
            .id_header
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = response.bytes().await;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = session
            .request(authorization, note.to_string(), None)
            .send()
            .await?
            .bytes()
            .await;
        Ok(session)
    }

    /// A POST of `body`: the same fixed headers in both eras, then the session's id (session
    /// era) or the call's routing headers (2026-07-28), all prepared before the run.
    fn request(
        &self,
        authorization: &HeaderValue,
        body: String,
        call: Option<&PreparedCall>,
    ) -> reqwest::RequestBuilder {
        let wire = &*self.wire;
        let mut request = self
            .http
            .post(self.url.clone())
            .header(AUTHORIZATION, authorization.clone())
            .header(CONTENT_TYPE, wire.json.clone())
            .header(ACCEPT, wire.accept.clone())
            .header(wire.version_name.clone(), wire.version.clone());
        match wire.protocol {
            Protocol::Session => {
                if let Some(id) = &self.id_header {
                    request = request.header(wire.session_name.clone(), id.clone());
                }
            }
            Protocol::Stateless => {
                if let Some(call) = call {
                    request = request.header(wire.method_name.clone(), call.method.clone());
                    if let Some(name) = &call.name {
                        request = request.header(wire.name_name.clone(), name.clone());
                    }
                }
            }
        }
        request.body(body)
    }

    /// One `tools/call` (or another method of `call`); returns the verdict (`ALLOW` when
    /// the upstream answered).
    async fn call(&self, grant: &PreparedGrant, id: u64, call: &PreparedCall) -> Result<String, String> {
        let mut body = String::with_capacity(BODY_HEAD.len() + 20 + call.body_tail.len());
        body.push_str(BODY_HEAD);
        let _ = write!(body, "{id}");
        body.push_str(&call.body_tail);
        let response = self
            .request(&grant.authorization, body, Some(call))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let message = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .chain(std::iter::once(text.as_str()))
            .find_map(|candidate| serde_json::from_str::<Value>(candidate).ok())
            .ok_or_else(|| "answer is not JSON".to_owned())?;
        if let Some(error) = message.get("error") {
            return Err(format!("JSON-RPC error {}", error.get("code").unwrap_or(&Value::Null)));
        }
        Ok(message
            .pointer("/result/_meta/tollgate~1decision/verdict")
            .and_then(Value::as_str)
            .unwrap_or("ALLOW")
            .to_owned())
    }

    /// The session the gateway counts a call of `grant` under, for the exactness check.
    fn counted_as<'a>(&'a self, grant: &'a PreparedGrant) -> &'a str {
        match self.wire.protocol {
            Protocol::Session => self.id.as_deref().unwrap_or_default(),
            Protocol::Stateless => &grant.stateless_session,
        }
    }
}

struct Recorder {
    started: Instant,
    /// Calls sent (due, in open mode) before this are the warm-up: not counted.
    measured_from: Instant,
    latency: Mutex<Histogram<u64>>,
    verdicts: Mutex<BTreeMap<String, u64>>,
    errors: AtomicU64,
    admitted: Mutex<Vec<exactness::Admitted>>,
}

impl Recorder {
    fn new(warmup: Duration) -> anyhow::Result<Recorder> {
        let started = Instant::now();
        Ok(Recorder {
            started,
            measured_from: started + warmup,
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            verdicts: Mutex::default(),
            errors: AtomicU64::new(0),
            admitted: Mutex::default(),
        })
    }

    /// Records one answered call. Calls of the warm-up (due before `measured_from`) add only
    /// their errors and, for the exactness check, what they admitted.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        plan: &Plan,
        grant: &PreparedGrant,
        call: &PreparedCall,
        session: &Session,
        due: Instant,
        sent: Instant,
        result: Result<String, String>,
    ) {
        let answered = Instant::now();
        let measured = due >= self.measured_from;
        if measured {
            let micros = answered.duration_since(due).as_micros().max(1) as u64;
            let _ = self
                .latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(micros.min(60_000_000));
        }
        match result {
            Ok(verdict) => {
                if verdict == "ALLOW" {
                    self.admitted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(exactness::Admitted {
                            server: plan.server.clone(),
                            tool: call.spec.tool.clone(),
                            grant: grant.spec.name.clone(),
                            agent: grant.spec.agent.clone().unwrap_or_else(|| grant.spec.name.clone()),
                            session: session.counted_as(grant).to_owned(),
                            arguments: call.arguments.clone(),
                            sent: sent.duration_since(self.started),
                            answered: answered.duration_since(self.started),
                        });
                }
                if measured {
                    *self
                        .verdicts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(verdict)
                        .or_default() += 1;
                }
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn arguments_of(call: &CallSpec) -> Value {
    call.arguments
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| json!({}))
}

/// Runs the scenario against the gateway's edges or, for the baseline, the upstream.
pub async fn run(scenario: &Scenario, target: Target) -> anyhow::Result<Outcome> {
    scenario.validate()?;
    let urls: Vec<String> = match target {
        Target::Gateway => scenario.edges.clone(),
        Target::Direct => vec![
            scenario
                .upstream
                .clone()
                .context("--baseline needs `upstream` in the scenario")?,
        ],
    };
    let load = &scenario.load;
    let plan = Arc::new(Plan::new(scenario)?);
    let wire = Arc::new(Wire::new(load.protocol));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(load.timeout_ms))
        .pool_max_idle_per_host(load.concurrency.max(load.sessions))
        .build()?;
    let sessions_wanted = match load.mode {
        Mode::Closed => load.concurrency.max(1),
        Mode::Open => load.sessions.max(1),
    };
    let mut sessions = Vec::with_capacity(sessions_wanted);
    for i in 0..sessions_wanted {
        let url = &urls[i % urls.len()];
        let session = Session::open(http.clone(), url, wire.clone(), &plan.grants[0].authorization).await?;
        sessions.push(Arc::new(session));
    }
    let recorder = Arc::new(Recorder::new(Duration::from_secs_f64(load.warmup_s))?);
    let deadline = recorder.measured_from + Duration::from_secs_f64(load.duration_s);
    let next = Arc::new(AtomicU64::new(0));
    let max = load.max_requests;

    let mut tasks = Vec::new();
    match load.mode {
        Mode::Closed => {
            for session in sessions {
                let (plan, recorder, next) = (plan.clone(), recorder.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= max || Instant::now() >= deadline {
                            break;
                        }
                        let (grant, call) = plan.pick(i);
                        let sent = Instant::now();
                        let result = session.call(grant, i + 1, call).await;
                        recorder.record(&plan, grant, call, &session, sent, sent, result);
                    }
                }));
            }
        }
        Mode::Open => {
            let interval = Duration::from_secs_f64(1.0 / load.rate);
            let in_flight = Arc::new(AtomicU64::new(0));
            let mut i = 0u64;
            while i < max {
                let due = recorder.started + interval.mul_f64(i as f64);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                if in_flight.load(Ordering::Relaxed) > 20_000 {
                    bail!(
                        "more than 20000 calls in flight: the target cannot keep up with rate {}",
                        load.rate
                    );
                }
                let session = sessions[(i as usize) % sessions.len()].clone();
                let (plan, recorder, in_flight) = (plan.clone(), recorder.clone(), in_flight.clone());
                in_flight.fetch_add(1, Ordering::Relaxed);
                tasks.push(tokio::spawn(async move {
                    let (grant, call) = plan.pick(i);
                    let sent = Instant::now();
                    let result = session.call(grant, i + 1, call).await;
                    recorder.record(&plan, grant, call, &session, due, sent, result);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                }));
                i += 1;
            }
        }
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = recorder.measured_from.elapsed();
    let recorder = Arc::try_unwrap(recorder).map_err(|_| anyhow::anyhow!("load tasks still running"))?;
    Ok(Outcome {
        target,
        mode: load.mode,
        protocol: load.protocol,
        elapsed,
        latency: recorder.latency.into_inner().unwrap_or_else(|e| e.into_inner()),
        verdicts: recorder.verdicts.into_inner().unwrap_or_else(|e| e.into_inner()),
        errors: recorder.errors.into_inner(),
        admitted: recorder.admitted.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}

/// The summary as a table.
pub fn table(s: &Summary) -> String {
    let mut out = format!(
        "{:<8} {:<6} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "target", "mode", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let l = |k: &str| s.latency_ms.get(k).copied().unwrap_or_default();
    let target = match s.target {
        Target::Gateway => "gateway",
        Target::Direct => "direct",
    };
    let mode = match s.mode {
        Mode::Closed => "closed",
        Mode::Open => "open",
    };
    out.push_str(&format!(
        "{target:<8} {mode:<6} {:>9} {:>7} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}\n",
        s.requests,
        s.errors,
        s.throughput,
        l("p50"),
        l("p90"),
        l("p99"),
        l("p99.9"),
        l("max")
    ));
    let verdicts: Vec<String> = s.verdicts.iter().map(|(v, n)| format!("{v}={n}")).collect();
    out.push_str(&format!(
        "verdicts: {}\n",
        if verdicts.is_empty() {
            "-".into()
        } else {
            verdicts.join(" ")
        }
    ));
    out
}
