//! `[audit]`: the decision journal every decision replica (and `tollgate up`) keeps when
//! `journal_dir` is set (see `tollgate-journal`). Each decision's record (what the decision
//! span says, with its trace and span ids) is appended after the decision is made; with
//! `required = true` a decision is answered only once its record is durable, and a call whose
//! record cannot be written is refused ("audit journal …"), as Vault refuses what it cannot
//! audit.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span};
use serde::{Deserialize, Serialize};

use crate::tail::{DecisionRecord, LimitRecord};

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
    /// The call's raw arguments, only with `telemetry.record_arguments` (as on the live span).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub arguments: String,
    /// The tool's annotations as the edge sent them (`{"destructiveHint":true,…}`, only the
    /// hints the upstream stated), so that class rules can be replayed; empty for none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub annotations: String,
}

/// A tool's annotations as a journal record keeps them: the stated hints, as JSON.
pub fn annotations_json(a: Option<&crate::proto::ToolAnnotations>) -> String {
    let Some(a) = a else { return String::new() };
    let mut hints = serde_json::Map::new();
    for (name, value) in [
        ("readOnlyHint", a.read_only_hint),
        ("destructiveHint", a.destructive_hint),
        ("idempotentHint", a.idempotent_hint),
        ("openWorldHint", a.open_world_hint),
    ] {
        if let Some(value) = value {
            hints.insert(name.into(), value.into());
        }
    }
    serde_json::Value::Object(hints).to_string()
}

/// The annotations [`annotations_json`] wrote; none when there were none (or it is unreadable).
pub fn annotations_of(json: &str) -> Option<crate::proto::ToolAnnotations> {
    let hints: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).ok()?;
    let hint = |name: &str| hints.get(name).and_then(serde_json::Value::as_bool);
    Some(crate::proto::ToolAnnotations {
        read_only_hint: hint("readOnlyHint"),
        destructive_hint: hint("destructiveHint"),
        idempotent_hint: hint("idempotentHint"),
        open_world_hint: hint("openWorldHint"),
    })
}

// The journal's record: the decision span itself, as OTLP protobuf, behind a short header.
// The exporter sends the span's bytes as they are (no decoding, no re-encoding per span);
// `tollgate audit export` decodes them into a `JournalRecord`.
//
//   byte 0       format: 1
//   byte 1       flags: 1 = traced (the span has a trace and span id, and is exported)
//   bytes 2..10  at_ms, little-endian
//   bytes 10..12 the replica's name's length n, little-endian; then n bytes of it
//   the rest     an opentelemetry.proto.trace.v1.Span
//
// Records written by an earlier version are JSON objects (they start with `{`) and are read
// as such.
const FORMAT_SPAN: u8 = 1;
const TRACED: u8 = 1;
const HEADER: usize = 12;

/// A journal record in the span format: what the exporter needs without decoding the span.
pub struct SpanRecord<'a> {
    pub traced: bool,
    pub at_ms: u64,
    /// The replica's name (UTF-8 as written).
    pub replica: &'a [u8],
    /// The `Span` message's bytes.
    pub span: &'a [u8],
}

