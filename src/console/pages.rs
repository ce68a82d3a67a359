//! The console's HTML. Every value that came from outside (operators, agents, upstreams,
//! the policy file) goes through [`esc`]; nothing else builds markup from data.

use std::fmt::Write as _;

use axum::response::Html;
use tollgate_decision::DecisionRecord;
use tollgate_limiter::{Approval, ApprovalStatus, StoreError};

use super::{Console, ExplainQuery, Session};

/// Text as HTML text or attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Bidirectional-text controls (and invisible marks) could make text read
            // differently from its value: shown as visible, marked code points.
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
    out
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

/// `HH:MM:SS` (UTC) of a time in ms since the epoch.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A full page: header with navigation and the operator's sign-out form, then `body`.
fn layout(title: &str, session: Option<(&Session, &str)>, current: &str, body: &str) -> Html<String> {
    let mut nav = String::new();
    if let Some((session, csrf)) = session {
        let link = |href: &str, label: &str| {
            let here = if href == current { " aria-current=\"page\"" } else { "" };
            format!("<a href=\"{href}\"{here}>{label}</a>")
        };
        let _ = write!(
            nav,
            "<nav aria-label=\"Console\">{}{}{}</nav>\
             <form class=\"signout\" method=\"post\" action=\"/console/logout\">\
             <span class=\"who\">Signed in as <strong>{}</strong></span>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" class=\"quiet\">Sign out</button></form>",
            link("/console", "Approvals &amp; decisions"),
            link("/console/counters", "Counters"),
            link("/console/policy", "Policy"),
            esc(&session.o),
            esc(csrf),
        );
    }
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Tollgate</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head>\
         <body><header class=\"top\"><span class=\"brand\">Tollgate</span>{nav}</header>\
         <main id=\"main\">{body}</main></body></html>",
        esc(title)
    ))
}

pub fn login(error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"alert\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    layout(
        "Sign in",
        None,
        "",
        &format!(
            "<section class=\"signin\"><h1>Sign in</h1>{error}\
             <form method=\"post\" action=\"/console/login\">\
             <label for=\"key\">Operator key</label>\
             <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
             <p class=\"hint\">A key from <code>[[operators]]</code> (<code>tollgate keygen</code> makes one). \
             Your name goes into the audit trail with every approval you resolve.</p>\
             <button type=\"submit\">Sign in</button></form></section>"
        ),
    )
}

