//! `tollgate policy replay --journal PATH… --policy CANDIDATE`: recorded decisions decided
//! again under a candidate policy, offline. The records come from decision journals
//! (`[audit] journal_dir`, one directory per replica) or from JSON lines written by
//! `tollgate audit export`. They are replayed in the order they were decided, on a memory
//! store whose clock is set to each record's time, so that limits count as they would have
//! over the recorded traffic; an approval the live call consumed is given to the candidate
//! too. What would change is printed by verdict pair, by tool and grant, with sample calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tollgate_decision::Engine;
use tollgate_decision::audit::JournalRecord;
use tollgate_decision::proto::{DecideRequest, Verdict};
use tollgate_limiter::{ManualClock, MemoryStore};

/// What `--fail-on` can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// A call the live policy admitted that the candidate would not (denied, limited, or
    /// held for approval).
    NewlyDenied,
    /// A call the live policy refused that the candidate would admit.
    NewlyAllowed,
    /// Any call answered otherwise.
    AnyChange,
    /// A recorded call that could not be decided again (its arguments were not recorded and
    /// the candidate's rule looks at them).
    Unknown,
}

/// How to replay.
pub struct Options {
    pub inputs: Vec<PathBuf>,
    pub policy: PathBuf,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub fail_on: Vec<FailOn>,
    pub samples: usize,
    pub json: bool,
    /// Rules with `"mode": "shadow"` in force (by default they are left out, as live).
    pub with_shadow_rules: bool,
}

/// One call answered otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub at_ms: u64,
    pub decision_id: String,
    pub method: String,
    pub server: String,
    pub tool: String,
    pub grant: String,
    pub agent: String,
    pub live: String,
    pub live_rule: String,
    pub candidate: String,
    pub candidate_rule: String,
    pub candidate_reason: String,
}

/// What a replay found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Decision records read (within --since/--until).
    pub records: u64,
    /// Decided again and compared.
    pub compared: u64,
    /// Answered the same way.
    pub same: u64,
    /// Answered otherwise, per "LIVE -> CANDIDATE".
    pub changed: BTreeMap<String, u64>,
    /// Answered otherwise, per tool (method, server, tool) and grant, per verdict pair.
    pub by_tool: Vec<ToolChanges>,
    /// Not decided again, with why (e.g. arguments not recorded), per reason.
    pub unknown: BTreeMap<String, u64>,
    /// Records that are not policy decisions of a call (refusals by the journal itself,
    /// operators' actions): left out.
    pub skipped: u64,
    /// Records given more than once (the same decision id in two inputs): replayed once.
    pub duplicates: u64,
    /// Some calls answered otherwise, per verdict pair (at most --samples each).
    pub samples: BTreeMap<String, Vec<Change>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolChanges {
    pub method: String,
    pub server: String,
    pub tool: String,
    pub grant: String,
    pub live: String,
    pub candidate: String,
    pub calls: u64,
}

/// Reads the decision records of every input (a journal directory, or a JSON lines file)
/// that `keep` accepts (only those are held in memory).
pub fn read_records(
    inputs: &[PathBuf],
    keep: impl Fn(&JournalRecord) -> bool,
) -> anyhow::Result<(Vec<JournalRecord>, Vec<String>)> {
    let mut all = Vec::new();
    // Journals whose chain breaks: replayed up to the break, and reported as a failure.
    let mut broken_chains = Vec::new();
    for input in inputs {
        let mut read = 0u64;
        if input.is_dir() {
            tollgate_journal::each_record(input, 1, |record| {
                read += 1;
                match tollgate_decision::audit::decode_record(&record.payload) {
                    Ok(decoded) if keep(&decoded) => all.push(decoded),
                    Ok(_) => {}
                    Err(e) => eprintln!("tollgate: {} record {} skipped: {e}", input.display(), record.seq),
                }
                Ok(true)
            })
            .map_err(|e| anyhow::anyhow!("cannot read the journal in {}: {e}", input.display()))?;
            if let Err(broken) = tollgate_journal::verify(input, None) {
                eprintln!(
                    "tollgate: {}: the chain breaks at record {} ({broken}); replaying the records before it",
                    input.display(),
                    broken.seq
                );
                broken_chains.push(format!("{} at record {}", input.display(), broken.seq));
            }
        } else {
            use std::io::BufRead;
            let file = std::fs::File::open(input).with_context(|| format!("cannot read {}", input.display()))?;
            // Line by line: an export can be larger than memory would like.
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("{}:{}: cannot read the line", input.display(), i + 1))?;
                if line.trim().is_empty() {
                    continue;
                }
                let record: JournalRecord = serde_json::from_str(&line)
                    .map_err(|e| anyhow::anyhow!("{}:{}: not a decision record: {e}", input.display(), i + 1))?;
                read += 1;
                if keep(&record) {
                    all.push(record);
                }
            }
        }
        // A wrong path must not pass for a replay of nothing.
        if read == 0 {
            bail!(
                "{}: no records (not a journal directory, nor JSON lines from `tollgate audit export`)",
                input.display()
            );
        }
    }
    Ok((all, broken_chains))
}

