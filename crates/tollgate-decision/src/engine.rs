//! Evaluation of one call: pick the rule, then deny, ask for approval, or take the rule's
//! rate-limit hits atomically in the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_limiter::{Admission, Approval, ApprovalStore, Claim, CounterStore, Hit, MemoryApprovals, NewApproval};
use tollgate_policy::{Action, Annotations, ApprovalBind, Call, CounterHit, Kind, OnStoreError, Policy, Rule};
use tollgate_telemetry::metrics::metrics;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::full::FullUntil;

/// Raw arguments a journal record keeps at most (with `telemetry.record_arguments`).
const MAX_JOURNALED_ARGUMENTS: usize = 64 * 1024;
use crate::proto::{
    self, DecideRequest, Decision, LimitStatus, SubjectKind, Verdict, VisibleToolsRequest, VisibleToolsResponse,
};
use crate::tail::{DecisionRecord, DecisionTail, LimitRecord};
use crate::{Decider, DecisionError, verdict_name};

/// How long an acquire that missed its deadline is still waited for, to give back what it
/// took. Past this (a store hung for half a minute), the hits stay charged until their
/// window ends.
const LATE_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Evaluates calls against the current policy; the policy can be swapped at any time.
pub struct Engine {
    policy: ArcSwap<Policy>,
    store: Arc<dyn CounterStore>,
    approvals: Arc<dyn ApprovalStore>,
    /// Which grant's call made which upstream task (MCP tasks).
    tasks: Arc<dyn tollgate_limiter::TaskStore>,
    /// Told of every approval this replica creates (e.g. a webhook sender); never waited for.
    new_approvals: Option<tokio::sync::mpsc::Sender<Approval>>,
    store_timeout: Duration,
    record_arguments: bool,
    max_pending_per_grant: usize,
    /// Counters known to be full until a known time (see `full.rs`); `None` for a store in
    /// this process, where asking costs nothing.
    full: Option<FullUntil>,
    /// The console's live tail, when the console is on.
    tail: Option<Arc<DecisionTail>>,
    /// The decision journal (`[audit]`), and whether a decision waits for its record.
    journal: Option<(tollgate_journal::Journal, bool)>,
    /// Tool pinning's records, and this replica's short-lived copy of them (Redis only).
    pins: Arc<dyn tollgate_limiter::PinStore>,
    pin_cache: Option<crate::pins::PinCache>,
    /// The candidate policy (`[decision] shadow_policy`), evaluated beside the live one.
    candidate_file: arc_swap::ArcSwapOption<Policy>,
    /// Counts disagreements with the candidate for the console, when it is on.
    shadow_log: Option<Arc<crate::shadow::ShadowLog>>,
}

/// One counter's use, read from the store (see [`Engine::counter_use`]).
#[derive(Debug, Clone)]
pub struct CounterUse {
    pub counter: String,
    /// The concrete key (counter name and scope values).
    pub key: String,
    /// "10 per minute per grant".
    pub limit: String,
    pub algorithm: String,
    pub max: u64,
    pub remaining: u64,
    /// Until the window holds no hits at all.
    pub empty_in: Duration,
}

/// Counter keys a replica remembers as full, by default.
pub const DEFAULT_FULL_CACHE_ENTRIES: usize = 100_000;

impl Engine {
    pub fn new(policy: Policy, store: Arc<dyn CounterStore>, store_timeout: Duration) -> Self {
        Engine::new_shared(Arc::new(policy), store, store_timeout)
    }

    /// [`Engine::new`] with a policy shared with others (e.g. a candidate's variant with its
    /// shadow-mode rules in force).
    pub fn new_shared(policy: Arc<Policy>, store: Arc<dyn CounterStore>, store_timeout: Duration) -> Self {
        metrics().register_store(store.kind());
        Engine {
            policy: ArcSwap::new(policy),
            approvals: Arc::new(MemoryApprovals::default()),
            tasks: Arc::new(tollgate_limiter::MemoryTasks::default()),
            new_approvals: None,
            store_timeout,
            record_arguments: false,
            max_pending_per_grant: tollgate_limiter::DEFAULT_MAX_PENDING_PER_GRANT,
            full: (!store.answers_at_once() && !store.may_give_back_admissions())
                .then(|| FullUntil::new(DEFAULT_FULL_CACHE_ENTRIES)),
            store,
            tail: None,
            journal: None,
            pins: Arc::new(tollgate_limiter::MemoryPins::default()),
            pin_cache: None,
            candidate_file: arc_swap::ArcSwapOption::empty(),
            shadow_log: None,
        }
    }

    /// Installs (or, with `None`, removes) the candidate policy every decision is also
    /// evaluated against (`[decision] shadow_policy`). Its shadow-mode rules are in force.
    pub fn replace_candidate(&self, candidate: Option<Policy>) {
        let candidate = candidate.map(|policy| match policy.with_shadow_rules() {
            Some(all) => all.clone(),
            None => Arc::new(policy),
        });
        self.candidate_file.store(candidate);
    }

    pub(crate) fn candidate_file(&self) -> &arc_swap::ArcSwapOption<Policy> {
        &self.candidate_file
    }

    /// Counts disagreements with the candidate for the console's "Candidate policy" page.
    pub fn with_shadow_log(mut self, log: Arc<crate::shadow::ShadowLog>) -> Self {
        self.shadow_log = Some(log);
        self
    }

    pub fn shadow_log(&self) -> Option<&Arc<crate::shadow::ShadowLog>> {
        self.shadow_log.as_ref()
    }

    /// Keeps tool pins in `pins`, read through a cache of `cache_ttl` (zero: none; use none
    /// for a store in this process).
    pub fn with_pins(mut self, pins: Arc<dyn tollgate_limiter::PinStore>, cache_ttl: Duration) -> Self {
        self.pins = pins;
        self.pin_cache = (!cache_ttl.is_zero()).then(|| crate::pins::PinCache::new(cache_ttl));
        self
    }

    pub(crate) fn pins(&self) -> &Arc<dyn tollgate_limiter::PinStore> {
        &self.pins
    }

    pub(crate) fn pin_cache(&self) -> Option<&crate::pins::PinCache> {
        self.pin_cache.as_ref()
    }

    /// Hands every decision to the console's live tail.
    pub fn with_tail(mut self, tail: Arc<DecisionTail>) -> Self {
        self.tail = Some(tail);
        self
    }

