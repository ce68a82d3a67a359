//! Decision spans exported from the decision journal (issue 25, item 2): a task reads the
//! records after the last one the collector acknowledged, encodes each straight into an OTLP
//! span (`tollgate.decide`, with the ids, parent, times and attributes the decision span has),
//! sends them in batches over OTLP/gRPC, and records the last acknowledged sequence number on
//! disk. A collector that is down or slow, or a replica restart, loses nothing: the backlog
//! is sent when the collector answers again, in order, with the original ids and times (at
//! least once; a duplicate has the same span id).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::audit::{int, text};

/// Records sent in one export request at most.
const BATCH: usize = 512;
/// Bytes of records in one export request at most (past its first record): well within the
/// 4 MiB a collector's gRPC receiver takes by default.
const BATCH_BYTES: usize = 2 << 20;
/// How often the journal is read again when everything was sent.
const IDLE: Duration = Duration::from_millis(100);
/// Batches sent to the collector before the oldest is acknowledged.
const IN_FLIGHT: usize = 4;
/// How often the export position is written while a backlog drains (and once caught up).
const POSITION_EVERY: Duration = Duration::from_millis(250);

/// Where and as whom decision spans are exported.
pub struct JournalExport {
    pub dir: PathBuf,
    /// The journal's writer in this process: only durable records are read.
    pub durable: std::sync::Arc<tollgate_journal::JournalStats>,
    pub endpoint: String,
    pub service: String,
    pub timeout: Duration,
    /// Most spans sent per second (`audit.export_spans_per_second`).
    pub spans_per_second: u64,
}

