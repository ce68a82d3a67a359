//! What comes back from upstreams: every tools, resources and prompts list an upstream
//! sends is filtered to what the caller may call (read, get), on every path it can take — a
//! list answer as JSON or SSE, an event replayed on the GET stream, a list inside any other
//! SSE stream — and anything the edge cannot parse there is not passed on (fail closed).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tollgate_api::proto::{SubjectKind, Tool, ToolAnnotations, VisibleToolsRequest};

use crate::auth::Caller;
use crate::gateway::{Gateway, QuotaFull, QuotaSlot, WithoutDecision, without_decision};
use crate::jsonrpc;
use crate::marks::mark_server_message;
use crate::request::content_type_is;
use crate::{sse, upstream};
use futures_util::StreamExt;

/// An upstream answer as the agent receives it: only the headers agents may see, an SSE body
/// through the list guard, and a JSON body read whole (within
/// `edge.max_upstream_message_bytes`) and, unless it names nothing the guard reads, parsed,
/// checked to answer `request_id` (an upstream must not answer one request with another's
/// id: a client would take it for that request's answer, e.g. a tools list smuggled into the
/// answer to a ping), and filtered like any list. What cannot be read is not passed on.
pub(crate) async fn guarded(
    response: axum::http::Response<Incoming>,
    filter: ListFilter,
    request_id: Option<Value>,
) -> Response {
    if content_type_is(response.headers(), "text/event-stream") {
        let (parts, body) = response.into_parts();
        let body = filter.event_stream(request_id, body);
        return (parts.status, upstream::response_headers(&parts.headers), body).into_response();
    }
    let (parts, body) = response.into_parts();
    let server = filter.server.clone();
    let refuse = |what: String| {
        tracing::warn!(upstream = %server, status = parts.status.as_u16(), "upstream sent {what}; not passed on");
        let text = format!("upstream MCP server \"{server}\" sent {what}");
        crate::jsonrpc::error_response(
            StatusCode::BAD_GATEWAY,
            request_id.as_ref(),
            crate::jsonrpc::UPSTREAM_ERROR,
            &text,
            None,
        )
    };
    let limit = filter.gw.settings.max_upstream_message_bytes;
    let timeout = std::time::Duration::from_millis(filter.gw.settings.upstream_timeout_ms);
    let read = tokio::time::timeout(
        timeout,
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)),
    );
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => return refuse("an answer larger than edge.max_upstream_message_bytes".into()),
        Err(_) => return refuse("an answer that did not arrive within edge.upstream_timeout_ms".into()),
    };
    let headers = upstream::response_headers(&parts.headers);
    if nothing_to_filter(&bytes) {
        // Most answers: nothing in them the guard changes, so they are not parsed at all.
        return (parts.status, headers, bytes).into_response();
    }
    let mut answer = match crate::jsonrpc::parse_strict(&bytes) {
        Ok(answer) => answer,
        Err(e) => {
            return refuse(format!(
                "an answer Tollgate cannot parse ({})",
                crate::jsonrpc::printable(&e.to_string(), 200)
            ));
        }
    };
    if let Some(id) = &request_id
        && crate::jsonrpc::answers_another(&answer, id)
    {
        return refuse(
            "an answer that does not answer the request it was sent for (another id, or not one response)".into(),
        );
    }
    match filter.filter(&mut answer).await {
        Ok(true) => (parts.status, headers, answer.to_string()).into_response(),
        Ok(false) => (parts.status, headers, bytes).into_response(),
        Err(refused) => {
            let error = crate::jsonrpc::error_body(
                request_id.as_ref(),
                crate::jsonrpc::INTERNAL_ERROR,
                &refused.message,
                None,
            );
            crate::jsonrpc::json_response(refused.status, &error)
        }
    }
}

