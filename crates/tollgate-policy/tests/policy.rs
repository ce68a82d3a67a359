//! The policy language as SPEC §2 describes it: precedence, keys and diagnostics.

use serde_json::{Value, json};
use tollgate_policy::{Action, Annotations, Call, Kind, Policy, PolicyError, compile_str};

const SEED: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": {
      "limits": [
        { "counter": "k8s_rollout_pause_rate", "window": "minute", "max": 10, "scope": "grant" }
      ]
    }
  }
}"#;

fn policy(text: &str) -> Policy {
    match compile_str("policy.json", text) {
        Ok(c) => c.policy,
        Err(e) => panic!("policy should compile:\n{e}"),
    }
}

fn errors(name: &str, text: &str) -> PolicyError {
    match compile_str(name, text) {
        Ok(_) => panic!("policy should be rejected"),
        Err(e) => e,
    }
}

fn label(p: &Policy, server: &str, tool: &str, grant: &str) -> String {
    p.rule_for(server, tool, grant, Annotations::default()).label.clone()
}

fn call<'a>(tool: &'a str, grant: &'a str, arguments: &'a Value) -> Call<'a> {
    Call {
        server: "k8s",
        tool,
        grant,
        agent: "agent-1",
        session: "s-1",
        arguments,
        annotations: Annotations::default(),
    }
}

#[test]
fn seed_policy_compiles_unchanged_and_means_what_it_says() {
    let p = policy(SEED);
    let pause = p.rule_for("k8s", "k8s_rollout_pause", "ci-bot", Annotations::default());
    assert_eq!(pause.action, Action::Allow);
    assert_eq!(pause.label, "tools[\"k8s_rollout_pause\"]");
    assert_eq!(pause.limits.len(), 1);
    assert_eq!(pause.limits[0].max, 10);
    assert_eq!(pause.limits[0].window.duration.as_secs(), 60);
    assert_eq!(pause.limits[0].describe(), "10 per minute per grant");
    let other = p.rule_for("k8s", "k8s_get_pods", "ci-bot", Annotations::default());
    assert_eq!(other.action, Action::Deny);
    assert_eq!(other.label, "default");
}

#[test]
fn missing_default_denies() {
    let p = policy(r#"{"version": "1", "tools": {"a": {}}}"#);
    assert_eq!(p.rule_for("s", "b", "g", Annotations::default()).action, Action::Deny);
}

#[test]
fn exact_name_beats_any_pattern() {
    let p = policy(r#"{"version":"1","tools":{"k8s_*":{"action":"deny"},"k8s_get_pods":{}}}"#);
    assert_eq!(label(&p, "k8s", "k8s_get_pods", "g"), "tools[\"k8s_get_pods\"]");
    assert_eq!(label(&p, "k8s", "k8s_scale", "g"), "tools[\"k8s_*\"]");
}

#[test]
fn more_literal_characters_beat_fewer() {
    let p = policy(r#"{"version":"1","tools":{"*":{},"k8s_*":{},"k8s_delete_*":{"action":"deny"}}}"#);
    assert_eq!(label(&p, "k8s", "k8s_delete_namespace", "g"), "tools[\"k8s_delete_*\"]");
    assert_eq!(label(&p, "k8s", "k8s_scale", "g"), "tools[\"k8s_*\"]");
    assert_eq!(label(&p, "k8s", "helm_install", "g"), "tools[\"*\"]");
}

#[test]
fn equally_specific_overlapping_patterns_are_an_error_with_location() {
    let text = "{\n  \"version\": \"1\",\n  \"tools\": {\n    \"k8s_*\": {},\n    \"*_pod\": {}\n  }\n}";
    let err = errors("p.json", text);
    assert_eq!(err.errors.len(), 1, "{err}");
    let d = &err.errors[0];
    assert!(
        d.message.contains("\"*_pod\"") && d.message.contains("\"k8s_*\""),
        "{}",
        d.message
    );
    assert!(d.message.contains("k8s_"), "names a witness: {}", d.message);
    assert_eq!((d.location.file.as_str(), d.location.line), ("p.json", 4), "{d}");
}

#[test]
fn equally_specific_disjoint_patterns_are_fine() {
    let p = policy(r#"{"version":"1","tools":{"k8s_*":{},"gh_*":{"action":"deny"}}}"#);
    assert_eq!(label(&p, "s", "gh_merge", "g"), "tools[\"gh_*\"]");
}

#[test]
fn server_rules_beat_top_level_rules_for_their_server_only() {
    let p = policy(
        r#"{"version":"1","tools":{"k8s_scale":{}},
            "servers":{"prod":{"tools":{"k8s_scale":{"action":"deny","reason":"not in prod"}}}}}"#,
    );
    assert_eq!(
        label(&p, "prod", "k8s_scale", "g"),
        "servers[\"prod\"].tools[\"k8s_scale\"]"
    );
    assert_eq!(label(&p, "dev", "k8s_scale", "g"), "tools[\"k8s_scale\"]");
}

#[test]
fn grant_rules_beat_server_rules() {
    let p = policy(
        r#"{"version":"1",
            "servers":{"prod":{"tools":{"k8s_scale":{"action":"deny"}}}},
            "grants":{"sre":{"tools":{"k8s_*":{"action":"allow"}}}}}"#,
    );
    assert_eq!(
        label(&p, "prod", "k8s_scale", "sre"),
        "grants[\"sre\"].tools[\"k8s_*\"]"
    );
    assert_eq!(
        label(&p, "prod", "k8s_scale", "ci-bot"),
        "servers[\"prod\"].tools[\"k8s_scale\"]"
    );
}

#[test]
fn named_tool_rule_beats_class_rule_and_class_beats_default() {
    let p = policy(
        r#"{"version":"1","default":"allow",
            "tools":{"k8s_delete_namespace":{"action":"require_approval"}},
            "classes":{"destructive":{"action":"deny"},"read_only":{"action":"allow"}}}"#,
    );
    let destructive = Annotations {
        destructive: Some(true),
        ..Default::default()
    };
    assert_eq!(
        p.rule_for("k8s", "k8s_delete_namespace", "g", destructive).label,
        "tools[\"k8s_delete_namespace\"]"
    );
    assert_eq!(
        p.rule_for("k8s", "k8s_drain", "g", destructive).label,
        "classes[\"destructive\"]"
    );
    let read_only = Annotations {
        read_only: Some(true),
        ..Default::default()
    };
    assert_eq!(
        p.rule_for("k8s", "k8s_get_pods", "g", read_only).label,
        "classes[\"read_only\"]"
    );
}

#[test]
fn tools_without_annotations_count_as_destructive_per_mcp_defaults() {
    let p = policy(r#"{"version":"1","default":"allow","classes":{"destructive":{"action":"deny"}}}"#);
    assert_eq!(
        p.rule_for("k8s", "mystery", "g", Annotations::default()).action,
        Action::Deny
    );
    let safe = Annotations {
        destructive: Some(false),
        ..Default::default()
    };
    assert_eq!(p.rule_for("k8s", "mystery", "g", safe).action, Action::Allow);
}

#[test]
fn destructive_class_beats_open_world_and_read_only() {
    let p = policy(
        r#"{"version":"1","classes":{"open_world":{"action":"require_approval"},"destructive":{"action":"deny"},"read_only":{}}}"#,
    );
    let both = Annotations {
        destructive: Some(true),
        open_world: Some(true),
        ..Default::default()
    };
    assert_eq!(p.rule_for("s", "t", "g", both).label, "classes[\"destructive\"]");
    let web = Annotations {
        read_only: Some(true),
        open_world: Some(true),
        ..Default::default()
    };
    assert_eq!(p.rule_for("s", "t", "g", web).label, "classes[\"open_world\"]");
}

#[test]
fn defaults_apply_grant_then_server_then_top_level() {
    let p = policy(
        r#"{"version":"1","default":"deny",
            "servers":{"dev":{"default":"allow"}},
            "grants":{"admin":{"default":"require_approval"}}}"#,
    );
    assert_eq!(label(&p, "dev", "x", "admin"), "grants[\"admin\"].default");
    assert_eq!(label(&p, "dev", "x", "ci"), "servers[\"dev\"].default");
    assert_eq!(label(&p, "prod", "x", "ci"), "default");
}

#[test]
fn any_tool_rule_beats_every_default() {
    let p = policy(
        r#"{"version":"1","tools":{"k8s_delete_namespace":{"action":"deny"}},
            "grants":{"admin":{"default":"allow"}}}"#,
    );
    assert_eq!(
        label(&p, "k8s", "k8s_delete_namespace", "admin"),
        "tools[\"k8s_delete_namespace\"]"
    );
}

