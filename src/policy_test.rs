//! `tollgate policy test POLICY --cases FILE…`: a policy's behaviour checked offline, the way
//! code is tested. Each case file (YAML or JSON) lists cases; a case is a sequence of calls
//! (tools, resource reads, prompt gets, with server, grant, agent and arguments), operator
//! actions on the approval the last call asked for, and pauses on a virtual clock, each call
//! with what must happen (verdict, rule, a reason substring, counters' remaining). Every case
//! runs on a fresh engine with the memory store and a clock that moves only when a step says
//! `after`, so limits and windows are exact and nothing waits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;
use tollgate_decision::Engine;
use tollgate_decision::proto::{DecideRequest, SubjectKind};
use tollgate_limiter::{ManualClock, MemoryStore};

/// One case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// Server, grant and agent of every call that does not name its own.
    #[serde(default)]
    defaults: Defaults,
    cases: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    server: Option<String>,
    grant: Option<String>,
    agent: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    steps: Vec<Step>,
}

/// One step: a call (`tool`, `resource` or `prompt`), or an operator's `approve` / `deny` of
/// the approval the last call asked for; `after` moves the clock first.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Virtual time that passes before the step (`500ms`, `30s`, `1m`, `1h`).
    after: Option<String>,
    tool: Option<String>,
    resource: Option<String>,
    prompt: Option<String>,
    server: Option<String>,
    grant: Option<String>,
    agent: Option<String>,
    arguments: Option<Value>,
    /// The same call this many times, each with the expectation (default 1).
    repeat: Option<u32>,
    /// An operator approves (`true`) or denies (`false`) the last approval asked for.
    approve: Option<bool>,
    expect: Option<Expect>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// ALLOW, DENY, RATE_LIMITED or APPROVAL_REQUIRED.
    verdict: Option<String>,
    /// The rule that decided, as decisions name it (`tools["k8s_scale"]`, `default`).
    rule: Option<String>,
    /// A part of the reason.
    reason: Option<String>,
    /// What each named counter has left after the call.
    remaining: Option<BTreeMap<String, u64>>,
    /// What the policy's `"mode": "shadow"` rules would answer (recorded, not enforced).
    shadow: Option<ShadowExpect>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowExpect {
    verdict: Option<String>,
    rule: Option<String>,
}