/// The bytes the journal keeps for `record`: the header, then the span written straight
/// from the record (the same bytes as encoding [`span_of`] with prost, without building it).
pub fn encode_record(record: &JournalRecord) -> Vec<u8> {
    let d = &record.decision;
    let ids = hex_array::<16>(&d.trace_id).zip(hex_array::<8>(&record.span_id));
    let replica = &d.replica.as_bytes()[..d.replica.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(HEADER + replica.len() + 512 + record.arguments.len());
    out.push(FORMAT_SPAN);
    out.push(if ids.is_some() { TRACED } else { 0 });
    out.extend_from_slice(&d.at_ms.to_le_bytes());
    out.extend_from_slice(&(replica.len() as u16).to_le_bytes());
    out.extend_from_slice(replica);
    let w = &mut out;
    if let Some((trace_id, span_id)) = ids {
        put_bytes(w, 1, &trace_id);
        put_bytes(w, 2, &span_id);
    }
    if let Some(parent) = hex_array::<8>(&record.parent_span_id) {
        put_bytes(w, 4, &parent);
    }
    put_bytes(w, 5, tollgate_telemetry::metrics::DECISION_SPAN.as_bytes());
    put_varint(w, 6, span::SpanKind::Internal as u64);
    put_fixed64(w, 7, record.start_ns);
    put_fixed64(w, 8, record.end_ns.max(record.start_ns));
    for (key, value) in [
        ("tollgate.verdict", &d.verdict),
        ("tollgate.rule", &d.rule),
        ("tollgate.reason", &d.reason),
        ("tollgate.decision_id", &d.id),
        ("tollgate.server", &d.server),
        ("tollgate.grant", &d.grant),
        ("tollgate.agent", &d.agent),
        ("enduser.id", &record.subject),
        ("tollgate.token.issuer", &record.issuer),
        ("tollgate.request_id", &record.request_id),
        ("tollgate.arguments.sha256", &d.arguments_sha256),
        (subject_key(&record.mcp_method), &d.tool),
        ("mcp.method.name", &record.mcp_method),
    ] {
        put_attribute(w, &[key], Value::Text(value));
    }
    if !record.arguments.is_empty() {
        put_attribute(w, &["tollgate.arguments"], Value::Text(&record.arguments));
    }
    if !record.annotations.is_empty() {
        put_attribute(w, &["tollgate.tool.annotations"], Value::Text(&record.annotations));
    }
    if !d.session.is_empty() {
        put_attribute(w, &["mcp.session.id"], Value::Text(&d.session));
    }
    if !d.approval_id.is_empty() {
        put_attribute(w, &["tollgate.approval.id"], Value::Text(&d.approval_id));
    }
    if !d.pin_state.is_empty() {
        put_attribute(w, &["tollgate.pin.state"], Value::Text(&d.pin_state));
        put_attribute(w, &["tollgate.pin.digest"], Value::Text(&d.pin_digest));
    }
    if !d.shadow_verdict.is_empty() {
        put_attribute(w, &["tollgate.shadow.verdict"], Value::Text(&d.shadow_verdict));
        put_attribute(w, &["tollgate.shadow.rule"], Value::Text(&d.shadow_rule));
    }
    if d.retry_after_ms > 0 {
        put_attribute(w, &["tollgate.retry_after_ms"], Value::Int(d.retry_after_ms));
    }
    for limit in &d.limits {
        let remaining = ["tollgate.limit.", limit.counter.as_str(), ".remaining"];
        put_attribute(w, &remaining, Value::Int(limit.remaining));
        put_attribute(
            w,
            &["tollgate.limit.", limit.counter.as_str(), ".max"],
            Value::Int(limit.max),
        );
    }
    for link in &record.links {
        let mut parts = link.split('-').skip(1);
        let (Some(trace_id), Some(span_id)) = (
            parts.next().and_then(hex_array::<16>),
            parts.next().and_then(hex_array::<8>),
        ) else {
            continue;
        };
        let len = 2 * 2 + 16 + 8;
        put_len(w, 13, len);
        put_bytes(w, 1, &trace_id);
        put_bytes(w, 2, &span_id);
    }
    out
}

/// `N` bytes from `2N` hex digits; none otherwise (or when all zero: an invalid id).
fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    bytes.iter().any(|b| *b != 0).then_some(bytes)
}

enum Value<'a> {
    Text(&'a str),
    Int(u64),
}

fn put_len(w: &mut Vec<u8>, tag: u32, len: usize) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, w);
    encode_varint(len as u64, w);
}

fn put_bytes(w: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_len(w, tag, bytes.len());
    w.extend_from_slice(bytes);
}

fn put_varint(w: &mut Vec<u8>, tag: u32, value: u64) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::Varint, w);
    encode_varint(value, w);
}

fn put_fixed64(w: &mut Vec<u8>, tag: u32, value: u64) {
    use prost::encoding::{WireType, encode_key};
    encode_key(tag, WireType::SixtyFourBit, w);
    w.extend_from_slice(&value.to_le_bytes());
}