/// Whether the guard could change nothing in the JSON text `bytes` (an answer to a call): it
/// names none of the members the guard reads (lists, tasks, caching directives, an
/// `InputRequiredResult`'s `resultType` and state, a server request). A name could hide only
/// behind a `\u` escape, so text with any escape of that kind is read in full.
pub(crate) fn nothing_to_filter(bytes: &[u8]) -> bool {
    const MARKERS: [&[u8]; 12] = [
        b"\\u",
        b"\"resourceTemplates\"",
        b"\"tools\"",
        b"\"resources\"",
        b"\"prompts\"",
        b"\"method\"",
        b"\"input_required\"",
        b"\"cacheScope\"",
        b"\"ttlMs\"",
        b"\"requestState\"",
        b"\"task",
        b"\"io.modelcontextprotocol/related-task\"",
    ];
    !MARKERS
        .iter()
        .any(|marker| bytes.windows(marker.len()).any(|w| w == *marker))
}

/// The lists a result may hold: its field, the field naming each entry, and their kind.
const LISTS: [(&str, &str, SubjectKind); 3] = [
    ("tools", "name", SubjectKind::Tool),
    ("resources", "uri", SubjectKind::Resource),
    ("prompts", "name", SubjectKind::Prompt),
];

/// `response` with `slot` held until its body is done or dropped (a long-lived stream
/// counted against its grant's quota).
pub(crate) fn holding(response: Response, slot: Option<QuotaSlot>) -> Response {
    let Some(slot) = slot else { return response };
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _counted = &slot;
        chunk
    }));
    Response::from_parts(parts, body)
}

/// 429 for a stream past the grant's `edge.max_streams_per_grant`.
pub(crate) fn too_many_streams(caller: &Caller, full: QuotaFull) -> Response {
    tracing::warn!(grant = %caller.grant, "refused a stream: the grant has {} open on this edge ({})", full.max, full.setting);
    jsonrpc::error_response(
        StatusCode::TOO_MANY_REQUESTS,
        None,
        jsonrpc::INVALID_REQUEST,
        &format!(
            "this grant has {} server-to-client streams open on this gateway already ({}): close one first",
            full.max, full.setting
        ),
        None,
    )
}

/// Filters tools, resources and prompts lists for one caller of one upstream.
#[derive(Clone)]
pub(crate) struct ListFilter {
    pub gw: Arc<Gateway>,
    pub server: String,
    pub caller: Arc<Caller>,
    /// On the aggregated endpoint: the upstream's prefix. Its tools and prompts are then
    /// renamed `{prefix}{separator}{name}`, and its requests to the client get ids that
    /// name it (see [`crate::aggregate`]).
    pub aggregate: Option<Arc<str>>,
    /// For the answer to a 2026-07-28 call: seals an `InputRequiredResult`'s `requestState`.
    pub input_state: Option<Arc<crate::mrtr::Issuer>>,
    /// Every task id in an answer becomes the caller's handle ([`crate::tasks`]).
    pub seal_tasks: bool,
    /// For the answer to a decided call: the decision, recorded with a task it creates.
    pub task_origin: Option<Arc<TaskOrigin>>,
}

/// The decision of a call whose answer may create a task, and the call's trace.
pub(crate) struct TaskOrigin {
    pub decision_id: String,
    /// The call's span (its `traceparent` is read when a task is recorded).
    pub span: tracing::Span,
}

