//! The aggregated endpoint `/mcp`: one MCP server made of every upstream a grant may use.
//!
//! - `initialize` is answered by the gateway after initializing every upstream in parallel;
//!   the session id it returns seals the upstreams' session ids ([`crate::sealed`]), so any
//!   edge can serve any later request of the session.
//! - Lists (`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`) fan
//!   out in parallel and merge; each upstream's part is filtered by the policy like on its own
//!   endpoint, and its tools and prompts are renamed `{prefix}{separator}{name}`. The cursor
//!   of a merged page holds each upstream's cursor. An upstream that fails or is slower than
//!   `edge.aggregate.fanout_timeout_ms` is left out, with a warning in the log and its name
//!   under `_meta["tollgate/unavailable"]`.
//! - Calls and prompt gets are routed by prefix and forwarded with the upstream's own name,
//!   which is also what the policy decides on; resource reads are routed by which upstream
//!   listed the URI (learnt from lists, and looked up again when this edge has not seen it).
//! - Requests from an upstream to the client (sampling, elicitation, roots, ping) get ids that
//!   name the upstream (`k8s~5`), so that the client's answer finds its way back; the GET
//!   stream merges the upstreams' GET streams.

// Helpers return a ready answer for the agent as their error (`Result<_, Response>`).
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value, json};
use tollgate_api::proto::SubjectKind;
use tollgate_telemetry::metrics::{GaugeUnit, metrics};
use tracing::Instrument;

use crate::EdgeError;
use crate::auth::Caller;
use crate::guard::ListFilter;
use crate::jsonrpc::{self, Message};
use crate::mcp::{Exchange, Gateway};
use crate::method::McpMethod;
use crate::request::{
    accepts_event_stream, bad_request, check_session_header_max, classify, content_type_is, read_json,
};
use crate::sealed::{AggregateSession, Sealer};
use crate::settings::{AggregateSettings, GrantSettings, UpstreamSettings};
use crate::upstream::Upstream;
use crate::{calls, spans, sse};

/// Longest aggregated session id accepted (it holds every upstream's session id).
const MAX_SEALED_SESSION_BYTES: usize = 4096;
/// Longest upstream session id kept in a sealed session.
const MAX_UPSTREAM_SESSION_BYTES: usize = 256;
/// Resource URIs (and URI templates) one edge remembers the upstream of.
const MAX_ROUTES: usize = 10_000;
/// Pages of `resources/list` read per upstream when looking for an unknown URI.
const MAX_LOOKUP_PAGES: usize = 10;
/// An unknown or ended aggregated session (the client starts a new one).
const SESSION_UNKNOWN: i64 = -32001;
/// MCP's "resource not found".
const RESOURCE_NOT_FOUND: i64 = -32002;

/// The aggregated endpoint's configuration, checked at start, and what it learns.
pub(crate) struct Aggregation {
    sealer: Sealer,
    separator: String,
    fanout_timeout: Duration,
    /// (prefix, upstream name), in configuration order: the order of merged lists.
    prefixes: Vec<(Arc<str>, String)>,
    /// Grants limited to some upstreams (`[[grants]] servers`).
    grant_servers: HashMap<String, Vec<String>>,
    /// `identity.required_scopes`: a token reaches an upstream only with its scopes.
    required_scopes: BTreeMap<String, Vec<String>>,
    routes: RwLock<Routes>,
}

/// Which upstream listed a resource URI or URI template.
#[derive(Default)]
struct Routes {
    exact: HashMap<String, String>,
    /// (literal start of a URI template, upstream), longest first.
    templates: Vec<(String, String)>,
}

