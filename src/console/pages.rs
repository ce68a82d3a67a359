//! The console's HTML, written as `maud` templates: every value interpolated into a template
//! is escaped unless it is wrapped in `PreEscaped`, which only the fixed fragments of this
//! file are. Text that came from outside (operators, agents, upstreams, the policy file) is
//! shown through [`Shown`], which also makes invisible and bidirectional controls visible.

use std::fmt::Write as _;

use axum::response::Html;
use maud::{DOCTYPE, Markup, Render, html};
use tollgate_decision::DecisionRecord;
use tollgate_decision::proto as tollgate_api_proto;
use tollgate_limiter::{Approval, ApprovalStatus, StoreError};

use super::{Console, ExplainQuery, Session};

/// Bytes of an approval's arguments the queue shows.
const PREVIEW_BYTES: usize = 2048;

/// Text from outside, as HTML text: escaped, with every invisible or bidirectional control
/// shown as a marked code point (`U+202E`) so the text cannot read differently from its
/// value.
pub(crate) struct Shown<'a>(pub &'a str);

impl Render for Shown<'_> {
    fn render_to(&self, out: &mut String) {
        for c in self.0.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c if is_invisible_control(c) => {
                    let _ = write!(
                        out,
                        "<mark class=\"control\" title=\"invisible control character\">U+{:04X}</mark>",
                        c as u32
                    );
                }
                c => out.push(c),
            }
        }
    }
}

/// Characters that change how text around them is displayed, or are not displayed at all:
/// bidirectional embeddings, overrides, isolates and marks, zero-width characters, and
/// other C0/C1 controls but line breaks and tabs.
pub(crate) fn is_invisible_control(c: char) -> bool {
    matches!(c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
        | '\u{0}'..='\u{8}' | '\u{B}'..='\u{1F}' | '\u{7F}'..='\u{9F}')
}

