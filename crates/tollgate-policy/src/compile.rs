//! Turns a parsed [`PolicyDocument`] into a [`Policy`], checking what no single value can
//! check alone: ambiguous patterns, counters shared with different windows, limits that can
//! never admit, and rules that can never match (warnings).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::document::{
    Action, Algorithm, ApprovalMode, ApprovalSpec, LimitSpec, PolicyDocument, RuleMode, RuleSpec, Scope, ScopeDim,
    ScopeSpec, UniqueMap, Window,
};
use sha2::{Digest, Sha256};

use crate::error::{Diagnostic, PolicyError};
use crate::glob::Glob;
use crate::policy::{ApprovalPolicy, ArgumentSchema, Class, Kind, Limit, Policy, Rule, RuleSet, Rules};
use crate::source::{Format, Source};

/// The largest `max` of a `sliding_log` limit: the log keeps one entry per hit (a Redis
/// sorted-set member), so this bounds a counter key's memory and one script run's work.
pub const MAX_SLIDING_LOG_MAX: u64 = 100_000;

/// The largest `max` of any limit (and so its `cost`): 2^53, counted exactly in Lua.
pub const MAX_COUNT: u64 = 1 << 53;

/// A compiled policy plus the warnings found while compiling it.
#[derive(Debug)]
pub struct Compiled {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
    /// The text it was compiled from (the operators' console shows the policy in force).
    pub source: String,
}

/// Parses and compiles policy text. `name` is used in diagnostics (usually the file path);
/// its extension picks the format (`.json`, `.yaml`/`.yml`, `.toml`; JSON otherwise).
pub fn compile_str(name: &str, text: &str) -> Result<Compiled, PolicyError> {
    compile_with_format(name, text, Format::from_path(name))
}

pub fn compile_with_format(name: &str, text: &str, format: Format) -> Result<Compiled, PolicyError> {
    let source = Source { name, text, format };
    let compiler = |with_shadow_rules: bool| Compiler {
        source: &source,
        errors: Vec::new(),
        warnings: Vec::new(),
        counters: HashMap::new(),
        entries: Vec::new(),
        covers: [true, false, false],
        with_shadow_rules,
    };
    let document = source.parse()?;
    let has_shadow_rules = document.has_shadow_rules();
    // Every rule is compiled (and checked) once with the shadow-mode rules in force; the
    // policy enforced is the same document without them.
    let mut compiled = compiler(true).compile(document)?;
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    compiled.policy.digest = u64::from_be_bytes(first);
    if has_shadow_rules {
        let mut enforced = compiler(false).compile(source.parse()?)?;
        enforced.policy.digest = compiled.policy.digest;
        // The candidate's digest differs from the enforced policy's: edges cache answers by
        // digest, and the two answer differently.
        compiled.policy.digest = !compiled.policy.digest;
        enforced.policy.shadow_rules = Some(Arc::new(compiled.policy));
        enforced.warnings = compiled.warnings;
        compiled = enforced;
    }
    compiled.source = text.to_owned();
    Ok(compiled)
}

struct CounterUse {
    window: Duration,
    algorithm: Algorithm,
    first: String,
}

/// Which rule map a tool rule sits in; precedence is grant > server > top level.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Grant,
    Server,
    Top,
}

/// A compiled tool (resource, prompt) rule and where it sits, for the shadowing analysis.
struct Entry {
    path: Vec<String>,
    kind: Kind,
    level: Level,
    glob: Glob,
    exact: bool,
    rule: Arc<Rule>,
}

impl Entry {
    /// Whether this entry beats `other` (of the same map) for a tool both match: an exact
    /// name beats a pattern, a pattern with more literal characters beats one with fewer.
    fn more_specific_than(&self, other: &Entry) -> bool {
        match (self.exact, other.exact) {
            (true, false) => true,
            (false, false) => self.glob.specificity() > other.glob.specificity(),
            _ => false,
        }
    }
}

