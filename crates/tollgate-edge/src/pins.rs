//! Tool pinning at the edge: the digest of every definition an upstream lists (tools,
//! prompts, resource templates; [`tollgate_api::definitions`]), the last one this edge saw
//! per name, reported to the decision service when it is new to this edge, and named in
//! every pin check the edge asks for (lists and calls). With `edge.pins_file` the lockfile
//! says which digests are approved.
//!
//! Definitions are read again from each pinned upstream at least every
//! `edge.pins_refresh_ms` (by the edge itself: its own short session, or stateless requests),
//! at once when an upstream says a list changed, and from every list an agent gets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tollgate_api::definitions::{canonical_definition, digest_of, is_digest};
use tollgate_api::proto::{ObservePinsRequest, ObservedDefinition, PinCheck, Pinning, SubjectKind};

use crate::gateway::Gateway;
use crate::settings::PinningMode;
use crate::upstream::Upstream;
use crate::{jsonrpc, sse};

/// Names whose last digest one edge remembers at most.
const MAX_REMEMBERED: usize = 16_384;
/// Pages of one list the refresher reads at most.
const MAX_PAGES: usize = 64;
/// Definitions one report to the decision service carries at most.
const REPORT_CHUNK: usize = 256;

/// The lists pinning reads, with the member naming each entry.
pub const PINNED_LISTS: [(&str, &str, &str, SubjectKind); 3] = [
    ("tools/list", "tools", "name", SubjectKind::Tool),
    ("prompts/list", "prompts", "name", SubjectKind::Prompt),
    (
        "resources/templates/list",
        "resourceTemplates",
        "uriTemplate",
        SubjectKind::Resource,
    ),
];

/// `tools.lock.json`: the approved definitions, as `tollgate pins export` writes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    pub pins: Vec<LockedPin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPin {
    pub server: String,
    /// `tool`, `prompt` or `template`.
    pub kind: String,
    pub name: String,
    pub digest: String,
    /// The definition (for review; only the digest counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<Value>,
}

/// The lockfile kind of a subject kind.
pub fn kind_word(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Tool => "tool",
        SubjectKind::Prompt => "prompt",
        SubjectKind::Resource => "template",
    }
}

type NameKey = (i32, String, String);

impl Lockfile {
    /// Reads and checks a lockfile.
    pub fn read(path: &std::path::Path) -> Result<Lockfile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let lock: Lockfile =
            serde_json::from_str(&text).map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
        if lock.version != 1 {
            return Err(format!(
                "{}: version {} (this Tollgate reads version 1)",
                path.display(),
                lock.version
            ));
        }
        for p in &lock.pins {
            if !is_digest(&p.digest) || !matches!(p.kind.as_str(), "tool" | "prompt" | "template") {
                return Err(format!(
                    "{}: the pin of {:?} on {:?} needs kind tool, prompt or template and a SHA-256 digest",
                    path.display(),
                    p.name,
                    p.server
                ));
            }
        }
        Ok(lock)
    }

    fn digests(&self) -> HashMap<NameKey, String> {
        self.pins
            .iter()
            .map(|p| {
                let kind = match p.kind.as_str() {
                    "prompt" => SubjectKind::Prompt,
                    "template" => SubjectKind::Resource,
                    _ => SubjectKind::Tool,
                };
                ((kind as i32, p.server.clone(), p.name.clone()), p.digest.clone())
            })
            .collect()
    }
}

/// The lockfile in force, re-read when it changes (a bad one is logged, the last good kept).
struct Locked {
    path: PathBuf,
    digests: RwLock<HashMap<NameKey, String>>,
    modified: Mutex<Option<SystemTime>>,
}

