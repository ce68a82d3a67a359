//! `subscriptions/listen` (MCP 2026-07-28): a long-lived request whose answer is a stream of
//! notifications. The edge treats its filter like any other request it forwards:
//!
//! - `resourceSubscriptions` keeps only URIs the caller may read (the policy's answer for
//!   those URIs, as for a resources list); the upstream never learns of the others, and its
//!   acknowledgment (the subset it honours) shows the caller what it got. At most
//!   `edge.max_subscription_uris` URIs per request.
//! - Each stream counts against the grant's `edge.max_streams_per_grant` (with its GET
//!   streams), so one grant cannot hold every connection; a flood gets 429.
//! - The stream carries a keep-alive comment every `edge.stream_keepalive_ms`.
//!
//! On `/mcp/{server}` the request is forwarded to that upstream; on `/mcp` it is fanned out
//! to every upstream the caller reaches and the streams are merged ([`Fanned`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tollgate_api::proto::{SubjectKind, Tool};

use crate::exchange::Exchange;
use crate::guard::{ListFilter, guarded, holding, too_many_streams};
use crate::request::content_type_is;
use crate::resolve::invalid_params;
use crate::{jsonrpc, sse};

/// The flags of a notification filter, in the order the acknowledgment lists them.
const FLAGS: [&str; 3] = ["toolsListChanged", "promptsListChanged", "resourcesListChanged"];
/// `_meta` key naming the subscription a message belongs to.
pub(crate) const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// What a `subscriptions/listen` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Requested {
    /// The flags set to `true`.
    pub(crate) flags: Vec<&'static str>,
    /// The resource URIs, each once, in the order asked; only URIs the edge accepts at all.
    pub(crate) uris: Vec<String>,
}

impl Requested {
    /// Reads `params.notifications` of a `subscriptions/listen`; the error is the text of an
    /// invalid-params answer.
    pub(crate) fn of(message: &Value, max_uris: usize) -> Result<Requested, String> {
        let notifications = match message.pointer("/params/notifications") {
            None | Some(Value::Null) => return Ok(Requested::default()),
            Some(Value::Object(n)) => n,
            Some(_) => return Err("subscriptions/listen params.notifications must be an object".into()),
        };
        let mut requested = Requested::default();
        for flag in FLAGS {
            match notifications.get(flag) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => requested.flags.push(flag),
                Some(_) => return Err(format!("subscriptions/listen notifications.{flag} must be a boolean")),
            }
        }
        let uris = match notifications.get("resourceSubscriptions") {
            None | Some(Value::Null) => return Ok(requested),
            Some(Value::Array(uris)) => uris,
            Some(_) => return Err("subscriptions/listen notifications.resourceSubscriptions must be an array".into()),
        };
        if uris.len() > max_uris {
            return Err(format!(
                "subscriptions/listen names {} resource URIs; at most {max_uris} (edge.max_subscription_uris)",
                uris.len()
            ));
        }
        for uri in uris {
            let Some(uri) = uri.as_str() else {
                return Err("subscriptions/listen notifications.resourceSubscriptions must hold strings".into());
            };
            // A URI the edge would refuse to read is one the caller cannot read: left out,
            // like one the policy denies.
            if tollgate_api::check_resource_uri(uri).is_ok() && !requested.uris.iter().any(|u| u == uri) {
                requested.uris.push(uri.to_owned());
            }
        }
        Ok(requested)
    }

    /// The notification filter asking for this.
    pub(crate) fn filter(&self) -> Value {
        let mut filter = Map::new();
        for flag in &self.flags {
            filter.insert((*flag).to_owned(), Value::Bool(true));
        }
        if !self.uris.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(filter)
    }

    /// `message` asking for exactly this.
    pub(crate) fn put_into(&self, message: &mut Value) {
        if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
            params.insert("notifications".into(), self.filter());
        }
    }
}