impl Aggregation {
    pub(crate) fn new(
        settings: &AggregateSettings,
        upstreams: &[UpstreamSettings],
        grants: &[GrantSettings],
        required_scopes: &BTreeMap<String, Vec<String>>,
    ) -> Result<Aggregation, EdgeError> {
        let bad = |why: String| EdgeError::Config(format!("edge.aggregate: {why}"));
        let name_chars = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        };
        if !name_chars(&settings.separator) {
            return Err(bad(format!(
                "separator \"{}\" must be letters, digits, '_', '-', '.' or '/' (it becomes part of tool names)",
                settings.separator
            )));
        }
        let mut prefixes: Vec<(Arc<str>, String)> = Vec::new();
        for u in upstreams {
            let prefix = u.prefix.clone().unwrap_or_else(|| u.name.clone());
            if !name_chars(&prefix) || prefix.contains(&settings.separator) {
                return Err(bad(format!(
                    "upstream \"{}\": prefix \"{prefix}\" must be letters, digits, '_', '-', '.' or '/', without the \
                     separator \"{}\" (set [[upstreams]] prefix)",
                    u.name, settings.separator
                )));
            }
            if let Some((_, other)) = prefixes.iter().find(|(p, _)| **p == *prefix) {
                return Err(bad(format!(
                    "upstreams \"{other}\" and \"{}\" have the same prefix \"{prefix}\": set [[upstreams]] prefix",
                    u.name
                )));
            }
            prefixes.push((prefix.into(), u.name.clone()));
        }
        let mut grant_servers = HashMap::new();
        for g in grants {
            let Some(servers) = &g.servers else { continue };
            if let Some(unknown) = servers.iter().find(|s| !upstreams.iter().any(|u| &&u.name == s)) {
                return Err(EdgeError::Config(format!(
                    "grant \"{}\": servers names \"{unknown}\", which is no [[upstreams]] entry",
                    g.name
                )));
            }
            grant_servers.insert(g.name.clone(), servers.clone());
        }
        Ok(Aggregation {
            sealer: Sealer::new(&settings.session_keys)?,
            separator: settings.separator.clone(),
            fanout_timeout: Duration::from_millis(settings.fanout_timeout_ms),
            prefixes,
            grant_servers,
            required_scopes: required_scopes.clone(),
            routes: RwLock::default(),
        })
    }

    /// Whether the session keys are this process's own (nothing configured).
    pub(crate) fn has_configured_keys(settings: &AggregateSettings) -> bool {
        !settings.session_keys.is_empty()
    }

    /// The upstreams `caller` reaches through `/mcp`, in configuration order.
    fn servers_for(&self, caller: &Caller) -> Vec<String> {
        let allowed = self.grant_servers.get(&caller.grant);
        self.prefixes
            .iter()
            .map(|(_, server)| server)
            .filter(|server| allowed.is_none_or(|list| list.contains(server)))
            .filter(|server| caller.has_scopes(self.required_scopes.get(*server).map_or(&[], Vec::as_slice)))
            .cloned()
            .collect()
    }

    fn prefix_of(&self, server: &str) -> Arc<str> {
        self.prefixes
            .iter()
            .find(|(_, s)| s == server)
            .map_or_else(|| Arc::from(server), |(p, _)| p.clone())
    }

    /// `k8s__rollout_pause` → (`k8s`'s upstream, `rollout_pause`).
    fn split<'n>(&self, name: &'n str) -> Option<(&str, &'n str)> {
        let (prefix, rest) = name.split_once(self.separator.as_str())?;
        let server = self.prefixes.iter().find(|(p, _)| &**p == prefix)?.1.as_str();
        (!rest.is_empty()).then_some((server, rest))
    }

    fn remember(&self, server: &str, exact: &[String], templates: &[String]) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.exact.len() + exact.len() > MAX_ROUTES {
            routes.exact.clear();
        }
        // Two upstreams listing one URI: the first in configuration order keeps it.
        let position = |s: &str| self.prefixes.iter().position(|(_, name)| name == s);
        let claim = |routes: &mut Routes, key: &String| {
            let keep = routes
                .exact
                .get(key)
                .is_some_and(|held| held != server && position(held) < position(server));
            if !keep {
                routes.exact.insert(key.clone(), server.to_owned());
            }
        };
        for uri in exact {
            claim(&mut routes, uri);
        }
        for template in templates {
            claim(&mut routes, template);
            let literal = template.split('{').next().unwrap_or_default().to_owned();
            if literal.is_empty() || routes.templates.iter().any(|(l, s)| *l == literal && s == server) {
                continue;
            }
            if routes.templates.len() >= MAX_ROUTES {
                routes.templates.clear();
            }
            routes.templates.push((literal, server.to_owned()));
            routes.templates.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        }
    }

    fn route(&self, uri: &str, session: &AggregateSession) -> Option<String> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let in_session = |s: &String| session.session_of(s).is_some();
        routes.exact.get(uri).filter(|s| in_session(s)).cloned().or_else(|| {
            routes
                .templates
                .iter()
                .find(|(literal, server)| uri.starts_with(literal.as_str()) && in_session(server))
                .map(|(_, server)| server.clone())
        })
    }
}

/// Marks a message an upstream sends to the client on the aggregated endpoint: a request's
/// id (and the id a server's `notifications/cancelled` names) becomes `{prefix}~{id}`, so
/// that the client's answer can be routed back. `true` when the message was one.
pub(crate) fn mark_server_message(object: &mut Map<String, Value>, prefix: &str) -> bool {
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return false;
    };
    let cancelled = method == "notifications/cancelled";
    let mut changed = false;
    if let Some(id) = object.get_mut("id").filter(|id| !id.is_null()) {
        *id = mark(prefix, id);
        changed = true;
    }
    if cancelled && let Some(id) = object.get_mut("params").and_then(|p| p.get_mut("requestId")) {
        *id = mark(prefix, id);
        changed = true;
    }
    changed
}

