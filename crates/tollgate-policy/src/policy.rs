//! The compiled policy and its evaluation: which rule decides a call, and which counters
//! the call must take a hit on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical::{Canonical, canonical};
use crate::document::{Action, Algorithm, ApprovalBind, OnStoreError, Scope, ScopeDim, Window};
use crate::glob::Glob;

/// A compiled, validated policy. Cheap to share behind an `Arc`; evaluation does no I/O.
#[derive(Debug)]
pub struct Policy {
    pub(crate) default: Arc<Rule>,
    /// Top-level rules per [`Kind`]: `tools`, `resources`, `prompts`.
    pub(crate) sets: [RuleSet; 3],
    pub(crate) servers: HashMap<String, Rules>,
    pub(crate) grants: HashMap<String, Rules>,
    pub(crate) classes: [Option<Arc<Rule>>; 3],
    /// Per [`Kind`]: whether any part of the policy has a section for it. Tools always
    /// are; resource reads and prompt gets are decided only once the policy names them.
    pub(crate) covers: [bool; 3],
    /// The first 64 bits of the SHA-256 of the policy's source text: equal on every replica
    /// that loaded the same file, different after any edit.
    pub(crate) digest: u64,
    /// Counters whose hits a store may take and then give back within the same decision
    /// (see [`Policy::may_be_given_back`]).
    pub(crate) given_back: std::collections::HashSet<String>,
    /// When some rules say `"mode": "shadow"`: the same policy with those rules in force (the
    /// candidate a decision is also evaluated against). This policy, the one enforced, leaves
    /// them out.
    pub(crate) shadow_rules: Option<Arc<Policy>>,
    /// Each counter's window and algorithm (every rule that names a counter counts it the
    /// same way).
    pub(crate) counter_shapes: HashMap<String, (Duration, Algorithm)>,
}

/// What a decision is about: the MCP method that reaches data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `tools/call`, decided by `tools` rules (and classes) by tool name.
    Tool = 0,
    /// `resources/read`, decided by `resources` rules by URI.
    Resource = 1,
    /// `prompts/get`, decided by `prompts` rules by prompt name.
    Prompt = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Tool, Kind::Resource, Kind::Prompt];

    /// The policy section that holds its rules.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Tool => "tools",
            Kind::Resource => "resources",
            Kind::Prompt => "prompts",
        }
    }

    /// What the subject is called in text for people: "tool", "resource", "prompt".
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Resource => "resource",
            Kind::Prompt => "prompt",
        }
    }
}

/// One rule of the policy, as compiled.
#[derive(Debug)]
pub struct Rule {
    /// Where the rule sits in the policy, e.g. `tools["k8s_rollout_pause"]` or `default`.
    pub label: String,
    pub action: Action,
    /// Text for the agent when the rule refuses a call.
    pub reason: Option<String>,
    pub limits: Vec<Limit>,
    pub on_store_error: OnStoreError,
    /// How a `require_approval` rule waits for its approval.
    pub approval: ApprovalPolicy,
    /// The rule says `"action"` (a rule without one allows).
    pub action_stated: bool,
    /// The rule says `"limits"` (if only `[]`) or `"rate_limit"`.
    pub limits_stated: bool,
    /// The JSON Schema the call's arguments must satisfy, compiled.
    pub arguments: Option<ArgumentSchema>,
    /// `"mode": "shadow"`: present only in the policy's [`Policy::with_shadow_rules`]; its
    /// verdict is recorded, never enforced.
    pub shadow: bool,
}

/// A `require_approval` rule's `approval` settings, as compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// How long an approval stays pending before it expires.
    pub timeout: Duration,
    /// How long the edge holds the call open waiting for it; `None` in `retry` mode (the
    /// call is refused at once, naming the approval). Never longer than `timeout`.
    pub hold: Option<Duration>,
    /// Whom an approval is bound to.
    pub bind: ApprovalBind,
}

impl ApprovalPolicy {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
    /// Under the 60 s request timeout common MCP clients use.
    pub const DEFAULT_HOLD: Duration = Duration::from_secs(45);
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            timeout: Self::DEFAULT_TIMEOUT,
            hold: Some(Self::DEFAULT_HOLD),
            bind: ApprovalBind::Agent,
        }
    }
}

/// A rule's `arguments` JSON Schema, compiled once when the policy loads. References are
/// resolved only within the schema: nothing is fetched.
#[derive(Debug, Clone)]
pub struct ArgumentSchema(Arc<jsonschema::Validator>);

