//! Agents with JWT access tokens (the MCP authorization spec's OAuth 2.1 bearer tokens),
//! with keys made in the test and a JWKS served by the test: valid tokens admitted under the
//! mapped grant (sharing its limits with the grant's static key), every kind of bad token
//! refused with 401 and a reason in `WWW-Authenticate`, key rotation picked up without a
//! restart, missing scopes refused with 403, Protected Resource Metadata served, the
//! aggregated endpoint limited to the upstreams a token's scopes (and a grant) reach, and the
//! token never forwarded upstream.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use support::hostile::{Hostile, Reply};
use support::jwt::{ISSUER, Jwks, claims, eddsa, es256, forged, identity_section, now, rs256, sign};
use support::{KEY_A, KEY_B, Proc, refusal, seed_policy, write_config};

struct Answer {
    status: u16,
    challenge: String,
    body: Value,
}

async fn call(endpoint: &str, bearer: &str, id: u64) -> Answer {
    let response = reqwest::Client::new()
        .post(endpoint)
        .bearer_auth(bearer)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": "k8s_rollout_pause", "arguments": {"namespace": "web", "name": "api"}}})
            .to_string(),
        )
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    let body = if text.starts_with('{') {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    } else {
        support::sse_messages(&text).into_iter().next().unwrap_or(Value::Null)
    };
    Answer {
        status,
        challenge,
        body,
    }
}

fn assert_refused(answer: &Answer, reason: &str) {
    assert_eq!(answer.status, 401, "{reason}: {}", answer.body);
    assert!(
        answer.challenge.contains("error=\"invalid_token\"") && answer.challenge.contains(reason),
        "WWW-Authenticate names the reason \"{reason}\": {}",
        answer.challenge
    );
    assert!(
        answer
            .challenge
            .contains("resource_metadata=\"https://mcp.example.test/.well-known/oauth-protected-resource/mcp/k8s\""),
        "{}",
        answer.challenge
    );
}

