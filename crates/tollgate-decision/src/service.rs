//! The gRPC face of the engine: `tollgate.v1.DecisionService` plus `grpc.health.v1`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::listener::{self, ListenerLimits};
use crate::proto::decision_service_server::{DecisionService, DecisionServiceServer};
use crate::proto::{
    ApprovalUpdate, DecideBatch, DecideRequest, Decision, DecisionBatch, DecisionItem, ListApprovalsRequest,
    ListApprovalsResponse, ResolveApprovalRequest, ResolveApprovalResponse, VisibleToolsRequest, VisibleToolsResponse,
    WaitApprovalRequest,
};
use crate::{Engine, MAX_MESSAGE_BYTES, Operators, approval_message, check_reason};
use tollgate_limiter::{ApprovalStatus, Resolution};

/// Metadata that carries an operator key on the operators' gRPC calls.
pub const OPERATOR_KEY_METADATA: &str = "x-tollgate-operator-key";

/// Longest request id, server, grant, agent or session id a `Decide` may carry.
const MAX_FIELD_BYTES: usize = 256;

/// `[decision]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSettings {
    /// gRPC listen address. Default `127.0.0.1:50051`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Policy file (JSON, YAML or TOML). Relative paths resolve against the config file.
    pub policy: PathBuf,
    /// A candidate policy every decision is also evaluated against (its verdict recorded,
    /// never enforced); reloaded like `policy`.
    #[serde(default)]
    pub shadow_policy: Option<PathBuf>,
    /// How often the policy file is checked for changes, in milliseconds; 0 disables reload.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
    /// Deadline for one counter-store round trip, in milliseconds.
    #[serde(default = "default_store_timeout_ms")]
    pub store_timeout_ms: u64,
    /// Counter keys this replica remembers as full until a known time, to refuse calls
    /// against them without a store round trip (`sliding_log` counters on Redis); 0 asks
    /// the store about every call.
    #[serde(default = "default_full_cache_entries")]
    pub full_cache_entries: usize,
    /// How long this replica reuses a tool pin record it read from Redis (ms): an operator's
    /// approval or rejection on another replica, and a change another edge saw, take effect
    /// here within this time (a change this replica records, at once). 0 reads the store for
    /// every check. Default 1000.
    #[serde(default = "default_pins_cache_ms")]
    pub pins_cache_ms: u64,
    /// Decisions one `DecideStream` (an edge's stream of batched decisions) may have in
    /// progress at once; the stream is not read further until some are answered.
    #[serde(default = "default_stream_in_flight")]
    pub stream_in_flight: usize,
    /// HTTP address serving `/metrics` (Prometheus) for `tollgate decision`.
    /// Default `127.0.0.1:9464`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// HTTP address of the operators' API (approvals), served by `tollgate decision` and
    /// `tollgate up`. Default `127.0.0.1:9465`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Hex SHA-256 of the cluster token edges must present (`authorization: Bearer
    /// <token>`; edges set `edge.decision_token`). Required when `listen` is not a
    /// loopback address, unless `allow_unauthenticated` is set.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Serve `Decide` without a cluster token on a non-loopback address (only behind a
    /// network policy that admits nothing but the edges). Default false.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Most open connections on the gRPC listener. Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A new connection that sends nothing for this long is closed (ms). Default 10000.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs `tls_key`. Edges then
    /// use `https://` addresses.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: only callers presenting a client certificate signed by this CA (PEM)
    /// are served. With it, a cluster token is not required off loopback.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
}

impl DecisionSettings {
    /// The SHA-256 of the cluster token, or `None` when callers need none; refuses to
    /// serve unauthenticated off loopback unless that was asked for explicitly.
    pub fn token_hash(&self) -> Result<Option<[u8; 32]>, String> {
        match &self.token_sha256 {
            Some(hex_hash) => {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(hex_hash.trim(), &mut hash).map_err(|_| {
                    "decision.token_sha256 must be 64 hex characters (the SHA-256 of the cluster token; \
                     `tollgate keygen` makes one)"
                        .to_owned()
                })?;
                Ok(Some(hash))
            }
            None if self.listen.ip().is_loopback() || self.allow_unauthenticated || self.tls_client_ca.is_some() => {
                Ok(None)
            }
            None => Err(format!(
                "decision.listen = {} is reachable from other hosts, and anyone who reaches it could spend \
                 every grant's budget: set decision.token_sha256 (and edge.decision_token on the edges), or \
                 mutual TLS (decision.tls_client_ca), or decision.allow_unauthenticated = true if a network \
                 policy already admits only the edges",
                self.listen
            )),
        }
    }

