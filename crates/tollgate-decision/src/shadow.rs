//! Shadow evaluation: every decision is also evaluated against a candidate policy (the
//! `[decision] shadow_policy` file, or the live policy with its `"mode": "shadow"` rules in
//! force), and the candidate's verdict is recorded beside the live one, never enforced.
//!
//! The candidate takes nothing: no counter hits, no approvals. Its limits are read as the
//! store holds them (as the console's counters page reads them): a counter the live policy
//! counts the same way (same window and algorithm) shows live use, with this very call's
//! live hit taken out, so the candidate is asked whether it would have admitted the call
//! before it; a counter the live policy does not count (or counts another way) has never
//! been filled, and is read as empty without asking the store (reading it with another
//! window or algorithm would convert the live key in place).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_limiter::{Broadcast, Hit};
use tollgate_policy::{Action, CounterHit, OnStoreError, Policy};

use crate::Engine;
use crate::proto::{DecideRequest, Decision, Verdict};

/// The candidate's verdict on one call.
#[derive(Debug, Clone)]
pub struct ShadowFinding {
    pub verdict: Verdict,
    pub rule: String,
    pub reason: String,
}

impl ShadowFinding {
    fn new(verdict: Verdict, rule: &str, reason: String) -> ShadowFinding {
        ShadowFinding {
            verdict,
            rule: rule.to_owned(),
            reason,
        }
    }
}

impl Engine {
    /// The candidate every decision is also evaluated against now: the shadow policy file,
    /// or else the live policy with its shadow-mode rules in force (when it has any).
    pub fn candidate(&self) -> Option<Arc<Policy>> {
        if let Some(file) = self.candidate_file().load_full() {
            return Some(file);
        }
        self.policy().with_shadow_rules().cloned()
    }

