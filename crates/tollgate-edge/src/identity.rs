//! JWT access tokens for agents, as the MCP authorization specification (revision
//! 2025-06-18) has clients present them: OAuth 2.1 bearer tokens issued by an authorization
//! server this edge trusts (`[[identity.jwt]]`), for this resource (`audiences`), signed with
//! a key from the issuer's JWKS (fetched, cached, refreshed in the background and on an
//! unknown `kid` at most once per `min_refetch_s`; or read from a file).
//!
//! Only RS256, ES256 and EdDSA are accepted, only with keys of their own family from the
//! JWKS (symmetric `oct` keys are never loaded, so a token "signed" with HMAC over a public
//! key has nothing to verify against), and `alg: none` is never accepted. The grant and
//! agent come from claims, bounded and checked like configured names, so a token cannot
//! forge a counter key. The token itself is never logged and never forwarded upstream.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::EdgeError;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Deadline for one JWKS fetch.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest claim value used as a grant, agent, subject or issuer.
const MAX_CLAIM_CHARS: usize = 256;
/// Validated tokens remembered (by SHA-256 of the whole token): an agent sends the same
/// token with every call, and checking a signature costs 50–350 µs.
const TOKEN_CACHE_ENTRIES: usize = 10_000;
/// A remembered token is checked again after this long (or at its `exp`, if sooner), so a
/// key withdrawn from the JWKS stops admitting its tokens within this time.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);

/// `[identity]`: how agents may prove who they are besides static keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// Authorization servers whose JWT access tokens agents may present.
    #[serde(default)]
    pub jwt: Vec<JwtSettings>,
    /// Scopes a token must carry per upstream (`k8s = ["mcp:k8s"]`); missing ones get 403
    /// `insufficient_scope`. Static keys are not scoped.
    #[serde(default)]
    pub required_scopes: BTreeMap<String, Vec<String>>,
    /// The edge's public base URL (e.g. `https://mcp.example.com`), used for the resource
    /// identifier in Protected Resource Metadata and in `WWW-Authenticate`. Default: the
    /// request's scheme and `Host`.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// One `[[identity.jwt]]` issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The token's `iss`, exactly.
    pub issuer: String,
    /// The token's `aud` must hold one of these (the MCP resource's URL, usually).
    pub audiences: Vec<String>,
    /// The issuer's JWKS (`https://`, or `http://` on loopback only).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWKS file instead of a URL (re-read every `refresh_s`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// CA certificates (PEM) for an `https://` JWKS URL, besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accepted algorithms, among RS256, ES256 and EdDSA (the default: all three).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerated clock difference for `exp` and `nbf`, in seconds. Default 60.
    #[serde(default = "default_clock_skew_s")]
    pub clock_skew_s: u64,
    /// The claim naming the grant. With `grants`, its value is looked up there; without,
    /// it is the grant's name.
    #[serde(default)]
    pub grant_claim: Option<String>,
    /// Claim value → grant name (for `grant_claim`).
    #[serde(default)]
    pub grants: BTreeMap<String, String>,
    /// The grant of every token from this issuer, when no claim names one.
    #[serde(default)]
    pub grant: Option<String>,
    /// The claim naming the agent. Default `sub`.
    #[serde(default = "default_agent_claim")]
    pub agent_claim: String,
    /// How often the JWKS is fetched again in the background, in seconds. Default 300.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u64,
    /// A token with an unknown `kid` fetches the JWKS again at most this often, in seconds.
    /// Default 30.
    #[serde(default = "default_min_refetch_s")]
    pub min_refetch_s: u64,
    /// The authorization server listed in Protected Resource Metadata. Default: `issuer`.
    #[serde(default)]
    pub authorization_server: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_clock_skew_s() -> u64 {
    60
}
fn default_agent_claim() -> String {
    "sub".into()
}
fn default_refresh_s() -> u64 {
    300
}
fn default_min_refetch_s() -> u64 {
    30
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub grant: String,
    pub agent: String,
    pub subject: String,
    pub issuer: String,
    pub scopes: Vec<String>,
}