/// A span attribute (field 9, a `KeyValue`) whose key is `key`'s pieces joined.
fn put_attribute(w: &mut Vec<u8>, key: &[&str], value: Value<'_>) {
    use prost::encoding::encoded_len_varint as varint_len;
    let key_len: usize = key.iter().map(|k| k.len()).sum();
    // AnyValue: string_value (1) or int_value (3), always written (a oneof).
    let any_len = match value {
        Value::Text(text) => 1 + varint_len(text.len() as u64) + text.len(),
        Value::Int(n) => 1 + varint_len(i64::try_from(n).unwrap_or(i64::MAX) as u64),
    };
    let key_field = if key_len > 0 {
        1 + varint_len(key_len as u64) + key_len
    } else {
        0
    };
    put_len(w, 9, key_field + 1 + varint_len(any_len as u64) + any_len);
    if key_len > 0 {
        put_len(w, 1, key_len);
        for piece in key {
            w.extend_from_slice(piece.as_bytes());
        }
    }
    put_len(w, 2, any_len);
    match value {
        Value::Text(text) => put_bytes(w, 1, text.as_bytes()),
        Value::Int(n) => put_varint(w, 3, i64::try_from(n).unwrap_or(i64::MAX) as u64),
    }
}

fn subject_key(mcp_method: &str) -> &'static str {
    match mcp_method {
        "resources/read" => "mcp.resource.uri",
        "prompts/get" => "gen_ai.prompt.name",
        _ => "gen_ai.tool.name",
    }
}

/// The header and span bytes of a record in the span format; none for any other.
pub fn span_record(payload: &[u8]) -> Option<SpanRecord<'_>> {
    if payload.len() < HEADER || payload[0] != FORMAT_SPAN {
        return None;
    }
    let at_ms = u64::from_le_bytes(payload[2..10].try_into().ok()?);
    let replica = u16::from_le_bytes(payload[10..12].try_into().ok()?) as usize;
    Some(SpanRecord {
        traced: payload[1] & TRACED != 0,
        at_ms,
        replica: payload.get(HEADER..HEADER + replica)?,
        span: payload.get(HEADER + replica..)?,
    })
}

/// A journal record, in either format.
pub fn decode_record(payload: &[u8]) -> Result<JournalRecord, String> {
    use prost::Message;
    if payload.first() == Some(&b'{') {
        return serde_json::from_slice(payload).map_err(|e| format!("not a decision record: {e}"));
    }
    let header = span_record(payload).ok_or("not a decision record (unknown format)")?;
    let replica = String::from_utf8_lossy(header.replica).into_owned();
    let span = Span::decode(header.span).map_err(|e| format!("not a decision span: {e}"))?;
    let mut record = JournalRecord {
        span_id: hex::encode(&span.span_id),
        parent_span_id: hex::encode(&span.parent_span_id),
        start_ns: span.start_time_unix_nano,
        end_ns: span.end_time_unix_nano,
        ..Default::default()
    };
    let d = &mut record.decision;
    d.at_ms = header.at_ms;
    d.replica = replica;
    d.trace_id = hex::encode(&span.trace_id);
    for kv in span.attributes {
        let value = kv.value.and_then(|v| v.value);
        let (text, number) = match value {
            Some(any_value::Value::StringValue(s)) => (s, 0),
            Some(any_value::Value::IntValue(i)) => (String::new(), u64::try_from(i).unwrap_or(0)),
            _ => continue,
        };
        match kv.key.as_str() {
            "tollgate.verdict" => d.verdict = text,
            "tollgate.rule" => d.rule = text,
            "tollgate.reason" => d.reason = text,
            "tollgate.decision_id" => d.id = text,
            "tollgate.server" => d.server = text,
            "tollgate.grant" => d.grant = text,
            "tollgate.agent" => d.agent = text,
            "enduser.id" => record.subject = text,
            "tollgate.token.issuer" => record.issuer = text,
            "tollgate.request_id" => record.request_id = text,
            "tollgate.arguments.sha256" => d.arguments_sha256 = text,
            "tollgate.arguments" => record.arguments = text,
            "tollgate.tool.annotations" => record.annotations = text,
            "gen_ai.tool.name" | "mcp.resource.uri" | "gen_ai.prompt.name" => d.tool = text,
            "mcp.method.name" => {
                d.method = text.clone();
                record.mcp_method = text;
            }
            "mcp.session.id" => d.session = text,
            "tollgate.approval.id" => d.approval_id = text,
            "tollgate.pin.state" => d.pin_state = text,
            "tollgate.pin.digest" => d.pin_digest = text,
            "tollgate.shadow.verdict" => d.shadow_verdict = text,
            "tollgate.shadow.rule" => d.shadow_rule = text,
            "tollgate.retry_after_ms" => d.retry_after_ms = number,
            key => {
                let Some(limit) = key.strip_prefix("tollgate.limit.") else {
                    continue;
                };
                if let Some(counter) = limit.strip_suffix(".remaining") {
                    d.limits.push(LimitRecord {
                        counter: counter.to_owned(),
                        remaining: number,
                        max: 0,
                    });
                } else if let Some(counter) = limit.strip_suffix(".max")
                    && let Some(l) = d.limits.iter_mut().rev().find(|l| l.counter == counter)
                {
                    l.max = number;
                }
            }
        }
    }
    record.links = span
        .links
        .iter()
        .map(|l| format!("00-{}-{}-01", hex::encode(&l.trace_id), hex::encode(&l.span_id)))
        .collect();
    Ok(record)
}

