//! The decision service: the one place a verdict is made.
//!
//! [`Engine`] evaluates the compiled policy for a call and takes its rate-limit hits in the
//! counter store. [`Decider`] is what an edge asks; the engine answers in-process
//! (`tollgate up`), and [`GrpcDecider`] asks remote replicas over gRPC with failover.
//! [`serve`] exposes an engine as the `tollgate.v1.DecisionService` gRPC service, and with
//! `[envoy]` limits as Envoy's rate limit service ([`envoy`]).

mod approvals;
pub mod audit;
mod engine;
pub mod envoy;
mod full;
pub mod journal_export;
pub mod pins;
mod reload;
mod service;
pub mod shadow;
mod tail;

pub use approvals::{
    MAX_REASON_BYTES, MAX_WAIT, OperatorRefusal, OperatorSettings, Operators, approval_message, check_reason,
};
pub use engine::{CounterUse, DEFAULT_FULL_CACHE_ENTRIES, Engine, policy_annotations, policy_kind};
// The decision API, re-exported for callers that link the whole service.
pub use reload::{ActivePolicy, PolicyStatus, watch_policy, watch_shadow_policy};
pub use service::{DecisionSettings, ServeOptions, ServiceLimits, serve};
pub use tail::{DecisionRecord, DecisionTail, LimitRecord};
pub use tollgate_api::definitions;
pub use tollgate_api::{
    DEFAULT_BATCH_MAX, Decider, DecisionError, GrpcDecider, GrpcDeciderError, MAX_MESSAGE_BYTES, PolicyHealth,
    check_subject, check_tool_name, listener, method_subject, proto, verdict_name, verdict_named,
};
