//! DNS-rebinding protection, as the MCP transport specification requires of servers: a
//! browser page whose DNS name was rebound to the edge's address sends its own `Host` and
//! `Origin`, and the edge refuses both unless configured to accept them. The edge rewrites
//! `Host` on its way upstream, so the upstream's own check cannot do this job.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::jsonrpc;
use crate::settings::EdgeSettings;

const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Which `Host` and `Origin` values the edge accepts.
#[derive(Debug)]
pub struct OriginPolicy {
    hosts: Allowed,
    origins: Allowed,
}

#[derive(Debug)]
enum Allowed {
    Any,
    /// Loopback names, any port.
    Loopback,
    Nothing,
    /// Exact values; entries without a port match any port.
    List(Vec<String>),
}

impl OriginPolicy {
    pub fn new(settings: &EdgeSettings, listen: SocketAddr) -> OriginPolicy {
        let loopback = listen.ip().is_loopback();
        let configured = |list: &Option<Vec<String>>, default: Allowed| match list {
            None => default,
            Some(list) if list.iter().any(|e| e == "*") => Allowed::Any,
            Some(list) => Allowed::List(
                list.iter()
                    .map(|e| e.trim_end_matches('/').to_ascii_lowercase())
                    .collect(),
            ),
        };
        OriginPolicy {
            hosts: configured(
                &settings.allowed_hosts,
                if loopback { Allowed::Loopback } else { Allowed::Any },
            ),
            origins: configured(
                &settings.allowed_origins,
                if loopback { Allowed::Loopback } else { Allowed::Nothing },
            ),
        }
    }

    /// `Err` with the reason when the request must be refused.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().map_err(|_| "the Host header is not valid")?;
            if !self.hosts.admits(host) {
                return Err("this Host is not served here (edge.allowed_hosts)");
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| "the Origin header is not valid")?;
            let authority = origin
                .split_once("://")
                .map(|(_, authority)| authority)
                .ok_or("requests from this Origin are not allowed (edge.allowed_origins)")?;
            let admitted = match &self.origins {
                Allowed::Loopback => self.origins.admits(authority),
                _ => self.origins.admits(origin),
            };
            if !admitted {
                return Err("requests from this Origin are not allowed (edge.allowed_origins)");
            }
        }
        Ok(())
    }
}

impl Allowed {
    fn admits(&self, value: &str) -> bool {
        let value = value.trim_end_matches('/').to_ascii_lowercase();
        match self {
            Allowed::Any => true,
            Allowed::Nothing => false,
            Allowed::Loopback => LOOPBACK_NAMES.contains(&without_port(&value)),
            Allowed::List(list) => list.iter().any(|e| *e == value || *e == without_port(&value)),
        }
    }
}

/// `host:port`, `[v6]:port` or `scheme://host:port` without its port.
fn without_port(value: &str) -> &str {
    match value.rfind(':') {
        Some(i) if value[i + 1..].bytes().all(|b| b.is_ascii_digit()) && !value[..i].ends_with(':') => {
            let host = &value[..i];
            // A bare IPv6 address without brackets has colons of its own.
            if host.contains(':') && !host.ends_with(']') && !host.contains("//") {
                value
            } else {
                host
            }
        }
        _ => value,
    }
}

/// Layer body: 403 for a refused `Host` or `Origin`.
pub async fn check(State(policy): State<Arc<OriginPolicy>>, request: Request, next: Next) -> Response {
    match policy.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(why) => {
            tracing::warn!("refused a request: {why}");
            jsonrpc::error_response(StatusCode::FORBIDDEN, None, jsonrpc::INVALID_REQUEST, why, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_bind_refuses_rebound_names() {
        let policy = OriginPolicy::new(&EdgeSettings::default(), "127.0.0.1:8080".parse().unwrap());
        assert!(policy.check(&headers(Some("127.0.0.1:8080"), None)).is_ok());
        assert!(
            policy
                .check(&headers(Some("localhost:8080"), Some("http://localhost:3000")))
                .is_ok()
        );
        assert!(
            policy
                .check(&headers(Some("[::1]:8080"), Some("http://[::1]:5173")))
                .is_ok()
        );
        assert!(policy.check(&headers(None, None)).is_ok());
        assert!(policy.check(&headers(Some("evil.example:8080"), None)).is_err());
        assert!(
            policy
                .check(&headers(Some("127.0.0.1:8080"), Some("http://evil.example")))
                .is_err()
        );
        assert!(policy.check(&headers(Some("127.0.0.1:8080"), Some("null"))).is_err());
        assert!(policy.check(&headers(Some("localhost.evil.example"), None)).is_err());
    }

    #[test]
    fn configured_lists_and_wildcards() {
        let settings = EdgeSettings {
            allowed_hosts: Some(vec!["mcp.example.com".into()]),
            allowed_origins: Some(vec!["https://app.example.com".into()]),
            ..EdgeSettings::default()
        };
        let policy = OriginPolicy::new(&settings, "0.0.0.0:8080".parse().unwrap());
        assert!(
            policy
                .check(&headers(Some("mcp.example.com:8080"), Some("https://app.example.com")))
                .is_ok()
        );
        assert!(policy.check(&headers(Some("MCP.example.com"), None)).is_ok());
        assert!(policy.check(&headers(Some("other.example.com"), None)).is_err());
        assert!(
            policy
                .check(&headers(Some("mcp.example.com"), Some("https://app.example.com.evil")))
                .is_err()
        );
        let open = OriginPolicy::new(&EdgeSettings::default(), "0.0.0.0:8080".parse().unwrap());
        assert!(open.check(&headers(Some("anything"), None)).is_ok());
        assert!(
            open.check(&headers(Some("anything"), Some("https://app.example.com")))
                .is_err()
        );
    }
}
