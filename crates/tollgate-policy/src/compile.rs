//! Turns a parsed [`PolicyDocument`] into a [`Policy`], checking what no single value can
//! check alone: ambiguous patterns, counters shared with different windows, limits that can
//! never admit, and rules that can never match (warnings).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::document::{
    Action, Algorithm, LimitSpec, PolicyDocument, RuleSpec, Scope, ScopeDim, ScopeSpec, UniqueMap, Window,
};
use crate::error::{Diagnostic, PolicyError};
use crate::glob::Glob;
use crate::policy::{Class, Limit, Policy, Rule, RuleSet, Rules};
use crate::source::{Format, Source};

/// Approval requests expire after this long unless the rule says otherwise.
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// A compiled policy plus the warnings found while compiling it.
#[derive(Debug)]
pub struct Compiled {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and compiles policy text. `name` is used in diagnostics (usually the file path);
/// its extension picks the format (`.json`, `.yaml`/`.yml`, `.toml`; JSON otherwise).
pub fn compile_str(name: &str, text: &str) -> Result<Compiled, PolicyError> {
    compile_with_format(name, text, Format::from_path(name))
}

pub fn compile_with_format(name: &str, text: &str, format: Format) -> Result<Compiled, PolicyError> {
    let source = Source { name, text, format };
    let document = source.parse()?;
    Compiler {
        source: &source,
        errors: Vec::new(),
        warnings: Vec::new(),
        counters: HashMap::new(),
    }
    .compile(document)
}

struct CounterUse {
    window: Duration,
    algorithm: Algorithm,
    first: String,
}

struct Compiler<'s, 'a> {
    source: &'s Source<'a>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    counters: HashMap<String, CounterUse>,
}

impl Compiler<'_, '_> {
    fn error(&mut self, path: &[&str], message: String) {
        let location = self.source.locate(path);
        self.errors.push(Diagnostic { location, message });
    }

    fn warn(&mut self, path: &[&str], message: String) {
        let location = self.source.locate(path);
        self.warnings.push(Diagnostic { location, message });
    }