struct Compiler<'s, 'a> {
    source: &'s Source<'a>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    counters: HashMap<String, CounterUse>,
    entries: Vec<Entry>,
    /// Per [`Kind`]: whether the policy has a section for it anywhere.
    covers: [bool; 3],
    /// Rules with `"mode": "shadow"` are compiled in (for the candidate), or left out (for
    /// the policy enforced).
    with_shadow_rules: bool,
}

/// A scope's (or the top level's) rule maps, per [`Kind`].
fn sections<'d>(
    tools: &'d UniqueMap<RuleSpec>,
    resources: &'d Option<UniqueMap<RuleSpec>>,
    prompts: &'d Option<UniqueMap<RuleSpec>>,
) -> [Option<&'d UniqueMap<RuleSpec>>; 3] {
    [Some(tools), resources.as_ref(), prompts.as_ref()]
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
        for kind in [Kind::Resource, Kind::Prompt] {
            let k = kind as usize;
            // A section covers its kind (if only `{}`), unless every rule in it is a
            // shadow-mode rule left out of the policy enforced: the section is not there for it.
            let with_shadow_rules = self.with_shadow_rules;
            let counts = move |section: Option<&UniqueMap<RuleSpec>>| {
                section.is_some_and(|rules| {
                    with_shadow_rules
                        || rules.0.is_empty()
                        || rules.0.values().any(|r| r.mode != Some(RuleMode::Shadow))
                })
            };
            let scoped = |s: &ScopeSpec| counts(sections(&s.tools, &s.resources, &s.prompts)[k]);
            self.covers[k] = counts(sections(&doc.tools, &doc.resources, &doc.prompts)[k])
                || doc.servers.0.values().any(scoped)
                || doc.grants.0.values().any(scoped);
        }
        let sets = self.rule_sets(&[], "", sections(&doc.tools, &doc.resources, &doc.prompts), Level::Top);
        let tools = &sets[Kind::Tool as usize];
        if tools.catches_all() {
            if doc.default.is_some() && !self.covers[Kind::Resource as usize] && !self.covers[Kind::Prompt as usize] {
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
                self.scoped(&["servers", name], &format!("servers[\"{name}\"]"), spec, Level::Server),
            );
        }
        let mut grants = HashMap::new();
        for (name, spec) in &doc.grants.0 {
            grants.insert(
                name.clone(),
                self.scoped(&["grants", name], &format!("grants[\"{name}\"]"), spec, Level::Grant),
            );
        }

        let mut classes: [Option<Arc<Rule>>; 3] = Default::default();
        for (name, spec) in &doc.classes.0 {
            if spec.mode == Some(RuleMode::Shadow) && !self.with_shadow_rules {
                continue;
            }
            let Some(class) = Class::parse(name) else {
                self.error(
                    &["classes", name],
                    format!("unknown class \"{name}\": expected destructive, open_world or read_only"),
                );
                continue;
            };
            let label = format!("classes[\"{name}\"]");
            classes[class as usize] = Some(self.rule(&["classes", name], name, label, spec, Kind::Tool));
        }

        self.shadowing(&classes, &default, &servers, &grants);

        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| (d.location.line, d.location.column));
            return Err(PolicyError { errors: self.errors });
        }
        self.warnings.sort_by_key(|d| (d.location.line, d.location.column));
        let mut policy = Policy {
            default,
            sets,
            servers,
            grants,
            classes,
            covers: self.covers,
            digest: 0,
            given_back: Default::default(),
            shadow_rules: None,
            counter_shapes: self
                .counters
                .iter()
                .map(|(name, used)| (name.clone(), (used.window, used.algorithm)))
                .collect(),
        };
        policy.given_back = policy.counters_that_can_be_given_back();
        Ok(Compiled {
            policy,
            warnings: self.warnings,
            source: String::new(),
        })
    }

    /// Warns where a more specific rule silently widens access: it beats a rule that
    /// denies (or requires approval) without saying `"action"` itself, or it beats a rule
    /// with limits without saying `"limits"` itself. Also a class rule without `"action"`
    /// that allows what a `default: deny` would have denied. Saying `"action": "allow"` or
    /// `"limits": []` states the intent and silences the warning.
    fn shadowing(
        &mut self,
        classes: &[Option<Arc<Rule>>; 3],
        default: &Rule,
        servers: &HashMap<String, Rules>,
        grants: &HashMap<String, Rules>,
    ) {
        let entries = std::mem::take(&mut self.entries);
        let mut found: Vec<(Vec<String>, String)> = Vec::new();
        for (i, winner) in entries.iter().enumerate() {
            if winner.rule.action == Action::Deny || (winner.rule.action_stated && winner.rule.limits_stated) {
                continue;
            }
            for (j, loser) in entries.iter().enumerate() {
                if winner.kind != loser.kind {
                    continue;
                }
                let same_map = winner.level == loser.level
                    && i != j
                    && winner.path[..winner.path.len() - 1] == loser.path[..loser.path.len() - 1];
                let widened = match (&winner.level, &loser.level) {
                    (Level::Grant, Level::Server | Level::Top) | (Level::Server, Level::Top) => {
                        winner.rule.widens(&loser.rule)
                    }
                    // Within one map only dropped limits count: a specific rule that allows
                    // beside a broad deny is how a policy names what it allows.
                    _ if same_map && winner.more_specific_than(loser) => winner.rule.drops_limits_of(&loser.rule),
                    _ => None,
                };
                let Some(widened) = widened else {
                    continue;
                };
                let Some(tool) = winner.glob.overlap(&loser.glob) else {
                    continue;
                };
                found.push((
                    winner.path.clone(),
                    format!("for \"{tool}\", {widened}: {}", advice(&winner.rule)),
                ));
            }
        }
        let denying_defaults: Vec<&str> = std::iter::once(default)
            .chain(
                servers
                    .values()
                    .chain(grants.values())
                    .filter_map(|r| r.default.as_deref()),
            )
            .filter(|d| d.action != Action::Allow)
            .map(|d| d.label.as_str())
            .collect();
        for (name, class) in ["destructive", "open_world", "read_only"].iter().zip(classes) {
            let Some(rule) = class else { continue };
            if rule.action_stated || denying_defaults.is_empty() {
                continue;
            }
            found.push((
                vec!["classes".to_owned(), (*name).to_owned()],
                format!(
                    "{} has no \"action\", so it allows every {} tool that no tool rule names, although {} \
                     would deny it (a class rule decides a call; it does not add limits to other rules): write \
                     \"action\": \"allow\" if that is meant",
                    rule.label,
                    name.replace('_', "-"),
                    denying_defaults.join(", ")
                ),
            ));
        }
        for (path, message) in found {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            self.warn(&path, message);
        }
        self.entries = entries;
    }

    fn scoped(&mut self, path: &[&str], label: &str, spec: &ScopeSpec, level: Level) -> Rules {
        let sets = self.rule_sets(
            path,
            label,
            sections(&spec.tools, &spec.resources, &spec.prompts),
            level,
        );
        let others_covered = self.covers[Kind::Resource as usize] || self.covers[Kind::Prompt as usize];
        if spec.default.is_some() && sets[Kind::Tool as usize].catches_all() && !others_covered {
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
            sets,
        }
    }

    /// The rule maps of one scope (`label` empty for the top level), per [`Kind`].
    fn rule_sets(
        &mut self,
        path: &[&str],
        label: &str,
        specs: [Option<&UniqueMap<RuleSpec>>; 3],
        level: Level,
    ) -> [RuleSet; 3] {
        let mut sets: [RuleSet; 3] = Default::default();
        for kind in Kind::ALL {
            let Some(specs) = specs[kind as usize] else { continue };
            let mut here = path.to_vec();
            here.push(kind.section());
            let label = if label.is_empty() {
                kind.section().to_owned()
            } else {
                format!("{label}.{}", kind.section())
            };
            sets[kind as usize] = self.rule_set(&here, &label, specs, level.clone(), kind);
        }
        sets
    }

    fn rule_set(
        &mut self,
        path: &[&str],
        label: &str,
        specs: &UniqueMap<RuleSpec>,
        level: Level,
        kind: Kind,
    ) -> RuleSet {
        let mut set = RuleSet::default();
        for (key, spec) in &specs.0 {
            if spec.mode == Some(RuleMode::Shadow) && !self.with_shadow_rules {
                continue;
            }
            let mut p = path.to_vec();
            p.push(key);
            if key.is_empty() {
                self.error(&p, format!("empty {} name", kind.noun()));
                continue;
            }
            let rule = self.rule(&p, key, format!("{label}[\"{key}\"]"), spec, kind);
            self.entries.push(Entry {
                path: p.iter().map(|s| (*s).to_owned()).collect(),
                kind,
                level: level.clone(),
                glob: Glob::new(key),
                exact: !Glob::is_pattern(key),
                rule: rule.clone(),
            });
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
                         name that {} exactly or make one pattern more specific",
                        kind.noun()
                    );
                    self.error(&p, message);
                }
            }
        }
        set
    }

    /// Compiles one rule. `key` is the tool name (resource URI, prompt name), pattern or class
    /// it sits under.
    fn rule(&mut self, path: &[&str], key: &str, label: String, spec: &RuleSpec, kind: Kind) -> Arc<Rule> {
        let action = spec.action.unwrap_or(Action::Allow);
        if kind == Kind::Resource {
            self.resource_rule_checks(path, &label, spec);
        }
        let specs = spec.limits.as_deref().unwrap_or_default();
        if action == Action::Deny && (!specs.is_empty() || spec.rate_limit.is_some()) {
            self.warn(path, format!("{label}: limits of a deny rule are never checked"));
        }
        if action != Action::RequireApproval && spec.approval.is_some() {
            self.warn(
                path,
                format!("{label}: `approval` only applies to rules with \"action\": \"require_approval\""),
            );
        }
        let mut limits: Vec<Limit> = Vec::with_capacity(specs.len());
        for (i, limit) in specs.iter().enumerate() {
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
        if let Some(shorthand) = &spec.rate_limit {
            let mut p = path.to_vec();
            p.push("rate_limit");
            let counter = match kind {
                Kind::Prompt => format!("prompt.{key}_rate"),
                _ => format!("{key}_rate"),
            };
            let as_limit = LimitSpec {
                counter,
                window: shorthand.window.clone(),
                max: shorthand.max,
                scope: Some(
                    shorthand
                        .scope
                        .clone()
                        .unwrap_or_else(|| Scope(vec![ScopeDim::Session])),
                ),
                cost: None,
                algorithm: None,
            };
            if kind == Kind::Resource {
                // Reported by resource_rule_checks.
            } else if Glob::is_pattern(key) {
                self.error(
                    &p,
                    format!(
                        "{label}: `rate_limit` names its counter after the {}, and \"{key}\" is a pattern: \
                         write the limit under `limits` with a counter name",
                        kind.noun()
                    ),
                );
            } else if let Some(compiled) = self.limit(&p, &label, limits.len(), &as_limit) {
                if limits.iter().any(|l| l.counter == compiled.counter) {
                    self.error(
                        &p,
                        format!("{label}: counter \"{}\" appears twice in one rule", compiled.counter),
                    );
                }
                limits.push(compiled);
            }
        }
        let arguments = spec.arguments.as_ref().and_then(|schema| {
            let mut p = path.to_vec();
            p.push("arguments");
            match ArgumentSchema::compile(schema) {
                Ok(compiled) => Some(compiled),
                Err(e) => {
                    self.error(&p, format!("{label}: `arguments` is not a valid JSON Schema: {e}"));
                    None
                }
            }
        });
        let approval = self.approval(path, &label, spec.approval.as_ref());
        Arc::new(Rule {
            label,
            action,
            reason: spec.reason.clone(),
            limits,
            on_store_error: spec.on_store_error.unwrap_or_default(),
            approval,
            action_stated: spec.action.is_some(),
            limits_stated: spec.limits.is_some() || spec.rate_limit.is_some(),
            arguments,
            shadow: spec.mode == Some(RuleMode::Shadow),
        })
    }

    /// A `resources/read` has no arguments: a resource rule that looks at them could never
    /// do what it says.
    fn resource_rule_checks(&mut self, path: &[&str], label: &str, spec: &RuleSpec) {
        let mut here = path.to_vec();
        if spec.arguments.is_some() {
            here.push("arguments");
            self.error(
                &here,
                format!("{label}: a resource read has no arguments, so a resource rule cannot have `arguments`"),
            );
            here.pop();
        }
        if spec.rate_limit.is_some() {
            here.push("rate_limit");
            self.error(
                &here,
                format!(
                    "{label}: `rate_limit` names its counter after the rule's key, and a URI is not a counter name: \
                     write the limit under `limits` with a counter name"
                ),
            );
            here.pop();
        }
        here.push("limits");
        for limit in spec.limits.as_deref().unwrap_or_default() {
            if let Some(dim) = limit
                .scope
                .iter()
                .flat_map(|s| &s.0)
                .find(|d| matches!(d, ScopeDim::Argument(_)))
            {
                let mut at = here.clone();
                at.push(&limit.counter);
                self.error(
                    &at,
                    format!(
                        "{label}: counter \"{}\" is scoped by \"{dim}\", but a resource read has no arguments",
                        limit.counter
                    ),
                );
            }
        }
    }

    fn approval(&mut self, path: &[&str], label: &str, spec: Option<&ApprovalSpec>) -> ApprovalPolicy {
        let Some(spec) = spec else {
            return ApprovalPolicy::default();
        };
        let mut here = path.to_vec();
        here.push("approval");
        let timeout = spec
            .timeout
            .as_ref()
            .map_or(ApprovalPolicy::DEFAULT_TIMEOUT, |w| w.duration);
        let hold = match spec.mode.unwrap_or_default() {
            ApprovalMode::Retry => {
                if spec.hold.is_some() {
                    self.warn(&here, format!("{label}: `hold` has no effect with \"mode\": \"retry\""));
                }
                None
            }
            ApprovalMode::Hold => {
                let hold = spec.hold.as_ref().map_or(ApprovalPolicy::DEFAULT_HOLD, |w| w.duration);
                if hold > timeout {
                    if spec.hold.is_some() {
                        self.warn(
                            &here,
                            format!(
                                "{label}: `hold` is longer than `timeout`; calls are held only until the approval \
                                 expires"
                            ),
                        );
                    }
                    Some(timeout)
                } else {
                    Some(hold)
                }
            }
        };
        ApprovalPolicy {
            timeout,
            hold,
            bind: spec.bind.unwrap_or_default(),
        }
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
        let largest = match algorithm {
            Algorithm::SlidingLog => MAX_SLIDING_LOG_MAX,
            Algorithm::SlidingWindow => MAX_COUNT,
        };
        if spec.max > largest {
            let hint = match algorithm {
                Algorithm::SlidingLog => {
                    ": sliding_log remembers every hit; use \"algorithm\": \"sliding_window\" for larger limits"
                }
                Algorithm::SlidingWindow => "",
            };
            self.error(
                &here,
                format!(
                    "{label}: counter \"{counter}\" has max {} above {largest}, the largest {algorithm} counts{hint}",
                    spec.max
                ),
            );
            ok = false;
        }
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

/// How to state the intent that silences a shadowing warning.
fn advice(rule: &Rule) -> &'static str {
    match (rule.action_stated, rule.limits_stated) {
        (false, false) => "say \"action\" and \"limits\" in this rule (\"limits\": [] for none) to state what it means",
        (false, true) => "write \"action\": \"allow\" if that is meant, or \"deny\"",
        _ => "list the limits this rule keeps, or write \"limits\": [] if it should have none",
    }
}
