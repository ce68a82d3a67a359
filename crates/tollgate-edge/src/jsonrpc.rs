//! JSON-RPC 2.0 as MCP uses it: classifying incoming messages and writing error answers.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Tollgate refused the call (with `edge.refusal = "error"`).
pub const REFUSED: i64 = -32001;
/// The agent's key was missing or wrong.
pub const UNAUTHORIZED: i64 = -32002;
/// The upstream MCP server could not be reached or failed.
pub const UPSTREAM_ERROR: i64 = -32003;

/// One incoming JSON-RPC message, as far as the edge needs to know it.
#[derive(Debug)]
pub enum Message<'a> {
    Request {
        id: &'a Value,
        method: &'a str,
        params: Option<&'a Value>,
    },
    Notification,
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

/// Checks the JSON-RPC 2.0 shape of one message.
pub fn classify(value: &Value) -> Result<Message<'_>, String> {
    let Some(object) = value.as_object() else {
        return Err("a JSON-RPC message must be an object".into());
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("missing \"jsonrpc\": \"2.0\"".into());
    }
    let id = object.get("id");
    if let Some(id) = id
        && !(id.is_string() || id.is_number())
    {
        return Err("\"id\" must be a string or a number".into());
    }
    match (object.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => Ok(Message::Request {
            id,
            method,
            params: object.get("params"),
        }),
        (Some(Value::String(_)), None) => Ok(Message::Notification),
        (Some(_), _) => Err("\"method\" must be a string".into()),
        (None, Some(_)) if object.contains_key("result") || object.contains_key("error") => Ok(Message::Response),
        (None, _) => Err("not a request, notification or response: no \"method\", \"result\" or \"error\"".into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_four_shapes() {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}});
        assert!(matches!(
            classify(&req),
            Ok(Message::Request {
                method: "tools/call",
                ..
            })
        ));
        assert!(matches!(
            classify(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Ok(Message::Notification)
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
}
