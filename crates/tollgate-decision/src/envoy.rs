//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`)
//! on the decision service's gRPC listener, so that Envoy proxies' plain HTTP traffic is
//! counted in the same store, with the same algorithms and exactness, as MCP calls.
//!
//! The `[envoy]` section maps descriptors to counters: a limit names a domain, the keys of a
//! descriptor's entries in order (`key=value` also fixes the value), a counter, a window and
//! a max. A descriptor no limit matches is not limited. The counters of all matched
//! descriptors of one request are taken together: either every one takes its hit or none does
//! (a refused request costs nothing, unlike Envoy's reference service, which counts it too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tollgate_limiter::{Algorithm, Hit, MAX_SLIDING_LOG_MAX};
use tollgate_policy::Window;
use tonic::{Request, Response, Status};

use crate::Engine;

use crate::engine::Taken;
/// The generated `envoy.service.ratelimit.v3` types (server and client).
pub use tollgate_proto::envoy_rls as proto;
use tollgate_proto::envoy_rls::rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit};
use tollgate_proto::envoy_rls::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use tollgate_proto::envoy_rls::{Duration as ProtoDuration, HeaderValue, RateLimitRequest, RateLimitResponse};

/// Most descriptors in one request, entries in one descriptor, and bytes in a domain, key or
/// value: Envoy sends a handful; anything larger is refused as invalid.
const MAX_DESCRIPTORS: usize = 64;
const MAX_ENTRIES: usize = 16;
const MAX_TEXT_BYTES: usize = 1024;

/// Descriptor values longer than this are keyed by their SHA-256, so keys stay bounded.
const MAX_KEYED_VALUE_BYTES: usize = 128;

/// `[envoy]`: Envoy rate limit descriptors mapped to Tollgate counters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoySettings {
    #[serde(default)]
    pub limits: Vec<EnvoyLimit>,
    /// Hex SHA-256 of the token Envoy presents (`authorization: Bearer <token>` in the rate
    /// limit filter's `initial_metadata`). Envoy's own credential: it admits the rate limit
    /// service only, and the edges' token (`decision.token_sha256`) does not admit it.
    #[serde(default)]
    pub token_sha256: Option<String>,
}

/// One `[[envoy.limits]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyLimit {
    /// The `domain` of Envoy's rate limit filter.
    pub domain: String,
    /// The descriptor's entry keys, in order, as Envoy's rate limit actions produce them
    /// (`generic_key`, `remote_address`, `header_match`, a `request_headers` descriptor key…);
    /// `key=value` matches only that value.
    pub descriptor: Vec<String>,
    /// The counter, keyed `counter/key=value/…` by the descriptor's entries.
    pub counter: String,
    pub window: Window,
    pub max: u64,
    #[serde(default)]
    pub algorithm: tollgate_policy::Algorithm,
}

/// A limit checked and ready to match.
#[derive(Debug)]
struct Limit {
    domain: String,
    entries: Vec<(String, Option<String>)>,
    counter: String,
    window: Window,
    max: u64,
    algorithm: Algorithm,
}

impl Limit {
    fn matches(&self, domain: &str, entries: &[(&str, &str)]) -> bool {
        self.domain == domain
            && self.entries.len() == entries.len()
            && self
                .entries
                .iter()
                .zip(entries)
                .all(|((key, value), (k, v))| key == k && value.as_deref().is_none_or(|value| value == *v))
    }

    fn key(&self, entries: &[(&str, &str)]) -> String {
        let mut key = self.counter.clone();
        for (k, v) in entries {
            key.push('/');
            escape_into(&mut key, k);
            key.push('=');
            if v.len() > MAX_KEYED_VALUE_BYTES {
                key.push('#');
                key.push_str(&hex::encode(&Sha256::digest(v.as_bytes())[..16]));
            } else {
                escape_into(&mut key, v);
            }
        }
        key
    }
}

/// Keeps `/`, `=`, `%`, `#`, `{`, `}` and control characters out of key parts.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '/' | '=' | '%' | '#' | '{' | '}') || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

/// The `[envoy]` limits, checked: what `tollgate decision` serves.
#[derive(Debug, Default)]
pub struct EnvoyLimits {
    limits: Vec<Limit>,
    /// The counter a store takes last in any request (see `tollgate_limiter::tag_order`):
    /// Envoy may send any limits together, so every other counter's hits may be held and
    /// given back, and only this one's refusals are remembered ("full until").
    last_counter: Option<String>,
    /// SHA-256 of Envoy's token, when one is set.
    token_hash: Option<[u8; 32]>,
}

