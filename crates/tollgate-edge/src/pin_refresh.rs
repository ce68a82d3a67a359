//! Tool pinning's reading of upstreams: reports of the definitions an edge saw, a refresher
//! per pinned upstream that reads its tools, prompts and resource templates lists itself (at
//! start, every `edge.pins_refresh_ms`, and when woken), and a watcher that holds a
//! notification stream open to the upstream and wakes the refresher on every
//! `notifications/*/list_changed`. [`read_lists`] is also `tollgate pins check`'s reader.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use tollgate_api::proto::SubjectKind;

use crate::gateway::Gateway;
use crate::pins::{Definition, PINNED_LISTS, definitions_of};
use crate::upstream::Upstream;
use crate::{jsonrpc, sse};

/// Pages of one list the refresher reads at most.
const MAX_PAGES: usize = 64;
/// Definitions one report to the decision service carries at most.
const REPORT_CHUNK: usize = 256;

/// Resource templates (`resources/templates/list`) of a pinned upstream: reported, and in
/// `enforce` shown only when approved (the policy decides each read by its URI). `true` when
/// the list was looked at.
pub(crate) async fn retain_pinned_templates(
    gw: &Gateway,
    server: &str,
    caller: &crate::auth::Caller,
    items: &mut Vec<Value>,
) -> bool {
    use std::collections::HashSet;
    use tollgate_api::proto::{Pinning, Tool, VisibleToolsRequest};
    let kind = SubjectKind::Resource;
    if gw.pins.mode(server) == Pinning::Off {
        return false;
    }
    items.retain(|item| item.get("uriTemplate").and_then(Value::as_str).is_some());
    let definitions = definitions_of(kind, "uriTemplate", items, gw.pins.max_definition_bytes());
    crate::pins::drop_duplicate_names(items, "uriTemplate");
    if gw.pins.mode(server) == Pinning::Enforce {
        crate::pins::strip_unpinned(kind, items);
    }
    report(gw, server, kind, &definitions, false).await;
    if gw.pins.mode(server) != Pinning::Enforce {
        return true;
    }
    let listed: Vec<Tool> = definitions
        .iter()
        .map(|d| Tool {
            name: d.name.clone(),
            annotations: None,
            pin: gw.pins.check(server, kind, &d.name, Some(&d.digest)),
        })
        .collect();
    let mut request = VisibleToolsRequest {
        server: server.to_owned(),
        grant: caller.grant.clone(),
        agent: caller.agent.clone(),
        tools: listed,
        ..Default::default()
    };
    request.set_kind(kind);
    // Asked like a resources list (the policy reads a template as a URI pattern's text);
    // without an answer none is shown.
    let approved: HashSet<String> = match gw.decider.visible_tools(request).await {
        Ok(answer) => answer.visible.into_iter().collect(),
        Err(e) => {
            tracing::warn!(upstream = %server, "resource templates hidden, no pin check: {e}");
            HashSet::new()
        }
    };
    items.retain(|item| {
        item.get("uriTemplate")
            .and_then(Value::as_str)
            .is_some_and(|t| approved.contains(t))
    });
    true
}

/// The pin check of each entry of a tools or prompts list of `server` (by name), `None` when
/// the upstream is not pinned: the definitions digested (reused for a list seen before), a
/// name listed twice hidden (and pinned as one definition of both), what is new to this edge
/// reported.
pub(crate) async fn pin_checks(
    gw: &Gateway,
    server: &str,
    kind: SubjectKind,
    key: &str,
    items: &mut Vec<Value>,
) -> Option<std::collections::HashMap<String, tollgate_api::proto::PinCheck>> {
    if kind == SubjectKind::Resource || gw.pins.mode(server) == tollgate_api::proto::Pinning::Off {
        return None;
    }
    let definitions = gw.pins.definitions(server, kind, key, items);
    // One definition per entry unless a name is listed twice.
    if definitions.len() != items.len() {
        crate::pins::drop_duplicate_names(items, key);
    }
    if gw.pins.mode(server) == tollgate_api::proto::Pinning::Enforce {
        crate::pins::strip_unpinned(kind, items);
    }
    report(gw, server, kind, &definitions, false).await;
    Some(
        definitions
            .iter()
            .filter_map(|d| Some((d.name.clone(), gw.pins.check(server, kind, &d.name, Some(&d.digest))?)))
            .collect(),
    )
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
        match gw.decider.observe_pins(part).await {
            Ok(()) => {
                let done: Vec<(String, String)> = chunk.iter().map(|d| (d.name.clone(), d.digest.clone())).collect();
                gw.pins.reported(server, kind, &done);
            }
            Err(e) => {
                tracing::warn!(upstream = %server, "could not report listed definitions for pinning (retried with the next list; calls are checked against them meanwhile): {e}")
            }
        }
    }
}

/// Starts one refresher per pinned upstream.
pub(crate) fn start_refreshers(gw: &Arc<Gateway>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    for (server, wake) in &gw.pins.wake {
        tokio::spawn(keep_pinned(Arc::downgrade(gw), server.clone(), wake.clone()));
    }
}