    /// What `candidate` would have answered, knowing what the live policy answered (`live`):
    /// pinning and unreadable arguments refuse as they do live; an approval the live
    /// decision consumed counts as given; limits are read, never taken.
    pub(crate) async fn shadow_decide(
        &self,
        candidate: &Policy,
        request: &DecideRequest,
        arguments: &Result<Value, String>,
        pin: Option<&crate::pins::PinFinding>,
        live: &Decision,
        early: &EarlyReads,
    ) -> ShadowFinding {
        if let Some(pin) = pin
            && pin.refuses()
        {
            return ShadowFinding::new(Verdict::Deny, "pins", pin.reason.clone());
        }
        let arguments = match arguments {
            Ok(arguments) => arguments,
            Err(reason) => return ShadowFinding::new(Verdict::Deny, "arguments", reason.clone()),
        };
        let call = crate::engine::call_of(request, arguments);
        let kind = crate::engine::policy_kind(request.kind());
        if !candidate.covers(kind) {
            return ShadowFinding::new(
                Verdict::Allow,
                &format!("(no {} section)", kind.section()),
                String::new(),
            );
        }
        let rule = candidate.rule_for_subject(kind, call.server, call.tool, call.grant, call.annotations);
        if rule.action != Action::Deny
            && let Some(schema) = &rule.arguments
            && let Err(violations) = schema.check(call.arguments)
        {
            return ShadowFinding::new(Verdict::Deny, &rule.label, format!("arguments rejected: {violations}"));
        }
        match rule.action {
            Action::Deny => {
                return ShadowFinding::new(
                    Verdict::Deny,
                    &rule.label,
                    rule.reason.clone().unwrap_or_else(|| "denied".into()),
                );
            }
            // The operator's answer the live call met counts for the candidate too: an
            // approval it claimed (used, or kept for the next call when a limit refused it),
            // or one denied or expired.
            Action::RequireApproval => match live.verdict() {
                Verdict::Allow | Verdict::RateLimited if !live.approval_id.is_empty() => {}
                Verdict::Deny if !live.approval_id.is_empty() => {
                    return ShadowFinding::new(Verdict::Deny, &rule.label, live.reason.clone());
                }
                _ => {
                    return ShadowFinding::new(
                        Verdict::ApprovalRequired,
                        &rule.label,
                        "would need an operator's approval".into(),
                    );
                }
            },
            Action::Allow => {}
        }
        let hits = candidate.counter_hits(rule, &call);
        if hits.is_empty() {
            return ShadowFinding::new(Verdict::Allow, &rule.label, String::new());
        }
        // The hits the live decision took (when it was admitted on counters).
        let live_policy = self.policy();
        let live_rule = live_policy.rule_for_subject(kind, call.server, call.tool, call.grant, call.annotations);
        let live_hits = if live.limits.is_empty() {
            Vec::new()
        } else {
            live_policy.counter_hits(live_rule, &call)
        };
        // The same counters asked the same way: the store's answer to the live decision is
        // the candidate's answer.
        if !live.limits.is_empty() && live_rule.on_store_error == rule.on_store_error && same_hits(&hits, &live_hits) {
            return ShadowFinding::new(live.verdict(), &rule.label, live.reason.clone());
        }
        let admitted = live.verdict() == Verdict::Allow;
        // What the live decision's store answer says of each key it asked: the live max,
        // the remaining it answered (after this call when admitted), and what this call took.
        let answered: HashMap<&str, (&CounterHit<'_>, u64, u64)> = live_hits
            .iter()
            .filter_map(|h| {
                let status = live.limits.iter().find(|l| l.counter == h.limit.counter)?;
                let took = if admitted { h.limit.cost } else { 0 };
                Some((h.key.as_str(), (h, status.remaining, took)))
            })
            .collect();
        let mut exceeded: Vec<String> = Vec::new();
        let mut refuses = |hit: &CounterHit<'_>, used: u64, took: u64| {
            // The hits that counted before this call (its own live hit taken out), and this
            // call's cost under the candidate.
            if u128::from(used.saturating_sub(took)) + u128::from(hit.limit.cost) > u128::from(hit.limit.max) {
                exceeded.push(format!("rate limit {}: {}", hit.limit.counter, hit.limit.describe()));
            }
        };
        // Counters the live answer does not cover, read from the store (nothing taken).
        let mut asked = Vec::new();
        let mut read = Vec::new();
        for (i, hit) in hits.iter().enumerate() {
            // The same key counted the same way, and the live answer says how much is used
            // (a remaining of 0 only says "at least the max"): no store round trip.
            if let Some((live_hit, remaining, took)) = answered.get(hit.key.as_str())
                && counts_alike(hit.limit, live_hit.limit.window.duration, live_hit.limit.algorithm)
                && *remaining > 0
            {
                refuses(hit, live_hit.limit.max.saturating_sub(*remaining), *took);
                continue;
            }
            if !counted_live(&live_policy, hit.limit) {
                continue;
            }
            // Read beside the live decision already (a key it did not take).
            match early.answer(hit) {
                Some(Ok(used)) => {
                    refuses(hit, used, 0);
                    continue;
                }
                Some(Err(cause)) => return store_failed(rule, cause),
                None => {}
            }
            // Read against a max with room for what this call took live, so that the
            // answer (max less what counts, at least 0) says exactly how much is used.
            let took = answered.get(hit.key.as_str()).map_or(0, |(_, _, took)| *took);
            let largest = match hit.limit.algorithm {
                tollgate_policy::Algorithm::SlidingLog => tollgate_limiter::MAX_SLIDING_LOG_MAX,
                tollgate_policy::Algorithm::SlidingWindow => tollgate_limiter::MAX_COUNT,
            };
            let max = hit.limit.max.saturating_add(took).min(largest);
            asked.push(Hit {
                max,
                cost: 1,
                ..crate::engine::store_hit(hit)
            });
            read.push((i, max, took));
        }
        if !asked.is_empty() {
            let statuses = match self.read(&asked).await {
                Ok(statuses) => statuses,
                Err(cause) => return store_failed(rule, cause),
            };
            for ((i, max, took), status) in read.iter().zip(&statuses) {
                refuses(&hits[*i], max.saturating_sub(status.remaining), *took);
            }
        }
        if exceeded.is_empty() {
            ShadowFinding::new(Verdict::Allow, &rule.label, String::new())
        } else {
            ShadowFinding::new(Verdict::RateLimited, &rule.label, exceeded.join("; "))
        }
    }
}