    pub fn tail(&self) -> Option<&Arc<DecisionTail>> {
        self.tail.as_ref()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Each counter a call would take, as the store holds it now, without taking anything
    /// ([`CounterStore::read`]). Empty when the rule that decides the call takes no counters
    /// (or denies it).
    pub async fn counter_use(&self, call: &Call<'_>, kind: Kind) -> Result<Vec<CounterUse>, String> {
        let policy = self.policy.load();
        let rule = policy.rule_for_subject(kind, call.server, call.tool, call.grant, call.annotations);
        if rule.action == Action::Deny {
            return Ok(Vec::new());
        }
        let hits = policy.counter_hits(rule, call);
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let asked: Vec<Hit> = hits.iter().map(store_hit).collect();
        let statuses = self.read(&asked).await?;
        Ok(hits
            .iter()
            .zip(&statuses)
            .map(|(hit, status)| CounterUse {
                counter: hit.limit.counter.clone(),
                key: hit.key.clone(),
                limit: hit.limit.describe(),
                algorithm: hit.limit.algorithm.to_string(),
                max: hit.limit.max,
                remaining: status.remaining.min(hit.limit.max),
                empty_in: status.reset_after,
            })
            .collect())
    }

    /// [`CounterStore::read`] within the store's timeout: one status per hit, or why not.
    pub(crate) async fn read(&self, hits: &[Hit]) -> Result<Vec<tollgate_limiter::CounterStatus>, String> {
        match tokio::time::timeout(self.store_timeout, self.store.read(hits)).await {
            Ok(Ok(statuses)) if statuses.len() == hits.len() => Ok(statuses),
            Ok(Ok(_)) => Err("the counter store answered another number of counters".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the counter store did not answer within {:?}",
                self.store_timeout
            )),
        }
    }

    /// Remember at most `entries` counter keys as full (`[decision] full_cache_entries`);
    /// 0 asks the store about every call.
    pub fn with_full_cache_entries(mut self, entries: usize) -> Self {
        self.full = (entries > 0 && !self.store.answers_at_once() && !self.store.may_give_back_admissions())
            .then(|| FullUntil::new(entries));
        self
    }

    /// Keeps approval records in `approvals` (by default in this process's memory; a
    /// cluster shares them in Redis, like its counters).
    pub fn with_approvals(mut self, approvals: Arc<dyn ApprovalStore>) -> Self {
        self.approvals = approvals;
        self
    }

    /// Appends every decision's record to `journal`; with `required`, a decision is answered
    /// only once its record is durable, and a call whose record cannot be written is refused.
    pub fn with_journal(mut self, journal: tollgate_journal::Journal, required: bool) -> Self {
        self.journal = Some((journal, required));
        self
    }

