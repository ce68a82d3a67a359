//! W3C trace context across the hops: from an agent's HTTP headers (or the MCP request's
//! `_meta.traceparent`) into the edge's span, and from the edge into the decision service
//! through gRPC metadata.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Pairs<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct MetadataOut<'a>(&'a mut MetadataMap);

impl Injector for MetadataOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            self.0.insert(k, v);
        }
    }
}

fn extract(extractor: &dyn Extractor) -> Option<Context> {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(extractor));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The agent's trace context from `traceparent` / `tracestate` headers, if it sent one.
pub fn from_http_headers(headers: &http::HeaderMap) -> Option<Context> {
    extract(&Headers(headers))
}

/// A trace context carried in an MCP request's `params._meta`.
pub fn from_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let pairs = [("traceparent", traceparent), ("tracestate", tracestate.unwrap_or(""))];
    extract(&Pairs(&pairs))
}

/// The caller's trace context from gRPC metadata.
pub fn from_grpc_metadata(metadata: &MetadataMap) -> Option<Context> {
    extract(&Metadata(metadata))
}

/// Puts the current span's context into outgoing gRPC metadata.
pub fn inject_current(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataOut(metadata)));
}

/// The current span's W3C trace context as `(traceparent, tracestate)`, for a message that
/// carries many calls' contexts (empty strings when there is none).
pub fn current_pair() -> (String, String) {
    let cx = tracing::Span::current().context();
    let mut pair = Pair::default();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut pair));
    (pair.traceparent, pair.tracestate)
}

#[derive(Default)]
struct Pair {
    traceparent: String,
    tracestate: String,
}

impl Injector for Pair {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            _ => {}
        }
    }
}

/// Makes `span` a child of `parent` (when there is one).
pub fn set_parent(span: &tracing::Span, parent: Option<Context>) {
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
}

/// `span`'s W3C `traceparent`, when it is recorded in a trace (empty otherwise): kept with
/// a record so that a later span can link to it.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return String::new();
    }
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// Links `span` to the span a `traceparent` names (e.g. the operator's approval of the
/// call it decides). Text that is not a valid `traceparent` is ignored.
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    if let Some(cx) = from_traceparent(traceparent, None) {
        span.add_link(cx.span().span_context().clone());
    }
}