/// Reads of the candidate's counters that the live rule for the call does not take: they do
/// not depend on the live decision, so they run beside it (`tokio::join!` in
/// `decide_with_parent`) instead of after it.
#[derive(Default)]
pub(crate) struct EarlyReads {
    hits: Vec<Hit>,
    /// Per hit, the hits counted now; or why the store did not say.
    answers: Vec<Result<u64, String>>,
}

impl EarlyReads {
    /// The reads a candidate's evaluation of `request` will need whatever the live decision
    /// is: each counter of the candidate's rule that the live policy counts the same way and
    /// the live rule for the call does not take.
    pub(crate) fn plan(
        engine: &Engine,
        candidate: &Policy,
        request: &DecideRequest,
        arguments: &Result<Value, String>,
    ) -> EarlyReads {
        let Ok(arguments) = arguments else {
            return EarlyReads::default();
        };
        let call = crate::engine::call_of(request, arguments);
        let kind = crate::engine::policy_kind(request.kind());
        if !candidate.covers(kind) {
            return EarlyReads::default();
        }
        let rule = candidate.rule_for_subject(kind, call.server, call.tool, call.grant, call.annotations);
        if rule.action == Action::Deny || rule.limits.is_empty() {
            return EarlyReads::default();
        }
        let live = engine.policy();
        let live_keys: Vec<String> = if live.covers(kind) {
            let live_rule = live.rule_for_subject(kind, call.server, call.tool, call.grant, call.annotations);
            live.counter_hits(live_rule, &call).into_iter().map(|h| h.key).collect()
        } else {
            Vec::new()
        };
        let hits = candidate
            .counter_hits(rule, &call)
            .iter()
            .filter(|h| !live_keys.contains(&h.key) && counted_live(&live, h.limit))
            .map(|h| Hit {
                cost: 1,
                ..crate::engine::store_hit(h)
            })
            .collect();
        EarlyReads {
            hits,
            answers: Vec::new(),
        }
    }

    /// Reads the planned counters (nothing when none are planned).
    pub(crate) async fn run(mut self, engine: &Engine) -> EarlyReads {
        if self.hits.is_empty() {
            return self;
        }
        self.answers = match engine.read(&self.hits).await {
            Ok(statuses) => self
                .hits
                .iter()
                .zip(statuses)
                .map(|(hit, status)| Ok(hit.max.saturating_sub(status.remaining)))
                .collect(),
            Err(cause) => self.hits.iter().map(|_| Err(cause.clone())).collect(),
        };
        self
    }

    /// The hits counted now on `hit`'s counter, when it was read early with its max.
    fn answer(&self, hit: &CounterHit<'_>) -> Option<Result<u64, String>> {
        let i = self
            .hits
            .iter()
            .position(|h| h.key == hit.key && h.max == hit.limit.max)?;
        self.answers.get(i).cloned()
    }
}

/// Whether `limit` counts with this window and algorithm.
fn counts_alike(limit: &tollgate_policy::Limit, window: Duration, algorithm: tollgate_policy::Algorithm) -> bool {
    limit.window.duration == window && limit.algorithm == algorithm
}

/// Whether the live policy counts `limit`'s counter the same way: only then may it be read
/// (another window or algorithm would convert the live key in place).
fn counted_live(live: &Policy, limit: &tollgate_policy::Limit) -> bool {
    live.counter_shape(&limit.counter)
        .is_some_and(|(window, algorithm)| counts_alike(limit, window, algorithm))
}

/// The candidate's answer when the store could not say how much a counter holds: what its
/// rule does on a store error.
fn store_failed(rule: &tollgate_policy::Rule, cause: String) -> ShadowFinding {
    match rule.on_store_error {
        OnStoreError::Deny => ShadowFinding::new(Verdict::Deny, &rule.label, cause),
        OnStoreError::Allow => ShadowFinding::new(Verdict::Allow, &rule.label, cause),
    }
}

/// Whether two calls' hits ask the same counters the same way.
fn same_hits(a: &[CounterHit<'_>], b: &[CounterHit<'_>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.key == b.key
                && a.limit.max == b.limit.max
                && a.limit.cost == b.limit.cost
                && counts_alike(a.limit, b.limit.window.duration, b.limit.algorithm)
        })
}