    /// Whether decisions wait for a journal that cannot take their records now (the replica
    /// refuses every call meanwhile, and reports itself not ready).
    pub fn journal_refusing(&self) -> bool {
        self.journal.as_ref().is_some_and(|(journal, waits)| {
            *waits && journal.stats().failing.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The decision journal, when one is kept.
    pub fn journal(&self) -> Option<&tollgate_journal::Journal> {
        self.journal.as_ref().map(|(j, _)| j)
    }

    /// Keeps task records in `tasks` (by default in this process).
    pub fn with_tasks(mut self, tasks: Arc<dyn tollgate_limiter::TaskStore>) -> Self {
        self.tasks = tasks;
        self
    }

    /// Records the task a decided call created, within the store's timeout.
    pub async fn record_task(&self, request: &proto::RecordTaskRequest) -> Result<(), String> {
        let Some(task) = &request.task else {
            return Err("RecordTaskRequest.task is missing".into());
        };
        let short = |text: &str| text.len() <= 256 && !text.chars().any(char::is_control);
        if ![&task.server, &task.grant, &task.decision_id, &task.traceparent]
            .iter()
            .all(|t| short(t))
        {
            return Err("a task record's server, grant, decision id and traceparent are at most 256 bytes without control characters".into());
        }
        if task.task_id.is_empty() || task.task_id.len() > tollgate_limiter::MAX_TASK_ID_BYTES {
            return Err(format!(
                "a task id must be 1 to {} bytes",
                tollgate_limiter::MAX_TASK_ID_BYTES
            ));
        }
        let record = tollgate_limiter::TaskRecord {
            server: task.server.clone(),
            task_id: task.task_id.clone(),
            grant: task.grant.clone(),
            decision_id: task.decision_id.clone(),
            traceparent: task.traceparent.clone(),
        };
        let ttl = tollgate_limiter::task_ttl(request.ttl_ms);
        match tokio::time::timeout(self.store_timeout, self.tasks.record(&record, ttl)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("the store did not answer within {:?}", self.store_timeout)),
        }
    }

    /// The records of the asked task ids that belong to the grant.
    pub async fn owned_tasks(&self, request: &proto::OwnedTasksRequest) -> Result<Vec<proto::TaskRecord>, String> {
        if request.task_ids.len() > tollgate_limiter::MAX_TASKS_PER_QUERY {
            return Err(format!(
                "at most {} task ids per query",
                tollgate_limiter::MAX_TASKS_PER_QUERY
            ));
        }
        let owned = self.tasks.owned(&request.grant, &request.server, &request.task_ids);
        let owned = match tokio::time::timeout(self.store_timeout, owned).await {
            Ok(result) => result.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("the store did not answer within {:?}", self.store_timeout)),
        };
        Ok(owned
            .into_iter()
            .map(|r| proto::TaskRecord {
                server: r.server,
                task_id: r.task_id,
                grant: r.grant,
                decision_id: r.decision_id,
                traceparent: r.traceparent,
            })
            .collect())
    }

    /// Sends every approval this replica creates to `tx` (a bounded channel: when it is
    /// full the notification is dropped, counted and logged; a decision never waits).
    pub fn with_new_approvals(mut self, tx: tokio::sync::mpsc::Sender<Approval>) -> Self {
        self.new_approvals = Some(tx);
        self
    }

    /// Most approvals one grant may have pending at once (`[approvals]
    /// max_pending_per_grant`); calls that would ask for more are refused.
    pub fn with_max_pending_per_grant(mut self, max: usize) -> Self {
        self.max_pending_per_grant = max;
        self
    }

    /// Where approvals live, for the operators' API.
    pub fn approvals(&self) -> &Arc<dyn ApprovalStore> {
        &self.approvals
    }

    /// Puts the raw tool arguments on decision spans (by default only their SHA-256).
    pub fn with_recorded_arguments(mut self, record: bool) -> Self {
        self.record_arguments = record;
        self
    }

    /// Installs a new policy; calls already being decided finish under the old one.
    pub fn replace_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Deadline of one store round trip.
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Decides one call, as a child of the current span.
    pub async fn decide(&self, request: &DecideRequest) -> Decision {
        self.decide_with_parent(request, None).await
    }

    /// Decides one call. The decision is an audit record: a `tollgate.decide` span (child of
    /// `parent`, e.g. the edge's span received over gRPC), a log event on the
    /// `tollgate::audit` target, and the decision metrics.
    pub async fn decide_with_parent(
        &self,
        request: &DecideRequest,
        parent: Option<opentelemetry::Context>,
    ) -> Decision {
        self.decide_with_shadow(request, parent).await.0
    }

    /// [`Engine::decide_with_parent`], with the candidate policy's verdict beside the
    /// decision (`None` without a candidate): what `tollgate policy test` checks.
    pub async fn decide_with_shadow(
        &self,
        request: &DecideRequest,
        parent: Option<opentelemetry::Context>,
    ) -> (Decision, Option<crate::shadow::ShadowFinding>) {
        let began = wall_clock_ns();
        // The parent span (the edge's), for the journal's record of the decision span (read
        // only when a journal is kept).
        let parent_context = self.journal.as_ref().map(|_| {
            use opentelemetry::trace::TraceContextExt;
            let sc = match &parent {
                Some(cx) => cx.span().span_context().clone(),
                None => {
                    use tracing_opentelemetry::OpenTelemetrySpanExt;
                    tracing::Span::current().context().span().span_context().clone()
                }
            };
            sc.is_valid().then_some(sc)
        });
        let parent_span_id = parent_context
            .as_ref()
            .map(|sc| sc.as_ref().map(|sc| sc.span_id().to_string()).unwrap_or_default());
        // Decision spans exported from the journal get their ids here, and no `tracing` span
        // is built for them (the tracing pipeline would only drop it): the span the collector
        // receives is the journal's record, with the same name, attributes, links and parent.
        let own_ids = match &parent_context {
            Some(parent) if self.spans_from_journal() => Some(span_ids(parent.as_ref())),
            _ => None,
        };
        let span = if own_ids.is_some() {
            tracing::Span::none()
        } else {
            self.decision_span(request)
        };
        tollgate_telemetry::propagation::set_parent(&span, parent);
        let parsed = parse_json(&request.arguments_json);
        // The console's tail takes this decision only while its batch has room (checked once,
        // here: beyond that, nothing is built for it).
        let tail = self.tail.as_ref().filter(|t| t.has_room());
        let digest = if !span.is_disabled() || tail.is_some() || self.journal.is_some() || self.shadow_log.is_some() {
            arguments_digest(&parsed, &request.arguments_json)
        } else {
            String::new()
        };
        if !span.is_disabled() {
            span.record("tollgate.arguments.sha256", digest.as_str());
            if self.record_arguments {
                span.record("tollgate.arguments", request.arguments_json.as_str());
            }
        }
        let started = Instant::now();
        let pin = self
            .check_pin(&request.server, request.kind(), &request.tool, request.pin.as_ref())
            .await;
        if let Some(pin) = &pin
            && !span.is_disabled()
        {
            span.record("tollgate.pin.state", pin.state.as_str());
            span.record("tollgate.pin.digest", pin.digest.as_str());
        }
        let arguments = call_arguments(parsed);
        let candidate = self.candidate();
        // The candidate's counters that the live decision does not take are read beside it
        // (the read does not depend on it), so a candidate adds no round trip of latency.
        let early = match &candidate {
            Some(candidate) => crate::shadow::EarlyReads::plan(self, candidate, request, &arguments),
            None => crate::shadow::EarlyReads::default(),
        };
        let evaluated = tracing::Instrument::instrument(self.evaluate(request, &arguments, pin.as_ref()), span.clone());
        let (decision, early) = tokio::join!(evaluated, early.run(self));
        // The candidate's verdict, recorded beside the live one (never enforced).
        let shadow = match candidate {
            Some(candidate) => {
                let finding = self
                    .shadow_decide(&candidate, request, &arguments, pin.as_ref(), &decision, &early)
                    .await;
                Some((finding, candidate.digest()))
            }
            None => None,
        };
        if let Some((finding, _)) = &shadow {
            span.record("tollgate.shadow.verdict", verdict_name(finding.verdict));
            span.record("tollgate.shadow.rule", finding.rule.as_str());
        }
        let verdict = verdict_name(decision.verdict());
        span.record("tollgate.verdict", verdict);
        span.record("tollgate.rule", decision.rule.as_str());
        span.record("tollgate.reason", decision.reason.as_str());
        span.record("tollgate.decision_id", decision.decision_id.as_str());
        if !decision.approval_id.is_empty() {
            span.record("tollgate.approval.id", decision.approval_id.as_str());
        }
        if decision.retry_after_ms > 0 {
            span.record("tollgate.retry_after_ms", decision.retry_after_ms);
        }
        for limit in &decision.limits {
            span.set_attribute(
                format!("tollgate.limit.{}.remaining", limit.counter),
                limit.remaining as i64,
            );
            span.set_attribute(format!("tollgate.limit.{}.max", limit.counter), limit.limit as i64);
        }
        let mut decision = decision;
        // The console's candidate page shows examples by their arguments' digest.
        let counted_digest = match (&shadow, &self.shadow_log) {
            (Some(_), Some(_)) => digest.clone(),
            _ => String::new(),
        };
        if tail.is_some() || self.journal.is_some() {
            let (trace_id, span_id) = match own_ids {
                Some(ids) => ids,
                None => {
                    let traceparent = if span.is_disabled() {
                        String::new()
                    } else {
                        tollgate_telemetry::propagation::traceparent_of(&span)
                    };
                    let mut ids = traceparent.split('-').skip(1);
                    let mut id = || {
                        ids.next()
                            .filter(|id| id.bytes().any(|b| b != b'0'))
                            .unwrap_or_default()
                            .to_owned()
                    };
                    (id(), id())
                }
            };
            let mut record = DecisionRecord {
                id: decision.decision_id.clone(),
                at_ms: tollgate_limiter::wall_clock_ms(),
                replica: tail.map(|t| t.replica().to_owned()).unwrap_or_default(),
                verdict: verdict.to_owned(),
                rule: decision.rule.clone(),
                reason: decision.reason.clone(),
                method: tollgate_api::subject_method(request.kind()).to_owned(),
                server: request.server.clone(),
                tool: request.tool.clone(),
                grant: request.grant.clone(),
                agent: request.agent.clone(),
                session: request.session_id.clone(),
                arguments_sha256: digest,
                trace_id,
                approval_id: decision.approval_id.clone(),
                retry_after_ms: decision.retry_after_ms,
                pin_state: pin.as_ref().map(|p| p.state.clone()).unwrap_or_default(),
                pin_digest: pin.as_ref().map(|p| p.digest.clone()).unwrap_or_default(),
                shadow_verdict: shadow
                    .as_ref()
                    .map(|(f, _)| verdict_name(f.verdict).to_owned())
                    .unwrap_or_default(),
                shadow_rule: shadow.as_ref().map(|(f, _)| f.rule.clone()).unwrap_or_default(),
                limits: decision
                    .limits
                    .iter()
                    .map(|l| LimitRecord {
                        counter: l.counter.clone(),
                        remaining: l.remaining,
                        max: l.limit,
                    })
                    .collect(),
            };
            let timing = (parent_span_id.unwrap_or_default(), began, wall_clock_ns());
            if let Some((journal, required)) = &self.journal
                && let Err(refused) = self
                    .journal_record(journal, *required, request, &record, span_id, timing)
                    .await
            {
                decision = refused;
                span.record("tollgate.verdict", verdict_name(decision.verdict()));
                span.record("tollgate.rule", decision.rule.as_str());
                span.record("tollgate.reason", decision.reason.as_str());
                // The console's tail shows the call as it was answered: refused.
                record.verdict = verdict_name(decision.verdict()).to_owned();
                record.rule = decision.rule.clone();
                record.reason = decision.reason.clone();
                record.approval_id.clear();
                record.retry_after_ms = 0;
                record.limits.clear();
            }
            if let Some(tail) = tail {
                tail.record(record);
            }
        }
        let verdict = verdict_name(decision.verdict());
        // Counted as answered (a refusal by the journal included). Only tools an upstream
        // listed (the edge sends their annotations) become label values: agents choose the
        // names of the rest, and of every resource and prompt.
        let tool_label = match request.kind() {
            SubjectKind::Tool if request.annotations.is_some() => request.tool.as_str(),
            SubjectKind::Tool => "_unlisted",
            SubjectKind::Resource => "_resource",
            SubjectKind::Prompt => "_prompt",
        };
        metrics().observe_decision(verdict, &request.server, tool_label, started.elapsed());
        if let Some((finding, candidate)) = &shadow {
            let shadow_verdict = verdict_name(finding.verdict);
            if shadow_verdict != verdict {
                metrics().shadow_disagreement(verdict, shadow_verdict, &request.server, tool_label);
            }
            if let Some(log) = &self.shadow_log {
                log.count(crate::shadow::Counted {
                    request,
                    live: &decision,
                    shadow: finding,
                    candidate: *candidate,
                    arguments_sha256: &counted_digest,
                });
            }
        }
        span.in_scope(|| {
            // Fields that came over the wire are logged with `?` (quoted and escaped): a
            // value holding a newline cannot forge a log line, whatever the format.
            tracing::info!(
                target: "tollgate::audit",
                decision_id = %decision.decision_id,
                verdict,
                rule = ?decision.rule,
                method = tollgate_api::subject_method(request.kind()),
                server = ?request.server,
                tool = ?request.tool,
                grant = ?request.grant,
                agent = ?request.agent,
                subject = ?request.subject,
                issuer = ?request.issuer,
                session = ?request.session_id,
                request_id = ?request.request_id,
                reason = ?decision.reason,
                "decision"
            )
        });
        (decision, shadow.map(|(finding, _)| finding))
    }

    /// The `tollgate.decide` span of a decision whose span goes through the tracing pipeline.
    fn decision_span(&self, request: &DecideRequest) -> tracing::Span {
        // Text that came over the wire is recorded as `&str`: quoted and escaped in log lines
        // (a value cannot forge another field), as it is in OpenTelemetry attributes.
        let span = tracing::info_span!(
            target: "tollgate::audit",
            "tollgate.decide",
            otel.kind = "internal",
            tollgate.verdict = Empty,
            tollgate.rule = Empty,
            tollgate.reason = Empty,
            tollgate.decision_id = Empty,
            tollgate.approval.id = Empty,
            tollgate.server = request.server.as_str(),
            tollgate.grant = request.grant.as_str(),
            tollgate.agent = request.agent.as_str(),
            enduser.id = request.subject.as_str(),
            tollgate.token.issuer = request.issuer.as_str(),
            tollgate.request_id = request.request_id.as_str(),
            tollgate.retry_after_ms = Empty,
            tollgate.refused_locally = Empty,
            tollgate.arguments.sha256 = Empty,
            tollgate.arguments = Empty,
            tollgate.pin.state = Empty,
            tollgate.pin.digest = Empty,
            tollgate.shadow.verdict = Empty,
            tollgate.shadow.rule = Empty,
            gen_ai.tool.name = Empty,
            gen_ai.prompt.name = Empty,
            mcp.resource.uri = Empty,
            mcp.method.name = tollgate_api::subject_method(request.kind()),
            mcp.session.id = Empty,
        );
        span.record(tollgate_api::subject_attribute(request.kind()), request.tool.as_str());
        if !request.session_id.is_empty() {
            span.record("mcp.session.id", request.session_id.as_str());
        }
        span
    }

    /// Whether decision spans leave through the journal's exporter (see
    /// [`tollgate_telemetry::metrics::decisions_from_journal`]).
    fn spans_from_journal(&self) -> bool {
        self.journal.is_some() && tollgate_telemetry::metrics::decisions_from_journal()
    }

    /// Appends the decision's record to the journal; with `required`, waits until it is
    /// durable and, when it cannot be, gives the refusal that replaces the decision.
    async fn journal_record(
        &self,
        journal: &tollgate_journal::Journal,
        required: bool,
        request: &DecideRequest,
        record: &DecisionRecord,
        span_id: String,
        (parent_span_id, start_ns, end_ns): (String, u64, u64),
    ) -> Result<(), Decision> {
        // A decision that consumed an approval links to the operator's span (as the live
        // span does): the approval's record says which.
        let mut links = Vec::new();
        if !record.approval_id.is_empty()
            && record.verdict == "ALLOW"
            && let Ok(Ok(Some(approval))) =
                tokio::time::timeout(self.store_timeout, self.approvals.get(&record.approval_id)).await
            && let Some(trace) = approval.resolved_trace
        {
            links.push(trace);
        }
        let entry = crate::audit::JournalRecord {
            links,
            decision: record.clone(),
            request_id: request.request_id.clone(),
            span_id,
            parent_span_id,
            start_ns,
            end_ns,
            mcp_method: tollgate_api::subject_method(request.kind()).to_owned(),
            subject: request.subject.clone(),
            issuer: request.issuer.clone(),
            annotations: crate::audit::annotations_json(request.annotations.as_ref()),
            // Bounded: a record holds at most 1 MiB, and spans travel in batches to a
            // collector; larger arguments are named by their SHA-256 (on the record anyway).
            arguments: match self.record_arguments {
                false => String::new(),
                true if request.arguments_json.len() <= MAX_JOURNALED_ARGUMENTS => request.arguments_json.clone(),
                true => format!(
                    "({} bytes, more than the journal keeps: see tollgate.arguments.sha256)",
                    request.arguments_json.len()
                ),
            },
        };
        let bytes = crate::audit::encode_record(&entry);
        if !required {
            journal.append_later(bytes);
            return Ok(());
        }
        match journal.append(bytes).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(decision_id = %record.id, "refusing a call whose decision cannot be journaled: {e}");
                let refused = Decision {
                    decision_id: record.id.clone(),
                    ..Default::default()
                };
                Err(refused.with(
                    Verdict::Deny,
                    "audit",
                    format!("{e}; calls are refused until their decisions can be recorded"),
                ))
            }
        }
    }

    async fn evaluate(
        &self,
        request: &DecideRequest,
        arguments: &Result<Value, String>,
        pin: Option<&crate::pins::PinFinding>,
    ) -> Decision {
        let policy = self.policy.load();
        let mut decision = Decision {
            decision_id: uuid::Uuid::now_v7().to_string(),
            policy_digest: policy.digest(),
            ..Default::default()
        };
        // Pinning first: a definition nobody approved is refused whatever the policy says.
        if let Some(pin) = pin
            && pin.refuses()
        {
            return decision.with(Verdict::Deny, "pins", pin.reason.clone());
        }
        let arguments = match arguments {
            Ok(v) => v,
            Err(reason) => return decision.with(Verdict::Deny, "arguments", reason.clone()),
        };
        let call = call_of(request, arguments);
        let kind = policy_kind(request.kind());
        if !policy.covers(kind) {
            // Documented: a policy without a `resources` (`prompts`) section leaves reads
            // (gets) as they were before policies covered them. Still audited.
            let rule = format!("(no {} section)", kind.section());
            return decision.with(Verdict::Allow, &rule, String::new());
        }
        let subject = Subject {
            kind: request.kind(),
            name: &request.tool,
        };
        let rule = policy.rule_for_subject(kind, call.server, call.tool, call.grant, call.annotations);
        decision.rule = rule.label.clone();
        // Arguments are checked before approvals and limits: a refused call takes nothing.
        if rule.action != Action::Deny
            && let Some(schema) = &rule.arguments
            && let Err(violations) = schema.check(call.arguments)
        {
            let reason = match &rule.reason {
                Some(reason) => format!("{reason}: {violations}"),
                None => format!("arguments rejected by policy rule {}: {violations}", rule.label),
            };
            return decision.with(Verdict::Deny, &rule.label, reason);
        }
        match rule.action {
            Action::Deny => {
                let reason = rule.reason.clone().unwrap_or_else(|| denial_text(rule, &subject));
                decision.with(Verdict::Deny, &rule.label, reason)
            }
            Action::RequireApproval => self.approval(decision, &policy, rule, &call, subject, request).await,
            Action::Allow => {
                let hits = policy.counter_hits(rule, &call);
                if hits.is_empty() {
                    return decision.with(Verdict::Allow, &rule.label, String::new());
                }
                self.take_hits(decision, &policy, rule, &request.request_id, &hits)
                    .await
            }
        }
    }

    /// A `require_approval` rule: the call proceeds (to the rule's limits) only by consuming
    /// an approved record bound to exactly this call; otherwise it is refused, naming the
    /// pending approval, or the denial or expiry of the last one.
    async fn approval(
        &self,
        mut decision: Decision,
        policy: &Policy,
        rule: &Rule,
        call: &Call<'_>,
        subject: Subject<'_>,
        request: &DecideRequest,
    ) -> Decision {
        let request_id = request.request_id.as_str();
        // Approvals name (and are bound to) the kind with the name: an approval to get
        // prompt "x" can never let tool "x" through.
        let label = tollgate_api::subject_label(subject.kind, subject.name);
        let arguments = if call.arguments.is_null() {
            Value::Object(Default::default())
        } else {
            call.arguments.clone()
        };
        // Bound to the exact arguments (keys sorted, nothing coerced): the operator's yes
        // is for the call they saw, and that call is what the edge forwards.
        let exact = tollgate_policy::exact_json(&arguments);
        // An operator approves what they are shown: arguments longer than a record shows in
        // full could hide their dangerous part past the cut, so such a call is refused.
        if exact.len() > tollgate_limiter::MAX_STORED_ARGUMENTS {
            let reason = format!(
                "the arguments are {} bytes, more than an operator can be shown for approval ({} KiB); \
                 a call that needs approval must fit",
                exact.len(),
                tollgate_limiter::MAX_STORED_ARGUMENTS / 1024
            );
            return decision.with(Verdict::Deny, &rule.label, reason);
        }
        let binding = match rule.approval.bind {
            ApprovalBind::Grant => serde_json::json!(["grant", call.grant, call.server, label, exact]),
            ApprovalBind::Agent => serde_json::json!([
                "agent",
                call.grant,
                call.agent,
                request.issuer,
                request.subject,
                call.server,
                label,
                exact
            ]),
        }
        .to_string();
        let new = NewApproval {
            server: call.server.to_owned(),
            tool: label.clone(),
            grant: call.grant.to_owned(),
            agent: call.agent.to_owned(),
            subject: request.subject.clone(),
            issuer: request.issuer.clone(),
            arguments: exact,
            digest: hex::encode(Sha256::digest(binding.as_bytes())),
            rule: rule.label.clone(),
            timeout: rule.approval.timeout,
            max_pending: self.max_pending_per_grant,
        };
        let asked = match tokio::time::timeout(self.store_timeout, self.approvals.claim(&new)).await {
            Ok(Ok(claim)) => claim,
            Ok(Err(e)) => {
                return decision.with(
                    Verdict::Deny,
                    &rule.label,
                    format!("{e}; calls that need approval are refused meanwhile"),
                );
            }
            Err(_) => {
                return decision.with(
                    Verdict::Deny,
                    &rule.label,
                    format!(
                        "the approval store did not answer within {:?}; calls that need approval are refused meanwhile",
                        self.store_timeout
                    ),
                );
            }
        };
        let tool = label.as_str();
        match asked {
            Claim::Approved(approval) => {
                // (From the journal, the record's links carry it.)
                if let Some(trace) = &approval.resolved_trace
                    && !self.spans_from_journal()
                {
                    tollgate_telemetry::propagation::link_to(&tracing::Span::current(), trace);
                }
                let hits = policy.counter_hits(rule, call);
                let mut decided = if hits.is_empty() {
                    decision.with(Verdict::Allow, &rule.label, String::new())
                } else {
                    self.take_hits(decision, policy, rule, request_id, &hits).await
                };
                if decided.verdict() != Verdict::Allow {
                    // The call does not go through: its approval is not used up.
                    match self.approvals.restore(&approval).await {
                        Ok(()) => {
                            decided.reason = format!(
                                "{}; approval {} stays approved for the next identical call",
                                decided.reason, approval.id
                            );
                        }
                        Err(e) => {
                            tracing::warn!(approval_id = %approval.id, "could not put back an approval whose call was refused: {e}")
                        }
                    }
                } else {
                    metrics().approval_event("consumed");
                }
                decided.approval_id = approval.id;
                decided
            }
            Claim::Pending { approval, created } => {
                if created {
                    tracing::info!(target: "tollgate::audit", approval_id = %approval.id, server = ?call.server, tool = ?tool, grant = ?call.grant, "approval requested");
                    metrics().approval_event("requested");
                    if let Some(tx) = &self.new_approvals
                        && tx.try_send(approval.clone()).is_err()
                    {
                        metrics().approval_event("notification_dropped");
                        tracing::warn!(approval_id = %approval.id, "approval notification queue full: this approval is not notified");
                    }
                }
                let wait = Duration::from_millis(approval.expires_ms.saturating_sub(tollgate_limiter::wall_clock_ms()));
                let asks = rule.reason.clone().unwrap_or_else(|| {
                    format!(
                        "{} needs an operator's approval (policy rule {})",
                        subject.action_text(),
                        rule.label
                    )
                });
                let reason = format!(
                    "{asks}: approval {} is pending for {} more; call again with the same arguments once an operator \
                     has approved it",
                    approval.id,
                    human_duration(wait)
                );
                decision.approval_id = approval.id;
                decision.hold_ms = rule.approval.hold.map_or(0, ceil_ms).min(ceil_ms(wait));
                decision.with(Verdict::ApprovalRequired, &rule.label, reason)
            }
            Claim::Denied(approval) => {
                let by = approval.resolved_by.as_deref().unwrap_or("an operator");
                let why = approval.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                let reason = format!(
                    "approval {} for this call was denied by {by}{why}; calling again asks for a new approval",
                    approval.id
                );
                decision.approval_id = approval.id;
                decision.with(Verdict::Deny, &rule.label, reason)
            }
            Claim::TooMany => {
                metrics().approval_event("refused_too_many");
                tracing::warn!(target: "tollgate::audit", grant = ?call.grant, tool = ?tool, "approval refused: the grant has too many pending");
                decision.with(
                    Verdict::Deny,
                    &rule.label,
                    format!(
                        "this grant already has {} approvals waiting for an operator (the most allowed); \
                         wait until some are resolved",
                        self.max_pending_per_grant
                    ),
                )
            }
            Claim::Expired(approval) => {
                metrics().approval_event("expired");
                let reason = format!(
                    "approval {} for this call expired before an operator decided; calling again asks for a new approval",
                    approval.id
                );
                decision.approval_id = approval.id;
                decision.with(Verdict::Deny, &rule.label, reason)
            }
        }
    }

    async fn take_hits(
        &self,
        decision: Decision,
        policy: &Policy,
        rule: &Rule,
        request_id: &str,
        hits: &[CounterHit<'_>],
    ) -> Decision {
        // A call without a request id still needs one in the store, so that hits taken
        // after the deadline can be found and given back.
        let store_id = if request_id.is_empty() {
            decision.decision_id.as_str()
        } else {
            request_id
        };
        let keep_late_hits = rule.on_store_error == OnStoreError::Allow;
        let batch: Arc<[Hit]> = hits.iter().map(store_hit).collect();
        // A refusal is remembered only for counters whose hits are never held and given back
        // by other calls (the policy that decided this call knows which); nothing is, when
        // refusals are not remembered at all.
        let rememberable: Vec<bool> = match &self.full {
            Some(_) => hits
                .iter()
                .map(|h| !policy.may_be_given_back(&h.limit.counter))
                .collect(),
            None => Vec::new(),
        };
        match self.take(store_id, batch, keep_late_hits, &rememberable).await {
            Ok(Taken::KnownFull(left)) => refused_locally(decision, rule, hits, &left),
            Ok(Taken::Store(admission)) => admitted_or_limited(decision, rule, hits, &admission),
            Err(cause) => {
                tracing::warn!(store = self.store.kind(), rule = %rule.label, "counter store error: {cause}");
                match rule.on_store_error {
                    OnStoreError::Deny => decision.with(
                        Verdict::Deny,
                        &rule.label,
                        format!(
                            "{cause}; rule {} denies calls while the counter store is unavailable",
                            rule.label
                        ),
                    ),
                    OnStoreError::Allow => decision.with(
                        Verdict::Allow,
                        &rule.label,
                        format!("{cause}; admitted without counting (on_store_error: allow)"),
                    ),
                }
            }
        }
    }

    /// Takes `hits` for a decision (MCP calls, and Envoy's rate limit service): counters known
    /// to be full are refused here, the store is asked within `store_timeout`, a late
    /// answer's hits are given back (unless `keep_late_hits`), refusals are remembered for
    /// the hits whose `rememberable` is true (one per hit): a counter whose hits other calls
    /// may hold for a moment and give back can refuse because of them, and such a refusal
    /// says nothing about the next moment.
    pub async fn take(
        &self,
        request_id: &str,
        hits: Arc<[Hit]>,
        keep_late_hits: bool,
        rememberable: &[bool],
    ) -> Result<Taken, String> {
        if let Some(full) = &self.full
            && let Some(left) = full.check(&hits)
        {
            for (hit, left) in hits.iter().zip(&left) {
                if left.is_some() {
                    metrics().local_refusal(hit.counter_name());
                }
            }
            return Ok(Taken::KnownFull(left));
        }
        let started = Instant::now();
        let mut outcome = self.acquire(request_id, hits.clone(), keep_late_hits).await;
        // Admitted, but not on as many replicas as store.replica_ack asks: a store error.
        // Refused for it (on_store_error: deny), the call gives its hits back; allowed
        // anyway (allow), it keeps them, since it runs.
        if let Ok(admission) = &outcome
            && admission.admitted
            && let Some(cause) = &admission.unreplicated
        {
            let cause = format!("counter store: {cause}");
            if !keep_late_hits {
                let released =
                    tokio::time::timeout(LATE_ANSWER_WAIT, self.store.release(request_id, &hits, admission)).await;
                match released {
                    Ok(Ok(())) => tracing::warn!(
                        request_id = ?request_id,
                        "{cause}: the call is refused and its hits were given back"
                    ),
                    Ok(Err(e)) => tracing::error!(
                        request_id = ?request_id,
                        "{cause}: the call is refused, and giving back its hits failed (they stay charged until \
                         their window ends): {e}"
                    ),
                    Err(_) => tracing::error!(
                        request_id = ?request_id,
                        "{cause}: the call is refused, and giving back its hits did not finish within \
                         {LATE_ANSWER_WAIT:?}"
                    ),
                }
            }
            outcome = Err(cause);
        }
        metrics().observe_store(self.store.kind(), started.elapsed(), outcome.is_err());
        if let (Some(full), Ok(admission)) = (&self.full, &outcome)
            && !admission.admitted
        {
            full.remember(&hits, admission, Instant::now(), rememberable);
        }
        outcome.map(Taken::Store)
    }

    /// Takes the hits in the store, waiting at most `store_timeout` for its answer.
    ///
    /// The store is never interrupted mid-call: a script already sent to Redis runs whatever
    /// the caller does, so dropping the request would leave its hits charged for a call that
    /// was refused, and every retry would charge again. Instead the acquire runs in its own
    /// task. When its answer comes after the deadline, the call has already been refused
    /// (`on_store_error: deny`), so the task gives back whatever it took; with
    /// `on_store_error: allow` the call went through uncounted, and the late hits are kept
    /// (`keep_late_hits`), since the call did run. If the caller itself goes away (the
    /// edge's deadline passed and it may be retrying the same request id on another
    /// replica), the hits are kept too: the retry finds them and is not charged twice.
    async fn acquire(&self, request_id: &str, batch: Arc<[Hit]>, keep_late_hits: bool) -> Result<Admission, String> {
        // A store in this process (the memory store) cannot be late: no task needed.
        if self.store.answers_at_once() {
            return self.store.acquire(request_id, &batch).await.map_err(|e| e.to_string());
        }
        let store = self.store.clone();
        let (kind, id, request_id) = (store.kind(), request_id.to_owned(), request_id.to_owned());
        let acquire = async move {
            let answer = store.acquire(&request_id, &batch).await;
            (answer, store, request_id, batch)
        };
        let (answer_tx, mut answer_rx) = tokio::sync::oneshot::channel();
        let give_back = Arc::new(AtomicBool::new(false));
        let late = give_back.clone();
        tokio::spawn(async move {
            let Ok((answer, store, request_id, batch)) = tokio::time::timeout(LATE_ANSWER_WAIT, acquire).await else {
                tracing::warn!(
                    store = kind,
                    request_id = ?id,
                    "the counter store did not answer within {LATE_ANSWER_WAIT:?}: if it took the hits of this \
                     refused call, they stay charged until their window ends"
                );
                metrics().late_store_answer(kind, "unanswered");
                return;
            };
            // Sending fails only once the caller stopped waiting.
            let Err(answer) = answer_tx.send(answer) else {
                return;
            };
            let admission = match answer {
                Ok(admission) if admission.admitted => admission,
                _ => return metrics().late_store_answer(kind, "none_taken"),
            };
            if !late.load(Ordering::SeqCst) {
                return metrics().late_store_answer(kind, "kept");
            }
            let released = tokio::time::timeout(LATE_ANSWER_WAIT, store.release(&request_id, &batch, &admission)).await;
            match released {
                Ok(Ok(())) => {
                    metrics().late_store_answer(kind, "released");
                    tracing::info!(
                        store = kind,
                        request_id = ?request_id,
                        "the counter store answered after the deadline: gave back the hits of the refused call"
                    );
                }
                failed => {
                    metrics().late_store_answer(kind, "release_failed");
                    let cause = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {LATE_ANSWER_WAIT:?}"),
                    };
                    tracing::warn!(
                        store = kind,
                        request_id = ?request_id,
                        "the counter store answered after the deadline, and giving back the hits of the refused call \
                         failed (they stay charged until their window ends): {cause}"
                    );
                }
            }
        });
        match tokio::time::timeout(self.store_timeout, &mut answer_rx).await {
            Ok(Ok(answer)) => answer.map_err(|e| e.to_string()),
            Ok(Err(_)) => Err("the counter store task failed".into()),
            Err(_) => {
                give_back.store(!keep_late_hits, Ordering::SeqCst);
                answer_rx.close();
                // An answer that arrived just as the deadline passed is still an answer.
                match answer_rx.try_recv() {
                    Ok(answer) => answer.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("counter store did not answer within {:?}", self.store_timeout)),
                }
            }
        }
    }

    pub async fn visible_tools(&self, request: &VisibleToolsRequest) -> VisibleToolsResponse {
        let policy = self.policy.load_full();
        let kind = policy_kind(request.kind());
        let pinned = self.pins_visible(&request.server, request.kind(), &request.tools).await;
        let mut pins_hid = false;
        let visible = request
            .tools
            .iter()
            .zip(pinned)
            .filter(|(t, pinned)| {
                let by_policy = policy.is_visible_subject(
                    kind,
                    &request.server,
                    &t.name,
                    &request.grant,
                    policy_annotations(t.annotations.as_ref()),
                );
                pins_hid |= by_policy && !pinned;
                by_policy && *pinned
            })
            .map(|(t, _)| t.name.clone())
            .collect();
        VisibleToolsResponse {
            visible,
            policy_digest: policy.digest(),
            pins_hid,
        }
    }
}