#[test]
fn visibility_hides_denied_tools_only() {
    let p = policy(r#"{"version":"1","default":"deny","tools":{"a":{},"b":{"action":"require_approval"}}}"#);
    assert!(p.is_visible("s", "a", "g", Annotations::default()));
    assert!(p.is_visible("s", "b", "g", Annotations::default()));
    assert!(!p.is_visible("s", "c", "g", Annotations::default()));
}

#[test]
fn counter_keys_follow_scope_and_escape_values() {
    let p = policy(
        r#"{"version":"1","tools":{"t":{"limits":[
            {"counter":"per_ns","window":"1h","max":5,"scope":["grant","argument:namespace"]},
            {"counter":"all","window":"30s","max":100,"scope":"global"},
            {"counter":"sess","window":60,"max":3,"scope":"session","cost":2}
        ]}}}"#,
    );
    let rule = p.rule_for("k8s", "t", "ci/bot", Annotations::default());
    let args = json!({"namespace": "kube-system/x"});
    let hits = p.counter_hits(rule, &call("t", "ci/bot", &args));
    let keys: Vec<&str> = hits.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "per_ns/grant=ci%2Fbot/arg.namespace=kube-system%2Fx",
            "all/global",
            "sess/session=s-1"
        ]
    );
    assert_eq!(hits[2].limit.cost, 2);
    assert_eq!(hits[2].limit.window.duration.as_secs(), 60);
}