/// Distinct (server, tool, grant, live verdict, shadow verdict) a replica counts at most;
/// the rest are counted together.
pub const MAX_DISAGREEMENT_KINDS: usize = 1000;
/// Examples kept per kind of disagreement.
pub const EXAMPLES: usize = 3;
/// Kinds a replica publishes at once (the most frequent; the rest as `other`).
const PUBLISHED_KINDS: usize = 200;
/// Longest text kept in an entry.
const MAX_TEXT: usize = 256;
/// How often a replica publishes what it counted (when it changed).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Replicas whose counts the console keeps at most; a replica not heard from for
/// [`FORGET_AFTER`] is dropped.
const MAX_REPLICAS: usize = 64;
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// One kind of disagreement: calls of a tool by a grant that the live policy answered one
/// way and the candidate another.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Disagreement {
    pub server: String,
    pub tool: String,
    /// `tools/call`, `resources/read` or `prompts/get`.
    pub method: String,
    pub grant: String,
    pub live: String,
    pub shadow: String,
    pub live_rule: String,
    pub shadow_rule: String,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// One call the candidate would have answered otherwise.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Example {
    pub decision_id: String,
    pub at_ms: u64,
    pub agent: String,
    pub arguments_sha256: String,
    pub live_reason: String,
    pub shadow_reason: String,
}

/// What one replica counted since it loaded the candidate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ShadowCounts {
    pub replica: String,
    /// The candidate's digest (hex): counts of another candidate are not added up.
    pub candidate: String,
    pub since_ms: u64,
    /// Decisions evaluated against the candidate.
    pub evaluated: u64,
    pub disagreements: Vec<Disagreement>,
    /// Disagreements beyond the kinds kept.
    pub other: u64,
}

#[derive(Serialize, Deserialize)]
struct Published {
    shadow_counts: ShadowCounts,
}

/// A replica's count of disagreements (for the console's "Candidate policy" page), shared
/// with the other replicas on the console's channel.
pub struct ShadowLog {
    /// The candidate policy file's status (`[decision] shadow_policy`), when one is set.
    file: Option<Arc<crate::PolicyStatus>>,
    mine: Mutex<Mine>,
    heard: Mutex<HashMap<String, (std::time::Instant, ShadowCounts)>>,
}

#[derive(Default)]
struct Mine {
    counts: ShadowCounts,
    /// Index into `counts.disagreements` by kind.
    index: HashMap<(String, String, String, String, String), usize>,
    changed: bool,
}

/// What the decision was, for counting.
pub(crate) struct Counted<'a> {
    pub request: &'a DecideRequest,
    pub live: &'a Decision,
    pub shadow: &'a ShadowFinding,
    pub candidate: u64,
    pub arguments_sha256: &'a str,
}

fn short(text: &str) -> String {
    tollgate_limiter::cut_short(text, MAX_TEXT)
}

impl ShadowLog {
    /// Counts this replica's disagreements as `replica`, and publishes them on `channel`
    /// (with every other replica's heard there).
    pub fn start(
        channel: Arc<dyn Broadcast>,
        replica: String,
        file: Option<Arc<crate::PolicyStatus>>,
    ) -> Arc<ShadowLog> {
        let log = Arc::new(ShadowLog {
            file,
            mine: Mutex::new(Mine {
                counts: ShadowCounts {
                    replica,
                    ..Default::default()
                },
                ..Default::default()
            }),
            heard: Mutex::default(),
        });
        let heard = channel.subscribe();
        tokio::spawn(publish(Arc::downgrade(&log), channel));
        tokio::spawn(listen(Arc::downgrade(&log), heard));
        log
    }