/// Text from outside for an attribute value (escaped by the template): every invisible or
/// bidirectional control as the text `U+XXXX`, since an attribute cannot hold [`Shown`]'s
/// markup.
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| {
            if is_invisible_control(c) {
                format!("U+{:04X}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `HH:MM:SS` (UTC) of a time in ms since the epoch.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn span(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h {}m", s / 3600, (s / 60) % 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn ago(ms: u64) -> String {
    format!("{} ago", span(ms))
}

/// Arguments JSON pretty-printed (as text: [`Shown`] escapes it).
fn pretty(arguments: &str) -> String {
    serde_json::from_str::<serde_json::Value>(arguments)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| arguments.to_owned())
}

/// A full page: header with navigation and the operator's sign-out form, then `body`.
fn layout(title: &str, session: Option<(&Session, &str)>, current: &str, body: Markup) -> Html<String> {
    let link = |href: &'static str, label: &'static str| {
        html! { a href=(href) aria-current=[(href == current).then_some("page")] { (label) } }
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tollgate" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header.top {
                    span.brand { "Tollgate" }
                    @if let Some((session, csrf)) = session {
                        nav aria-label="Console" {
                            (link("/console", "Approvals & decisions"))
                            (link("/console/counters", "Counters"))
                            (link("/console/policy", "Policy"))
                            (link("/console/tools", "Tools"))
                            (link("/console/candidate", "Candidate policy"))
                        }
                        form.signout method="post" action="/console/logout" {
                            span.who { "Signed in as " strong { (Shown(&session.o)) } }
                            input type="hidden" name="csrf" value=(csrf);
                            button.quiet type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    };
    Html(page.into_string())
}

pub fn login(error: Option<&str>) -> Html<String> {
    layout(
        "Sign in",
        None,
        "",
        html! {
            section.signin {
                h1 { "Sign in" }
                @if let Some(error) = error { p.alert role="alert" { (error) } }
                form method="post" action="/console/login" {
                    label for="key" { "Operator key" }
                    input #key name="key" type="password" autocomplete="current-password" required autofocus;
                    p.hint {
                        "A key from " code { "[[operators]]" } " (" code { "tollgate keygen" } " makes one). "
                        "Your name goes into the audit trail with every approval you resolve."
                    }
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// Who asked for an approval: grant, agent and, for a JWT, its subject.
fn asked_by(a: &Approval) -> Markup {
    html! {
        span.by {
            "grant " strong { (Shown(&a.grant)) } ", agent " (Shown(&a.agent))
            @if let Some(subject) = &a.subject { ", subject " strong.subject { (Shown(subject)) } }
        }
    }
}

/// The confirmation an approval needs: the call's tool, server, caller and whole arguments,
/// and one button (focused: Enter confirms). `token` binds the confirmation to this record.
pub fn confirm(session: &Session, csrf: &str, approval: &Approval, reason: &str, token: &str) -> Html<String> {
    let body = html! {
        section.panel.confirm aria-labelledby="confirm-title" {
            h1 #confirm-title { "Approve this call?" }
            p.what {
                span.tool { (Shown(&approval.tool)) } " on " span.server { (Shown(&approval.server)) } " "
                (asked_by(approval))
            }
            p.hint {
                "The call goes through with exactly these arguments (" (approval.arguments.len())
                " bytes); any other arguments need their own approval."
            }
            pre.arguments aria-label="Arguments" { (Shown(&pretty(&approval.arguments))) }
            form.resolve method="post" action={ "/console/approvals/" (approval.id) } {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="decision" value="approve";
                input type="hidden" name="confirm" value=(token);
                input type="hidden" name="reason" value=(reason);
                button.approve type="submit" autofocus { "Confirm approval" }
                " "
                a.back href="/console" { "Back to the queue" }
            }
        }
    };
    layout("Confirm approval", Some((session, csrf)), "/console", body)
}

/// The banner after an approve or deny.
pub fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "approved" => "Approved: the held call goes through now.",
        "denied" => "Denied: the agent is told your reason.",
        "not_pending" => "That approval is no longer pending (someone resolved it, or it expired).",
        "missing" => "No such approval.",
        "unavailable" => "The approval store did not answer; try again.",
        _ => return None,
    })
}

pub fn home(
    console: &Console,
    session: &Session,
    approvals: Result<Vec<Approval>, StoreError>,
    recent: &[std::sync::Arc<DecisionRecord>],
    notice: Option<&str>,
) -> Html<String> {
    let csrf = console.csrf(session);
    let tail_note = if console.engine.tail().is_some() {
        "Every replica's decisions, newest first (the last 200; under heavy load some are skipped, the audit trail has them all)."
    } else {
        "The live tail is off on this replica."
    };
    let body = html! {
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        section.panel aria-labelledby="approvals-title" {
            h1 #approvals-title { "Approvals" }
            div #approvals data-live="approvals" {
                @match &approvals {
                    Ok(all) => (approvals_fragment(all, &csrf)),
                    Err(e) => p.alert role="alert" { "The approval store did not answer: " (Shown(&e.to_string())) },
                }
            }
        }
        section.panel aria-labelledby="decisions-title" {
            h1 #decisions-title { "Decisions " span.live #live aria-live="polite" { "connecting…" } }
            p.hint { (tail_note) }
            form #filters.filters role="search" aria-label="Filter decisions" {
                label { "Verdict " select name="verdict" {
                    option value="" { "any" }
                    @for v in ["ALLOW", "DENY", "RATE_LIMITED", "APPROVAL_REQUIRED"] { option value=(v) { (v) } }
                } }
                label { "Server " input name="server" autocomplete="off"; }
                label { "Tool " input name="tool" autocomplete="off"; }
                label { "Grant " input name="grant" autocomplete="off"; }
                span.count #shown aria-live="polite" {}
            }
            table.decisions {
                thead { tr {
                    th scope="col" { "Time (UTC)" } th scope="col" { "Verdict" } th scope="col" { "Server" }
                    th scope="col" { "Tool" } th scope="col" { "Grant" } th scope="col" { "Agent" }
                    th scope="col" { "Rule" } th scope="col" { span.sr { "Details" } }
                } }
                tbody #decisions { @for record in recent.iter().rev() { (decision_markup(console, record)) } }
            }
        }
    };
    layout("Approvals and decisions", Some((session, &csrf)), "/console", body)
}

/// The approvals panel's content: pending ones with approve/deny forms, then recently
/// resolved ones.
pub fn approvals(console: &Console, session: &Session, all: &[Approval]) -> String {
    approvals_fragment(all, &console.csrf(session)).into_string()
}

fn approvals_fragment(all: &[Approval], csrf: &str) -> Markup {
    let now = tollgate_limiter::wall_clock_ms();
    // Oldest first: a new approval is added below the others, so nothing an operator is
    // pointing at moves when one arrives.
    let mut pending: Vec<&Approval> = all.iter().filter(|a| a.status == ApprovalStatus::Pending).collect();
    pending.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.id.cmp(&b.id)));
    let resolved: Vec<&Approval> = all
        .iter()
        .filter(|a| a.status != ApprovalStatus::Pending)
        .take(20)
        .collect();
    html! {
        div #pending-part {
            @if pending.is_empty() {
                p.empty #pending-empty { "No call is waiting for approval." }
            } @else {
                p.count { strong #pending-count { (pending.len()) } " waiting" }
                ul.pending #pending { @for a in &pending { (pending_entry(a, csrf, now)) } }
            }
        }
        div #resolved-part {
            @if !resolved.is_empty() {
                h2 { "Recently resolved" }
                table.resolved {
                    thead { tr {
                        th scope="col" { "Status" } th scope="col" { "Tool" } th scope="col" { "Grant" }
                        th scope="col" { "By" } th scope="col" { "Reason" } th scope="col" { "When (UTC)" }
                    } }
                    tbody {
                        @for a in &resolved {
                            @let status = format!("{:?}", a.status).to_lowercase();
                            tr data-id=(a.id) {
                                td { span class={ "badge " (status) } { (status) } }
                                td { (Shown(&a.tool)) " on " (Shown(&a.server)) }
                                td { (Shown(&a.grant)) }
                                td { (Shown(a.resolved_by.as_deref().unwrap_or("—"))) }
                                td { (Shown(a.reason.as_deref().filter(|r| !r.is_empty()).unwrap_or("—"))) }
                                td { (clock(a.resolved_ms.unwrap_or(a.expires_ms))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn pending_entry(a: &Approval, csrf: &str, now: u64) -> Markup {
    let reason_id = format!("reason-{}", a.id);
    html! {
        li.approval id=(a.id) data-id=(a.id) {
            div.what { span.tool { (Shown(&a.tool)) } " on " span.server { (Shown(&a.server)) } (asked_by(a)) }
            dl.facts {
                dt { "Rule" } dd { (Shown(&a.rule)) }
                dt { "Asked" } dd { time data-since=(a.created_ms) { (ago(now.saturating_sub(a.created_ms))) } }
                dt { "Expires" } dd { time data-until=(a.expires_ms) { "in " (span(a.expires_ms.saturating_sub(now))) } }
                dt { "Id" } dd { code { (a.id) } }
            }
            // The queue shows at most a preview; the confirmation page shows them whole.
            pre.arguments aria-label="Arguments" {
                @if a.arguments.len() > PREVIEW_BYTES {
                    (Shown(&tollgate_limiter::cut_short(&a.arguments, PREVIEW_BYTES)))
                    span.more { "… " (a.arguments.len()) " bytes in all: shown whole before you confirm" }
                } @else {
                    (Shown(&pretty(&a.arguments)))
                }
            }
            form.resolve method="post" action={ "/console/approvals/" (a.id) } {
                input type="hidden" name="csrf" value=(csrf);
                label for=(reason_id) { "Reason" }
                input id=(reason_id) name="reason" maxlength="1024" placeholder="shown to the agent and in the audit trail";
                button.approve type="submit" name="decision" value="approve" { "Approve" }
                button.deny type="submit" name="decision" value="deny" { "Deny" }
            }
        }
    }
}

/// One decision as a table row (and its details row), with the values the filters match.
pub fn decision_row(console: &Console, r: &DecisionRecord) -> String {
    decision_markup(console, r).into_string()
}

fn decision_markup(console: &Console, r: &DecisionRecord) -> Markup {
    let limits: Vec<String> = r
        .limits
        .iter()
        .map(|l| format!("{}: {} of {} left", l.counter, l.remaining, l.max))
        .collect();
    let retry = (r.retry_after_ms > 0).then(|| format!("{} ms", r.retry_after_ms));
    let limits = limits.join("; ");
    let pin = match r.pin_state.as_str() {
        "" => String::new(),
        state => format!("{state} ({})", r.pin_digest),
    };
    let facts: [(&str, &str); 11] = [
        ("Decision", &r.id),
        ("Method", &r.method),
        ("Rule", &r.rule),
        ("Reason", &r.reason),
        ("Session", &r.session),
        ("Arguments SHA-256", &r.arguments_sha256),
        ("Approval", &r.approval_id),
        ("Replica", &r.replica),
        ("Retry after", retry.as_deref().unwrap_or_default()),
        ("Limits", &limits),
        ("Pin", &pin),
    ];
    let detail_id = format!("d-{}", r.id);
    html! {
        tr.decision data-id=(r.id) data-verdict=(r.verdict) data-server=(r.server) data-tool=(r.tool) data-grant=(r.grant) {
            td { time { (clock(r.at_ms)) } }
            td { span class={ "badge " (r.verdict.to_lowercase()) } { (Shown(&r.verdict)) } }
            td { (Shown(&r.server)) }
            td.tool { (Shown(&r.tool)) }
            td { (Shown(&r.grant)) }
            td { (Shown(&r.agent)) }
            td.rule { (Shown(&r.rule)) }
            td { button.quiet.more type="button" aria-expanded="false" aria-controls=(detail_id) { "Details" } }
        }
        tr.detail id=(detail_id) hidden {
            td colspan="8" {
                dl.facts {
                    @for (label, value) in facts {
                        @if !value.is_empty() { dt { (label) } dd { (Shown(value)) } }
                    }
                    @if let Some(link) = console.trace_link(&r.trace_id) {
                        dt { "Trace" }
                        dd { a href=(link) target="_blank" rel="noopener noreferrer" { (r.trace_id) } }
                    } @else if !r.trace_id.is_empty() {
                        dt { "Trace" } dd { code { (Shown(&r.trace_id)) } }
                    }
                }
            }
        }
    }
}

/// The question fields shared by the explain and counters forms.
fn question_fields(query: &ExplainQuery) -> Markup {
    let kinds = [
        ("tool", "tools/call"),
        ("resource", "resources/read"),
        ("prompt", "prompts/get"),
    ];
    html! {
        label { "Method " select name="kind" {
            @for (value, label) in kinds { option value=(value) selected[query.kind == value] { (label) } }
        } }
        label { "Tool, resource URI or prompt " input name="name" value=(query.name) required; }
        label { "Server " input name="server" value=(query.server); }
        label { "Grant " input name="grant" value=(query.grant) required; }
        label { "Agent " input name="agent" value=(query.agent) placeholder="the grant's"; }
        label.wide { "Arguments (JSON object) " textarea name="args" rows="3" { (query.args) } }
    }
}

pub fn counters(
    console: &Console,
    session: &Session,
    query: &ExplainQuery,
    answer: Option<Result<Vec<tollgate_decision::CounterUse>, String>>,
) -> Html<String> {
    let csrf = console.csrf(session);
    let body = html! {
        section.panel aria-labelledby="counters-title" {
            h1 #counters-title { "Counters" }
            p.hint {
                "Each counter a call would take, read from the store now, without taking anything. "
                "Counters are per key: name the grant (and the tool, server, arguments its limits are scoped by)."
            }
            form.explain-form method="get" action="/console/counters" {
                (question_fields(query))
                button type="submit" { "Show counters" }
            }
            @match &answer {
                None => {}
                Some(Err(message)) => p.alert role="alert" { (Shown(message)) },
                Some(Ok(used)) if used.is_empty() => {
                    p.notice role="status" { "The rule that decides this call takes no counters." }
                }
                Some(Ok(used)) => {
                    h2 #counters-answer { "Counters of this call" }
                    table.counters aria-labelledby="counters-answer" {
                        thead { tr {
                            th scope="col" { "Counter" } th scope="col" { "Limit" } th scope="col" { "Use" }
                            th scope="col" { "Left" } th scope="col" { "Empty" } th scope="col" { "Key" }
                        } }
                        tbody {
                            @for c in used {
                                @let taken = c.max.saturating_sub(c.remaining);
                                tr {
                                    td.tool { (Shown(&c.counter)) }
                                    td { (Shown(&c.limit)) " (" (Shown(&c.algorithm)) ")" }
                                    td {
                                        meter min="0" max=(c.max) value=(taken) aria-label={ (c.counter) " use" } {}
                                        " "
                                        span.use { (taken) " of " (c.max) " used" }
                                    }
                                    td { (c.remaining) }
                                    td {
                                        @if taken == 0 { "now" } @else { "in " (span(c.empty_in.as_millis() as u64)) }
                                    }
                                    td { code { (Shown(&c.key)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Counters", Some((session, &csrf)), "/console/counters", body)
}

pub fn policy(
    console: &Console,
    session: &Session,
    query: &ExplainQuery,
    answer: Option<Result<Vec<String>, String>>,
    pin: Option<String>,
) -> Html<String> {
    let csrf = console.csrf(session);
    let active = console.status.active();
    let last_error = console.status.last_error();
    let body = html! {
        section.panel aria-labelledby="explain-title" {
            h1 #explain-title { "Explain a call" }
            p.hint {
                "Which rule decides a call and what it would take, from the policy in force: the same answer as "
                code { "tollgate policy explain" } "."
            }
            form.explain-form method="get" action="/console/policy" {
                (question_fields(query))
                button type="submit" { "Explain" }
            }
            @match &answer {
                None => {}
                Some(Ok(lines)) => {
                    h2 #explained { "Answer" }
                    pre.explain aria-labelledby="explained" { (Shown(&lines.join("\n"))) }
                    @if let Some(pin) = &pin {
                        h2 #pinned { "Tool pinning" }
                        pre.pin aria-labelledby="pinned" { (Shown(pin)) }
                    }
                }
                Some(Err(message)) => p.alert role="alert" { (Shown(message)) },
            }
        }
        section.panel aria-labelledby="policy-title" {
            h1 #policy-title { "Policy in force" }
            dl.facts {
                dt { "File" } dd { code { (Shown(&active.path)) } }
                dt { "Generation" } dd #generation { (active.generation) }
                dt { "Installed" } dd { (clock(active.installed_ms)) " UTC" }
                dt { "Digest" } dd { code { (format!("{:016x}", console.engine.policy().digest())) } }
            }
            @if let Some(error) = &last_error {
                div.alert role="alert" {
                    strong { "The last reload was rejected" }
                    "; the policy below (generation " (active.generation) ") stays in force."
                    pre { (Shown(error)) }
                }
            } @else if active.last_attempt_ms > 0 {
                p.notice { "The last reload, at " (clock(active.last_attempt_ms)) " UTC, was installed." }
            } @else {
                p.hint { "Loaded at start; not reloaded since." }
            }
            pre.source aria-label="Policy source" { (Shown(&active.source)) }
        }
    };
    layout("Policy", Some((session, &csrf)), "/console/policy", body)
}

/// The candidate (shadow) policy: where it comes from, and the decisions it would have
/// answered otherwise, added up over every replica, by tool, grant and verdict pair.
pub fn candidate(console: &Console, session: &Session) -> Html<String> {
    let csrf = console.csrf(session);
    let engine = &console.engine;
    let candidate = engine.candidate();
    let log = engine.shadow_log();
    let file = log.and_then(|l| l.file());
    let digest = candidate.as_ref().map(|c| format!("{:016x}", c.digest()));
    let (disagreements, evaluated, other, replicas) = match (log, &digest) {
        (Some(log), Some(digest)) => {
            let all = log.cluster();
            let replicas = all.iter().filter(|c| &c.candidate == digest).count();
            let (d, evaluated, other) = tollgate_decision::shadow::add_up(&all, digest);
            (d, evaluated, other, replicas)
        }
        _ => (Vec::new(), 0, 0, 0),
    };
    let changed = disagreements.iter().fold(other, |sum, d| sum.saturating_add(d.count));
    let now = tollgate_limiter::wall_clock_ms();
    let body = html! {
        section.panel aria-labelledby="candidate-title" {
            h1 #candidate-title { "Candidate policy" }
            @match (&candidate, file) {
                (None, _) => p.hint #no-candidate {
                    "No candidate is loaded. Set " code { "[decision] shadow_policy = \"candidate.json\"" }
                    ", or give rules of the live policy " code { "\"mode\": \"shadow\"" }
                    ": every decision is then also evaluated against the candidate, and what it would answer \
                     otherwise is listed here (never enforced)."
                },
                (Some(_), Some(file)) => {
                    @let active = file.active();
                    dl.facts {
                        dt { "File" } dd { code #candidate-file { (Shown(&active.path)) } }
                        dt { "Generation" } dd { (active.generation) }
                        dt { "Installed" } dd { (clock(active.installed_ms)) " UTC" }
                        dt { "Digest" } dd { code { (digest.as_deref().unwrap_or_default()) } }
                    }
                    @if let Some(error) = file.last_error() {
                        div.alert role="alert" {
                            strong { "The last reload of the candidate was rejected" }
                            "; generation " (active.generation) " stays the candidate."
                            pre { (Shown(&error)) }
                        }
                    }
                }
                (Some(_), None) => {
                    p.hint #candidate-rules {
                        "The candidate is the live policy with its " code { "\"mode\": \"shadow\"" }
                        " rules in force (digest " code { (digest.as_deref().unwrap_or_default()) } ")."
                    }
                }
            }
        }
        @if candidate.is_some() {
            section.panel aria-labelledby="changes-title" {
                h1 #changes-title { "What would change" }
                @if log.is_none() {
                    p.hint { "Counting needs the console's channel; see the metric tollgate_shadow_disagreements_total." }
                }
                p #shadow-summary {
                    strong #shadow-changed { (changed) } " of " strong #shadow-evaluated { (evaluated) }
                    " decisions would have been answered otherwise, on " (replicas) " replica(s), since each loaded this candidate."
                    @if other > 0 { " (" (other) " of them in kinds not listed.)" }
                }
                @if !disagreements.is_empty() {
                    table.changes {
                        thead { tr {
                            th scope="col" { "Tool" } th scope="col" { "Server" } th scope="col" { "Grant" }
                            th scope="col" { "Live → candidate" } th scope="col" { "Calls" } th scope="col" { "Examples" }
                        } }
                        tbody {
                            @for d in &disagreements {
                                tr.change {
                                    td { code.tool { (Shown(&d.tool)) } @if d.method != "tools/call" { " " small { (Shown(&d.method)) } } }
                                    td { (Shown(&d.server)) }
                                    td { (Shown(&d.grant)) }
                                    td {
                                        span.verdict.live { (Shown(&d.live)) } " " code { (Shown(&d.live_rule)) }
                                        " → "
                                        span.verdict.shadow { (Shown(&d.shadow)) } " " code { (Shown(&d.shadow_rule)) }
                                    }
                                    td.count { (d.count) }
                                    td {
                                        ul.examples {
                                            @for e in &d.examples {
                                                li {
                                                    (ago(now.saturating_sub(e.at_ms))) ", agent " (Shown(&e.agent))
                                                    @if !e.arguments_sha256.is_empty() {
                                                        ", arguments " code title=(plain(&e.arguments_sha256)) { (Shown(e.arguments_sha256.get(..12).unwrap_or(&e.arguments_sha256))) }
                                                    }
                                                    ", decision " code { (Shown(&e.decision_id)) }
                                                    @if !e.shadow_reason.is_empty() { br; "candidate: " (Shown(&e.shadow_reason)) }
                                                    @if !e.live_reason.is_empty() { br; "live: " (Shown(&e.live_reason)) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } @else {
                    p.notice #no-changes { "No decision would have been answered otherwise so far." }
                }
            }
        }
        @if let Some(file) = file {
            section.panel aria-labelledby="candidate-source" {
                h1 #candidate-source { "Candidate source" }
                pre.source aria-label="Candidate source" { (Shown(&file.active().source)) }
            }
        }
    };
    layout("Candidate policy", Some((session, &csrf)), "/console/candidate", body)
}

/// One row of a side-by-side diff: the approved line, the pending line (either may be
/// missing), and whether they differ.
struct DiffRow<'a> {
    left: Option<&'a str>,
    right: Option<&'a str>,
    changed: bool,
}

/// The rows of a side-by-side diff: runs of removed and added lines are paired.
fn side_by_side<'a>(lines: &[tollgate_decision::definitions::Line<'a>]) -> Vec<DiffRow<'a>> {
    use tollgate_decision::definitions::Line;
    let mut rows = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Line::Same(l) = lines[i] {
            rows.push(DiffRow {
                left: Some(l),
                right: Some(l),
                changed: false,
            });
            i += 1;
            continue;
        }
        let mut removed = Vec::new();
        let mut added = Vec::new();
        while i < lines.len() {
            match lines[i] {
                Line::Removed(l) => removed.push(l),
                Line::Added(l) => added.push(l),
                Line::Same(_) => break,
            }
            i += 1;
        }
        for k in 0..removed.len().max(added.len()) {
            rows.push(DiffRow {
                left: removed.get(k).copied(),
                right: added.get(k).copied(),
                changed: true,
            });
        }
    }
    rows
}

/// Notices after a pin was resolved.
pub fn pin_notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "approved" => "The definition was approved: its tool is shown and callable again.",
        "rejected" => "The definition was rejected: it stays hidden and refused.",
        "missing" => "That definition is no longer pending (another operator resolved it, or it was replaced).",
        "unavailable" => "The store did not answer; nothing was changed. Try again.",
        _ => return None,
    })
}

/// The "Tools" page: pending definitions, each against the approved one of its name.
pub fn tools(
    console: &Console,
    session: &Session,
    listed: Result<Vec<tollgate_api_proto::PinDefinition>, StoreError>,
    notice: Option<&str>,
) -> Html<String> {
    use tollgate_api_proto::PinState;
    let csrf = console.csrf(session);
    let now = tollgate_limiter::wall_clock_ms();
    let body = match listed {
        Err(e) => html! { p.alert role="alert" { "The store did not answer: " (Shown(&e.to_string())) } },
        Ok(all) => {
            let pending: Vec<&tollgate_api_proto::PinDefinition> =
                all.iter().filter(|d| d.state() == PinState::Pending).collect();
            let settled: Vec<&tollgate_api_proto::PinDefinition> =
                all.iter().filter(|d| d.state() != PinState::Pending).collect();
            html! {
                @if let Some(notice) = notice { p.notice role="status" { (notice) } }
                section.panel aria-labelledby="pending-title" {
                    h1 #pending-title { "Definitions awaiting review" }
                    p.hint {
                        "Tools, prompts and resource templates whose definition an upstream lists and no operator has "
                        "approved. With " code { "pinning = \"enforce\"" } " they are hidden from agents and their "
                        "calls refused until approved."
                    }
                    @if pending.is_empty() {
                        p.empty { "Nothing awaits review." }
                    }
                    ol.pins {
                        @for d in &pending {
                            (pending_pin(d, &all, &csrf, now))
                        }
                    }
                }
                section.panel aria-labelledby="settled-title" {
                    h1 #settled-title { "Reviewed definitions" }
                    table.pins-settled {
                        thead { tr { th { "Upstream" } th { "Kind" } th { "Name" } th { "State" } th { "Digest" } th { "By" } th { "Reason" } } }
                        tbody {
                            @for d in &settled {
                                tr data-state=(tollgate_decision::pins::pin_json(d)["state"].as_str().unwrap_or_default()) {
                                    td { (Shown(&d.server)) }
                                    td { (tollgate_decision::pins::pin_json(d)["kind"].as_str().unwrap_or_default()) }
                                    td { (Shown(&d.name)) @if d.current { " " span.tag { "listed now" } } }
                                    td { (tollgate_decision::pins::pin_json(d)["state"].as_str().unwrap_or_default()) }
                                    td { code { (d.digest.get(..12).unwrap_or_default()) } }
                                    td { (Shown(&d.resolved_by)) }
                                    td { (Shown(&d.reason)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Tools", Some((session, &csrf)), "/console/tools", body)
}

fn pending_pin(
    d: &tollgate_api_proto::PinDefinition,
    all: &[tollgate_api_proto::PinDefinition],
    csrf: &str,
    now: u64,
) -> Markup {
    let kind = tollgate_decision::pins::pin_json(d)["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let approved = all.iter().find(|o| {
        o.server == d.server
            && o.kind == d.kind
            && o.name == d.name
            && !d.approved_digest.is_empty()
            && o.digest == d.approved_digest
    });
    let old = approved
        .map(|o| tollgate_decision::definitions::readable(&o.definition))
        .unwrap_or_default();
    let new = tollgate_decision::definitions::readable(&d.definition);
    let lines = tollgate_decision::definitions::line_diff(&old, &new);
    let rows = side_by_side(&lines);
    let reason_id = format!("reason-{}", d.id);
    html! {
        li.pin id=(d.id) data-id=(d.id) {
            div.what { (kind) " " span.tool { (Shown(&d.name)) } " on " span.server { (Shown(&d.server)) } }
            dl.facts {
                dt { "First seen" } dd { (ago(now.saturating_sub(d.first_seen_ms))) }
                dt { "Digest" } dd { code { (d.digest) } }
                dt { "Approved now" } dd {
                    @if d.approved_digest.is_empty() { "nothing (a new name)" } @else { code { (d.approved_digest) } }
                }
                dt { "Listed now" } dd { @if d.current { "yes" } @else { "no (the upstream lists another definition)" } }
                dt { "Id" } dd { code { (d.id) } }
            }
            table.diff aria-label={ "Approved and pending definition of " (plain(&d.name)) } {
                thead { tr { th { "Approved" } th { "Pending" } } }
                tbody {
                    @for row in &rows {
                        tr class=[row.changed.then_some("changed")] {
                            td class=[row.left.filter(|_| row.changed).map(|_| "removed")] {
                                @if let Some(l) = row.left { pre { (Shown(l)) } }
                            }
                            td class=[row.right.filter(|_| row.changed).map(|_| "added")] {
                                @if let Some(l) = row.right { pre { (Shown(l)) } }
                            }
                        }
                    }
                }
            }
            @if d.definition.is_empty() {
                p.alert { "The definition is not kept: " (Shown(&d.reason)) }
            }
            form.resolve method="post" action={ "/console/tools/" (d.id) } {
                input type="hidden" name="csrf" value=(csrf);
                label for=(reason_id) { "Reason" }
                input id=(reason_id) name="reason" maxlength="1024" placeholder="kept in the audit trail";
                button.approve type="submit" name="decision" value="approve" { "Approve" }
                button.deny type="submit" name="decision" value="reject" { "Reject" }
            }
        }
    }
}