/// Argument values are keyed canonically: spellings of one number (and strings that are
/// that number) share a budget, as do NFC and NFD spellings of one string; a missing
/// argument and the string "!" do not collide, nor do `true` and "true".
#[test]
fn argument_keys_are_canonical_values() {
    let p = policy(
        r#"{"version":"1","tools":{"t":{"limits":[{"counter":"c","window":"1m","max":5,"scope":"argument:replicas"}]}}}"#,
    );
    let rule = p.rule_for("k8s", "t", "g", Annotations::default());
    let key = |args: &str| {
        let args: Value = serde_json::from_str(args).expect("json");
        p.counter_hits(rule, &call("t", "g", &args))[0].key.clone()
    };
    assert_eq!(key(r#"{}"#), "c/arg.replicas=!");
    assert_eq!(key(r#"{"replicas": "!"}"#), "c/arg.replicas=%21");
    for three in ["3", "3.0", "3e0", "0.3e1", "\"3\"", "\" 3.0\"", "\"+3\""] {
        assert_eq!(
            key(&format!(r#"{{"replicas": {three}}}"#)),
            "c/arg.replicas=#3",
            "{three}"
        );
    }
    assert_eq!(key(r#"{"replicas": "web"}"#), "c/arg.replicas=web");
    assert_eq!(
        key(r#"{"replicas": "caf\u00e9"}"#),
        key(r#"{"replicas": "cafe\u0301"}"#),
        "NFC and NFD"
    );
    assert_ne!(key(r#"{"replicas": true}"#), key(r#"{"replicas": "true"}"#));
    assert_eq!(
        key(r#"{"replicas": {"b": 1.0, "a": 2}}"#),
        key(r#"{"replicas": {"a": "2", "b": 1}}"#),
        "objects by canonical JSON"
    );
}

#[test]
fn grant_values_cannot_forge_a_composite_key() {
    let p = policy(
        r#"{"version":"1","tools":{"t":{"limits":[{"counter":"c","window":"1m","max":5,"scope":["grant","agent"]}]}}}"#,
    );
    let rule = p.rule_for("k8s", "t", "g", Annotations::default());
    let args = json!({});
    let mut a = call("t", "x/agent=y", &args);
    a.agent = "z";
    let mut b = call("t", "x", &args);
    b.agent = "y/agent=z";
    assert_ne!(p.counter_hits(rule, &a)[0].key, p.counter_hits(rule, &b)[0].key);
}

#[test]
fn yaml_and_toml_policies_compile_to_the_same_rules() {
    let yaml = "version: \"1\"\ndefault: deny\ntools:\n  k8s_rollout_pause:\n    limits:\n      - counter: k8s_rollout_pause_rate\n        window: minute\n        max: 10\n        scope: grant\n";
    let toml = "version = \"1\"\ndefault = \"deny\"\n[[tools.k8s_rollout_pause.limits]]\ncounter = \"k8s_rollout_pause_rate\"\nwindow = \"minute\"\nmax = 10\nscope = \"grant\"\n";
    for (name, text) in [("p.yaml", yaml), ("p.toml", toml)] {
        let c = compile_str(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = c
            .policy
            .rule_for("k8s", "k8s_rollout_pause", "g", Annotations::default());
        assert_eq!(r.limits[0].describe(), "10 per minute per grant", "{name}");
        assert_eq!(
            c.policy.rule_for("k8s", "other", "g", Annotations::default()).action,
            Action::Deny
        );
    }
}

fn first_error(name: &str, text: &str) -> (usize, usize, String) {
    let e = errors(name, text);
    let d = &e.errors[0];
    assert_eq!(d.location.file, name);
    (d.location.line, d.location.column, d.message.clone())
}

#[test]
fn syntax_errors_point_at_line_and_column_in_every_format() {
    let (line, _, msg) = first_error("p.json", "{\n  \"version\": \"1\",\n  \"tools\": {,}\n}");
    assert_eq!(line, 3, "{msg}");
    let (line, _, msg) = first_error("p.yaml", "version: \"1\"\ntools:\n  a: [\n");
    assert!(line >= 3, "{line}: {msg}");
    let (line, _, msg) = first_error("p.toml", "version = \"1\"\n[tools\n");
    assert_eq!(line, 2, "{msg}");
}

#[test]
fn bad_values_are_reported_where_they_are_written() {
    let text = "{\n \"version\": \"1\",\n \"tools\": {\"t\": {\"limits\": [\n   {\"counter\": \"c\", \"window\": \"7x\", \"max\": 1}\n ]}}\n}";
    let (line, _, msg) = first_error("p.json", text);
    assert_eq!(line, 4);
    assert!(msg.contains("invalid window \"7x\""), "{msg}");

    let text =
        "version: \"1\"\ntools:\n  t:\n    limits:\n      - {counter: c, window: minute, max: 1, scope: tenant}\n";
    let (line, _, msg) = first_error("p.yaml", text);
    assert_eq!(line, 5);
    assert!(msg.contains("invalid scope \"tenant\""), "{msg}");

    let text = "version = \"1\"\n[tools.t]\naction = \"maybe\"\n";
    let (line, _, msg) = first_error("p.toml", text);
    assert_eq!(line, 3);
    assert!(msg.contains("maybe"), "{msg}");
}

#[test]
fn unknown_fields_are_rejected_rather_than_ignored() {
    let (_, _, msg) = first_error("p.json", r#"{"version":"1","tools":{"t":{"limts":[]}}}"#);
    assert!(msg.contains("unknown field `limts`"), "{msg}");
}

#[test]
fn duplicate_tool_keys_are_rejected() {
    let (line, _, msg) = first_error("p.json", "{\"version\":\"1\",\n\"tools\":{\"t\":{},\n\"t\":{}}}");
    assert!(msg.contains("duplicate key \"t\""), "{msg}");
    assert_eq!(line, 3);
}

#[test]
fn unsupported_version_is_rejected() {
    let (_, _, msg) = first_error("p.json", r#"{"version":"2"}"#);
    assert!(msg.contains("unsupported policy version \"2\""), "{msg}");
    let (_, _, msg) = first_error("p.json", r#"{"tools":{}}"#);
    assert!(msg.contains("missing field `version`"), "{msg}");
}

#[test]
fn limit_errors_are_all_reported_together() {
    let text = r#"{"version":"1","tools":{
        "a":{"limits":[{"counter":"bad name","window":"1m","max":1}]},
        "b":{"limits":[{"counter":"z","window":"1m","max":0}]},
        "c":{"limits":[{"counter":"y","window":"1m","max":2,"cost":3}]},
        "d":{"limits":[{"counter":"x","window":"1m","max":2,"cost":0}]}
    }}"#;
    let e = errors("p.json", text);
    let all = e.to_string();
    assert_eq!(e.errors.len(), 4, "{all}");
    assert!(all.contains("invalid counter name \"bad name\""), "{all}");
    assert!(all.contains("max 0"), "{all}");
    assert!(all.contains("cost 3 above its max 2"), "{all}");
    assert!(all.contains("cost 0"), "{all}");
    assert!(all.starts_with("p.json:2:"), "sorted by position: {all}");
}

#[test]
fn shared_counter_must_count_the_same_way() {
    let text = r#"{"version":"1","tools":{
        "a":{"limits":[{"counter":"shared","window":"1m","max":5}]},
        "b":{"limits":[{"counter":"shared","window":"1h","max":5}]}
    }}"#;
    let msg = errors("p.json", text).to_string();
    assert!(msg.contains("counter \"shared\""), "{msg}");

    let ok = r#"{"version":"1","tools":{
        "a":{"limits":[{"counter":"shared","window":"1m","max":5}]},
        "b":{"limits":[{"counter":"shared","window":"60s","max":8}]}
    }}"#;
    let p = policy(ok);
    let args = json!({});
    let a = p.counter_hits(
        p.rule_for("s", "a", "g", Annotations::default()),
        &call("a", "g", &args),
    );
    let b = p.counter_hits(
        p.rule_for("s", "b", "g", Annotations::default()),
        &call("b", "g", &args),
    );
    assert_eq!(a[0].key, b[0].key, "same counter, same scope: one budget");
}

#[test]
fn same_counter_twice_in_one_rule_is_an_error() {
    let text = r#"{"version":"1","tools":{"a":{"limits":[
        {"counter":"c","window":"1m","max":5},{"counter":"c","window":"1m","max":9}]}}}"#;
    assert!(errors("p.json", text).to_string().contains("appears twice"));
}

#[test]
fn unknown_class_is_an_error() {
    let msg = errors("p.json", r#"{"version":"1","classes":{"dangerous":{}}}"#).to_string();
    assert!(msg.contains("unknown class \"dangerous\""), "{msg}");
}

#[test]
fn warnings_name_rules_that_can_never_apply() {
    let text = r#"{"version":"1","default":"deny","tools":{"*":{"action":"allow"},"x":{"action":"deny","limits":[{"counter":"c","window":"1m","max":1}]}},
                   "classes":{"destructive":{"action":"deny"}}}"#;
    let c = compile_str("p.json", text).expect("warnings are not errors");
    let all: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert!(all.iter().any(|w| w.contains("`default` never applies")), "{all:?}");
    assert!(all.iter().any(|w| w.contains("class rules never apply")), "{all:?}");
    assert!(
        all.iter()
            .any(|w| w.contains("limits of a deny rule are never checked")),
        "{all:?}"
    );
}

#[test]
fn windows_longer_than_a_year_are_errors_with_location() {
    // 9999999999999d fits in u64 milliseconds, so it used to pass and then wrap on its way
    // to Redis; 40000000 seconds is over a year, written as a number.
    for (window, line) in [
        ("\"9999999999999d\"", 2),
        ("40000000", 2),
        ("\"99999999999999999999d\"", 2),
    ] {
        let text = format!(
            "{{\"version\":\"1\",\"tools\":{{\n  \"a\":{{\"limits\":[{{\"counter\":\"a\",\"window\":{window},\"max\":1}}]}}}}}}"
        );
        let all = errors("p.json", &text).to_string();
        assert!(all.starts_with(&format!("p.json:{line}:")), "{window}: {all}");
        assert!(all.contains("at most 366 days"), "{window}: {all}");
    }
    let ok = r#"{"version":"1","tools":{"a":{"limits":[{"counter":"a","window":"366d","max":1}]}}}"#;
    assert!(tollgate_policy::compile_str("p.json", ok).is_ok());
}

fn warnings(text: &str) -> Vec<String> {
    compile_str("p.json", text)
        .expect("warnings are not errors")
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The three ways a more specific rule used to widen access without a word: a grant rule
/// that only sets a `reason` drops the top-level limit; a grant rule allows a tool the
/// server's rule denies; a class rule allows under `default: deny`. Each is a warning at
/// the rule that widens, naming what it drops; stating the intent silences it.
#[test]
fn rules_that_silently_widen_access_are_warnings() {
    let text = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "minute", "max": 10, "scope": "global" }] }
  },
  "servers": {
    "k8s": { "tools": { "k8s_delete_*": { "action": "deny", "reason": "never" } } }
  },
  "grants": {
    "ci-bot": { "tools": {
      "k8s_rollout_pause": { "reason": "CI pauses rollouts" },
      "k8s_delete_namespace": { "limits": [{ "counter": "del", "window": "hour", "max": 1 }] }
    } }
  },
  "classes": {
    "destructive": { "limits": [{ "counter": "destructive", "window": "minute", "max": 5 }] }
  }
}"#;
    let all = warnings(text);
    assert_eq!(all.len(), 3, "{all:#?}");
    let dropped = all
        .iter()
        .find(|w| w.contains("pause (10 per minute)"))
        .expect("dropped limit");
    assert!(dropped.starts_with("p.json:12:"), "at the grant rule: {dropped}");
    assert!(
        dropped.contains(r#"grants["ci-bot"].tools["k8s_rollout_pause"] has no "limits""#),
        "{dropped}"
    );
    let allowed = all.iter().find(|w| w.contains("denies it")).expect("deny turned allow");
    assert!(allowed.starts_with("p.json:13:"), "{allowed}");
    assert!(
        allowed.contains(r#"for "k8s_delete_namespace", servers["k8s"].tools["k8s_delete_*"] denies it"#),
        "{allowed}"
    );
    let class = all
        .iter()
        .find(|w| w.contains("classes["))
        .expect("class under default deny");
    assert!(class.starts_with("p.json:17:"), "{class}");
    assert!(class.contains("allows every destructive tool"), "{class}");

    // Stating the intent silences each.
    let stated = text
        .replace(
            r#"{ "reason": "CI pauses rollouts" }"#,
            r#"{ "reason": "CI pauses rollouts", "limits": [] }"#,
        )
        .replace(
            r#""k8s_delete_namespace": { "limits""#,
            r#""k8s_delete_namespace": { "action": "allow", "limits""#,
        )
        .replace(
            r#""destructive": { "limits""#,
            r#""destructive": { "action": "allow", "limits""#,
        );
    assert_eq!(warnings(&stated), Vec::<String>::new());
}

/// Within one map, a specific rule that allows beside a broad deny is the ordinary way to
/// name what is allowed; one that drops the broad rule's limits is a warning.
#[test]
fn within_one_map_only_dropped_limits_are_warnings() {
    let ordinary = r#"{"version":"1","tools":{"*":{"action":"deny"},"k8s_get":{},"k8s_*":{"action":"require_approval"},"k8s_list":{}}}"#;
    let all = warnings(ordinary);
    assert_eq!(all, Vec::<String>::new());
    let dropped = r#"{"version":"1","tools":{"*":{"limits":[{"counter":"all","window":"minute","max":100,"scope":"global"}]},"k8s_get":{}}}"#;
    let all = warnings(dropped);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].contains(r#"tools["k8s_get"] has no "limits", so the limits of tools["*"] do not apply"#),
        "{all:?}"
    );
}

/// `matching_rules` lists every rule that matches a call, the deciding one first, so that
/// `policy explain` can show what was shadowed.
#[test]
fn matching_rules_lists_the_shadowed_rules_in_precedence_order() {
    let text = r#"{"version":"1","default":"deny",
        "tools":{"k8s_*":{"limits":[{"counter":"k","window":"minute","max":3}]},"k8s_get":{}},
        "servers":{"k8s":{"default":"deny","tools":{"k8s_get":{"action":"deny"}}}},
        "grants":{"ci":{"tools":{"k8s_get":{"action":"allow"}}}}}"#;
    let c = compile_str("p.json", text).expect("policy");
    let labels: Vec<&str> = c
        .policy
        .matching_rules("k8s", "k8s_get", "ci", Annotations::default())
        .iter()
        .map(|r| r.label.as_str())
        .collect();
    assert_eq!(
        labels,
        [
            r#"grants["ci"].tools["k8s_get"]"#,
            r#"servers["k8s"].tools["k8s_get"]"#,
            r#"tools["k8s_get"]"#,
            r#"tools["k8s_*"]"#,
            r#"servers["k8s"].default"#,
            "default"
        ]
    );
}

/// `sliding_log` keeps one entry per hit, so its `max` is capped; a larger limit must use
/// `sliding_window` (capped at 2^53, exact in Lua).
#[test]
fn limits_larger_than_a_store_counts_are_errors_with_location() {
    let log = r#"{"version":"1","tools":{
  "a":{"limits":[{"counter":"a","window":"day","max":100001}]}}}"#;
    let all = errors("p.json", log).to_string();
    assert!(all.starts_with("p.json:2:"), "{all}");
    assert!(all.contains("above 100000") && all.contains("sliding_window"), "{all}");
    let window = r#"{"version":"1","tools":{"a":{"limits":[{"counter":"a","window":"day","max":9007199254740993,"algorithm":"sliding_window"}]}}}"#;
    assert!(errors("p.json", window).to_string().contains("above 9007199254740992"));
    let largest =
        r#"{"version":"1","tools":{"a":{"limits":[{"counter":"a","window":"day","max":100000,"cost":100000}]}}}"#;
    assert!(compile_str("p.json", largest).is_ok());
}

/// `arguments` is a JSON Schema compiled at load: an invalid one (or one that would fetch
/// a remote reference) is an error at its line; a valid one names each violation's JSON
/// pointer and constraint, and treats a call without arguments as `{}`.
#[test]
fn argument_schemas_are_compiled_at_load_and_name_pointer_and_constraint() {
    let bad = "{\n  \"version\": \"1\",\n  \"tools\": {\n    \"a\": { \"arguments\": { \"type\": \"nonsense\" } },\n    \"b\": { \"arguments\": { \"$ref\": \"https://example.com/s.json\" } }\n  }\n}";
    let all = errors("p.json", bad).to_string();
    assert!(
        all.contains("p.json:4:") && all.contains("`arguments` is not a valid JSON Schema"),
        "{all}"
    );
    assert!(all.contains("p.json:5:"), "remote references are not fetched: {all}");

    let text = r#"{"version":"1","tools":{"scale":{"arguments":{
        "type":"object","required":["replicas"],
        "properties":{"replicas":{"type":"integer","maximum":10},"namespace":{"not":{"const":"kube-system"}}}}}}}"#;
    let c = compile_str("p.json", text).expect("policy");
    let rule = c.policy.rule_for("k8s", "scale", "g", Annotations::default());
    let schema = rule.arguments.as_ref().expect("schema");
    assert_eq!(schema.check(&json!({"replicas": 3})), Ok(()));
    assert_eq!(
        schema.check(&json!({"replicas": 300})),
        Err("/replicas: 300 is greater than the maximum of 10".to_owned())
    );
    let both = schema
        .check(&json!({"replicas": "3", "namespace": "kube-system"}))
        .expect_err("two violations");
    assert!(both.contains("/replicas: ") && both.contains("/namespace: "), "{both}");
    let none = schema.check(&Value::Null).expect_err("no arguments are {}");
    assert!(none.starts_with("arguments: ") && none.contains("required"), "{none}");
    let long = "x".repeat(10_000);
    let bounded = schema.check(&json!({"replicas": long})).expect_err("not an integer");
    assert!(
        bounded.len() < 400,
        "violation text is bounded: {} bytes",
        bounded.len()
    );
}