/// Why a message could not be passed on, and the HTTP status that says so where the
/// status is still the edge's to choose (JSON answers).
pub(crate) struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl ListFilter {
    /// Filters every tools, resources and prompts list in `message` (one message or a batch
    /// of them) in place. `Ok(true)` when something was changed, `Ok(false)` when the message
    /// holds no list.
    pub async fn filter(&self, message: &mut Value) -> Result<bool, Refused> {
        match message {
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= Box::pin(self.filter(item)).await?;
                }
                Ok(changed)
            }
            Value::Object(_) => {
                let narrowed = self.seal_tasks && self.tasks_of_the_grant(message).await;
                let sealed = self.seal_tasks
                    && (crate::tasks::seal_ids(&self.gw.sealer, &self.caller.grant, &self.server, message) || narrowed);
                let Value::Object(object) = message else {
                    return Ok(sealed);
                };
                Ok(self.filter_object(object).await? || sealed)
            }
            _ => Ok(false),
        }
    }

    /// Records a task the answer creates (for the grant, with the decision), and narrows a
    /// task list to the grant's own tasks (none when the records cannot be read: fail
    /// closed). Task ids are still the upstream's here; they are sealed next. `true` when
    /// a list was narrowed.
    async fn tasks_of_the_grant(&self, message: &mut Value) -> bool {
        let (grant, server) = (&self.caller.grant, &self.server);
        let created = crate::tasks::created(message);
        if let Some((task_id, ttl_ms)) = created.clone() {
            let origin = self.task_origin.as_deref();
            let request = tollgate_api::proto::RecordTaskRequest {
                task: Some(tollgate_api::proto::TaskRecord {
                    server: server.clone(),
                    task_id,
                    grant: grant.clone(),
                    decision_id: origin.map(|o| o.decision_id.clone()).unwrap_or_default(),
                    traceparent: origin
                        .map(|o| tollgate_telemetry::propagation::traceparent_of(&o.span))
                        .unwrap_or_default(),
                }),
                ttl_ms,
            };
            if let Err(e) = self.gw.decider.record_task(request).await {
                tracing::warn!(grant = %grant, upstream = %server, "could not record a task (it works through its handle, but will not be listed): {e}");
            }
        }
        if let Some(ids) = crate::tasks::listed_ids(message) {
            let owned = owned_ids(&self.gw, grant, server, ids).await;
            return crate::tasks::keep_owned(message, &owned);
        }
        // Any other task the message names must be this grant's: an upstream sees only the
        // gateway's credential, so its notifications (task status, related-task messages)
        // may name any caller's tasks. A notification about another grant's task is not
        // passed on; elsewhere such an id is blanked.
        let named: Vec<String> = crate::tasks::named_ids(message)
            .into_iter()
            .filter(|id| created.as_ref().is_none_or(|(made, _)| made != id))
            .collect();
        if named.is_empty() {
            return false;
        }
        let mut owned = owned_ids(&self.gw, grant, server, named).await;
        if let Some((made, _)) = created {
            owned.push(made);
        }
        let notification = message.get("method").is_some() && message.get("id").is_none();
        if crate::tasks::blank_unowned(message, &owned) {
            if notification {
                *message = Value::Null;
            }
            return true;
        }
        false
    }

    /// [`ListFilter::filter`] of one message.
    async fn filter_object(&self, object: &mut serde_json::Map<String, Value>) -> Result<bool, Refused> {
        if let Some(prefix) = &self.aggregate
            && mark_server_message(object, prefix)
        {
            return Ok(true);
        }
        if let Some(issuer) = &self.input_state
            && issuer.seal_into(object)
        {
            return Ok(true);
        }
        if let Some(Value::String(method)) = object.get("method")
            && matches!(
                method.as_str(),
                "notifications/tools/list_changed"
                    | "notifications/prompts/list_changed"
                    | "notifications/resources/list_changed"
            )
        {
            // Definitions are read again at once (tool pinning); the notification goes on.
            self.gw.pins.changed(&self.server);
        }
        let Some(Value::Object(result)) = object.get_mut("result") else {
            return Ok(false);
        };
        let mut changed = false;
        if let Some(templates) = result.get_mut("resourceTemplates") {
            let Value::Array(items) = templates else {
                return Err(Refused {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!(
                        "upstream MCP server \"{}\" sent a result whose \"resourceTemplates\" is not an array",
                        self.server
                    ),
                });
            };
            changed |= crate::pin_refresh::retain_pinned_templates(&self.gw, &self.server, &self.caller, items).await;
        }
        for (field, key, kind) in LISTS {
            let Some(items) = result.get_mut(field) else {
                continue;
            };
            let Value::Array(items) = items else {
                return Err(Refused {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!(
                        "upstream MCP server \"{}\" sent a result whose \"{field}\" is not an array",
                        self.server
                    ),
                });
            };
            self.retain_visible(kind, key, items).await?;
            if let Some(prefix) = &self.aggregate
                && kind != SubjectKind::Resource
            {
                let separator = &self.gw.settings.aggregate.separator;
                for item in items.iter_mut() {
                    if let Some(Value::String(name)) = item.get_mut(key) {
                        *name = format!("{prefix}{separator}{name}");
                    }
                }
            }
            changed = true;
        }
        if changed {
            self.private_to_the_caller(result);
        }
        Ok(changed)
    }

    /// A filtered list of the 2026-07-28 revision (a result with caching directives) is one
    /// caller's view: no shared cache may serve it to another (`cacheScope: "private"`), and
    /// it is fresh no longer than the edge reuses its own answer (`edge.list_cache_ms`).
    fn private_to_the_caller(&self, result: &mut serde_json::Map<String, Value>) {
        let cacheable = ["ttlMs", "cacheScope", "resultType"]
            .iter()
            .any(|k| result.contains_key(*k));
        if !cacheable {
            return;
        }
        let most = self.gw.settings.list_cache_ms;
        let ttl = result.get("ttlMs").and_then(Value::as_u64).unwrap_or(0).min(most);
        result.insert("ttlMs".into(), Value::from(ttl));
        result.insert("cacheScope".into(), Value::from("private"));
    }

    /// Whether the caller could see `name` (a tool, resource URI or prompt) listed.
    pub(crate) async fn sees(&self, kind: SubjectKind, name: &str) -> Result<bool, Refused> {
        let listed = vec![Tool {
            name: name.to_owned(),
            annotations: None,
            pin: match kind {
                SubjectKind::Resource => None,
                _ => self.gw.pins.check(&self.server, kind, name, None),
            },
        }];
        Ok(self.visible(kind, listed).await?.iter().any(|v| v == name))
    }

    /// Keeps the entries (tools, resources, prompts: named by their `key` field) the caller
    /// may use. Entries no agent could use through the edge (a name or URI it refuses) are
    /// dropped first; the annotations of the tools that remain are remembered.
    async fn retain_visible(&self, kind: SubjectKind, key: &str, items: &mut Vec<Value>) -> Result<(), Refused> {
        let name_of = |item: &Value| item.get(key).and_then(Value::as_str).map(str::to_owned);
        items.retain(|item| {
            item.get(key)
                .and_then(Value::as_str)
                .is_some_and(|n| tollgate_api::check_subject(kind, n).is_ok())
        });
        // Tool pinning: each entry's pin check (none when the upstream is not pinned).
        let pins = crate::pin_refresh::pin_checks(&self.gw, &self.server, kind, key, items).await;
        let listed: Vec<Tool> = items
            .iter()
            .filter_map(|item| {
                let name = name_of(item)?;
                let pin = pins.as_ref().and_then(|p| {
                    p.get(name.as_str())
                        .cloned()
                        .or_else(|| self.gw.pins.check(&self.server, kind, &name, None))
                });
                Some(Tool {
                    name,
                    annotations: (kind == SubjectKind::Tool).then(|| annotations_of(item)),
                    pin,
                })
            })
            .collect();
        if kind == SubjectKind::Tool {
            self.gw.learn_tools(&self.server, &listed);
            for item in items.iter() {
                if let (Some(name), Some(schema)) = (item.get(key).and_then(Value::as_str), item.get("inputSchema")) {
                    self.gw
                        .learn_param_headers(&self.server, name, crate::protocol::param_headers_of(schema));
                }
            }
        }
        let visible = self.visible(kind, listed).await?;
        let visible: HashSet<&str> = visible.iter().map(String::as_str).collect();
        items.retain(|item| {
            item.get(key)
                .and_then(Value::as_str)
                .is_some_and(|n| visible.contains(n))
        });
        Ok(())
    }

    /// Which of `listed` the caller could ever use on this upstream (the policy's answer,
    /// remembered per grant, list and policy).
    pub(crate) async fn visible(&self, kind: SubjectKind, listed: Vec<Tool>) -> Result<Vec<String>, Refused> {
        let grant = &self.caller.grant;
        if let Some(visible) = self.gw.visible.get(grant, &self.server, kind, &listed) {
            return Ok(visible);
        }
        let mut request = VisibleToolsRequest {
            server: self.server.clone(),
            grant: grant.clone(),
            agent: self.caller.agent.clone(),
            tools: listed.clone(),
            ..Default::default()
        };
        request.set_kind(kind);
        match self.gw.decider.visible_tools(request).await {
            Ok(answer) if answer.pins_hid => Ok(answer.visible),
            Ok(answer) => {
                self.gw.visible.put(
                    grant,
                    &self.server,
                    kind,
                    listed,
                    answer.visible.clone(),
                    answer.policy_digest,
                );
                Ok(answer.visible)
            }
            Err(e) => {
                let list = match kind {
                    SubjectKind::Tool => "tools",
                    SubjectKind::Resource => "resources",
                    SubjectKind::Prompt => "prompts",
                };
                let what = format!("the {list} list of {} for grant {}", self.server, self.caller.grant);
                if without_decision(&self.gw.settings, &e, &what) == WithoutDecision::ForwardUnchecked {
                    return Ok(listed.into_iter().map(|t| t.name).collect());
                }
                Err(Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: format!(
                        "the decision service is unavailable, so Tollgate cannot tell which {list} you may use; \
                         try again shortly"
                    ),
                })
            }
        }
    }

    /// Guards an upstream SSE stream: events pass as they came unless they hold a tools
    /// list (rewritten) or cannot be parsed (the stream ends with an error for
    /// `request_id`, when the stream answers a request). No task is spawned: when the agent
    /// goes away, the body is dropped and with it the upstream connection.
    pub fn event_stream(self, request_id: Option<Value>, body: Incoming) -> Body {
        let state = EventStream {
            splitter: sse::EventSplitter::new(self.gw.settings.max_upstream_message_bytes),
            filter: self,
            request_id,
            body,
            out: VecDeque::new(),
            done: false,
        };
        Body::from_stream(futures_util::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        }))
    }
}

