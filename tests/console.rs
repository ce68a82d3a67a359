//! The operators' console over plain HTTP (the browser test, `console_browser.rs`, drives it
//! in Chromium): nothing answers without a session, state changes need the CSRF token,
//! sign-in is refused from another origin and with a wrong key, the session cookie is
//! HttpOnly and SameSite=Strict, agents' arguments are escaped, the explain form answers
//! like the CLI, signing out revokes the session, and the decision tail of one replica
//! shows another replica's decisions through Redis.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use serde_json::json;
use support::redis::RedisServer;
use support::{Deployment, KEY_A, Mcp, Proc, refusal, run, sha256_hex, write_config};

const OPERATOR_KEY: &str = "tg_operator_alice_key";

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "1m", "max": 10 }] },
    "k8s_scale": { "action": "require_approval", "approval": { "timeout": "5m", "mode": "retry" } }
  }
}"#;

fn operators() -> String {
    format!(
        "\n[[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
        sha256_hex(OPERATOR_KEY)
    )
}

/// A client that follows no redirects and keeps no cookies: each request shows exactly
/// what the server answered.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in at `admin` and returns the session cookie (`tg_console=…`).
async fn sign_in(admin: &str) -> String {
    let answer = client()
        .post(format!("{admin}/console/login"))
        .form(&[("key", OPERATOR_KEY)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookie = answer
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    cookie.split(';').next().unwrap_or_default().to_owned()
}

async fn get(url: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = client().get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.expect("GET")
}

/// The page's CSRF token (the hidden field of the sign-out form).
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_owned()
}

fn unescape(html: &str) -> String {
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Signs the session `cookie` out at `admin` with the page's `csrf` token.
async fn sign_out(admin: &str, cookie: &str, csrf: &str) -> reqwest::Response {
    client()
        .post(format!("{admin}/console/logout"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .expect("sign out")
}

/// The page at `url` with the session `cookie`.
async fn page_text(url: &str, cookie: &str) -> String {
    get(url, Some(cookie)).await.text().await.unwrap_or_default()
}

/// GETs `url` until its page contains `marker` (5 s at most).
async fn wait_for_page(url: &str, cookie: &str, marker: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = page_text(url, cookie).await;
        if page.contains(marker) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {marker:?} in {url}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_console_needs_a_session_and_csrf_tokens_and_renders_arguments_inert() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("console-http");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    support::append(&config, &operators());
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("the admin listener");

    // Nothing answers without a session: pages (with the sign-in form), events, changes.
    let page = get(&format!("{admin}/console"), None).await;
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    assert!(page.text().await.unwrap_or_default().contains("Operator key"));
    for path in ["/console/events", "/console/policy"] {
        assert_eq!(
            get(&format!("{admin}{path}"), None).await.status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let change = client()
        .post(format!("{admin}/console/approvals/apr_0"))
        .form(&[("decision", "approve"), ("csrf", "00")])
        .send()
        .await
        .expect("POST");
    assert_eq!(change.status(), StatusCode::UNAUTHORIZED);

    // A wrong key, and a sign-in posted from another site, are refused.
    let wrong = client()
        .post(format!("{admin}/console/login"))
        .form(&[("key", "not-a-key")])
        .send()
        .await
        .expect("sign in");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let forged = client()
        .post(format!("{admin}/console/login"))
        .header("origin", "https://evil.example")
        .form(&[("key", OPERATOR_KEY)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.headers().get(SET_COOKIE).is_none());

    // The right key: an HttpOnly, SameSite=Strict cookie scoped to the console.
    let answer = client()
        .post(format!("{admin}/console/login"))
        .form(&[("key", OPERATOR_KEY)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers().get(LOCATION).unwrap(), "/console");
    let set_cookie = answer.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    // Hostile sign-ins and cookies: an oversized key, garbage and half cookies, two cookies.
    let huge = client()
        .post(format!("{admin}/console/login"))
        .form(&[("key", "k".repeat(100_000).as_str())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(huge.status(), StatusCode::UNAUTHORIZED);
    for garbage in [
        "tg_console=",
        "tg_console=.",
        "tg_console=%%%.%%%",
        "tg_console=e30.AAAA",
        "tg_console",
    ] {
        assert_eq!(
            get(&format!("{admin}/console"), Some(garbage)).await.status(),
            StatusCode::UNAUTHORIZED,
            "{garbage}"
        );
    }
    // A tampered cookie is no session.
    let tampered = cookie.replacen("tg_console=e", "tg_console=f", 1);
    assert_eq!(
        get(&format!("{admin}/console"), Some(&tampered)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // An agent's call that needs approval, with markup in its arguments.
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let asked = agent
        .call(
            "k8s_scale",
            json!({"namespace": "web\u{202E}metsys-ebuk\u{202C}", "name": "<script>alert(1)</script><img src=x onerror=alert(2)>", "replicas": 3}),
        )
        .await;
    assert_eq!(
        refusal(&asked).expect("held for approval")["verdict"],
        "APPROVAL_REQUIRED"
    );

    let page = get(&format!("{admin}/console"), Some(&cookie)).await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("k8s_scale") && html.contains("alice"),
        "the queue and the operator"
    );
    assert!(
        !html.contains("<script>alert") && !html.contains("<img src=x"),
        "markup stays text"
    );
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"));
    // Issue 24, item 5: bidirectional controls are shown as marked code points, never raw
    // (raw, "web\u{202E}metsys-ebuk" reads as "webkube-system"), in the console and the CLI.
    assert!(
        !html.contains('\u{202E}') && !html.contains('\u{202C}'),
        "a raw bidi control"
    );
    assert!(html.contains(">U+202E</mark>metsys-ebuk<mark"), "marked in place");
    for args in [&["list", "--json"][..], &["list"][..]] {
        let mut all = vec!["approvals"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--url", &admin, "--key", OPERATOR_KEY]);
        let (code, out, stderr) = run(&all);
        assert_eq!(code, 0, "{stderr}");
        assert!(!out.contains('\u{202E}'), "{args:?}: a raw bidi control in {out}");
        assert!(out.contains("202e"), "{args:?}: {out}");
    }
    // Issue 26, item 9: the text list shows arguments as they are, quotes unescaped.
    let (_, text, _) = run(&["approvals", "list", "--url", &admin, "--key", OPERATOR_KEY]);
    assert!(text.contains("\"replicas\":3") && !text.contains("\\\""), "{text}");
    // The admin address's root leads to the console.
    let root = get(&format!("{admin}/"), None).await;
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers().get(LOCATION).unwrap(), "/console");

    // State changes need the session's CSRF token.
    let id = html
        .split("data-id=\"apr_")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|hex| format!("apr_{hex}"))
        .expect("a pending approval");
    for csrf in ["", "00112233445566778899aabbccddeeff", "not hex"] {
        let refused = client()
            .post(format!("{admin}/console/approvals/{id}"))
            .header("cookie", &cookie)
            .form(&[("decision", "approve"), ("reason", "ok"), ("csrf", csrf)])
            .send()
            .await
            .expect("POST");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "csrf {csrf:?}");
    }
    let csrf = csrf_of(&html);
    // Issue 24, item 4: approving shows the call whole first; only the confirmation, bound to
    // this record, approves.
    let post = |id: String, fields: Vec<(&'static str, String)>| {
        client()
            .post(format!("{admin}/console/approvals/{id}"))
            .header("cookie", &cookie)
            .form(&fields)
            .send()
    };
    let approve = |confirm: &str| {
        vec![
            ("decision", "approve".to_owned()),
            ("reason", "ok".to_owned()),
            ("csrf", csrf.clone()),
            ("confirm", confirm.to_owned()),
        ]
    };
    let confirm_token = |page: &str| {
        page.split("name=\"confirm\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a confirmation token")
            .to_owned()
    };
    let first = post(id.clone(), approve("")).await.expect("POST");
    assert_eq!(first.status(), StatusCode::OK, "a confirmation, not an approval");
    let page = first.text().await.unwrap_or_default();
    assert!(
        page.contains("Approve this call?") && page.contains("k8s_scale"),
        "{page}"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && page.contains(">U+202E</mark>"));
    let token = confirm_token(&page);
    let forged = post(id.clone(), approve("00112233445566778899aabbccddeeff"))
        .await
        .expect("POST");
    assert_eq!(forged.status(), StatusCode::OK, "a forged confirmation asks again");
    assert_ne!(token, "00112233445566778899aabbccddeeff");
    let denied = client()
        .post(format!("{admin}/console/approvals/{id}"))
        .header("cookie", &cookie)
        .form(&[("decision", "deny"), ("reason", "change freeze"), ("csrf", &csrf)])
        .send()
        .await
        .expect("POST");
    assert_eq!(denied.status(), StatusCode::SEE_OTHER);
    assert_eq!(denied.headers().get(LOCATION).unwrap(), "/console?done=denied");
    let (_, listed, _) = run(&["approvals", "list", "--json", "--url", &admin, "--key", OPERATOR_KEY]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("approvals JSON");
    assert_eq!(listed[0]["status"], "denied", "{listed}");
    assert_eq!(listed[0]["resolved_by"], "alice", "{listed}");
    assert_eq!(listed[0]["reason"], "change freeze", "{listed}");
    // The confirmation of one record approves no other: a new call needs its own.
    let other = agent
        .call("k8s_scale", json!({"namespace": "web", "name": "api", "replicas": 4}))
        .await;
    let other_id = refusal(&other).expect("asked")["approval_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let reused = post(other_id.clone(), approve(&token)).await.expect("POST");
    assert_eq!(
        reused.status(),
        StatusCode::OK,
        "another record's confirmation asks again"
    );
    let own = confirm_token(&reused.text().await.unwrap_or_default());
    let approved = post(other_id.clone(), approve(&own)).await.expect("POST");
    assert_eq!(approved.status(), StatusCode::SEE_OTHER);
    assert_eq!(approved.headers().get(LOCATION).unwrap(), "/console?done=approved");

    // The explain form gives the CLI's answer, line for line.
    let (code, cli, stderr) = run(&[
        "policy",
        "explain",
        dir.join("policy.json").to_str().unwrap(),
        "--tool",
        "k8s_rollout_pause",
        "--grant",
        "a",
        "--server",
        "k8s",
        "--args",
        r#"{"namespace": "web"}"#,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let page = page_text(
        &format!(
            "{admin}/console/policy?kind=tool&name=k8s_rollout_pause&grant=a&server=k8s&args=%7B%22namespace%22%3A+%22web%22%7D"
        ),
        &cookie,
    )
    .await;
    let shown = page
        .split("<pre class=\"explain\" aria-labelledby=\"explained\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .expect("an answer");
    assert_eq!(unescape(shown), cli.trim_end());
    assert!(page.contains("Generation") && page.contains("k8s_rollout_pause"));
    // Malformed questions get a clear answer (request URIs, and so fields, are bounded by the
    // HTTP layer and by MAX_EXPLAIN_FIELD).
    let refused = page_text(&format!("{admin}/console/policy?name=t&grant=a&args=%5B1%5D"), &cookie).await;
    assert!(refused.contains("must be a JSON object"), "{refused}");
    let refused = page_text(&format!("{admin}/console/counters?kind=sql&name=t&grant=a"), &cookie).await;
    assert!(refused.contains("kind must be tool, resource or prompt"), "{refused}");

    // Counters: read from the store without taking anything.
    let counters_url = format!("{admin}/console/counters?kind=tool&name=k8s_rollout_pause&grant=a&server=k8s&args=");
    for _ in 0..2 {
        let paused = agent
            .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
            .await;
        assert!(refusal(&paused).is_none(), "{paused}");
    }
    for expected in ["2 of 10 used", "2 of 10 used"] {
        let page = page_text(&counters_url, &cookie).await;
        assert!(page.contains(expected), "reading twice takes nothing: {page}");
    }
    agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    let page = page_text(&counters_url, &cookie).await;
    assert!(
        page.contains("3 of 10 used") && page.contains("10 per 1m per grant"),
        "{page}"
    );
    let page = page_text(
        &format!("{admin}/console/counters?name=k8s_delete_namespace&grant=a"),
        &cookie,
    )
    .await;
    assert!(page.contains("takes no counters"), "{page}");

    // The policy page follows reloads: a rejected one shows its diagnostics (file:line) while
    // generation 1 stays in force; a good one becomes generation 2.
    let policy_url = format!("{admin}/console/policy");
    let policy_file = dir.join("policy.json");
    std::fs::write(&policy_file, "{\"version\": \"1\",\n \"default\": \"maybe\"}").expect("write");
    let rejected = wait_for_page(&policy_url, &cookie, "last reload was rejected").await;
    assert!(
        rejected.contains("policy.json:2:") && rejected.contains("id=\"generation\">1<"),
        "{rejected}"
    );
    std::fs::write(&policy_file, POLICY.replace("\"max\": 10", "\"max\": 20")).expect("write");
    let installed = wait_for_page(&policy_url, &cookie, "id=\"generation\">2<").await;
    assert!(
        installed.contains("&quot;max&quot;: 20") && !installed.contains("rejected"),
        "{installed}"
    );

    // Signing out revokes the session: the old cookie opens nothing any more.
    let out = sign_out(&admin, &cookie, &csrf).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()
            .get(SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        get(&format!("{admin}/console"), Some(&cookie)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&format!("{admin}/console/events"), Some(&cookie)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn each_replica_shows_every_replicas_decisions_through_redis() {
    let redis = RedisServer::start();
    let store = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n{}\n[console]\nsession_secret = \"{}\"\n",
        redis.url(),
        operators(),
        "s".repeat(40)
    );
    let mut deployment = Deployment::start("console-tail", POLICY, &store, 2, 1);
    // Watch replica 1's tail; the edge asks replica 0 first.
    let watched = deployment.admins[1].clone();
    let cookie = sign_in(&watched).await;
    let events = get(&format!("{watched}/console/events"), Some(&cookie)).await;
    assert_eq!(events.status(), StatusCode::OK);
    let mut body = events.bytes_stream();

    let mut agent = Mcp::new(&deployment.edges[0], KEY_A);
    agent.initialize().await;
    agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    agent.call("k8s_delete_namespace", json!({"namespace": "prod"})).await;

    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(seen.contains("data-verdict=\"ALLOW\"") && seen.contains("data-verdict=\"DENY\"")) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no decisions in replica 1's tail within 10 s:\n{seen}"));
        let Some(Ok(chunk)) = chunk else {
            panic!("the event stream ended:\n{seen}")
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: decision"), "{seen}");
    assert!(seen.contains("k8s_delete_namespace") && seen.contains("k8s_rollout_pause"));
    // Counters are read from Redis, where the edge's decisions took them.
    let counters = page_text(
        &format!("{watched}/console/counters?name=k8s_rollout_pause&grant=a&server=k8s"),
        &cookie,
    )
    .await;
    assert!(counters.contains("1 of 10 used"), "{counters}");

    // Each row names the replica that decided (host/pid): replica 0, not the watched one.
    let replica0 = format!("/{}</dd>", deployment.process("decision-0").pid());
    assert!(seen.contains(&replica0), "decided by replica 0 ({replica0}):\n{seen}");

    // With one session_secret, the session works on every replica; signing out on one
    // revokes it on all of them.
    let other = deployment.admins[0].clone();
    let page = get(&format!("{other}/console"), Some(&cookie)).await;
    assert_eq!(page.status(), StatusCode::OK, "the session works on replica 0 too");
    let csrf = csrf_of(&page.text().await.unwrap());
    let out = sign_out(&other, &cookie, &csrf).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = get(&format!("{watched}/console"), Some(&cookie)).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica 1 still accepts a session signed out on replica 0: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 24, items 2 and 3: a session lasts only while its operator's key is in force, and
/// a sign-out is kept in the store, so a replica that restarts (or starts later) refuses the
/// signed-out session too.
#[tokio::test]
async fn sessions_end_with_their_operators_key_and_sign_outs_survive_restarts() {
    let redis = RedisServer::start();
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("console-restart");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    let store = format!(
        "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\n[console]\nsession_secret = \"{}\"\n",
        redis.url(),
        "s".repeat(40)
    );
    support::append(&config, &format!("{store}{}", operators()));
    let start = || Proc::start("decision", &["decision", "--config", config.to_str().unwrap()], &[]);
    let status_of =
        |admin: String, cookie: String| async move { get(&format!("{admin}/console"), Some(&cookie)).await.status() };

    let replica = start();
    let admin = replica.admin_url.clone().expect("admin");
    let signed_out = sign_in(&admin).await;
    let kept = sign_in(&admin).await;
    let page = page_text(&format!("{admin}/console"), &signed_out).await;
    assert_eq!(
        sign_out(&admin, &signed_out, &csrf_of(&page)).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        status_of(admin.clone(), signed_out.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    drop(replica);

    // A restarted replica has an empty memory: the store remembers the sign-out.
    let replica = start();
    let admin = replica.admin_url.clone().expect("admin");
    assert_eq!(
        status_of(admin.clone(), signed_out.clone()).await,
        StatusCode::UNAUTHORIZED,
        "a signed-out session came back after a restart"
    );
    assert_eq!(status_of(admin.clone(), kept.clone()).await, StatusCode::OK);
    drop(replica);

    // The operator's key is rotated: sessions signed in with the old key end, even though
    // their cookies are still signed with the same session secret and name "alice".
    let text = std::fs::read_to_string(&config).expect("config");
    let rotated = text.replace(&sha256_hex(OPERATOR_KEY), &sha256_hex("tg_operator_alice_new_key"));
    assert_ne!(text, rotated);
    std::fs::write(&config, rotated).expect("write");
    let replica = start();
    let admin = replica.admin_url.clone().expect("admin");
    assert_eq!(
        status_of(admin.clone(), kept.clone()).await,
        StatusCode::UNAUTHORIZED,
        "a session outlived its operator's key"
    );
    let approve = client()
        .post(format!(
            "{admin}/console/approvals/apr_00000000000000000000000000000000"
        ))
        .header("cookie", &kept)
        .form(&[("decision", "approve"), ("csrf", "00")])
        .send()
        .await
        .expect("POST");
    assert_eq!(approve.status(), StatusCode::UNAUTHORIZED);
}

/// Issue 24, item 11: failed sign-ins are throttled per address (the first five free, then
/// blocks of 1 s, 2 s, … up to a minute, even for the right key), and a success clears them.
#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("console-throttle");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    support::append(&config, &operators());
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("admin");
    let try_key = |key: &'static str| {
        client()
            .post(format!("{admin}/console/login"))
            .form(&[("key", key)])
            .send()
    };
    for _ in 0..5 {
        assert_eq!(try_key("wrong").await.expect("send").status(), StatusCode::UNAUTHORIZED);
    }
    let blocked = try_key("wrong").await.expect("send");
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        blocked.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        blocked
            .text()
            .await
            .unwrap_or_default()
            .contains("too many failed sign-ins")
    );
    let right = try_key(OPERATOR_KEY).await.expect("send");
    assert_eq!(
        right.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "not even checked while blocked"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        try_key(OPERATOR_KEY).await.expect("send").status(),
        StatusCode::SEE_OTHER
    );
    // The success cleared the count: the next failure is free again.
    assert_eq!(try_key("wrong").await.expect("send").status(), StatusCode::UNAUTHORIZED);
}

/// Issue 24, item 9: the open pages of a replica share one read of the approvals queue
/// (not one each, every 500 ms), and the queue shows a bounded preview of each entry's
/// arguments (whole on the confirmation page).
#[tokio::test]
async fn open_pages_share_one_read_of_the_queue_and_entries_are_bounded() {
    let redis = RedisServer::start();
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("console-shared-read");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    support::append(
        &config,
        &format!(
            "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n{}\n[console]\nsession_secret = \"{}\"\n",
            redis.url(),
            operators(),
            "s".repeat(40)
        ),
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("admin");
    let cookie = sign_in(&admin).await;

    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let long = "y".repeat(10_000);
    agent
        .call("k8s_scale", json!({"namespace": "web", "name": long, "replicas": 3}))
        .await;
    let page = page_text(&format!("{admin}/console"), &cookie).await;
    assert!(
        page.contains("bytes in all"),
        "a preview, not the whole: {} bytes",
        page.len()
    );
    assert!(!page.contains(&long), "the queue does not carry the whole arguments");

    // Count the store's reads of the queue while six pages are open for two seconds.
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli monitor");
    let stdout = monitor.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("\"list\""))
            .count()
    });
    let mut pages = Vec::new();
    for _ in 0..6 {
        let events = get(&format!("{admin}/console/events"), Some(&cookie)).await;
        assert_eq!(events.status(), StatusCode::OK);
        pages.push(events);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(pages);
    let _ = monitor.kill();
    let _ = monitor.wait();
    let reads = lines.join().expect("monitor");
    // About one read per 500 ms, plus one when each page opens; six pages reading on their
    // own would make 24 or more.
    assert!(
        (1..=12).contains(&reads),
        "{reads} reads of the queue in 2 s with 6 pages open"
    );
}

/// Issue 25, tests: with `audit.required`, a journal that cannot be written refuses every
/// call with the reason, the node is not ready, and it recovers by itself once the journal
/// can be written again. The console's tail shows the refused call as it was answered (a
/// refusal by the `audit` rule), not as the verdict the policy gave before it.
#[tokio::test]
async fn required_audit_refuses_while_the_journal_cannot_be_written_and_the_tail_says_so() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("console-required");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], POLICY, "");
    let journal = dir.join("journal");
    support::append(
        &config,
        &format!(
            "{}\n[audit]\njournal_dir = \"{}\"\nrequired = true\n",
            operators(),
            journal.display()
        ),
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("admin");
    let cookie = sign_in(&admin).await;
    let events = get(&format!("{admin}/console/events"), Some(&cookie)).await;
    assert_eq!(events.status(), StatusCode::OK);
    let mut body = events.bytes_stream();
    let ready = || async { reqwest::get(up.url("/readyz")).await.expect("readyz").status().as_u16() };

    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let pause = json!({"namespace": "web", "name": "api"});
    let first = agent.call("k8s_rollout_pause", pause.clone()).await;
    assert!(refusal(&first).is_none(), "recorded and allowed: {first}");
    assert_eq!(ready().await, 200);

    // The journal's directory is moved away: the open segment is no longer where the
    // journal keeps it, so nothing can be recorded.
    let away = dir.join("journal.away");
    std::fs::rename(&journal, &away).expect("move the journal away");
    let refused = agent.call("k8s_rollout_pause", pause.clone()).await;
    let details = refusal(&refused).unwrap_or_else(|| panic!("refused while unrecorded: {refused}"));
    assert_eq!(details["verdict"], "DENY", "{details}");
    let reason = details["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("calls are refused until their decisions can be recorded"),
        "{details}"
    );
    let refused_id = details["decision_id"].as_str().expect("decision id").to_owned();
    assert_eq!(ready().await, 503, "a node that refuses every call is not ready");

    // The tail shows that decision as refused by the audit rule.
    let mut seen = String::new();
    let row = format!("data-id=\"{refused_id}\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&row) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("the refused decision is not in the tail:\n{seen}"));
        let Some(Ok(chunk)) = chunk else {
            panic!("the event stream ended:\n{seen}")
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let at = seen.find(&row).expect("row");
    let tr = &seen[seen[..at].rfind("<tr").unwrap_or(0)..];
    let tr = &tr[..tr.find("</tr>").unwrap_or(tr.len())];
    assert!(tr.contains("data-verdict=\"DENY\""), "shown as answered: {tr}");
    assert!(tr.contains("audit"), "by the audit rule: {tr}");
    // And counted as answered.
    let metrics = support::get_text(&up.url("/metrics")).await;
    assert!(
        metrics.contains("tollgate_decisions_total{verdict=\"DENY\",server=\"k8s\",tool=\"_unlisted\"} 1"),
        "{metrics}"
    );

    // The journal comes back: the node is ready again by itself, and calls are recorded.
    std::fs::rename(&away, &journal).expect("move the journal back");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ready().await != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready again without a call");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = agent.call("k8s_rollout_pause", pause).await;
    assert!(refusal(&again).is_none(), "recorded again: {again}");
    up.terminate();
    let (code, out, err) = run(&["audit", "verify", journal.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the chain holds: 2 records"),
        "the refused call left no record: {out}"
    );
}