/// The seed page's FAQ: "add a rate_limit block … max: 10 and window: 60 … tracked per agent
/// session". It is one limit in a counter named after the tool, per session by default.
#[test]
fn rate_limit_shorthand_is_one_limit_per_session() {
    let text = r#"{"version":"1","default":"deny","tools":{
        "k8s_rollout_pause":{"rate_limit":{"max":10,"window":60}},
        "k8s_scale":{"rate_limit":{"max":2,"window":"hour","scope":"grant"},"limits":[{"counter":"all","window":"day","max":5}]}}}"#;
    let c = compile_str("p.json", text).expect("policy");
    assert_eq!(c.warnings.len(), 0, "{:?}", c.warnings);
    let args = json!({});
    let pause = c
        .policy
        .rule_for("k8s", "k8s_rollout_pause", "g", Annotations::default());
    let mut call = call("k8s_rollout_pause", "g", &args);
    call.session = "s1";
    let hits = c.policy.counter_hits(pause, &call);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].key, "k8s_rollout_pause_rate/session=s1");
    assert_eq!(hits[0].limit.max, 10);
    assert_eq!(hits[0].limit.window.duration.as_secs(), 60);
    let scale = c.policy.rule_for("k8s", "k8s_scale", "g", Annotations::default());
    let counters: Vec<&str> = scale.limits.iter().map(|l| l.counter.as_str()).collect();
    assert_eq!(counters, ["all", "k8s_scale_rate"]);
    assert_eq!(scale.limits[1].scope.to_string(), "grant");

    let pattern = r#"{"version":"1","tools":{"k8s_*":{"rate_limit":{"max":1,"window":60}}}}"#;
    assert!(errors("p.json", pattern).to_string().contains("is a pattern"));
}

