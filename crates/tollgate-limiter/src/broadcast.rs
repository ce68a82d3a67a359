//! A cluster-wide channel of small messages, for the operators' console: every decision
//! replica publishes what it decided and every replica hears every message, so each one can
//! show the whole cluster's decisions. Best effort and at most once, never on a decision's
//! path: a message published while a replica is not subscribed is simply not seen there.
//!
//! Beside it, the console's signed-out sessions, kept in the store until each session would
//! have expired, so a replica that restarts or starts later still refuses them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::StoreError;

/// Messages a subscriber may fall behind by before it misses some.
pub const BROADCAST_BUFFER: usize = 256;
/// The largest message published or accepted.
pub const MAX_BROADCAST_BYTES: usize = 1 << 20;

/// Publish to, and hear from, every replica sharing the store.
#[async_trait::async_trait]
pub trait Broadcast: Send + Sync {
    /// Sends `message` to every subscriber in the cluster (this replica's too).
    async fn publish(&self, message: String) -> Result<(), StoreError>;
    /// Every message published from now on, by any replica.
    fn subscribe(&self) -> broadcast::Receiver<Arc<str>>;
    /// Remembers that console session `session_id` was signed out, until `until_ms`
    /// (milliseconds since the Unix epoch, when the session would have expired anyway).
    async fn revoke_session(&self, session_id: &str, until_ms: u64) -> Result<(), StoreError>;
    /// Whether console session `session_id` was signed out (and has not expired since).
    async fn is_session_revoked(&self, session_id: &str) -> Result<bool, StoreError>;
}

/// Longest console session id accepted (they are 32 hex digits).
pub const MAX_SESSION_ID_BYTES: usize = 64;

pub(crate) fn check_session_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StoreError::Rejected(
            "a console session id is 1 to 64 ASCII letters and digits".into(),
        ));
    }
    Ok(())
}

/// One process: subscribers are this process's.
pub struct MemoryBroadcast {
    sender: broadcast::Sender<Arc<str>>,
    /// Signed-out sessions and when they expire. Never forgotten before then: each entry
    /// needs an operator's sign-in, which the console throttles.
    revoked: Mutex<HashMap<String, u64>>,
}

impl Default for MemoryBroadcast {
    fn default() -> Self {
        MemoryBroadcast {
            sender: broadcast::channel(BROADCAST_BUFFER).0,
            revoked: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl Broadcast for MemoryBroadcast {
    async fn publish(&self, message: String) -> Result<(), StoreError> {
        if message.len() > MAX_BROADCAST_BYTES {
            return Err(StoreError::Rejected(format!(
                "a broadcast message is at most {MAX_BROADCAST_BYTES} bytes"
            )));
        }
        let _ = self.sender.send(message.into());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.sender.subscribe()
    }

    async fn revoke_session(&self, session_id: &str, until_ms: u64) -> Result<(), StoreError> {
        check_session_id(session_id)?;
        let now = crate::approvals::wall_clock_ms();
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.retain(|_, until| *until > now);
        revoked.insert(session_id.to_owned(), until_ms);
        Ok(())
    }

    async fn is_session_revoked(&self, session_id: &str) -> Result<bool, StoreError> {
        check_session_id(session_id)?;
        let now = crate::approvals::wall_clock_ms();
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        Ok(revoked.get(session_id).is_some_and(|until| *until > now))
    }
}