#[tokio::test]
async fn jwt_agents_are_admitted_under_their_grant_and_bad_tokens_are_refused() {
    let es = es256("ec-1");
    let ed = eddsa("ed-1");
    let rs = rs256("rsa-1");
    let jwks = Jwks::start(vec![es.jwk.clone(), ed.jwk.clone(), rs.jwk.clone()]).await;
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("jwt");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], &seed_policy("minute"), "");
    support::append(&config, &identity_section(&jwks.url));
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let endpoint = up.url("/mcp/k8s");

    // Valid tokens of each algorithm are admitted as grant "a", and share its budget (10
    // per minute per grant) with the grant's static key.
    let mut id = 0;
    for key in [&es, &ed, &rs] {
        for _ in 0..3 {
            id += 1;
            let answer = call(&endpoint, &sign(key, &claims()), id).await;
            assert_eq!(answer.status, 200, "{:?}: {}", key.alg, answer.body);
            assert!(refusal(&answer.body["result"]).is_none(), "{}", answer.body);
        }
    }
    let answer = call(&endpoint, KEY_A, 100).await;
    assert!(
        refusal(&answer.body["result"]).is_none(),
        "the 10th call, by static key: {}",
        answer.body
    );
    let answer = call(&endpoint, &sign(&es, &claims()), 101).await;
    let limited =
        refusal(&answer.body["result"]).unwrap_or_else(|| panic!("the 11th call is limited: {}", answer.body));
    assert_eq!(limited["verdict"], "RATE_LIMITED");

    // Every kind of bad token: 401, the reason in WWW-Authenticate.
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        c
    };
    let expired = with(&|c| {
        c["exp"] = json!(now() - 3600);
        c["iat"] = json!(now() - 7200);
    });
    assert_refused(&call(&endpoint, &sign(&es, &expired), 1).await, "token expired");
    let other_issuer = with(&|c| c["iss"] = json!("https://evil.example.test"));
    assert_refused(
        &call(&endpoint, &sign(&es, &other_issuer), 1).await,
        "issuer this gateway does not trust",
    );
    let other_audience = with(&|c| c["aud"] = json!("https://other.example.test/mcp"));
    assert_refused(&call(&endpoint, &sign(&es, &other_audience), 1).await, "wrong audience");
    let stranger = es256("not-published");
    assert_refused(
        &call(&endpoint, &sign(&stranger, &claims()), 1).await,
        "unknown signing key",
    );
    let none = forged(&json!({"alg": "none", "typ": "JWT", "kid": "ec-1"}), &claims(), b"");
    assert_refused(&call(&endpoint, &none, 1).await, "");
    for key in [&rs, &es] {
        // HMAC "signed" with the public key, as in the classic key-confusion attack.
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": key.kid});
        let unsigned = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims().to_string())
        );
        let mac = hmac_sha256(key.public_pem.as_bytes(), unsigned.as_bytes());
        let token = format!("{unsigned}.{}", B64.encode(mac));
        assert_refused(&call(&endpoint, &token, 1).await, "algorithm not accepted");
    }
    let tampered = {
        let token = sign(&es, &claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(with(&|c| c["tenant"] = json!("other")).to_string());
        parts.join(".")
    };
    assert_refused(&call(&endpoint, &tampered, 1).await, "invalid signature");
    let unmapped = with(&|c| c["tenant"] = json!("initech"));
    assert_refused(&call(&endpoint, &sign(&es, &unmapped), 1).await, "names no grant");

    // Missing scope: 403 insufficient_scope, naming the scope.
    let unscoped = with(&|c| c["scope"] = json!("openid"));
    let answer = call(&endpoint, &sign(&es, &unscoped), 1).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.challenge.contains("error=\"insufficient_scope\"") && answer.challenge.contains("scope=\"mcp:k8s\""),
        "{}",
        answer.challenge
    );

    // No credential: 401 pointing at the metadata, which lists the issuer and scopes.
    let answer = reqwest::Client::new()
        .post(&endpoint)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 401);
    let challenge = answer.headers()["www-authenticate"].to_str().expect("ascii").to_owned();
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    let metadata: Value = reqwest::get(up.url("/.well-known/oauth-protected-resource/mcp/k8s"))
        .await
        .expect("metadata")
        .json()
        .await
        .expect("JSON");
    assert_eq!(metadata["resource"], "https://mcp.example.test/mcp/k8s");
    assert_eq!(metadata["authorization_servers"], json!([ISSUER]));
    assert_eq!(metadata["scopes_supported"], json!(["mcp:k8s"]));
    let unknown = reqwest::get(up.url("/.well-known/oauth-protected-resource/mcp/nope"))
        .await
        .expect("metadata");
    assert_eq!(unknown.status(), 404);

    // Rotation: a new key published later is picked up without a restart; unknown kids
    // fetch the JWKS again at most once per min_refetch_s.
    let before = jwks.fetches.load(Ordering::SeqCst);
    for i in 0..5 {
        assert_refused(
            &call(&endpoint, &sign(&stranger, &claims()), 200 + i).await,
            "unknown signing key",
        );
    }
    assert!(
        jwks.fetches.load(Ordering::SeqCst) - before <= 1,
        "unknown kids do not hammer the issuer: {} fetches",
        jwks.fetches.load(Ordering::SeqCst) - before
    );
    let rotated = es256("ec-2");
    jwks.keys.lock().expect("lock").push(rotated.jwk.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let other_grant = with(&|c| c["tenant"] = json!("acme"));
    let answer = call(&endpoint, &sign(&rotated, &other_grant), 300).await;
    assert_eq!(answer.status, 200, "the rotated key is accepted: {}", answer.body);
}

/// HMAC-SHA256, for the forged tokens above.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let mut h = Sha256::new();
    h.update(&inner);
    h.update(message);
    let inner_hash = h.finalize();
    let mut h = Sha256::new();
    h.update(&outer);
    h.update(inner_hash);
    h.finalize().to_vec()
}