/// The confirmation an approval needs: the call's tool, server, caller and whole arguments,
/// and one button (focused: Enter confirms). `token` binds the confirmation to this
/// record's arguments.
pub fn confirm(session: &Session, csrf: &str, approval: &Approval, reason: &str, token: &str) -> Html<String> {
    let id = esc(&approval.id);
    let caller = approval
        .subject
        .as_deref()
        .map(|sub| format!(", subject <strong class=\"subject\">{}</strong>", esc(sub)))
        .unwrap_or_default();
    let body = format!(
        "<section class=\"panel confirm\" aria-labelledby=\"confirm-title\"><h1 id=\"confirm-title\">Approve this call?</h1>\
         <p class=\"what\"><span class=\"tool\">{tool}</span> on <span class=\"server\">{server}</span> \
         <span class=\"by\">grant <strong>{grant}</strong>, agent {agent}{caller}</span></p>\
         <p class=\"hint\">The call goes through with exactly these arguments ({bytes} bytes); any other arguments \
         need their own approval.</p>\
         <pre class=\"arguments\" aria-label=\"Arguments\">{arguments}</pre>\
         <form method=\"post\" action=\"/console/approvals/{id}\" class=\"resolve\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"decision\" value=\"approve\">\
         <input type=\"hidden\" name=\"confirm\" value=\"{token}\">\
         <input type=\"hidden\" name=\"reason\" value=\"{reason}\">\
         <button type=\"submit\" class=\"approve\" autofocus>Confirm approval</button> \
         <a href=\"/console\" class=\"back\">Back to the queue</a></form></section>",
        tool = esc(&approval.tool),
        server = esc(&approval.server),
        grant = esc(&approval.grant),
        agent = esc(&approval.agent),
        bytes = approval.arguments.len(),
        arguments = pretty(&approval.arguments),
        csrf = esc(csrf),
        token = esc(token),
        reason = esc(reason),
    );
    layout("Confirm approval", Some((session, csrf)), "/console", &body)
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
    let notice = notice
        .map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", esc(n)))
        .unwrap_or_default();
    let queue = match &approvals {
        Ok(all) => approvals_fragment(all, &csrf),
        Err(e) => format!(
            "<p class=\"alert\" role=\"alert\">The approval store did not answer: {}</p>",
            esc(&e.to_string())
        ),
    };
    let mut rows = String::new();
    for record in recent.iter().rev() {
        rows.push_str(&decision_row(console, record));
    }
    let tail_note = if console.engine.tail().is_some() {
        "Every replica's decisions, newest first (the last 200; under heavy load some are skipped, the audit trail has them all)."
    } else {
        "The live tail is off on this replica."
    };
    let verdicts = ["ALLOW", "DENY", "RATE_LIMITED", "APPROVAL_REQUIRED"]
        .iter()
        .map(|v| format!("<option value=\"{v}\">{v}</option>"))
        .collect::<String>();
    let body = format!(
        "{notice}<section aria-labelledby=\"approvals-title\" class=\"panel\">\
         <h1 id=\"approvals-title\">Approvals</h1>\
         <div id=\"approvals\" data-live=\"approvals\">{queue}</div></section>\
         <section aria-labelledby=\"decisions-title\" class=\"panel\">\
         <h1 id=\"decisions-title\">Decisions <span class=\"live\" id=\"live\" aria-live=\"polite\">connecting…</span></h1>\
         <p class=\"hint\">{tail_note}</p>\
         <form id=\"filters\" class=\"filters\" role=\"search\" aria-label=\"Filter decisions\">\
         <label>Verdict <select name=\"verdict\"><option value=\"\">any</option>{verdicts}</select></label>\
         <label>Server <input name=\"server\" autocomplete=\"off\"></label>\
         <label>Tool <input name=\"tool\" autocomplete=\"off\"></label>\
         <label>Grant <input name=\"grant\" autocomplete=\"off\"></label>\
         <span class=\"count\" id=\"shown\" aria-live=\"polite\"></span></form>\
         <table class=\"decisions\"><thead><tr><th scope=\"col\">Time (UTC)</th><th scope=\"col\">Verdict</th>\
         <th scope=\"col\">Server</th><th scope=\"col\">Tool</th><th scope=\"col\">Grant</th><th scope=\"col\">Agent</th>\
         <th scope=\"col\">Rule</th><th scope=\"col\"><span class=\"sr\">Details</span></th></tr></thead>\
         <tbody id=\"decisions\">{rows}</tbody></table></section>"
    );
    layout("Approvals and decisions", Some((session, &csrf)), "/console", &body)
}

/// The approvals panel's content: pending ones with approve/deny forms, then recently
/// resolved ones.
pub fn approvals(console: &Console, session: &Session, all: &[Approval]) -> String {
    approvals_fragment(all, &console.csrf(session))
}

