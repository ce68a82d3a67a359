//! What every request of the edge shares: the settings, the upstreams, the decision
//! service, what the edge learnt from upstreams' lists, the per-grant quotas of long-lived
//! requests, and the one answer to "which upstreams does this caller reach" ([`Gateway::reach`]),
//! which every endpoint and method asks ([`crate::resolve`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use hyper::body::Incoming;
use serde_json::Value;
use tollgate_api::proto::{Tool, ToolAnnotations};
use tollgate_api::{Decider, DecisionError};
use tollgate_telemetry::metrics::metrics;

use crate::EdgeError;
use crate::auth::{Authenticator, Caller};
use crate::jsonrpc;
use crate::order::StreamOrder;
use crate::settings::{EdgeSettings, GrantSettings};
use crate::upstream::{Upstream, UpstreamError};
use crate::visible::VisibleCache;

/// Tools whose annotations one edge remembers per upstream.
const MAX_LEARNED_TOOLS: usize = 4096;
/// Grants whose long-lived requests are counted at once; beyond it, a new grant's are
/// refused until one ends (each entry is a few bytes and lives while a request does).
const MAX_COUNTED_GRANTS: usize = 100_000;

/// Why a caller does not reach an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unreached {
    /// No upstream of that name, or one outside the grant's `servers`: answered alike, so
    /// that a grant learns nothing of upstreams it may not use.
    Unknown,
    /// A token without the scopes `identity.required_scopes` asks for this upstream.
    MissingScopes {
        required: Vec<String>,
        missing: Vec<String>,
    },
}

/// What the edge does when it has no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WithoutDecision {
    /// `edge.fail_open`, and no replica could be reached: let it through unchecked.
    ForwardUnchecked,
    /// Everything else: fail closed.
    Refuse,
}

/// Only a real outage may fail open, and only with `edge.fail_open`: an error answer may
/// have been provoked by the caller. Logs what happens to `what`.
pub(crate) fn without_decision(settings: &EdgeSettings, error: &DecisionError, what: &str) -> WithoutDecision {
    if error.is_unavailable() && settings.fail_open {
        tracing::warn!("decision service unavailable, {what} goes through unchecked (edge.fail_open): {error}");
        WithoutDecision::ForwardUnchecked
    } else {
        tracing::error!("no decision, {what} is refused: {error}");
        WithoutDecision::Refuse
    }
}

/// Shared state of the MCP handlers.
pub struct Gateway {
    pub(crate) settings: EdgeSettings,
    pub(crate) upstreams: HashMap<String, Upstream>,
    pub(crate) decider: Arc<dyn Decider>,
    pub(crate) auth: Arc<Authenticator>,
    /// Grants limited to some upstreams (`[[grants]] servers`).
    grant_servers: HashMap<String, Vec<String>>,
    /// Tool annotations per upstream, learnt from the tools lists upstreams sent. Only
    /// upstreams are trusted for them, never agents; a tool present here was listed.
    annotations: RwLock<HashMap<String, HashMap<String, ToolAnnotations>>>,
    /// The `Mcp-Param-*` headers each tool declares (`x-mcp-header` in its input schema),
    /// per upstream, learnt from the same lists.
    param_headers: RwLock<HashMap<String, HashMap<String, Arc<crate::protocol::ParamHeaders>>>>,
    /// Seals `requestState` envelopes (the aggregated endpoint's keys: any edge that shares
    /// them opens them).
    pub(crate) sealer: crate::sealed::Sealer,
    /// `requestState` envelopes already used on this edge.
    pub(crate) used_envelopes: crate::sealed::UsedEnvelopes,
    /// Keeps each session's GET stream ahead of its calls on this edge.
    pub(crate) order: StreamOrder,
    /// Visible sets of lists, per grant and policy.
    pub(crate) visible: VisibleCache,
    /// Calls held for approval, per grant.
    pub(crate) held: GrantQuota,
    /// Server-to-client streams, per grant.
    pub(crate) streams: GrantQuota,
    /// Tool pinning: the definitions last seen, the lockfile.
    pub(crate) pins: crate::pins::EdgePins,
}

impl Gateway {
    pub(crate) fn new(
        settings: EdgeSettings,
        upstreams: HashMap<String, Upstream>,
        grants: &[GrantSettings],
        decider: Arc<dyn Decider>,
        auth: Arc<Authenticator>,
        pins: crate::pins::EdgePins,
    ) -> Result<Self, EdgeError> {
        let mut grant_servers = HashMap::new();
        for g in grants {
            let Some(servers) = &g.servers else { continue };
            if let Some(unknown) = servers.iter().find(|s| !upstreams.contains_key(*s)) {
                return Err(EdgeError::Config(format!(
                    "grant \"{}\": servers names \"{unknown}\", which is no [[upstreams]] entry",
                    g.name
                )));
            }
            grant_servers.insert(g.name.clone(), servers.clone());
        }
        Ok(Gateway {
            upstreams,
            decider,
            auth,
            grant_servers,
            annotations: RwLock::default(),
            param_headers: RwLock::default(),
            sealer: crate::sealed::Sealer::new(&settings.aggregate.session_keys)?,
            used_envelopes: Default::default(),
            order: StreamOrder::default(),
            visible: VisibleCache::new(Duration::from_millis(settings.list_cache_ms)),
            held: GrantQuota::new("edge.max_held_per_grant", settings.max_held_per_grant),
            streams: GrantQuota::new("edge.max_streams_per_grant", settings.max_streams_per_grant),
            pins,
            settings,
        })
    }