pub(crate) fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

pub(crate) fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The `tollgate.decide` span a journal record stands for; without a trace and span id
/// when the decision was not traced (such a span is kept, not exported).
pub(crate) fn span_of(record: &JournalRecord) -> Span {
    let d = &record.decision;
    let ids = hex_array::<16>(&d.trace_id).zip(hex_array::<8>(&record.span_id));
    let (trace_id, span_id) = ids.map(|(t, s)| (t.to_vec(), s.to_vec())).unwrap_or_default();
    let parent_span_id = hex_array::<8>(&record.parent_span_id)
        .map(|p| p.to_vec())
        .unwrap_or_default();
    let subject_key = subject_key(&record.mcp_method);
    let mut attributes = vec![
        text("tollgate.verdict", &d.verdict),
        text("tollgate.rule", &d.rule),
        text("tollgate.reason", &d.reason),
        text("tollgate.decision_id", &d.id),
        text("tollgate.server", &d.server),
        text("tollgate.grant", &d.grant),
        text("tollgate.agent", &d.agent),
        text("enduser.id", &record.subject),
        text("tollgate.token.issuer", &record.issuer),
        text("tollgate.request_id", &record.request_id),
        text("tollgate.arguments.sha256", &d.arguments_sha256),
        text(subject_key, &d.tool),
        text("mcp.method.name", &record.mcp_method),
    ];
    if !record.arguments.is_empty() {
        attributes.push(text("tollgate.arguments", &record.arguments));
    }
    if !record.annotations.is_empty() {
        attributes.push(text("tollgate.tool.annotations", &record.annotations));
    }
    // No session (a stateless request, or a server without sessions): no attribute, as on the
    // span the engine records.
    if !d.session.is_empty() {
        attributes.push(text("mcp.session.id", &d.session));
    }
    if !d.approval_id.is_empty() {
        attributes.push(text("tollgate.approval.id", &d.approval_id));
    }
    if !d.pin_state.is_empty() {
        attributes.push(text("tollgate.pin.state", &d.pin_state));
        attributes.push(text("tollgate.pin.digest", &d.pin_digest));
    }
    if !d.shadow_verdict.is_empty() {
        attributes.push(text("tollgate.shadow.verdict", &d.shadow_verdict));
        attributes.push(text("tollgate.shadow.rule", &d.shadow_rule));
    }
    if d.retry_after_ms > 0 {
        attributes.push(int(
            "tollgate.retry_after_ms",
            i64::try_from(d.retry_after_ms).unwrap_or(i64::MAX),
        ));
    }
    for limit in &d.limits {
        attributes.push(int(
            &format!("tollgate.limit.{}.remaining", limit.counter),
            i64::try_from(limit.remaining).unwrap_or(i64::MAX),
        ));
        attributes.push(int(
            &format!("tollgate.limit.{}.max", limit.counter),
            i64::try_from(limit.max).unwrap_or(i64::MAX),
        ));
    }
    let links = record
        .links
        .iter()
        .filter_map(|traceparent| {
            let mut parts = traceparent.split('-').skip(1);
            let trace_id = hex_array::<16>(parts.next()?)?;
            let span_id = hex_array::<8>(parts.next()?)?;
            Some(span::Link {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                ..Default::default()
            })
        })
        .collect();
    Span {
        links,
        trace_id,
        span_id,
        parent_span_id,
        name: tollgate_telemetry::metrics::DECISION_SPAN.to_owned(),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: record.start_ns,
        end_time_unix_nano: record.end_ns.max(record.start_ns),
        attributes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JournalRecord {
        JournalRecord {
            decision: DecisionRecord {
                id: "01a2".into(),
                at_ms: 1_765_000_000_123,
                replica: "host/42".into(),
                verdict: "RATE_LIMITED".into(),
                rule: "tools.k8s_scale".into(),
                reason: "over \"limit\"\n".into(),
                method: "tools/call".into(),
                server: "k8s".into(),
                tool: "k8s_scale".into(),
                grant: "a".into(),
                agent: "claude".into(),
                session: "s-1".into(),
                arguments_sha256: "ab".repeat(32),
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                approval_id: "apr_1".into(),
                retry_after_ms: 1500,
                pin_state: "approved".into(),
                pin_digest: "cd".repeat(32),
                shadow_verdict: "DENY".into(),
                shadow_rule: "tools[\"k8s_scale\"]".into(),
                limits: vec![
                    LimitRecord {
                        counter: "per.grant".into(),
                        remaining: 0,
                        max: 10,
                    },
                    LimitRecord {
                        counter: "everyone".into(),
                        remaining: 4,
                        max: 15,
                    },
                ],
            },
            request_id: "7".into(),
            span_id: "b7ad6b7169203331".into(),
            parent_span_id: "00f067aa0ba902b7".into(),
            start_ns: 10,
            end_ns: 20,
            mcp_method: "tools/call".into(),
            links: vec!["00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-01".into()],
            subject: "user@example".into(),
            issuer: "https://issuer".into(),
            arguments: "{\"replicas\":3}".into(),
            annotations: "{\"destructiveHint\":true}".into(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let written = record();
        let bytes = encode_record(&written);
        let header = span_record(&bytes).expect("span format");
        assert!(header.traced);
        assert_eq!(header.at_ms, written.decision.at_ms);
        assert_eq!(decode_record(&bytes), Ok(written.clone()));
        // The span written by hand is the span prost writes.
        use prost::Message;
        assert_eq!(Span::decode(header.span), Ok(span_of(&written)));
        let mut by_prost = Vec::new();
        span_of(&written).encode_raw(&mut by_prost);
        assert_eq!(header.span, by_prost.as_slice());
        // A record of an earlier version (JSON) reads as well.
        let json = serde_json::to_vec(&written).expect("json");
        assert_eq!(decode_record(&json), Ok(written));
        // Not traced: kept, but marked so the exporter skips it.
        let untraced = JournalRecord {
            span_id: String::new(),
            ..record()
        };
        let bytes = encode_record(&untraced);
        assert!(!span_record(&bytes).expect("span format").traced);
        assert_eq!(decode_record(&bytes).map(|r| r.decision.id), Ok("01a2".to_owned()));
        // Garbage is an error, not a record.
        assert!(decode_record(b"\x07garbage").is_err());
        assert!(decode_record(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_err());
    }

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
