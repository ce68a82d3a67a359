//! Which MCP revision a request speaks, from its own words, and the routing headers of the
//! 2026-07-28 revision (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`).
//!
//! A 2026-07-28 request is stateless: it carries its revision and the client's capabilities
//! in `params._meta`, and repeats its method and name in headers that intermediaries may
//! route on. Those headers must say what the body says: a request whose headers disagree with
//! its body is refused before anything is decided (an upstream or a proxy routing on the
//! header would otherwise act on something other than what was decided). What the edge
//! forwards is derived from the message it decided, never copied from the client.

// Refusals are axum responses, made once per refused request.
#![allow(clippy::result_large_err)]

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::jsonrpc;

/// The stateless revisions the edge speaks.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];
/// The revisions of the session era (`initialize`, `Mcp-Session-Id`).
pub const SESSION_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// `params._meta` keys of a 2026-07-28 request.
const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";

/// A header disagrees with the body (MCP 2026-07-28 `HeaderMismatch`).
pub const HEADER_MISMATCH: i64 = -32020;
/// A revision the endpoint does not speak (MCP 2026-07-28 `UnsupportedProtocolVersion`).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";

/// The body field `Mcp-Name` repeats, for the methods that name something.
fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// The revision a body declares in its `params._meta`, if it declares one.
fn declared_version(message: &Value) -> Option<&Value> {
    message.get("params")?.get("_meta")?.get(PROTOCOL_VERSION_KEY)
}

/// The one value of header `name`; `Err` when it is given more than once or is not text.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(format!("the {name} header is given more than once"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| format!("the {name} header is not visible ASCII"))
}

/// `Mcp-Name` as written: visible ASCII as it is, anything else as the Base64 sentinel
/// `=?base64?…?=` of its UTF-8.
fn encode_name(name: &str) -> String {
    let looks_like_sentinel = name.starts_with("=?") && name.ends_with("?=");
    let plain = name.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && !looks_like_sentinel;
    if plain {
        name.to_owned()
    } else {
        format!("=?base64?{}?=", STANDARD.encode(name.as_bytes()))
    }
}

/// What an `Mcp-Name` header says; `None` for a sentinel that does not decode to UTF-8.
fn decode_name(header: &str) -> Option<String> {
    match header
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(payload) => STANDARD
            .decode(payload)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(header.to_owned()),
    }
}

fn refused(code: i64, id: Option<&Value>, message: &str, data: Option<Value>) -> Response {
    jsonrpc::error_response(StatusCode::BAD_REQUEST, id, code, message, data)
}

fn unsupported(id: Option<&Value>, requested: &str, stateless: bool) -> Response {
    let supported: Vec<&str> = if stateless {
        MODERN_VERSIONS.iter().chain(SESSION_VERSIONS.iter()).copied().collect()
    } else {
        SESSION_VERSIONS.to_vec()
    };
    refused(
        UNSUPPORTED_PROTOCOL_VERSION,
        id,
        &format!(
            "unsupported MCP protocol version \"{}\": this endpoint speaks {}",
            jsonrpc::printable(requested, 64),
            supported.join(", ")
        ),
        Some(json!({"supported": supported, "requested": jsonrpc::printable(requested, 64)})),
    )
}

