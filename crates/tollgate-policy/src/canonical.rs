//! Argument values as they appear in counter keys: canonical, so that spellings an upstream
//! may read as one value share one budget.
//!
//! - Numbers by value, as IEEE doubles (as RFC 8785 and JavaScript read them): `1`, `1.0`,
//!   `1e0` and `10e-1` are `1`; `-0` is `0`; integral values are written as integers,
//!   others in their shortest round-trip form (`0.1`, `1e-7` as `0.0000001`). Integers
//!   beyond 2^53 that round to the same double are one value (a shared budget, never a
//!   second one).
//! - A string that is a decimal number (`"1"`, `" 1.0 "`, `"+1"`, `"01"`, `"1e3"`) is that
//!   number: many servers coerce such strings (Python's lax validation, JavaScript).
//! - Other strings in Unicode NFC, so composed and decomposed spellings (`"é"`, `"e\u0301"`)
//!   are one value; otherwise compared exactly: case, whitespace and confusable characters
//!   are significant.
//! - `true`, `false` and `null` are themselves (the string `"true"` is a different value).
//! - Arrays and objects as canonical JSON: members canonical, object keys in NFC and sorted.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Number, Value};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// An argument value in its canonical form: a string (keyed as text) or anything else
/// (keyed as canonical JSON behind a `#`).
pub(crate) enum Canonical<'a> {
    Text(Cow<'a, str>),
    Json(String),
}

pub(crate) fn canonical(value: &Value) -> Canonical<'_> {
    match value {
        Value::String(s) => match numeric_string(s) {
            Some(number) => Canonical::Json(number),
            None => Canonical::Text(nfc(s)),
        },
        other => {
            let mut out = String::new();
            write_json(&mut out, other);
            Canonical::Json(out)
        }
    }
}

fn nfc(s: &str) -> Cow<'_, str> {
    match is_nfc_quick(s.chars()) {
        IsNormalized::Yes => Cow::Borrowed(s),
        _ => Cow::Owned(s.nfc().collect()),
    }
}

/// The canonical JSON text of a value (see the module documentation), as composite values
/// appear in counter keys.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value);
    out
}

/// The exact JSON text of a value, with object keys sorted and nothing else changed: no
/// coercion of strings that spell numbers, no normalization of text, numbers written as
/// they were parsed (`1` and `1.0` differ, and so do integers past 2^53). What approvals
/// are bound to: an operator's yes goes to the arguments they saw, which are the
/// arguments forwarded, and to no other spelling.
pub fn exact_json(value: &Value) -> String {
    let mut out = String::new();
    write_exact(&mut out, value);
    out
}

/// How one kind of JSON text writes its leaves and object keys; arrays and objects (keys
/// sorted) are written alike.
struct Style {
    scalar: fn(&mut String, &Value),
    key: for<'a> fn(&'a str) -> Cow<'a, str>,
}

/// Canonical: numbers by value, numeric strings as numbers, text and keys in NFC.
const CANONICAL: Style = Style {
    scalar: |out, value| match value {
        Value::Number(n) => out.push_str(&number_text(n)),
        Value::String(s) => match numeric_string(s) {
            Some(number) => out.push_str(&number),
            None => write_string(out, &nfc(s)),
        },
        other => write_literal(out, other),
    },
    key: nfc,
};

/// Exact: every leaf and key as it was parsed.
const EXACT: Style = Style {
    scalar: |out, value| match value {
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s),
        other => write_literal(out, other),
    },
    key: as_written,
};

fn as_written(key: &str) -> Cow<'_, str> {
    Cow::Borrowed(key)
}

fn write_exact(out: &mut String, value: &Value) {
    write_styled(out, value, &EXACT);
}

fn write_json(out: &mut String, value: &Value) {
    write_styled(out, value, &CANONICAL);
}

fn write_literal(out: &mut String, value: &Value) {
    match value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        _ => out.push_str("null"),
    }
}

fn write_styled(out: &mut String, value: &Value, style: &Style) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_styled(out, item, style);
            }
            out.push(']');
        }
        Value::Object(members) => {
            // Sorted by the keys' own code points, whatever order the map keeps.
            let mut sorted: Vec<(Cow<'_, str>, &Value)> = members.iter().map(|(k, v)| ((style.key)(k), v)).collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (name, member)) in sorted.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, name);
                out.push(':');
                write_styled(out, member, style);
            }
            out.push('}');
        }
        leaf => (style.scalar)(out, leaf),
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON number's canonical text: the double it reads as.
fn number_text(n: &Number) -> String {
    n.as_f64().map_or_else(|| n.to_string(), double_text)
}

fn double_text(x: f64) -> String {
    if x == 0.0 {
        return "0".into(); // also -0
    }
    // Integral doubles below 2^64 in magnitude read as the integers they are.
    if x.fract() == 0.0 && x.abs() < 18_446_744_073_709_551_616.0 {
        return if x < 0.0 {
            format!("-{}", (-x) as u64)
        } else {
            (x as u64).to_string()
        };
    }
    // Rust prints the shortest digits that round-trip, never in exponent form.
    format!("{x}")
}

