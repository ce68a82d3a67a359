//! Task ids are the grant's own. An upstream knows only the gateway's credential, so it would
//! answer `tasks/get` (`tasks/result`, `tasks/cancel`, …) for a task id from any caller. The
//! edge never shows an upstream's task id: every `taskId` in an answer on `/mcp/{server}` is
//! replaced by a handle sealed for the caller's grant and that upstream (deterministic, so one
//! task keeps one handle across answers and notifications; authenticated, so it cannot be
//! forged), and every `taskId` in a request must be such a handle for this grant and
//! upstream, or the request is answered like one naming an unknown task. The upstream's
//! `tasks/list` holds every caller's tasks: the edge records each task it sees created (with
//! the grant and the decision, in the store every edge shares) and passes on only the grant's
//! own.

use serde_json::Value;

use crate::sealed::Sealer;

/// Where MCP messages name a task: a task's own id (`tasks/get`'s result, a status
/// notification, requests about a task), a created task (`CreateTaskResult`), and the
/// related-task `_meta` of results and messages that belong to a task. Only these are read:
/// a tool's own output that happens to have a `taskId` is left alone.
const POSITIONS: [&str; 5] = [
    "/result/taskId",
    "/result/task/taskId",
    "/result/_meta/io.modelcontextprotocol~1related-task/taskId",
    "/params/taskId",
    "/params/_meta/io.modelcontextprotocol~1related-task/taskId",
];

/// Where an agent's request names a task (a client's own answers, to requests of the
/// server's, are not read: their tasks are the client's).
const REQUEST_POSITIONS: [&str; 2] = [
    "/params/taskId",
    "/params/_meta/io.modelcontextprotocol~1related-task/taskId",
];

/// Replaces every task id in `value` with a handle for `grant` and `server`; `true` when it
/// changed something. The tasks of a `tasks` list must have been narrowed to the grant's own
/// first ([`listed_ids`], [`keep_owned`]); their ids are sealed here too.
pub(crate) fn seal_ids(sealer: &Sealer, grant: &str, server: &str, value: &mut Value) -> bool {
    let mut changed = false;
    if let Some(Value::Array(tasks)) = value.pointer_mut("/result/tasks") {
        for task in tasks.iter_mut() {
            if let Some(slot) = task.get_mut("taskId")
                && let Value::String(id) = slot
            {
                *slot = sealer.seal_task(grant, server, id).map_or(Value::Null, Value::String);
                changed = true;
            }
        }
    }
    for position in POSITIONS {
        if let Some(slot) = value.pointer_mut(position)
            && let Value::String(id) = slot
        {
            *slot = sealer.seal_task(grant, server, id).map_or(Value::Null, Value::String);
            changed = true;
        }
    }
    changed
}

/// Replaces every task handle in `value` with the upstream's id it stands for; `Err` when one
/// is not a handle this grant holds for this upstream.
pub(crate) fn open_ids(sealer: &Sealer, grant: &str, server: &str, value: &mut Value) -> Result<bool, ()> {
    let mut changed = false;
    for position in REQUEST_POSITIONS {
        if let Some(slot) = value.pointer_mut(position) {
            let Value::String(handle) = slot else { return Err(()) };
            let id = sealer.open_task(grant, server, handle).ok_or(())?;
            *slot = Value::String(id);
            changed = true;
        }
    }
    Ok(changed)
}

/// Whether the answer to `message` may name tasks: a task-augmented call (`params.task`) or
/// a `tasks/…` request.
pub(crate) fn may_answer_with_tasks(message: &Value) -> bool {
    message.pointer("/params/task").is_some()
        || message
            .get("method")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("tasks/"))
}

/// Whether `message` names a task where MCP messages do.
pub(crate) fn names_a_task(message: &Value) -> bool {
    REQUEST_POSITIONS.iter().any(|p| message.pointer(p).is_some())
}

/// The upstream's task id of a created task (`CreateTaskResult`) in an answer, and its ttl.
pub(crate) fn created(value: &Value) -> Option<(String, u64)> {
    let task = value.pointer("/result/task")?;
    let id = task.get("taskId")?.as_str()?.to_owned();
    let ttl = task.get("ttl").and_then(Value::as_u64).unwrap_or(0);
    Some((id, ttl))
}

/// The upstream's task ids a `tasks/list` answer lists (`None` when it is not one).
pub(crate) fn listed_ids(value: &Value) -> Option<Vec<String>> {
    let tasks = value.pointer("/result/tasks")?.as_array()?;
    Some(
        tasks
            .iter()
            .filter_map(|t| t.get("taskId").and_then(Value::as_str).map(str::to_owned))
            .collect(),
    )
}

/// Keeps the listed tasks whose ids are in `owned`; `true` when it left one out.
pub(crate) fn keep_owned(value: &mut Value, owned: &[String]) -> bool {
    let Some(Value::Array(tasks)) = value.pointer_mut("/result/tasks") else {
        return false;
    };
    let before = tasks.len();
    tasks.retain(|t| {
        t.get("taskId")
            .and_then(Value::as_str)
            .is_some_and(|id| owned.iter().any(|o| o == id))
    });
    tasks.len() != before
}

/// The upstream's task ids `value` names where MCP messages name a task (answers,
/// notifications and requests alike).
pub(crate) fn named_ids(value: &Value) -> Vec<String> {
    POSITIONS
        .iter()
        .filter_map(|p| value.pointer(p).and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Blanks every task id in `value` that is not in `owned`; `true` when it blanked one.
pub(crate) fn blank_unowned(value: &mut Value, owned: &[String]) -> bool {
    let mut blanked = false;
    for position in POSITIONS {
        if let Some(slot) = value.pointer_mut(position)
            && slot.as_str().is_some_and(|id| !owned.iter().any(|o| o == id))
        {
            *slot = Value::Null;
            blanked = true;
        }
    }
    blanked
}