/// Why a token was refused: the text goes into `WWW-Authenticate` (fixed wording, no
/// token content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub &'static str);

/// The configured issuers.
pub struct Verifier {
    issuers: Vec<Arc<Issuer>>,
    /// SHA-256 of a validated token → what it proved, until when.
    cache: std::sync::Mutex<HashMap<[u8; 32], (TokenIdentity, Instant)>>,
}

struct Issuer {
    settings: JwtSettings,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<HashMap<String, Key>>,
    /// When the keys were last fetched; also serialises fetches.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    client: Option<crate::upstream::HttpClient>,
    refresher: std::sync::Once,
}

struct Key {
    key: DecodingKey,
    algorithm: Algorithm,
}

impl Verifier {
    pub fn new(settings: &IdentitySettings) -> Result<Verifier, EdgeError> {
        let mut issuers = Vec::new();
        for jwt in &settings.jwt {
            issuers.push(Arc::new(Issuer::new(jwt)?));
        }
        Ok(Verifier {
            issuers,
            cache: std::sync::Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The authorization servers to list in Protected Resource Metadata.
    pub fn authorization_servers(&self) -> Vec<String> {
        self.issuers
            .iter()
            .map(|i| {
                i.settings
                    .authorization_server
                    .clone()
                    .unwrap_or_else(|| i.settings.issuer.clone())
            })
            .collect()
    }

    /// Validates `token` against the issuer it names; a token validated in the last
    /// [`TOKEN_CACHE_TTL`] and not yet expired is not checked again.
    pub async fn verify(&self, token: &str) -> Result<TokenIdentity, Rejected> {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((identity, until)) = self.lock_cache().get(&digest)
            && now < *until
        {
            return Ok(identity.clone());
        }
        let (identity, expires_in) = self.verify_uncached(token).await?;
        let until = now + expires_in.min(TOKEN_CACHE_TTL);
        let mut cache = self.lock_cache();
        if cache.len() >= TOKEN_CACHE_ENTRIES {
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= TOKEN_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(digest, (identity.clone(), until));
        Ok(identity)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (TokenIdentity, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identity a token proves, and how long it stays valid.
    async fn verify_uncached(&self, token: &str) -> Result<(TokenIdentity, Duration), Rejected> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejected("malformed token"))?;
        // The issuer picks the keys; the signature, checked next, proves the claim.
        let unverified =
            jsonwebtoken::dangerous::insecure_decode::<Value>(token).map_err(|_| Rejected("malformed token"))?;
        let iss = unverified.claims.get("iss").and_then(Value::as_str).unwrap_or_default();
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.settings.issuer == iss)
            .ok_or(Rejected("token from an issuer this gateway does not trust"))?;
        issuer.verify(token, &header).await
    }
}

impl Issuer {
    fn new(settings: &JwtSettings) -> Result<Issuer, EdgeError> {
        let bad = |why: String| EdgeError::Config(format!("[[identity.jwt]] issuer \"{}\": {why}", settings.issuer));
        if settings.audiences.is_empty() {
            return Err(bad(
                "audiences must name at least one audience (the MCP resource)".into()
            ));
        }
        let mut algorithms = Vec::new();
        for name in &settings.algorithms {
            algorithms.push(match name.as_str() {
                "RS256" => Algorithm::RS256,
                "ES256" => Algorithm::ES256,
                "EdDSA" => Algorithm::EdDSA,
                other => {
                    return Err(bad(format!(
                        "algorithm \"{other}\" is not accepted: use RS256, ES256 or EdDSA (never none, never HMAC)"
                    )));
                }
            });
        }
        if algorithms.is_empty() {
            return Err(bad("algorithms must not be empty".into()));
        }
        if settings.grant_claim.is_none() && settings.grant.is_none() {
            return Err(bad("set grant_claim (optionally with grants) or grant".into()));
        }
        if let Some(grant) = &settings.grant {
            check_name(grant).map_err(|_| bad(format!("grant \"{grant}\" is not a valid grant name")))?;
        }
        for grant in settings.grants.values() {
            check_name(grant).map_err(|_| bad(format!("grant \"{grant}\" is not a valid grant name")))?;
        }
        let client = match (&settings.jwks_url, &settings.jwks_file) {
            (Some(url), None) => {
                let uri: axum::http::Uri = url.parse().map_err(|e| bad(format!("jwks_url \"{url}\": {e}")))?;
                let loopback = matches!(uri.host(), Some("127.0.0.1" | "localhost" | "[::1]"));
                match uri.scheme_str() {
                    Some("https") => {}
                    Some("http") if loopback => {}
                    _ => {
                        return Err(bad(format!(
                            "jwks_url \"{url}\" must be https:// (http:// only on loopback)"
                        )));
                    }
                }
                let tls = tollgate_tls::client_config(settings.ca_file.as_deref(), None, &[])
                    .map_err(|e| bad(e.to_string()))?;
                Some(crate::upstream::http_client(
                    JWKS_TIMEOUT,
                    tls,
                    crate::settings::HttpVersion::Http1,
                ))
            }
            (None, Some(_)) => None,
            _ => return Err(bad("set exactly one of jwks_url and jwks_file".into())),
        };
        let issuer = Issuer {
            settings: settings.clone(),
            algorithms,
            keys: ArcSwap::from_pointee(HashMap::new()),
            fetched: tokio::sync::Mutex::new(None),
            client,
            refresher: std::sync::Once::new(),
        };
        if let Some(path) = &settings.jwks_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
            let keys = issuer
                .parse(&text)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            issuer.keys.store(Arc::new(keys));
        }
        Ok(issuer)
    }

    async fn verify(
        self: &Arc<Self>,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<(TokenIdentity, Duration), Rejected> {
        if !self.algorithms.contains(&header.alg) {
            return Err(Rejected("token algorithm not accepted"));
        }
        self.start_refresher();
        let kid = header.kid.clone().unwrap_or_default();
        let mut keys = self.keys.load_full();
        if !keys.contains_key(&kid) {
            self.refetch(true).await;
            keys = self.keys.load_full();
        }
        let key = keys.get(&kid).ok_or(Rejected("unknown signing key (kid)"))?;
        if key.algorithm != header.alg {
            return Err(Rejected("token algorithm does not match its key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![key.algorithm];
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        validation.set_audience(&self.settings.audiences);
        validation.leeway = self.settings.clock_skew_s;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Rejected(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidSignature => "invalid signature",
                ErrorKind::MissingRequiredClaim(_) => "token lacks exp, iss or aud",
                ErrorKind::InvalidAlgorithm => "token algorithm does not match its key",
                _ => "invalid token",
            })
        })?;
        let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expires_in = Duration::from_secs(exp.saturating_sub(now));
        Ok((self.identity(&data.claims)?, expires_in))
    }

    /// Grant, agent, subject and scopes from verified claims.
    fn identity(&self, claims: &Value) -> Result<TokenIdentity, Rejected> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let grant = match &self.settings.grant_claim {
            Some(claim) => {
                let value = text(claim).ok_or(Rejected("token lacks the grant claim"))?;
                if self.settings.grants.is_empty() {
                    value.to_owned()
                } else {
                    self.settings
                        .grants
                        .get(value)
                        .or(self.settings.grant.as_ref())
                        .cloned()
                        .ok_or(Rejected("token names no grant of this gateway"))?
                }
            }
            None => self.settings.grant.clone().unwrap_or_default(),
        };
        check_name(&grant).map_err(|_| Rejected("token names an invalid grant"))?;
        let subject = text("sub").unwrap_or_default().to_owned();
        let agent = text(&self.settings.agent_claim).unwrap_or(subject.as_str()).to_owned();
        for value in [&agent, &subject] {
            if value.chars().count() > MAX_CLAIM_CHARS || value.chars().any(char::is_control) {
                return Err(Rejected("token claims too long or with control characters"));
            }
        }
        let scopes = match claims.get("scope").or_else(|| claims.get("scp")) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(TokenIdentity {
            agent: if agent.is_empty() { grant.clone() } else { agent },
            grant,
            subject,
            issuer: self.settings.issuer.clone(),
            scopes,
        })
    }

    /// Starts the background refresh on first use (the edge's runtime is running by then);
    /// it ends when the issuer is dropped.
    fn start_refresher(self: &Arc<Self>) {
        self.refresher.call_once(|| {
            let issuer = Arc::downgrade(self);
            let every = Duration::from_secs(self.settings.refresh_s.max(1));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(issuer) = issuer.upgrade() else { return };
                    issuer.refetch(false).await;
                }
            });
        });
    }

    /// Fetches (or re-reads) the keys. `on_demand` (an unknown `kid`) is limited to once
    /// per `min_refetch_s`; failures keep the keys already known.
    async fn refetch(&self, on_demand: bool) {
        let mut fetched = self.fetched.lock().await;
        let min = Duration::from_secs(self.settings.min_refetch_s);
        if on_demand && fetched.is_some_and(|at| at.elapsed() < min) {
            return;
        }
        *fetched = Some(Instant::now());
        match self.load().await {
            Ok(keys) => {
                tracing::debug!(issuer = %self.settings.issuer, keys = keys.len(), "JWKS loaded");
                self.keys.store(Arc::new(keys));
            }
            Err(e) => {
                tracing::warn!(issuer = %self.settings.issuer, "cannot load the JWKS, keeping the keys already known: {e}")
            }
        }
    }

    async fn load(&self) -> Result<HashMap<String, Key>, String> {
        let text = match (&self.settings.jwks_url, &self.settings.jwks_file, &self.client) {
            (Some(url), _, Some(client)) => fetch(client, url).await?,
            // A small local file: read in place.
            (_, Some(path), _) => {
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            _ => return Err("no JWKS source".into()),
        };
        self.parse(&text)
    }

    /// The usable keys of a JWKS document: asymmetric keys of an accepted algorithm, by
    /// `kid` (a key without one is found by tokens without one).
    fn parse(&self, text: &str) -> Result<HashMap<String, Key>, String> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::OctetKey(_), _) => continue, // symmetric: never
                (_, Some(KeyAlgorithm::RS256)) | (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
                (_, Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
                (AlgorithmParameters::EllipticCurve(p), None) if p.curve == jsonwebtoken::jwk::EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                (_, Some(KeyAlgorithm::EdDSA)) | (AlgorithmParameters::OctetKeyPair(_), None) => Algorithm::EdDSA,
                _ => continue,
            };
            if !self.algorithms.contains(&algorithm) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(kid, Key { key, algorithm });
        }
        Ok(keys)
    }
}

async fn fetch(client: &crate::upstream::HttpClient, url: &str) -> Result<String, String> {
    let request = axum::http::Request::get(url)
        .header(axum::http::header::ACCEPT, "application/json")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(JWKS_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("{url}: no answer within {JWKS_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status().as_u16()));
    }
    let body = tokio::time::timeout(
        JWKS_TIMEOUT,
        Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| format!("{url}: body not received within {JWKS_TIMEOUT:?}"))?
    .map_err(|_| format!("{url}: body larger than {MAX_JWKS_BYTES} bytes or unreadable"))?;
    String::from_utf8(body.to_bytes().to_vec()).map_err(|_| format!("{url}: not UTF-8"))
}

/// A grant name from a token: what a configured grant could be called (it becomes part of
/// counter keys, through the same encoding as configured names).
fn check_name(name: &str) -> Result<(), ()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/'));
    if ok { Ok(()) } else { Err(()) }
}
