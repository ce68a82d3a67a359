//! `subscriptions/listen` on `/mcp`: fanned out to every upstream of the session, each asked
//! for the flags the client asked for and the resource URIs routed to it (among the URIs the
//! caller may read there), and the streams merged behind one acknowledgment of the gateway's
//! ([`crate::listen::Fanned`]).

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::Agg;
use crate::guard::too_many_streams;
use crate::jsonrpc;
use crate::listen::{Fanned, Part, Requested, SUBSCRIPTION_ID, readable};
use crate::resolve::invalid_params;
use crate::sealed::AggregateSession;

impl Agg<'_> {
    pub(super) async fn listen(&self, session: &AggregateSession, message: Value, id: &Value) -> Response {
        let requested = match Requested::of(&message, self.gw.settings.max_subscription_uris) {
            Ok(r) => r,
            Err(text) => return invalid_params(id, &text),
        };
        let slot = match self.gw.streams.take(&self.caller.grant) {
            Ok(slot) => slot,
            Err(full) => return too_many_streams(self.caller, full),
        };
        let routed = match self.route_subscriptions(session, &requested.uris).await {
            Ok(routed) => routed,
            Err(text) => {
                let body = jsonrpc::error_body(Some(id), jsonrpc::INTERNAL_ERROR, &text, None);
                return jsonrpc::json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
            }
        };
        let timeout = self.agg().fanout_timeout;
        let opened = futures_util::future::join_all(session.upstreams.iter().map(|(server, upstream_session)| {
            let mut own = message.clone();
            let uris = routed.get(server).cloned().unwrap_or_default();
            let part = Requested {
                flags: requested.flags.clone(),
                uris: uris.clone(),
            };
            part.put_into(&mut own);
            async move {
                let headers = self.headers_for(upstream_session.as_deref());
                let Some(exchange) = self.exchange_for(session, server, &headers) else {
                    return (server, Err("not reached by this caller".to_owned()));
                };
                let opening = async {
                    let mut part = Part::open(&exchange, &own, id, uris).await?;
                    let honoured = part.acknowledged().await?;
                    Ok((part, honoured))
                };
                match tokio::time::timeout(timeout, opening).await {
                    Ok(result) => (server, result),
                    Err(_) => (
                        server,
                        Err("no acknowledgment within edge.aggregate.fanout_timeout_ms".into()),
                    ),
                }
            }
        }))
        .await;
        let mut parts = Vec::new();
        let mut honoured = Vec::new();
        let mut unavailable = Vec::new();
        for (server, result) in opened {
            match result {
                Ok((part, filter)) => {
                    parts.push(part);
                    honoured.push((server, filter));
                }
                Err(why) => {
                    tracing::info!(upstream = %server, "left out of subscriptions/listen on /mcp: {why}");
                    unavailable.push(json!({"server": server, "reason": why}));
                }
            }
        }
        if parts.is_empty() {
            let text = "no upstream of this session accepted subscriptions/listen (see data.unavailable)";
            let body = jsonrpc::error_body(
                Some(id),
                jsonrpc::UPSTREAM_ERROR,
                text,
                Some(json!({"unavailable": unavailable})),
            );
            return jsonrpc::json_response(StatusCode::BAD_GATEWAY, &body);
        }
        let mut meta = Map::new();
        meta.insert(SUBSCRIPTION_ID.into(), id.clone());
        if !unavailable.is_empty() {
            meta.insert("tollgate/unavailable".into(), Value::Array(unavailable));
        }
        let acknowledgment = json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"_meta": meta, "notifications": merged(&requested, &routed, &honoured)},
        });
        Fanned {
            id: id.clone(),
            acknowledgment,
            parts,
        }
        .into_response(self.gw, slot)
    }

    /// Each URI the caller may read, routed to the upstream of the session that lists it
    /// (URIs no upstream could serve to this caller are left out).
    async fn route_subscriptions(
        &self,
        session: &AggregateSession,
        uris: &[String],
    ) -> Result<HashMap<String, Vec<String>>, String> {
        let mut routed: HashMap<String, Vec<String>> = HashMap::new();
        if uris.is_empty() {
            return Ok(routed);
        }
        let mut readable_on: Vec<(String, Vec<String>)> = Vec::new();
        for (server, upstream_session) in &session.upstreams {
            let headers = self.headers_for(upstream_session.as_deref());
            let Some(exchange) = self.exchange_for(session, server, &headers) else {
                continue;
            };
            let seen = readable(&exchange.list_filter(), uris)
                .await
                .map_err(|refused| refused.message)?;
            readable_on.push((server.clone(), seen));
        }
        for uri in uris {
            let candidates: Vec<String> = readable_on
                .iter()
                .filter(|(_, seen)| seen.contains(uri))
                .map(|(server, _)| server.clone())
                .collect();
            if candidates.is_empty() {
                continue;
            }
            if let Some(server) = self.route(session, uri, &candidates).await {
                routed.entry(server).or_default().push(uri.clone());
            }
        }
        Ok(routed)
    }
}

/// The filter the gateway honours: a flag any upstream honours, and the URIs each upstream
/// honours of those routed to it.
fn merged(requested: &Requested, routed: &HashMap<String, Vec<String>>, honoured: &[(&String, Value)]) -> Value {
    let mut filter = Map::new();
    for flag in &requested.flags {
        if honoured.iter().any(|(_, h)| h.get(*flag) == Some(&Value::Bool(true))) {
            filter.insert((*flag).to_owned(), Value::Bool(true));
        }
    }
    let mut uris = Vec::new();
    for (server, h) in honoured {
        let asked = routed.get(*server).map(Vec::as_slice).unwrap_or_default();
        let given = h.get("resourceSubscriptions").and_then(Value::as_array);
        for uri in given.into_iter().flatten().filter_map(Value::as_str) {
            if asked.iter().any(|a| a == uri) {
                uris.push(Value::from(uri));
            }
        }
    }
    if !uris.is_empty() {
        filter.insert("resourceSubscriptions".into(), Value::Array(uris));
    }
    Value::Object(filter)
}