/// The URIs of `uris` the caller of `filter` may read on its upstream.
pub(crate) async fn readable(filter: &ListFilter, uris: &[String]) -> Result<Vec<String>, crate::guard::Refused> {
    if uris.is_empty() {
        return Ok(Vec::new());
    }
    let listed = uris
        .iter()
        .map(|uri| Tool {
            pin: None,
            name: uri.clone(),
            annotations: None,
        })
        .collect();
    let visible = filter.visible(SubjectKind::Resource, listed).await?;
    Ok(uris.iter().filter(|u| visible.contains(u)).cloned().collect())
}

/// A 503 JSON-RPC answer for a refusal the edge could not avoid (the decision service is
/// away).
fn unavailable(id: &Value, refused: &crate::guard::Refused) -> Response {
    let body = jsonrpc::error_body(Some(id), jsonrpc::INTERNAL_ERROR, &refused.message, None);
    jsonrpc::json_response(refused.status, &body)
}

/// `subscriptions/listen` on `/mcp/{server}`: the filter narrowed to what the caller may
/// read, forwarded, and the stream held against the grant's stream quota.
pub(crate) async fn per_server(exchange: &Exchange<'_>, mut message: Value, id: &Value) -> Response {
    let gw = exchange.gw;
    let mut requested = match Requested::of(&message, gw.settings.max_subscription_uris) {
        Ok(r) => r,
        Err(text) => return invalid_params(id, &text),
    };
    let slot = match gw.streams.take(&exchange.caller.grant) {
        Ok(slot) => slot,
        Err(full) => return too_many_streams(exchange.caller, full),
    };
    let filter = exchange.list_filter();
    requested.uris = match readable(&filter, &requested.uris).await {
        Ok(uris) => uris,
        Err(refused) => return unavailable(id, &refused),
    };
    requested.put_into(&mut message);
    let response = match exchange.send(&message, Some(id)).await {
        Ok(response) => response,
        Err(response) => return response,
    };
    let stream = response.status().is_success() && content_type_is(response.headers(), "text/event-stream");
    if !stream {
        return guarded(response, filter, Some(id.clone())).await; // an error answer: nothing is held open
    }
    let (parts, body) = response.into_parts();
    let part = Part::reading(exchange, body, id, requested.uris);
    // The upstream's stream as the caller may see it: its acknowledgment narrowed to the URIs
    // asked for, updates of other URIs left out, its answer (the end) passed.
    let events = futures_util::stream::unfold(Some(part), |part| async move {
        let mut part = part?;
        match part.next().await {
            Some(Step::Event(event) | Step::Acknowledged(_, event)) => Some((event, Some(part))),
            Some(Step::Answered(_, event)) => Some((event, None)),
            None => None,
        }
    });
    let body = with_keepalive(events.map(Ok::<_, std::io::Error>), keepalive(gw));
    let headers = crate::upstream::response_headers(&parts.headers);
    holding((parts.status, headers, body).into_response(), Some(slot))
}

fn keepalive(gw: &crate::gateway::Gateway) -> Option<Duration> {
    let ms = gw.settings.stream_keepalive_ms;
    (ms > 0).then(|| Duration::from_millis(ms.max(100)))
}

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// `events` with a keep-alive comment whenever nothing was sent for `every`; ends with
/// `events`.
fn with_keepalive<S, E>(events: S, every: Option<Duration>) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let events: ByteStream = Box::pin(events.map(|r| r.map_err(std::io::Error::other)));
    let Some(every) = every else {
        return Body::from_stream(events);
    };
    let state = (
        events,
        tokio::time::interval_at(tokio::time::Instant::now() + every, every),
    );
    Body::from_stream(futures_util::stream::unfold(
        state,
        |(mut events, mut ticks)| async move {
            tokio::select! {
                item = events.next() => {
                    ticks.reset();
                    item.map(|item| (item, (events, ticks)))
                }
                _ = ticks.tick() => Some((Ok(Bytes::from_static(KEEPALIVE)), (events, ticks))),
            }
        },
    ))
}

