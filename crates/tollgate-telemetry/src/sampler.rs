//! Sampling that never loses an audit record: decision spans are always recorded and
//! exported; every other span follows its parent, or the configured ratio at a root.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use crate::DECISION_SPAN;

#[derive(Debug, Clone)]
pub struct AuditSampler {
    others: Sampler,
}

impl AuditSampler {
    pub fn new(ratio: f64) -> Self {
        AuditSampler {
            others: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
        }
    }
}

impl ShouldSample for AuditSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if name == DECISION_SPAN {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|c| c.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.others
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}