#[async_trait::async_trait]
impl Decider for Engine {
    async fn decide(&self, request: DecideRequest) -> Result<Decision, DecisionError> {
        Ok(Engine::decide(self, &request).await)
    }

    async fn visible_tools(&self, request: VisibleToolsRequest) -> Result<VisibleToolsResponse, DecisionError> {
        // In one process (`tollgate up`) this is also the edge's readiness probe: a journal
        // that refuses every call makes the node not ready.
        if self.journal_refusing() {
            return Err(DecisionError::Unavailable(
                "the audit journal cannot record decisions (audit.required or on_full = \"refuse\")".into(),
            ));
        }
        Ok(Engine::visible_tools(self, &request).await)
    }

    async fn wait_approval(&self, id: &str, max: Duration) -> Result<proto::Approval, DecisionError> {
        match Engine::wait_approval(self, id, max).await {
            Ok(Some(approval)) => Ok(crate::approvals::approval_message(&approval, false)),
            Ok(None) => Err(DecisionError::Failed(format!("no approval {id}"))),
            Err(e) => Err(DecisionError::Unavailable(e.to_string())),
        }
    }

    async fn record_task(&self, request: proto::RecordTaskRequest) -> Result<(), DecisionError> {
        Engine::record_task(self, &request)
            .await
            .map_err(DecisionError::Unavailable)
    }