    /// The upstream `server` names, if `caller` reaches it: it exists, the grant's `servers`
    /// include it, and a token carries the scopes it requires. The only place this is
    /// decided.
    pub(crate) fn reach(&self, caller: &Caller, server: &str) -> Result<&Upstream, Unreached> {
        let upstream = self.upstreams.get(server).ok_or(Unreached::Unknown)?;
        if self
            .grant_servers
            .get(&caller.grant)
            .is_some_and(|allowed| !allowed.iter().any(|s| s == server))
        {
            return Err(Unreached::Unknown);
        }
        let required = self.required_scopes(server);
        if !caller.has_scopes(required) {
            let held = caller.scopes.as_deref().unwrap_or_default();
            return Err(Unreached::MissingScopes {
                required: required.to_vec(),
                missing: required.iter().filter(|s| !held.contains(s)).cloned().collect(),
            });
        }
        Ok(upstream)
    }

    /// The scopes a token needs for `server` (`identity.required_scopes`).
    pub(crate) fn required_scopes(&self, server: &str) -> &[String] {
        self.auth.required_scopes.get(server).map_or(&[], Vec::as_slice)
    }

    /// The names of the upstreams `caller` reaches, sorted (for messages).
    pub(crate) fn reachable_names(&self, caller: &Caller) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .upstreams
            .keys()
            .map(String::as_str)
            .filter(|s| self.reach(caller, s).is_ok())
            .collect();
        names.sort_unstable();
        names
    }

    /// Remembers the annotations of tools an upstream listed (bounded per upstream).
    pub(crate) fn learn_tools(&self, server: &str, tools: &[Tool]) {
        let mut cache = self.annotations.write().unwrap_or_else(|e| e.into_inner());
        let known = cache.entry(server.to_owned()).or_default();
        for t in tools {
            if let Some(a) = t.annotations
                && (known.len() < MAX_LEARNED_TOOLS || known.contains_key(&t.name))
            {
                known.insert(t.name.clone(), a);
            }
        }
    }

    /// Remembers the `Mcp-Param-*` headers `tool` of `server` declares (none: forgets).
    pub(crate) fn learn_param_headers(&self, server: &str, tool: &str, declared: crate::protocol::ParamHeaders) {
        let mut cache = self.param_headers.write().unwrap_or_else(|e| e.into_inner());
        let known = cache.entry(server.to_owned()).or_default();
        if declared.is_empty() {
            known.remove(tool);
        } else if known.len() < MAX_LEARNED_TOOLS || known.contains_key(tool) {
            known.insert(tool.to_owned(), Arc::new(declared));
        }
    }

    /// The `Mcp-Param-*` headers `tool` of `server` declared in the last list this edge saw.
    pub(crate) fn param_headers(&self, server: &str, tool: &str) -> Option<Arc<crate::protocol::ParamHeaders>> {
        self.param_headers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .and_then(|tools| tools.get(tool))
            .cloned()
    }

    pub(crate) fn annotations(&self, server: &str, tool: &str) -> Option<ToolAnnotations> {
        self.annotations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .and_then(|tools| tools.get(tool))
            .copied()
    }

    /// Sends one request to `upstream` for `caller`, and waits for the response head; an
    /// error is the edge's answer to the agent (naming the upstream, not its address).
    pub(crate) async fn forward(
        &self,
        upstream: &Upstream,
        caller: &Caller,
        method: Method,
        headers: &HeaderMap,
        body: Body,
        id: Option<&Value>,
    ) -> Result<axum::http::Response<Incoming>, axum::response::Response> {
        let timeout = Duration::from_millis(self.settings.upstream_timeout_ms);
        let started = Instant::now();
        let result = upstream.send(method, headers, &caller.grant, body, timeout).await;
        metrics().observe_upstream(
            &upstream.name,
            started.elapsed(),
            result.as_ref().err().map(UpstreamError::kind),
        );
        result.map_err(|e| {
            tracing::warn!(upstream = %upstream.name, "{e}");
            jsonrpc::error_response(e.status(), id, jsonrpc::UPSTREAM_ERROR, &e.public_message(), None)
        })
    }
}

/// How many long-lived requests (held calls, streams) each grant has open on this edge,
/// bounded per grant by a setting, so one grant cannot take every connection.
pub(crate) struct GrantQuota {
    setting: &'static str,
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One counted request; the count drops with it.
pub(crate) struct QuotaSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    grant: String,
}

impl Drop for QuotaSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.grant) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.grant);
            }
        }
    }
}

/// A grant is at its quota.
#[derive(Debug)]
pub(crate) struct QuotaFull {
    pub(crate) setting: &'static str,
    pub(crate) max: usize,
}

impl GrantQuota {
    fn new(setting: &'static str, max: usize) -> GrantQuota {
        GrantQuota {
            setting,
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more of `grant`'s requests, if it has room (checked and taken under
    /// one lock: concurrent requests cannot overshoot).
    pub(crate) fn take(&self, grant: &str) -> Result<QuotaSlot, QuotaFull> {
        let full = QuotaFull {
            setting: self.setting,
            max: self.max,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.get(grant).copied().unwrap_or(0);
        if count >= self.max || (count == 0 && open.len() >= MAX_COUNTED_GRANTS) {
            return Err(full);
        }
        *open.entry(grant.to_owned()).or_insert(0) += 1;
        Ok(QuotaSlot {
            open: self.open.clone(),
            grant: grant.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_quota_holds_under_its_max_and_frees_on_drop() {
        let quota = GrantQuota::new("edge.max_held_per_grant", 2);
        let a = quota.take("a").expect("first");
        let _b = quota.take("a").expect("second");
        assert!(quota.take("a").is_err(), "third is over the max");
        let _other = quota.take("other").expect("another grant has its own room");
        drop(a);
        assert!(quota.take("a").is_ok(), "room again once one ended");
        let zero = GrantQuota::new("edge.max_streams_per_grant", 0);
        assert!(zero.take("a").is_err());
    }
}
