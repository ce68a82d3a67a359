//! The operators' web console at `/console` on `decision.admin_listen`, next to the
//! operators' API: sign-in with an operator key, the cluster's approvals queue (live, approve
//! or deny with a reason), a live tail of every replica's decisions with filters, and the
//! policy in force with its reload status and an explain form.
//!
//! Server-rendered HTML; the live parts arrive over server-sent events as HTML fragments
//! rendered (and escaped) here, and a little plain JavaScript (`console.js`, embedded like the
//! style sheet) puts them in place. The Content-Security-Policy allows only this origin's
//! script and style, so markup that escaped escaping still could not run.
//!
//! Sessions are HMAC-signed cookies (HttpOnly, SameSite=Strict, `Path=/console`) naming the
//! operator, a fingerprint of the key they signed in with (checked against the operators in
//! force on every request), a session id and an expiry; every state change also needs the session's CSRF
//! token (an HMAC of the session id). With `console.session_secret` set alike on every
//! replica, a session works on all of them; signing out revokes the session on the replica
//! that served it and announces it on the store's broadcast channel, so every replica
//! listening revokes it too, and clears the cookie.

mod pages;
mod throttle;

pub(crate) use pages::is_invisible_control;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_decision::{Engine, Operators, PolicyStatus, check_reason};
use tollgate_limiter::Resolution;

use crate::config::ConsoleSettings;

const COOKIE: &str = "tg_console";
/// Sessions remembered as signed out, per replica; the oldest are forgotten beyond it.
const MAX_REVOKED: usize = 10_000;
/// How often an open page's approvals are compared with the store's.
const APPROVALS_EVERY: Duration = Duration::from_millis(500);
/// Events waiting for a slow page; decisions beyond it are skipped for that page.
const EVENT_BUFFER: usize = 256;
/// Longest operator key accepted at sign-in.
const MAX_KEY_BYTES: usize = 512;

const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

/// The console's state, shared by its handlers.
pub struct Console {
    engine: Arc<Engine>,
    operators: Operators,
    status: Arc<PolicyStatus>,
    key: Vec<u8>,
    ttl: Duration,
    secure_cookie: bool,
    trace_url: Option<String>,
    /// Signed-out session ids and when they would have expired (seconds since the epoch).
    revoked: Mutex<HashMap<String, u64>>,
    /// Where sign-outs are announced to the other replicas (with the decision tail).
    channel: Option<Arc<dyn tollgate_limiter::Broadcast>>,
    /// Failed sign-ins per client address.
    throttle: throttle::SignInThrottle,
    /// The approvals queue as last read from the store: one read per replica every
    /// [`APPROVALS_EVERY`] while any page is open, shared by all of them (`None` until the
    /// first read).
    queue: tokio::sync::watch::Sender<Option<Arc<Vec<tollgate_limiter::Approval>>>>,
    /// Asks the queue's reader to read now (a decision asked for or used an approval).
    queue_poke: tokio::sync::Notify,
    queue_reading: std::sync::atomic::AtomicBool,
}

/// A sign-out, announced to every replica.
#[derive(Serialize, Deserialize)]
struct SignedOut {
    console_signed_out: String,
    until: u64,
}

/// A signed-in operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// Operator name.
    o: String,
    /// Which of the operator's keys signed in: an HMAC of its stored hash (hex, 16 bytes).
    /// A session lasts only while the operators in force still hold that key.
    k: String,
    /// Session id.
    s: String,
    /// Expiry, seconds since the Unix epoch.
    e: u64,
}

