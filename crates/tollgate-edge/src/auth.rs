//! Agent authentication: `Authorization: Bearer <credential>`, either a static key matched
//! by SHA-256 against the configured grants (keys are never stored in plain text), or a JWT
//! access token from a configured issuer ([`crate::identity`]). Runs as a layer in front of
//! every `/mcp` route; handlers receive the [`Caller`].
//!
//! With JWT issuers configured the edge is an OAuth 2.1 protected resource as the MCP
//! authorization spec describes: 401 answers carry `WWW-Authenticate: Bearer
//! resource_metadata="…"` pointing at the Protected Resource Metadata (RFC 9728) served at
//! `/.well-known/oauth-protected-resource/mcp/{server}`, and a token without a required
//! scope gets 403 `insufficient_scope`.

use std::collections::HashMap;
use std::sync::Arc;

use std::collections::BTreeMap;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::EdgeError;
use crate::identity::{Rejected, Verifier};
use crate::jsonrpc;
use crate::settings::GrantSettings;

/// Who is calling: the grant their key maps to and the agent name behind it; for a token,
/// also its subject and issuer (for the audit trail; never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub grant: String,
    pub agent: String,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// A token's scopes; `None` for a static key, which is not limited by scopes.
    pub scopes: Option<Arc<[String]>>,
}

impl Caller {
    /// Whether the caller holds every scope in `required` (a static key always does).
    pub fn has_scopes(&self, required: &[String]) -> bool {
        match &self.scopes {
            None => true,
            Some(held) => required.iter().all(|s| held.contains(s)),
        }
    }
}

/// Bearer-key hashes to callers.
#[derive(Debug, Default)]
pub struct Keyring {
    /// Shared, so a request carries its caller without copying the names.
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
}

impl Keyring {
    pub fn new(grants: &[GrantSettings]) -> Result<Self, EdgeError> {
        let mut by_hash = HashMap::new();
        for g in grants {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(g.key_sha256.trim(), &mut hash).map_err(|_| {
                EdgeError::Config(format!(
                    "grant \"{}\": key_sha256 must be 64 hex characters (the SHA-256 of the key)",
                    g.name
                ))
            })?;
            let caller = Caller {
                grant: g.name.clone(),
                agent: g.agent.clone().unwrap_or_else(|| g.name.clone()),
                subject: None,
                issuer: None,
                scopes: None,
            };
            if let Some(other) = by_hash.insert(hash, Arc::new(caller)) {
                return Err(EdgeError::Config(format!(
                    "grants \"{}\" and \"{}\" have the same key: each key must map to one grant",
                    other.grant, g.name
                )));
            }
        }
        Ok(Keyring { by_hash })
    }

    pub fn authenticate(&self, key: &str) -> Option<&Arc<Caller>> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

/// Everything the authentication layer needs.
pub struct Authenticator {
    pub(crate) keyring: Keyring,
    pub(crate) verifier: Verifier,
    pub(crate) required_scopes: BTreeMap<String, Vec<String>>,
    /// `identity.public_url`, without a trailing slash.
    pub(crate) public_url: Option<String>,
    /// `https` when the edge serves TLS.
    pub(crate) scheme: &'static str,
    /// The configured upstreams' names.
    pub(crate) servers: Vec<String>,
}

impl Authenticator {
    /// The Protected Resource Metadata URL of `server`, as agents reach this edge.
    fn metadata_url(&self, headers: &HeaderMap, server: &str) -> String {
        let path = if server.is_empty() {
            "mcp".to_owned()
        } else {
            format!("mcp/{server}")
        };
        format!("{}/.well-known/oauth-protected-resource/{path}", self.base_url(headers))
    }

    /// The edge's public base URL: configured, or the request's scheme and `Host` (already
    /// checked against `edge.allowed_hosts`).
    pub(crate) fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return url.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| h.chars().all(|c| c.is_ascii_graphic()) && !h.contains('"'))
            .unwrap_or("localhost");
        format!("{}://{host}", self.scheme)
    }
}

/// The upstream a `/mcp/{server}` path names, decoded as the router decodes it, if it is
/// a configured one (the challenge of a 401 names its metadata; anything else gets the
/// aggregated endpoint's).
fn server_of<'a>(auth: &'a Authenticator, path: &str) -> &'a str {
    let segment = path.strip_prefix("/mcp/").unwrap_or_default();
    let decoded = percent_decode(segment);
    auth.servers
        .iter()
        .find(|s| decoded.as_deref() == Some(s.as_str()))
        .map_or("", String::as_str)
}