/// Checks a request's protocol headers against its body, before anything else reads it.
/// `stateless` says whether the endpoint serves 2026-07-28 requests (the per-server one
/// does); where it does not, their headers are still checked, and the request is handled as
/// before.
pub(crate) fn check(headers: &HeaderMap, value: &Value, stateless: bool) -> Result<(), Response> {
    let mismatch = |id: Option<&Value>, text: String| refused(HEADER_MISMATCH, id, &text, None);
    let version_header = single(headers, VERSION_HEADER).map_err(|e| mismatch(None, e))?;
    let method_header = single(headers, METHOD_HEADER).map_err(|e| mismatch(None, e))?;
    let name_header = single(headers, NAME_HEADER).map_err(|e| mismatch(None, e))?;
    let Value::Object(_) = value else {
        // A batch: the 2026-07-28 revision has none.
        let modern = version_header.is_some_and(|v| MODERN_VERSIONS.contains(&v))
            || value
                .as_array()
                .is_some_and(|items| items.iter().any(|m| declared_version(m).is_some()));
        return if modern {
            Err(refused(
                jsonrpc::INVALID_REQUEST,
                None,
                "MCP 2026-07-28 has no batches: send one request per POST",
                None,
            ))
        } else {
            Ok(())
        };
    };
    let id = value.get("id");
    let method = value.get("method").and_then(Value::as_str);
    match declared_version(value) {
        Some(declared) => {
            let Some(declared) = declared.as_str() else {
                return Err(refused(
                    jsonrpc::INVALID_PARAMS,
                    id,
                    &format!("params._meta[\"{PROTOCOL_VERSION_KEY}\"] must be a string"),
                    None,
                ));
            };
            if version_header != Some(declared) {
                return Err(mismatch(
                    id,
                    "the MCP-Protocol-Version header does not match the protocol version in params._meta".into(),
                ));
            }
            if method_header != method {
                return Err(mismatch(
                    id,
                    "the Mcp-Method header does not match the body's method".into(),
                ));
            }
            if let Some(field) = method.and_then(name_field) {
                let named = value.get("params").and_then(|p| p.get(field)).and_then(Value::as_str);
                if named.is_some() && name_header.and_then(decode_name).as_deref() != named {
                    return Err(mismatch(
                        id,
                        format!("the Mcp-Name header does not match the body's params.{field}"),
                    ));
                }
            }
            if !MODERN_VERSIONS.contains(&declared) {
                return if stateless {
                    Err(unsupported(id, declared, true))
                } else {
                    Ok(())
                };
            }
            let has_capabilities = value
                .pointer("/params/_meta")
                .and_then(|m| m.get(CLIENT_CAPABILITIES_KEY))
                .is_some();
            if stateless && !has_capabilities {
                return Err(refused(
                    jsonrpc::INVALID_PARAMS,
                    id,
                    &format!("params._meta lacks \"{CLIENT_CAPABILITIES_KEY}\", which a 2026-07-28 request carries"),
                    None,
                ));
            }
            Ok(())
        }
        None => {
            // Headers of the new revision without its envelope: say which is wrong.
            if let Some(header) = method_header
                && Some(header) != method
            {
                return Err(mismatch(
                    id,
                    "the Mcp-Method header does not match the body's method".into(),
                ));
            }
            match version_header {
                None => Ok(()),
                Some(v) if SESSION_VERSIONS.contains(&v) => Ok(()),
                Some(v) if MODERN_VERSIONS.contains(&v) && stateless => Err(refused(
                    jsonrpc::INVALID_PARAMS,
                    id,
                    &format!(
                        "a {v} request carries its protocol version and client capabilities in params._meta \
                         (\"{PROTOCOL_VERSION_KEY}\", \"{CLIENT_CAPABILITIES_KEY}\")"
                    ),
                    None,
                )),
                Some(v) if MODERN_VERSIONS.contains(&v) => Ok(()),
                Some(v) => Err(unsupported(id, v, stateless)),
            }
        }
    }
}

/// The `params._meta` of a request the edge makes itself in the stateless revision.
pub(crate) fn envelope() -> Value {
    json!({PROTOCOL_VERSION_KEY: MODERN_VERSIONS[0], CLIENT_CAPABILITIES_KEY: {}})
}

/// Whether `message` is a request of a stateless revision this edge speaks.
pub(crate) fn is_stateless(message: &Value) -> bool {
    declared_version(message)
        .and_then(Value::as_str)
        .is_some_and(|v| MODERN_VERSIONS.contains(&v))
}