impl Console {
    /// Checks `settings`: a configured secret must be at least 32 characters, a trace URL
    /// must contain `{trace_id}`.
    pub fn new(
        settings: &ConsoleSettings,
        engine: Arc<Engine>,
        operators: Operators,
        status: Arc<PolicyStatus>,
    ) -> anyhow::Result<Console> {
        settings.check()?;
        let key = match &settings.session_secret {
            Some(secret) => secret.0.as_bytes().to_vec(),
            None => {
                let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
                key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                key
            }
        };
        Ok(Console {
            engine,
            operators,
            status,
            key,
            ttl: Duration::from_secs(settings.session_ttl_secs),
            secure_cookie: settings.secure_cookie,
            trace_url: settings.trace_url.clone(),
            revoked: Mutex::default(),
            channel: None,
            throttle: throttle::SignInThrottle::default(),
            queue: tokio::sync::watch::channel(None).0,
            queue_poke: tokio::sync::Notify::new(),
            queue_reading: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Hears sign-outs announced by other replicas (and announces this one's) on the decision
    /// tail's channel, when the tail is on.
    pub fn start(mut self) -> Arc<Console> {
        self.channel = self.engine.tail().map(|tail| tail.channel().clone());
        let console = Arc::new(self);
        if let Some(channel) = &console.channel {
            let mut heard = channel.subscribe();
            let weak = Arc::downgrade(&console);
            tokio::spawn(async move {
                loop {
                    let message = match heard.recv().await {
                        Ok(message) => message,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    let Some(console) = weak.upgrade() else { return };
                    if message.starts_with('{')
                        && let Ok(out) = serde_json::from_str::<SignedOut>(&message)
                        && out.console_signed_out.len() <= 64
                    {
                        console.remember_revoked(out.console_signed_out, out.until);
                    }
                }
            });
        }
        console
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    fn cookie_for(&self, session: &Session) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).unwrap_or_default());
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&[b"session\0", payload.as_bytes()]).finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    /// The session a request's cookie carries, if it is signed, unexpired, its operator's key
    /// still in force, and not signed out (here, or anywhere in the cluster: the store keeps
    /// sign-outs until the session would have expired; when the store cannot tell, no).
    async fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))?;
        let (payload, tag) = value.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(&[b"session\0", payload.as_bytes()]).verify_slice(&tag).ok()?;
        let session: Session = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        if session.e <= now_secs() {
            return None;
        }
        // The operator, with the key they signed in with, must still be configured: removing
        // or rotating a key ends its sessions (after a restart, on every replica).
        if !self
            .operators
            .key_hashes(&session.o)
            .any(|hash| self.key_fingerprint(hash) == session.k)
        {
            return None;
        }
        if self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&session.s)
        {
            return None;
        }
        if let Some(channel) = &self.channel {
            match channel.is_session_revoked(&session.s).await {
                Ok(false) => {}
                Ok(true) => {
                    self.remember_revoked(session.s.clone(), session.e);
                    return None;
                }
                Err(e) => {
                    tracing::warn!("console: cannot check whether a session was signed out, refusing it: {e}");
                    return None;
                }
            }
        }
        Some(session)
    }

    /// What a session records of the key its operator signed in with: keyed with the
    /// session secret, so a cookie reveals nothing of the key's hash.
    fn key_fingerprint(&self, key_hash: &[u8; 32]) -> String {
        hex::encode(&self.mac(&[b"operator-key\0", key_hash]).finalize().into_bytes()[..16])
    }

    /// The token that confirms approving `approval` as shown: an HMAC of the session, the
    /// record's id and its binding digest (its caller and exact arguments).
    fn confirmation(&self, session: &Session, approval: &tollgate_limiter::Approval) -> String {
        hex::encode(&self.confirmation_mac(session, approval).finalize().into_bytes()[..16])
    }

    fn confirmation_ok(&self, session: &Session, approval: &tollgate_limiter::Approval, presented: &[u8]) -> bool {
        presented.len() == 16
            && self
                .confirmation_mac(session, approval)
                .verify_truncated_left(presented)
                .is_ok()
    }

    fn confirmation_mac(&self, session: &Session, approval: &tollgate_limiter::Approval) -> Hmac<Sha256> {
        self.mac(&[
            b"confirm\0",
            session.s.as_bytes(),
            b"\0",
            approval.id.as_bytes(),
            b"\0",
            approval.digest.as_bytes(),
        ])
    }

    fn csrf(&self, session: &Session) -> String {
        hex::encode(&self.mac(&[b"csrf\0", session.s.as_bytes()]).finalize().into_bytes()[..16])
    }

    fn csrf_ok(&self, session: &Session, presented: &str) -> bool {
        let Ok(presented) = hex::decode(presented) else {
            return false;
        };
        let mac = self.mac(&[b"csrf\0", session.s.as_bytes()]);
        mac.verify_truncated_left(&presented).is_ok() && presented.len() == 16
    }

    fn set_cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("tg_console=; Path=/console; Max-Age=0"))
    }

    /// Revokes `session` here, records it in the store (for replicas that restart or start
    /// later) and announces it to the other replicas. An error when the store could not
    /// record it.
    async fn revoke(&self, session: &Session) -> Result<(), String> {
        self.remember_revoked(session.s.clone(), session.e);
        if let Some(channel) = &self.channel {
            channel
                .revoke_session(&session.s, session.e.saturating_mul(1000))
                .await
                .map_err(|e| e.to_string())?;
            let announcement = SignedOut {
                console_signed_out: session.s.clone(),
                until: session.e,
            };
            if let Ok(message) = serde_json::to_string(&announcement)
                && let Err(e) = channel.publish(message).await
            {
                tracing::warn!("console: cannot announce a sign-out to the other replicas: {e}");
            }
        }
        Ok(())
    }

    fn remember_revoked(&self, session_id: String, until: u64) {
        let now = now_secs();
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.retain(|_, expiry| *expiry > now);
        if revoked.len() >= MAX_REVOKED
            && let Some(oldest) = revoked.iter().min_by_key(|(_, e)| **e).map(|(s, _)| s.clone())
        {
            revoked.remove(&oldest);
        }
        revoked.insert(session_id, until);
    }

    /// The shared approvals queue, for one open page: starts the reader when it is the
    /// first page.
    fn follow_queue(self: &Arc<Console>) -> tokio::sync::watch::Receiver<Option<Arc<Vec<tollgate_limiter::Approval>>>> {
        use std::sync::atomic::Ordering;
        let receiver = self.queue.subscribe();
        if !self.queue_reading.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut last = String::new();
                loop {
                    let Some(console) = weak.upgrade() else { return };
                    if console.queue.receiver_count() == 0 {
                        console.queue_reading.store(false, Ordering::Release);
                        // A page that subscribed meanwhile, and saw the reader still on,
                        // would wait in vain: take the reader on again for it.
                        if console.queue.receiver_count() == 0 || console.queue_reading.swap(true, Ordering::AcqRel) {
                            return;
                        }
                    }
                    match console.engine.approvals().list().await {
                        Ok(all) => {
                            // Sent when an approval appears or changes state (ages tick in the page).
                            let state: String = all.iter().map(|a| format!("{}:{:?};", a.id, a.status)).collect();
                            if state != last {
                                last = state;
                                console.queue.send_replace(Some(Arc::new(all)));
                            }
                        }
                        Err(e) => tracing::debug!("console: cannot read the approvals: {e}"),
                    }
                    // Holds the console only until the next read.
                    let poked = console.queue_poke.notified();
                    tokio::select! {
                        _ = tokio::time::sleep(APPROVALS_EVERY) => {}
                        _ = poked => {}
                    }
                }
            });
        }
        receiver
    }

    fn trace_link(&self, trace_id: &str) -> Option<String> {
        let template = self.trace_url.as_ref()?;
        (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| template.replace("{trace_id}", trace_id))
    }
}