impl Locked {
    fn reload(&self) {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut last = self.modified.lock().unwrap_or_else(|e| e.into_inner());
        if *last == modified && modified.is_some() {
            return;
        }
        match Lockfile::read(&self.path) {
            Ok(lock) => {
                *self.digests.write().unwrap_or_else(|e| e.into_inner()) = lock.digests();
                *last = modified;
                tracing::info!(path = %self.path.display(), pins = lock.pins.len(), "pins lockfile loaded");
            }
            Err(e) => {
                *last = modified;
                tracing::error!("pins lockfile rejected, the last good one stays in force: {e}");
            }
        }
    }
}

/// One definition from a list, ready to check and report.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    pub digest: String,
    /// Canonical JSON; empty when larger than `edge.pins_max_definition_bytes`.
    pub canonical: String,
    pub bytes: usize,
}

/// Computes the definitions of `items` (entries of a list of `kind`, named by `key`).
pub fn definitions_of(kind: SubjectKind, key: &str, items: &[Value], max_bytes: usize) -> Vec<Definition> {
    items
        .iter()
        .filter_map(|item| {
            let name = item.get(key)?.as_str()?.to_owned();
            let canonical = canonical_definition(kind, item);
            let digest = digest_of(&canonical);
            let bytes = canonical.len();
            Some(Definition {
                name,
                digest,
                canonical: if bytes <= max_bytes { canonical } else { String::new() },
                bytes,
            })
        })
        .collect()
}

/// The edge's pinning state.
pub(crate) struct EdgePins {
    modes: HashMap<String, Pinning>,
    max_definition_bytes: usize,
    last: Mutex<HashMap<NameKey, String>>,
    locked: Option<Locked>,
    /// Per upstream: asks its refresher to read the lists now.
    wake: HashMap<String, Arc<tokio::sync::Notify>>,
}

fn pinning(mode: PinningMode) -> Pinning {
    match mode {
        PinningMode::Off => Pinning::Off,
        PinningMode::Record => Pinning::Record,
        PinningMode::Enforce => Pinning::Enforce,
    }
}

impl EdgePins {
    pub(crate) fn new(
        settings: &crate::settings::EdgeSettings,
        upstreams: &[crate::settings::UpstreamSettings],
    ) -> Result<EdgePins, crate::EdgeError> {
        let modes: HashMap<String, Pinning> = upstreams
            .iter()
            .map(|u| (u.name.clone(), pinning(u.pinning.unwrap_or(settings.pinning))))
            .collect();
        let locked = match &settings.pins_file {
            Some(path) => {
                let lock =
                    Lockfile::read(path).map_err(|e| crate::EdgeError::Config(format!("edge.pins_file: {e}")))?;
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                Some(Locked {
                    path: path.clone(),
                    digests: RwLock::new(lock.digests()),
                    modified: Mutex::new(modified),
                })
            }
            None => None,
        };
        let wake = modes
            .iter()
            .filter(|(_, m)| **m != Pinning::Off)
            .map(|(name, _)| (name.clone(), Arc::new(tokio::sync::Notify::new())))
            .collect();
        Ok(EdgePins {
            modes,
            max_definition_bytes: settings.pins_max_definition_bytes,
            last: Mutex::default(),
            locked,
            wake,
        })
    }

    pub(crate) fn mode(&self, server: &str) -> Pinning {
        self.modes.get(server).copied().unwrap_or(Pinning::Off)
    }

    pub(crate) fn max_definition_bytes(&self) -> usize {
        self.max_definition_bytes
    }

    /// The pin check to ask for `name` of `server`: `None` when the upstream is not pinned.
    /// `digest` is the definition just listed (lists), or `None` for this edge's last seen.
    pub(crate) fn check(&self, server: &str, kind: SubjectKind, name: &str, digest: Option<&str>) -> Option<PinCheck> {
        let mode = self.mode(server);
        if mode == Pinning::Off {
            return None;
        }
        let key = (kind as i32, server.to_owned(), name.to_owned());
        let digest = match digest {
            Some(d) => d.to_owned(),
            None => self
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
                .unwrap_or_default(),
        };
        let mut check = PinCheck {
            digest,
            ..Default::default()
        };
        check.set_mode(mode);
        if let Some(locked) = &self.locked {
            check.locked = true;
            check.locked_digest = locked
                .digests
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
                .unwrap_or_default();
        }
        Some(check)
    }

