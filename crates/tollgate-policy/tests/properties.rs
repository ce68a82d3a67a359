//! Property tests of the policy parser: generated documents, near-valid and not, in every
//! format. Whatever the text, compiling never panics; a rejected document always says
//! where (file:line:column) and what; an accepted one evaluates any call without panicking,
//! with counter keys of bounded length whatever the call's values.

use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate_policy::{Annotations, Call, Format, compile_with_format};

/// Values a policy field might hold: the right ones, the wrong type, the edge cases.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("minute")),
        Just(json!("hour")),
        Just(json!("30s")),
        Just(json!("9999999999999d")),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!("grant")),
        Just(json!(["grant", "argument:ns"])),
        Just(json!("argument:")),
        Just(json!("deny")),
        Just(json!("allow")),
        Just(json!("require_approval")),
        Just(json!("sliding_log")),
        Just(json!("sliding_window")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        ".{0,12}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]
}

fn limit() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop_oneof![
            Just("counter".to_owned()),
            Just("window".to_owned()),
            Just("max".to_owned()),
            Just("scope".to_owned()),
            Just("cost".to_owned()),
            Just("algorithm".to_owned()),
            Just("shared".to_owned()),
            "[a-z]{1,6}",
        ],
        field_value(),
        0..7,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::option::of(field_value()),
        prop::option::of(".{0,20}"),
        prop::option::of(prop::collection::vec(limit(), 0..3)),
        prop::option::of(field_value()),
    )
        .prop_map(|(action, reason, limits, on_store_error)| {
            let mut rule = serde_json::Map::new();
            if let Some(a) = action {
                rule.insert("action".into(), a);
            }
            if let Some(r) = reason {
                rule.insert("reason".into(), r.into());
            }
            if let Some(l) = limits {
                rule.insert("limits".into(), Value::Array(l));
            }
            if let Some(o) = on_store_error {
                rule.insert("on_store_error".into(), o);
            }
            Value::Object(rule)
        })
}

fn tools() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop_oneof![Just("k8s_*".to_owned()), Just("*".to_owned()), "[a-z_*?]{1,10}"],
        rule(),
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn document() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!("1")), field_value()],
        prop::option::of(field_value()),
        tools(),
        prop::option::of(prop::collection::btree_map(
            "[a-z]{1,5}",
            (tools(), prop::option::of(field_value())),
            0..3,
        )),
        prop::option::of(prop::collection::btree_map(
            prop_oneof![
                Just("read_only".to_owned()),
                Just("destructive".to_owned()),
                "[a-z]{1,8}"
            ],
            rule(),
            0..3,
        )),
    )
        .prop_map(|(version, default, tools, grants, classes)| {
            let mut doc = serde_json::Map::new();
            doc.insert("version".into(), version);
            if let Some(d) = default {
                doc.insert("default".into(), d);
            }
            doc.insert("tools".into(), tools);
            if let Some(g) = grants {
                let grants = g
                    .into_iter()
                    .map(|(name, (tools, default))| {
                        let mut grant = serde_json::Map::new();
                        grant.insert("tools".into(), tools);
                        if let Some(d) = default {
                            grant.insert("default".into(), d);
                        }
                        (name, Value::Object(grant))
                    })
                    .collect();
                doc.insert("grants".into(), Value::Object(grants));
            }
            if let Some(c) = classes {
                doc.insert("classes".into(), Value::Object(c.into_iter().collect()));
            }
            Value::Object(doc)
        })
}

/// The document as JSON text; JSON is also valid YAML, which exercises the YAML path.
fn as_text(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_default()
}

