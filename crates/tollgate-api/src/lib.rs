//! The decision API as an edge sees it, without the engine, the policy or the stores: the
//! [`Decider`] trait (what an edge asks), [`GrpcDecider`] (asking remote replicas over gRPC
//! with failover), the generated `tollgate.v1` types, the bounded listener every Tollgate
//! listener uses, and what tool names, prompt names and resource URIs may be.

mod batch;
mod client;
pub mod definitions;
pub mod listener;
mod names;

pub use batch::DEFAULT_BATCH_MAX;
pub use client::{GrpcDecider, GrpcDeciderError};
pub use names::{
    MAX_RESOURCE_URI_BYTES, MAX_TOOL_NAME_CHARS, check_prompt_name, check_resource_uri, check_subject, check_tool_name,
    method_subject, subject_attribute, subject_label, subject_method,
};
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

    /// Records the task a decided call created (see `RecordTask`).
    async fn record_task(&self, request: proto::RecordTaskRequest) -> Result<(), DecisionError>;

    /// The records of `request.task_ids` that belong to `request.grant` (see `OwnedTasks`).
    async fn owned_tasks(&self, request: proto::OwnedTasksRequest) -> Result<Vec<proto::TaskRecord>, DecisionError>;

    /// Records definitions an upstream listed (tool pinning, see `ObservePins`).
    async fn observe_pins(&self, request: proto::ObservePinsRequest) -> Result<(), DecisionError>;
}

/// The state of the policy a process enforces, for readiness endpoints.
pub trait PolicyHealth: Send + Sync + 'static {
    /// The diagnostics of the last rejected policy reload, while the file on disk is still
    /// the rejected one.
    fn last_error(&self) -> Option<String>;
}

/// A verdict as logs, spans and refusals spell it.
pub fn verdict_name(v: proto::Verdict) -> &'static str {
    match v {
        proto::Verdict::Allow => "ALLOW",
        proto::Verdict::Deny => "DENY",
        proto::Verdict::RateLimited => "RATE_LIMITED",
        proto::Verdict::ApprovalRequired => "APPROVAL_REQUIRED",
        proto::Verdict::Unspecified => "UNSPECIFIED",
    }
}

/// The verdict [`verdict_name`] spells `name` as (never `Unspecified`).
pub fn verdict_named(name: &str) -> Option<proto::Verdict> {
    Some(match name {
        "ALLOW" => proto::Verdict::Allow,
        "DENY" => proto::Verdict::Deny,
        "RATE_LIMITED" => proto::Verdict::RateLimited,
        "APPROVAL_REQUIRED" => proto::Verdict::ApprovalRequired,
        _ => return None,
    })
}