    /// Remembers `definitions` as the last seen of `server`; the ones new to this edge (or
    /// all with `all`), as a report for the decision service.
    pub(crate) fn saw(
        &self,
        server: &str,
        kind: SubjectKind,
        definitions: &[Definition],
        all: bool,
    ) -> Option<ObservePinsRequest> {
        let mode = self.mode(server);
        if mode == Pinning::Off || definitions.is_empty() {
            return None;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = Vec::new();
        for d in definitions {
            let key = (kind as i32, server.to_owned(), d.name.clone());
            let new = last.get(&key) != Some(&d.digest);
            if new || all {
                report.push(ObservedDefinition {
                    name: d.name.clone(),
                    digest: d.digest.clone(),
                    definition: d.canonical.clone(),
                    bytes: d.bytes as u64,
                });
            }
            if new {
                if last.len() >= MAX_REMEMBERED && !last.contains_key(&key) {
                    last.clear();
                }
                last.insert(key, d.digest.clone());
            }
        }
        if report.is_empty() {
            return None;
        }
        let mut request = ObservePinsRequest {
            server: server.to_owned(),
            definitions: report,
            ..Default::default()
        };
        request.set_kind(kind);
        request.set_mode(mode);
        Some(request)
    }

    /// Forgets what was last seen of `names` (a report failed: they are reported again).
    fn forget(&self, server: &str, kind: SubjectKind, names: &[String]) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for name in names {
            last.remove(&(kind as i32, server.to_owned(), name.clone()));
        }
    }

    /// An upstream said one of its lists changed: its refresher reads them now.
    pub(crate) fn changed(&self, server: &str) {
        if let Some(wake) = self.wake.get(server) {
            wake.notify_one();
        }
    }
}

/// Reports `definitions` of `server` that are new to this edge to the decision service.
/// A report that fails is tried again with the next list.
pub(crate) async fn report(gw: &Gateway, server: &str, kind: SubjectKind, definitions: &[Definition], all: bool) {
    let Some(request) = gw.pins.saw(server, kind, definitions, all) else {
        return;
    };
    for chunk in request.definitions.chunks(REPORT_CHUNK) {
        let mut part = request.clone();
        part.definitions = chunk.to_vec();
        if let Err(e) = gw.decider.observe_pins(part).await {
            let names: Vec<String> = chunk.iter().map(|d| d.name.clone()).collect();
            gw.pins.forget(server, kind, &names);
            tracing::warn!(upstream = %server, "could not report listed definitions for pinning (retried with the next list): {e}");
        }
    }
}