/// One case's outcome.
pub struct Outcome {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

/// The line of `cases[i].name` in the file's text: the first occurrence of the name's text
/// after the previous case's.
fn case_lines(text: &str, names: &[&str]) -> Vec<usize> {
    let mut from = text.find("cases").unwrap_or(0);
    names
        .iter()
        .map(|name| match text[from..].find(name) {
            Some(at) => {
                from += at + name.len();
                text[..from].matches('\n').count() + 1
            }
            None => 1,
        })
        .collect()
}

fn read_cases(path: &Path) -> anyhow::Result<(CaseFile, Vec<usize>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let file: CaseFile = if yaml {
        serde_norway::from_str(&text).map_err(|e| match e.location() {
            Some(l) => anyhow::anyhow!("{}:{}:{}: {e}", path.display(), l.line(), l.column()),
            None => anyhow::anyhow!("{}: {e}", path.display()),
        })?
    } else {
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?
    };
    let names: Vec<&str> = file.cases.iter().map(|c| c.name.as_str()).collect();
    let lines = case_lines(&text, &names);
    Ok((file, lines))
}

/// Runs one case on a fresh engine; why it failed.
async fn run_case(policy: tollgate_policy::Policy, defaults: &Defaults, case: &Case) -> Result<(), String> {
    let clock = Arc::new(ManualClock::default());
    // Not at zero: a window's start must not be the clock's origin.
    clock.advance(Duration::from_secs(86_400));
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let engine = Engine::new(policy, store, Duration::from_secs(1));
    let mut last_approval = String::new();
    let mut call_number = 0u64;
    for (i, step) in case.steps.iter().enumerate() {
        let at = format!("step {}", i + 1);
        if let Some(after) = &step.after {
            let d = tollgate_policy::parse_duration(after)
                .ok_or_else(|| format!("{at}: after = {after:?} is not a duration (500ms, 30s, 1m, 1h, 1d)"))?;
            clock.advance(d);
        }
        if let Some(approve) = step.approve {
            if last_approval.is_empty() {
                return Err(format!("{at}: no call before it asked for an approval"));
            }
            engine
                .resolve_approval(&last_approval, approve, "policy-test", "")
                .await
                .map_err(|e| format!("{at}: the approval could not be resolved: {e}"))?;
            continue;
        }
        let (kind, name) = match (&step.tool, &step.resource, &step.prompt) {
            (Some(t), None, None) => (SubjectKind::Tool, t),
            (None, Some(r), None) => (SubjectKind::Resource, r),
            (None, None, Some(p)) => (SubjectKind::Prompt, p),
            _ => {
                if step.after.is_some() && step.expect.is_none() {
                    continue;
                }
                return Err(format!(
                    "{at}: name exactly one of tool, resource or prompt (or approve)"
                ));
            }
        };
        let server = step
            .server
            .as_ref()
            .or(defaults.server.as_ref())
            .cloned()
            .unwrap_or_else(|| "default".into());
        let grant = step
            .grant
            .as_ref()
            .or(defaults.grant.as_ref())
            .cloned()
            .unwrap_or_else(|| "default".into());
        let agent = step
            .agent
            .as_ref()
            .or(defaults.agent.as_ref())
            .cloned()
            .unwrap_or_else(|| grant.clone());
        for n in 0..step.repeat.unwrap_or(1) {
            call_number += 1;
            let mut request = DecideRequest {
                request_id: format!("policy-test-{call_number}"),
                server: server.clone(),
                tool: name.clone(),
                grant: grant.clone(),
                agent: agent.clone(),
                session_id: "policy-test".into(),
                arguments_json: step.arguments.as_ref().map(Value::to_string).unwrap_or_default(),
                ..Default::default()
            };
            request.set_kind(kind);
            let (decision, shadow) = engine.decide_with_shadow(&request, None).await;
            if !decision.approval_id.is_empty() {
                last_approval = decision.approval_id.clone();
            }
            let Some(expect) = &step.expect else { continue };
            let call = if step.repeat.unwrap_or(1) > 1 {
                format!("{at} ({name}, call {} of {})", n + 1, step.repeat.unwrap_or(1))
            } else {
                format!("{at} ({name})")
            };
            let got = format!(
                "{} by {} ({})",
                tollgate_decision::verdict_name(decision.verdict()),
                decision.rule,
                decision.reason
            );
            if let Some(v) = &expect.verdict {
                let wanted = tollgate_decision::verdict_named(v).ok_or_else(|| {
                    format!("{at}: verdict {v:?} is none of ALLOW, DENY, RATE_LIMITED, APPROVAL_REQUIRED")
                })?;
                if decision.verdict() != wanted {
                    return Err(format!("{call}: expected {v}, got {got}"));
                }
            }
            if let Some(rule) = &expect.rule
                && &decision.rule != rule
            {
                return Err(format!("{call}: expected rule {rule}, got {got}"));
            }
            if let Some(reason) = &expect.reason
                && !decision.reason.contains(reason.as_str())
            {
                return Err(format!("{call}: expected a reason with {reason:?}, got {got}"));
            }
            if let Some(wanted) = &expect.shadow {
                let Some(shadow) = &shadow else {
                    return Err(format!(
                        "{call}: expects a shadow verdict, but the policy has no \"mode\": \"shadow\" rules"
                    ));
                };
                let got = format!("{} by {}", tollgate_decision::verdict_name(shadow.verdict), shadow.rule);
                if let Some(v) = &wanted.verdict
                    && tollgate_decision::verdict_name(shadow.verdict) != v
                {
                    return Err(format!("{call}: expected the shadow verdict {v}, got {got}"));
                }
                if let Some(rule) = &wanted.rule
                    && &shadow.rule != rule
                {
                    return Err(format!("{call}: expected the shadow rule {rule}, got {got}"));
                }
            }
            for (counter, left) in expect.remaining.iter().flatten() {
                match decision.limits.iter().find(|l| &l.counter == counter) {
                    Some(l) if l.remaining == *left => {}
                    Some(l) => {
                        return Err(format!(
                            "{call}: expected {counter} to have {left} left, it has {} (of {})",
                            l.remaining, l.limit
                        ));
                    }
                    None => return Err(format!("{call}: the decision names no counter {counter} ({got})")),
                }
            }
        }
    }
    Ok(())
}

/// Runs every case of every file against the policy at `policy_path`.
pub async fn run(policy_path: &Path, files: &[PathBuf]) -> anyhow::Result<Vec<Outcome>> {
    // Checked once; each case gets a policy of its own (compiled again) on a fresh engine.
    tollgate_policy::load_file(policy_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut outcomes = Vec::new();
    for file in files {
        let (cases, lines) = read_cases(file)?;
        if cases.cases.is_empty() {
            bail!("{}: no cases", file.display());
        }
        for (case, line) in cases.cases.iter().zip(lines) {
            let policy = tollgate_policy::load_file(policy_path)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .policy;
            let failure = run_case(policy, &cases.defaults, case).await.err();
            outcomes.push(Outcome {
                file: file.clone(),
                line,
                name: case.name.clone(),
                failure,
            });
        }
    }
    Ok(outcomes)
}

fn xml(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&apos;".to_owned(),
            // Not allowed in XML 1.0 even as references: written as text.
            c if c.is_control() && c != '\n' && c != '\t' => format!("\\u{{{:04x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// The outcomes as a JUnit XML report (one testsuite per case file).
pub fn junit(outcomes: &[Outcome]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    let mut files: Vec<&PathBuf> = outcomes.iter().map(|o| &o.file).collect();
    files.dedup();
    for file in files {
        let ours: Vec<&Outcome> = outcomes.iter().filter(|o| &o.file == file).collect();
        let failures = ours.iter().filter(|o| o.failure.is_some()).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            xml(&file.display().to_string()),
            ours.len()
        );
        for o in ours {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" line=\"{}\"",
                xml(&o.name),
                xml(&file.display().to_string()),
                xml(&file.display().to_string()),
                o.line
            );
            match &o.failure {
                None => out.push_str("/>\n"),
                Some(f) => {
                    let _ = writeln!(out, ">\n      <failure message=\"{}\"/>\n    </testcase>", xml(f));
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// `tollgate policy test`: prints each case, writes `junit` when asked; an error when a case
/// failed.
pub fn policy_test(policy: &Path, files: &[PathBuf], junit_path: Option<&Path>) -> anyhow::Result<()> {
    if files.is_empty() {
        bail!("name at least one case file: --cases FILE");
    }
    let outcomes = crate::commands::runtime()?.block_on(run(policy, files))?;
    let mut failed = 0;
    for o in &outcomes {
        match &o.failure {
            None => println!("ok    {} ({}:{})", o.name, o.file.display(), o.line),
            Some(why) => {
                failed += 1;
                println!("FAIL  {} ({}:{}): {why}", o.name, o.file.display(), o.line);
            }
        }
    }
    println!(
        "{} cases, {} passed, {failed} failed",
        outcomes.len(),
        outcomes.len() - failed
    );
    if let Some(path) = junit_path {
        std::fs::write(path, junit(&outcomes)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if failed > 0 {
        bail!("{failed} case(s) failed");
    }
    Ok(())
}