#[test]
fn approvals_hold_by_default_and_retry_when_asked() {
    use std::time::Duration;
    use tollgate_policy::{ApprovalBind, ApprovalPolicy};
    let p = policy(
        r#"{"version":"1","tools":{
            "plain":{"action":"require_approval"},
            "quick":{"action":"require_approval","approval":{"timeout":"2m","hold":"10s"}},
            "later":{"action":"require_approval","approval":{"mode":"retry","timeout":"1h"}},
            "short":{"action":"require_approval","approval":{"timeout":"20s"}},
            "shared":{"action":"require_approval","approval":{"bind":"grant"}}}}"#,
    );
    let approval = |tool: &str| p.rule_for("k8s", tool, "g", Annotations::default()).approval;
    assert_eq!(approval("plain"), ApprovalPolicy::default());
    assert_eq!(approval("plain").hold, Some(Duration::from_secs(45)));
    assert_eq!(approval("plain").timeout, Duration::from_secs(300));
    assert_eq!(
        approval("quick"),
        ApprovalPolicy {
            timeout: Duration::from_secs(120),
            hold: Some(Duration::from_secs(10)),
            bind: ApprovalBind::Agent,
        }
    );
    // An operator's yes goes to the caller they saw unless the rule shares it grant-wide.
    assert_eq!(approval("plain").bind, ApprovalBind::Agent);
    assert_eq!(approval("shared").bind, ApprovalBind::Grant);
    assert_eq!(approval("later").hold, None);
    assert_eq!(approval("later").timeout, Duration::from_secs(3600));
    // The default hold never outlives the approval it waits for.
    assert_eq!(approval("short").hold, Some(Duration::from_secs(20)));
}

