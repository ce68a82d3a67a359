//! Keeping a session's GET stream ahead of its calls.
//!
//! An MCP client opens its GET stream right after `notifications/initialized` and calls a
//! tool at once, on another connection. The server sends requests that belong to no POST
//! (sampling, elicitation) on the GET stream, and drops them while that stream does not
//! exist yet. Talking to the server directly, the GET almost always wins this race; through
//! a gateway, which adds hops, it loses it now and then. So, per (grant, session) on this
//! edge, a POST waits briefly:
//! - while a GET of the session is being opened upstream (until its answer's head arrives,
//!   at most [`OPENING_WAIT`]), and
//! - for [`INITIALIZED_WAIT`] after `notifications/initialized`, unless a GET came first.
//!
//! This is an ordering aid local to one edge, not session state: nothing breaks when a
//! session's requests reach different edges, they only lose the aid. Memory is bounded by
//! [`MAX_TRACKED`] entries, each short-lived.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Longest a POST waits for a GET that is being opened.
pub const OPENING_WAIT: Duration = Duration::from_secs(1);
/// How long after `notifications/initialized` a POST waits for the GET stream to start.
/// Clients send the GET and their first call within a few milliseconds of each other, but on
/// a loaded machine the GET can trail by tens of milliseconds; a client that opens no GET
/// stream pays this once, on a call made right after initializing.
pub const INITIALIZED_WAIT: Duration = Duration::from_millis(250);
/// Sessions tracked at once; beyond it, new ones are not (they just lose the aid).
const MAX_TRACKED: usize = 10_000;

type Key = (String, String);

struct Entry {
    /// Ends (with an error) when the sender is dropped: the GET reached the upstream, or
    /// the initialized window was replaced by an opening GET.
    rx: watch::Receiver<()>,
    /// Held here for an initialized window; an opening GET holds its own.
    _tx: Option<watch::Sender<()>>,
    until: Instant,
}

#[derive(Default)]
pub struct StreamOrder {
    entries: Mutex<HashMap<Key, Entry>>,
}

/// Marks a GET as being opened until dropped.
pub struct Opening<'a> {
    order: &'a StreamOrder,
    key: Key,
    rx: watch::Receiver<()>,
    _tx: watch::Sender<()>,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut entries = self.order.lock();
        if entries.get(&self.key).is_some_and(|e| e.rx.same_channel(&self.rx)) {
            entries.remove(&self.key);
        }
    }
}

impl StreamOrder {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, key: Key, entry: Entry) {
        let mut entries = self.lock();
        if entries.len() >= MAX_TRACKED {
            let now = Instant::now();
            entries.retain(|_, e| e.until > now);
            if entries.len() >= MAX_TRACKED {
                return;
            }
        }
        entries.insert(key, entry);
    }

    /// The session was just initialized: its calls wait a moment for its GET stream.
    pub fn initialized(&self, grant: &str, session: &str) {
        let (tx, rx) = watch::channel(());
        let entry = Entry {
            rx,
            _tx: Some(tx),
            until: Instant::now() + INITIALIZED_WAIT,
        };
        self.insert((grant.to_owned(), session.to_owned()), entry);
    }

    /// A GET of the session is on its way upstream.
    pub fn opening(&self, grant: &str, session: &str) -> Opening<'_> {
        let (tx, rx) = watch::channel(());
        let key = (grant.to_owned(), session.to_owned());
        let entry = Entry {
            rx: rx.clone(),
            _tx: None,
            until: Instant::now() + OPENING_WAIT,
        };
        self.insert(key.clone(), entry);
        Opening {
            order: self,
            key,
            rx,
            _tx: tx,
        }
    }

    /// Waits while the session's GET stream is expected or being opened.
    pub async fn before_post(&self, grant: &str, session: &str) {
        if session.is_empty() || self.lock().is_empty() {
            return;
        }
        let key = (grant.to_owned(), session.to_owned());
        loop {
            let (mut rx, until) = {
                let mut entries = self.lock();
                match entries.get(&key) {
                    None => return,
                    Some(e) if e.until <= Instant::now() => {
                        entries.remove(&key);
                        return;
                    }
                    Some(e) => (e.rx.clone(), e.until),
                }
            };
            // Ends when the entry's sender goes: the GET arrived (look again: it may now be
            // opening) or reached the upstream (the entry is gone).
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_post_waits_for_the_get_that_is_expected_and_then_opening() {
        let order = std::sync::Arc::new(StreamOrder::default());
        order.initialized("g", "s");
        let waiter = {
            let order = order.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                order.before_post("g", "s").await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let opening = order.opening("g", "s");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiter.is_finished(), "still waiting while the GET is opening");
        drop(opening);
        let waited = waiter.await.expect("waiter");
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(order.lock().is_empty());
    }

    #[tokio::test]
    async fn without_a_get_the_wait_is_short_and_other_sessions_do_not_wait() {
        let order = StreamOrder::default();
        order.initialized("g", "s");
        let started = Instant::now();
        order.before_post("g", "other").await;
        order.before_post("other-grant", "s").await;
        assert!(started.elapsed() < INITIALIZED_WAIT);
        order.before_post("g", "s").await;
        let waited = started.elapsed();
        assert!(waited >= INITIALIZED_WAIT && waited < OPENING_WAIT, "{waited:?}");
        let started = Instant::now();
        order.before_post("g", "s").await;
        assert!(started.elapsed() < INITIALIZED_WAIT, "only once");
    }
}