/// The routing headers of the message the edge forwards, derived from it: for a 2026-07-28
/// request its revision, method and name; none for the session era (whose
/// `MCP-Protocol-Version` the edge passes on as the client sent it).
pub(crate) fn derived_headers(message: &Value) -> Vec<(HeaderName, HeaderValue)> {
    let Some(version) = declared_version(message).and_then(Value::as_str) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut add = |name: &'static str, text: &str| {
        if let Ok(value) = HeaderValue::from_str(text) {
            out.push((HeaderName::from_static(name), value));
        }
    };
    add(VERSION_HEADER, version);
    if let Some(method) = message.get("method").and_then(Value::as_str) {
        add(METHOD_HEADER, method);
        if let Some(named) = name_field(method)
            .and_then(|field| message.get("params")?.get(field))
            .and_then(Value::as_str)
        {
            add(NAME_HEADER, &encode_name(named));
        }
    }
    out
}

/// A result the edge makes itself (a refusal) for `request`: a 2026-07-28 request's results
/// say they are complete (`resultType`), as that revision requires.
pub(crate) fn answer_for(request: &Value, mut body: Value) -> Value {
    if declared_version(request).is_some()
        && let Some(result) = body.get_mut("result").and_then(Value::as_object_mut)
    {
        result.insert("resultType".into(), json!("complete"));
    }
    body
}

/// The `Mcp-Param-*` headers a tool declares: for each annotated argument (reached from the
/// schema's root through `properties` only), its path and the header's token.
pub(crate) type ParamHeaders = Vec<(Vec<String>, String)>;

const PARAM_PREFIX: &str = "mcp-param-";
/// Bounds on what a tool may declare: headers, path depth, token length.
const MAX_PARAM_HEADERS: usize = 32;
const MAX_PARAM_DEPTH: usize = 8;
const MAX_TOKEN_BYTES: usize = 64;

