//! Resources on `/mcp`: a URI names no upstream, so a read (subscribe, completion) is routed
//! to the upstream that listed it, and only among the session's upstreams that could serve
//! it to this caller at all (the policy's list answer for that one URI). A URI hidden from
//! the caller and a URI nobody lists get the same "not found": the answer tells nothing of
//! resources the caller may not read.
//!
//! Routes are learnt from the lists upstreams send. A URI no candidate is known to list makes
//! the edge read those candidates' resource lists, each at most once per
//! `edge.aggregate.lookup_interval_ms` (one lookup at a time per upstream, a bounded number
//! of pages), whatever is asked meanwhile: unknown URIs cannot multiply upstream requests.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tollgate_api::proto::SubjectKind;

use super::{Agg, Aggregation, own_session, unknown_method};
use crate::calls;
use crate::jsonrpc;
use crate::method::McpMethod;
use crate::resolve::{Call, invalid_params};
use crate::sealed::AggregateSession;

/// Resource URIs (and URI templates) one edge remembers the upstream of.
const MAX_ROUTES: usize = 10_000;
/// Pages of each resource list read per upstream when looking for an unknown URI.
const MAX_LOOKUP_PAGES: usize = 10;
/// MCP's "resource not found".
const RESOURCE_NOT_FOUND: i64 = -32002;

/// Which upstream listed a resource URI or URI template, and when each upstream's lists were
/// last read whole.
pub(crate) struct Routes {
    known: RwLock<Known>,
    /// Per upstream: held while its lists are read; the time of its last lookup.
    lookups: HashMap<String, tokio::sync::Mutex<Option<Instant>>>,
    /// Upstreams' order, for two listing one URI.
    order: Vec<String>,
}

#[derive(Default)]
struct Known {
    exact: HashMap<String, String>,
    /// (literal start of a URI template, upstream), longest first.
    templates: Vec<(String, String)>,
}

impl Routes {
    pub(super) fn new(agg: &Aggregation) -> Routes {
        Routes {
            known: RwLock::default(),
            lookups: agg
                .prefixes
                .iter()
                .map(|(_, server)| (server.clone(), tokio::sync::Mutex::new(None)))
                .collect(),
            order: agg.prefixes.iter().map(|(_, s)| s.clone()).collect(),
        }
    }

    /// Remembers which upstream listed which resource URIs and URI templates (`field` is
    /// the list's field: `resources` or `resourceTemplates`).
    pub(super) fn learn(&self, server: &str, field: &str, listed: &[Value]) {
        let texts = |key: &str| -> Vec<String> {
            listed
                .iter()
                .filter_map(|item| item.get(key).and_then(Value::as_str).map(str::to_owned))
                .collect()
        };
        match field {
            "resources" => self.remember(server, &texts("uri"), &[]),
            "resourceTemplates" => self.remember(server, &[], &texts("uriTemplate")),
            _ => {}
        }
    }

    fn remember(&self, server: &str, exact: &[String], templates: &[String]) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if known.exact.len() + exact.len() > MAX_ROUTES {
            known.exact.clear();
        }
        // Two upstreams listing one URI: the first in configuration order keeps it.
        let position = |s: &str| self.order.iter().position(|name| name == s);
        let claim = |known: &mut Known, key: &String| {
            let keep = known
                .exact
                .get(key)
                .is_some_and(|held| held != server && position(held) < position(server));
            if !keep {
                known.exact.insert(key.clone(), server.to_owned());
            }
        };
        for uri in exact {
            claim(&mut known, uri);
        }
        for template in templates {
            claim(&mut known, template);
            let literal = template.split('{').next().unwrap_or_default().to_owned();
            if literal.is_empty() || known.templates.iter().any(|(l, s)| *l == literal && s == server) {
                continue;
            }
            if known.templates.len() >= MAX_ROUTES {
                known.templates.clear();
            }
            known.templates.push((literal, server.to_owned()));
            known.templates.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        }
    }

    /// The known upstream of `uri` among `candidates`.
    fn known(&self, uri: &str, candidates: &[String]) -> Option<String> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let candidate = |s: &String| candidates.contains(s);
        known.exact.get(uri).filter(|s| candidate(s)).cloned().or_else(|| {
            known
                .templates
                .iter()
                .find(|(literal, server)| uri.starts_with(literal.as_str()) && candidate(server))
                .map(|(_, server)| server.clone())
        })
    }
}