fn now_secs() -> u64 {
    tollgate_limiter::wall_clock_ms() / 1000
}

/// The console's routes, under `/console`.
pub fn router(console: Arc<Console>) -> axum::Router {
    axum::Router::new()
        .route("/console", get(home))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        // The address's root is where a browser pointed at `admin_listen` lands.
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/events", get(events))
        .route("/console/approvals/{id}", post(resolve))
        .route("/console/policy", get(policy))
        .route("/console/tools", get(tools))
        .route("/console/tools/{id}", post(resolve_pin))
        .route("/console/counters", get(counters))
        .route("/console/candidate", get(candidate))
        .route(
            "/console/assets/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/console/assets/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Every console answer: only this origin's script and style, no framing, no caching of
/// pages, no sniffing, no referrer beyond this origin (a referrer policy of no-referrer
/// would make browsers send `Origin: null` on the sign-in form, which [`same_origin`] refuses).
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// 401 with the sign-in form, for pages opened without a session.
fn sign_in_required(message: &str) -> Response {
    (StatusCode::UNAUTHORIZED, pages::login(Some(message))).into_response()
}

/// 401 for the event stream and state changes without a session.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "sign in first: /console/login",
    )
        .into_response()
}

async fn login_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if console.session(&headers).await.is_some() {
        return Redirect::to("/console").into_response();
    }
    pages::login(None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    key: String,
}

/// Whether a form POST comes from this console's own pages: browsers send `Origin` on
/// POSTs, and it must name the host the request was sent to (a sign-in form on another
/// site must not sign a browser in).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

