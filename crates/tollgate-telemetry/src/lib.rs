//! Logs, traces and metrics for every Tollgate process, set up in one place.
//!
//! [`init`] installs the `tracing` subscriber: logs as text or JSON on stderr, and, when an
//! OTLP endpoint is configured, an OpenTelemetry layer exporting spans over OTLP/gRPC through
//! a batch processor with a bounded queue (a slow or dead collector drops spans, it never
//! blocks a request). Every `tollgate.decide` span is an audit record and is always sampled;
//! `sample_ratio` applies to the other spans. [`metrics`] holds the process's Prometheus
//! metrics; [`propagation`] moves W3C trace context across HTTP and gRPC.

pub mod metrics;
pub mod propagation;
mod sampler;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use sampler::AuditSampler;

/// Name of the span that records one decision; never dropped by sampling.
pub const DECISION_SPAN: &str = "tollgate.decide";

/// `[telemetry]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. Unset: no spans are exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans. Default `tollgate-<role>` (edge, decision, up).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of traces sampled, 0.0–1.0, for spans other than decisions. Default 1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `text` (default) or `json` logs on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Put the raw tool arguments on decision spans (otherwise only their SHA-256).
    #[serde(default)]
    pub record_arguments: bool,
    /// Spans held for export at most; past that new spans are dropped. Default 4096.
    #[serde(default = "default_queue")]
    pub max_queue_size: usize,
    /// Deadline for one export to the collector, in milliseconds. Default 5000.
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: default_sample_ratio(),
            log_format: LogFormat::default(),
            record_arguments: false,
            max_queue_size: default_queue(),
            export_timeout_ms: default_export_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_queue() -> usize {
    32768
}

fn default_export_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter \"{filter}\": {message}")]
    Filter { filter: String, message: String },
    #[error("telemetry.sample_ratio must be between 0 and 1, not {0}")]
    SampleRatio(f64),
    #[error("cannot set up the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued (bounded by the export timeout) and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.force_flush() {
                tracing::warn!("could not flush pending spans: {e}");
            }
            let _ = provider.shutdown();
        }
    }
}

/// Installs logging and, if configured, span export. Call once, inside a Tokio runtime.
/// `filter` is a `tracing` filter (`RUST_LOG` wins when set); `role` names the process.
pub fn init(settings: &TelemetrySettings, filter: &str, role: &str) -> Result<Telemetry, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => filter.to_owned(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|e| TelemetryError::Filter {
        filter,
        message: e.to_string(),
    })?;
    if !(0.0..=1.0).contains(&settings.sample_ratio) {
        return Err(TelemetryError::SampleRatio(settings.sample_ratio));
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match &settings.otlp_endpoint {
        None => None,
        Some(endpoint) => Some(tracer_provider(settings, endpoint, role)?),
    };
    // Only Tollgate's own spans become OpenTelemetry spans: the edge's span per MCP request
    // and the audit spans (decisions, approvals). Dependencies (hyper, h2, tonic, tower) open
    // spans of their own at debug and trace level; building an OpenTelemetry span for each
    // cost more than everything else in the request path together. Log events stay logs
    // (the span already carries every field the audit event has). The spans' attributes are
    // the ones Tollgate sets, nothing more.
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("tollgate"))
            // No busy/idle timing (a clock read on every poll of an instrumented future),
            // source locations or thread names on each span: none of it is audit data.
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(is_exported_span))
    });
    tracing_subscriber::registry()
        .with(spans)
        .with(logs.with_filter(env_filter))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider })
}

/// Whether a `tracing` callsite is one of the spans Tollgate exports.
fn is_exported_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && *meta.level() <= tracing::Level::INFO && meta.target().starts_with("tollgate")
}

fn tracer_provider(
    settings: &TelemetrySettings,
    endpoint: &str,
    role: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let timeout = Duration::from_millis(settings.export_timeout_ms);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        })?;
    let exporter = metrics::CountingExporter::new(exporter);
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(settings.max_queue_size.max(1))
        .with_max_export_batch_size(2048.min(settings.max_queue_size.max(1)))
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let processor =
        metrics::CountingProcessor::new(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build());
    let service = settings
        .service_name
        .clone()
        .unwrap_or_else(|| format!("tollgate-{role}"));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(AuditSampler::new(settings.sample_ratio))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
