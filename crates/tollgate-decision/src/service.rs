//! The gRPC face of the engine: `tollgate.v1.DecisionService` plus `grpc.health.v1`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::Engine;
use crate::proto::decision_service_server::{DecisionService, DecisionServiceServer};
use crate::proto::{DecideRequest, Decision, VisibleToolsRequest, VisibleToolsResponse};

/// Largest gRPC message accepted: a call's arguments may be as large as the edge's body limit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// `[decision]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSettings {
    /// gRPC listen address. Default `127.0.0.1:50051`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Policy file (JSON, YAML or TOML). Relative paths resolve against the config file.
    pub policy: PathBuf,
    /// How often the policy file is checked for changes, in milliseconds; 0 disables reload.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
    /// Deadline for one counter-store round trip, in milliseconds.
    #[serde(default = "default_store_timeout_ms")]
    pub store_timeout_ms: u64,
    /// HTTP address serving `/metrics` (Prometheus) for `tollgate decision`.
    /// Default `127.0.0.1:9464`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
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

fn default_store_timeout_ms() -> u64 {
    250
}

struct DecisionGrpc {
    engine: Arc<Engine>,
}

#[tonic::async_trait]
impl DecisionService for DecisionGrpc {
    async fn decide(&self, request: Request<DecideRequest>) -> Result<Response<Decision>, Status> {
        let parent = tollgate_telemetry::propagation::from_grpc_metadata(request.metadata());
        let request = request.into_inner();
        if request.tool.is_empty() {
            return Err(Status::invalid_argument("DecideRequest.tool is empty"));
        }
        Ok(Response::new(self.engine.decide_with_parent(&request, parent).await))
    }

    async fn visible_tools(
        &self,
        request: Request<VisibleToolsRequest>,
    ) -> Result<Response<VisibleToolsResponse>, Status> {
        Ok(Response::new(self.engine.visible_tools(&request.into_inner())))
    }
}

/// Accepted connections with `TCP_NODELAY`: a gRPC answer is several HTTP/2 frames, and
/// Nagle's algorithm would hold the later ones back until the client's delayed ACK (~40 ms).
fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |stream| {
        if let Ok(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        stream
    })
}

/// Serves the engine on `listener` until `shutdown` completes, then drains in-flight calls.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DecisionServiceServer<DecisionGrpc>>()
        .await;
    let service = DecisionServiceServer::new(DecisionGrpc { engine })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}
