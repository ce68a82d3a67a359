//! JSON-RPC 2.0 as MCP uses it: parsing messages strictly, classifying them once, and
//! writing error answers.
//!
//! Parsing is strict because the edge decides on what it parsed and an upstream acts on
//! what it parses: a message two parsers could read differently (a duplicate key, a
//! case-variant of a member name, a fractional id) is refused rather than guessed at.

use std::fmt;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use crate::method::McpMethod;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Tollgate refused the call (with `edge.refusal = "error"`).
pub const REFUSED: i64 = -32001;
/// The agent's key or token was missing or wrong (HTTP 401). Not -32002, which MCP uses for
/// "resource not found".
pub const UNAUTHORIZED: i64 = -32011;
/// The upstream MCP server could not be reached or failed.
pub const UPSTREAM_ERROR: i64 = -32003;

/// The members of a JSON-RPC message; a key differing from one of them only in case is
/// refused, since a lenient upstream might read it as the member.
const ENVELOPE_MEMBERS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];

/// Longest method name accepted (MCP's are far shorter); it names spans and log lines.
const MAX_METHOD_BYTES: usize = 128;
/// Longest string id accepted; ids are echoed in spans.
const MAX_ID_BYTES: usize = 256;

/// Parses one JSON text, refusing duplicate object keys at any depth (serde_json alone keeps
/// the last, other parsers keep the first). Nesting is bounded by serde_json's recursion
/// limit (128).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = deserializer.deserialize_any(StrictVisitor)?;
    deserializer.end()?;
    Ok(value)
}

