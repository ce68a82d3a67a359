//! The edge's side of the gRPC hop: asks decision replicas, failing over between them
//! within one deadline. Retries reuse the request id, so a replica that decided but whose
//! answer was lost does not make the retry take a second hit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::batch::{Batcher, DEFAULT_BATCH_MAX};
use crate::proto::decision_service_client::DecisionServiceClient;
use crate::proto::{
    Approval, ApprovalStatus, DecideRequest, Decision, VisibleToolsRequest, VisibleToolsResponse, WaitApprovalRequest,
};
use crate::{Decider, DecisionError, MAX_MESSAGE_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum GrpcDeciderError {
    #[error("no decision service address configured (edge.decision is empty)")]
    NoAddress,
    #[error("invalid decision service address \"{address}\": {source}")]
    BadAddress {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("edge.decision_token must be printable ASCII")]
    BadToken,
    #[error("TLS to the decision service \"{address}\": {source}")]
    Tls {
        address: String,
        source: tonic::transport::Error,
    },
}

/// A client of one or more decision replicas.
pub struct GrpcDecider {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    deadline: Duration,
    /// `authorization: Bearer <cluster token>`, sent with every call when configured.
    authorization: Option<AsciiMetadataValue>,
    /// Most decisions per `DecideStream` message; 0 asks with unary `Decide` calls.
    batch_max: usize,
}

struct Replica {
    address: String,
    client: DecisionServiceClient<Channel>,
    /// The replica's decision stream, started on first use.
    stream: std::sync::OnceLock<Batcher>,
}

impl GrpcDecider {
    /// Connects lazily: replicas that are down now are tried again on each call. `https://`
    /// addresses use `tls` (the system's roots when `None`).
    pub fn new(
        addresses: &[String],
        deadline: Duration,
        token: Option<&str>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, GrpcDeciderError> {
        if addresses.is_empty() {
            return Err(GrpcDeciderError::NoAddress);
        }
        let mut replicas = Vec::with_capacity(addresses.len());
        for address in addresses {
            let mut endpoint = Endpoint::from_shared(address.clone())
                .map_err(|source| GrpcDeciderError::BadAddress {
                    address: address.clone(),
                    source,
                })?
                .connect_timeout(deadline)
                .tcp_nodelay(true)
                // A replica that vanishes without closing the connection (a partition, a
                // powered-off host) is noticed even while the decision stream is idle.
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true);
            if address.starts_with("https://") {
                let config = tls
                    .clone()
                    .unwrap_or_else(|| tonic::transport::ClientTlsConfig::new().with_native_roots());
                endpoint = endpoint.tls_config(config).map_err(|source| GrpcDeciderError::Tls {
                    address: address.clone(),
                    source,
                })?;
            }
            let client = DecisionServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            replicas.push(Replica {
                address: address.clone(),
                client,
                stream: std::sync::OnceLock::new(),
            });
        }
        let authorization = token
            .map(|t| format!("Bearer {t}").parse().map_err(|_| GrpcDeciderError::BadToken))
            .transpose()?;
        Ok(GrpcDecider {
            replicas,
            next: AtomicUsize::new(0),
            deadline,
            authorization,
            batch_max: DEFAULT_BATCH_MAX,
        })
    }

    /// Sets the most decisions one `DecideStream` message carries (default
    /// [`DEFAULT_BATCH_MAX`]); 0 asks every decision with its own unary `Decide` call.
    pub fn with_batch_max(mut self, batch_max: usize) -> Self {
        self.batch_max = batch_max;
        self
    }

    /// The replica's decision stream, unless decisions are asked one call at a time (by
    /// configuration, or because the replica has no `DecideStream`).
    fn stream<'a>(&self, replica: &'a Replica) -> Option<&'a Batcher> {
        if self.batch_max == 0 {
            return None;
        }
        let batcher = replica.stream.get_or_init(|| {
            Batcher::start(
                replica.client.clone(),
                replica.address.clone(),
                self.authorization.clone(),
                self.batch_max,
            )
        });
        (!batcher.unary()).then_some(batcher)
    }

    /// A request carrying the cluster token and the current trace context.
    fn request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        tollgate_telemetry::propagation::inject_current(request.metadata_mut());
        request
    }

    /// Tries replicas round-robin until one answers or the deadline passes. A replica gets
    /// half of the remaining time while others are left to try, so one hung replica cannot
    /// use up the whole deadline. Only outages move on to the next replica; an error
    /// answer (which the caller may have provoked) is final and never counts as an outage.
    async fn call<'a, T, F, Fut>(&'a self, op: F) -> Result<T, DecisionError>
    where
        F: Fn(&'a Replica) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let end = Instant::now() + self.deadline;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.replicas.len();
        let mut failures = Vec::new();
        for attempt in 0..n {
            let replica = &self.replicas[(start + attempt) % n];
            let address = &replica.address;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let budget = if attempt + 1 < n { left / 2 } else { left };
            match tokio::time::timeout(budget, op(replica)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) if is_outage(status.code()) => {
                    tracing::warn!(replica = %address, code = ?status.code(), "decision replica failed: {}", status.message());
                    failures.push(format!("{address}: {}", status.message()));
                }
                Ok(Err(status)) => {
                    tracing::error!(replica = %address, code = ?status.code(), "decision replica refused the request: {}", status.message());
                    return Err(DecisionError::Failed(format!(
                        "decision service {address} answered {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
                Err(_) => {
                    tracing::warn!(replica = %address, "decision replica did not answer within {budget:?}");
                    failures.push(format!("{address}: no answer within {} ms", budget.as_millis()));
                }
            }
        }
        Err(DecisionError::Unavailable(format!(
            "no decision service answered within {} ms ({})",
            self.deadline.as_millis(),
            failures.join("; ")
        )))
    }
}

/// Codes that mean the replica could not be reached or did not answer in time.
fn is_outage(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
}

/// For a long-lived stream, also a replica that dies while the stream opens or runs: that
/// surfaces as an h2 error (`Unknown`), which the service itself never answers. A held call
/// then follows its approval on another replica.
pub(crate) fn stream_outage(code: Code) -> bool {
    is_outage(code) || code == Code::Unknown
}

#[async_trait::async_trait]
impl Decider for GrpcDecider {
    async fn decide(&self, request: DecideRequest) -> Result<Decision, DecisionError> {
        self.call(|replica| {
            let request = request.clone();
            async move {
                if let Some(stream) = self.stream(replica) {
                    match stream.decide(request.clone()).await {
                        // The replica predates `DecideStream`: ask it the old way.
                        Err(status) if status.code() == Code::Unimplemented => {}
                        answer => return answer,
                    }
                }
                let request = self.request(request);
                replica
                    .client
                    .clone()
                    .decide(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    async fn visible_tools(&self, request: VisibleToolsRequest) -> Result<VisibleToolsResponse, DecisionError> {
        self.call(|replica| {
            let request = self.request(request.clone());
            async move {
                let mut client = replica.client.clone();
                client.visible_tools(request).await.map(tonic::Response::into_inner)
            }
        })
        .await
    }

    async fn record_task(&self, request: crate::proto::RecordTaskRequest) -> Result<(), DecisionError> {
        self.call(|replica| {
            let request = self.request(request.clone());
            async move {
                let mut client = replica.client.clone();
                client.record_task(request).await.map(|_| ())
            }
        })
        .await
    }

    async fn observe_pins(&self, request: crate::proto::ObservePinsRequest) -> Result<(), DecisionError> {
        self.call(|replica| {
            let request = self.request(request.clone());
            async move {
                let mut client = replica.client.clone();
                client.observe_pins(request).await.map(|_| ())
            }
        })
        .await
    }

    async fn owned_tasks(
        &self,
        request: crate::proto::OwnedTasksRequest,
    ) -> Result<Vec<crate::proto::TaskRecord>, DecisionError> {
        self.call(|replica| {
            let request = self.request(request.clone());
            async move {
                let mut client = replica.client.clone();
                client.owned_tasks(request).await.map(|r| r.into_inner().tasks)
            }
        })
        .await
    }

    /// Follows the approval on one replica's `WaitApproval` stream; when that replica goes
    /// away, follows it on the next (every replica hears every resolution).
    async fn wait_approval(&self, id: &str, max: Duration) -> Result<Approval, DecisionError> {
        let end = Instant::now() + max;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<Approval> = None;
        let mut backoff = Duration::from_millis(50);
        let mut failures = Vec::new();
        for attempt in 0.. {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Replica { address, client, .. } = &self.replicas[(start + attempt) % self.replicas.len()];
            let request = self.request(WaitApprovalRequest {
                approval_id: id.to_owned(),
                max_wait_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            });
            let opened = tokio::time::timeout(self.deadline.min(left), client.clone().wait_approval(request)).await;
            let mut updates = match opened {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) if !stream_outage(status.code()) => {
                    return Err(DecisionError::Failed(format!(
                        "decision service {address} answered {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
                Ok(Err(status)) => {
                    failures.push(format!("{address}: {}", status.message()));
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{address}: no answer within {} ms", self.deadline.as_millis()));
                    continue;
                }
            };
            // The replica ends the stream itself at `max_wait_ms`; the grace covers the trip.
            let give_up = Instant::now() + left + self.deadline;
            loop {
                match tokio::time::timeout_at(give_up, updates.message()).await {
                    Ok(Ok(Some(update))) => {
                        backoff = Duration::from_millis(50);
                        let Some(approval) = update.approval else { continue };
                        if approval.status() != ApprovalStatus::Pending {
                            return Ok(approval);
                        }
                        last = Some(approval);
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) if stream_outage(status.code()) => {
                        tracing::warn!(replica = %address, "lost the approval stream: {}; following it on another replica", status.message());
                        failures.push(format!("{address}: {}", status.message()));
                        break;
                    }
                    Ok(Err(status)) => {
                        return Err(DecisionError::Failed(format!(
                            "decision service {address} answered {:?}: {}",
                            status.code(),
                            status.message()
                        )));
                    }
                    Err(_) => break,
                }
            }
        }
        last.ok_or_else(|| {
            DecisionError::Unavailable(format!(
                "no decision service followed approval {id} ({})",
                failures.join("; ")
            ))
        })
    }
}