impl EnvoyLimits {
    /// Checks every limit; the error names the first bad one (`envoy.limits[i]`).
    pub fn new(settings: &EnvoySettings) -> Result<EnvoyLimits, String> {
        let token_hash = match &settings.token_sha256 {
            Some(hex_hash) => {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(hex_hash.trim(), &mut hash).map_err(|_| {
                    "envoy.token_sha256 must be 64 hex characters (the SHA-256 of Envoy's token; `tollgate keygen` \
                     makes one)"
                        .to_owned()
                })?;
                Some(hash)
            }
            None => None,
        };
        let mut limits: Vec<Limit> = Vec::new();
        for (i, limit) in settings.limits.iter().enumerate() {
            let at = format!("envoy.limits[{i}]");
            if limit.domain.is_empty() || limit.domain.len() > MAX_TEXT_BYTES {
                return Err(format!("{at}.domain must be 1 to {MAX_TEXT_BYTES} bytes"));
            }
            if limit.counter.is_empty()
                || !limit
                    .counter
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(format!(
                    "{at}.counter \"{}\" must be letters, digits, '_', '-' or '.'",
                    limit.counter.escape_debug()
                ));
            }
            if limit.descriptor.is_empty() || limit.descriptor.len() > MAX_ENTRIES {
                return Err(format!("{at}.descriptor must list 1 to {MAX_ENTRIES} entry keys"));
            }
            let entries: Vec<(String, Option<String>)> = limit
                .descriptor
                .iter()
                .map(|entry| match entry.split_once('=') {
                    Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                    None => (entry.clone(), None),
                })
                .collect();
            if entries.iter().any(|(key, _)| key.is_empty()) {
                return Err(format!("{at}.descriptor has an empty entry key"));
            }
            let algorithm = match limit.algorithm {
                tollgate_policy::Algorithm::SlidingLog => Algorithm::SlidingLog,
                tollgate_policy::Algorithm::SlidingWindow => Algorithm::SlidingWindow,
            };
            let most = match algorithm {
                Algorithm::SlidingLog => MAX_SLIDING_LOG_MAX,
                Algorithm::SlidingWindow => tollgate_limiter::MAX_COUNT,
            };
            if limit.max == 0 || limit.max > most {
                return Err(format!("{at}.max must be 1 to {most} for {}", limit.algorithm));
            }
            let checked = Limit {
                domain: limit.domain.clone(),
                entries,
                counter: limit.counter.clone(),
                window: limit.window.clone(),
                max: limit.max,
                algorithm,
            };
            if let Some(other) = limits
                .iter()
                .find(|l| l.domain == checked.domain && l.entries == checked.entries)
            {
                return Err(format!(
                    "{at} matches the same descriptors as the limit on counter \"{}\"",
                    other.counter
                ));
            }
            if limits.iter().any(|l| l.counter == checked.counter) {
                return Err(format!("{at}.counter \"{}\" is used by another limit", checked.counter));
            }
            limits.push(checked);
        }
        let last_counter = limits
            .iter()
            .map(|l| l.counter.as_str())
            .max_by(|a, b| tollgate_limiter::tag_order(a).cmp(&tollgate_limiter::tag_order(b)))
            .map(str::to_owned);
        Ok(EnvoyLimits {
            limits,
            token_hash,
            last_counter,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The SHA-256 of Envoy's token (`envoy.token_sha256`).
    pub fn token_hash(&self) -> Option<[u8; 32]> {
        self.token_hash
    }

    /// Whether Envoy's credential may serve beside the edges' (`edges`: the hash of
    /// `decision.token_sha256`): Envoy needs a token of its own off loopback (unless the
    /// listener admits only known clients), and never the edges' token, which would let
    /// whoever holds Envoy's configuration call `Decide` as any grant.
    pub fn check_credentials(&self, decision: &crate::DecisionSettings, edges: Option<[u8; 32]>) -> Result<(), String> {
        if self.limits.is_empty() {
            return Ok(());
        }
        match self.token_hash {
            Some(hash) if Some(hash) == edges => Err(
                "envoy.token_sha256 is the edges' decision.token_sha256: give Envoy a token of its own \
                 (`tollgate keygen`), so that Envoy's credential cannot call Decide"
                    .into(),
            ),
            Some(_) => Ok(()),
            None if decision.listen.ip().is_loopback()
                || decision.allow_unauthenticated
                || decision.tls_client_ca.is_some() =>
            {
                Ok(())
            }
            None => Err(format!(
                "decision.listen = {} is reachable from other hosts and [[envoy.limits]] are served: set \
                 envoy.token_sha256 (Envoy's own token, sent as authorization: Bearer in the rate limit \
                 filter's initial_metadata), or decision.allow_unauthenticated = true if a network policy \
                 already admits only Envoy and the edges",
                decision.listen
            )),
        }
    }
}

/// The gRPC service.
pub fn service(engine: Arc<Engine>, limits: Arc<EnvoyLimits>) -> RateLimitServiceServer<EnvoyRateLimit> {
    RateLimitServiceServer::new(EnvoyRateLimit { engine, limits })
}

pub struct EnvoyRateLimit {
    engine: Arc<Engine>,
    limits: Arc<EnvoyLimits>,
}

/// One descriptor of a request that a limit matched.
struct Matched<'a> {
    index: usize,
    limit: &'a Limit,
}

#[tonic::async_trait]
impl RateLimitService for EnvoyRateLimit {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        check(&request).map_err(Status::invalid_argument)?;
        let span = tracing::info_span!(
            target: "tollgate::audit",
            "tollgate.ratelimit",
            otel.kind = "server",
            tollgate.envoy.domain = ?request.domain,
            tollgate.verdict = tracing::field::Empty,
            tollgate.counters = tracing::field::Empty,
        );
        // Not entered across the store's await (that would leak it to other tasks on this
        // thread): the store call is instrumented with it instead.
        let mut statuses: Vec<DescriptorStatus> = request
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            })
            .collect();
        let mut matched = Vec::new();
        let mut hits = Vec::new();
        for (index, descriptor) in request.descriptors.iter().enumerate() {
            let entries: Vec<(&str, &str)> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            let Some(limit) = self.limits.limits.iter().find(|l| l.matches(&request.domain, &entries)) else {
                continue;
            };
            let cost = descriptor
                .hits_addend
                .as_ref()
                .map(|h| h.value)
                .unwrap_or(u64::from(request.hits_addend))
                .max(1);
            if cost > limit.max {
                // Never admissible: refused without asking the store.
                statuses[index] = over_limit(limit, 0, limit.window.duration);
                return Ok(Response::new(answer(
                    Code::OverLimit,
                    statuses,
                    Some(limit.window.duration),
                )));
            }
            hits.push(Hit {
                key: limit.key(&entries),
                tag: limit.counter.clone(),
                window: limit.window.duration,
                max: limit.max,
                cost,
                algorithm: limit.algorithm,
            });
            matched.push(Matched { index, limit });
        }
        span.record(
            "tollgate.counters",
            tracing::field::display(
                matched
                    .iter()
                    .map(|m| m.limit.counter.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        );
        if hits.is_empty() {
            span.record("tollgate.verdict", "ALLOW");
            return Ok(Response::new(answer(Code::Ok, statuses, None)));
        }
        let request_id = format!("envoy-{}", uuid::Uuid::new_v4());
        let rememberable: Vec<bool> = hits
            .iter()
            .map(|h| self.limits.last_counter.as_deref() == Some(h.tag.as_str()))
            .collect();
        let taken = tracing::Instrument::instrument(
            self.engine.take(&request_id, hits.into(), false, &rememberable),
            span.clone(),
        )
        .await
        .map_err(|cause| {
            tracing::warn!(parent: &span, "Envoy rate limit: counter store error: {cause}");
            Status::unavailable(format!("counter store unavailable: {cause}"))
        })?;
        let (code, retry) = match taken {
            Taken::Store(admission) => {
                for (m, counter) in matched.iter().zip(&admission.counters) {
                    statuses[m.index] = match counter.retry_after {
                        Some(retry) => over_limit(m.limit, counter.remaining, retry),
                        None => DescriptorStatus {
                            code: Code::Ok as i32,
                            current_limit: Some(current_limit(m.limit)),
                            limit_remaining: u32::try_from(counter.remaining).unwrap_or(u32::MAX),
                            duration_until_reset: Some(proto_duration(counter.reset_after)),
                        },
                    };
                }
                if admission.admitted {
                    (Code::Ok, None)
                } else {
                    (Code::OverLimit, admission.retry_after())
                }
            }
            Taken::KnownFull(left) => {
                for (m, left) in matched.iter().zip(&left) {
                    if let Some(left) = left {
                        statuses[m.index] = over_limit(m.limit, 0, *left);
                    }
                }
                (Code::OverLimit, left.iter().flatten().max().copied())
            }
        };
        let verdict = if code == Code::Ok { "ALLOW" } else { "RATE_LIMITED" };
        span.record("tollgate.verdict", verdict);
        for m in &matched {
            tollgate_telemetry::metrics::metrics().observe_decision(
                verdict,
                "envoy",
                &m.limit.counter,
                started.elapsed(),
            );
        }
        Ok(Response::new(answer(code, statuses, retry)))
    }
}

