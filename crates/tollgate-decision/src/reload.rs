//! Policy hot reload: the file is polled for changes; a new policy that compiles replaces
//! the old one, and one that does not is reported while the last good policy stays in force.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::Engine;

/// What the last reload attempt left behind, for readiness and status reporting.
#[derive(Default)]
pub struct PolicyStatus {
    last_error: Mutex<Option<String>>,
}

impl PolicyStatus {
    /// The diagnostics of the last rejected policy file, if the file on disk is currently
    /// not the policy in force.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

fn fingerprint(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Polls `path` every `interval` and installs each new version that compiles.
pub fn watch_policy(engine: Arc<Engine>, path: PathBuf, interval: Duration) -> Arc<PolicyStatus> {
    let status = Arc::new(PolicyStatus::default());
    let reported = status.clone();
    tokio::spawn(async move {
        let mut seen = fingerprint(&path);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = fingerprint(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let loaded = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || tollgate_policy::load_file(&path)).await
            };
            match loaded {
                Ok(Ok(compiled)) => {
                    for w in &compiled.warnings {
                        tracing::warn!("policy warning: {w}");
                    }
                    engine.replace_policy(compiled.policy);
                    status.set(None);
                    tollgate_telemetry::metrics::metrics().policy_reloaded(true);
                    tracing::info!(policy = %path.display(), "policy reloaded");
                }
                Ok(Err(e)) => {
                    tracing::error!(policy = %path.display(), "policy reload rejected, keeping the last good policy:\n{e}");
                    status.set(Some(e.to_string()));
                    tollgate_telemetry::metrics::metrics().policy_reloaded(false);
                }
                Err(e) => tracing::error!("policy reload task failed: {e}"),
            }
        }
    });
    reported
}

impl crate::PolicyHealth for PolicyStatus {
    fn last_error(&self) -> Option<String> {
        PolicyStatus::last_error(self)
    }
}