/// The token stays at the edge: the upstream sees neither it nor any Authorization header.
#[tokio::test]
async fn tokens_are_never_forwarded_upstream() {
    let es = es256("ec-1");
    let jwks = Jwks::start(vec![es.jwk.clone()]).await;
    let upstream = Hostile::start(|_, message| {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        Reply::Json(
            200,
            json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "ok"}]}}).to_string(),
        )
    })
    .await;
    let dir = support::temp_dir("jwt-forward");
    // Not pinned: the upstream counts the requests it gets, which must be the agent's one.
    let config = write_config(&dir, &upstream.url, &[], &seed_policy("minute"), "pinning = \"off\"");
    support::append(&config, &identity_section(&jwks.url));
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let token = sign(&es, &claims());
    let answer = call(&up.url("/mcp/k8s"), &token, 1).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].headers.get("authorization").is_none(),
        "no Authorization header upstream"
    );
    let everything = format!("{:?}{}", received[0].headers, received[0].body);
    assert!(!everything.contains(&token[..20]), "the token is not forwarded");
}

/// The aggregated endpoint `/mcp` reaches only the upstreams a caller may use: a token
/// without an upstream's required scope does not see or call it (not even through a session
/// made with a token that had the scope), and `[[grants]] servers` limits a grant.
#[tokio::test]
async fn the_aggregated_endpoint_reaches_only_the_upstreams_a_caller_may_use() {
    let es = es256("ec-agg");
    let jwks = Jwks::start(vec![es.jwk.clone()]).await;
    let k8s = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let ops = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("jwt-aggregate");
    let policy = r#"{"version": "1", "default": "allow"}"#;
    let config = write_config(&dir, &k8s.url("/mcp"), &[], policy, "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("name = \"b\"\n", "name = \"b\"\nservers = [\"ops\"]\n"),
    )
    .expect("config");
    support::append(
        &config,
        &format!("\n[[upstreams]]\nname = \"ops\"\nurl = \"{}\"\n", ops.url("/mcp")),
    );
    support::append(&config, &identity_section(&jwks.url));
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let endpoint = up.url("/mcp");
    let prefixes = |names: Vec<String>| {
        let mut p: Vec<String> = names
            .iter()
            .filter_map(|n| n.split("__").next().map(str::to_owned))
            .collect();
        p.sort();
        p.dedup();
        p
    };

    let scoped = sign(&es, &claims());
    let mut full = support::Mcp::new(&endpoint, &scoped);
    full.initialize().await;
    assert_eq!(prefixes(full.tool_names().await), ["k8s", "ops"]);

    let unscoped = sign(&es, &{
        let mut c = claims();
        c["scope"] = json!("openid");
        c
    });
    let mut partial = support::Mcp::new(&endpoint, &unscoped);
    partial.initialize().await;
    assert_eq!(prefixes(partial.tool_names().await), ["ops"], "no mcp:k8s, no k8s");
    let answer = partial
        .request("tools/call", json!({"name": "k8s__k8s_rollout_pause", "arguments": {}}))
        .await;
    assert_eq!(answer.message["error"]["code"], -32602, "{}", answer.message);

    // The scoped token's session, presented with the unscoped token (same grant).
    let mut borrowed = full.via(&endpoint);
    borrowed.key = unscoped.clone();
    assert_eq!(prefixes(borrowed.tool_names().await), ["ops"]);
    let answer = borrowed
        .request("tools/call", json!({"name": "k8s__k8s_rollout_pause", "arguments": {}}))
        .await;
    assert_eq!(answer.message["error"]["code"], -32602, "{}", answer.message);

    let mut grant_b = support::Mcp::new(&endpoint, KEY_B);
    grant_b.initialize().await;
    assert_eq!(prefixes(grant_b.tool_names().await), ["ops"], "[[grants]] servers");

    let metadata: Value = reqwest::get(up.url("/.well-known/oauth-protected-resource/mcp"))
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(metadata["resource"], "https://mcp.example.test/mcp");
    assert_eq!(metadata["scopes_supported"], json!(["mcp:k8s"]));
}