/// At most this many violations are reported, each at most this many characters: the
/// text goes back to the agent and into the audit trail.
const MAX_VIOLATIONS: usize = 5;
const MAX_VIOLATION_CHARS: usize = 200;

impl ArgumentSchema {
    pub(crate) fn compile(schema: &Value) -> Result<ArgumentSchema, String> {
        jsonschema::validator_for(schema)
            .map(|v| ArgumentSchema(Arc::new(v)))
            .map_err(|e| e.to_string())
    }

    /// Checks a call's arguments (`{}` when it sent none). The error names each violation's
    /// JSON pointer and constraint, e.g. `/replicas: 300 is greater than the maximum of 10`.
    pub fn check(&self, arguments: &Value) -> Result<(), String> {
        let empty = Value::Object(serde_json::Map::new());
        let arguments = if arguments.is_null() { &empty } else { arguments };
        let mut violations: Vec<String> = Vec::new();
        let mut more = 0;
        for error in self.0.iter_errors(arguments) {
            if violations.len() == MAX_VIOLATIONS {
                more += 1;
                continue;
            }
            let pointer = error.instance_path().to_string();
            let at = if pointer.is_empty() {
                "arguments"
            } else {
                pointer.as_str()
            };
            let full = error.to_string();
            let mut text: String = full.chars().take(MAX_VIOLATION_CHARS).collect();
            if text.len() < full.len() {
                text.push('…');
            }
            violations.push(format!("{at}: {text}"));
        }
        if violations.is_empty() {
            return Ok(());
        }
        if more > 0 {
            violations.push(format!("and {more} more"));
        }
        Err(violations.join("; "))
    }
}

impl Rule {
    pub(crate) fn default_rule(label: String, action: Action) -> Rule {
        Rule {
            label,
            action,
            reason: None,
            limits: Vec::new(),
            on_store_error: OnStoreError::Deny,
            approval: ApprovalPolicy::default(),
            action_stated: true,
            limits_stated: true,
            arguments: None,
            shadow: false,
        }
    }

    /// A rule is a fallback `default` rather than a rule naming tools.
    pub fn is_default(&self) -> bool {
        self.label == "default" || self.label.ends_with(".default")
    }

    /// What this rule takes away, without saying so, from `shadowed` (a rule it beats for
    /// some call): see [`Rule::allows_what_it_shadows`] and [`Rule::drops_limits_of`].
    pub fn widens(&self, shadowed: &Rule) -> Option<String> {
        self.allows_what_it_shadows(shadowed)
            .or_else(|| self.drops_limits_of(shadowed))
    }

    /// `shadowed` denies (or requires approval), and this rule allows without saying
    /// `"action"`.
    pub fn allows_what_it_shadows(&self, shadowed: &Rule) -> Option<String> {
        if self.action_stated || self.action != Action::Allow || shadowed.action == Action::Allow {
            return None;
        }
        let what = if shadowed.action == Action::Deny {
            "denies"
        } else {
            "requires approval for"
        };
        Some(format!(
            "{} {what} it, but {} has no \"action\" and so allows it",
            shadowed.label, self.label
        ))
    }

    /// `shadowed` has limits, and this rule admits calls without saying `"limits"`, so
    /// none of them apply.
    pub fn drops_limits_of(&self, shadowed: &Rule) -> Option<String> {
        if self.limits_stated
            || self.action == Action::Deny
            || shadowed.action == Action::Deny
            || shadowed.limits.is_empty()
        {
            return None;
        }
        let dropped: Vec<String> = shadowed
            .limits
            .iter()
            .map(|l| format!("{} ({})", l.counter, l.describe()))
            .collect();
        Some(format!(
            "{} has no \"limits\", so the limits of {} do not apply: {}",
            self.label,
            shadowed.label,
            dropped.join(", ")
        ))
    }
}

/// One rate limit of a rule.
#[derive(Debug, Clone)]
pub struct Limit {
    pub counter: String,
    pub window: Window,
    pub max: u64,
    pub cost: u64,
    pub scope: Scope,
    pub algorithm: Algorithm,
}

impl Limit {
    /// "10 per minute per grant"
    pub fn describe(&self) -> String {
        let per = match self.window.label.as_str() {
            "second" | "minute" | "hour" | "day" => format!("per {}", self.window.label),
            other => format!("per {other}"),
        };
        let scope = match self.scope.0.as_slice() {
            [ScopeDim::Global] => String::new(),
            dims => {
                let names: Vec<String> = dims.iter().map(ToString::to_string).collect();
                format!(" per {}", names.join(" and "))
            }
        };
        format!("{} {per}{scope}", self.max)
    }
}

