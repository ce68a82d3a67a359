//! The process's Prometheus metrics, served as text at `/metrics`. Labels stay bounded: no
//! grant, session or argument values, and tool names only up to a fixed number of distinct
//! values (the rest are counted as `_other`), since agents choose tool names; the decision
//! service labels only tools an upstream listed (others are `_unlisted`).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Distinct tool names kept as label values; later ones become `_other`.
const MAX_TOOL_LABELS: usize = 256;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 100 µs … ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn batch_sizes() -> Histogram {
    // 1 … 1024
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Every metric Tollgate exposes; one set per process (edge and decision share it in `up`).
pub struct Metrics {
    registry: Registry,
    pub decisions: Family<Labels, Counter>,
    pub shadow_disagreements: Family<Labels, Counter>,
    pub decision_seconds: Histograms,
    pub store_seconds: Histograms,
    pub store_errors: Family<Labels, Counter>,
    pub store_late_answers: Family<Labels, Counter>,
    pub local_refusals: Family<Labels, Counter>,
    pub decide_batch_size: Family<Labels, Histogram, fn() -> Histogram>,
    pub approvals: Family<Labels, Counter>,
    pub policy_reloads: Family<Labels, Counter>,
    pub upstream_seconds: Histograms,
    pub upstream_errors: Family<Labels, Counter>,
    pub decision_unavailable: Counter,
    pub requests_in_flight: Gauge,
    pub held_calls: Gauge,
    pub approvals_pending: Gauge,
    pub spans_ended: Counter,
    pub spans_exported: Counter,
    pub spans_lost: Counter,
    pub console_tail_skipped: Counter,
    /// The decision journal (`[audit]`), refreshed every second.
    pub journal_bytes: Gauge,
    pub journal_appended: Gauge,
    pub journal_dropped: Gauge,
    pub journal_refused: Gauge,
    pub journal_failures: Gauge,
    pub journal_backlog: Gauge,
    pub journal_backlog_age: Gauge,
    tools: Mutex<HashSet<String>>,
    export_failure_logged: std::sync::atomic::AtomicBool,
}

/// The process-wide metrics.
/// One unit of a gauge, held while this value lives (a request in flight, a held call).
pub struct GaugeUnit(&'static Gauge);

impl GaugeUnit {
    pub fn hold(gauge: &'static Gauge) -> GaugeUnit {
        gauge.inc();
        GaugeUnit(gauge)
    }
}

impl Drop for GaugeUnit {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let m = Metrics {
            decisions: Family::default(),
            shadow_disagreements: Family::default(),
            decision_seconds: Family::new_with_constructor(latency),
            store_seconds: Family::new_with_constructor(latency),
            store_errors: Family::default(),
            store_late_answers: Family::default(),
            local_refusals: Family::default(),
            decide_batch_size: Family::new_with_constructor(batch_sizes),
            approvals: Family::default(),
            policy_reloads: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency),
            upstream_errors: Family::default(),
            decision_unavailable: Counter::default(),
            requests_in_flight: Gauge::default(),
            held_calls: Gauge::default(),
            approvals_pending: Gauge::default(),
            spans_ended: Counter::default(),
            spans_exported: Counter::default(),
            spans_lost: Counter::default(),
            console_tail_skipped: Counter::default(),
            journal_bytes: Gauge::default(),
            journal_appended: Gauge::default(),
            journal_dropped: Gauge::default(),
            journal_refused: Gauge::default(),
            journal_failures: Gauge::default(),
            journal_backlog: Gauge::default(),
            journal_backlog_age: Gauge::default(),
            tools: Mutex::default(),
            export_failure_logged: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "decisions",
            "Decisions by verdict, server and tool",
            m.decisions.clone(),
        );
        registry.register(
            "shadow_disagreements",
            "Decisions whose verdict under the candidate (shadow) policy differs from the live one, by live verdict, \
             shadow verdict, server and tool",
            m.shadow_disagreements.clone(),
        );
        registry.register(
            "decision_duration_seconds",
            "Time to decide one call, store included",
            m.decision_seconds.clone(),
        );
        registry.register(
            "store_duration_seconds",
            "Counter-store round trips by store",
            m.store_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Counter-store failures and timeouts by store",
            m.store_errors.clone(),
        );
        registry.register(
            "store_late_answers",
            "Counter-store answers that came after the deadline, by store and what became of their hits \
             (released, kept, release_failed, none_taken, unanswered)",
            m.store_late_answers.clone(),
        );
        registry.register(
            "local_refusals",
            "Calls a decision replica refused without asking the counter store, because a sliding_log counter \
             it refused shortly before is full until a known time (by counter)",
            m.local_refusals.clone(),
        );
        registry.register(
            "decide_batch_size",
            "Decisions per DecideStream message: sent by an edge, received by a decision replica, or \
             answered by it",
            m.decide_batch_size.clone(),
        );
        registry.register(
            "approvals",
            "Approval events seen by this process: requested, consumed, expired, approved, denied, \
             notified, notification_failed, notification_dropped",
            m.approvals.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads by result (ok, rejected)",
            m.policy_reloads.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time until an upstream MCP server answered, by upstream",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by upstream and kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "decision_unavailable",
            "Calls an edge could not get decided (refused, or forwarded with fail_open)",
            m.decision_unavailable.clone(),
        );
        registry.register(
            "requests_in_flight",
            "MCP requests being handled by this edge",
            m.requests_in_flight.clone(),
        );
        for (name, help, gauge) in [
            (
                "journal_bytes",
                "Bytes of the decision journal on disk",
                &m.journal_bytes,
            ),
            (
                "journal_appended_records",
                "Decision records appended to the journal since start",
                &m.journal_appended,
            ),
            (
                "journal_dropped_records",
                "Records removed unexported because the journal was full (on_full = drop_oldest_unexported)",
                &m.journal_dropped,
            ),
            (
                "journal_refused_records",
                "Records the journal refused (full with on_full = refuse, or too large)",
                &m.journal_refused,
            ),
            (
                "journal_write_failures",
                "Batches the journal could not write or sync",
                &m.journal_failures,
            ),
            (
                "journal_backlog_records",
                "Journal records not yet acknowledged by the OTLP collector",
                &m.journal_backlog,
            ),
            (
                "journal_backlog_age_seconds",
                "Age of the oldest decision not yet acknowledged by the OTLP collector (the export lag); 0 when caught up",
                &m.journal_backlog_age,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "held_calls",
            "tools/call requests this edge holds open waiting for an operator's approval",
            m.held_calls.clone(),
        );
        registry.register(
            "approvals_pending",
            "Approvals pending across the cluster (counted in the store by each decision replica, \
             refreshed every few seconds)",
            m.approvals_pending.clone(),
        );
        registry.register(
            "spans_ended",
            "Spans recorded for export; ended minus exported minus lost is what waits in the export queue, \
             or was dropped because the queue (telemetry.max_queue_size) was full",
            m.spans_ended.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans delivered to the OTLP collector",
            m.spans_exported.clone(),
        );
        registry.register(
            "spans_lost",
            "Spans the OTLP collector did not accept (unreachable, slow or refusing)",
            m.spans_lost.clone(),
        );
        registry.register(
            "console_tail_skipped",
            "Decisions not shown in the console's live tail (more than it publishes per batch)",
            m.console_tail_skipped.clone(),
        );
        for result in ["ok", "rejected"] {
            let _ = m.policy_reloads.get_or_create(&vec![("result".into(), result.into())]);
        }
        Metrics { registry, ..m }
    }

    /// Makes a store's error series exist at zero, so dashboards and alerts see it before
    /// the first error.
    pub fn register_store(&self, store: &str) {
        let _ = self
            .store_errors
            .get_or_create(&vec![("store".into(), store.to_owned())]);
    }

    /// Makes an upstream's error series exist at zero, one per kind of failure.
    pub fn register_upstream(&self, upstream: &str) {
        for kind in ["unreachable", "timeout", "credentials"] {
            let labels = vec![
                ("upstream".into(), upstream.to_owned()),
                ("kind".into(), kind.to_owned()),
            ];
            let _ = self.upstream_errors.get_or_create(&labels);
        }
    }

    /// `tool` as a label value, or `_other` once too many distinct tools were seen.
    pub fn tool_label(&self, tool: &str) -> String {
        let mut seen = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(tool) {
            return tool.to_owned();
        }
        if seen.len() < MAX_TOOL_LABELS {
            seen.insert(tool.to_owned());
            return tool.to_owned();
        }
        "_other".to_owned()
    }

    pub fn observe_decision(&self, verdict: &str, server: &str, tool: &str, took: Duration) {
        let labels = vec![
            ("verdict".into(), verdict.to_owned()),
            ("server".into(), server.to_owned()),
            ("tool".into(), self.tool_label(tool)),
        ];
        self.decisions.get_or_create(&labels).inc();
        self.decision_seconds
            .get_or_create(&Vec::new())
            .observe(took.as_secs_f64());
    }

    /// A decision the candidate policy would have answered otherwise.
    pub fn shadow_disagreement(&self, live: &str, shadow: &str, server: &str, tool: &str) {
        let labels = vec![
            ("live".into(), live.to_owned()),
            ("shadow".into(), shadow.to_owned()),
            ("server".into(), server.to_owned()),
            ("tool".into(), self.tool_label(tool)),
        ];
        self.shadow_disagreements.get_or_create(&labels).inc();
    }

    pub fn observe_store(&self, store: &str, took: Duration, failed: bool) {
        let labels = vec![("store".into(), store.to_owned())];
        self.store_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// A call refused without asking the store, by the counter that is full.
    pub fn local_refusal(&self, counter: &str) {
        self.local_refusals
            .get_or_create(&vec![("counter".into(), counter.to_owned())])
            .inc();
    }

    /// One approval event (see the `approvals` metric's help for the names).
    pub fn approval_event(&self, event: &'static str) {
        self.approvals
            .get_or_create(&vec![("event".into(), event.into())])
            .inc();
    }

    /// One `DecideStream` message of `size` decisions: `sent`, `received` or `answered`.
    pub fn observe_batch(&self, direction: &'static str, size: usize) {
        self.decide_batch_size
            .get_or_create(&vec![("direction".into(), direction.into())])
            .observe(size as f64);
    }

    /// A store answer that came after the decision's deadline, and what became of its hits.
    pub fn late_store_answer(&self, store: &str, outcome: &'static str) {
        self.store_late_answers
            .get_or_create(&vec![
                ("store".into(), store.to_owned()),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }

    pub fn observe_upstream(&self, upstream: &str, took: Duration, error: Option<&str>) {
        let labels = vec![("upstream".into(), upstream.to_owned())];
        self.upstream_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        if let Some(kind) = error {
            let labels = vec![
                ("upstream".into(), upstream.to_owned()),
                ("kind".into(), kind.to_owned()),
            ];
            self.upstream_errors.get_or_create(&labels).inc();
        }
    }

    pub fn policy_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.policy_reloads
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// Wraps the batch span processor to count the spans handed to it, so that spans dropped
/// from a full queue are visible (`spans_ended` − `spans_exported` − `spans_lost`).
#[derive(Debug)]
pub struct CountingProcessor<P> {
    inner: P,
}

impl<P> CountingProcessor<P> {
    pub fn new(inner: P) -> Self {
        CountingProcessor { inner }
    }
}

impl<P: opentelemetry_sdk::trace::SpanProcessor> opentelemetry_sdk::trace::SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        metrics().spans_ended.inc();
        // Decision spans exported from the decision journal instead (it keeps them through a
        // collector outage or a restart) are not exported twice.
        if decisions_from_journal() && span.name == DECISION_SPAN {
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The decision span's name.
pub const DECISION_SPAN: &str = "tollgate.decide";

static DECISIONS_FROM_JOURNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, decision spans are exported from the decision journal, not through the
/// tracing pipeline.
pub fn export_decisions_from_journal() {
    DECISIONS_FROM_JOURNAL.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether decision spans are exported from the decision journal (see
/// [`export_decisions_from_journal`]): the engine then gives them their ids itself and builds
/// no `tracing` span for them.
pub fn decisions_from_journal() -> bool {
    DECISIONS_FROM_JOURNAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Wraps the OTLP exporter to count what reaches the collector and what does not, and to
/// log the first failure (not every one: a dead collector would flood the log).
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
}

impl<E> CountingExporter<E> {
    pub fn new(inner: E) -> Self {
        CountingExporter { inner }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let m = metrics();
        match &result {
            Ok(()) => {
                m.spans_exported.inc_by(n);
            }
            Err(e) => {
                m.spans_lost.inc_by(n);
                if !m.export_failure_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "spans could not be exported to the OTLP collector ({e}); further failures are only counted in tollgate_spans_lost_total"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