fn check(name: &str, text: &str, format: Format) -> Result<(), TestCaseError> {
    match compile_with_format(name, text, format) {
        Err(e) => {
            prop_assert!(!e.errors.is_empty(), "a rejection carries errors");
            let shown = e.to_string();
            prop_assert!(shown.contains(name), "errors name the file: {shown}");
        }
        Ok(compiled) => {
            let long = "v".repeat(100_000);
            let arguments = json!({"ns": long, "n": 1});
            for tool in ["k8s_rollout_pause", "x", "anything"] {
                let call = Call {
                    server: "s",
                    tool,
                    grant: &long,
                    agent: "a",
                    session: &long,
                    arguments: &arguments,
                    annotations: Annotations::default(),
                };
                let rule = compiled
                    .policy
                    .rule_for(call.server, call.tool, call.grant, call.annotations);
                for hit in compiled.policy.counter_hits(rule, &call) {
                    prop_assert!(hit.key.len() < 1024, "key of {} bytes", hit.key.len());
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_documents_compile_or_fail_with_a_location(doc in document(), yaml in any::<bool>()) {
        let format = if yaml { Format::Yaml } else { Format::Json };
        check(if yaml { "p.yaml" } else { "p.json" }, &as_text(&doc), format)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}", format in prop_oneof![Just(Format::Json), Just(Format::Yaml), Just(Format::Toml)]) {
        let _ = compile_with_format("p", &text, format);
    }

    #[test]
    fn truncated_documents_fail_cleanly(doc in document(), cut in 0usize..400) {
        let text = as_text(&doc);
        let cut = text.char_indices().map(|(i, _)| i).take_while(|i| *i <= cut).last().unwrap_or(0);
        check("p.json", &text[..cut], Format::Json)?;
    }
}

/// A counter keyed per `argument:n`, and the key one call's `n` gets.
fn argument_key(json_value: &str) -> String {
    let compiled = tollgate_policy::compile_str(
        "p.json",
        r#"{"version":"1","tools":{"t":{"limits":[{"counter":"c","window":"1m","max":5,"scope":"argument:n"}]}}}"#,
    )
    .expect("policy");
    let arguments: Value = serde_json::from_str(&format!(r#"{{"n": {json_value}}}"#)).expect("json");
    let call = Call {
        server: "s",
        tool: "t",
        grant: "g",
        agent: "g",
        session: "",
        arguments: &arguments,
        annotations: Annotations::default(),
    };
    let rule = compiled.policy.rule_for("s", "t", "g", Annotations::default());
    compiled.policy.counter_hits(rule, &call)[0].key.clone()
}

proptest! {
    /// Every spelling of one number (integer, fraction, exponent, a string holding it) is
    /// one counter key, and different numbers are different keys.
    #[test]
    fn numbers_are_keyed_by_value(a in any::<i32>(), b in any::<i32>(), scale in 0u32..4) {
        let key = argument_key(&a.to_string());
        let divisor = 10f64.powi(scale as i32);
        let spellings = [
            format!("{a}.0"),
            format!("{a}e0"),
            format!("{}e{scale}", f64::from(a) / divisor),
            format!("\"{a}\""),
            format!("\" {a}.000 \""),
        ];
        for spelling in spellings {
            // Only spellings whose decimal text is exact (the scaled form may not be).
            if spelling.contains('e') && !spelling.starts_with(&a.to_string()) {
                let back: f64 = spelling.parse().unwrap_or(f64::NAN);
                if back != f64::from(a) {
                    continue;
                }
            }
            prop_assert_eq!(&argument_key(&spelling), &key, "{}", spelling);
        }
        if a != b {
            prop_assert_ne!(argument_key(&b.to_string()), key);
        }
    }

    /// Doubles: equal values share a key whatever their spelling, different ones do not.
    #[test]
    fn doubles_are_keyed_by_value(x in any::<f64>().prop_filter("finite", |x| x.is_finite()), y in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let key = argument_key(&format!("{x:e}"));
        prop_assert_eq!(&argument_key(&format!("{x}")), &key);
        prop_assert_eq!(&argument_key(&format!("\"{x:E}\"")), &key);
        if x != y {
            prop_assert_ne!(argument_key(&format!("{y:e}")), key);
        }
    }
}