/// Whether the rule that decides the call under `policy` looks at its arguments (a schema,
/// or a limit scoped by an argument).
fn rule_reads_arguments(policy: &tollgate_policy::Policy, request: &DecideRequest) -> bool {
    let kind = tollgate_decision::policy_kind(request.kind());
    let annotations = tollgate_decision::policy_annotations(request.annotations.as_ref());
    let rule = policy.rule_for_subject(kind, &request.server, &request.tool, &request.grant, annotations);
    rule.arguments.is_some()
        || rule.limits.iter().any(|l| {
            l.scope
                .0
                .iter()
                .any(|d| matches!(d, tollgate_policy::ScopeDim::Argument(_)))
        })
}

/// Replays `records` (already within `--since`/`--until`, see [`read_records`]) under the policy at
/// `policy_path`.
pub async fn replay(records: Vec<JournalRecord>, policy_path: &Path, options: &Options) -> anyhow::Result<Report> {
    let compiled = tollgate_policy::load_file(policy_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The policy as it would be enforced live (shadow-mode rules left out), or with them in
    // force when asked (as a `shadow_policy` candidate is evaluated).
    let policy = match compiled.policy.with_shadow_rules() {
        Some(all) if options.with_shadow_rules => Arc::clone(all),
        _ => Arc::new(compiled.policy),
    };
    let clock = Arc::new(ManualClock::default());
    let store = Arc::new(MemoryStore::new(clock.clone()));
    // Approvals the replay asks for are never bounded per grant: live, each was answered.
    let engine =
        Engine::new_shared(policy.clone(), store, Duration::from_secs(1)).with_max_pending_per_grant(usize::MAX);
    let mut report = Report::default();
    // (--since/--until were applied while reading: `records` holds only the window.)
    let mut records = records;
    records.sort_by_key(|r| (r.decision.at_ms, r.start_ns));
    // The same decision from two inputs (a journal and its export, a journal given twice)
    // is one call: replayed twice, it would take its limits twice.
    let mut seen = std::collections::HashSet::new();
    records.retain(|r| {
        let first = r.decision.id.is_empty() || seen.insert(r.decision.id.clone());
        if !first {
            report.duplicates += 1;
        }
        first
    });
    let mut by_tool: BTreeMap<(String, String, String, String, String, String), u64> = BTreeMap::new();
    let mut now_ms = 0u64;
    for (n, record) in records.iter().enumerate() {
        let d = &record.decision;
        let (Some(kind), Some(live)) = (
            tollgate_decision::method_subject(&d.method),
            tollgate_decision::verdict_named(&d.verdict),
        ) else {
            report.skipped += 1;
            continue;
        };
        report.records += 1;
        // Not the policy's answer: a refusal by the journal itself.
        if d.rule == "audit" {
            report.skipped += 1;
            continue;
        }
        // The clock moves to the record's time (never back: records of two replicas can
        // be a millisecond apart out of order).
        if d.at_ms > now_ms {
            clock.advance(Duration::from_millis(d.at_ms - now_ms));
            now_ms = d.at_ms;
        }
        let mut request = DecideRequest {
            request_id: format!("replay-{n}"),
            server: d.server.clone(),
            tool: d.tool.clone(),
            grant: d.grant.clone(),
            agent: d.agent.clone(),
            session_id: d.session.clone(),
            subject: record.subject.clone(),
            issuer: record.issuer.clone(),
            arguments_json: record.arguments.clone(),
            annotations: tollgate_decision::audit::annotations_of(&record.annotations),
            ..Default::default()
        };
        request.set_kind(kind);
        let (verdict, rule, reason) = if d.rule == "pins" {
            // Tool pinning refuses whatever the policy says.
            (Verdict::Deny, "pins".to_owned(), d.reason.clone())
        } else if record.arguments.is_empty()
            && !d.arguments_sha256.is_empty()
            && rule_reads_arguments(&policy, &request)
        {
            *report
                .unknown
                .entry("arguments not recorded (telemetry.record_arguments) and the candidate's rule reads them".into())
                .or_default() += 1;
            continue;
        } else {
            let mut decision = engine.decide(&request).await;
            // The live call met an operator's answer: an approval it consumed (ALLOW), or one
            // denied or expired (DENY naming it). The candidate gets the same answer.
            let answered = match live {
                // Claimed: used, or kept for the next call when a limit refused it.
                Verdict::Allow | Verdict::RateLimited => Some(true),
                Verdict::Deny => Some(false),
                _ => None,
            };
            if let Some(approve) = answered
                && !d.approval_id.is_empty()
                && decision.verdict() == Verdict::ApprovalRequired
                && !decision.approval_id.is_empty()
            {
                if let Err(e) = engine
                    .resolve_approval(&decision.approval_id, approve, "policy-replay", "")
                    .await
                {
                    bail!("replaying an approval failed: {e}");
                }
                decision = engine.decide(&request).await;
            }
            // An approval the replay engine asked for exists nowhere else: not named.
            let reason = if decision.verdict() == Verdict::ApprovalRequired {
                format!("needs an operator's approval (rule {})", decision.rule)
            } else {
                decision.reason.clone()
            };
            (decision.verdict(), decision.rule.clone(), reason)
        };
        report.compared += 1;
        if verdict == live {
            report.same += 1;
            continue;
        }
        let candidate = tollgate_decision::verdict_name(verdict).to_owned();
        let pair = format!("{} -> {candidate}", d.verdict);
        *report.changed.entry(pair.clone()).or_default() += 1;
        *by_tool
            .entry((
                d.method.clone(),
                d.server.clone(),
                d.tool.clone(),
                d.grant.clone(),
                d.verdict.clone(),
                candidate.clone(),
            ))
            .or_default() += 1;
        let samples = report.samples.entry(pair).or_default();
        if samples.len() < options.samples {
            samples.push(Change {
                at_ms: d.at_ms,
                decision_id: d.id.clone(),
                method: d.method.clone(),
                server: d.server.clone(),
                tool: d.tool.clone(),
                grant: d.grant.clone(),
                agent: d.agent.clone(),
                live: d.verdict.clone(),
                live_rule: d.rule.clone(),
                candidate,
                candidate_rule: rule,
                candidate_reason: reason,
            });
        }
    }
    report.by_tool = by_tool
        .into_iter()
        .map(|((method, server, tool, grant, live, candidate), calls)| ToolChanges {
            method,
            server,
            tool,
            grant,
            live,
            candidate,
            calls,
        })
        .collect();
    report.by_tool.sort_by_key(|t| std::cmp::Reverse(t.calls));
    Ok(report)
}

/// Which `--fail-on` conditions hold.
pub fn failed(report: &Report, fail_on: &[FailOn]) -> Vec<&'static str> {
    let pairs = || report.changed.iter().filter(|(_, n)| **n > 0).map(|(p, _)| p.as_str());
    let mut out = Vec::new();
    for condition in fail_on {
        let holds = match condition {
            FailOn::NewlyDenied => pairs().any(|p| p.starts_with("ALLOW -> ")),
            FailOn::NewlyAllowed => pairs().any(|p| p.ends_with(" -> ALLOW")),
            FailOn::AnyChange => pairs().next().is_some(),
            FailOn::Unknown => !report.unknown.is_empty(),
        };
        if holds {
            out.push(match condition {
                FailOn::NewlyDenied => "newly-denied",
                FailOn::NewlyAllowed => "newly-allowed",
                FailOn::AnyChange => "any-change",
                FailOn::Unknown => "unknown",
            });
        }
    }
    out
}