impl JournalExport {
    /// Starts the exporter; decision spans leave the tracing pipeline from now on.
    pub fn spawn(self) -> Result<(), String> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| format!("telemetry.otlp_endpoint {:?}: {e}", self.endpoint))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect_lazy();
        tollgate_telemetry::metrics::export_decisions_from_journal();
        tokio::spawn(self.run(tonic::client::Grpc::new(channel)));
        Ok(())
    }

    async fn run(self, client: tonic::client::Grpc<tonic::transport::Channel>) {
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        let from = tollgate_journal::read_exported(&self.dir) + 1;
        let mut reader = Some(tollgate_journal::Reader::following(
            &self.dir,
            from,
            self.durable.clone(),
        ));
        let mut last_error: Option<String> = None;
        let mut not_before: Option<tokio::time::Instant> = None;
        // The last sequence number the collector acknowledged, and the last written to disk.
        let mut acknowledged = from - 1;
        let mut written = acknowledged;
        let mut written_at = tokio::time::Instant::now();
        // Batches sent and not yet acknowledged, oldest first (at most IN_FLIGHT): a
        // collector's latency is paid once per IN_FLIGHT batches, not per batch. Each holds
        // its last sequence number and the time of its oldest decision.
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        loop {
            // Send what the journal holds, up to IN_FLIGHT batches.
            while in_flight.len() < IN_FLIGHT {
                let Some(mut taken) = reader.take() else { return };
                let read = tokio::task::spawn_blocking(move || {
                    let records = taken.read_up_to(BATCH, BATCH_BYTES);
                    (taken, records)
                })
                .await;
                let Ok((back, records)) = read else { return };
                reader = Some(back);
                let records = match records {
                    Ok(records) => records,
                    Err(e) => {
                        // Logged once per problem: a broken record stops the export until an
                        // operator looks (the backlog metric keeps growing meanwhile).
                        let text = e.to_string();
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::error!("cannot read the decision journal for export: {text}");
                            last_error = Some(text);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                };
                let Some(last) = records.last().map(|r| r.seq) else {
                    break;
                };
                let (request, oldest_ms) = self.request_of(&records);
                // The rate bound: a batch of n spans is sent no sooner than n / rate after
                // the one before (live traffic stays below it; a backlog drains at it).
                if let Some(at) = not_before {
                    tokio::time::sleep_until(at).await;
                }
                not_before = Some(tokio::time::Instant::now() + pace(records.len() as u64, self.spans_per_second));
                let mut sender = client.clone();
                in_flight.push_back(InFlight {
                    last,
                    oldest_ms,
                    answer: tokio::spawn(async move { export(&mut sender, request).await }),
                });
            }
            let Some(front) = in_flight.pop_front() else {
                tollgate_telemetry::metrics::metrics().journal_backlog_age.set(0);
                // Caught up: the position on disk says so too.
                if acknowledged > written && written_at.elapsed() >= POSITION_EVERY {
                    written = self.write_position(acknowledged).await;
                    written_at = tokio::time::Instant::now();
                }
                tokio::time::sleep(IDLE).await;
                continue;
            };
            // The export lag: how long the oldest decision not yet acknowledged has waited.
            if let Some(at_ms) = front.oldest_ms {
                let age_ms = tollgate_limiter::wall_clock_ms().saturating_sub(at_ms);
                tollgate_telemetry::metrics::metrics()
                    .journal_backlog_age
                    .set(i64::try_from(age_ms / 1000).unwrap_or(i64::MAX));
            }
            match front.answer.await {
                Ok(Ok(())) => {
                    if failing {
                        tracing::info!("the collector answers again: the decision journal's backlog is being sent");
                        failing = false;
                    }
                    backoff = Duration::from_millis(100);
                    acknowledged = front.last;
                    // The position is made durable (two fsyncs) at most every POSITION_EVERY
                    // while a backlog drains, not per batch: a restart sends the spans of
                    // that last stretch again (at least once; the same span ids).
                    if written_at.elapsed() >= POSITION_EVERY {
                        written = self.write_position(acknowledged).await;
                        written_at = tokio::time::Instant::now();
                    }
                }
                failed => {
                    if !failing {
                        let why = match failed {
                            Ok(Err(status)) => status.message().to_owned(),
                            _ => "the export task failed".to_owned(),
                        };
                        tracing::warn!(
                            "cannot export decision spans ({why}); they stay in the decision journal and are sent when the collector answers"
                        );
                        failing = true;
                    }
                    // Everything after the last acknowledged batch is sent again, in order.
                    for batch in in_flight.drain(..) {
                        batch.answer.abort();
                    }
                    reader = Some(tollgate_journal::Reader::following(
                        &self.dir,
                        acknowledged + 1,
                        self.durable.clone(),
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The OTLP request for `records` (encoded), and the time of the oldest decision among
    /// them. Each record's span is sent as the journal holds it, with two attributes appended
    /// (a repeated protobuf field may continue after the message's end): the journal's chain
    /// head at that decision and its sequence number, by which an auditor finds the record.
    fn request_of(&self, records: &[tollgate_journal::Record]) -> (Vec<u8>, Option<u64>) {
        use prost::Message;
        use prost::encoding::{WireType, encode_key, encode_varint, message};
        let mut oldest_ms = None;
        let mut scope_spans = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 128).sum());
        message::encode(
            1,
            &InstrumentationScope {
                name: "tollgate".into(),
                ..Default::default()
            },
            &mut scope_spans,
        );
        let mut extra = Vec::with_capacity(128);
        let mut legacy = Vec::new();
        for r in records {
            let (span, at_ms) = match crate::audit::span_record(&r.payload) {
                Some(record) if record.traced => (record.span, record.at_ms),
                Some(_) => continue,
                // A record written by an earlier version (JSON).
                None => {
                    let Ok(record) = crate::audit::decode_record(&r.payload) else {
                        continue;
                    };
                    let span = crate::audit::span_of(&record);
                    if span.trace_id.is_empty() {
                        continue;
                    }
                    legacy.clear();
                    span.encode_raw(&mut legacy);
                    (legacy.as_slice(), record.decision.at_ms)
                }
            };
            oldest_ms.get_or_insert(at_ms);
            extra.clear();
            message::encode(9, &text("tollgate.audit.chain", &hex::encode(r.hash)), &mut extra);
            message::encode(
                9,
                &int("tollgate.audit.seq", i64::try_from(r.seq).unwrap_or(i64::MAX)),
                &mut extra,
            );
            encode_key(2, WireType::LengthDelimited, &mut scope_spans);
            encode_varint((span.len() + extra.len()) as u64, &mut scope_spans);
            scope_spans.extend_from_slice(span);
            scope_spans.extend_from_slice(&extra);
        }
        let mut resource_spans = Vec::with_capacity(scope_spans.len() + 64);
        message::encode(
            1,
            &Resource {
                attributes: vec![text("service.name", &self.service)],
                ..Default::default()
            },
            &mut resource_spans,
        );
        encode_key(2, WireType::LengthDelimited, &mut resource_spans);
        encode_varint(scope_spans.len() as u64, &mut resource_spans);
        resource_spans.extend_from_slice(&scope_spans);
        let mut request = Vec::with_capacity(resource_spans.len() + 8);
        encode_key(1, WireType::LengthDelimited, &mut request);
        encode_varint(resource_spans.len() as u64, &mut request);
        request.extend_from_slice(&resource_spans);
        (request, oldest_ms)
    }

    /// Writes the export position; what is on disk afterwards (the old position when the
    /// write failed, so it is tried again). A failure is logged when it starts, not on every
    /// try.
    async fn write_position(&self, seq: u64) -> u64 {
        static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || tollgate_journal::write_exported(&dir, seq)).await;
        match written {
            Ok(Ok(())) => {
                FAILING.store(false, std::sync::atomic::Ordering::Relaxed);
                seq
            }
            failed => {
                if !FAILING.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the writing task failed".to_owned(),
                    };
                    tracing::warn!("cannot record the export position of the decision journal: {why}");
                }
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || tollgate_journal::read_exported(&dir))
                    .await
                    .unwrap_or(0)
            }
        }
    }
}

