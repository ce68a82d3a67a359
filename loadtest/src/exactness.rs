//! The exactness check: from the harness's own records of admitted calls, proves whether any
//! sliding window admitted more than its limit.
//!
//! The harness cannot see when the gateway decided a call, only that it happened between
//! sending the request and receiving the answer. A violation is therefore reported only when
//! it is certain: a set of admitted calls on one counter key whose costs exceed `max` and
//! whose whole send-to-answer intervals fit inside one window. Counter keys are derived from
//! the policy with the same code the gateway uses, so limits scoped per grant, per argument
//! and so on are checked per key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tollgate_policy::{Action, Annotations, Call, Policy};

/// One call the gateway admitted, as the harness saw it.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub server: String,
    pub tool: String,
    pub grant: String,
    pub agent: String,
    pub session: String,
    pub arguments: Value,
    /// When the request was sent and its answer received, since the start of the run.
    pub sent: Duration,
    pub answered: Duration,
}

/// The result for one limit (counter) of the policy.
#[derive(Debug, Clone, Serialize)]
pub struct LimitReport {
    pub counter: String,
    pub max: u64,
    pub window_ms: u64,
    /// Most hits seen certainly inside one window, on any key of this counter.
    pub max_observed: u64,
    /// Keys on which more than `max` hits were certainly admitted within one window.
    pub violations: Vec<String>,
}

struct Hit {
    sent: Duration,
    answered: Duration,
    cost: u64,
}

/// Checks every counter key touched by `admitted` under `policy`.
pub fn check(policy: &Policy, admitted: &[Admitted]) -> Vec<LimitReport> {
    let mut keys: BTreeMap<(String, String), (u64, Duration, Vec<Hit>)> = BTreeMap::new();
    for a in admitted {
        let call = Call {
            server: &a.server,
            tool: &a.tool,
            grant: &a.grant,
            agent: &a.agent,
            session: &a.session,
            arguments: &a.arguments,
            annotations: Annotations::default(),
        };
        let rule = policy.rule_for(call.server, call.tool, call.grant, call.annotations);
        if rule.action != Action::Allow {
            continue;
        }
        for hit in policy.counter_hits(rule, &call) {
            let entry = keys
                .entry((hit.limit.counter.clone(), hit.key.clone()))
                .or_insert_with(|| (hit.limit.max, hit.limit.window.duration, Vec::new()));
            entry.2.push(Hit {
                sent: a.sent,
                answered: a.answered,
                cost: hit.limit.cost,
            });
        }
    }
    let mut reports: BTreeMap<String, LimitReport> = BTreeMap::new();
    for ((counter, key), (max, window, mut hits)) in keys {
        let observed = most_in_one_window(&mut hits, window);
        let report = reports.entry(counter.clone()).or_insert_with(|| LimitReport {
            counter,
            max,
            window_ms: window.as_millis() as u64,
            max_observed: 0,
            violations: Vec::new(),
        });
        report.max_observed = report.max_observed.max(observed);
        if observed > max {
            report.violations.push(key);
        }
    }
    reports.into_values().collect()
}

/// The largest total cost of hits whose whole intervals fit in one window `[t, t + window)`.
/// Only windows starting at some hit's send time need checking: any window holding a set of
/// intervals can slide right until it starts at the earliest send among them.
fn most_in_one_window(hits: &mut [Hit], window: Duration) -> u64 {
    hits.sort_by_key(|h| h.sent);
    let mut best = 0;
    for (i, start) in hits.iter().enumerate() {
        let end = start.sent + window;
        let total: u64 = hits[i..]
            .iter()
            .take_while(|h| h.sent < end)
            .filter(|h| h.answered < end)
            .map(|h| h.cost)
            .sum();
        best = best.max(total);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {
        "pause": {"limits": [{"counter": "pause", "window": "minute", "max": 10, "scope": "grant"}]},
        "scale": {"limits": [{"counter": "per_ns", "window": "1s", "max": 2, "scope": ["grant", "argument:namespace"]}]}
    }}"#;

    fn policy() -> Policy {
        tollgate_policy::compile_str("p.json", POLICY).expect("policy").policy
    }

    fn admitted(tool: &str, grant: &str, arguments: Value, sent_ms: u64, answered_ms: u64) -> Admitted {
        Admitted {
            server: "k8s".into(),
            tool: tool.into(),
            grant: grant.into(),
            agent: grant.into(),
            session: String::new(),
            arguments,
            sent: Duration::from_millis(sent_ms),
            answered: Duration::from_millis(answered_ms),
        }
    }

    #[test]
    fn catches_an_over_admission() {
        // 11 calls admitted within one second on a 10-per-minute limit.
        let records: Vec<Admitted> = (0..11)
            .map(|i| admitted("pause", "a", json!({}), i * 90, i * 90 + 5))
            .collect();
        let reports = check(&policy(), &records);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].max_observed, 11);
        assert_eq!(reports[0].violations, ["pause/grant=a"]);
    }

    #[test]
    fn exactly_max_per_key_is_fine_and_keys_are_separate() {
        let mut records: Vec<Admitted> = (0..10).map(|i| admitted("pause", "a", json!({}), i, i + 1)).collect();
        records.extend((0..10).map(|i| admitted("pause", "b", json!({}), i, i + 1)));
        // The 11th for grant a comes a full window after the first: allowed.
        records.push(admitted("pause", "a", json!({}), 60_000, 60_001));
        let reports = check(&policy(), &records);
        assert_eq!(reports[0].max_observed, 10);
        assert!(reports[0].violations.is_empty());
    }

    #[test]
    fn uncertain_timing_is_not_a_violation() {
        // Three calls on a 2-per-second key, but the third's answer came late enough that the
        // gateway may have decided it after the first left the window.
        let records = vec![
            admitted("scale", "a", json!({"namespace": "x"}), 0, 10),
            admitted("scale", "a", json!({"namespace": "x"}), 20, 30),
            admitted("scale", "a", json!({"namespace": "x"}), 900, 1_500),
        ];
        assert!(check(&policy(), &records)[0].violations.is_empty());
        // Per argument value: a different namespace is another key.
        let records = vec![
            admitted("scale", "a", json!({"namespace": "x"}), 0, 10),
            admitted("scale", "a", json!({"namespace": "x"}), 20, 30),
            admitted("scale", "a", json!({"namespace": "y"}), 40, 50),
        ];
        assert_eq!(check(&policy(), &records)[0].max_observed, 2);
    }
}
