//! Which grant's call made which upstream task (MCP tasks). An upstream knows only the
//! gateway's credential, so its task list holds every caller's tasks; the edges record each
//! task they see created, with the grant, the upstream and the decision that admitted the call,
//! and keep only the grant's own when they pass a task list on. Shared by every edge through
//! the store (Redis, or memory in `tollgate up`); a record lives as long as the task (its
//! `ttl`, at most [`MAX_TASK_TTL`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Longest a task record is kept, whatever the task's own `ttl` says.
pub const MAX_TASK_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a record is kept for a task that gave no `ttl`.
pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(3600);
/// Most task ids one ownership query may name.
pub const MAX_TASKS_PER_QUERY: usize = 1000;
/// Longest task id recorded.
pub const MAX_TASK_ID_BYTES: usize = 512;
/// Task records kept at most per grant (in every store): a grant past it has its next
/// tasks unrecorded (so not listed, and not usable through their handles) until some
/// expire; other grants are unaffected.
pub const MAX_TASKS_PER_GRANT: usize = 10_000;

/// One task, as the edge saw it created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The upstream (`[[upstreams]] name`).
    pub server: String,
    /// The upstream's own task id.
    pub task_id: String,
    pub grant: String,
    /// The decision that admitted the call that made the task.
    #[serde(default)]
    pub decision_id: String,
    /// The W3C `traceparent` of that call, so the task's result joins its trace.
    #[serde(default)]
    pub traceparent: String,
}

/// The kept time for a task whose own `ttl` is `ttl_ms` (0: it gave none).
pub fn task_ttl(ttl_ms: u64) -> Duration {
    if ttl_ms == 0 {
        DEFAULT_TASK_TTL
    } else {
        Duration::from_millis(ttl_ms).min(MAX_TASK_TTL)
    }
}

#[async_trait::async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Records `record` for `ttl`: the upstream gave this grant this task id.
    async fn record(&self, record: &TaskRecord, ttl: Duration) -> Result<(), StoreError>;
    /// The records of `task_ids` (of `server`) that belong to `grant`.
    async fn owned(&self, grant: &str, server: &str, task_ids: &[String]) -> Result<Vec<TaskRecord>, StoreError>;
}

/// (server, task id).
type TaskKey = (String, String);
/// One grant's records, each with the time it expires.
type GrantTasks = HashMap<TaskKey, (TaskRecord, std::time::Instant)>;

/// Task records in this process (`tollgate up`, tests), by grant.
#[derive(Default)]
pub struct MemoryTasks {
    records: Mutex<HashMap<String, GrantTasks>>,
}

#[async_trait::async_trait]
impl TaskStore for MemoryTasks {
    async fn record(&self, record: &TaskRecord, ttl: Duration) -> Result<(), StoreError> {
        if record.task_id.len() > MAX_TASK_ID_BYTES {
            return Err(StoreError::Rejected("task id too long".into()));
        }
        let now = std::time::Instant::now();
        let mut all = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let records = all.entry(record.grant.clone()).or_default();
        let key = (record.server.clone(), record.task_id.clone());
        if !records.contains_key(&key) && records.len() >= MAX_TASKS_PER_GRANT {
            records.retain(|_, (_, until)| *until > now);
            if records.len() >= MAX_TASKS_PER_GRANT {
                return Err(StoreError::Full(format!(
                    "grant {:?} has {MAX_TASKS_PER_GRANT} task records",
                    record.grant
                )));
            }
        }
        records.insert(key, (record.clone(), now + ttl));
        Ok(())
    }

    async fn owned(&self, grant: &str, server: &str, task_ids: &[String]) -> Result<Vec<TaskRecord>, StoreError> {
        let now = std::time::Instant::now();
        let all = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some(records) = all.get(grant) else {
            return Ok(Vec::new());
        };
        Ok(task_ids
            .iter()
            .take(MAX_TASKS_PER_QUERY)
            .filter_map(|id| records.get(&(server.to_owned(), id.clone())))
            .filter(|(_, until)| *until > now)
            .map(|(record, _)| record.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(grant: &str, id: &str) -> TaskRecord {
        TaskRecord {
            server: "s".into(),
            task_id: id.into(),
            grant: grant.into(),
            decision_id: "d".into(),
            traceparent: String::new(),
        }
    }

    #[tokio::test]
    async fn a_grant_owns_only_the_tasks_it_made() {
        let tasks = MemoryTasks::default();
        tasks
            .record(&record("a", "T1"), Duration::from_secs(60))
            .await
            .expect("record");
        tasks
            .record(&record("b", "T2"), Duration::from_secs(60))
            .await
            .expect("record");
        // The upstream gave b an id it gave a: each holds it, neither sees the other's.
        tasks
            .record(&record("b", "T1"), Duration::from_secs(60))
            .await
            .expect("record");
        assert_eq!(
            tasks.owned("b", "s", &["T1".to_owned()]).await.expect("owned"),
            vec![record("b", "T1")]
        );
        let ids = ["T1".to_owned(), "T2".to_owned(), "T3".to_owned()];
        let owned = tasks.owned("a", "s", &ids).await.expect("owned");
        assert_eq!(owned, vec![record("a", "T1")]);
        assert_eq!(tasks.owned("a", "other", &ids).await.expect("owned"), vec![]);
        assert_eq!(task_ttl(0), DEFAULT_TASK_TTL);
        assert_eq!(task_ttl(u64::MAX), MAX_TASK_TTL);
    }
}