/// Text for people: control characters in recorded names shown as escapes.
fn shown(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).collect()
}

/// The report as text.
pub fn text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let changed: u64 = report.changed.values().sum();
    let unknown: u64 = report.unknown.values().sum();
    let _ = writeln!(
        out,
        "{} decisions replayed: {} the same, {changed} answered otherwise, {unknown} not decided again ({} other records skipped)",
        report.compared, report.same, report.skipped
    );
    if report.duplicates > 0 {
        let _ = writeln!(
            out,
            "  {} records were given more than once (the same decision id) and replayed once",
            report.duplicates
        );
    }
    for (why, n) in &report.unknown {
        let _ = writeln!(out, "  not decided again: {n} ({why})");
    }
    if changed == 0 {
        return out;
    }
    let _ = writeln!(out, "\nBy verdict (live -> candidate):");
    for (pair, n) in &report.changed {
        let _ = writeln!(out, "  {pair:<36} {n}");
    }
    let _ = writeln!(out, "\nBy tool and grant:");
    for t in &report.by_tool {
        let _ = writeln!(
            out,
            "  {:<6} {} {}/{} grant {}: {} -> {}",
            t.calls,
            shown(&t.method),
            shown(&t.server),
            shown(&t.tool),
            shown(&t.grant),
            t.live,
            t.candidate
        );
    }
    let _ = writeln!(out, "\nSamples:");
    for (pair, samples) in &report.samples {
        let _ = writeln!(out, "  {pair}");
        for s in samples {
            let _ = writeln!(
                out,
                "    {} {} {}/{} grant {} agent {}: live {} by {}; candidate by {}{}",
                crate::commands::rfc3339(s.at_ms),
                shown(&s.decision_id),
                shown(&s.server),
                shown(&s.tool),
                shown(&s.grant),
                shown(&s.agent),
                s.live,
                shown(&s.live_rule),
                shown(&s.candidate_rule),
                if s.candidate_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", shown(&s.candidate_reason))
                }
            );
        }
    }
    out
}