/// Longest a notification stream is kept before the link is made again.
const STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// One pinned upstream's refresher. It links to the upstream once (stateless requests when
/// it answers them, else one session of its own, kept), reads every pinned list, and holds a
/// notification stream open on the link (`subscriptions/listen` for the three list flags, or
/// the session's GET stream); it reads the lists again every `edge.pins_refresh_ms`, on every
/// `notifications/*/list_changed` it hears, and when the guard wakes it (a list_changed on an
/// agent's stream). A failed read or an ended stream makes the link again, after a pause that
/// doubles up to the refresh interval. The task ends with the gateway.
async fn keep_pinned(gw: std::sync::Weak<Gateway>, server: String, wake: Arc<tokio::sync::Notify>) {
    let mut pause = Duration::from_secs(1);
    loop {
        let Some((upstream, timeout, limit, max, every)) = gw.upgrade().and_then(|gw| {
            Some((
                gw.upstreams.get(&server)?.clone(),
                Duration::from_millis(gw.settings.upstream_timeout_ms),
                gw.settings.max_upstream_message_bytes,
                gw.pins.max_definition_bytes(),
                Duration::from_millis(gw.settings.pins_refresh_ms.max(100)),
            ))
        }) else {
            return;
        };
        let mut reader = Reader::new(&upstream, timeout, limit);
        if let Err(e) = reader.connect().await {
            tracing::warn!(upstream = %server, "could not read definitions for pinning: {e}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(every.max(Duration::from_secs(1)));
            continue;
        }
        let stream = match reader.notifications().await {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::debug!(upstream = %server, "no notification stream for pinning ({e}); lists are read every edge.pins_refresh_ms");
                None
            }
        };
        let heard = async {
            match stream {
                Some(body) => {
                    let _ = tokio::time::timeout(STREAM_LIFETIME, hear_changes(body, limit, &wake)).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(heard);
        loop {
            match reader.read(max).await {
                Ok(lists) => {
                    let Some(gw) = gw.upgrade() else { return };
                    if let Some(locked) = &gw.pins.locked {
                        locked.reload();
                    }
                    for (kind, definitions) in lists {
                        report(&gw, &server, kind, &definitions, true).await;
                    }
                    pause = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(upstream = %server, "could not read definitions for pinning: {e}");
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = wake.notified() => {
                    // Several list_changed at once are one read.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = &mut heard => break,
            }
        }
        reader.end_session().await;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(every.max(Duration::from_secs(1)));
    }
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

/// Reads every pinned list of `upstream` now, each page (`tollgate pins check`): stateless
/// when it answers so, else in a session of its own, ended afterwards.
pub async fn read_lists(
    upstream: &Upstream,
    timeout: Duration,
    limit: usize,
    max_definition_bytes: usize,
) -> Result<Vec<(SubjectKind, Vec<Definition>)>, String> {
    let mut reader = Reader::new(upstream, timeout, limit);
    reader.connect().await?;
    let lists = reader.read(max_definition_bytes).await;
    reader.end_session().await;
    lists
}

/// A link to one upstream for reading its lists: stateless, or a session of its own.
struct Reader<'a> {
    upstream: &'a Upstream,
    timeout: Duration,
    limit: usize,
    session: Option<HeaderValue>,
    next_id: u64,
    /// Whether the upstream answers stateless (2026-07-28) requests; else `capabilities` is
    /// what its `initialize` said.
    stateless: bool,
    capabilities: Value,
}

impl<'a> Reader<'a> {
    fn new(upstream: &'a Upstream, timeout: Duration, limit: usize) -> Reader<'a> {
        Reader {
            upstream,
            timeout,
            limit,
            session: None,
            next_id: 0,
            stateless: false,
            capabilities: Value::Null,
        }
    }

    /// Makes the link: stateless when the upstream answers a stateless `tools/list`, else
    /// a session (`initialize`).
    async fn connect(&mut self) -> Result<(), String> {
        let probe = json!({"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }});
        if self.ask("tools/list", probe, true).await.is_ok() {
            self.stateless = true;
            return Ok(());
        }
        self.capabilities = self.initialize().await?;
        Ok(())
    }

    /// Every pinned list, each page, on the link.
    async fn read(&mut self, max: usize) -> Result<Vec<(SubjectKind, Vec<Definition>)>, String> {
        if self.stateless {
            self.all_lists(true, max).await
        } else {
            let capabilities = self.capabilities.clone();
            self.session_lists(&capabilities, max).await
        }
    }

    /// The link's notification stream: `subscriptions/listen` for the list flags
    /// (stateless), or the session's GET stream.
    async fn notifications(&mut self) -> Result<hyper::body::Incoming, String> {
        let (method, headers, body) = if self.stateless {
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
            (
                Method::POST,
                self.headers("subscriptions/listen", true),
                Body::from(listen.to_string()),
            )
        } else {
            let mut headers = self.headers("", false);
            headers.insert(
                axum::http::header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.remove(axum::http::header::CONTENT_TYPE);
            (Method::GET, headers, Body::empty())
        };
        let response = self
            .upstream
            .send(method, &headers, "", body, self.timeout)
            .await
            .map_err(|e| e.public_message())?;
        if !response.status().is_success() || !crate::request::content_type_is(response.headers(), "text/event-stream")
        {
            return Err(format!("it answered HTTP {}", response.status().as_u16()));
        }
        Ok(response.into_body())
    }

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
                sse::answer_in(body, &id, self.limit).await
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
                _ => return Ok(crate::pins::merge_duplicates(all, max)),
            }
        }
        Ok(crate::pins::merge_duplicates(all, max))
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