/// One upstream's listen stream on `/mcp`, read event by event after the list guard.
pub(crate) struct Part {
    pub(crate) server: String,
    events: ByteStream,
    splitter: sse::EventSplitter,
    ready: VecDeque<Bytes>,
    /// The resource URIs this upstream was asked for (all the caller may read of them):
    /// updates of any other are not passed on, whatever the upstream sends.
    uris: Vec<String>,
}

/// What an upstream's stream said next.
enum Step {
    /// An event to pass on.
    Event(Bytes),
    /// The upstream's acknowledgment, narrowed to what it was asked for: the filter it
    /// honours, and the event saying so.
    Acknowledged(Value, Bytes),
    /// The upstream answered the listen request: its subscription ended (gracefully, or
    /// with an error whose text is given); the event.
    Answered(Option<String>, Bytes),
}

impl Part {
    /// Opens `message` (a listen with this upstream's filter) on `exchange`; the error says
    /// why this upstream is left out.
    pub(crate) async fn open(
        exchange: &Exchange<'_>,
        message: &Value,
        id: &Value,
        uris: Vec<String>,
    ) -> Result<Part, String> {
        let response = exchange
            .send(message, Some(id))
            .await
            .map_err(|r| format!("no answer (HTTP {} from the edge)", r.status().as_u16()))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let json = !content_type_is(response.headers(), "text/event-stream");
        let max = exchange.gw.settings.max_upstream_message_bytes;
        let (_, body) = response.into_parts();
        if json {
            // A JSON answer ends the subscription before it began: most likely an error.
            let bytes = exchange
                .read_body(body, max)
                .await
                .ok_or_else(|| "an answer Tollgate could not read".to_owned())?;
            let answer = jsonrpc::parse_strict(&bytes).map_err(|e| format!("an answer Tollgate cannot parse ({e})"))?;
            return Err(match answer.pointer("/error/message").and_then(Value::as_str) {
                Some(text) => format!("it refused: {}", jsonrpc::printable(text, 200)),
                None => "it answered without opening a stream".to_owned(),
            });
        }
        Ok(Part::reading(exchange, body, id, uris))
    }

    /// The upstream's event stream `body`, through the list guard.
    fn reading(exchange: &Exchange<'_>, body: hyper::body::Incoming, id: &Value, uris: Vec<String>) -> Part {
        let events = exchange.list_filter().event_stream(Some(id.clone()), body);
        Part {
            server: exchange.upstream.name.clone(),
            events: Box::pin(events.into_data_stream().map(|r| r.map_err(std::io::Error::other))),
            splitter: sse::EventSplitter::new(exchange.gw.settings.max_upstream_message_bytes),
            ready: VecDeque::new(),
            uris,
        }
    }