struct EventStream {
    filter: ListFilter,
    request_id: Option<Value>,
    splitter: sse::EventSplitter,
    body: Incoming,
    out: VecDeque<Bytes>,
    done: bool,
}

impl EventStream {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(event) = self.out.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match self.body.frame().await {
                // An unterminated event at the end is incomplete, and SSE discards it.
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(std::io::Error::other(e)));
                }
                Some(Ok(frame)) => {
                    let Ok(chunk) = frame.into_data() else { continue };
                    self.splitter.push(&chunk);
                    loop {
                        match self.splitter.next_event() {
                            Ok(Some(event)) => {
                                let guarded = self.guard(event).await;
                                self.out.push_back(guarded);
                                if self.done {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(sse::EventTooLarge(max)) => {
                                let why = format!("an event larger than edge.max_upstream_message_bytes ({max} bytes)");
                                let error = self.fail(&why);
                                self.out.push_back(error);
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// One event as it may reach the agent.
    async fn guard(&mut self, event: Bytes) -> Bytes {
        let Some(data) = sse::data(&event) else {
            return event; // comments, keep-alives, retry and id-only events
        };
        if data.trim().is_empty() {
            return event; // e.g. the priming event a resumable stream starts with
        }
        let mut message = match jsonrpc::parse_strict(data.as_bytes()) {
            Ok(m) => m,
            Err(e) => return self.fail(&format!("an event Tollgate cannot parse ({e})")),
        };
        match self.filter.filter(&mut message).await {
            Ok(false) => event,
            // A message not for this caller (a notification about another grant's task).
            Ok(true) if message.is_null() => Bytes::new(),
            Ok(true) => sse::with_data(&event, &message.to_string()),
            Err(refused) => {
                let id = message.get("id").cloned();
                let error = jsonrpc::error_body(id.as_ref(), jsonrpc::INTERNAL_ERROR, &refused.message, None);
                sse::with_data(b"event: message\n", &error.to_string())
            }
        }
    }

    /// Ends the stream: nothing after an event the edge could not check is passed on.
    fn fail(&mut self, what: &str) -> Bytes {
        self.done = true;
        let server = &self.filter.server;
        tracing::warn!(upstream = %server, "upstream sent {what}; ending the stream");
        let text = format!("upstream MCP server \"{server}\" sent {what}");
        let error = jsonrpc::error_body(self.request_id.as_ref(), jsonrpc::UPSTREAM_ERROR, &text, None);
        match self.request_id {
            Some(_) => sse::with_data(b"event: message\n", &error.to_string()),
            None => Bytes::new(),
        }
    }
}

fn annotations_of(tool: &Value) -> ToolAnnotations {
    let hint = |name: &str| {
        tool.get("annotations")
            .and_then(|a| a.get(name))
            .and_then(Value::as_bool)
    };
    ToolAnnotations {
        read_only_hint: hint("readOnlyHint"),
        destructive_hint: hint("destructiveHint"),
        idempotent_hint: hint("idempotentHint"),
        open_world_hint: hint("openWorldHint"),
    }
}

/// Which of `ids` (an upstream's task ids) the store records for `grant` on `server`; none
/// when the records cannot be read (fail closed).
pub(crate) async fn owned_ids(gw: &Gateway, grant: &str, server: &str, ids: Vec<String>) -> Vec<String> {
    let request = tollgate_api::proto::OwnedTasksRequest {
        grant: grant.to_owned(),
        server: server.to_owned(),
        task_ids: ids.into_iter().take(MAX_TASKS_PER_QUERY).collect(),
    };
    match gw.decider.owned_tasks(request).await {
        Ok(records) => records.into_iter().map(|r| r.task_id).collect(),
        Err(e) => {
            tracing::warn!(grant = %grant, upstream = %server, "could not read task records; treating the tasks as unknown: {e}");
            Vec::new()
        }
    }
}

/// Whether every task `message` (a request, its handles opened) names is one the store
/// records for `grant` on `server`.
pub(crate) async fn owns_named_tasks(gw: &Gateway, grant: &str, server: &str, message: &Value) -> bool {
    let named = crate::tasks::named_ids(message);
    if named.is_empty() {
        return true;
    }
    let owned = owned_ids(gw, grant, server, named.clone()).await;
    named.iter().all(|id| owned.contains(id))
}

/// Most task ids one ownership query names (the decision service refuses more; the edge
/// does not depend on the stores' crate, where the bound is `MAX_TASKS_PER_QUERY` too).
const MAX_TASKS_PER_QUERY: usize = 1000;

#[cfg(test)]
mod tests {
    use super::nothing_to_filter;

    #[test]
    fn only_answers_without_anything_the_guard_reads_skip_it() {
        assert!(nothing_to_filter(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"resultType":"complete"}}"#
        ));
        for read in [
            &br#"{"result":{"resultType":"input_required","requestState":"s"}}"#[..],
            br#"{"result":{"tools":[]}}"#,
            br#"{"result":{"task":{"taskId":"T"}}}"#,
            br#"{"result":{"ttlMs":5,"cacheScope":"public"}}"#,
            br#"{"result":{"resultType":"input\u005frequired"}}"#,
            br#"{"result":{"\u0074ools":[]}}"#,
        ] {
            assert!(!nothing_to_filter(read), "{}", String::from_utf8_lossy(read));
        }
    }
}
