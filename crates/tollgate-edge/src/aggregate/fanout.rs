//! Requests fanned out to every upstream of a session: `initialize`, the lists (merged,
//! with sealed cursors), broadcasts (notifications, `logging/setLevel`), and the client's
//! answers and cancellations routed back to the one upstream they belong to.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value, json};

use super::{Agg, Aggregation, MAX_SEALED_SESSION_BYTES};
use crate::exchange::Exchange;
use crate::jsonrpc;
use crate::marks::unmark;
use crate::request::{bad_request, content_type_is};
use crate::resolve::invalid_params;
use crate::sealed::AggregateSession;
use crate::sse;

/// Longest upstream session id kept in a sealed session.
const MAX_UPSTREAM_SESSION_BYTES: usize = 256;
/// Longest upstream cursor kept in a merged page's cursor.
const MAX_UPSTREAM_CURSOR_BYTES: usize = 1024;
/// Longest merged cursor accepted (it holds at most one cursor per upstream).
const MAX_SEALED_CURSOR_BYTES: usize = 64 * 1024;

/// An upstream's part of a fanned-out request, as it failed.
pub(super) enum PartFailed {
    /// The upstream does not have the method (`-32601`): nothing to warn about.
    NotOffered,
    Failed(String),
}

impl Agg<'_> {
    /// Sends `message` to one upstream and reads its answer to `id` (JSON, or the matching
    /// event of an SSE stream), within the fan-out timeout; returns the answer, filtered by
    /// the upstream's list filter (names prefixed), and the response headers.
    pub(super) async fn ask(
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
    pub(super) async fn ask_as(
        &self,
        server: &str,
        session: Option<&str>,
        message: &Value,
        id: &Value,
        filtered: bool,
    ) -> Result<(Value, HeaderMap), PartFailed> {
        let upstream = self
            .gw
            .reach(self.caller, server)
            .map_err(|_| PartFailed::Failed("not reached by this caller".into()))?;
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
                sse::answer_in(body, id, limit).await?
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

    /// `server/discover` (MCP 2026-07-28) on `/mcp`, answered by the gateway: the revisions
    /// it speaks, what the caller's upstreams can do together (each asked the same), the
    /// gateway's own server info. Upstreams that do not answer are left out and named.
    pub(super) async fn discover(&self, message: &Value, id: &Value) -> Response {
        let servers = self.reachable();
        let parts = futures_util::future::join_all(
            servers
                .iter()
                .map(|server| async move { (server, self.ask(server, None, message, id).await) }),
        )
        .await;
        let mut results: Vec<(&String, Value)> = Vec::new();
        let mut unavailable: Vec<&str> = Vec::new();
        for (server, part) in parts {
            match part {
                Ok((mut answer, _)) => {
                    results.push((server, answer.get_mut("result").map(Value::take).unwrap_or_default()))
                }
                Err(PartFailed::NotOffered) => unavailable.push(server),
                Err(PartFailed::Failed(why)) => {
                    tracing::warn!(upstream = %server, "left out of server/discover on /mcp: {why}");
                    unavailable.push(server);
                }
            }
        }
        let merged = merged_initialize(&results, crate::protocol::MODERN_VERSIONS[0], self.agg());
        let supported: Vec<&str> = crate::protocol::MODERN_VERSIONS
            .iter()
            .chain(crate::protocol::SESSION_VERSIONS.iter())
            .copied()
            .collect();
        let mut result = json!({
            "supportedVersions": supported,
            "capabilities": merged["capabilities"],
            "_meta": {"io.modelcontextprotocol/serverInfo": merged["serverInfo"]},
            "ttlMs": 0,
            "cacheScope": "private",
            "resultType": "complete",
        });
        if let Some(instructions) = merged.get("instructions") {
            result["instructions"] = instructions.clone();
        }
        if !unavailable.is_empty() {
            result["_meta"]["tollgate/unavailable"] = json!(unavailable);
        }
        jsonrpc::json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }

    pub(super) async fn initialize(&self, message: &Value, id: &Value) -> Response {
        let servers = self.reachable();
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
    pub(super) async fn list(&self, session: &AggregateSession, field: &str, message: &Value, id: &Value) -> Response {
        let targets: Vec<(String, Option<String>)> = match message.pointer("/params/cursor") {
            None | Some(Value::Null) => session.upstreams.iter().map(|(s, _)| (s.clone(), None)).collect(),
            Some(cursor) => match self.open_cursor(session, cursor) {
                Some(parts) => parts.into_iter().map(|(s, c)| (s, Some(c))).collect(),
                None => {
                    return invalid_params(
                        id,
                        "invalid cursor (cursors are good for the grant and session that got them)",
                    );
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
            self.door.routes.learn(server, field, &listed);
            items.extend(listed);
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(cursor) if cursor.len() <= MAX_UPSTREAM_CURSOR_BYTES => {
                    next.push((server.clone(), cursor.to_owned()))
                }
                Some(_) => {
                    tracing::warn!(upstream = %server, "its {field} list's cursor is longer than {MAX_UPSTREAM_CURSOR_BYTES} bytes: later pages of it are left out");
                    unavailable.push(server);
                }
                None => {}
            }
        }
        if answered == 0 && !targets.is_empty() {
            let text = format!("no upstream MCP server answered ({} left out)", unavailable.join(", "));
            return jsonrpc::error_response(StatusCode::BAD_GATEWAY, Some(id), jsonrpc::UPSTREAM_ERROR, &text, None);
        }
        let mut result = Map::new();
        result.insert(field.to_owned(), Value::Array(items));
        if self.stateless {
            // One caller's merged, filtered view: complete, and private to it.
            result.insert("resultType".into(), json!("complete"));
            result.insert("cacheScope".into(), json!("private"));
            result.insert("ttlMs".into(), json!(0));
        }
        if !next.is_empty() {
            match self.agg().sealer.seal_cursor(&self.caller.grant, &next) {
                Some(cursor) => {
                    result.insert("nextCursor".into(), json!(cursor));
                }
                None => tracing::error!("could not seal a list cursor; the list ends at this page"),
            }
        }
        if !unavailable.is_empty() {
            result.insert("_meta".into(), json!({"tollgate/unavailable": unavailable}));
        }
        jsonrpc::json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }

    /// The parts of a merged page's cursor: sealed for this grant, at most one per upstream,
    /// each an upstream of this session.
    fn open_cursor(&self, session: &AggregateSession, cursor: &Value) -> Option<Vec<(String, String)>> {
        let cursor = cursor.as_str().filter(|c| c.len() <= MAX_SEALED_CURSOR_BYTES)?;
        let parts = self.agg().sealer.open_cursor(&self.caller.grant, cursor)?;
        let mut seen: Vec<&str> = Vec::with_capacity(parts.len());
        for (server, _) in &parts {
            if session.session_of(server).is_none() || seen.contains(&server.as_str()) {
                return None;
            }
            seen.push(server);
        }
        Some(parts)
    }

    /// Sends `message` to every upstream of the session (notifications, `logging/setLevel`),
    /// waiting for each; the upstreams' answers are not passed on.
    pub(super) async fn broadcast(&self, session: &AggregateSession, message: &Value) -> usize {
        let sent =
            futures_util::future::join_all(session.upstreams.iter().map(|(server, upstream_session)| async move {
                let headers = self.headers_for(upstream_session.as_deref());
                let exchange = self.exchange_for(session, server, &headers)?;
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
    pub(super) async fn answer_to_upstream(&self, session: &AggregateSession, value: &Value) -> Response {
        let routed = value.get("id").and_then(unmark).and_then(|(prefix, original)| {
            let server = self.agg().server_of(prefix)?;
            session
                .session_of(server)
                .is_some()
                .then_some((server.to_owned(), original))
        });
        let Some((server, original)) = routed else {
            return bad_request(
                StatusCode::BAD_REQUEST,
                "this response answers no request an upstream of this session made",
            );
        };
        let mut answer = value.clone();
        answer["id"] = original;
        self.forward_to(session, &server, &answer, None).await
    }

    /// A client's notification: `notifications/cancelled` of a request an upstream made goes
    /// to that upstream; everything else to every upstream of the session.
    pub(super) async fn notification(&self, session: &AggregateSession, value: &Value) -> Response {
        // Only to an upstream of this session (which holds only upstreams the caller
        // reaches): a marked id naming any other goes nowhere special.
        if let Some((prefix, original)) = value.pointer("/params/requestId").and_then(unmark)
            && let Some(server) = self.agg().server_of(prefix)
            && session.session_of(server).is_some()
        {
            let mut message = value.clone();
            message["params"]["requestId"] = original;
            return self.forward_to(session, server, &message, None).await;
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
    // Tasks (2025-11-25): task-augmented tool calls and cancelling, where an upstream offers
    // them; their ids are the caller's handles (see `tasks`). Listing is not offered: the
    // gateway's `tasks/list` lists nothing.
    for (_, result) in results {
        let Some(tasks) = result.pointer("/capabilities/tasks") else {
            continue;
        };
        let merged = capabilities.entry("tasks").or_insert_with(|| json!({}));
        if tasks.pointer("/requests/tools/call").is_some() {
            merged["requests"] = json!({"tools": {"call": {}}});
        }
        if tasks.get("cancel").is_some() {
            merged["cancel"] = json!({});
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
