//! The policy file as written: serde types for JSON, YAML and TOML.
//!
//! Each value type checks itself while it is deserialized (windows, scopes, actions, unique
//! keys), so the format's parser reports a bad value with the line and column it sits at.
//! Checks that relate several values happen later, in [`crate::compile`].

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// The whole policy document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Checked while parsing; nothing else to read.
    #[allow(dead_code)]
    pub version: Version,
    #[serde(default)]
    pub default: Option<Action>,
    #[serde(default)]
    pub tools: UniqueMap<RuleSpec>,
    /// Rules for `resources/read`, keyed by URI or URI pattern. `None` (as opposed to `{}`)
    /// when the document has no such section.
    #[serde(default)]
    pub resources: Option<UniqueMap<RuleSpec>>,
    /// Rules for `prompts/get`, keyed by prompt name or pattern.
    #[serde(default)]
    pub prompts: Option<UniqueMap<RuleSpec>>,
    #[serde(default)]
    pub servers: UniqueMap<ScopeSpec>,
    #[serde(default)]
    pub grants: UniqueMap<ScopeSpec>,
    #[serde(default)]
    pub classes: UniqueMap<RuleSpec>,
}

impl PolicyDocument {
    /// Whether any rule says `"mode": "shadow"`.
    pub fn has_shadow_rules(&self) -> bool {
        fn any(map: Option<&UniqueMap<RuleSpec>>) -> bool {
            map.is_some_and(|m| m.0.values().any(|r| r.mode == Some(RuleMode::Shadow)))
        }
        let scope = |tools: &UniqueMap<RuleSpec>,
                     resources: &Option<UniqueMap<RuleSpec>>,
                     prompts: &Option<UniqueMap<RuleSpec>>| {
            any(Some(tools)) || any(resources.as_ref()) || any(prompts.as_ref())
        };
        scope(&self.tools, &self.resources, &self.prompts)
            || any(Some(&self.classes))
            || self
                .servers
                .0
                .values()
                .chain(self.grants.0.values())
                .any(|s| scope(&s.tools, &s.resources, &s.prompts))
    }
}

/// Rules that apply to one upstream server or one grant.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    #[serde(default)]
    pub default: Option<Action>,
    #[serde(default)]
    pub tools: UniqueMap<RuleSpec>,
    #[serde(default)]
    pub resources: Option<UniqueMap<RuleSpec>>,
    #[serde(default)]
    pub prompts: Option<UniqueMap<RuleSpec>>,
}

/// One rule: what happens to calls of the tools it names (or reads of the resources, or
/// gets of the prompts).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub reason: Option<String>,
    /// `None` when the rule does not mention limits (as opposed to `"limits": []`): such a
    /// rule that shadows a rule with limits gets a warning.
    #[serde(default)]
    pub limits: Option<Vec<LimitSpec>>,
    #[serde(default)]
    pub on_store_error: Option<OnStoreError>,
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
    /// A JSON Schema the call's arguments must satisfy.
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
    /// The seed page's shorthand for one limit: `{"max": 10, "window": 60}`, counted per
    /// session by default in a counter named `<tool>_rate`.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// `"shadow"`: the rule is evaluated and its verdict recorded, never enforced (calls are
    /// decided as if it were not there). `"enforce"` (the default) is an ordinary rule.
    #[serde(default)]
    pub mode: Option<RuleMode>,
}

/// Whether a rule decides calls or only has its verdict recorded beside the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub max: u64,
    pub window: Window,
    #[serde(default)]
    pub scope: Option<Scope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// How long an approval may stay pending (default 5 minutes).
    #[serde(default)]
    pub timeout: Option<Window>,
    /// How long the edge holds a call open waiting for the approval (default 45 seconds).
    #[serde(default)]
    pub hold: Option<Window>,
    #[serde(default)]
    pub mode: Option<ApprovalMode>,
    /// Whom an operator's yes goes to (default `agent`).
    #[serde(default)]
    pub bind: Option<ApprovalBind>,
}

/// Whom an approval is bound to, besides the exact call (server, subject, arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalBind {
    /// The caller the operator saw: the grant, its agent, and for a JWT its issuer and
    /// subject. Another subject of the same grant asks anew.
    #[default]
    Agent,
    /// Any caller of the grant: one approval serves every subject that authenticates with it.
    Grant,
}