#[test]
fn approval_settings_that_cannot_work_are_named() {
    let all = warnings(
        r#"{"version":"1","tools":{
  "a":{"action":"require_approval","approval":{"mode":"retry","hold":"5s"}},
  "b":{"action":"require_approval","approval":{"timeout":"10s","hold":"1m"}}}}"#,
    );
    assert!(
        all.iter()
            .any(|w| w.contains(":2:") && w.contains("`hold` has no effect")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|w| w.contains(":3:") && w.contains("`hold` is longer than `timeout`")),
        "{all:?}"
    );
    let (line, _, message) = first_error(
        "p.json",
        "{\"version\":\"1\",\"tools\":{\n\"a\":{\"action\":\"require_approval\",\"approval\":{\"mode\":\"wait\"}}}}",
    );
    assert_eq!(line, 2, "{message}");
    assert!(message.contains("hold") && message.contains("retry"), "{message}");
    let (line, _, message) = first_error(
        "p.json",
        "{\"version\":\"1\",\"tools\":{\n\"a\":{\"action\":\"require_approval\",\"approval\":{\"bind\":\"user\"}}}}",
    );
    assert_eq!(line, 2, "{message}");
    assert!(message.contains("agent") && message.contains("grant"), "{message}");
}

/// Resources and prompts are decided only once the policy names them: the seed (tools
/// only) leaves both uncovered, and an empty section opts in with the defaults.
#[test]
fn resources_and_prompts_are_covered_only_when_a_section_names_them() {
    let seed = policy(SEED);
    assert!(seed.covers(Kind::Tool));
    assert!(!seed.covers(Kind::Resource) && !seed.covers(Kind::Prompt));
    assert!(seed.is_visible_subject(Kind::Resource, "k8s", "file:///etc/passwd", "g", Annotations::default()));

    let p = policy(r#"{"version": "1", "default": "deny", "resources": {}}"#);
    assert!(p.covers(Kind::Resource) && !p.covers(Kind::Prompt));
    let rule = p.rule_for_subject(Kind::Resource, "s", "file:///x", "g", Annotations::default());
    assert_eq!((rule.label.as_str(), rule.action), ("default", Action::Deny));
    assert!(!p.is_visible_subject(Kind::Resource, "s", "file:///x", "g", Annotations::default()));

    let in_grant = policy(r#"{"version": "1", "grants": {"ci": {"prompts": {"p": {}}}}}"#);
    assert!(in_grant.covers(Kind::Prompt), "a section in any scope covers the kind");
}

#[test]
fn resource_and_prompt_rules_follow_tool_precedence_by_kind() {
    let p = policy(
        r#"{
          "version": "1",
          "default": "allow",
          "tools": {"simple_prompt": {"action": "deny"}},
          "resources": {
            "file:///secrets/*": {"action": "deny", "reason": "secrets stay put"},
            "test://static/resource/*": {"limits": [{"counter": "reads", "window": "minute", "max": 2}]}
          },
          "prompts": {"simple_prompt": {"action": "allow"}, "*": {"action": "deny"}},
          "servers": {"fs": {"resources": {"file:///secrets/public/*": {"action": "allow"}}}},
          "grants": {"ops": {"prompts": {"complex_prompt": {"action": "require_approval"}}}},
          "classes": {"read_only": {"action": "deny"}}
        }"#,
    );
    let rule = |kind, server, name, grant| {
        let read_only = Annotations {
            read_only: Some(true),
            ..Default::default()
        };
        p.rule_for_subject(kind, server, name, grant, read_only).label.clone()
    };
    assert_eq!(
        rule(Kind::Resource, "x", "file:///secrets/key", "g"),
        "resources[\"file:///secrets/*\"]"
    );
    assert_eq!(
        rule(Kind::Resource, "fs", "file:///secrets/public/a", "g"),
        "servers[\"fs\"].resources[\"file:///secrets/public/*\"]"
    );
    assert_eq!(
        rule(Kind::Resource, "x", "file:///home/a", "g"),
        "default",
        "classes are for tools only"
    );
    assert_eq!(
        rule(Kind::Prompt, "x", "simple_prompt", "g"),
        "prompts[\"simple_prompt\"]"
    );
    assert_eq!(rule(Kind::Prompt, "x", "other", "g"), "prompts[\"*\"]");
    assert_eq!(
        rule(Kind::Prompt, "x", "complex_prompt", "ops"),
        "grants[\"ops\"].prompts[\"complex_prompt\"]"
    );
    assert_eq!(
        rule(Kind::Tool, "x", "simple_prompt", "g"),
        "tools[\"simple_prompt\"]",
        "kinds never mix"
    );
    assert_eq!(rule(Kind::Tool, "x", "anything", "g"), "classes[\"read_only\"]");
    assert!(!p.is_visible_subject(Kind::Prompt, "x", "other", "g", Annotations::default()));
    assert!(p.is_visible_subject(Kind::Prompt, "x", "simple_prompt", "g", Annotations::default()));
}

#[test]
fn resource_rules_cannot_look_at_arguments_and_name_the_line() {
    let e = errors(
        "policy.json",
        r#"{
  "version": "1",
  "resources": {
    "file:///a": {"arguments": {"type": "object"}},
    "file:///b": {"rate_limit": {"max": 1, "window": "minute"}},
    "file:///c": {"limits": [{"counter": "c", "window": "minute", "max": 1, "scope": ["grant", "argument:x"]}]}
  }
}"#,
    );
    let text = e.to_string();
    assert!(text.contains("policy.json:4:"), "{text}");
    assert!(text.contains("cannot have `arguments`"), "{text}");
    assert!(
        text.contains("policy.json:5:") && text.contains("a URI is not a counter name"),
        "{text}"
    );
    assert!(
        text.contains("policy.json:6:") && text.contains("\"argument:x\""),
        "{text}"
    );
}