fn answer(code: Code, statuses: Vec<DescriptorStatus>, retry: Option<Duration>) -> RateLimitResponse {
    let response_headers_to_add = retry
        .filter(|_| code == Code::OverLimit)
        .map(|retry| HeaderValue {
            key: "retry-after".into(),
            value: retry
                .as_secs()
                .saturating_add(u64::from(retry.subsec_nanos() > 0))
                .max(1)
                .to_string(),
        })
        .into_iter()
        .collect();
    RateLimitResponse {
        overall_code: code as i32,
        statuses,
        response_headers_to_add,
    }
}

fn over_limit(limit: &Limit, remaining: u64, retry: Duration) -> DescriptorStatus {
    DescriptorStatus {
        code: Code::OverLimit as i32,
        current_limit: Some(current_limit(limit)),
        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(proto_duration(retry)),
    }
}

fn current_limit(limit: &Limit) -> RateLimit {
    let unit = match limit.window.duration.as_secs() {
        _ if limit.window.duration.subsec_nanos() != 0 => Unit::Unknown,
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    };
    RateLimit {
        requests_per_unit: u32::try_from(limit.max).unwrap_or(u32::MAX),
        unit: unit as i32,
        name: limit.counter.clone(),
    }
}

fn proto_duration(d: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Bounds on what a caller may send.
fn check(request: &RateLimitRequest) -> Result<(), String> {
    if request.domain.is_empty()
        || request.domain.len() > MAX_TEXT_BYTES
        || request.domain.chars().any(char::is_control)
    {
        return Err(format!(
            "domain must be 1 to {MAX_TEXT_BYTES} bytes without control characters"
        ));
    }
    if request.descriptors.is_empty() || request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(format!("a request carries 1 to {MAX_DESCRIPTORS} descriptors"));
    }
    for descriptor in &request.descriptors {
        if descriptor.entries.is_empty() || descriptor.entries.len() > MAX_ENTRIES {
            return Err(format!("a descriptor carries 1 to {MAX_ENTRIES} entries"));
        }
        for entry in &descriptor.entries {
            if entry.key.is_empty() || entry.key.len() > MAX_TEXT_BYTES || entry.value.len() > MAX_TEXT_BYTES {
                return Err(format!(
                    "descriptor entry keys are 1 to {MAX_TEXT_BYTES} bytes, values at most {MAX_TEXT_BYTES}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(toml_text: &str) -> Result<EnvoyLimits, String> {
        let settings: EnvoySettings = serde_json::from_str(toml_text).map_err(|e| e.to_string())?;
        EnvoyLimits::new(&settings)
    }

    #[test]
    fn descriptors_match_by_keys_in_order_and_fixed_values() {
        let limits = limits(
            r#"{"limits": [{"domain": "web", "descriptor": ["generic_key=api", "remote_address"],
                "counter": "web_api", "window": "1m", "max": 10}]}"#,
        )
        .expect("valid");
        let limit = &limits.limits[0];
        assert!(limit.matches("web", &[("generic_key", "api"), ("remote_address", "10.0.0.1")]));
        assert!(!limit.matches("web", &[("generic_key", "other"), ("remote_address", "10.0.0.1")]));
        assert!(!limit.matches("web", &[("remote_address", "10.0.0.1"), ("generic_key", "api")]));
        assert!(!limit.matches("web", &[("generic_key", "api")]));
        assert!(!limit.matches("other", &[("generic_key", "api"), ("remote_address", "10.0.0.1")]));
        assert_eq!(
            limit.key(&[("generic_key", "api"), ("remote_address", "10.0.0.1/8={x}")]),
            "web_api/generic_key=api/remote_address=10.0.0.1%2F8%3D%7Bx%7D"
        );
        let long = "v".repeat(200);
        assert!(
            limit
                .key(&[("generic_key", "api"), ("remote_address", &long)])
                .contains("=#")
        );
    }

    #[test]
    fn bad_limits_are_refused_by_name() {
        for (text, needle) in [
            (
                r#"{"limits": [{"domain": "", "descriptor": ["a"], "counter": "c", "window": "1m", "max": 1}]}"#,
                "domain",
            ),
            (
                r#"{"limits": [{"domain": "d", "descriptor": [], "counter": "c", "window": "1m", "max": 1}]}"#,
                "descriptor",
            ),
            (
                r#"{"limits": [{"domain": "d", "descriptor": ["a"], "counter": "c/x", "window": "1m", "max": 1}]}"#,
                "counter",
            ),
            (
                r#"{"limits": [{"domain": "d", "descriptor": ["a"], "counter": "c", "window": "1m", "max": 0}]}"#,
                "max",
            ),
            (
                r#"{"limits": [{"domain": "d", "descriptor": ["a"], "counter": "c", "window": "1m", "max": 100001}]}"#,
                "max",
            ),
            (
                r#"{"limits": [{"domain": "d", "descriptor": ["a"], "counter": "c", "window": "1m", "max": 1},
                              {"domain": "d", "descriptor": ["a"], "counter": "e", "window": "1m", "max": 1}]}"#,
                "same descriptors",
            ),
        ] {
            let error = limits(text).err().unwrap_or_else(|| panic!("{text} is refused"));
            assert!(error.contains(needle), "{error} names {needle}");
        }
    }
}