/// What the agent sees while an approval is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMode {
    /// The call is held open and goes through the moment an operator approves (for at
    /// most `hold`, then as `retry`).
    #[default]
    Hold,
    /// The call is refused at once, naming the approval; the same call made again once an
    /// operator approved goes through.
    Retry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub counter: String,
    pub window: Window,
    pub max: u64,
    #[serde(default)]
    pub scope: Option<Scope>,
    #[serde(default)]
    pub cost: Option<u64>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
}

/// Policy format version; only `"1"` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(v) if v == "1" => Ok(Version),
            Raw::Number(1) => Ok(Version),
            Raw::Text(v) => Err(de::Error::custom(format!(
                "unsupported policy version \"{v}\": this Tollgate understands version \"1\""
            ))),
            Raw::Number(v) => Err(de::Error::custom(format!(
                "unsupported policy version {v}: this Tollgate understands version \"1\""
            ))),
        }
    }
}

/// What a rule does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    RequireApproval,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        })
    }
}

/// What a rule does when the counter store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    #[default]
    Deny,
    Allow,
}

/// How a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Every admitted hit is remembered: exact.
    #[default]
    SlidingLog,
    /// Two fixed buckets weighted by overlap: O(1) memory, approximate.
    SlidingWindow,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
        })
    }
}

/// A window length, with the text it was written as (`"minute"`, `"30s"`, `60`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub duration: Duration,
    pub label: String,
}

/// The longest window: 366 days. Longer ones are refused, so that every conversion on the
/// way to a store (microseconds in Redis, instants in memory) stays far from overflowing.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

impl Window {
    /// A window of `duration`, refused when zero or longer than [`MAX_WINDOW`].
    fn new(duration: Duration, label: String) -> Result<Window, String> {
        if duration.is_zero() {
            return Err(format!("invalid window \"{label}\": a window must be longer than zero"));
        }
        if duration > MAX_WINDOW {
            return Err(format!(
                "invalid window \"{label}\": a window may be at most 366 days (\"366d\")"
            ));
        }
        Ok(Window { duration, label })
    }

    /// Parses `second|minute|hour|day` or a duration: a whole number followed by
    /// `ms`, `s`, `m`, `h` or `d`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let named = match text {
            "second" => Some(1),
            "minute" => Some(60),
            "hour" => Some(3600),
            "day" => Some(86_400),
            _ => None,
        };
        let duration = match named {
            Some(secs) => Duration::from_secs(secs),
            None => parse_duration(text).ok_or_else(|| {
                format!(
                    "invalid window \"{text}\": expected second, minute, hour, day or a duration \
                     such as \"500ms\", \"30s\", \"5m\", \"1h\", \"1d\""
                )
            })?,
        };
        Window::new(duration, text.to_owned())
    }
}

/// A duration as the configuration writes it: a number and one of `ms`, `s`, `m`, `h`, `d`
/// (`500ms`, `30s`, `5m`, `1h`, `7d`); `Duration::MAX` for one too long to count in
/// milliseconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return None;
    }
    // Only digits: a parse error means too many of them.
    let n: u64 = number.parse().unwrap_or(u64::MAX);
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    // Too long to count in milliseconds is too long for a window: Window::new says so.
    Some(n.checked_mul(ms).map_or(Duration::MAX, Duration::from_millis))
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d).map_err(|_: D::Error| {
            de::Error::custom("invalid window: expected a name such as \"minute\", a duration such as \"30s\", or a number of seconds")
        })? {
            Raw::Text(t) => Window::parse(&t).map_err(de::Error::custom),
            Raw::Seconds(s) => Window::new(Duration::from_secs(s), format!("{s}s")).map_err(de::Error::custom),
        }
    }
}

/// One dimension a counter is kept per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeDim {
    Grant,
    Agent,
    Session,
    Server,
    Tool,
    Global,
    /// A top-level argument of the call, e.g. `argument:namespace`.
    Argument(String),
}

