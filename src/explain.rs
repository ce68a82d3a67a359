//! `tollgate policy explain` and the console's explain form: which rule decides a call, and
//! what it would take, as lines of text (both show exactly these lines).

use std::time::Duration;

use serde_json::Value;
use tollgate_policy::{Action, Annotations, Call, Kind, Policy};

/// The `--args` text as a call's arguments: a JSON object, or none.
pub fn arguments(kind: Kind, args: Option<&str>) -> Result<Value, String> {
    let arguments: Value = match args.map(str::trim).filter(|a| !a.is_empty()) {
        Some(text) => serde_json::from_str(text).map_err(|e| format!("--args must be a JSON object: {e}"))?,
        None => Value::Null,
    };
    if !(arguments.is_object() || arguments.is_null()) {
        return Err("--args must be a JSON object".into());
    }
    if kind == Kind::Resource && !arguments.is_null() {
        return Err("a resources/read has no arguments: leave out --args".into());
    }
    Ok(arguments)
}

/// How `policy` decides a call of `kind` to `tool` on `server` by `grant` (and `agent`,
/// default the grant) with `arguments`.
pub fn explain(
    policy: &Policy,
    server: &str,
    (kind, tool): (Kind, &str),
    grant: &str,
    agent: &str,
    arguments: &Value,
) -> Vec<String> {
    let mut out = Vec::new();

    let annotations = Annotations::default();
    if !policy.covers(kind) {
        out.push(format!("rule:   none: the policy has no `{}` section", kind.section()));
        out.push(format!(
            "action: allow: every {} passes unchecked (and is still audited) until the policy has a `{}` \
             section, if only `{{}}`",
            tollgate_api_method(kind),
            kind.section()
        ));
        // Its `"mode": "shadow"` rules give the candidate such a section: there, every one is
        // decided, by those rules or the defaults.
        if let Some(candidate) = policy.with_shadow_rules()
            && candidate.covers(kind)
        {
            let shadow = candidate.rule_for_subject(kind, server, tool, grant, annotations);
            out.push(format!(
                "shadow: the `{}` rules with \"mode\": \"shadow\" give the candidate a `{}` section, so there every {} \
                 is decided; this one by {}: {} (recorded beside the verdict above, never enforced)",
                kind.section(),
                kind.section(),
                tollgate_api_method(kind),
                shadow.label,
                shadow.action
            ));
        }
        return out;
    }
    let rule = policy.rule_for_subject(kind, server, tool, grant, annotations);
    let agent = if agent.is_empty() { grant } else { agent };
    let call = Call {
        server,
        tool,
        grant,
        agent,
        session: "",
        arguments,
        annotations,
    };
    out.push(format!("rule:   {}", rule.label));
    out.push(format!("action: {}", rule.action));
    if let Some(reason) = &rule.reason {
        out.push(format!("reason: {reason}"));
    }
    let mut refused = rule.action == Action::Deny;
    if let Some(schema) = rule.arguments.as_ref().filter(|_| !refused) {
        match schema.check(arguments) {
            Ok(()) => out.push("arguments: satisfy the rule's schema".to_owned()),
            Err(violations) => {
                out.push(format!("arguments: rejected, so the call is denied: {violations}"));
                refused = true;
            }
        }
    }
    if rule.action == Action::RequireApproval && !refused {
        let approval = rule.approval;
        let wait = match approval.hold {
            Some(hold) => format!("held open up to {} waiting for it", seconds(hold)),
            None => "answered at once, naming the approval (mode retry)".to_owned(),
        };
        out.push(format!(
            "approval: required: the call is forwarded only once an operator approves it; {wait}; \
             the approval expires after {}",
            seconds(approval.timeout)
        ));
    }
    if rule.action != Action::Deny && !refused {
        let hits = policy.counter_hits(rule, &call);
        if hits.is_empty() {
            out.push("limits: none: every call is admitted".to_owned());
        }
        for hit in hits {
            out.push(format!(
                "limit:  {} = {} ({}, cost {}), key {}",
                hit.limit.counter,
                hit.limit.describe(),
                hit.limit.algorithm,
                hit.limit.cost,
                hit.key
            ));
        }
    }
    let matching = policy.matching_rules_for_subject(kind, server, tool, grant, annotations);
    if matching.len() > 1 {
        out.push("shadowed (these rules match the call too, and lose to the rule above):".to_owned());
        for shadowed in &matching[1..] {
            let limits: Vec<String> = shadowed
                .limits
                .iter()
                .map(|l| format!("{} = {}", l.counter, l.describe()))
                .collect();
            let limits = if limits.is_empty() || shadowed.action == Action::Deny {
                String::new()
            } else {
                format!(", limits {}", limits.join("; "))
            };
            out.push(format!("  {}: {}{limits}", shadowed.label, shadowed.action));
            // A tool rule beating a default is how a policy allows tools: nothing to note.
            if let Some(widened) = rule.widens(shadowed).filter(|_| !shadowed.is_default()) {
                out.push(format!("    not applied: {widened}"));
            }
        }
    }
    // A rule with "mode": "shadow" that would decide the call: recorded, never enforced.
    if let Some(candidate) = policy.with_shadow_rules() {
        let shadow = candidate.rule_for_subject(kind, server, tool, grant, annotations);
        if shadow.shadow {
            out.push(format!(
                "shadow: {} (\"mode\": \"shadow\") would decide this call: {}; its verdict is recorded beside \
                 the one above (tollgate.shadow.verdict), never enforced",
                shadow.label, shadow.action
            ));
        }
    }
    if kind == Kind::Tool {
        out.push(
            "(tool annotations are unknown here, so class rules see the MCP defaults: destructive, open world)"
                .to_owned(),
        );
    }
    out
}

fn tollgate_api_method(kind: Kind) -> &'static str {
    match kind {
        Kind::Tool => "tools/call",
        Kind::Resource => "resources/read",
        Kind::Prompt => "prompts/get",
    }
}

/// A duration as policies write it: `45s`, `5m`, `1.5s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}
