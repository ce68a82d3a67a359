//! Which tools (resources, prompts) of a list a grant may see, remembered per edge: the
//! same upstream list for the same grant gets the same answer until the policy changes, so
//! repeated `tools/list` calls need no decision round trip.
//!
//! An answer is kept under the policy digest that gave it (the SHA-256 of the policy text,
//! equal on every replica with the same file). A decision or list answer with another digest
//! drops everything; entries also expire after `edge.list_cache_ms`, which bounds how long a
//! policy change can take to show in lists on an edge that makes no decisions. Lists only
//! show what may be called: every call is still decided, so a stale list never lets a call
//! through. The map is bounded; the listed entries are compared in full, never by hash alone.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tollgate_api::proto::{SubjectKind, Tool};

/// Lists remembered per edge at most.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    grant: String,
    server: String,
    kind: i32,
    /// Hash of the listed entries (names and annotations); the entries themselves are
    /// compared on a hit.
    listed: u64,
}

struct Entry {
    listed: Vec<Tool>,
    visible: Vec<String>,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    digest: u64,
    entries: HashMap<Key, Entry>,
}

pub(crate) struct VisibleCache {
    inner: Mutex<Inner>,
    ttl: Duration,
}

fn key(grant: &str, server: &str, kind: SubjectKind, listed: &[Tool]) -> Key {
    let mut hasher = DefaultHasher::new();
    for tool in listed {
        tool.name.hash(&mut hasher);
        if let Some(a) = &tool.annotations {
            (
                a.read_only_hint,
                a.destructive_hint,
                a.idempotent_hint,
                a.open_world_hint,
            )
                .hash(&mut hasher);
        }
    }
    Key {
        grant: grant.to_owned(),
        server: server.to_owned(),
        kind: kind as i32,
        listed: hasher.finish(),
    }
}

impl VisibleCache {
    /// `ttl` zero turns the cache off.
    pub(crate) fn new(ttl: Duration) -> VisibleCache {
        VisibleCache {
            inner: Mutex::default(),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The visible names of `listed`, when this edge was told them for the current policy
    /// within the time to live.
    pub(crate) fn get(&self, grant: &str, server: &str, kind: SubjectKind, listed: &[Tool]) -> Option<Vec<String>> {
        if self.ttl.is_zero() {
            return None;
        }
        let inner = self.lock();
        let entry = inner.entries.get(&key(grant, server, kind, listed))?;
        (entry.at.elapsed() < self.ttl && entry.listed == listed).then(|| entry.visible.clone())
    }

    /// Remembers an answer given under policy `digest`.
    pub(crate) fn put(
        &self,
        grant: &str,
        server: &str,
        kind: SubjectKind,
        listed: Vec<Tool>,
        visible: Vec<String>,
        digest: u64,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.digest != digest {
            inner.entries.clear();
            inner.digest = digest;
        }
        if inner.entries.len() >= CAPACITY {
            inner.entries.clear();
        }
        let key = key(grant, server, kind, &listed);
        inner.entries.insert(
            key,
            Entry {
                listed,
                visible,
                at: Instant::now(),
            },
        );
    }

    /// A decision was made under policy `digest`: when the policy changed, nothing cached
    /// under the old one is used again.
    pub(crate) fn saw(&self, digest: u64) {
        if self.ttl.is_zero() || digest == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.digest != digest {
            inner.entries.clear();
            inner.digest = digest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(names: &[&str]) -> Vec<Tool> {
        names
            .iter()
            .map(|n| Tool {
                name: (*n).to_owned(),
                annotations: None,
                pin: None,
            })
            .collect()
    }

    #[test]
    fn answers_are_kept_per_grant_list_and_policy() {
        let cache = VisibleCache::new(Duration::from_secs(60));
        let listed = tools(&["a", "b"]);
        assert_eq!(cache.get("g", "s", SubjectKind::Tool, &listed), None);
        cache.put("g", "s", SubjectKind::Tool, listed.clone(), vec!["a".into()], 7);
        assert_eq!(cache.get("g", "s", SubjectKind::Tool, &listed), Some(vec!["a".into()]));
        assert_eq!(cache.get("other", "s", SubjectKind::Tool, &listed), None, "per grant");
        assert_eq!(cache.get("g", "s", SubjectKind::Prompt, &listed), None, "per kind");
        assert_eq!(
            cache.get("g", "s", SubjectKind::Tool, &tools(&["a", "c"])),
            None,
            "per list"
        );
        cache.saw(7);
        assert!(cache.get("g", "s", SubjectKind::Tool, &listed).is_some(), "same policy");
        cache.saw(8);
        assert_eq!(
            cache.get("g", "s", SubjectKind::Tool, &listed),
            None,
            "a new policy drops it"
        );
    }

    #[test]
    fn entries_expire_and_a_zero_ttl_keeps_nothing() {
        let cache = VisibleCache::new(Duration::from_millis(20));
        let listed = tools(&["a"]);
        cache.put("g", "s", SubjectKind::Tool, listed.clone(), vec!["a".into()], 1);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get("g", "s", SubjectKind::Tool, &listed), None);
        let off = VisibleCache::new(Duration::ZERO);
        off.put("g", "s", SubjectKind::Tool, listed.clone(), vec!["a".into()], 1);
        assert_eq!(off.get("g", "s", SubjectKind::Tool, &listed), None);
    }
}
