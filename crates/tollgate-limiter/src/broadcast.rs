//! A cluster-wide channel of small messages, for the operators' console: every decision
//! replica publishes what it decided and every replica hears every message, so each one can
//! show the whole cluster's decisions. Best effort and at most once, never on a decision's
//! path: a message published while a replica is not subscribed is simply not seen there.

use std::sync::Arc;

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
}

/// One process: subscribers are this process's.
pub struct MemoryBroadcast {
    sender: broadcast::Sender<Arc<str>>,
}

impl Default for MemoryBroadcast {
    fn default() -> Self {
        MemoryBroadcast {
            sender: broadcast::channel(BROADCAST_BUFFER).0,
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
}