    async fn observe_pins(&self, request: proto::ObservePinsRequest) -> Result<(), DecisionError> {
        Engine::observe_pins(self, &request).await.map_err(|e| {
            if e.starts_with("the store") {
                DecisionError::Unavailable(e)
            } else {
                DecisionError::Failed(e)
            }
        })
    }

    async fn owned_tasks(&self, request: proto::OwnedTasksRequest) -> Result<Vec<proto::TaskRecord>, DecisionError> {
        Engine::owned_tasks(self, &request)
            .await
            .map_err(DecisionError::Unavailable)
    }
}

trait DecisionExt {
    fn with(self, verdict: Verdict, rule: &str, reason: String) -> Decision;
}

impl DecisionExt for Decision {
    fn with(mut self, verdict: Verdict, rule: &str, reason: String) -> Decision {
        self.set_verdict(verdict);
        self.rule = rule.to_owned();
        self.reason = reason;
        self
    }
}

/// What [`Engine::take`] found.
pub enum Taken {
    /// The store's answer.
    Store(Admission),
    /// Refused here: counters this replica knows to be full, with how long each still is
    /// (`None` for those with room).
    KnownFull(Vec<Option<Duration>>),
}

/// A counter hit as the store takes it.
pub(crate) fn store_hit(h: &CounterHit<'_>) -> Hit {
    Hit {
        key: h.key.clone(),
        tag: h.tag().into_owned(),
        window: h.limit.window.duration,
        max: h.limit.max,
        cost: h.limit.cost,
        algorithm: match h.limit.algorithm {
            tollgate_policy::Algorithm::SlidingLog => tollgate_limiter::Algorithm::SlidingLog,
            tollgate_policy::Algorithm::SlidingWindow => tollgate_limiter::Algorithm::SlidingWindow,
        },
    }
}