async fn login(
    State(console): State<Arc<Console>>,
    peer: Option<axum::Extension<tollgate_edge::PeerAddr>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin sign-in refused").into_response();
    }
    let client = peer.map(|axum::Extension(tollgate_edge::PeerAddr(addr))| addr.ip());
    let now = std::time::Instant::now();
    if let Some(ip) = client
        && let Err(wait) = console.throttle.check(ip, now)
    {
        return too_many_sign_ins(wait);
    }
    let refused = |message: &str| {
        tracing::info!(target: "tollgate::audit", client = ?client, "console sign-in refused: {message}");
        let wait = client.map_or(Duration::ZERO, |ip| console.throttle.failed(ip, now));
        if wait.is_zero() {
            (StatusCode::UNAUTHORIZED, pages::login(Some(message))).into_response()
        } else {
            too_many_sign_ins(wait)
        }
    };
    if form.key.len() > MAX_KEY_BYTES {
        return refused("unknown operator key");
    }
    let key = Some(form.key.trim()).filter(|k| !k.is_empty());
    let (operator, key_hash) = match console.operators.who_with_key(key) {
        Ok(found) => found,
        Err(tollgate_decision::OperatorRefusal::Missing) => {
            return (StatusCode::UNAUTHORIZED, pages::login(Some("enter your operator key"))).into_response();
        }
        Err(refusal) => return refused(refusal.message()),
    };
    if let Some(ip) = client {
        console.throttle.succeeded(ip);
    }
    let session = Session {
        o: operator,
        k: console.key_fingerprint(&key_hash),
        s: uuid::Uuid::new_v4().simple().to_string(),
        e: now_secs() + console.ttl.as_secs(),
    };
    tracing::info!(target: "tollgate::audit", operator = ?session.o, "console sign-in");
    let mut response = Redirect::to("/console").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        console.set_cookie(&console.cookie_for(&session), console.ttl.as_secs()),
    );
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let Some(session) = console.session(&headers).await else {
        return unauthorized();
    };
    if !console.csrf_ok(&session, &form.csrf) {
        return csrf_refused();
    }
    if let Err(e) = console.revoke(&session).await {
        tracing::error!(target: "tollgate::audit", operator = ?session.o, "console sign-out not recorded in the store: {e}");
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "The sign-out could not be recorded in the store, so other replicas would still accept this \
             session: sign out again once the store is back (this browser's cookie is cleared).",
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::SET_COOKIE, console.set_cookie("", 0));
        return response;
    }
    tracing::info!(target: "tollgate::audit", operator = ?session.o, "console sign-out");
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, console.set_cookie("", 0));
    response
}

/// 429 for an address with too many failed sign-ins, saying how long to wait.
fn too_many_sign_ins(wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let message = format!("too many failed sign-ins from this address: try again in {secs} s");
    let mut response = (StatusCode::TOO_MANY_REQUESTS, pages::login(Some(&message))).into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "missing or invalid CSRF token: reload the page and try again",
    )
        .into_response()
}

#[derive(Deserialize, Default)]
struct HomeQuery {
    #[serde(default)]
    done: Option<String>,
}

async fn home(State(console): State<Arc<Console>>, headers: HeaderMap, Query(query): Query<HomeQuery>) -> Response {
    let Some(session) = console.session(&headers).await else {
        return sign_in_required("sign in to open the console");
    };
    let approvals = console.engine.approvals().list().await;
    let notice = query.done.as_deref().and_then(pages::notice);
    let recent = console.engine.tail().map(|t| t.recent()).unwrap_or_default();
    pages::home(&console, &session, approvals, &recent, notice).into_response()
}

#[derive(Deserialize)]
struct ResolveForm {
    #[serde(default)]
    csrf: String,
    /// The confirmation token of an approval (see [`Console::confirmation`]); without it an
    /// approve answers with the confirmation page.
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
}

impl Console {
    /// An approve-or-`no` form: the session, its CSRF token, the decision and the reason,
    /// checked (the session, whether it approves, the reason), or the answer refusing it.
    async fn resolve_form<'f>(
        &self,
        headers: &HeaderMap,
        form: &'f ResolveForm,
        no: &str,
    ) -> Result<(Session, bool, &'f str), Box<Response>> {
        let Some(session) = self.session(headers).await else {
            return Err(Box::new(unauthorized()));
        };
        if !self.csrf_ok(&session, &form.csrf) {
            return Err(Box::new(csrf_refused()));
        }
        let approve = match form.decision.as_str() {
            "approve" => true,
            d if d == no => false,
            _ => {
                let text = format!("decision must be approve or {no}");
                return Err(Box::new((StatusCode::BAD_REQUEST, text).into_response()));
            }
        };
        let reason = form.reason.trim();
        if let Err(message) = check_reason(reason) {
            return Err(Box::new((StatusCode::BAD_REQUEST, message).into_response()));
        }
        Ok((session, approve, reason))
    }
}