impl ScopeDim {
    pub fn parse(text: &str) -> Result<ScopeDim, String> {
        Ok(match text {
            "grant" => ScopeDim::Grant,
            "agent" => ScopeDim::Agent,
            "session" => ScopeDim::Session,
            "server" => ScopeDim::Server,
            "tool" => ScopeDim::Tool,
            "global" => ScopeDim::Global,
            _ => match text.strip_prefix("argument:") {
                Some(name) if !name.is_empty() => ScopeDim::Argument(name.to_owned()),
                Some(_) => {
                    return Err("invalid scope \"argument:\": name the argument, e.g. \"argument:namespace\"".into());
                }
                None => {
                    return Err(format!(
                        "invalid scope \"{text}\": expected grant, agent, session, server, tool, \
                         global or argument:<name>"
                    ));
                }
            },
        })
    }
}

impl fmt::Display for ScopeDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeDim::Grant => f.write_str("grant"),
            ScopeDim::Agent => f.write_str("agent"),
            ScopeDim::Session => f.write_str("session"),
            ScopeDim::Server => f.write_str("server"),
            ScopeDim::Tool => f.write_str("tool"),
            ScopeDim::Global => f.write_str("global"),
            ScopeDim::Argument(name) => write!(f, "argument:{name}"),
        }
    }
}

/// The dimensions a counter is kept per: one, or a list forming a composite key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(pub Vec<ScopeDim>);

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, dim) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{dim}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let raw = Raw::deserialize(d).map_err(|_: D::Error| {
            de::Error::custom("invalid scope: expected a string such as \"grant\" or a list such as [\"grant\", \"argument:namespace\"]")
        })?;
        let texts = match raw {
            Raw::One(t) => vec![t],
            Raw::Many(ts) if ts.is_empty() => {
                return Err(de::Error::custom(
                    "invalid scope []: name at least one dimension, or use \"global\"",
                ));
            }
            Raw::Many(ts) => ts,
        };
        let mut dims: Vec<ScopeDim> = Vec::with_capacity(texts.len());
        for t in &texts {
            let dim = ScopeDim::parse(t).map_err(de::Error::custom)?;
            if dims.contains(&dim) {
                return Err(de::Error::custom(format!("scope names \"{dim}\" twice")));
            }
            dims.push(dim);
        }
        if dims.len() > 1 && dims.contains(&ScopeDim::Global) {
            return Err(de::Error::custom(
                "scope \"global\" cannot be combined with other dimensions",
            ));
        }
        Ok(Scope(dims))
    }
}

/// A map that rejects duplicate keys: in a policy a second rule for the same tool is almost
/// certainly a mistake, and silently keeping one of them would hide it.
#[derive(Debug)]
pub struct UniqueMap<V>(pub BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UniqueVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueVisitor<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate key \"{key}\"")));
                    }
                    let value = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(UniqueVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_accept_names_and_durations() {
        assert_eq!(Window::parse("minute").map(|w| w.duration), Ok(Duration::from_secs(60)));
        assert_eq!(Window::parse("30s").map(|w| w.duration), Ok(Duration::from_secs(30)));
        assert_eq!(
            Window::parse("250ms").map(|w| w.duration),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(Window::parse("5m").map(|w| w.duration), Ok(Duration::from_secs(300)));
        assert_eq!(Window::parse("1h").map(|w| w.duration), Ok(Duration::from_secs(3600)));
        assert_eq!(
            Window::parse("2d").map(|w| w.duration),
            Ok(Duration::from_secs(172_800))
        );
        assert!(Window::parse("0s").is_err());
        assert!(Window::parse("5x").is_err());
        assert!(Window::parse("s").is_err());
        assert!(Window::parse("fortnight").is_err());
        assert!(Window::parse("99999999999999999999d").is_err());
        assert_eq!(Window::parse("366d").map(|w| w.duration), Ok(MAX_WINDOW));
        assert!(Window::parse("367d").is_err());
        assert!(
            Window::parse("9999999999999d").is_err(),
            "fits u64 ms, but is longer than a year"
        );
    }

    #[test]
    fn scope_dimensions_parse_and_print() {
        assert_eq!(
            ScopeDim::parse("argument:namespace"),
            Ok(ScopeDim::Argument("namespace".into()))
        );
        assert!(ScopeDim::parse("argument:").is_err());
        assert!(ScopeDim::parse("tenant").is_err());
        let s = Scope(vec![ScopeDim::Grant, ScopeDim::Argument("ns".into())]);
        assert_eq!(s.to_string(), "grant+argument:ns");
    }
}