/// A call refused by counters known to be full (`left`: how long each still is), without
/// asking the store; the decision names only those counters.
fn refused_locally(
    mut decision: Decision,
    rule: &Rule,
    hits: &[CounterHit<'_>],
    left: &[Option<Duration>],
) -> Decision {
    let full: Vec<(&CounterHit<'_>, Duration)> = hits
        .iter()
        .zip(left)
        .filter_map(|(hit, left)| Some((hit, (*left)?)))
        .collect();
    decision.limits = full
        .iter()
        .map(|(hit, left)| LimitStatus {
            counter: hit.limit.counter.clone(),
            limit: hit.limit.max,
            remaining: 0,
            reset_after_ms: ceil_ms(*left),
            retry_after_ms: ceil_ms(*left),
            window: hit.limit.window.label.clone(),
            scope: hit.limit.scope.to_string(),
            exceeded: true,
        })
        .collect();
    let retry_after = full.iter().map(|(_, left)| *left).max().unwrap_or_default();
    decision.retry_after_ms = ceil_ms(retry_after);
    let exceeded: Vec<String> = full
        .iter()
        .map(|(h, _)| format!("rate limit {}: {}", h.limit.counter, h.limit.describe()))
        .collect();
    tracing::Span::current().record("tollgate.refused_locally", true);
    let reason = format!("{}; retry in {}", exceeded.join("; "), human_duration(retry_after));
    decision.with(Verdict::RateLimited, &rule.label, reason)
}

fn admitted_or_limited(
    mut decision: Decision,
    rule: &Rule,
    hits: &[CounterHit<'_>],
    admission: &Admission,
) -> Decision {
    decision.limits = hits
        .iter()
        .zip(&admission.counters)
        .map(|(hit, status)| LimitStatus {
            counter: hit.limit.counter.clone(),
            limit: hit.limit.max,
            remaining: status.remaining,
            reset_after_ms: ceil_ms(status.reset_after),
            retry_after_ms: status.retry_after.map_or(0, ceil_ms),
            window: hit.limit.window.label.clone(),
            scope: hit.limit.scope.to_string(),
            exceeded: status.exceeded(),
        })
        .collect();
    if admission.admitted {
        return decision.with(Verdict::Allow, &rule.label, String::new());
    }
    let retry_after = admission.retry_after().unwrap_or_default();
    decision.retry_after_ms = ceil_ms(retry_after);
    let exceeded: Vec<String> = hits
        .iter()
        .zip(&admission.counters)
        .filter(|(_, s)| s.exceeded())
        .map(|(h, _)| format!("rate limit {}: {}", h.limit.counter, h.limit.describe()))
        .collect();
    let reason = format!("{}; retry in {}", exceeded.join("; "), human_duration(retry_after));
    decision.with(Verdict::RateLimited, &rule.label, reason)
}

/// What a decision is about, for texts and approvals.
#[derive(Clone, Copy)]
struct Subject<'a> {
    kind: SubjectKind,
    name: &'a str,
}

impl Subject<'_> {
    fn noun(&self) -> &'static str {
        policy_kind(self.kind).noun()
    }

    /// "calling \"t\"", "reading resource \"u\"", "getting prompt \"p\"".
    fn action_text(&self) -> String {
        match self.kind {
            SubjectKind::Tool => format!("calling \"{}\"", self.name),
            SubjectKind::Resource => format!("reading resource \"{}\"", self.name),
            SubjectKind::Prompt => format!("getting prompt \"{}\"", self.name),
        }
    }
}