/// The `Mcp-Param-*` headers an input schema declares (`x-mcp-header` on string, integer or
/// boolean properties, tokens unique regardless of case); what does not fit the rules is left
/// out.
pub(crate) fn param_headers_of(schema: &Value) -> ParamHeaders {
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut ParamHeaders) {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, property) in properties {
            if out.len() >= MAX_PARAM_HEADERS || path.len() >= MAX_PARAM_DEPTH {
                return;
            }
            path.push(key.clone());
            if let Some(token) = property.get("x-mcp-header").and_then(Value::as_str) {
                let typed = matches!(
                    property.get("type").and_then(Value::as_str),
                    Some("string" | "integer" | "boolean")
                );
                let token_ok = !token.is_empty()
                    && token.len() <= MAX_TOKEN_BYTES
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                let unique = !out.iter().any(|(_, t)| t.eq_ignore_ascii_case(token));
                if typed && token_ok && unique {
                    out.push((path.clone(), token.to_owned()));
                }
            }
            walk(property, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

/// An argument as its header carries it: booleans and integers as text, strings as they
/// are; anything else has no header form.
fn rendered(value: &Value) -> Option<String> {
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn argument_at<'v>(arguments: Option<&'v Value>, path: &[String]) -> Option<&'v Value> {
    let mut node = arguments?;
    for key in path {
        node = node.get(key)?;
    }
    (!node.is_null()).then_some(node)
}

/// Checks the agent's `Mcp-Param-*` headers of a 2026-07-28 `tools/call` against its
/// arguments, for the headers the tool declares: present together and equal (after the
/// Base64 sentinel is decoded), or absent together.
pub(crate) fn check_params(headers: &HeaderMap, message: &Value, declared: &ParamHeaders) -> Result<(), String> {
    if declared_version(message).is_none() {
        return Ok(());
    }
    let arguments = message.get("params").and_then(|p| p.get("arguments"));
    for (path, token) in declared {
        let name = format!("{PARAM_PREFIX}{}", token.to_ascii_lowercase());
        let header = single(headers, &name)?;
        let argument = argument_at(arguments, path).and_then(rendered);
        let agrees = match (header, &argument) {
            (None, None) => true,
            (Some(h), Some(a)) => decode_name(h).as_deref() == Some(a.as_str()),
            _ => false,
        };
        if !agrees {
            return Err(format!(
                "the Mcp-Param-{token} header does not match the argument {} it mirrors",
                path.join(".")
            ));
        }
    }
    Ok(())
}

/// The agent's headers as they are forwarded with `message`: its own `Mcp-Method`,
/// `Mcp-Name` and `Mcp-Param-*` removed, those derived from the message (and, for a
/// `tools/call`, the `declared` parameters' headers) in their place.
pub(crate) fn forwarded_headers(
    agent: &HeaderMap,
    message: &Value,
    declared: Option<&ParamHeaders>,
) -> Option<HeaderMap> {
    let mut derived = derived_headers(message);
    if !derived.is_empty()
        && let Some(declared) = declared
    {
        let arguments = message.get("params").and_then(|p| p.get("arguments"));
        for (path, token) in declared {
            let Some(value) = argument_at(arguments, path).and_then(rendered) else {
                continue;
            };
            let name = HeaderName::try_from(format!("{PARAM_PREFIX}{}", token.to_ascii_lowercase()));
            if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(&encode_name(&value))) {
                derived.push((name, value));
            }
        }
    }
    let agent_params = agent.keys().any(|k| k.as_str().starts_with(PARAM_PREFIX));
    if derived.is_empty() && !agent_params && !agent.contains_key(METHOD_HEADER) && !agent.contains_key(NAME_HEADER) {
        return None;
    }
    let mut headers = agent.clone();
    headers.remove(METHOD_HEADER);
    headers.remove(NAME_HEADER);
    if !derived.is_empty() {
        // A stateless request has no session: an id the agent sends along is nobody's.
        headers.remove("mcp-session-id");
    }
    let params: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(PARAM_PREFIX))
        .cloned()
        .collect();
    for name in params {
        headers.remove(name);
    }
    for (name, value) in derived {
        headers.insert(name, value);
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn modern(method: &str, params: Value) -> Value {
        let mut params = params;
        params["_meta"] = json!({PROTOCOL_VERSION_KEY: "2026-07-28", CLIENT_CAPABILITIES_KEY: {}});
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    }

    fn code(result: Result<(), Response>) -> Option<u16> {
        result.err().map(|r| r.status().as_u16())
    }

    #[test]
    fn headers_must_say_what_the_body_says() {
        let call = modern("tools/call", json!({"name": "pay", "arguments": {}}));
        let good = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "pay"),
        ]);
        assert!(check(&good, &call, true).is_ok());
        for bad in [
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "pay"),
            ],
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "read"),
            ],
            vec![
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "pay"),
            ],
            vec![("mcp-method", "tools/call"), ("mcp-name", "pay")],
            vec![("mcp-protocol-version", "2026-07-28"), ("mcp-name", "pay")],
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "pay"),
            ],
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?cmVhZA==?="),
            ],
        ] {
            assert_eq!(code(check(&headers(&bad), &call, true)), Some(400), "{bad:?}");
        }
        // The Base64 sentinel names the same thing as the plain name.
        let sentinel = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?cGF5?="),
        ]);
        assert!(check(&sentinel, &call, true).is_ok());
    }

    #[test]
    fn versions_are_checked_and_the_session_era_is_unchanged() {
        let legacy = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert!(check(&HeaderMap::new(), &legacy, true).is_ok());
        assert!(check(&headers(&[("mcp-protocol-version", "2025-06-18")]), &legacy, true).is_ok());
        let unknown = check(&headers(&[("mcp-protocol-version", "1999-01-01")]), &legacy, true);
        assert_eq!(code(unknown), Some(400));
        let huge = "9".repeat(100_000);
        assert_eq!(
            code(check(&headers(&[("mcp-protocol-version", &huge)]), &legacy, true)),
            Some(400)
        );
        // The new revision's header without its envelope.
        assert_eq!(
            code(check(
                &headers(&[("mcp-protocol-version", "2026-07-28")]),
                &legacy,
                true
            )),
            Some(400)
        );
        // A later revision declared in the body.
        let mut later = modern("tools/list", json!({}));
        later["params"]["_meta"][PROTOCOL_VERSION_KEY] = json!("2027-01-01");
        let later_headers = headers(&[("mcp-protocol-version", "2027-01-01"), ("mcp-method", "tools/list")]);
        assert_eq!(code(check(&later_headers, &later, true)), Some(400));
        // No batches in the new revision.
        let batch = json!([modern("tools/list", json!({}))]);
        assert_eq!(code(check(&HeaderMap::new(), &batch, true)), Some(400));
    }

    #[test]
    fn forwarded_headers_come_from_the_message() {
        let call = modern("tools/call", json!({"name": "café", "arguments": {}}));
        let agent = headers(&[("mcp-method", "tools/list"), ("mcp-name", "other"), ("accept", "*/*")]);
        let forwarded = forwarded_headers(&agent, &call, None).expect("derived");
        assert_eq!(
            forwarded.get("mcp-method").and_then(|v| v.to_str().ok()),
            Some("tools/call")
        );
        assert_eq!(
            forwarded.get("mcp-name").and_then(|v| v.to_str().ok()),
            Some(format!("=?base64?{}?=", STANDARD.encode("café")).as_str())
        );
        assert_eq!(
            forwarded.get("mcp-protocol-version").and_then(|v| v.to_str().ok()),
            Some("2026-07-28")
        );
        assert_eq!(forwarded.get("accept").and_then(|v| v.to_str().ok()), Some("*/*"));
        let legacy = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let stripped = forwarded_headers(&agent, &legacy, None).expect("stripped");
        assert!(stripped.get("mcp-method").is_none() && stripped.get("mcp-name").is_none());
        assert!(forwarded_headers(&HeaderMap::new(), &legacy, None).is_none());
    }

    #[test]
    fn param_headers_mirror_the_decided_arguments() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "ratio": {"type": "number", "x-mcp-header": "Ratio"},
            "nested": {"type": "object", "properties": {"flag": {"type": "boolean", "x-mcp-header": "Flag"}}},
            "again": {"type": "string", "x-mcp-header": "region"},
            "bad": {"type": "string", "x-mcp-header": "a b"}}});
        let declared = param_headers_of(&schema);
        let tokens: Vec<&str> = declared.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(tokens.len(), 3, "{tokens:?}");
        assert!(tokens.contains(&"Count") && tokens.contains(&"Flag") && !tokens.contains(&"Ratio"));
        let region = if tokens.contains(&"Region") { "Region" } else { "region" };
        let call = modern(
            "tools/call",
            json!({"name": "t", "arguments": {"region": "eu-1", "again": "eu-1", "count": 3, "nested": {"flag": true}}}),
        );
        let mut agent = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "t"),
            ("mcp-param-count", "3"),
            ("mcp-param-flag", "true"),
        ]);
        agent.insert(
            HeaderName::try_from(format!("mcp-param-{}", region.to_ascii_lowercase())).expect("name"),
            HeaderValue::from_static("eu-1"),
        );
        assert!(check_params(&agent, &call, &declared).is_ok());
        agent.insert("mcp-param-count", HeaderValue::from_static("4"));
        assert!(
            check_params(&agent, &call, &declared).is_err(),
            "a header that disagrees"
        );
        agent.remove("mcp-param-count");
        assert!(
            check_params(&agent, &call, &declared).is_err(),
            "an argument without its header"
        );
        agent.insert("mcp-param-count", HeaderValue::from_static("3"));
        agent.insert("mcp-param-smuggled", HeaderValue::from_static("x"));
        let forwarded = forwarded_headers(&agent, &call, Some(&declared)).expect("derived");
        assert_eq!(
            forwarded.get("mcp-param-count").and_then(|v| v.to_str().ok()),
            Some("3")
        );
        assert_eq!(
            forwarded.get("mcp-param-flag").and_then(|v| v.to_str().ok()),
            Some("true")
        );
        assert!(
            forwarded.get("mcp-param-smuggled").is_none(),
            "undeclared headers are not passed on"
        );
    }
}
