//! Agent authentication: `Authorization: Bearer <key>`, matched by SHA-256 against the
//! configured grants. Keys are never stored in plain text. Runs as a layer in front of
//! every `/mcp` route; handlers receive the [`Caller`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::EdgeError;
use crate::jsonrpc;
use crate::settings::GrantSettings;

/// Who is calling: the grant their key maps to and the agent name behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub grant: String,
    pub agent: String,
}

/// Bearer-key hashes to callers.
#[derive(Debug, Default)]
pub struct Keyring {
    by_hash: HashMap<[u8; 32], Caller>,
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
            };
            if let Some(other) = by_hash.insert(hash, caller) {
                return Err(EdgeError::Config(format!(
                    "grants \"{}\" and \"{}\" have the same key: each key must map to one grant",
                    other.grant, g.name
                )));
            }
        }
        Ok(Keyring { by_hash })
    }

    pub fn authenticate(&self, key: &str) -> Option<&Caller> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

/// Layer body: rejects requests without a valid key, else attaches the [`Caller`].
pub async fn require_key(State(keyring): State<Arc<Keyring>>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let key = header.and_then(|h| {
        let (scheme, key) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
    });
    let caller = match key {
        None => return unauthorized("missing bearer key: send Authorization: Bearer <key>", None),
        Some(key) => match keyring.authenticate(key) {
            Some(caller) => caller.clone(),
            None => return unauthorized("invalid bearer key", Some("invalid_token")),
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn unauthorized(message: &str, error: Option<&str>) -> Response {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"tollgate\", error=\"{e}\""),
        None => "Bearer realm=\"tollgate\"".to_owned(),
    };
    let mut response = jsonrpc::error_response(StatusCode::UNAUTHORIZED, None, jsonrpc::UNAUTHORIZED, message, None);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response.into_response()
}