/// A batch sent and not yet acknowledged.
struct InFlight {
    /// Its last record's sequence number.
    last: u64,
    /// When its oldest decision was made (ms since the epoch).
    oldest_ms: Option<u64>,
    answer: tokio::task::JoinHandle<Result<(), tonic::Status>>,
}

/// Sends one encoded `ExportTraceServiceRequest` (OTLP/gRPC `TraceService/Export`).
async fn export(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: Vec<u8>,
) -> Result<(), tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the collector is not reachable: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let answer = client.unary(tonic::Request::new(request), path, Encoded).await?;
    // Spans the collector took but rejected are not sent again (they would be rejected
    // again); it says how many and why.
    if let Some(partial) = answer.into_inner().partial_success
        && partial.rejected_spans > 0
    {
        tracing::warn!(
            rejected = partial.rejected_spans,
            "the collector rejected decision spans: {:?}",
            partial.error_message
        );
    }
    Ok(())
}

/// A gRPC codec whose requests are already encoded (the journal holds spans as protobuf) and
/// whose answers are `ExportTraceServiceResponse`.
#[derive(Clone, Copy)]
struct Encoded;

struct EncodedRequest;

impl tonic::codec::Encoder for EncodedRequest {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for Encoded {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedRequest;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> EncodedRequest {
        EncodedRequest
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// How long sending `spans` takes at `per_second`.
fn pace(spans: u64, per_second: u64) -> Duration {
    Duration::from_micros(spans.saturating_mul(1_000_000) / per_second.max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_waits_its_share_of_a_second() {
        assert_eq!(super::pace(512, 50_000), std::time::Duration::from_micros(10_240));
        assert_eq!(super::pace(300, 300), std::time::Duration::from_secs(1));
        assert_eq!(super::pace(1, 0), std::time::Duration::from_secs(1));
    }
}
