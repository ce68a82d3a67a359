//! Ids that name an upstream, on the aggregated endpoint `/mcp`: a request an upstream
//! sends to the client (sampling, elicitation, roots, ping) gets the id `{prefix}~{id}`, so
//! that the client's answer (or its `notifications/cancelled`) can be routed back to that
//! upstream, and to no other.

use serde_json::{Map, Value};

/// Marks a message an upstream sends to the client: a request's id (and the id a server's
/// `notifications/cancelled` names) becomes `{prefix}~{id}`. `true` when the message was one.
pub(crate) fn mark_server_message(object: &mut Map<String, Value>, prefix: &str) -> bool {
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return false;
    };
    let cancelled = method == "notifications/cancelled";
    let mut changed = false;
    if let Some(id) = object.get_mut("id").filter(|id| !id.is_null()) {
        *id = mark(prefix, id);
        changed = true;
    }
    if cancelled && let Some(id) = object.get_mut("params").and_then(|p| p.get_mut("requestId")) {
        *id = mark(prefix, id);
        changed = true;
    }
    changed
}

fn mark(prefix: &str, id: &Value) -> Value {
    Value::String(format!("{prefix}~{id}"))
}

/// The upstream prefix and original id of a marked id.
pub(crate) fn unmark(id: &Value) -> Option<(&str, Value)> {
    let (prefix, original) = id.as_str()?.split_once('~')?;
    let original: Value = serde_json::from_str(original).ok()?;
    (original.is_string() || original.is_number()).then_some((prefix, original))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn marked_ids_name_their_upstream_and_round_trip() {
        let mut request = json!({"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage"});
        assert!(mark_server_message(request.as_object_mut().expect("object"), "k8s"));
        assert_eq!(request["id"], json!("k8s~5"));
        assert_eq!(unmark(&request["id"]), Some(("k8s", json!(5))));
        let mut answer = json!({"jsonrpc": "2.0", "id": 5, "result": {}});
        assert!(!mark_server_message(answer.as_object_mut().expect("object"), "k8s"));
        assert_eq!(unmark(&json!("k8s~[1]")), None);
        assert_eq!(unmark(&json!(3)), None);
    }
}