/// The canonical number a string spells, if it is a decimal number:
/// optional surrounding ASCII whitespace, an optional sign, digits with an optional
/// fraction (or a fraction alone), an optional exponent.
fn numeric_string(s: &str) -> Option<String> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let b = t.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let whole = digits(i);
    i += whole;
    let mut fraction = 0;
    if b.get(i) == Some(&b'.') {
        fraction = digits(i + 1);
        i += 1 + fraction;
    }
    if whole + fraction == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exponent = digits(j);
        if exponent == 0 {
            return None;
        }
        i = j + exponent;
    }
    if i != b.len() {
        return None;
    }
    let x: f64 = t.parse().ok()?;
    x.is_finite().then(|| double_text(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(v: &Value) -> String {
        match canonical(v) {
            Canonical::Text(t) => format!("text:{t}"),
            Canonical::Json(j) => format!("json:{j}"),
        }
    }

    #[test]
    fn spellings_of_one_number_are_one_value() {
        let one = [
            json!(1),
            serde_json::from_str("1.0").expect("json"),
            serde_json::from_str("1e0").expect("json"),
            serde_json::from_str("10e-1").expect("json"),
            json!("1"),
            json!(" 1.0 "),
            json!("+1"),
            json!("01"),
            json!("1E0"),
        ];
        for v in &one {
            assert_eq!(key(v), "json:1", "{v}");
        }
        assert_eq!(key(&json!(-0.0)), "json:0");
        assert_eq!(key(&json!("-0")), "json:0");
        assert_eq!(key(&json!(0.1)), "json:0.1");
        assert_eq!(key(&json!("0.10")), "json:0.1");
        assert_eq!(key(&json!(-2)), "json:-2");
        assert_eq!(key(&json!("-2.0")), "json:-2");
        assert_eq!(
            key(&json!(9_007_199_254_740_993u64)),
            "json:9007199254740992",
            "as a double"
        );
        assert_eq!(key(&json!(1e21)), "json:1000000000000000000000");
    }

    #[test]
    fn strings_that_are_not_numbers_stay_strings() {
        for s in [
            "", "1.2.3", "1e", "e1", ".", "+", "0x10", "1_000", "inf", "NaN", "1e999", "١",
        ] {
            assert!(matches!(canonical(&json!(s)), Canonical::Text(_)), "{s:?}");
        }
        assert_eq!(key(&json!("true")), "text:true");
        assert_eq!(key(&json!(true)), "json:true");
        assert_eq!(key(&json!(null)), "json:null");
    }

    #[test]
    fn strings_compare_in_nfc() {
        assert_eq!(key(&json!("caf\u{e9}")), key(&json!("cafe\u{301}")));
        assert_ne!(key(&json!("Kube-System")), key(&json!("kube-system")));
    }

    #[test]
    fn composite_values_are_canonical_json() {
        let a: Value = serde_json::from_str(r#"{"b": 1.0, "a": ["x", "2"], "caf\u00e9": null}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"cafe\u0301": null, "a": ["x", 2e0], "b": 1}"#).expect("json");
        assert_eq!(key(&a), key(&b));
        assert_eq!(key(&a), "json:{\"a\":[\"x\",2],\"b\":1,\"café\":null}");
    }

    #[test]
    fn exact_json_sorts_keys_and_changes_nothing_else() {
        let a: Value =
            serde_json::from_str(r#"{"b":"0100.000","a":12345678901234567890,"c":[1.0,"e\u0301"]}"#).unwrap();
        assert_eq!(
            exact_json(&a),
            "{\"a\":12345678901234567890,\"b\":\"0100.000\",\"c\":[1.0,\"e\u{301}\"]}",
            "no NFC, no coercion, numbers as written"
        );
        let spellings = [
            r#"{"to":"12345678901234567890","amount":"100"}"#,
            r#"{"to":"12345678901234567891","amount":"100"}"#,
            r#"{"to":"12345678901234567890","amount":"0100.000"}"#,
            r#"{"to":"12345678901234567890","amount":100}"#,
            r#"{"to":"12345678901234567890","amount":"100 "}"#,
            r#"{"to":"12345678901234567890","amount":"１００"}"#,
        ];
        let texts: Vec<String> = spellings
            .iter()
            .map(|s| exact_json(&serde_json::from_str(s).unwrap()))
            .collect();
        for (i, a) in texts.iter().enumerate() {
            for b in &texts[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Key order is not part of the call.
        let reordered: Value = serde_json::from_str(r#"{"amount":"100","to":"12345678901234567890"}"#).unwrap();
        assert_eq!(exact_json(&reordered), texts[0]);
        // Integers past 2^53 stay distinct.
        let big = |n: &str| exact_json(&serde_json::from_str(&format!(r#"{{"n":{n}}}"#)).unwrap());
        assert_ne!(big("9007199254740993"), big("9007199254740992"));
    }
}