    /// The gRPC listener's TLS, when `tls_cert` and `tls_key` are set (files are read now,
    /// so a bad path stops the start with its name).
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("decision TLS: cannot read {}: {e}", path.display()))
        };
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if self.tls_client_ca.is_none() => return Ok(None),
            (None, None) => return Err("decision.tls_client_ca needs decision.tls_cert and decision.tls_key".into()),
            _ => return Err("decision TLS: set decision.tls_cert and decision.tls_key together".into()),
        };
        // The same checks as every other listener (names the file that is wrong).
        tollgate_tls::server_config(cert, key, self.tls_client_ca.as_deref(), &[b"h2"])
            .map_err(|e| format!("decision TLS: {e}"))?;
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(cert)?, read(key)?))
            .timeout(Duration::from_millis(self.handshake_timeout_ms));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(tls))
    }

    /// The gRPC service's bounds.
    pub fn service_limits(&self) -> ServiceLimits {
        ServiceLimits {
            listener: self.limits(),
            stream_in_flight: self.stream_in_flight,
        }
    }

    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            http2: false,
        }
    }
}

fn default_max_connections() -> usize {
    ListenerLimits::default().max_connections
}

fn default_handshake_timeout_ms() -> u64 {
    ListenerLimits::default().handshake_timeout.as_millis() as u64
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_reload_ms() -> u64 {
    2000
}

fn default_pins_cache_ms() -> u64 {
    1000
}

fn default_full_cache_entries() -> usize {
    crate::DEFAULT_FULL_CACHE_ENTRIES
}

fn default_stream_in_flight() -> usize {
    4096
}

fn default_store_timeout_ms() -> u64 {
    250
}

/// The gRPC service's bounds: its listener's, and the decisions one `DecideStream` may
/// have in progress.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    pub listener: ListenerLimits,
    pub stream_in_flight: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            listener: ListenerLimits::default(),
            stream_in_flight: default_stream_in_flight(),
        }
    }
}

struct DecisionGrpc {
    engine: Arc<Engine>,
    operators: Operators,
    stream_in_flight: usize,
}

/// Most decisions one `DecisionBatch` carries.
const MAX_ANSWERS_PER_MESSAGE: usize = 1024;

/// Longest `traceparent` / `tracestate` a `DecideItem` may carry.
const MAX_TRACE_CONTEXT_BYTES: usize = 512;

impl DecisionGrpc {
    /// The operator presenting the request's key, or PERMISSION_DENIED / UNAUTHENTICATED.
    fn operator<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let key = request
            .metadata()
            .get(OPERATOR_KEY_METADATA)
            .and_then(|v| v.to_str().ok());
        self.operators.who(key).map_err(|refusal| {
            let message = match refusal {
                crate::OperatorRefusal::Missing => {
                    format!("operator calls need an operator key in {OPERATOR_KEY_METADATA}")
                }
                other => other.message().to_owned(),
            };
            Status::unauthenticated(message)
        })
    }
}

/// One `WaitApproval` stream: the record now, then once more when it leaves pending.
enum Follow {
    Now(WaitApprovalRequest),
    Later(WaitApprovalRequest),
    Done,
}