#[test]
fn prompt_rate_limit_shorthand_has_its_own_counter() {
    let p = policy(
        r#"{"version": "1",
            "tools": {"p": {"rate_limit": {"max": 1, "window": "minute"}}},
            "prompts": {"p": {"rate_limit": {"max": 5, "window": "hour"}}}}"#,
    );
    let prompt = p.rule_for_subject(Kind::Prompt, "s", "p", "g", Annotations::default());
    assert_eq!(prompt.limits[0].counter, "prompt.p_rate");
    assert_eq!(
        p.rule_for("s", "p", "g", Annotations::default()).limits[0].counter,
        "p_rate"
    );
}

#[test]
fn shadowing_warnings_compare_rules_of_one_kind() {
    // A grant's prompt rule without "action" does not widen a top-level tool deny.
    let w =
        warnings(r#"{"version": "1", "tools": {"x": {"action": "deny"}}, "grants": {"g": {"prompts": {"x": {}}}}}"#);
    assert!(w.is_empty(), "{w:?}");
    let w =
        warnings(r#"{"version": "1", "prompts": {"x": {"action": "deny"}}, "grants": {"g": {"prompts": {"x": {}}}}}"#);
    assert_eq!(w.len(), 1, "{w:?}");
}

/// Issue 26, item 6: a document that parses but has several mistakes reports every one, each
/// at its line, in JSON, YAML and TOML alike.
#[test]
fn every_mistake_of_a_document_is_reported_at_once() {
    let json = "{\"version\":\"1\",\"tools\":{\n\"a\":{\"action\":\"maybe\"},\n\"b\":{\"limits\":[{\"counter\":\"c\",\"window\":\"1x\",\"max\":1}]},\n\"c\":{\"reason\":\"x\",\"colour\":\"red\"}},\n\"grants\":{\"g\":{\"tools\":{\"d\":{\"action\":\"perhaps\"}}}}}";
    let yaml = "version: \"1\"\ntools:\n  a: {action: maybe}\n  b: {limits: [{counter: c, window: 1x, max: 1}]}\n  c: {reason: x, colour: red}\n";
    let toml = "version = \"1\"\n[tools.a]\naction = \"maybe\"\n[tools.c]\nreason = \"x\"\ncolour = \"red\"\n";
    for (name, text, lines) in [
        ("p.json", json, vec![2, 3, 4, 5]),
        ("p.yaml", yaml, vec![3, 4, 5]),
        ("p.toml", toml, vec![3, 4]),
    ] {
        let found = errors(name, text);
        let at: Vec<usize> = found.errors.iter().map(|d| d.location.line).collect();
        for line in &lines {
            assert!(at.contains(line), "{name}: an error on line {line}: {found}");
        }
        assert!(found.to_string().contains("maybe"), "{found}");
        assert!(found.to_string().contains("colour"), "{found}");
    }
    // The same mistake in two rules is two errors.
    let twice = errors(
        "p.json",
        "{\"version\":\"1\",\"tools\":{\n\"a\":{\"action\":\"maybe\"},\n\"b\":{\"action\":\"maybe\"}}}",
    );
    assert_eq!(twice.errors.len(), 2, "{twice}");
}

/// Issue 30, item 5: which counters a store may take and give back within one decision
/// (taken before the rule's last slot group). Their refusals are never remembered as "full".
#[test]
fn counters_taken_before_a_rules_last_slot_group_may_be_given_back() {
    let p = policy(
        r#"{
      "version": "1",
      "default": "deny",
      "tools": {
        "k8s_scale": { "limits": [
          { "counter": "per-grant", "window": "minute", "max": 10, "scope": "grant" },
          { "counter": "everyone", "window": "minute", "max": 15, "scope": "global" }
        ] },
        "k8s_delete": { "limits": [
          { "counter": "per-session", "window": "minute", "max": 2, "scope": "session" },
          { "counter": "per-agent", "window": "minute", "max": 5, "scope": ["agent", "grant"] },
          { "counter": "per-grant-2", "window": "minute", "max": 5, "scope": "grant" }
        ] },
        "k8s_list": { "limits": [
          { "counter": "alone", "window": "minute", "max": 5, "scope": "grant" },
          { "counter": "alone-too", "window": "hour", "max": 50, "scope": ["grant", "tool"] }
        ] }
      }
    }"#,
    );
    // Global is taken last: never given back; the grant's counter before it may be.
    assert!(p.may_be_given_back("per-grant"));
    assert!(!p.may_be_given_back("everyone"));
    // Session first, then agent=…, then grant=…: only the last group's counter is kept.
    assert!(p.may_be_given_back("per-session"));
    assert!(p.may_be_given_back("per-agent"));
    assert!(!p.may_be_given_back("per-grant-2"));
    // One slot group (both start with the grant): nothing is ever given back.
    assert!(!p.may_be_given_back("alone"));
    assert!(!p.may_be_given_back("alone-too"));
}

/// `"mode": "shadow"`: the rule is left out of the policy enforced and is in force in its
/// candidate, at every level (top, server, grant, classes); the two digests differ.
#[test]
fn shadow_mode_rules_are_only_in_the_candidate() {
    let text = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_scale": { "action": "allow" },
    "k8s_*": { "action": "deny", "mode": "shadow" },
    "k8s_get_pods": { "action": "allow", "mode": "enforce" }
  },
  "grants": { "ci": { "tools": { "k8s_scale": { "action": "require_approval", "mode": "shadow" } } } },
  "classes": { "read_only": { "action": "allow", "mode": "shadow" } }
}"#;
    let enforced = policy(text);
    let candidate = enforced.with_shadow_rules().expect("a candidate").clone();
    assert_ne!(enforced.digest(), candidate.digest());
    assert!(candidate.with_shadow_rules().is_none());
    // Enforced: the shadow rules are not there.
    assert_eq!(label(&enforced, "k8s", "k8s_scale", "ci"), "tools[\"k8s_scale\"]");
    assert_eq!(label(&enforced, "k8s", "k8s_rollout_pause", "a"), "default");
    assert_eq!(label(&enforced, "k8s", "k8s_get_pods", "a"), "tools[\"k8s_get_pods\"]");
    let read_only = Annotations {
        read_only: Some(true),
        ..Default::default()
    };
    assert_eq!(enforced.rule_for("k8s", "list", "a", read_only).label, "default");
    // The candidate: they decide, and say they are shadow rules.
    let scale = candidate.rule_for("k8s", "k8s_scale", "ci", Annotations::default());
    assert_eq!(scale.label, "grants[\"ci\"].tools[\"k8s_scale\"]");
    assert!(scale.shadow);
    let pause = candidate.rule_for("k8s", "k8s_rollout_pause", "a", Annotations::default());
    assert_eq!((pause.label.as_str(), pause.action), ("tools[\"k8s_*\"]", Action::Deny));
    assert!(
        !candidate
            .rule_for("k8s", "k8s_get_pods", "a", Annotations::default())
            .shadow
    );
    assert_eq!(
        candidate.rule_for("k8s", "list", "a", read_only).label,
        "classes[\"read_only\"]"
    );
    // A resources or prompts section of shadow-mode rules only is not there for the policy
    // enforced: reads and gets pass unchecked as before; the candidate covers them.
    let sections = policy(
        r#"{"version": "1", "default": "deny", "tools": {},
            "resources": {"k8s://secrets/*": {"action": "deny", "mode": "shadow"}},
            "grants": {"g": {"prompts": {"p": {"action": "deny", "mode": "shadow"}}}}}"#,
    );
    assert!(!sections.covers(Kind::Resource) && !sections.covers(Kind::Prompt));
    let candidate = sections.with_shadow_rules().expect("a candidate");
    assert!(candidate.covers(Kind::Resource) && candidate.covers(Kind::Prompt));
    // An explicit empty section still covers its kind, and a section with one enforced rule
    // does.
    let mixed = policy(
        r#"{"version": "1", "default": "deny", "prompts": {},
            "resources": {"a://x": {"action": "allow"}, "a://y": {"action": "deny", "mode": "shadow"}}}"#,
    );
    assert!(mixed.covers(Kind::Resource) && mixed.covers(Kind::Prompt));
    // A policy without shadow rules has no candidate.
    assert!(policy(SEED).with_shadow_rules().is_none());
    // An unknown mode is refused where it is written.
    let e = errors("p.json", r#"{"version": "1", "tools": {"t": {"mode": "dry_run"}}}"#);
    let text = e.to_string();
    assert!(text.contains("p.json:1:") && text.contains("dry_run"), "{text}");
}