fn mark(prefix: &str, id: &Value) -> Value {
    Value::String(format!("{prefix}~{id}"))
}

/// The upstream prefix and original id of a marked id.
fn unmark(id: &Value) -> Option<(&str, Value)> {
    let (prefix, original) = id.as_str()?.split_once('~')?;
    let original: Value = serde_json::from_str(original).ok()?;
    (original.is_string() || original.is_number()).then_some((prefix, original))
}

/// One request on `/mcp`.
struct Agg<'a> {
    gw: &'a Arc<Gateway>,
    caller: &'a Arc<Caller>,
    headers: &'a HeaderMap,
}

/// An upstream's part of a fanned-out request, as it failed.
enum PartFailed {
    /// The upstream does not have the method (`-32601`): nothing to warn about.
    NotOffered,
    Failed(String),
}

impl<'a> Agg<'a> {
    fn new(gw: &'a Arc<Gateway>, caller: &'a Arc<Caller>, headers: &'a HeaderMap) -> Agg<'a> {
        Agg { gw, caller, headers }
    }

    fn agg(&self) -> &Aggregation {
        &self.gw.aggregation
    }

    /// The agent's headers for one upstream: its own session id, no `Last-Event-ID`.
    fn headers_for(&self, session: Option<&str>) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.remove("mcp-session-id");
        headers.remove("last-event-id");
        if let Some(value) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert("mcp-session-id", value);
        }
        headers
    }

    fn upstream(&self, server: &str) -> Option<&Upstream> {
        self.gw.upstreams.get(server)
    }

    /// The session this request belongs to, limited to the upstreams the caller still
    /// reaches (the configuration may have changed since it began).
    fn session(&self) -> Result<AggregateSession, Response> {
        check_session_header_max(self.headers, MAX_SEALED_SESSION_BYTES)?;
        let Some(id) = self.headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) else {
            return Err(bad_request(
                StatusCode::BAD_REQUEST,
                "no Mcp-Session-Id: a session on /mcp starts with initialize",
            ));
        };
        let Some(mut session) = self.agg().sealer.open(&self.caller.grant, id) else {
            return Err(jsonrpc::error_response(
                StatusCode::NOT_FOUND,
                None,
                SESSION_UNKNOWN,
                "unknown session (it was not issued to this grant, or the session keys changed): initialize again",
                None,
            ));
        };
        let reachable = self.agg().servers_for(self.caller);
        session.upstreams.retain(|(server, _)| reachable.contains(server));
        Ok(session)
    }

    /// Sends `message` to one upstream and reads its answer to `id` (JSON, or the matching
    /// event of an SSE stream), within the fan-out timeout; returns the answer, filtered by
    /// the upstream's list filter (names prefixed), and the response headers.
    async fn ask(
        &self,
        server: &str,
        session: Option<&str>,
        message: &Value,
        id: &Value,
    ) -> Result<(Value, HeaderMap), PartFailed> {
        self.ask_as(server, session, message, id, true).await
    }

    /// [`Agg::ask`]; `filtered` false leaves lists as the upstream sent them (for learning
    /// which upstream a resource belongs to: routing is not access, the read is decided).
    async fn ask_as(
        &self,
        server: &str,
        session: Option<&str>,
        message: &Value,
        id: &Value,
        filtered: bool,
    ) -> Result<(Value, HeaderMap), PartFailed> {
        let upstream = self
            .upstream(server)
            .ok_or_else(|| PartFailed::Failed("not configured".into()))?;
        let headers = self.headers_for(session);
        let exchange = Exchange {
            gw: self.gw,
            upstream,
            caller: self.caller,
            headers: &headers,
            aggregate: Some(self.agg().prefix_of(server)),
        };
        let timeout = self.agg().fanout_timeout;
        let asked = async {
            let response = exchange
                .send(message, Some(id))
                .await
                .map_err(|r| format!("no answer (HTTP {} from the edge)", r.status().as_u16()))?;
            let (parts, body) = response.into_parts();
            if !parts.status.is_success() {
                return Err(format!("HTTP {}", parts.status.as_u16()));
            }
            let limit = self.gw.settings.max_upstream_message_bytes;
            let answer = if content_type_is(&parts.headers, "text/event-stream") {
                answer_in_stream(body, id, limit).await?
            } else {
                let bytes = Limited::new(body, limit)
                    .collect()
                    .await
                    .map_err(|_| "an answer larger than edge.max_upstream_message_bytes".to_owned())?
                    .to_bytes();
                jsonrpc::parse_strict(&bytes).map_err(|e| format!("an answer that is not JSON ({e})"))?
            };
            Ok((answer, parts.headers))
        };
        let (mut answer, headers) = match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(why)) => return Err(PartFailed::Failed(why)),
            Err(_) => {
                return Err(PartFailed::Failed(format!(
                    "no answer within edge.aggregate.fanout_timeout_ms ({} ms)",
                    timeout.as_millis()
                )));
            }
        };
        if answer.pointer("/error/code").and_then(Value::as_i64) == Some(jsonrpc::METHOD_NOT_FOUND) {
            return Err(PartFailed::NotOffered);
        }
        if let Some(error) = answer.get("error") {
            let text = error.get("message").and_then(Value::as_str).unwrap_or_default();
            return Err(PartFailed::Failed(format!(
                "an error: {}",
                jsonrpc::printable(text, 200)
            )));
        }
        if filtered {
            exchange
                .list_filter()
                .filter(&mut answer)
                .await
                .map_err(|refused| PartFailed::Failed(refused.message))?;
        }
        Ok((answer, headers))
    }

    async fn initialize(&self, message: &Value, id: &Value) -> Response {
        let servers = self.agg().servers_for(self.caller);
        if servers.is_empty() {
            return jsonrpc::error_response(
                StatusCode::FORBIDDEN,
                Some(id),
                jsonrpc::INVALID_REQUEST,
                "this grant reaches no upstream MCP server through /mcp",
                None,
            );
        }
        let parts = futures_util::future::join_all(
            servers
                .iter()
                .map(|server| async move { (server, self.ask(server, None, message, id).await) }),
        )
        .await;
        let mut session = AggregateSession { upstreams: Vec::new() };
        let mut results: Vec<(&String, Value)> = Vec::new();
        let mut unavailable: Vec<&str> = Vec::new();
        for (server, part) in parts {
            match part {
                Ok((mut answer, headers)) => {
                    let upstream_session = headers
                        .get("mcp-session-id")
                        .and_then(|v| v.to_str().ok())
                        .filter(|s| s.len() <= MAX_UPSTREAM_SESSION_BYTES && s.bytes().all(|b| b.is_ascii_graphic()))
                        .map(str::to_owned);
                    session.upstreams.push((server.clone(), upstream_session));
                    results.push((server, answer.get_mut("result").map(Value::take).unwrap_or_default()));
                }
                Err(PartFailed::NotOffered) => unavailable.push(server),
                Err(PartFailed::Failed(why)) => {
                    tracing::warn!(upstream = %server, "left out of an aggregated session: initialize got {why}");
                    unavailable.push(server);
                }
            }
        }
        if results.is_empty() {
            return jsonrpc::error_response(
                StatusCode::BAD_GATEWAY,
                Some(id),
                jsonrpc::UPSTREAM_ERROR,
                &format!(
                    "no upstream MCP server answered initialize (tried {})",
                    servers.join(", ")
                ),
                None,
            );
        }
        let sealed = self
            .agg()
            .sealer
            .seal(&self.caller.grant, &session)
            .filter(|id| id.len() <= MAX_SEALED_SESSION_BYTES);
        let Some(sealed) = sealed else {
            tracing::error!(
                upstreams = session.upstreams.len(),
                "cannot issue an aggregated session id: sealing failed, or it would exceed {MAX_SEALED_SESSION_BYTES} \
                 bytes (too many upstreams in one session: limit the grant's [[grants]] servers)"
            );
            return jsonrpc::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(id),
                jsonrpc::INTERNAL_ERROR,
                "could not issue a session id for this many upstreams (see the edge's log)",
                None,
            );
        };
        let requested = message
            .pointer("/params/protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut result = merged_initialize(&results, requested, self.agg());
        if !unavailable.is_empty() {
            result["_meta"] = json!({"tollgate/unavailable": unavailable});
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "result": result});
        let mut response = jsonrpc::json_response(StatusCode::OK, &body);
        if let Ok(value) = HeaderValue::from_str(&sealed) {
            response.headers_mut().insert("mcp-session-id", value);
        }
        response
    }

    /// `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`.
    async fn list(&self, session: &AggregateSession, field: &str, message: &Value, id: &Value) -> Response {
        let targets: Vec<(String, Option<String>)> = match message.pointer("/params/cursor") {
            None | Some(Value::Null) => session.upstreams.iter().map(|(s, _)| (s.clone(), None)).collect(),
            Some(cursor) => match cursor.as_str().and_then(decode_cursor) {
                Some(parts) if parts.iter().all(|(s, _)| session.session_of(s).is_some()) => {
                    parts.into_iter().map(|(s, c)| (s, Some(c))).collect()
                }
                _ => {
                    let body = jsonrpc::error_body(Some(id), jsonrpc::INVALID_PARAMS, "invalid cursor", None);
                    return jsonrpc::json_response(StatusCode::OK, &body);
                }
            },
        };
        let parts = futures_util::future::join_all(targets.iter().map(|(server, cursor)| async move {
            let mut part = message.clone();
            match (cursor, part.get_mut("params").and_then(Value::as_object_mut)) {
                (Some(c), Some(params)) => {
                    params.insert("cursor".into(), json!(c));
                }
                (Some(c), None) => part["params"] = json!({"cursor": c}),
                (None, _) => {}
            }
            let upstream_session = session.session_of(server).flatten();
            (server, self.ask(server, upstream_session, &part, id).await)
        }))
        .await;
        let mut items: Vec<Value> = Vec::new();
        let mut next: Vec<(String, String)> = Vec::new();
        let mut unavailable: Vec<&str> = Vec::new();
        let mut answered = 0;
        for (server, part) in parts {
            let result = match part {
                Ok((answer, _)) => answer.get("result").cloned().unwrap_or_default(),
                Err(PartFailed::NotOffered) => {
                    answered += 1;
                    continue;
                }
                Err(PartFailed::Failed(why)) => {
                    tracing::warn!(upstream = %server, "left out of an aggregated {field} list: {why}");
                    unavailable.push(server);
                    continue;
                }
            };
            answered += 1;
            let listed: Vec<Value> = result.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
            self.learn(server, field, &listed);
            items.extend(listed);
            if let Some(cursor) = result.get("nextCursor").and_then(Value::as_str) {
                next.push((server.clone(), cursor.to_owned()));
            }
        }
        if answered == 0 && !targets.is_empty() {
            let text = format!("no upstream MCP server answered ({} left out)", unavailable.join(", "));
            return jsonrpc::error_response(StatusCode::BAD_GATEWAY, Some(id), jsonrpc::UPSTREAM_ERROR, &text, None);
        }
        let mut result = Map::new();
        result.insert(field.to_owned(), Value::Array(items));
        if !next.is_empty() {
            result.insert("nextCursor".into(), json!(encode_cursor(&next)));
        }
        if !unavailable.is_empty() {
            result.insert("_meta".into(), json!({"tollgate/unavailable": unavailable}));
        }
        jsonrpc::json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }

    /// Remembers which upstream listed which resource URIs and URI templates.
    fn learn(&self, server: &str, field: &str, listed: &[Value]) {
        let texts = |key: &str| -> Vec<String> {
            listed
                .iter()
                .filter_map(|item| item.get(key).and_then(Value::as_str).map(str::to_owned))
                .collect()
        };
        match field {
            "resources" => self.agg().remember(server, &texts("uri"), &[]),
            "resourceTemplates" => self.agg().remember(server, &[], &texts("uriTemplate")),
            _ => {}
        }
    }

    /// The upstream a URI belongs to; when this edge has not seen it listed, the session's
    /// resource lists and templates are read (a bounded number of pages) to find it.
    async fn route(&self, session: &AggregateSession, uri: &str) -> Option<String> {
        if let Some(server) = self.agg().route(uri, session) {
            return Some(server);
        }
        futures_util::future::join_all(session.upstreams.iter().map(|(server, upstream_session)| async move {
            for (method, field) in [
                ("resources/templates/list", "resourceTemplates"),
                ("resources/list", "resources"),
            ] {
                let mut cursor: Option<String> = None;
                for page in 0..MAX_LOOKUP_PAGES {
                    let id = json!(format!("tollgate-route-{page}"));
                    let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method});
                    if let Some(c) = &cursor {
                        message["params"] = json!({"cursor": c});
                    }
                    let asked = self
                        .ask_as(server, upstream_session.as_deref(), &message, &id, false)
                        .await;
                    let Ok((answer, _)) = asked else {
                        break;
                    };
                    let listed = answer.pointer(&format!("/result/{field}")).and_then(Value::as_array);
                    self.learn(server, field, listed.map_or(&[][..], Vec::as_slice));
                    cursor = answer
                        .pointer("/result/nextCursor")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    if cursor.is_none() {
                        break;
                    }
                }
            }
        }))
        .await;
        self.agg().route(uri, session)
    }

    /// An exchange with one upstream of the session.
    fn exchange_for<'h>(&'h self, server: &str, headers: &'h HeaderMap) -> Option<Exchange<'h>> {
        Some(Exchange {
            gw: self.gw,
            upstream: self.upstream(server)?,
            caller: self.caller,
            headers,
            aggregate: Some(self.agg().prefix_of(server)),
        })
    }

    /// `tools/call` and `prompts/get`: routed by prefix, forwarded with the upstream's name.
    async fn call(&self, session: &AggregateSession, kind: SubjectKind, message: &Value, id: &Value) -> Response {
        let what = if kind == SubjectKind::Tool { "tool" } else { "prompt" };
        let name = message
            .pointer("/params/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let routed = self
            .agg()
            .split(name)
            .filter(|(server, _)| session.session_of(server).is_some());
        let Some((server, inner)) = routed else {
            let text = format!(
                "unknown {what} \"{}\": on /mcp, {what}s are named {{server}}{}{{name}}, as the list shows them",
                jsonrpc::printable(name, 128),
                self.agg().separator
            );
            return jsonrpc::json_response(
                StatusCode::OK,
                &jsonrpc::error_body(Some(id), jsonrpc::INVALID_PARAMS, &text, None),
            );
        };
        let mut rewritten = message.clone();
        rewritten["params"]["name"] = json!(inner);
        let headers = self.headers_for(session.session_of(server).flatten());
        let Some(exchange) = self.exchange_for(server, &headers) else {
            return unknown_method(id, "this upstream");
        };
        let response = calls::decide_and_forward(&exchange, kind, &rewritten, id, rewritten.get("params")).await;
        own_session(response)
    }

    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe`: routed by URI.
    async fn resource(&self, session: &AggregateSession, method: McpMethod, message: &Value, id: &Value) -> Response {
        let Some(uri) = message.pointer("/params/uri").and_then(Value::as_str) else {
            let body = jsonrpc::error_body(Some(id), jsonrpc::INVALID_PARAMS, "params.uri must be a string", None);
            return jsonrpc::json_response(StatusCode::OK, &body);
        };
        if let Err(e) = tollgate_api::check_resource_uri(uri) {
            let body = jsonrpc::error_body(
                Some(id),
                jsonrpc::INVALID_PARAMS,
                &format!("invalid resource URI: {e}"),
                None,
            );
            return jsonrpc::json_response(StatusCode::OK, &body);
        }
        let Some(server) = self.route(session, uri).await else {
            let text = "resource not found: no upstream of this session lists it";
            let body = jsonrpc::error_body(Some(id), RESOURCE_NOT_FOUND, text, Some(json!({"uri": uri})));
            return jsonrpc::json_response(StatusCode::OK, &body);
        };
        let headers = self.headers_for(session.session_of(&server).flatten());
        let Some(exchange) = self.exchange_for(&server, &headers) else {
            return unknown_method(id, "this upstream");
        };
        let response = if method == McpMethod::ResourcesRead {
            calls::decide_and_forward(&exchange, SubjectKind::Resource, message, id, message.get("params")).await
        } else {
            exchange.forward(message, Some(id)).await
        };
        own_session(response)
    }

    /// `completion/complete`: routed by its reference (a prompt by prefix, a resource
    /// template by URI).
    async fn complete(&self, session: &AggregateSession, message: &Value, id: &Value) -> Response {
        let reference = message.pointer("/params/ref");
        let kind = reference.and_then(|r| r.get("type")).and_then(Value::as_str);
        let mut rewritten = message.clone();
        let server = match kind {
            Some("ref/prompt") => {
                let name = reference
                    .and_then(|r| r.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match self.agg().split(name) {
                    Some((server, inner)) => {
                        rewritten["params"]["ref"]["name"] = json!(inner);
                        Some(server.to_owned())
                    }
                    None => None,
                }
            }
            Some("ref/resource") => {
                let uri = reference
                    .and_then(|r| r.get("uri"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.route(session, uri).await
            }
            _ => None,
        };
        let Some(server) = server.filter(|s| session.session_of(s).is_some()) else {
            let body = jsonrpc::error_body(
                Some(id),
                jsonrpc::INVALID_PARAMS,
                "completion/complete: params.ref names no prompt or resource of this session",
                None,
            );
            return jsonrpc::json_response(StatusCode::OK, &body);
        };
        let headers = self.headers_for(session.session_of(&server).flatten());
        match self.exchange_for(&server, &headers) {
            Some(exchange) => own_session(exchange.forward(&rewritten, Some(id)).await),
            None => unknown_method(id, "this upstream"),
        }
    }

    /// Sends `message` to every upstream of the session (notifications, `logging/setLevel`),
    /// waiting for each; the upstreams' answers are not passed on.
    async fn broadcast(&self, session: &AggregateSession, message: &Value) -> usize {
        let sent =
            futures_util::future::join_all(session.upstreams.iter().map(|(server, upstream_session)| async move {
                let headers = self.headers_for(upstream_session.as_deref());
                let exchange = self.exchange_for(server, &headers)?;
                match exchange.send(message, None).await {
                    Ok(response) if response.status().is_success() => {
                        // Read (and drop) the answer, so the connection can be reused.
                        let _ = tokio::time::timeout(
                            self.agg().fanout_timeout,
                            Limited::new(response.into_body(), self.gw.settings.max_upstream_message_bytes).collect(),
                        )
                        .await;
                        Some(())
                    }
                    _ => None,
                }
            }))
            .await;
        sent.into_iter().flatten().count()
    }

    /// The client's answer to a request an upstream made: back to that upstream, with the
    /// upstream's own id.
    async fn answer_to_upstream(&self, session: &AggregateSession, value: &Value) -> Response {
        let routed = value.get("id").and_then(unmark).and_then(|(prefix, original)| {
            let server = self.agg().prefixes.iter().find(|(p, _)| &**p == prefix)?.1.clone();
            session.session_of(&server).is_some().then_some((server, original))
        });
        let Some((server, original)) = routed else {
            return bad_request(
                StatusCode::BAD_REQUEST,
                "this response answers no request an upstream of this session made",
            );
        };
        let mut answer = value.clone();
        answer["id"] = original;
        let headers = self.headers_for(session.session_of(&server).flatten());
        match self.exchange_for(&server, &headers) {
            Some(exchange) => own_session(exchange.forward(&answer, None).await),
            None => bad_request(StatusCode::BAD_REQUEST, "unknown upstream"),
        }
    }

    /// A client's notification: `notifications/cancelled` of a request an upstream made goes
    /// to that upstream; everything else to every upstream of the session.
    async fn notification(&self, session: &AggregateSession, value: &Value) -> Response {
        if let Some((prefix, original)) = value.pointer("/params/requestId").and_then(unmark)
            && let Some((_, server)) = self.agg().prefixes.iter().find(|(p, _)| &**p == prefix)
        {
            let mut message = value.clone();
            message["params"]["requestId"] = original;
            let headers = self.headers_for(session.session_of(server).flatten());
            if let Some(exchange) = self.exchange_for(server, &headers) {
                return own_session(exchange.forward(&message, None).await);
            }
        }
        self.broadcast(session, value).await;
        StatusCode::ACCEPTED.into_response()
    }
}

/// The answer of the aggregated `initialize`: the gateway's own server info, and what the
/// upstreams can do together.
fn merged_initialize(results: &[(&String, Value)], requested: &str, agg: &Aggregation) -> Value {
    let mut capabilities = Map::new();
    for (_, result) in results {
        let Some(offered) = result.get("capabilities").and_then(Value::as_object) else {
            continue;
        };
        for name in ["tools", "prompts", "resources", "logging", "completions"] {
            let Some(cap) = offered.get(name) else { continue };
            let merged = capabilities.entry(name).or_insert_with(|| json!({}));
            for flag in ["listChanged", "subscribe"] {
                if cap.get(flag) == Some(&Value::Bool(true)) {
                    merged[flag] = json!(true);
                }
            }
        }
    }
    // The oldest revision any upstream answered (they all see the client's later
    // MCP-Protocol-Version header), the client's when none did.
    let version = results
        .iter()
        .filter_map(|(_, r)| r.get("protocolVersion").and_then(Value::as_str))
        .min()
        .unwrap_or(requested)
        .to_owned();
    let instructions: Vec<String> = results
        .iter()
        .filter_map(|(server, r)| {
            let text = r.get("instructions")?.as_str()?;
            Some(format!(
                "[{}{}*] {}",
                agg.prefix_of(server),
                agg.separator,
                jsonrpc::printable(text, 2000)
            ))
        })
        .collect();
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")},
    });
    if !instructions.is_empty() {
        result["instructions"] = json!(instructions.join("\n"));
    }
    result
}

fn encode_cursor(parts: &[(String, String)]) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(parts).unwrap_or_default())
}

fn decode_cursor(cursor: &str) -> Option<Vec<(String, String)>> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()
}

/// An upstream's answer as the agent of `/mcp` sees it: never with the upstream's own
/// session id (the agent's session is the sealed one).
fn own_session(mut response: Response) -> Response {
    response.headers_mut().remove("mcp-session-id");
    response
}

fn unknown_method(id: &Value, name: &str) -> Response {
    let text = format!(
        "method \"{}\" is not available on the aggregated endpoint /mcp",
        jsonrpc::printable(name, 128)
    );
    jsonrpc::json_response(
        StatusCode::OK,
        &jsonrpc::error_body(Some(id), jsonrpc::METHOD_NOT_FOUND, &text, None),
    )
}

/// Reads an SSE answer until the event that answers `id`; other events (progress,
/// notifications) of a list's or initialize's stream are not passed on.
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
        loop {
            match splitter.next_event() {
                Ok(Some(event)) => {
                    let Some(data) = sse::data(&event) else { continue };
                    if data.trim().is_empty() {
                        continue;
                    }
                    let message = jsonrpc::parse_strict(data.as_bytes())
                        .map_err(|e| format!("an event that is not JSON ({e})"))?;
                    if message.get("id") == Some(id) && message.get("method").is_none() {
                        return Ok(message);
                    }
                }
                Ok(None) => break,
                Err(sse::EventTooLarge(max)) => return Err(format!("an event larger than {max} bytes")),
            }
        }
    }
}

pub async fn post(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let value = match read_json(&headers, body, &gw.settings, MAX_SEALED_SESSION_BYTES).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    if value.is_array() {
        return bad_request(
            StatusCode::BAD_REQUEST,
            "JSON-RPC batches are not supported on the aggregated endpoint /mcp: send one message per POST",
        );
    }
    let message = match classify(&value) {
        Ok(m) => m,
        Err(response) => return response,
    };
    let span = spans::request_span(&message, "", &caller, &headers);
    let _in_flight = GaugeUnit::hold(&metrics().requests_in_flight);
    let agg = Agg::new(&gw, &caller, &headers);
    async {
        if let Message::Request {
            id,
            method: McpMethod::Initialize,
            ..
        } = message
        {
            return agg.initialize(&value, id).await;
        }
        let session = match agg.session() {
            Ok(s) => s,
            Err(response) => return response,
        };
        match message {
            Message::Request { id, method, name, .. } => match method {
                McpMethod::Ping => {
                    jsonrpc::json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": {}}))
                }
                McpMethod::ToolsList => agg.list(&session, "tools", &value, id).await,
                McpMethod::PromptsList => agg.list(&session, "prompts", &value, id).await,
                McpMethod::ResourcesList => agg.list(&session, "resources", &value, id).await,
                McpMethod::ResourcesTemplatesList => agg.list(&session, "resourceTemplates", &value, id).await,
                McpMethod::ToolsCall => agg.call(&session, SubjectKind::Tool, &value, id).await,
                McpMethod::PromptsGet => agg.call(&session, SubjectKind::Prompt, &value, id).await,
                McpMethod::ResourcesRead | McpMethod::ResourcesSubscribe | McpMethod::ResourcesUnsubscribe => {
                    agg.resource(&session, method, &value, id).await
                }
                McpMethod::CompletionComplete => agg.complete(&session, &value, id).await,
                McpMethod::LoggingSetLevel => {
                    agg.broadcast(&session, &value).await;
                    jsonrpc::json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": {}}))
                }
                _ => unknown_method(id, name),
            },
            Message::Notification { .. } => agg.notification(&session, &value).await,
            Message::Response => agg.answer_to_upstream(&session, &value).await,
        }
    }
    .instrument(span)
    .await
}

/// The session's server-to-client stream: every upstream's GET stream, merged, each through
/// its list guard (requests marked with the upstream's prefix). Upstreams without one are
/// left out; without any, 405.
pub async fn get(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    if !accepts_event_stream(&headers) {
        return bad_request(
            StatusCode::NOT_ACCEPTABLE,
            "GET /mcp opens an event stream: Accept must include text/event-stream",
        );
    }
    let agg = Agg::new(&gw, &caller, &headers);
    let session = match agg.session() {
        Ok(s) => s,
        Err(response) => return response,
    };
    let opened = futures_util::future::join_all(session.upstreams.iter().map(|(server, upstream_session)| {
        let (agg, gw, caller) = (&agg, &gw, &caller);
        async move {
            let upstream = agg.upstream(server)?;
            let headers = agg.headers_for(upstream_session.as_deref());
            let response = gw
                .forward(upstream, Method::GET, &headers, Body::empty(), None)
                .await
                .ok()?;
            if !response.status().is_success() || !content_type_is(response.headers(), "text/event-stream") {
                return None;
            }
            let filter = ListFilter {
                gw: gw.clone(),
                server: server.clone(),
                caller: caller.clone(),
                aggregate: Some(agg.agg().prefix_of(server)),
            };
            Some(filter.event_stream(None, response.into_body()).into_data_stream())
        }
    }))
    .await;
    let streams: Vec<_> = opened.into_iter().flatten().collect();
    if streams.is_empty() {
        return jsonrpc::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            jsonrpc::INVALID_REQUEST,
            "no upstream of this session offers a server-to-client stream",
            None,
        );
    }
    let merged = futures_util::stream::select_all(streams);
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (
        StatusCode::OK,
        response_headers,
        Body::from_stream(merged.map(|chunk| chunk.map_err(std::io::Error::other))),
    )
        .into_response()
}

/// Ends the session on every upstream that has one.
pub async fn delete(
    State(gw): State<Arc<Gateway>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Response {
    let agg = Agg::new(&gw, &caller, &headers);
    let session = match agg.session() {
        Ok(s) => s,
        Err(response) => return response,
    };
    futures_util::future::join_all(session.upstreams.iter().filter_map(|(server, upstream_session)| {
        let upstream = agg.upstream(server)?;
        let headers = agg.headers_for(Some(upstream_session.as_deref()?));
        let gw = &gw;
        Some(async move {
            let _ = gw
                .forward(upstream, Method::DELETE, &headers, Body::empty(), None)
                .await;
        })
    }))
    .await;
    StatusCode::OK.into_response()
}