fn store_status(e: tollgate_limiter::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl DecisionService for DecisionGrpc {
    async fn decide(&self, request: Request<DecideRequest>) -> Result<Response<Decision>, Status> {
        let parent = tollgate_telemetry::propagation::from_grpc_metadata(request.metadata());
        let request = request.into_inner();
        check_request(&request).map_err(Status::invalid_argument)?;
        Ok(Response::new(self.engine.decide_with_parent(&request, parent).await))
    }

    type DecideStreamStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<DecisionBatch, Status>> + Send + 'static>>;

    /// Reads batches of decisions and decides them concurrently in one task per stream (a
    /// slow decision, e.g. a store timeout, holds up no other); answers go out as they are
    /// made, every answer ready when the connection can take the next message travelling
    /// together. At most `stream_in_flight` decisions are in progress per stream: beyond that
    /// the stream is not read, and HTTP/2 flow control holds the edge back.
    async fn decide_stream(
        &self,
        request: Request<tonic::Streaming<DecideBatch>>,
    ) -> Result<Response<Self::DecideStreamStream>, Status> {
        let batches = request.into_inner();
        // Bounded too: answers wait here only until the edge reads them, and an edge that
        // stops reading stops this stream's decisions (and, through flow control, itself).
        let in_flight = self.stream_in_flight.max(1);
        let (answered, answers) = tokio::sync::mpsc::channel::<DecisionItem>(in_flight);
        let engine = self.engine.clone();
        tokio::spawn(decide_batches(
            batches,
            move |request, parent| {
                let engine = engine.clone();
                async move { engine.decide_with_parent(&request, parent).await }
            },
            answered,
            in_flight,
        ));
        let out = futures_util::stream::unfold(answers, |mut answers| async move {
            let first = answers.recv().await?;
            let mut items = vec![first];
            while items.len() < MAX_ANSWERS_PER_MESSAGE {
                match answers.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
            tollgate_telemetry::metrics::metrics().observe_batch("answered", items.len());
            Some((Ok(DecisionBatch { items }), answers))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn visible_tools(
        &self,
        request: Request<VisibleToolsRequest>,
    ) -> Result<Response<VisibleToolsResponse>, Status> {
        let request = request.into_inner();
        if crate::proto::SubjectKind::try_from(request.kind).is_err() {
            return Err(Status::invalid_argument(format!(
                "VisibleToolsRequest.kind {} is not a kind this service knows",
                request.kind
            )));
        }
        Ok(Response::new(self.engine.visible_tools(&request).await))
    }

    async fn observe_pins(
        &self,
        request: Request<crate::proto::ObservePinsRequest>,
    ) -> Result<Response<crate::proto::ObservePinsResponse>, Status> {
        let request = request.into_inner();
        match self.engine.observe_pins(&request).await {
            Ok(()) => Ok(Response::new(crate::proto::ObservePinsResponse {})),
            Err(e) if e.starts_with("the store") => Err(Status::unavailable(e)),
            Err(e) => Err(Status::invalid_argument(e)),
        }
    }

    async fn list_pins(
        &self,
        request: Request<crate::proto::ListPinsRequest>,
    ) -> Result<Response<crate::proto::ListPinsResponse>, Status> {
        self.operator(&request)?;
        let pins = self.engine.list_pins().await.map_err(store_status)?;
        Ok(Response::new(crate::proto::ListPinsResponse { pins }))
    }

    async fn resolve_pins(
        &self,
        request: Request<crate::proto::ResolvePinsRequest>,
    ) -> Result<Response<crate::proto::ResolvePinsResponse>, Status> {
        let operator = self.operator(&request)?;
        let request = request.into_inner();
        check_reason(&request.reason).map_err(Status::invalid_argument)?;
        if request.ids.len() > crate::pins::MAX_OBSERVED {
            return Err(Status::invalid_argument(format!(
                "at most {} ids at once",
                crate::pins::MAX_OBSERVED
            )));
        }
        let (resolved, not_resolved) = self
            .engine
            .resolve_pins(
                &request.ids,
                request.all_pending,
                request.approve,
                &operator,
                &request.reason,
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(crate::proto::ResolvePinsResponse {
            resolved,
            not_resolved,
        }))
    }

    type WaitApprovalStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<ApprovalUpdate, Status>> + Send + 'static>>;

    async fn wait_approval(
        &self,
        request: Request<WaitApprovalRequest>,
    ) -> Result<Response<Self::WaitApprovalStream>, Status> {
        let request = request.into_inner();
        if !tollgate_limiter::is_approval_id(&request.approval_id) {
            return Err(Status::not_found("no such approval"));
        }
        let engine = self.engine.clone();
        // No task: when the edge goes away, tonic drops the stream and the wait with it.
        let updates = futures_util::stream::unfold(Follow::Now(request), move |step| {
            let engine = engine.clone();
            async move {
                let (found, request, first) = match step {
                    Follow::Done => return None,
                    Follow::Now(request) => {
                        let now = engine.wait_approval(&request.approval_id, Duration::ZERO).await;
                        (now, request, true)
                    }
                    Follow::Later(request) => {
                        let max = Duration::from_millis(request.max_wait_ms);
                        (engine.wait_approval(&request.approval_id, max).await, request, false)
                    }
                };
                match found {
                    Ok(Some(approval)) => {
                        let next = if approval.status == ApprovalStatus::Pending && first {
                            Follow::Later(request)
                        } else {
                            Follow::Done
                        };
                        let update = ApprovalUpdate {
                            approval: Some(approval_message(&approval, false)),
                        };
                        Some((Ok(update), next))
                    }
                    Ok(None) => Some((Err(Status::not_found("no such approval")), Follow::Done)),
                    Err(e) => Some((Err(store_status(e)), Follow::Done)),
                }
            }
        });
        Ok(Response::new(Box::pin(updates)))
    }

    async fn record_task(
        &self,
        request: Request<crate::proto::RecordTaskRequest>,
    ) -> Result<Response<crate::proto::RecordTaskResponse>, Status> {
        let request = request.into_inner();
        match self.engine.record_task(&request).await {
            Ok(()) => Ok(Response::new(crate::proto::RecordTaskResponse {})),
            Err(e) if e.starts_with("the store") || e.contains("counter store") => Err(Status::unavailable(e)),
            Err(e) => Err(Status::invalid_argument(e)),
        }
    }

    async fn owned_tasks(
        &self,
        request: Request<crate::proto::OwnedTasksRequest>,
    ) -> Result<Response<crate::proto::OwnedTasksResponse>, Status> {
        let request = request.into_inner();
        if request.task_ids.len() > tollgate_limiter::MAX_TASKS_PER_QUERY {
            return Err(Status::invalid_argument(format!(
                "at most {} task ids per query",
                tollgate_limiter::MAX_TASKS_PER_QUERY
            )));
        }
        let tasks = self.engine.owned_tasks(&request).await.map_err(Status::unavailable)?;
        Ok(Response::new(crate::proto::OwnedTasksResponse { tasks }))
    }

    async fn list_approvals(
        &self,
        request: Request<ListApprovalsRequest>,
    ) -> Result<Response<ListApprovalsResponse>, Status> {
        self.operator(&request)?;
        let all = self.engine.approvals().list().await.map_err(store_status)?;
        Ok(Response::new(ListApprovalsResponse {
            approvals: all.iter().map(|a| approval_message(a, true)).collect(),
        }))
    }

    async fn resolve_approval(
        &self,
        request: Request<ResolveApprovalRequest>,
    ) -> Result<Response<ResolveApprovalResponse>, Status> {
        let operator = self.operator(&request)?;
        let request = request.into_inner();
        check_reason(&request.reason).map_err(Status::invalid_argument)?;
        match self
            .engine
            .resolve_approval(&request.approval_id, request.approve, &operator, &request.reason)
            .await
            .map_err(store_status)?
        {
            Resolution::Resolved(approval) => Ok(Response::new(ResolveApprovalResponse {
                approval: Some(approval_message(&approval, true)),
            })),
            Resolution::NotFound => Err(Status::not_found("no such approval")),
            Resolution::NotPending(approval) => Err(Status::failed_precondition(format!(
                "approval {} is not pending (it is {:?})",
                approval.id, approval.status
            ))),
        }
    }
}

/// The work behind one `DecideStream`: reads its batches and runs their decisions
/// concurrently, sending each answer to `answered` when it is made. Ends when the edge closes
/// the stream (or it breaks) and the decisions already started have finished: their hits are
/// taken or given back, whether or not anyone still reads the answer.
async fn decide_batches<S, D, F>(
    mut batches: S,
    decide: D,
    answered: tokio::sync::mpsc::Sender<DecisionItem>,
    in_flight: usize,
) where
    S: futures_util::Stream<Item = Result<DecideBatch, Status>> + Unpin,
    D: Fn(DecideRequest, Option<opentelemetry::Context>) -> F,
    F: Future<Output = crate::proto::Decision>,
{
    use futures_util::StreamExt;
    let mut deciding = futures_util::stream::FuturesUnordered::new();
    // Items received but not started: the bound is on decisions, not batches, so one large
    // batch starts at most `in_flight` of them; the rest wait here (at most one batch, which
    // the message size bounds), and no further batch is read until they have started.
    let mut queued: std::collections::VecDeque<crate::proto::DecideItem> = std::collections::VecDeque::new();
    let mut open = true;
    loop {
        while deciding.len() < in_flight
            && let Some(item) = queued.pop_front()
        {
            let seq = item.seq;
            if let Err(invalid) = check_item(item.request.as_ref(), &item.traceparent, &item.tracestate) {
                let _ = answered
                    .send(DecisionItem {
                        seq,
                        decision: None,
                        invalid,
                    })
                    .await;
                continue;
            }
            let parent =
                tollgate_telemetry::propagation::from_traceparent(&item.traceparent, Some(item.tracestate.as_str()));
            let decided = decide(item.request.unwrap_or_default(), parent);
            deciding.push(async move {
                DecisionItem {
                    seq,
                    decision: Some(decided.await),
                    invalid: String::new(),
                }
            });
        }
        tokio::select! {
            Some(item) = deciding.next(), if !deciding.is_empty() => {
                let _ = answered.send(item).await;
            }
            batch = batches.next(), if open && queued.is_empty() && deciding.len() < in_flight => match batch {
                Some(Ok(batch)) => {
                    tollgate_telemetry::metrics::metrics().observe_batch("received", batch.items.len());
                    queued.extend(batch.items);
                }
                Some(Err(_)) | None => open = false,
            },
            else => return,
        }
    }
}

/// A `DecideItem`'s request, checked as `Decide` checks its own, or why it is refused.
fn check_item(request: Option<&DecideRequest>, traceparent: &str, tracestate: &str) -> Result<(), String> {
    let Some(request) = request else {
        return Err("DecideItem.request is missing".into());
    };
    for (field, value) in [("traceparent", traceparent), ("tracestate", tracestate)] {
        if value.len() > MAX_TRACE_CONTEXT_BYTES || value.chars().any(char::is_control) {
            return Err(format!(
                "DecideItem.{field} must be at most {MAX_TRACE_CONTEXT_BYTES} bytes without control characters"
            ));
        }
    }
    check_request(request)
}

/// What a `Decide` must look like before the engine sees it: a kind this service knows,
/// bounded fields, and a tool name (resource URI, prompt name) that could be an MCP server's
/// (the edge checks the same; this guards against other callers).
fn check_request(request: &DecideRequest) -> Result<(), String> {
    let kind = crate::proto::SubjectKind::try_from(request.kind)
        .map_err(|_| format!("DecideRequest.kind {} is not a kind this service knows", request.kind))?;
    crate::check_subject(kind, &request.tool).map_err(|e| format!("DecideRequest.tool: {e}"))?;
    for (field, value) in [
        ("request_id", &request.request_id),
        ("server", &request.server),
        ("grant", &request.grant),
        ("agent", &request.agent),
        ("session_id", &request.session_id),
        ("subject", &request.subject),
        ("issuer", &request.issuer),
    ] {
        if value.len() > MAX_FIELD_BYTES || value.chars().any(char::is_control) {
            return Err(format!(
                "DecideRequest.{field} must be at most {MAX_FIELD_BYTES} bytes without control characters"
            ));
        }
    }
    Ok(())
}

/// Admits a call when it carries its role's token (compared by SHA-256, so the token itself
/// is never stored), or when none is configured. Each client role has its own: the edges'
/// (`decision.token_sha256`) admits the decision service only, Envoy's
/// (`envoy.token_sha256`) the rate limit service only.
#[derive(Clone)]
struct ClusterToken {
    hash: Option<[u8; 32]>,
    /// Where the caller's token is configured, for the refusal.
    setting: &'static str,
}

impl tonic::service::Interceptor for ClusterToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.hash else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(token) if Sha256::digest(token.trim().as_bytes()).as_slice() == expected => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid cluster token for this service")),
            None => Err(Status::unauthenticated(format!(
                "missing cluster token: send authorization: Bearer <token> ({})",
                self.setting
            ))),
        }
    }
}

/// What [`serve`] serves besides the engine.
#[derive(Default)]
pub struct ServeOptions {
    /// Who may list and resolve approvals over gRPC.
    pub operators: Operators,
    pub limits: ServiceLimits,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// `[envoy]` limits: when there are any, Envoy's rate limit service is served too.
    pub envoy: Arc<crate::envoy::EnvoyLimits>,
}

/// Serves the engine on `listener` until `shutdown` completes, then drains in-flight calls.
/// `token_hash` is [`DecisionSettings::token_hash`]; it guards every service on the listener.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    token_hash: Option<[u8; 32]>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let ServeOptions {
        operators,
        limits,
        tls,
        envoy,
    } = options;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DecisionServiceServer<DecisionGrpc>>()
        .await;
    // A replica whose decisions wait for a journal that cannot take them refuses every call:
    // it says so on the health service (readiness probes), until the journal takes records.
    if engine.journal().is_some() {
        let (engine, reporter) = (engine.clone(), health_reporter.clone());
        tokio::spawn(async move {
            let mut refusing = false;
            let mut ticks = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                ticks.tick().await;
                let now = engine.journal_refusing();
                if now != refusing {
                    refusing = now;
                    if now {
                        tracing::error!("not ready: the audit journal cannot record decisions; every call is refused");
                        reporter.set_not_serving::<DecisionServiceServer<DecisionGrpc>>().await;
                        reporter
                            .set_service_status("", tonic_health::ServingStatus::NotServing)
                            .await;
                    } else {
                        tracing::info!("ready again: the audit journal records decisions");
                        reporter.set_serving::<DecisionServiceServer<DecisionGrpc>>().await;
                        reporter
                            .set_service_status("", tonic_health::ServingStatus::Serving)
                            .await;
                    }
                }
            }
        });
    }
    let envoy = (!envoy.is_empty()).then(|| {
        tonic::service::interceptor::InterceptedService::new(
            crate::envoy::service(engine.clone(), envoy.clone()),
            ClusterToken {
                hash: envoy.token_hash(),
                setting: "envoy.token_sha256",
            },
        )
    });
    let service = DecisionServiceServer::new(DecisionGrpc {
        engine,
        operators,
        stream_in_flight: limits.stream_in_flight,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        ClusterToken {
            hash: token_hash,
            setting: "edge.decision_token",
        },
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(service)
        .add_optional_service(envoy)
        .serve_with_incoming_shutdown(listener::incoming(listener, limits.listener), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::proto::DecideItem;

    /// Issue 24, item 8: the bound on a stream's decisions in progress is per decision, not
    /// per batch: one batch of 100 starts at most `in_flight` at once, and all are answered.
    #[tokio::test]
    async fn one_large_batch_starts_at_most_in_flight_decisions() {
        let items: Vec<DecideItem> = (0..100)
            .map(|seq| DecideItem {
                seq,
                request: Some(DecideRequest {
                    request_id: format!("r{seq}"),
                    server: "k8s".into(),
                    tool: "t".into(),
                    grant: "g".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let batches = futures_util::stream::iter(vec![Ok(DecideBatch { items })]);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (answered, mut answers) = tokio::sync::mpsc::channel(200);
        let decide = {
            let (running, most) = (running.clone(), most.clone());
            move |_request: DecideRequest, _parent| {
                let (running, most) = (running.clone(), most.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    crate::proto::Decision::default()
                }
            }
        };
        decide_batches(batches, decide, answered, 4).await;
        let mut seen = 0;
        while answers.try_recv().is_ok() {
            seen += 1;
        }
        assert_eq!(seen, 100, "every item is answered");
        assert!(
            most.load(Ordering::SeqCst) <= 4,
            "{} at once",
            most.load(Ordering::SeqCst)
        );
    }
}