    pub(crate) fn count(&self, c: Counted<'_>) {
        let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        let candidate = format!("{:016x}", c.candidate);
        if mine.counts.candidate != candidate {
            // A new candidate: what was counted against the old one no longer says anything.
            mine.counts = ShadowCounts {
                replica: std::mem::take(&mut mine.counts.replica),
                candidate,
                since_ms: tollgate_limiter::wall_clock_ms(),
                ..Default::default()
            };
            mine.index.clear();
        }
        mine.counts.evaluated = mine.counts.evaluated.saturating_add(1);
        mine.changed = true;
        let live = crate::verdict_name(c.live.verdict());
        let shadow = crate::verdict_name(c.shadow.verdict);
        if live == shadow {
            return;
        }
        let r = c.request;
        let key = (
            short(&r.server),
            short(&r.tool),
            short(&r.grant),
            live.to_owned(),
            shadow.to_owned(),
        );
        let at = match mine.index.get(&key) {
            Some(at) => *at,
            None if mine.index.len() < MAX_DISAGREEMENT_KINDS => {
                let at = mine.counts.disagreements.len();
                mine.counts.disagreements.push(Disagreement {
                    server: key.0.clone(),
                    tool: key.1.clone(),
                    method: tollgate_api::subject_method(r.kind()).to_owned(),
                    grant: key.2.clone(),
                    live: key.3.clone(),
                    shadow: key.4.clone(),
                    ..Default::default()
                });
                mine.index.insert(key, at);
                at
            }
            None => {
                mine.counts.other = mine.counts.other.saturating_add(1);
                return;
            }
        };
        let entry = &mut mine.counts.disagreements[at];
        entry.count = entry.count.saturating_add(1);
        entry.live_rule = short(&c.live.rule);
        entry.shadow_rule = short(&c.shadow.rule);
        if entry.examples.len() == EXAMPLES {
            entry.examples.remove(0);
        }
        entry.examples.push(Example {
            decision_id: short(&c.live.decision_id),
            at_ms: tollgate_limiter::wall_clock_ms(),
            agent: short(&r.agent),
            arguments_sha256: short(c.arguments_sha256),
            live_reason: short(&c.live.reason),
            shadow_reason: short(&c.shadow.reason),
        });
    }

    /// The candidate policy file's status, when `[decision] shadow_policy` is set.
    pub fn file(&self) -> Option<&Arc<crate::PolicyStatus>> {
        self.file.as_ref()
    }

    /// This replica's counts.
    pub fn mine(&self) -> ShadowCounts {
        self.mine.lock().unwrap_or_else(|e| e.into_inner()).counts.clone()
    }

    /// The latest counts heard from every replica (this one's included once published),
    /// of replicas heard from lately.
    pub fn cluster(&self) -> Vec<ShadowCounts> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<ShadowCounts> = heard
            .values()
            .filter(|(at, _)| at.elapsed() < FORGET_AFTER)
            .map(|(_, c)| c.clone())
            .collect();
        all.sort_by(|a, b| a.replica.cmp(&b.replica));
        all
    }

    fn heard(&self, counts: ShadowCounts) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard.retain(|_, (at, _)| at.elapsed() < FORGET_AFTER);
        if heard.len() >= MAX_REPLICAS && !heard.contains_key(&counts.replica) {
            return;
        }
        heard.insert(counts.replica.clone(), (std::time::Instant::now(), counts));
    }

    /// What to publish: the most frequent kinds (bounded), the rest as `other`.
    /// `None` when nothing changed since the last time, unless `again` (then the same counts
    /// once more, while a candidate is loaded).
    fn to_publish(&self, again: bool) -> Option<ShadowCounts> {
        let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        let repeat = again && !mine.counts.candidate.is_empty();
        if !mine.changed && !repeat {
            return None;
        }
        mine.changed = false;
        let mut counts = mine.counts.clone();
        drop(mine);
        counts.disagreements.sort_by_key(|d| std::cmp::Reverse(d.count));
        for dropped in counts
            .disagreements
            .drain(PUBLISHED_KINDS.min(counts.disagreements.len())..)
        {
            counts.other = counts.other.saturating_add(dropped.count);
        }
        Some(counts)
    }
}