/// `%XX` decoded, if the result is UTF-8 (what the router does with a path segment).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Authenticator {
    /// The `WWW-Authenticate` value for `server` (`""`: the aggregated endpoint).
    fn challenge(&self, headers: &HeaderMap, server: &str, error: Option<(&str, &str)>) -> String {
        let mut parts = vec!["Bearer realm=\"tollgate\"".to_owned()];
        if !self.verifier.is_empty() {
            parts.push(format!("resource_metadata=\"{}\"", self.metadata_url(headers, server)));
        }
        if let Some((error, description)) = error {
            parts.push(format!("error=\"{error}\""));
            parts.push(format!("error_description=\"{description}\""));
        }
        parts.join(", ")
    }

    /// 403 `insufficient_scope` for a token without the scopes `server` requires.
    pub(crate) fn insufficient_scope(
        &self,
        headers: &HeaderMap,
        server: &str,
        required: &[String],
        missing: &[String],
    ) -> Response {
        let text = format!(
            "{}, scope=\"{}\"",
            self.challenge(
                headers,
                server,
                Some(("insufficient_scope", "the token lacks a required scope"))
            ),
            required.join(" ")
        );
        refused(
            StatusCode::FORBIDDEN,
            &format!("the token lacks the scopes {}", missing.join(", ")),
            &text,
        )
    }
}

/// Layer body: rejects requests without a valid credential, else attaches the [`Caller`].
/// Which upstreams the caller reaches (scopes, the grant's servers) is not decided here but
/// where the request is resolved ([`crate::resolve`]), on the decoded upstream name.
pub async fn require_key(State(auth): State<Arc<Authenticator>>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credential = header
        .and_then(|h| {
            let (scheme, key) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .map(str::to_owned);
    let server = server_of(&auth, request.uri().path());
    let caller = match credential.as_deref() {
        None => {
            let text = auth.challenge(request.headers(), server, None);
            return unauthorized(
                "missing bearer credential: send Authorization: Bearer <key or token>",
                &text,
            );
        }
        Some(credential) => match auth.keyring.authenticate(credential) {
            Some(caller) => caller.clone(),
            None if !auth.verifier.is_empty() && looks_like_jwt(credential) => {
                match auth.verifier.verify(credential).await {
                    Ok(identity) => Arc::new(Caller {
                        grant: identity.grant,
                        agent: identity.agent,
                        subject: Some(identity.subject),
                        issuer: Some(identity.issuer),
                        scopes: Some(identity.scopes.into()),
                    }),
                    Err(Rejected(reason)) => {
                        tracing::info!(server = %server, "bearer token refused: {reason}");
                        let text = auth.challenge(request.headers(), server, Some(("invalid_token", reason)));
                        return unauthorized(&format!("invalid bearer token: {reason}"), &text);
                    }
                }
            }
            None => {
                let text = auth.challenge(request.headers(), server, Some(("invalid_token", "unknown key")));
                return unauthorized("invalid bearer key", &text);
            }
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Three base64url parts: a JWS, as opposed to a static key.
fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3
        && credential
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

fn unauthorized(message: &str, challenge: &str) -> Response {
    refused(StatusCode::UNAUTHORIZED, message, challenge)
}

fn refused(status: StatusCode, message: &str, challenge: &str) -> Response {
    let mut response = jsonrpc::error_response(status, None, jsonrpc::UNAUTHORIZED, message, None);
    if let Ok(v) = HeaderValue::from_str(challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response.into_response()
}

/// `GET /.well-known/oauth-protected-resource/mcp`: the aggregated endpoint's metadata; its
/// scopes are every upstream's (a token reaches the upstreams whose scopes it holds).
pub async fn aggregate_metadata(State(auth): State<Arc<Authenticator>>, headers: HeaderMap) -> Response {
    if auth.verifier.is_empty() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut scopes: Vec<&String> = auth.required_scopes.values().flatten().collect();
    scopes.sort_unstable();
    scopes.dedup();
    let body = serde_json::json!({
        "resource": format!("{}/mcp", auth.base_url(&headers)),
        "authorization_servers": auth.verifier.authorization_servers(),
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "Tollgate",
    });
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// `GET /.well-known/oauth-protected-resource/mcp/{server}`: Protected Resource Metadata
/// (RFC 9728) for one upstream, listing the authorization servers and its scopes.
pub async fn resource_metadata(
    State(auth): State<Arc<Authenticator>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    if auth.verifier.is_empty() || !auth.servers.contains(&server) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let scopes = auth.required_scopes.get(&server).cloned().unwrap_or_default();
    let body = serde_json::json!({
        "resource": format!("{}/mcp/{server}", auth.base_url(&headers)),
        "authorization_servers": auth.verifier.authorization_servers(),
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Tollgate: {server}"),
    });
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}