impl Agg<'_> {
    /// The session's upstreams that could serve `uri` to this caller (the policy's answer
    /// for a list holding just that URI); `Err` when the decision service cannot say.
    async fn candidates(&self, session: &AggregateSession, uri: &str) -> Result<Vec<String>, String> {
        let mut candidates = Vec::new();
        for (server, upstream_session) in &session.upstreams {
            let headers = self.headers_for(upstream_session.as_deref());
            let Some(exchange) = self.exchange_for(session, server, &headers) else {
                continue;
            };
            let seen = exchange
                .list_filter()
                .sees(SubjectKind::Resource, uri)
                .await
                .map_err(|refused| refused.message)?;
            if seen {
                candidates.push(server.clone());
            }
        }
        Ok(candidates)
    }

    /// The upstream among `candidates` that lists `uri`; looks the candidates' lists up when
    /// no route is known and their last lookup is older than the lookup interval.
    pub(super) async fn route(&self, session: &AggregateSession, uri: &str, candidates: &[String]) -> Option<String> {
        let routes = &self.door.routes;
        if let Some(server) = routes.known(uri, candidates) {
            return Some(server);
        }
        let interval = self.agg().lookup_interval;
        futures_util::future::join_all(candidates.iter().map(|server| async move {
            let lock = routes.lookups.get(server)?;
            let mut last = lock.lock().await;
            if last.is_some_and(|at| at.elapsed() < interval)
                || routes.known(uri, std::slice::from_ref(server)).is_some()
            {
                return Some(());
            }
            *last = Some(Instant::now());
            let upstream_session = session.session_of(server).flatten();
            self.look_up(server, upstream_session).await;
            Some(())
        }))
        .await;
        routes.known(uri, candidates)
    }

    /// Reads one upstream's resource templates and resources (a bounded number of pages),
    /// learning their routes.
    async fn look_up(&self, server: &str, upstream_session: Option<&str>) {
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
                if self.stateless {
                    // Asked in the revision the session speaks: with its envelope (and so its
                    // routing headers), as any request of that revision.
                    message["params"]["_meta"] = crate::protocol::envelope();
                }
                let Ok((answer, _)) = self.ask_as(server, upstream_session, &message, &id, false).await else {
                    break;
                };
                let listed = answer.pointer(&format!("/result/{field}")).and_then(Value::as_array);
                self.door
                    .routes
                    .learn(server, field, listed.map_or(&[][..], Vec::as_slice));
                cursor = answer
                    .pointer("/result/nextCursor")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if cursor.is_none() {
                    break;
                }
            }
        }
    }

    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe`: routed by URI to an
    /// upstream that could serve it to this caller; a read is decided like on the upstream's
    /// own endpoint.
    pub(super) async fn resource(
        &self,
        session: &AggregateSession,
        method: McpMethod,
        message: Value,
        id: &Value,
    ) -> Response {
        let Some(uri) = message.pointer("/params/uri").and_then(Value::as_str) else {
            return invalid_params(id, "params.uri must be a string");
        };
        if let Err(e) = tollgate_api::check_resource_uri(uri) {
            return invalid_params(id, &format!("invalid resource URI: {e}"));
        }
        let candidates = match self.candidates(session, uri).await {
            Ok(c) => c,
            Err(text) => {
                let body = jsonrpc::error_body(Some(id), jsonrpc::INTERNAL_ERROR, &text, None);
                return jsonrpc::json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
            }
        };
        let Some(server) = self.route(session, uri, &candidates).await else {
            tracing::info!(
                grant = %self.caller.grant,
                uri = %jsonrpc::printable(uri, 256),
                "resource not found: no upstream of the session that could serve it to this grant lists it"
            );
            let text = "resource not found: no upstream of this session lists it";
            // MCP 2026-07-28 answers a missing resource with -32602; earlier revisions -32002.
            let code = if self.stateless {
                jsonrpc::INVALID_PARAMS
            } else {
                RESOURCE_NOT_FOUND
            };
            let body = jsonrpc::error_body(Some(id), code, text, Some(json!({"uri": uri})));
            return jsonrpc::json_response(StatusCode::OK, &body);
        };
        let headers = self.headers_for(session.session_of(&server).flatten());
        let Some(exchange) = self.exchange_for(session, &server, &headers) else {
            return unknown_method(id, "this upstream");
        };
        let response = if method == McpMethod::ResourcesRead {
            match Call::new(SubjectKind::Resource, message) {
                Ok(call) => calls::decide_and_forward(&exchange, call).await,
                Err(text) => invalid_params(id, &text),
            }
        } else {
            exchange.forward(&message, Some(id)).await
        };
        own_session(response)
    }

    /// `completion/complete`: routed by its reference (a prompt by prefix, a resource
    /// template by URI among the session's upstreams that could serve it to this caller).
    pub(super) async fn complete(&self, session: &AggregateSession, mut message: Value, id: &Value) -> Response {
        let reference = message.pointer("/params/ref");
        let kind = reference.and_then(|r| r.get("type")).and_then(Value::as_str);
        let text_of = |field: &str| {
            reference
                .and_then(|r| r.get(field))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let server = match kind {
            Some("ref/prompt") => {
                let name = text_of("name");
                match self.agg().split(&name) {
                    Some((server, inner)) => {
                        // Only a prompt the caller could see listed (the policy's answer and,
                        // with tool pinning, an approved definition), as on /mcp/{server}.
                        let headers = self.headers_for(session.session_of(server).flatten());
                        let seen = match self.exchange_for(session, server, &headers) {
                            Some(exchange) => exchange.list_filter().sees(SubjectKind::Prompt, inner).await,
                            None => Ok(false),
                        };
                        match seen {
                            Ok(true) => {
                                let server = server.to_owned();
                                message["params"]["ref"]["name"] = json!(inner);
                                Some(server)
                            }
                            Ok(false) => None,
                            Err(refused) => {
                                let body =
                                    jsonrpc::error_body(Some(id), jsonrpc::INTERNAL_ERROR, &refused.message, None);
                                return jsonrpc::json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
                            }
                        }
                    }
                    None => None,
                }
            }
            Some("ref/resource") => {
                // Among the upstreams that could serve the URI to this caller, as for reads: a
                // resource the policy hides is completed no more than one nobody lists.
                let uri = text_of("uri");
                let candidates = match self.candidates(session, &uri).await {
                    Ok(c) => c,
                    Err(text) => {
                        let body = jsonrpc::error_body(Some(id), jsonrpc::INTERNAL_ERROR, &text, None);
                        return jsonrpc::json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
                    }
                };
                self.route(session, &uri, &candidates).await
            }
            _ => None,
        };
        let Some(server) = server.filter(|s| session.session_of(s).is_some()) else {
            return invalid_params(
                id,
                "completion/complete: params.ref names no prompt or resource of this session",
            );
        };
        self.forward_to(session, &server, &message, Some(id)).await
    }
}