/// The policy's kind of subject for a decision's.
pub fn policy_kind(kind: SubjectKind) -> Kind {
    match kind {
        SubjectKind::Tool => Kind::Tool,
        SubjectKind::Resource => Kind::Resource,
        SubjectKind::Prompt => Kind::Prompt,
    }
}

fn denial_text(rule: &Rule, subject: &Subject<'_>) -> String {
    let (noun, name) = (subject.noun(), subject.name);
    if rule.is_default() {
        format!(
            "{noun} \"{name}\" is not allowed: no policy rule names it, and the default is deny (rule {})",
            rule.label
        )
    } else {
        format!("{noun} \"{name}\" is denied by policy rule {}", rule.label)
    }
}

/// The call's `arguments_json`, parsed once for both the policy and the span's digest;
/// `None` when the call has no arguments.
fn parse_json(json: &str) -> Option<Result<Value, serde_json::Error>> {
    (!json.is_empty()).then(|| serde_json::from_str(json))
}

/// SHA-256 of the arguments as canonical JSON (keys sorted, no whitespace), so equal
/// arguments have equal digests whatever the agent's formatting; of the raw text when it is
/// not JSON; empty for no arguments.
fn arguments_digest(parsed: &Option<Result<Value, serde_json::Error>>, raw: &str) -> String {
    match parsed {
        None => String::new(),
        Some(Ok(value)) => hex::encode(Sha256::digest(value.to_string().as_bytes())),
        Some(Err(_)) => hex::encode(Sha256::digest(raw.as_bytes())),
    }
}

