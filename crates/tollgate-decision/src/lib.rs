//! The decision service: the one place a verdict is made.
//!
//! [`Engine`] evaluates the compiled policy for a call and takes its rate-limit hits in the
//! counter store. [`Decider`] is what an edge asks; the engine answers in-process
//! (`tollgate up`), and [`GrpcDecider`] asks remote replicas over gRPC with failover.
//! [`serve`] exposes an engine as the `tollgate.v1.DecisionService` gRPC service.

mod approvals;
mod client;
mod engine;
pub mod listener;
mod reload;
mod service;

pub use approvals::{
    MAX_REASON_BYTES, MAX_WAIT, OperatorRefusal, OperatorSettings, Operators, approval_message, check_reason,
};
pub use client::{GrpcDecider, GrpcDeciderError};
pub use engine::{Engine, verdict_name};
pub use reload::{PolicyStatus, watch_policy};
pub use service::{DecisionSettings, serve};
pub use tollgate_proto::v1 as proto;

/// Largest gRPC message either side accepts: a call's arguments may be as large as the
/// edge's body limit.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why a decision could not be had at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// No replica answered: connection refused, unreachable, or past the deadline. Only
    /// this may let `edge.fail_open` forward a call unchecked.
    #[error("{0}")]
    Unavailable(String),
    /// A replica answered with an error (invalid request, answer too large, internal
    /// failure, unauthenticated). A caller may be able to provoke these, so they never
    /// fail open.
    #[error("{0}")]
    Failed(String),
}

impl DecisionError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DecisionError::Unavailable(_))
    }
}

/// Something that decides tool calls: the engine itself, or a client of remote replicas.
#[async_trait::async_trait]
pub trait Decider: Send + Sync + 'static {
    async fn decide(&self, request: proto::DecideRequest) -> Result<proto::Decision, DecisionError>;

    async fn visible_tools(
        &self,
        request: proto::VisibleToolsRequest,
    ) -> Result<proto::VisibleToolsResponse, DecisionError>;

    /// Waits until approval `id` is no longer pending (an operator approved or denied it on
    /// any replica, or it expired), for at most `max`: the record then, still pending when
    /// `max` passed. The arguments are left out (the caller has the call).
    async fn wait_approval(&self, id: &str, max: std::time::Duration) -> Result<proto::Approval, DecisionError>;
}