    /// The next thing the stream says; `None` when it ended without answering.
    async fn next(&mut self) -> Option<Step> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                let Some(data) = sse::data(&event).filter(|d| !d.trim().is_empty()) else {
                    continue; // comments and keep-alives: the merged stream has its own
                };
                let Ok(mut message) = jsonrpc::parse_strict(data.as_bytes()) else {
                    return None; // the guard ends a stream it cannot parse; so does this
                };
                match message.get("method").and_then(Value::as_str) {
                    Some("notifications/subscriptions/acknowledged") => {
                        // What it honours of what it was asked: never a URI it was not asked for.
                        if let Some(Value::Array(given)) =
                            message.pointer_mut("/params/notifications/resourceSubscriptions")
                        {
                            given.retain(|u| u.as_str().is_some_and(|u| self.uris.iter().any(|a| a == u)));
                        }
                        let honoured = message.pointer("/params/notifications").cloned().unwrap_or_default();
                        let event = sse::with_data(&event, &message.to_string());
                        return Some(Step::Acknowledged(honoured, event));
                    }
                    Some("notifications/resources/updated") => {
                        let uri = message.pointer("/params/uri").and_then(Value::as_str);
                        if !uri.is_some_and(|u| self.uris.iter().any(|a| a == u)) {
                            continue; // not one this caller subscribed to (and may read)
                        }
                    }
                    Some(_) => {}
                    None if message.get("result").is_some() || message.get("error").is_some() => {
                        let error = message
                            .pointer("/error/message")
                            .and_then(Value::as_str)
                            .map(|t| jsonrpc::printable(t, 200));
                        return Some(Step::Answered(error, event));
                    }
                    None => {}
                }
                return Some(Step::Event(event));
            }
            match self.events.next().await? {
                Ok(chunk) => {
                    self.splitter.push(&chunk);
                    while let Ok(Some(event)) = self.splitter.next_event() {
                        self.ready.push_back(event);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads up to the upstream's acknowledgment (events before it are dropped: MCP allows
    /// none); the error says why the upstream is left out.
    pub(crate) async fn acknowledged(&mut self) -> Result<Value, String> {
        loop {
            match self.next().await {
                Some(Step::Acknowledged(honoured, _)) => return Ok(honoured),
                Some(Step::Event(_)) => {}
                Some(Step::Answered(Some(error), _)) => return Err(format!("it refused: {error}")),
                Some(Step::Answered(None, _)) => return Err("it ended the subscription at once".into()),
                None => return Err("its stream ended before it acknowledged".into()),
            }
        }
    }
}

/// An item of one upstream's part of the merged stream.
enum Merged {
    Event(Bytes),
    /// The part's stream dropped (or ended with an error).
    Dropped,
}

type PartStream = Pin<Box<dyn Stream<Item = Merged> + Send>>;

struct MergedState {
    first: Option<Bytes>,
    merged: futures_util::stream::SelectAll<PartStream>,
    id: Value,
    done: bool,
}

/// `/mcp`'s merged listen stream: the gateway's own acknowledgment first, then every event
/// of the upstreams' streams. When every upstream ended its subscription gracefully, the
/// gateway ends the merged one gracefully too (its answer to the listen request); when any
/// upstream's stream drops, the merged stream drops, so the client listens again rather
/// than miss that upstream's notifications unknowingly.
pub(crate) struct Fanned {
    pub(crate) id: Value,
    pub(crate) acknowledgment: Value,
    pub(crate) parts: Vec<Part>,
}

impl Fanned {
    pub(crate) fn into_response(self, gw: &crate::gateway::Gateway, slot: crate::gateway::QuotaSlot) -> Response {
        let Fanned {
            id,
            acknowledgment,
            parts,
        } = self;
        let streams = parts.into_iter().map(|part| {
            let stream: PartStream = Box::pin(futures_util::stream::unfold(Some(part), |part| async move {
                let mut part = part?;
                loop {
                    match part.next().await {
                        Some(Step::Event(event)) => return Some((Merged::Event(event), Some(part))),
                        Some(Step::Acknowledged(..)) => {}
                        Some(Step::Answered(None, _)) => return None,
                        Some(Step::Answered(Some(_), _)) | None => {
                            tracing::info!(upstream = %part.server, "an upstream's subscriptions/listen stream dropped; ending the merged one");
                            return Some((Merged::Dropped, None));
                        }
                    }
                }
            }));
            stream
        });
        let state = MergedState {
            first: Some(sse::with_data(b"event: message\n", &acknowledgment.to_string())),
            merged: futures_util::stream::select_all(streams),
            id,
            done: false,
        };
        let events = futures_util::stream::unfold(state, |mut s| async move {
            if let Some(first) = s.first.take() {
                return Some((first, s));
            }
            if s.done {
                return None;
            }
            match s.merged.next().await {
                Some(Merged::Event(event)) => Some((event, s)),
                Some(Merged::Dropped) => None,
                None => {
                    s.done = true;
                    let id = &s.id;
                    let end = json!({"jsonrpc": "2.0", "id": id,
                        "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: id}}});
                    Some((sse::with_data(b"event: message\n", &end.to_string()), s))
                }
            }
        });
        let body = with_keepalive(events.map(Ok::<_, std::io::Error>), keepalive(gw));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        holding((StatusCode::OK, headers, body).into_response(), Some(slot))
    }
}