    fn compile(mut self, doc: PolicyDocument) -> Result<Compiled, PolicyError> {
        let default_action = doc.default.unwrap_or(Action::Deny);
        let default = Arc::new(Rule::default_rule("default".into(), default_action));
        let tools = self.rule_set(&["tools"], "tools", &doc.tools);
        if tools.catches_all() {
            if doc.default.is_some() {
                self.warn(
                    &["default"],
                    "`default` never applies: the pattern \"*\" in `tools` matches every tool".into(),
                );
            }
            if !doc.classes.0.is_empty() {
                self.warn(&["classes"], "class rules never apply: the pattern \"*\" in `tools` matches every tool, and tool rules beat class rules".into());
            }
        }

        let mut servers = HashMap::new();
        for (name, spec) in &doc.servers.0 {
            servers.insert(
                name.clone(),
                self.scoped(&["servers", name], &format!("servers[\"{name}\"]"), spec),
            );
        }
        let mut grants = HashMap::new();
        for (name, spec) in &doc.grants.0 {
            grants.insert(
                name.clone(),
                self.scoped(&["grants", name], &format!("grants[\"{name}\"]"), spec),
            );
        }

        let mut classes: [Option<Arc<Rule>>; 3] = Default::default();
        for (name, spec) in &doc.classes.0 {
            let Some(class) = Class::parse(name) else {
                self.error(
                    &["classes", name],
                    format!("unknown class \"{name}\": expected destructive, open_world or read_only"),
                );
                continue;
            };
            let label = format!("classes[\"{name}\"]");
            classes[class as usize] = Some(self.rule(&["classes", name], label, spec));
        }

        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| (d.location.line, d.location.column));
            return Err(PolicyError { errors: self.errors });
        }
        Ok(Compiled {
            policy: Policy {
                default,
                tools,
                servers,
                grants,
                classes,
            },
            warnings: self.warnings,
        })
    }

    fn scoped(&mut self, path: &[&str], label: &str, spec: &ScopeSpec) -> Rules {
        let mut tools_path = path.to_vec();
        tools_path.push("tools");
        let tools = self.rule_set(&tools_path, &format!("{label}.tools"), &spec.tools);
        if spec.default.is_some() && tools.catches_all() {
            let mut p = path.to_vec();
            p.push("default");
            self.warn(
                &p,
                format!("`{label}.default` never applies: the pattern \"*\" in its `tools` matches every tool"),
            );
        }
        Rules {
            default: spec
                .default
                .map(|a| Arc::new(Rule::default_rule(format!("{label}.default"), a))),
            tools,
        }
    }

    fn rule_set(&mut self, path: &[&str], label: &str, specs: &UniqueMap<RuleSpec>) -> RuleSet {
        let mut set = RuleSet::default();
        for (key, spec) in &specs.0 {
            let mut p = path.to_vec();
            p.push(key);
            if key.is_empty() {
                self.error(&p, "empty tool name".into());
                continue;
            }
            let rule = self.rule(&p, format!("{label}[\"{key}\"]"), spec);
            if Glob::is_pattern(key) {
                set.patterns.push((Glob::new(key), rule));
            } else {
                set.exact.insert(key.clone(), rule);
            }
        }
        set.patterns.sort_by(|a, b| {
            b.0.specificity()
                .cmp(&a.0.specificity())
                .then_with(|| a.0.as_str().cmp(b.0.as_str()))
        });
        for (i, (a, _)) in set.patterns.iter().enumerate() {
            for (b, _) in set.patterns[i + 1..]
                .iter()
                .take_while(|(b, _)| b.specificity() == a.specificity())
            {
                if let Some(witness) = a.overlap(b) {
                    let mut p = path.to_vec();
                    p.push(b.as_str());
                    let message = format!(
                        "patterns \"{a}\" and \"{b}\" in {label} are equally specific and both match \"{witness}\": \
                         name that tool exactly or make one pattern more specific"
                    );
                    self.error(&p, message);
                }
            }
        }
        set
    }

    fn rule(&mut self, path: &[&str], label: String, spec: &RuleSpec) -> Arc<Rule> {
        let action = spec.action.unwrap_or(Action::Allow);
        if action == Action::Deny && !spec.limits.is_empty() {
            self.warn(path, format!("{label}: limits of a deny rule are never checked"));
        }
        if action != Action::RequireApproval && spec.approval.is_some() {
            self.warn(
                path,
                format!("{label}: `approval` only applies to rules with \"action\": \"require_approval\""),
            );
        }
        let mut limits: Vec<Limit> = Vec::with_capacity(spec.limits.len());
        for (i, limit) in spec.limits.iter().enumerate() {
            let mut p = path.to_vec();
            p.push("limits");
            if let Some(compiled) = self.limit(&p, &label, i, limit) {
                if limits.iter().any(|l| l.counter == compiled.counter) {
                    self.error(
                        &p,
                        format!("{label}: counter \"{}\" appears twice in one rule", compiled.counter),
                    );
                }
                limits.push(compiled);
            }
        }
        Arc::new(Rule {
            label,
            action,
            reason: spec.reason.clone(),
            limits,
            on_store_error: spec.on_store_error.unwrap_or_default(),
            approval_timeout: spec
                .approval
                .as_ref()
                .map_or(DEFAULT_APPROVAL_TIMEOUT, |a| a.timeout.duration),
        })
    }

    fn limit(&mut self, path: &[&str], label: &str, index: usize, spec: &LimitSpec) -> Option<Limit> {
        let counter = spec.counter.as_str();
        let mut ok = true;
        let mut here = path.to_vec();
        here.push(counter);
        if counter.is_empty()
            || !counter
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            self.error(
                &here,
                format!(
                    "{label}: limit #{} has invalid counter name \"{counter}\": use letters, digits, '_', '-' and '.'",
                    index + 1
                ),
            );
            ok = false;
        }
        if spec.max == 0 {
            self.error(
                &here,
                format!(
                    "{label}: counter \"{counter}\" has max 0, which admits nothing: use \"action\": \"deny\" instead"
                ),
            );
            ok = false;
        }
        let cost = spec.cost.unwrap_or(1);
        if cost == 0 {
            self.error(
                &here,
                format!("{label}: counter \"{counter}\" has cost 0: a cost must be at least 1"),
            );
            ok = false;
        } else if spec.max > 0 && cost > spec.max {
            self.error(&here, format!("{label}: counter \"{counter}\" has cost {cost} above its max {}, so no call could ever be admitted", spec.max));
            ok = false;
        }
        let algorithm = spec.algorithm.unwrap_or_default();
        match self.counters.get(counter) {
            Some(seen) if seen.window != spec.window.duration || seen.algorithm != algorithm => {
                let message = format!(
                    "counter \"{counter}\" is used in {label} with window {} ({algorithm}) but in {} with a different \
                     window or algorithm: rules that share a counter must count the same way",
                    spec.window.label, seen.first
                );
                self.error(&here, message);
                ok = false;
            }
            Some(_) => {}
            None => {
                self.counters.insert(
                    counter.to_owned(),
                    CounterUse {
                        window: spec.window.duration,
                        algorithm,
                        first: label.to_owned(),
                    },
                );
            }
        }
        ok.then(|| Limit {
            counter: counter.to_owned(),
            window: Window {
                duration: spec.window.duration,
                label: spec.window.label.clone(),
            },
            max: spec.max,
            cost,
            scope: spec.scope.clone().unwrap_or_else(|| Scope(vec![ScopeDim::Grant])),
            algorithm,
        })
    }
}
