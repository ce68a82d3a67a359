//! `[audit]`: the decision journal every decision replica (and `tollgate up`) keeps when
//! `journal_dir` is set (see `tollgate-journal`). Each decision's record (what the decision
//! span says, with its trace and span ids) is appended after the decision is made; with
//! `required = true` a decision is answered only once its record is durable, and a call whose
//! record cannot be written is refused ("audit journal …"), as Vault refuses what it cannot
//! audit.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tail::DecisionRecord;

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Where the journal's segments are written; no journal when unset.
    #[serde(default)]
    pub journal_dir: Option<PathBuf>,
    /// Longest a record waits for its `fsync` (group commit). Default 5.
    #[serde(default = "default_sync_ms")]
    pub journal_sync_ms: u64,
    /// Records that make an `fsync` at once. Default 256.
    #[serde(default = "default_sync_records")]
    pub journal_sync_records: usize,
    /// Bytes of journal kept at most. Default 1 GiB.
    #[serde(default = "default_max_bytes")]
    pub journal_max_bytes: u64,
    /// Size at which a segment is closed and the next begun. Default 64 MiB.
    #[serde(default = "default_segment_bytes")]
    pub journal_segment_bytes: u64,
    /// Exported segments are removed once older than this (`30m`, `12h`, `7d`). Default `7d`.
    #[serde(default = "default_retain")]
    pub journal_retain: String,
    /// `drop_oldest_unexported` (default) or `refuse` when the journal is full.
    #[serde(default)]
    pub on_full: OnFullSetting,
    /// Answer a decision only once its record is in the journal; refuse calls whose record
    /// cannot be written.
    #[serde(default)]
    pub required: bool,
    /// This replica's Ed25519 key (a 32-byte seed, 64 hex digits; `tollgate audit keygen`):
    /// each closed segment's last record is signed with it (`<segment>.sig`).
    #[serde(default)]
    pub signing_key: Option<SigningSeed>,
    /// Most decision spans per second the journal's exporter sends to the collector: a
    /// backlog left by a collector outage drains at this rate, so catching up neither floods
    /// the collector nor takes the replica's CPU from live decisions. Set it above the
    /// replica's peak decision rate, or the backlog never drains. Default 50,000.
    #[serde(default = "default_export_spans_per_second")]
    pub export_spans_per_second: u64,
}

/// A signing key's seed: usable by the code, never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SigningSeed(pub String);

impl std::fmt::Debug for SigningSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<secret>\"")
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnFullSetting {
    #[default]
    DropOldestUnexported,
    Refuse,
}

fn default_sync_ms() -> u64 {
    5
}
fn default_sync_records() -> usize {
    256
}
fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_export_spans_per_second() -> u64 {
    50_000
}
fn default_retain() -> String {
    "7d".into()
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            journal_dir: None,
            journal_sync_ms: default_sync_ms(),
            journal_sync_records: default_sync_records(),
            journal_max_bytes: default_max_bytes(),
            journal_segment_bytes: default_segment_bytes(),
            journal_retain: default_retain(),
            on_full: OnFullSetting::default(),
            required: false,
            signing_key: None,
            export_spans_per_second: default_export_spans_per_second(),
        }
    }
}

impl AuditSettings {
    /// The journal's settings, when one is configured; the error names the bad setting.
    pub fn journal(&self) -> Result<Option<tollgate_journal::JournalSettings>, String> {
        let Some(dir) = &self.journal_dir else {
            if self.required {
                return Err("audit.required needs audit.journal_dir".into());
            }
            return Ok(None);
        };
        let retain = parse_duration(&self.journal_retain).ok_or_else(|| {
            format!(
                "audit.journal_retain {:?} is not a duration like 30m, 12h or 7d",
                self.journal_retain
            )
        })?;
        if self.export_spans_per_second < 100 {
            return Err(format!(
                "audit.export_spans_per_second = {} is too low: at least 100 (it must stay above the replica's decision rate)",
                self.export_spans_per_second
            ));
        }
        if self.journal_segment_bytes < 4096 || self.journal_max_bytes < self.journal_segment_bytes {
            return Err("audit.journal_segment_bytes must be at least 4096 and at most audit.journal_max_bytes".into());
        }
        let signing_key = match &self.signing_key {
            Some(seed) => Some(std::sync::Arc::new(tollgate_journal::SigningKey::from_hex(&seed.0)?)),
            None => None,
        };
        Ok(Some(tollgate_journal::JournalSettings {
            signing_key,
            sign_head_every: Duration::from_secs(1),
            dir: dir.clone(),
            sync_ms: self.journal_sync_ms,
            sync_records: self.journal_sync_records.max(1),
            max_bytes: self.journal_max_bytes,
            segment_bytes: self.journal_segment_bytes,
            retain,
            on_full: match self.on_full {
                OnFullSetting::DropOldestUnexported => tollgate_journal::OnFull::DropOldestUnexported,
                OnFullSetting::Refuse => tollgate_journal::OnFull::Refuse,
            },
        }))
    }
}

/// `30s`, `30m`, `12h`, `7d`: the policy's duration syntax; none for one too long to count.
fn parse_duration(text: &str) -> Option<Duration> {
    tollgate_policy::parse_duration(text.trim()).filter(|d| *d != Duration::MAX)
}

/// One decision as the journal keeps it: what the console's record says, plus the request
/// id, the decision span's id and the caller's token subject and issuer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct JournalRecord {
    #[serde(flatten)]
    pub decision: DecisionRecord,
    pub request_id: String,
    /// The decision span's id (16 hex digits), empty when not traced.
    pub span_id: String,
    /// Its parent's (the edge's span for the request), empty when it has none.
    pub parent_span_id: String,
    /// When the decision began and ended, nanoseconds since the Unix epoch.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The MCP method (`tools/call`, `resources/read`, `prompts/get`).
    pub mcp_method: String,
    /// Spans the decision span links to (W3C traceparents): the operator's approval it
    /// consumed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    pub subject: String,
    pub issuer: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_settings_are_checked() {
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7 days"), None);
        assert_eq!(parse_duration(""), None);
        let required_without_dir = AuditSettings {
            required: true,
            ..Default::default()
        };
        assert!(required_without_dir.journal().is_err());
        assert!(matches!(AuditSettings::default().journal(), Ok(None)));
        let too_slow = AuditSettings {
            journal_dir: Some("/tmp/never-opened".into()),
            export_spans_per_second: 10,
            ..Default::default()
        };
        let error = too_slow.journal().err().unwrap_or_default();
        assert!(error.contains("audit.export_spans_per_second = 10"), "{error}");
    }
}