/// Refuses a number the edge could not forward exactly: parsed, it would become another
/// value (an integer past 64 bits, a fraction with more digits than a double holds), and
/// the upstream would act on a number the agent did not send. Such numbers belong in
/// strings. A linear scan of the text, outside strings.
fn exact_numbers(bytes: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                // Not UTF-8 or not a number: the parser names the error.
                let Ok(token) = std::str::from_utf8(&bytes[start..i]) else {
                    continue;
                };
                if !number_is_exact(token) {
                    return Err(format!(
                        "the number {} cannot be forwarded exactly (it is beyond 64-bit integers or \
                         double precision): send it as a string",
                        printable(token, 64)
                    ));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether a JSON number token reads as exactly the value serde_json keeps.
fn number_is_exact(token: &str) -> bool {
    if !token.contains(['.', 'e', 'E']) {
        return token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok() || token.parse::<f64>().is_err();
    }
    match token.parse::<f64>() {
        Ok(x) if x.is_finite() => decimal(token) == decimal(&format!("{x:e}")),
        // Out of range or malformed: the parser refuses it.
        _ => true,
    }
}

/// A decimal number's sign, significant digits and the power of ten of its point, so that
/// `0.10`, `1e-1` and `1.0E-1` compare equal; zero (of either sign) is `(false, "", 0)`.
fn decimal(text: &str) -> (bool, String, i64) {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut point = int.len() as i64 + exponent;
    let digits = format!("{int}{frac}");
    let trimmed = digits.trim_start_matches('0');
    point -= (digits.len() - trimmed.len()) as i64;
    let significant = trimmed.trim_end_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    (negative, significant.to_owned(), point)
}

/// Parses an agent's message: strictly (see [`parse_strict`]), and refusing numbers that
/// would not be forwarded as sent (see [`exact_numbers`]). Upstream answers are parsed with
/// [`parse_strict`] alone: rounding one of their numbers changes what the agent reads, not
/// what a server acts on.
pub fn parse_request(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    exact_numbers(bytes).map_err(<serde_json::Error as de::Error>::custom)?;
    parse_strict(bytes)
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(
                    "duplicate object key (Tollgate refuses messages that parsers could read differently)",
                ));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// One incoming JSON-RPC message, classified once: its kind, and its MCP method as a type
/// (`name` is the method name as sent, for spans and forwarding).
#[derive(Debug, PartialEq)]
pub enum Message<'a> {
    Request {
        id: &'a Value,
        method: McpMethod,
        name: &'a str,
        params: Option<&'a Value>,
    },
    Notification {
        method: McpMethod,
        name: &'a str,
    },
    Response,
}

impl<'a> Message<'a> {
    /// The id of a request (responses' ids answer the server, not the agent).
    pub fn id(&self) -> Option<&'a Value> {
        match self {
            Message::Request { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Checks the JSON-RPC 2.0 shape of one message from an agent.
pub fn classify(value: &Value) -> Result<Message<'_>, String> {
    let Some(object) = value.as_object() else {
        return Err("a JSON-RPC message must be an object".into());
    };
    for key in object.keys() {
        if let Some(member) = ENVELOPE_MEMBERS
            .iter()
            .find(|m| key.eq_ignore_ascii_case(m) && key != *m)
        {
            return Err(format!(
                "a member differs from \"{member}\" only in case; JSON-RPC member names are case-sensitive"
            ));
        }
    }
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("missing \"jsonrpc\": \"2.0\"".into());
    }
    let id = object.get("id");
    if let Some(id) = id
        && !valid_id(id)
    {
        return Err(format!(
            "\"id\" must be an integer or a string of at most {MAX_ID_BYTES} bytes"
        ));
    }
    if let Some(Value::String(method)) = object.get("method")
        && (method.is_empty() || method.len() > MAX_METHOD_BYTES || !method.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(format!(
            "\"method\" must be 1 to {MAX_METHOD_BYTES} visible ASCII characters"
        ));
    }
    match (object.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => {
            let params = object.get("params");
            if let Some(params) = params {
                check_params(params)?;
            }
            Ok(Message::Request {
                id,
                method: McpMethod::of(method),
                name: method,
                params,
            })
        }
        (Some(Value::String(method)), None) => {
            if !method.starts_with("notifications/") {
                return Err(format!(
                    "a message without an \"id\" is a notification, and MCP notifications are named \
                     notifications/*; send {} as a request with an id",
                    printable(method, 64)
                ));
            }
            Ok(Message::Notification {
                method: McpMethod::of(method),
                name: method,
            })
        }
        (Some(_), _) => Err("\"method\" must be a string".into()),
        (None, Some(_)) if object.contains_key("result") || object.contains_key("error") => Ok(Message::Response),
        (None, _) => Err("not a request, notification or response: no \"method\", \"result\" or \"error\"".into()),
    }
}

/// MCP ids are strings or integers; a fractional or out-of-range number could be read as
/// another id by the upstream.
pub fn valid_id(id: &Value) -> bool {
    match id {
        Value::String(s) => s.len() <= MAX_ID_BYTES,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

/// `params` must be an object (or array) whose keys do not collide when case is ignored.
fn check_params(params: &Value) -> Result<(), String> {
    match params {
        Value::Object(map) => {
            let mut seen: Vec<String> = map.keys().map(|k| k.to_ascii_lowercase()).collect();
            seen.sort_unstable();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return Err("two keys of \"params\" differ only in case".into());
            }
            Ok(())
        }
        Value::Array(_) => Ok(()),
        _ => Err("\"params\" must be an object".into()),
    }
}

/// Untrusted text as it may appear in a message or log: at most `max` characters, control
/// characters and quotes escaped.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).flat_map(char::escape_default).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

pub fn error_body(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error})
}

pub fn error_response(
    status: StatusCode,
    id: Option<&Value>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Response {
    json_response(status, &error_body(id, code, message, data))
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Whether a JSON answer to request `id` is not that request's response: a request or
/// notification, a batch, no id, or another id (an error with a null id, for a request the
/// upstream could not read, is a response).
pub(crate) fn answers_another(answer: &Value, id: &Value) -> bool {
    if answer.is_array() || answer.get("method").is_some() {
        return true;
    }
    match answer.get("id") {
        Some(Value::Null) => answer.get("error").is_none(),
        Some(answered) => answered != id,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_four_shapes() {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}});
        assert!(matches!(
            classify(&req),
            Ok(Message::Request {
                method: McpMethod::ToolsCall,
                name: "tools/call",
                ..
            })
        ));
        assert!(matches!(
            classify(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Ok(Message::Notification {
                method: McpMethod::NotificationsInitialized,
                ..
            })
        ));
        assert!(matches!(
            classify(&json!({"jsonrpc": "2.0", "id": "a", "result": {}})),
            Ok(Message::Response)
        ));
        assert!(classify(&json!({"jsonrpc": "1.0", "id": 1, "method": "x"})).is_err());
        assert!(classify(&json!({"jsonrpc": "2.0", "id": [1], "method": "x"})).is_err());
        assert!(classify(&json!({"jsonrpc": "2.0", "id": 1, "method": 7})).is_err());
        assert!(classify(&json!({"jsonrpc": "2.0", "id": 1})).is_err());
        assert!(classify(&json!("hello")).is_err());
    }

    #[test]
    fn refuses_what_parsers_could_read_differently() {
        let dup = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"secret","name":"ok"}}"#;
        assert!(parse_strict(dup).is_err());
        assert!(parse_strict(br#"{"a":{"b":[{"c":1,"c":2}]}}"#).is_err());
        assert!(parse_strict(br#"{"a":1} {"b":2}"#).is_err(), "trailing data");
        let case = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "Method": "ping"});
        assert!(classify(&case).is_err());
        let params = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "Name": "b"}});
        assert!(classify(&params).is_err());
        for id in [json!(1.5), json!(1.0), json!(1e30), json!(null), json!(true)] {
            let m = json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
            assert!(classify(&m).is_err(), "id {id}");
        }
        for method in ["tools/call", "tools/list", "ping"] {
            let m = json!({"jsonrpc": "2.0", "method": method});
            assert!(classify(&m).is_err(), "notification {method}");
        }
    }

    #[test]
    fn printable_escapes_and_truncates() {
        assert_eq!(printable("a\nb\"", 10), "a\\nb\\\"");
        assert_eq!(printable("abcdef", 3), "abc…");
    }

    /// Found by the hostile review of issue 23: integers past 64 bits were rounded to a
    /// double and forwarded as another number.
    #[test]
    fn numbers_that_would_change_are_refused() {
        for exact in [
            "1",
            "-1",
            "0",
            "-0",
            "1.0",
            "0.1",
            "1e-7",
            "1E3",
            "1.5e+10",
            "18446744073709551615",
            "-9223372036854775808",
            "123456789.125",
            "0.30000000000000004",
        ] {
            assert!(
                parse_request(format!(r#"{{"n":{exact}}}"#).as_bytes()).is_ok(),
                "{exact}"
            );
        }
        for changed in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234",
            "1.00000000000000000001",
            "0.1000000000000000055511151231257827",
        ] {
            let refused = parse_request(format!(r#"{{"n":[{changed}]}}"#).as_bytes()).expect_err(changed);
            assert!(refused.to_string().contains("send it as a string"), "{refused}");
        }
        // Digits inside strings are text.
        assert!(parse_request(br#"{"n":"123456789012345678901234","m":"a\"1e999"}"#).is_ok());
    }
}