async fn publish(log: std::sync::Weak<ShadowLog>, channel: Arc<dyn Broadcast>) {
    let mut ticker = tokio::time::interval(PUBLISH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Published again now and then even unchanged, so that consoles keep hearing this replica.
    let mut quiet = 0u32;
    loop {
        ticker.tick().await;
        let Some(log) = log.upgrade() else { return };
        let counts = match log.to_publish(quiet >= 10) {
            Some(counts) => counts,
            None => {
                quiet = quiet.saturating_add(1);
                continue;
            }
        };
        quiet = 0;
        drop(log);
        let message = match serde_json::to_string(&Published { shadow_counts: counts }) {
            Ok(message) if message.len() <= tollgate_limiter::MAX_BROADCAST_BYTES => message,
            Ok(message) => {
                tracing::warn!(
                    "shadow policy: counts of {} bytes are too large to publish",
                    message.len()
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("shadow policy: cannot encode counts: {e}");
                continue;
            }
        };
        if let Err(e) = channel.publish(message).await {
            tracing::debug!("shadow policy: cannot publish counts: {e}");
        }
    }
}

async fn listen(log: std::sync::Weak<ShadowLog>, mut heard: tokio::sync::broadcast::Receiver<Arc<str>>) {
    loop {
        let message = match heard.recv().await {
            Ok(message) => message,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(log) = log.upgrade() else { return };
        if !message.starts_with("{\"shadow_counts\"") {
            continue;
        }
        match serde_json::from_str::<Published>(&message) {
            Ok(published) => log.heard(bounded(published.shadow_counts)),
            Err(e) => tracing::debug!("shadow policy: ignoring unreadable counts: {e}"),
        }
    }
}

/// Counts heard from the channel, cut to the bounds this replica publishes within.
fn bounded(mut counts: ShadowCounts) -> ShadowCounts {
    counts.replica = short(&counts.replica);
    counts.candidate = short(&counts.candidate);
    counts.disagreements.truncate(PUBLISHED_KINDS);
    for d in &mut counts.disagreements {
        for field in [
            &mut d.server,
            &mut d.tool,
            &mut d.method,
            &mut d.grant,
            &mut d.live,
            &mut d.shadow,
            &mut d.live_rule,
            &mut d.shadow_rule,
        ] {
            *field = short(field);
        }
        d.examples.truncate(EXAMPLES);
        for e in &mut d.examples {
            for field in [
                &mut e.decision_id,
                &mut e.agent,
                &mut e.arguments_sha256,
                &mut e.live_reason,
                &mut e.shadow_reason,
            ] {
                *field = short(field);
            }
        }
    }
    counts
}

/// Every replica's counts for `candidate` (hex digest), added up by kind, most frequent
/// first; and the decisions evaluated and the `other` count.
pub fn add_up(all: &[ShadowCounts], candidate: &str) -> (Vec<Disagreement>, u64, u64) {
    let mut by_kind: HashMap<(String, String, String, String, String), Disagreement> = HashMap::new();
    let (mut evaluated, mut other) = (0, 0);
    for counts in all.iter().filter(|c| c.candidate == candidate) {
        // Counts heard on the channel are added without trusting them to be small.
        evaluated = counts.evaluated.saturating_add(evaluated);
        other = counts.other.saturating_add(other);
        for d in &counts.disagreements {
            let key = (
                d.server.clone(),
                d.tool.clone(),
                d.grant.clone(),
                d.live.clone(),
                d.shadow.clone(),
            );
            let entry = by_kind.entry(key).or_insert_with(|| Disagreement {
                examples: Vec::new(),
                count: 0,
                ..d.clone()
            });
            entry.count = entry.count.saturating_add(d.count);
            entry.examples.extend(d.examples.iter().cloned());
        }
    }
    let mut out: Vec<Disagreement> = by_kind.into_values().collect();
    for d in &mut out {
        d.examples.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        d.examples.truncate(EXAMPLES);
    }
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.tool.cmp(&b.tool)));
    (out, evaluated, other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts heard from the channel are not trusted to be small: adding them saturates.
    #[test]
    fn counts_add_up_without_overflowing() {
        let huge = |replica: &str| ShadowCounts {
            replica: replica.into(),
            candidate: "c".into(),
            evaluated: u64::MAX,
            other: u64::MAX,
            disagreements: vec![Disagreement {
                tool: "t".into(),
                live: "ALLOW".into(),
                shadow: "DENY".into(),
                count: u64::MAX,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (kinds, evaluated, other) = add_up(&[huge("a"), huge("b")], "c");
        assert_eq!((evaluated, other), (u64::MAX, u64::MAX));
        assert_eq!(kinds[0].count, u64::MAX);
        // Another candidate's counts are not added.
        assert_eq!(add_up(&[huge("a")], "d").1, 0);
    }
}