async fn resolve(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Response {
    let (session, approve, reason) = match console.resolve_form(&headers, &form, "deny").await {
        Ok(checked) => checked,
        Err(refused) => return *refused,
    };
    if approve {
        // An approval is confirmed on a page that shows the call whole, so a click that
        // landed on the wrong entry (or an entry that moved) approves nothing by itself.
        let record = match console.engine.approvals().get(&id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Redirect::to("/console?done=missing").into_response(),
            Err(e) => {
                tracing::warn!("console: cannot read an approval: {e}");
                return Redirect::to("/console?done=unavailable").into_response();
            }
        };
        if record.status != tollgate_limiter::ApprovalStatus::Pending {
            return Redirect::to("/console?done=not_pending").into_response();
        }
        let expected = console.confirmation(&session, &record);
        let presented = hex::decode(form.confirm.trim()).unwrap_or_default();
        if !console.confirmation_ok(&session, &record, &presented) {
            let csrf = console.csrf(&session);
            return pages::confirm(&session, &csrf, &record, reason, &expected).into_response();
        }
    }
    let outcome = console.engine.resolve_approval(&id, approve, &session.o, reason).await;
    console.queue_poke.notify_one();
    let done = match outcome {
        Ok(Resolution::Resolved(_)) => {
            if approve {
                "approved"
            } else {
                "denied"
            }
        }
        Ok(Resolution::NotFound) => "missing",
        Ok(Resolution::NotPending(_)) => "not_pending",
        Err(e) => {
            tracing::warn!("console: cannot resolve an approval: {e}");
            "unavailable"
        }
    };
    Redirect::to(&format!("/console?done={done}")).into_response()
}

/// Server-sent events for an open page: `approvals` (the rendered queue, when it changes:
/// the replica's one reader compares it every [`APPROVALS_EVERY`], and at once when a
/// decision that asked for an approval is heard) and `decision` (one rendered row per
/// decision).
async fn events(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = console.session(&headers).await else {
        return unauthorized();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(EVENT_BUFFER);
    let feed = console.engine.tail().cloned();
    // The page was rendered with the queue as it is now: it hears only what changes from
    // here on. The reader looks at once, so a change it has not seen yet is not missed.
    let mut queue = console.follow_queue();
    console.queue_poke.notify_one();
    tokio::spawn(async move {
        let mut decisions = feed.as_ref().map(|tail| tail.subscribe());
        let mut ticker = tokio::time::interval(APPROVALS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    // Expired or revoked (here or on another replica) since the page opened.
                    if console.session(&headers).await.is_none() {
                        let _ = tx.send(Event::default().event("signed-out").data("")).await;
                        return;
                    }
                }
                changed = queue.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(all) = queue.borrow_and_update().clone() else { continue };
                    let rendered = pages::approvals(&console, &session, &all);
                    if tx.send(Event::default().event("approvals").data(one_line(&rendered))).await.is_err() {
                        return;
                    }
                }
                heard = async {
                    match decisions.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match heard {
                        Ok(record) => {
                            // A call asked for (or used) an approval: look at the queue now
                            // rather than at the next tick.
                            if record.verdict == "APPROVAL_REQUIRED" || !record.approval_id.is_empty() {
                                console.queue_poke.notify_one();
                            }
                            let row = pages::decision_row(&console, &record);
                            let event = Event::default().event("decision").data(one_line(&row));
                            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(event) {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => decisions = None,
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// SSE data lines may not hold line breaks: a fragment's own become character references,
/// which read the same in HTML text and attribute values (fragments hold no script or style).
fn one_line(html: &str) -> String {
    html.replace('\r', "&#13;").replace('\n', "&#10;")
}

#[derive(Deserialize, Default)]
pub(crate) struct ExplainQuery {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub server: String,
    #[serde(default)]
    pub grant: String,
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub args: String,
}

impl ExplainQuery {
    /// Whether the form was sent (a page opened without a question shows the form only).
    fn asked(&self) -> bool {
        !self.name.is_empty() || !self.grant.is_empty()
    }
}

/// Longest explain input field.
const MAX_EXPLAIN_FIELD: usize = 64 * 1024;

async fn tools(State(console): State<Arc<Console>>, headers: HeaderMap, Query(query): Query<HomeQuery>) -> Response {
    let Some(session) = console.session(&headers).await else {
        return sign_in_required("sign in to open the console");
    };
    let listed = console.engine.list_pins().await;
    let notice = query.done.as_deref().and_then(pages::pin_notice);
    pages::tools(&console, &session, listed, notice).into_response()
}

/// The candidate (shadow) policy and what it would change.
async fn candidate(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = console.session(&headers).await else {
        return sign_in_required("sign in to open the console");
    };
    pages::candidate(&console, &session).into_response()
}

/// Approves or rejects one pinned definition (the Tools page's forms).
async fn resolve_pin(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Response {
    let (session, approve, reason) = match console.resolve_form(&headers, &form, "reject").await {
        Ok(checked) => checked,
        Err(refused) => return *refused,
    };
    let done = match console
        .engine
        .resolve_pins(std::slice::from_ref(&id), false, approve, &session.o, reason)
        .await
    {
        Ok((resolved, _)) if resolved.is_empty() => "missing",
        Ok(_) if approve => "approved",
        Ok(_) => "rejected",
        Err(e) => {
            tracing::warn!("console: cannot resolve a pin: {e}");
            "unavailable"
        }
    };
    Redirect::to(&format!("/console/tools?done={done}")).into_response()
}

async fn policy(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<ExplainQuery>,
) -> Response {
    let Some(session) = console.session(&headers).await else {
        return sign_in_required("sign in to open the console");
    };
    let (answer, pin) = match query.asked() {
        true => {
            let (answer, pin) = explain(&console, &query).await;
            (Some(answer), pin)
        }
        false => (None, None),
    };
    pages::policy(&console, &session, &query, answer, pin).into_response()
}

async fn counters(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<ExplainQuery>,
) -> Response {
    let Some(session) = console.session(&headers).await else {
        return sign_in_required("sign in to open the console");
    };
    let answer = if query.asked() {
        match question(&query) {
            Ok((kind, arguments)) => {
                let agent = if query.agent.is_empty() {
                    &query.grant
                } else {
                    &query.agent
                };
                let call = tollgate_policy::Call {
                    server: &query.server,
                    tool: &query.name,
                    grant: &query.grant,
                    agent,
                    session: "",
                    arguments: &arguments,
                    annotations: Default::default(),
                };
                Some(console.engine.counter_use(&call, kind).await)
            }
            Err(message) => Some(Err(message)),
        }
    } else {
        None
    };
    pages::counters(&console, &session, &query, answer).into_response()
}

/// The explain and counters forms' question: the kind and the arguments, checked.
fn question(query: &ExplainQuery) -> Result<(tollgate_policy::Kind, serde_json::Value), String> {
    let fields = [&query.name, &query.server, &query.grant, &query.agent, &query.args];
    if fields.iter().any(|f| f.len() > MAX_EXPLAIN_FIELD) {
        return Err(format!("each field is at most {MAX_EXPLAIN_FIELD} bytes"));
    }
    let kind = match query.kind.as_str() {
        "" | "tool" => tollgate_policy::Kind::Tool,
        "resource" => tollgate_policy::Kind::Resource,
        "prompt" => tollgate_policy::Kind::Prompt,
        _ => return Err("kind must be tool, resource or prompt".into()),
    };
    if query.name.is_empty() || query.grant.is_empty() {
        return Err("name the tool (resource, prompt) and the grant".into());
    }
    Ok((kind, crate::explain::arguments(kind, Some(&query.args))?))
}

/// The explain form's answer: the same lines as `tollgate policy explain`, or what is wrong
/// with the question.
/// The explain answer (the same lines as `tollgate policy explain`), and the pin state of
/// the tool or prompt asked about (which only a replica, with the store, can say).
async fn explain(console: &Console, query: &ExplainQuery) -> (Result<Vec<String>, String>, Option<String>) {
    let (kind, arguments) = match question(query) {
        Ok(q) => q,
        Err(e) => return (Err(e), None),
    };
    let policy = console.engine.policy();
    let lines = crate::explain::explain(
        &policy,
        &query.server,
        (kind, &query.name),
        &query.grant,
        &query.agent,
        &arguments,
    );
    let subject = match kind {
        tollgate_policy::Kind::Tool => Some(tollgate_decision::proto::SubjectKind::Tool),
        tollgate_policy::Kind::Prompt => Some(tollgate_decision::proto::SubjectKind::Prompt),
        tollgate_policy::Kind::Resource => None,
    };
    let pin = match subject {
        Some(subject) => Some(console.engine.pin_line(&query.server, subject, &query.name).await),
        None => None,
    };
    (Ok(lines), pin)
}
