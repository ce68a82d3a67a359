//! JWT access tokens made in a test: signing keys (ES256, EdDSA, RS256) with their public
//! JWKs, tokens, and an issuer's JWKS endpoint whose keys can change while a gateway runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://auth.example.test/realms/agents";
pub const AUDIENCE: &str = "https://mcp.example.test/mcp/k8s";

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
    /// The public key as PEM, for the HMAC-with-a-public-key attack.
    pub public_pem: String,
}

pub fn es256(kid: &str) -> SigningKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = key.public_key_raw();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("encoding key"),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                    "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])}),
        public_pem: key.public_key_pem(),
    }
}

pub fn eddsa(kid: &str) -> SigningKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).expect("encoding key"),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "x": B64.encode(key.public_key_raw())}),
        public_pem: key.public_key_pem(),
    }
}

pub fn rs256(kid: &str) -> SigningKey {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    let public = private.to_public_key();
    let pem = private.to_pkcs8_pem(LineEnding::LF).expect("pem");
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256",
                    "n": B64.encode(public.n().to_bytes_be()), "e": B64.encode(public.e().to_bytes_be())}),
        public_pem: public.to_public_key_pem(LineEnding::LF).expect("pem"),
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

pub fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent-7", "tenant": "acme",
           "scope": "openid mcp:k8s", "iat": now(), "exp": now() + 600})
}

pub fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
}

/// A JWS made by hand: `header` as given, `signature` as given.
pub fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(signature)
    )
}

type JwksState = (Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>);

/// The issuer's JWKS endpoint: the keys can change while the gateway runs; fetches are
/// counted.
pub struct Jwks {
    pub url: String,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub fetches: Arc<AtomicUsize>,
}

impl Jwks {
    pub async fn start(keys: Vec<Value>) -> Jwks {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let state = (keys.clone(), fetches.clone());
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(
                    |axum::extract::State((keys, fetches)): axum::extract::State<JwksState>| async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({"keys": keys.lock().expect("lock").clone()}))
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Jwks { url, keys, fetches }
    }
}

pub fn identity_section(jwks: &str) -> String {
    format!(
        r#"
[identity]
public_url = "https://mcp.example.test"

[identity.required_scopes]
k8s = ["mcp:k8s"]

[[identity.jwt]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
jwks_url = "{jwks}"
grant_claim = "tenant"
grants = {{ acme = "a" }}
min_refetch_s = 1
"#
    )
}