fn approvals_fragment(all: &[Approval], csrf: &str) -> String {
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
    let mut out = String::from("<div id=\"pending-part\">");
    if pending.is_empty() {
        out.push_str("<p class=\"empty\" id=\"pending-empty\">No call is waiting for approval.</p>");
    } else {
        let _ = write!(
            out,
            "<p class=\"count\"><strong id=\"pending-count\">{}</strong> waiting</p><ul class=\"pending\" id=\"pending\">",
            pending.len()
        );
        for a in pending {
            let id = esc(&a.id);
            // The queue shows at most a preview; the confirmation page shows them whole.
            let arguments = if a.arguments.len() > PREVIEW_BYTES {
                format!(
                    "{}<span class=\"more\">… {} bytes in all: shown whole before you confirm</span>",
                    esc(&tollgate_limiter::cut_short(&a.arguments, PREVIEW_BYTES)),
                    a.arguments.len()
                )
            } else {
                pretty(&a.arguments)
            };
            let _ = write!(
                out,
                "<li class=\"approval\" id=\"{id}\" data-id=\"{id}\">\
                 <div class=\"what\"><span class=\"tool\">{tool}</span> on <span class=\"server\">{server}</span>\
                 <span class=\"by\">grant <strong>{grant}</strong>, agent {agent}{caller}</span></div>\
                 <dl class=\"facts\"><dt>Rule</dt><dd>{rule}</dd>\
                 <dt>Asked</dt><dd><time data-since=\"{created}\">{age}</time></dd>\
                 <dt>Expires</dt><dd><time data-until=\"{expires}\">in {left}</time></dd>\
                 <dt>Id</dt><dd><code>{id}</code></dd></dl>\
                 <pre class=\"arguments\" aria-label=\"Arguments\">{arguments}</pre>\
                 <form method=\"post\" action=\"/console/approvals/{id}\" class=\"resolve\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label for=\"reason-{id}\">Reason</label>\
                 <input id=\"reason-{id}\" name=\"reason\" maxlength=\"1024\" placeholder=\"shown to the agent and in the audit trail\">\
                 <button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\">Approve</button>\
                 <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\">Deny</button></form></li>",
                tool = esc(&a.tool),
                server = esc(&a.server),
                grant = esc(&a.grant),
                agent = esc(&a.agent),
                caller = a
                    .subject
                    .as_deref()
                    .map(|sub| format!(", subject <strong class=\"subject\">{}</strong>", esc(sub)))
                    .unwrap_or_default(),
                rule = esc(&a.rule),
                created = a.created_ms,
                expires = a.expires_ms,
                age = ago(now.saturating_sub(a.created_ms)),
                left = span(a.expires_ms.saturating_sub(now)),
                csrf = esc(csrf),
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</div><div id=\"resolved-part\">");
    if !resolved.is_empty() {
        out.push_str(
            "<h2>Recently resolved</h2><table class=\"resolved\"><thead><tr><th scope=\"col\">Status</th>\
             <th scope=\"col\">Tool</th><th scope=\"col\">Grant</th><th scope=\"col\">By</th><th scope=\"col\">Reason</th>\
             <th scope=\"col\">When (UTC)</th></tr></thead><tbody>",
        );
        for a in resolved {
            let status = format!("{:?}", a.status).to_lowercase();
            let _ = write!(
                out,
                "<tr data-id=\"{}\"><td><span class=\"badge {status}\">{status}</span></td><td>{} on {}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.id),
                esc(&a.tool),
                esc(&a.server),
                esc(&a.grant),
                esc(a.resolved_by.as_deref().unwrap_or("—")),
                esc(a.reason.as_deref().filter(|r| !r.is_empty()).unwrap_or("—")),
                clock(a.resolved_ms.unwrap_or(a.expires_ms)),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</div>");
    out
}

/// Bytes of an approval's arguments the queue shows.
const PREVIEW_BYTES: usize = 2048;

/// Arguments JSON pretty-printed and escaped, its line breaks as character references (the
/// fragment travels as one SSE data line).
fn pretty(arguments: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(arguments)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| arguments.to_owned());
    esc(&text).replace('\n', "&#10;")
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

/// One decision as a table row (and its details row), with the values the filters match.
pub fn decision_row(console: &Console, r: &DecisionRecord) -> String {
    let id = esc(&r.id);
    let verdict = esc(&r.verdict);
    let mut details = String::new();
    let mut fact = |label: &str, value: &str| {
        if !value.is_empty() {
            let _ = write!(details, "<dt>{label}</dt><dd>{}</dd>", esc(value));
        }
    };
    fact("Decision", &r.id);
    fact("Method", &r.method);
    fact("Rule", &r.rule);
    fact("Reason", &r.reason);
    fact("Session", &r.session);
    fact("Arguments SHA-256", &r.arguments_sha256);
    fact("Approval", &r.approval_id);
    fact("Replica", &r.replica);
    if r.retry_after_ms > 0 {
        fact("Retry after", &format!("{} ms", r.retry_after_ms));
    }
    let limits: Vec<String> = r
        .limits
        .iter()
        .map(|l| format!("{}: {} of {} left", l.counter, l.remaining, l.max))
        .collect();
    fact("Limits", &limits.join("; "));
    if let Some(link) = console.trace_link(&r.trace_id) {
        let _ = write!(
            details,
            "<dt>Trace</dt><dd><a href=\"{}\" target=\"_blank\" rel=\"noopener noreferrer\">{}</a></dd>",
            esc(&link),
            esc(&r.trace_id)
        );
    } else if !r.trace_id.is_empty() {
        let _ = write!(details, "<dt>Trace</dt><dd><code>{}</code></dd>", esc(&r.trace_id));
    }
    format!(
        "<tr class=\"decision\" data-id=\"{id}\" data-verdict=\"{verdict}\" data-server=\"{server}\" data-tool=\"{tool}\" \
         data-grant=\"{grant}\"><td><time>{time}</time></td><td><span class=\"badge {class}\">{verdict}</span></td>\
         <td>{server}</td><td class=\"tool\">{tool}</td><td>{grant}</td><td>{agent}</td><td class=\"rule\">{rule}</td>\
         <td><button type=\"button\" class=\"quiet more\" aria-expanded=\"false\" aria-controls=\"d-{id}\">Details</button></td></tr>\
         <tr class=\"detail\" id=\"d-{id}\" hidden><td colspan=\"8\"><dl class=\"facts\">{details}</dl></td></tr>",
        server = esc(&r.server),
        tool = esc(&r.tool),
        grant = esc(&r.grant),
        agent = esc(&r.agent),
        rule = esc(&r.rule),
        time = clock(r.at_ms),
        class = verdict.to_lowercase(),
    )
}

/// The question fields shared by the explain and counters forms.
fn question_fields(query: &ExplainQuery) -> String {
    let kinds = [
        ("tool", "tools/call"),
        ("resource", "resources/read"),
        ("prompt", "prompts/get"),
    ]
    .iter()
    .map(|(value, label)| {
        let selected = if query.kind == *value { " selected" } else { "" };
        format!("<option value=\"{value}\"{selected}>{label}</option>")
    })
    .collect::<String>();
    format!(
        "<label>Method <select name=\"kind\">{kinds}</select></label>\
         <label>Tool, resource URI or prompt <input name=\"name\" value=\"{name}\" required></label>\
         <label>Server <input name=\"server\" value=\"{server}\"></label>\
         <label>Grant <input name=\"grant\" value=\"{grant}\" required></label>\
         <label>Agent <input name=\"agent\" value=\"{agent}\" placeholder=\"the grant's\"></label>\
         <label class=\"wide\">Arguments (JSON object) <textarea name=\"args\" rows=\"3\">{args}</textarea></label>",
        name = esc(&query.name),
        server = esc(&query.server),
        grant = esc(&query.grant),
        agent = esc(&query.agent),
        args = esc(&query.args),
    )
}

pub fn counters(
    console: &Console,
    session: &Session,
    query: &ExplainQuery,
    answer: Option<Result<Vec<tollgate_decision::CounterUse>, String>>,
) -> Html<String> {
    let csrf = console.csrf(session);
    let result = match answer {
        None => String::new(),
        Some(Err(message)) => format!("<p class=\"alert\" role=\"alert\">{}</p>", esc(&message)),
        Some(Ok(used)) if used.is_empty() => {
            "<p class=\"notice\" role=\"status\">The rule that decides this call takes no counters.</p>".to_owned()
        }
        Some(Ok(used)) => {
            let mut rows = String::new();
            for c in &used {
                let taken = c.max.saturating_sub(c.remaining);
                let empty = if taken == 0 {
                    "now".to_owned()
                } else {
                    format!("in {}", span(c.empty_in.as_millis() as u64))
                };
                let _ = write!(
                    rows,
                    "<tr><td class=\"tool\">{counter}</td><td>{limit} ({algorithm})</td>\
                     <td><meter min=\"0\" max=\"{max}\" value=\"{taken}\" aria-label=\"{counter} use\"></meter> \
                     <span class=\"use\">{taken} of {max} used</span></td><td>{remaining}</td><td>{empty}</td>\
                     <td><code>{key}</code></td></tr>",
                    counter = esc(&c.counter),
                    limit = esc(&c.limit),
                    algorithm = esc(&c.algorithm),
                    max = c.max,
                    remaining = c.remaining,
                    key = esc(&c.key),
                );
            }
            format!(
                "<h2 id=\"counters-answer\">Counters of this call</h2><table class=\"counters\" aria-labelledby=\"counters-answer\">\
                 <thead><tr><th scope=\"col\">Counter</th><th scope=\"col\">Limit</th><th scope=\"col\">Use</th>\
                 <th scope=\"col\">Left</th><th scope=\"col\">Empty</th><th scope=\"col\">Key</th></tr></thead>\
                 <tbody>{rows}</tbody></table>"
            )
        }
    };
    let body = format!(
        "<section class=\"panel\" aria-labelledby=\"counters-title\"><h1 id=\"counters-title\">Counters</h1>\
         <p class=\"hint\">Each counter a call would take, read from the store now, without taking anything. \
         Counters are per key: name the grant (and the tool, server, arguments its limits are scoped by).</p>\
         <form method=\"get\" action=\"/console/counters\" class=\"explain-form\">{fields}\
         <button type=\"submit\">Show counters</button></form>{result}</section>",
        fields = question_fields(query),
    );
    layout("Counters", Some((session, &csrf)), "/console/counters", &body)
}

pub fn policy(
    console: &Console,
    session: &Session,
    query: &ExplainQuery,
    answer: Option<Result<Vec<String>, String>>,
) -> Html<String> {
    let csrf = console.csrf(session);
    let active = console.status.active();
    let reload = match console.status.last_error() {
        Some(error) => format!(
            "<div class=\"alert\" role=\"alert\"><strong>The last reload was rejected</strong>; the policy below \
             (generation {}) stays in force.<pre>{}</pre></div>",
            active.generation,
            esc(&error)
        ),
        None if active.last_attempt_ms > 0 => format!(
            "<p class=\"notice\">The last reload, at {} UTC, was installed.</p>",
            clock(active.last_attempt_ms)
        ),
        None => "<p class=\"hint\">Loaded at start; not reloaded since.</p>".to_owned(),
    };
    let result = match answer {
        None => String::new(),
        Some(Ok(lines)) => format!(
            "<h2 id=\"explained\">Answer</h2><pre class=\"explain\" aria-labelledby=\"explained\">{}</pre>",
            esc(&lines.join("\n"))
        ),
        Some(Err(message)) => format!("<p class=\"alert\" role=\"alert\">{}</p>", esc(&message)),
    };
    let body = format!(
        "<section class=\"panel\" aria-labelledby=\"explain-title\"><h1 id=\"explain-title\">Explain a call</h1>\
         <p class=\"hint\">Which rule decides a call and what it would take, from the policy in force: the same answer \
         as <code>tollgate policy explain</code>.</p>\
         <form method=\"get\" action=\"/console/policy\" class=\"explain-form\">{fields}\
         <button type=\"submit\">Explain</button></form>{result}</section>\
         <section class=\"panel\" aria-labelledby=\"policy-title\"><h1 id=\"policy-title\">Policy in force</h1>\
         <dl class=\"facts\"><dt>File</dt><dd><code>{path}</code></dd><dt>Generation</dt><dd id=\"generation\">{generation}</dd>\
         <dt>Installed</dt><dd>{installed} UTC</dd><dt>Digest</dt><dd><code>{digest:016x}</code></dd></dl>{reload}\
         <pre class=\"source\" aria-label=\"Policy source\">{source}</pre></section>",
        fields = question_fields(query),
        path = esc(&active.path),
        generation = active.generation,
        installed = clock(active.installed_ms),
        digest = console.engine.policy().digest(),
        source = esc(&active.source),
    );
    layout("Policy", Some((session, &csrf)), "/console/policy", &body)
}