/// Rules keyed by tool name or pattern.
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    pub(crate) exact: HashMap<String, Arc<Rule>>,
    /// Sorted most specific first; equally specific patterns never overlap.
    pub(crate) patterns: Vec<(Glob, Arc<Rule>)>,
}

impl RuleSet {
    /// Every rule of the set that matches `tool`, the one that decides first.
    fn find_all<'s>(&'s self, tool: &str) -> impl Iterator<Item = &'s Arc<Rule>> + use<'s> {
        let name: Vec<char> = if self.patterns.is_empty() {
            Vec::new()
        } else {
            tool.chars().collect()
        };
        self.exact.get(tool).into_iter().chain(
            self.patterns
                .iter()
                .filter(move |(g, _)| g.matches_chars(&name))
                .map(|(_, r)| r),
        )
    }

    pub(crate) fn catches_all(&self) -> bool {
        self.patterns.iter().any(|(g, _)| g.matches_everything())
    }
}

/// The rules of one server or one grant.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) default: Option<Arc<Rule>>,
    /// Per [`Kind`].
    pub(crate) sets: [RuleSet; 3],
}

/// Risk classes, by MCP tool annotations. Order is precedence: when a tool is in several
/// classes, the riskiest class's rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Destructive = 0,
    OpenWorld = 1,
    ReadOnly = 2,
}

impl Class {
    pub(crate) fn parse(name: &str) -> Option<Class> {
        match name {
            "destructive" => Some(Class::Destructive),
            "open_world" => Some(Class::OpenWorld),
            "read_only" => Some(Class::ReadOnly),
            _ => None,
        }
    }
}

/// MCP tool annotations as advertised by the upstream server; `None` means not stated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Annotations {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

impl Annotations {
    /// Whether the tool is in `class`, reading unstated hints with the MCP defaults
    /// (`readOnlyHint` false, `destructiveHint` true, `openWorldHint` true): a tool that says
    /// nothing about itself is treated as the riskiest kind.
    pub fn in_class(&self, class: Class) -> bool {
        let read_only = self.read_only.unwrap_or(false);
        match class {
            Class::ReadOnly => read_only,
            Class::Destructive => !read_only && self.destructive.unwrap_or(true),
            Class::OpenWorld => self.open_world.unwrap_or(true),
        }
    }
}

/// The facts about one `tools/call` that a policy may look at.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub server: &'a str,
    pub tool: &'a str,
    pub grant: &'a str,
    pub agent: &'a str,
    pub session: &'a str,
    /// The call's `arguments` object (`Value::Null` when there were none).
    pub arguments: &'a Value,
    pub annotations: Annotations,
}

/// One counter hit a call needs: the limit and the concrete key for this call.
#[derive(Debug, Clone)]
pub struct CounterHit<'p> {
    pub limit: &'p Limit,
    pub key: String,
}

impl CounterHit<'_> {
    /// The part of the key that decides where the counter is stored: its first scope
    /// dimension with its value (e.g. `grant=ci-bot`). Counters of one call whose scopes
    /// start with the same dimension share it, and so one Redis Cluster slot. When that
    /// value is the caller's choice (a session id, tool name or argument), the counter's
    /// name is the tag instead (`counter=<name>`): all its keys share one slot, where the
    /// store can bound how many there are.
    pub fn tag(&self) -> Cow<'_, str> {
        match self.limit.scope.0.first() {
            Some(ScopeDim::Session | ScopeDim::Tool | ScopeDim::Argument(_)) => {
                let mut tag = String::from("counter=");
                escape_into(&mut tag, &self.limit.counter);
                Cow::Owned(tag)
            }
            _ => Cow::Borrowed(self.key.split('/').nth(1).unwrap_or("global")),
        }
    }
}

impl Policy {
    /// Whether a store may take a hit on `counter` and give it back within one decision: the
    /// counter is in a rule whose limits span more than one slot group (tag), in a group
    /// taken before the rule's last (the store stops at the first group that refuses and
    /// gives back what the groups before it took). While such a hit is held, another call
    /// can be refused by it: a refusal of this counter is no proof that it stays full, so
    /// the decision service does not remember it ("full until").
    pub fn may_be_given_back(&self, counter: &str) -> bool {
        self.given_back.contains(counter)
    }