/// The arguments as the policy sees them: an object, or `Null` when there are none.
fn call_arguments(parsed: Option<Result<Value, serde_json::Error>>) -> Result<Value, String> {
    match parsed {
        None => Ok(Value::Null),
        Some(Ok(v @ (Value::Object(_) | Value::Null))) => Ok(v),
        Some(Ok(_)) => Err("tool arguments must be a JSON object".into()),
        Some(Err(e)) => Err(format!("tool arguments are not valid JSON: {e}")),
    }
}

/// What the policy sees of a decided call: `request`'s subject and caller, with `arguments`.
pub(crate) fn call_of<'a>(request: &'a DecideRequest, arguments: &'a Value) -> Call<'a> {
    Call {
        server: &request.server,
        tool: &request.tool,
        grant: &request.grant,
        agent: &request.agent,
        session: &request.session_id,
        arguments,
        annotations: policy_annotations(request.annotations.as_ref()),
    }
}

/// A tool's annotations as the edge sent them, as the policy reads them (none: all unstated).
pub fn policy_annotations(a: Option<&proto::ToolAnnotations>) -> Annotations {
    a.map_or_else(Annotations::default, |a| Annotations {
        read_only: a.read_only_hint,
        destructive: a.destructive_hint,
        idempotent: a.idempotent_hint,
        open_world: a.open_world_hint,
    })
}

/// The verdict as written in logs, spans, metrics and refusals (`ALLOW`, `DENY`, …).
fn ceil_ms(d: Duration) -> u64 {
    d.as_micros().div_ceil(1000) as u64
}

/// "41 s", "350 ms", "2 min 5 s": how long an agent should wait, rounded up.
fn human_duration(d: Duration) -> String {
    let ms = ceil_ms(d);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = ms.div_ceil(1000);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// Wall clock, nanoseconds since the Unix epoch.
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Ids for a decision span built outside the tracing pipeline: the parent's trace id (a new
/// one for a root span) and a new span id, as lowercase hex. Random from a per-thread
/// generator seeded once from the operating system (span ids need to be unique, not secret).
fn span_ids(parent: Option<&opentelemetry::trace::SpanContext>) -> (String, String) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    }
    // SplitMix64: never zero over a thread's first 2^64 draws of a non-zero walk.
    let next = || {
        STATE.with(|state| {
            loop {
                let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
                state.set(s);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                if z != 0 {
                    return z;
                }
            }
        })
    };
    let trace_id = match parent {
        Some(parent) => parent.trace_id().to_string(),
        None => format!("{:016x}{:016x}", next(), next()),
    };
    (trace_id, format!("{:016x}", next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a policy accepts, every store counts exactly.
    #[test]
    fn policy_bounds_fit_the_stores() {
        assert_eq!(
            tollgate_policy::MAX_SLIDING_LOG_MAX,
            tollgate_limiter::MAX_SLIDING_LOG_MAX
        );
        assert_eq!(tollgate_policy::MAX_COUNT, tollgate_limiter::MAX_COUNT);
        assert!(tollgate_policy::MAX_WINDOW.as_micros() <= u128::from(tollgate_limiter::MAX_WINDOW_MICROS));
    }

    #[test]
    fn durations_read_naturally_and_round_up() {
        assert_eq!(human_duration(Duration::from_millis(350)), "350 ms");
        assert_eq!(human_duration(Duration::from_micros(40_000_001)), "41 s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2 min");
        assert_eq!(human_duration(Duration::from_secs(125)), "2 min 5 s");
        assert_eq!(human_duration(Duration::from_secs(3700)), "1 h 1 min");
    }

    #[test]
    fn span_ids_continue_the_parents_trace_and_differ() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let parent = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let (trace, first) = super::span_ids(Some(&parent));
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        let (root, second) = super::span_ids(None);
        assert_eq!((root.len(), first.len()), (32, 16));
        assert_ne!(root, trace);
        assert_ne!(first, second);
        assert_ne!(first, "0000000000000000");
    }
}
