//! The decision service: the one place a verdict is made.
//!
//! [`Engine`] evaluates the compiled policy for a call and takes its rate-limit hits in the
//! counter store. [`Decider`] is what an edge asks; the engine answers in-process
//! (`tollgate up`), and [`GrpcDecider`] asks remote replicas over gRPC with failover.
//! [`serve`] exposes an engine as the `tollgate.v1.DecisionService` gRPC service.

mod client;
mod engine;
mod reload;
mod service;

pub use client::{GrpcDecider, GrpcDeciderError};
pub use engine::{Engine, verdict_name};
pub use reload::{PolicyStatus, watch_policy};
pub use service::{DecisionSettings, serve};
pub use tollgate_proto::v1 as proto;

/// Why a decision could not be had at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecisionUnavailable(pub String);

/// Something that decides tool calls: the engine itself, or a client of remote replicas.
#[async_trait::async_trait]
pub trait Decider: Send + Sync + 'static {
    async fn decide(&self, request: proto::DecideRequest) -> Result<proto::Decision, DecisionUnavailable>;

    async fn visible_tools(
        &self,
        request: proto::VisibleToolsRequest,
    ) -> Result<proto::VisibleToolsResponse, DecisionUnavailable>;
}