/// A time given on the command line: milliseconds since the Unix epoch, or RFC 3339 in UTC
/// (`2026-12-08T10:15:00Z`, fractions of a second allowed).
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let bad =
        || format!("{text:?} is neither milliseconds since the Unix epoch nor a UTC time like 2026-12-08T10:15:00Z");
    let rest = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix('z'))
        .ok_or_else(bad)?;
    let (date, time) = rest.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (Some(Ok(h)), Some(Ok(min)), Some(Ok(s)), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return Err(bad());
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&m) || !(1..=days_in_month).contains(&day) || h > 23 || min > 59 || s > 59 || y < 1970 {
        return Err(bad());
    }
    let ms_fraction = if fraction.is_empty() {
        0
    } else if fraction.bytes().all(|b| b.is_ascii_digit()) {
        format!("{fraction:0<3}")[..3].parse::<i64>().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    // Days since 1970-01-01 of a civil date (the inverse of the one `rfc3339` uses).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + h * 3600 + min * 60 + s) * 1000) + ms_fraction;
    u64::try_from(ms).map_err(|_| bad())
}

/// `tollgate policy replay`.
pub fn policy_replay(options: Options) -> anyhow::Result<()> {
    if options.inputs.is_empty() {
        bail!("name at least one journal directory or JSON lines export: --journal PATH");
    }
    let (since, until) = (options.since, options.until);
    let (records, broken_chains) = read_records(&options.inputs, |r| {
        since.is_none_or(|t| r.decision.at_ms >= t) && until.is_none_or(|t| r.decision.at_ms < t)
    })?;
    let report = crate::commands::runtime()?.block_on(replay(records, &options.policy, &options))?;
    // Nothing to compare is not a pass: a wrong file, or a time window with no decision.
    if report.records == 0 {
        bail!(
            "no decision records to replay{} ({} other records skipped)",
            if since.is_some() || until.is_some() {
                " within --since/--until"
            } else {
                ""
            },
            report.skipped
        );
    }
    let output = if options.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        text(&report)
    };
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(output.as_bytes())
            .and_then(|()| stdout.flush())
            .context("cannot write the report")?;
    }
    if !broken_chains.is_empty() {
        bail!(
            "the chain of {} breaks: only the records before the break were replayed (see `tollgate audit verify`)",
            broken_chains.join(", ")
        );
    }
    let failed = failed(&report, &options.fail_on);
    if !failed.is_empty() {
        bail!("--fail-on {} holds", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_milliseconds_or_utc() {
        assert_eq!(parse_time("1765189500000"), Ok(1_765_189_500_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2026-12-08T10:15:00Z"), Ok(1_796_724_900_000));
        assert_eq!(parse_time("2026-12-08T10:15:00.5Z"), Ok(1_796_724_900_500));
        assert_eq!(
            crate::commands::rfc3339(parse_time("2024-02-29T23:59:59.123Z").unwrap()),
            "2024-02-29T23:59:59.123Z"
        );
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-08T10:15:00",
            "2026-12-08T10:15Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-12-08T03:44:60Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