    /// Every rule of the policy.
    fn all_rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        fn set_rules(set: &RuleSet) -> impl Iterator<Item = &Arc<Rule>> {
            set.exact.values().chain(set.patterns.iter().map(|(_, r)| r))
        }
        let sets = self.sets.iter().flat_map(set_rules);
        let scoped = self
            .servers
            .values()
            .chain(self.grants.values())
            .flat_map(move |rules| rules.default.iter().chain(rules.sets.iter().flat_map(set_rules)));
        std::iter::once(&self.default)
            .chain(sets)
            .chain(scoped)
            .chain(self.classes.iter().flatten())
    }

    /// See [`Policy::may_be_given_back`]: per rule, its limits' slot groups in the order a
    /// store takes them (`tollgate_limiter::tag_order`'s ranks, by the tag's shape: the
    /// value after `=` is the same call's for every limit of the rule), and every counter
    /// not in the last group.
    pub(crate) fn counters_that_can_be_given_back(&self) -> std::collections::HashSet<String> {
        let mut out = std::collections::HashSet::new();
        for rule in self.all_rules() {
            let group = |limit: &Limit| -> (u8, String) {
                match limit.scope.0.first() {
                    Some(ScopeDim::Session | ScopeDim::Tool | ScopeDim::Argument(_)) => {
                        let mut tag = String::from("counter=");
                        escape_into(&mut tag, &limit.counter);
                        (0, tag)
                    }
                    None | Some(ScopeDim::Global) => (2, String::new()),
                    Some(ScopeDim::Grant) => (1, "grant=".into()),
                    Some(ScopeDim::Agent) => (1, "agent=".into()),
                    Some(ScopeDim::Server) => (1, "server=".into()),
                }
            };
            let Some(last) = rule.limits.iter().map(group).max() else {
                continue;
            };
            for limit in &rule.limits {
                if group(limit) != last {
                    out.insert(limit.counter.clone());
                }
            }
        }
        out
    }

    /// The rule that decides calls of `tool` on `server` by `grant`:
    /// grant > server > top-level tool > class > default (grant's, server's, then top-level).
    pub fn rule_for(&self, server: &str, tool: &str, grant: &str, annotations: Annotations) -> &Arc<Rule> {
        self.rule_for_subject(Kind::Tool, server, tool, grant, annotations)
    }

    /// Identifies the policy's text (see [`Policy::digest`]'s field): edges key what they
    /// cache about a policy's answers by it.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// How the policy counts `counter` (its window and algorithm), when a rule names it.
    pub fn counter_shape(&self, counter: &str) -> Option<(Duration, Algorithm)> {
        self.counter_shapes.get(counter).copied()
    }

    /// The policy with its `"mode": "shadow"` rules in force, when it has any.
    pub fn with_shadow_rules(&self) -> Option<&Arc<Policy>> {
        self.shadow_rules.as_ref()
    }

    /// Whether the policy decides subjects of `kind`: always for tools; for resources and
    /// prompts once any part of it has a `resources` or `prompts` section (if only `{}`).
    pub fn covers(&self, kind: Kind) -> bool {
        self.covers[kind as usize]
    }

    /// The rule that decides `name` (a tool name, resource URI or prompt name) of `kind`:
    /// grant > server > top level > class (tools only) > default.
    pub fn rule_for_subject(
        &self,
        kind: Kind,
        server: &str,
        name: &str,
        grant: &str,
        annotations: Annotations,
    ) -> &Arc<Rule> {
        self.candidates(kind, server, name, grant, annotations)
            .next()
            .unwrap_or(&self.default)
    }

    /// Every rule that matches the call, in precedence order: the first decides it, the
    /// others are shadowed by it (`policy explain` shows them, with what each would have
    /// applied).
    pub fn matching_rules(&self, server: &str, tool: &str, grant: &str, annotations: Annotations) -> Vec<&Arc<Rule>> {
        self.matching_rules_for_subject(Kind::Tool, server, tool, grant, annotations)
    }

    /// [`Policy::matching_rules`] for a subject of any kind.
    pub fn matching_rules_for_subject(
        &self,
        kind: Kind,
        server: &str,
        name: &str,
        grant: &str,
        annotations: Annotations,
    ) -> Vec<&Arc<Rule>> {
        self.candidates(kind, server, name, grant, annotations).collect()
    }

    /// The rules that match, lazily, in precedence order (the top-level default last): the
    /// first one decides. Later maps are not searched until the earlier ones are exhausted.
    fn candidates<'p, 'n>(
        &'p self,
        kind: Kind,
        server: &str,
        name: &'n str,
        grant: &str,
        annotations: Annotations,
    ) -> impl Iterator<Item = &'p Arc<Rule>> + use<'p, 'n> {
        let k = kind as usize;
        let grant_rules = self.grants.get(grant);
        let server_rules = self.servers.get(server);
        let classes = [Class::Destructive, Class::OpenWorld, Class::ReadOnly]
            .into_iter()
            .filter(move |c| kind == Kind::Tool && annotations.in_class(*c))
            .filter_map(move |c| self.classes[c as usize].as_ref());
        grant_rules
            .into_iter()
            .flat_map(move |r| r.sets[k].find_all(name))
            .chain(server_rules.into_iter().flat_map(move |r| r.sets[k].find_all(name)))
            .chain(std::iter::once(&self.sets[k]).flat_map(move |set| set.find_all(name)))
            .chain(classes)
            .chain(grant_rules.and_then(|r| r.default.as_ref()))
            .chain(server_rules.and_then(|r| r.default.as_ref()))
            .chain(std::iter::once(&self.default))
    }

    /// Whether a caller could ever be allowed to call the tool: hidden from `tools/list`
    /// when the rule that decides it denies.
    pub fn is_visible(&self, server: &str, tool: &str, grant: &str, annotations: Annotations) -> bool {
        self.is_visible_subject(Kind::Tool, server, tool, grant, annotations)
    }

    /// [`Policy::is_visible`] for a subject of any kind; everything is visible of a kind the
    /// policy does not cover.
    pub fn is_visible_subject(
        &self,
        kind: Kind,
        server: &str,
        name: &str,
        grant: &str,
        annotations: Annotations,
    ) -> bool {
        !self.covers(kind) || self.rule_for_subject(kind, server, name, grant, annotations).action != Action::Deny
    }

    /// The counter hits a call must take under `rule`, with their keys.
    ///
    /// A key is the counter name followed by one `/dim=value` part per scope dimension.
    /// Values are percent-encoded outside `[A-Za-z0-9_.-]`, so no grant name, session id or
    /// argument value can forge another key's structure. Argument values are canonical
    /// (see `canonical.rs`: numbers by value, strings in NFC, numeric strings as numbers);
    /// strings are keyed as text, other values as canonical JSON behind a `#`; a missing
    /// argument is `!`.
    /// A value longer than 64 bytes is keyed by `~` and 128 bits of its SHA-256 instead, so
    /// a key stays short however large the caller makes the value.
    pub fn counter_hits<'p>(&'p self, rule: &'p Rule, call: &Call<'_>) -> Vec<CounterHit<'p>> {
        rule.limits
            .iter()
            .map(|limit| {
                let mut key = limit.counter.clone();
                for dim in &limit.scope.0 {
                    key.push('/');
                    match dim {
                        ScopeDim::Global => key.push_str("global"),
                        ScopeDim::Grant => push_part(&mut key, "grant", call.grant),
                        ScopeDim::Agent => push_part(&mut key, "agent", call.agent),
                        ScopeDim::Session => push_part(&mut key, "session", call.session),
                        ScopeDim::Server => push_part(&mut key, "server", call.server),
                        ScopeDim::Tool => push_part(&mut key, "tool", call.tool),
                        ScopeDim::Argument(name) => {
                            key.push_str("arg.");
                            escape_into(&mut key, name);
                            key.push('=');
                            match call.arguments.get(name).map(canonical) {
                                None => key.push('!'),
                                Some(Canonical::Text(s)) => value_into(&mut key, &s),
                                Some(Canonical::Json(json)) => {
                                    key.push('#');
                                    value_into(&mut key, &json);
                                }
                            }
                        }
                    }
                }
                CounterHit { limit, key }
            })
            .collect()
    }
}

fn push_part(key: &mut String, dim: &str, value: &str) {
    key.push_str(dim);
    key.push('=');
    value_into(key, value);
}

/// Values longer than this are keyed by their digest.
const MAX_KEY_VALUE_BYTES: usize = 64;

/// A scope value as part of a key: escaped, or `~` and a digest when long (`~` is always
/// escaped in short values, so the two cannot collide).
fn value_into(out: &mut String, value: &str) {
    if value.len() <= MAX_KEY_VALUE_BYTES {
        escape_into(out, value);
        return;
    }
    let digest = Sha256::digest(value.as_bytes());
    out.push('~');
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
}

fn escape_into(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}
