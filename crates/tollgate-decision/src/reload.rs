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
    active: Mutex<ActivePolicy>,
}

/// The policy in force, as the operators' console shows it.
#[derive(Debug, Clone, Default)]
pub struct ActivePolicy {
    /// The policy file.
    pub path: String,
    /// The text in force (the file may hold a newer one that was rejected).
    pub source: Arc<str>,
    /// 1 for the policy loaded at start, +1 for every reload installed.
    pub generation: u64,
    /// When the policy in force was installed, ms since the Unix epoch.
    pub installed_ms: u64,
    /// When a changed file was last read (installed or rejected); 0 when never.
    pub last_attempt_ms: u64,
}

impl PolicyStatus {
    /// The status of a policy loaded at start from `path`.
    pub fn loaded(path: &std::path::Path, source: &str) -> Arc<PolicyStatus> {
        Arc::new(PolicyStatus {
            last_error: Mutex::default(),
            active: Mutex::new(ActivePolicy {
                path: path.display().to_string(),
                source: source.into(),
                generation: 1,
                installed_ms: tollgate_limiter::wall_clock_ms(),
                last_attempt_ms: 0,
            }),
        })
    }

    /// The diagnostics of the last rejected policy file, if the file on disk is currently
    /// not the policy in force.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn active(&self) -> ActivePolicy {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn installed(&self, source: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let now = tollgate_limiter::wall_clock_ms();
        active.source = source.into();
        active.generation += 1;
        active.installed_ms = now;
        active.last_attempt_ms = now;
    }

    fn rejected(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        self.active.lock().unwrap_or_else(|e| e.into_inner()).last_attempt_ms = tollgate_limiter::wall_clock_ms();
    }
}

fn fingerprint(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Polls `path` every `interval` and installs each new version that compiles, reporting to
/// `status`.
pub fn watch_policy(engine: Arc<Engine>, path: PathBuf, interval: Duration, status: Arc<PolicyStatus>) {
    watch(path, interval, status, "policy", move |compiled| {
        engine.replace_policy(compiled.policy);
        tollgate_telemetry::metrics::metrics().policy_reloaded(true);
    });
}

/// Polls the candidate policy (`[decision] shadow_policy`) the same way; a version that does
/// not compile is reported and the last good candidate stays.
pub fn watch_shadow_policy(engine: Arc<Engine>, path: PathBuf, interval: Duration, status: Arc<PolicyStatus>) {
    watch(path, interval, status, "shadow policy", move |compiled| {
        engine.replace_candidate(Some(compiled.policy));
    });
}

fn watch(
    path: PathBuf,
    interval: Duration,
    status: Arc<PolicyStatus>,
    what: &'static str,
    install: impl Fn(tollgate_policy::Compiled) + Send + 'static,
) {
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
                        tracing::warn!("{what} warning: {w}");
                    }
                    let source = compiled.source.clone();
                    install(compiled);
                    status.installed(&source);
                    tracing::info!(policy = %path.display(), "{what} reloaded");
                }
                Ok(Err(e)) => {
                    tracing::error!(policy = %path.display(), "{what} reload rejected, keeping the last good one:\n{e}");
                    status.rejected(e.to_string());
                    if what == "policy" {
                        tollgate_telemetry::metrics::metrics().policy_reloaded(false);
                    }
                }
                Err(e) => tracing::error!("{what} reload task failed: {e}"),
            }
        }
    });
}

impl crate::PolicyHealth for PolicyStatus {
    fn last_error(&self) -> Option<String> {
        PolicyStatus::last_error(self)
    }
}