/// Starts one refresher per pinned upstream.
pub(crate) fn start_refreshers(gw: &Arc<Gateway>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    for (server, wake) in &gw.pins.wake {
        tokio::spawn(watch_changes(Arc::downgrade(gw), server.clone(), wake.clone()));
        let weak = Arc::downgrade(gw);
        let server = server.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            let mut era: Option<Era> = None;
            loop {
                let Some(gw) = weak.upgrade() else { return };
                if let Some(locked) = &gw.pins.locked {
                    locked.reload();
                }
                let every = Duration::from_millis(gw.settings.pins_refresh_ms.max(100));
                if let Some(upstream) = gw.upstreams.get(&server) {
                    match read_definitions(&gw, upstream, &mut era).await {
                        Ok(lists) => {
                            for (kind, definitions) in lists {
                                report(&gw, &server, kind, &definitions, true).await;
                            }
                        }
                        Err(e) => tracing::warn!(upstream = %server, "could not read definitions for pinning: {e}"),
                    }
                }
                drop(gw);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = wake.notified() => {
                        // Several list_changed at once are one read.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
}

/// Longest a notification stream is kept before it is opened again.
const STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// Holds a notification stream open to a pinned upstream (`subscriptions/listen` for the
/// list flags, or a session's GET stream) and wakes its refresher on every
/// `notifications/*/list_changed`, so a change a server announces is read at once even when
/// no agent has a stream open. Opened again after a pause when it ends or fails.
async fn watch_changes(gw: std::sync::Weak<Gateway>, server: String, wake: Arc<tokio::sync::Notify>) {
    let mut pause = Duration::from_secs(1);
    loop {
        let opened = {
            let Some(gw) = gw.upgrade() else { return };
            let Some(upstream) = gw.upstreams.get(&server) else {
                return;
            };
            let timeout = Duration::from_millis(gw.settings.upstream_timeout_ms);
            let limit = gw.settings.max_upstream_message_bytes;
            open_notifications(upstream, timeout, limit).await
        };
        match opened {
            Ok((body, limit)) => {
                let heard = tokio::time::timeout(STREAM_LIFETIME, hear_changes(body, limit, &wake)).await;
                if let Ok(Err(e)) = heard {
                    tracing::debug!(upstream = %server, "pin notification stream ended: {e}");
                }
                pause = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::debug!(upstream = %server, "no pin notification stream ({e}); definitions are read every edge.pins_refresh_ms");
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// Opens a notification stream: `subscriptions/listen` (2026-07-28), else a session's GET
/// stream.
async fn open_notifications(
    upstream: &Upstream,
    timeout: Duration,
    limit: usize,
) -> Result<(hyper::body::Incoming, usize), String> {
    let mut reader = Reader {
        upstream,
        timeout,
        limit,
        session: None,
        next_id: 0,
    };
    let listen = json!({
        "jsonrpc": "2.0",
        "id": "tollgate-pins-listen",
        "method": "subscriptions/listen",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            },
            "notifications": {"toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true}
        }
    });
    let headers = reader.headers("subscriptions/listen", true);
    if let Ok(response) = upstream
        .send(Method::POST, &headers, "", Body::from(listen.to_string()), timeout)
        .await
        && response.status().is_success()
        && crate::request::content_type_is(response.headers(), "text/event-stream")
    {
        return Ok((response.into_body(), limit));
    }
    reader.initialize().await?;
    let mut headers = reader.headers("", false);
    headers.insert(
        axum::http::header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.remove(axum::http::header::CONTENT_TYPE);
    let response = upstream
        .send(Method::GET, &headers, "", Body::empty(), timeout)
        .await
        .map_err(|e| e.public_message())?;
    if !response.status().is_success() || !crate::request::content_type_is(response.headers(), "text/event-stream") {
        return Err(format!("its GET stream answered HTTP {}", response.status().as_u16()));
    }
    Ok((response.into_body(), limit))
}

/// Reads a notification stream, waking the refresher on each list change.
async fn hear_changes(mut body: hyper::body::Incoming, limit: usize, wake: &tokio::sync::Notify) -> Result<(), String> {
    let mut splitter = sse::EventSplitter::new(limit);
    loop {
        let Some(frame) = body.frame().await else {
            return Err("the upstream ended it".into());
        };
        let frame = frame.map_err(|e| format!("a broken stream ({e})"))?;
        let Ok(chunk) = frame.into_data() else { continue };
        splitter.push(&chunk);
        while let Some(event) = splitter
            .next_event()
            .map_err(|sse::EventTooLarge(max)| format!("an event larger than {max} bytes"))?
        {
            let Some(data) = sse::data(&event) else { continue };
            let Ok(message) = jsonrpc::parse_strict(data.as_bytes()) else {
                continue;
            };
            if message
                .get("method")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with("notifications/") && m.ends_with("/list_changed"))
            {
                wake.notify_one();
            }
        }
    }
}

/// How an upstream is read: stateless (2026-07-28) or with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Stateless,
    Session,
}

/// Reads every pinned list of `upstream` (each page), as definitions.
pub(crate) async fn read_definitions(
    gw: &Gateway,
    upstream: &Upstream,
    era: &mut Option<Era>,
) -> Result<Vec<(SubjectKind, Vec<Definition>)>, String> {
    let timeout = Duration::from_millis(gw.settings.upstream_timeout_ms);
    let limit = gw.settings.max_upstream_message_bytes;
    let max = gw.pins.max_definition_bytes();
    read_lists(upstream, era, timeout, limit, max).await
}

/// [`read_definitions`] with explicit bounds (also `tollgate pins check`).
pub async fn read_lists(
    upstream: &Upstream,
    era: &mut Option<Era>,
    timeout: Duration,
    limit: usize,
    max_definition_bytes: usize,
) -> Result<Vec<(SubjectKind, Vec<Definition>)>, String> {
    let mut reader = Reader {
        upstream,
        timeout,
        limit,
        session: None,
        next_id: 0,
    };
    let stateless_first = *era != Some(Era::Session);
    let mut answer = None;
    if stateless_first {
        match reader.all_lists(true, max_definition_bytes).await {
            Ok(lists) => {
                *era = Some(Era::Stateless);
                answer = Some(lists);
            }
            Err(e) if *era == Some(Era::Stateless) => return Err(e),
            Err(_) => {}
        }
    }
    let lists = match answer {
        Some(lists) => lists,
        None => {
            let capabilities = reader.initialize().await?;
            let lists = reader.session_lists(&capabilities, max_definition_bytes).await;
            reader.end_session().await;
            *era = Some(Era::Session);
            lists?
        }
    };
    Ok(lists)
}

struct Reader<'a> {
    upstream: &'a Upstream,
    timeout: Duration,
    limit: usize,
    session: Option<HeaderValue>,
    next_id: u64,
}

impl Reader<'_> {
    fn headers(&self, method: &str, stateless: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if stateless {
            headers.insert("mcp-protocol-version", HeaderValue::from_static("2026-07-28"));
            if let Ok(m) = HeaderValue::from_str(method) {
                headers.insert("mcp-method", m);
            }
        } else if let Some(session) = &self.session {
            headers.insert("mcp-session-id", session.clone());
            headers.insert("mcp-protocol-version", HeaderValue::from_static("2025-11-25"));
        }
        headers
    }

    /// Sends a request and reads its answer (JSON, or the answering event of a stream).
    async fn ask(&mut self, method: &str, params: Value, stateless: bool) -> Result<Value, String> {
        self.next_id += 1;
        let id = json!(format!("tollgate-pins-{}", self.next_id));
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let headers = self.headers(method, stateless);
        let response = self
            .upstream
            .send(
                Method::POST,
                &headers,
                "",
                Body::from(message.to_string()),
                self.timeout,
            )
            .await
            .map_err(|e| e.public_message())?;
        let (parts, body) = response.into_parts();
        if let Some(session) = parts.headers.get("mcp-session-id")
            && method == "initialize"
        {
            self.session = Some(session.clone());
        }
        let stream = crate::request::content_type_is(&parts.headers, "text/event-stream");
        let read = async {
            if stream {
                answer_in_stream(body, &id, self.limit).await
            } else {
                let bytes = Limited::new(body, self.limit)
                    .collect()
                    .await
                    .map_err(|_| "an answer larger than edge.max_upstream_message_bytes".to_owned())?
                    .to_bytes();
                jsonrpc::parse_strict(&bytes).map_err(|e| format!("an answer that is not JSON ({e})"))
            }
        };
        let answer = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| "no answer within edge.upstream_timeout_ms".to_owned())??;
        if !parts.status.is_success() {
            return Err(format!("{method}: HTTP {}", parts.status.as_u16()));
        }
        if let Some(error) = answer.get("error") {
            let text = error.get("message").and_then(Value::as_str).unwrap_or_default();
            let code = error.get("code").and_then(Value::as_i64).unwrap_or_default();
            return Err(format!("{method}: error {code}: {}", jsonrpc::printable(text, 200)));
        }
        answer
            .get("result")
            .cloned()
            .ok_or_else(|| format!("{method}: an answer without a result"))
    }

    async fn list(
        &mut self,
        method: &str,
        field: &str,
        key: &str,
        kind: SubjectKind,
        stateless: bool,
        max: usize,
    ) -> Result<Vec<Definition>, String> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut params = json!({});
            if stateless {
                params["_meta"] = json!({
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}
                });
            }
            if let Some(c) = &cursor {
                params["cursor"] = json!(c);
            }
            let result = self.ask(method, params, stateless).await?;
            let items = result
                .get(field)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{method}: a result without a \"{field}\" array"))?;
            all.extend(definitions_of(kind, key, items, max));
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return Ok(all),
            }
        }
        Ok(all)
    }

    /// Every pinned list, statelessly: the tools list must answer; the others may be
    /// missing (`-32601`).
    async fn all_lists(&mut self, stateless: bool, max: usize) -> Result<Vec<(SubjectKind, Vec<Definition>)>, String> {
        let mut lists = Vec::new();
        for (i, (method, field, key, kind)) in PINNED_LISTS.iter().enumerate() {
            match self.list(method, field, key, *kind, stateless, max).await {
                Ok(definitions) => lists.push((*kind, definitions)),
                Err(e) if i == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(lists)
    }

    async fn initialize(&mut self) -> Result<Value, String> {
        let result = self
            .ask(
                "initialize",
                json!({
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "tollgate-pins", "version": env!("CARGO_PKG_VERSION")}
                }),
                false,
            )
            .await?;
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let headers = self.headers("notifications/initialized", false);
        let _ = self
            .upstream
            .send(
                Method::POST,
                &headers,
                "",
                Body::from(notification.to_string()),
                self.timeout,
            )
            .await;
        Ok(result.get("capabilities").cloned().unwrap_or_default())
    }

    async fn session_lists(
        &mut self,
        capabilities: &Value,
        max: usize,
    ) -> Result<Vec<(SubjectKind, Vec<Definition>)>, String> {
        let mut lists = Vec::new();
        for (method, field, key, kind) in PINNED_LISTS {
            let offered = match kind {
                SubjectKind::Tool => capabilities.get("tools").is_some(),
                SubjectKind::Prompt => capabilities.get("prompts").is_some(),
                SubjectKind::Resource => capabilities.get("resources").is_some(),
            };
            if !offered {
                continue;
            }
            match self.list(method, field, key, kind, false, max).await {
                Ok(definitions) => lists.push((kind, definitions)),
                Err(e) if kind == SubjectKind::Tool => return Err(e),
                Err(_) => {}
            }
        }
        Ok(lists)
    }

    async fn end_session(&mut self) {
        if self.session.is_some() {
            let headers = self.headers("", false);
            let _ = self
                .upstream
                .send(Method::DELETE, &headers, "", Body::empty(), self.timeout)
                .await;
        }
    }
}

/// The message answering `id` in an SSE stream.
async fn answer_in_stream(body: hyper::body::Incoming, id: &Value, limit: usize) -> Result<Value, String> {
    let mut splitter = sse::EventSplitter::new(limit);
    let mut body = body;
    loop {
        let Some(frame) = body.frame().await else {
            return Err("a stream that ended without the answer".into());
        };
        let frame = frame.map_err(|e| format!("a broken stream ({e})"))?;
        let Ok(chunk) = frame.into_data() else { continue };
        splitter.push(&chunk);
        while let Some(event) = splitter
            .next_event()
            .map_err(|sse::EventTooLarge(max)| format!("an event larger than {max} bytes"))?
        {
            let Some(data) = sse::data(&event) else { continue };
            if data.trim().is_empty() {
                continue;
            }
            let message =
                jsonrpc::parse_strict(data.as_bytes()).map_err(|e| format!("an event that is not JSON ({e})"))?;
            if message.get("id") == Some(id) && message.get("method").is_none() {
                return Ok(message);
            }
        }
    }
}
