//! Decisions over one long-lived `DecideStream` per replica: the decisions of concurrent
//! calls travel together, many per message under load and one at a time when idle.
//!
//! Callers put their request on a bounded queue and wait for its answer. One task per
//! replica drains the queue: it takes the first waiting request, adds every other request
//! already queued (up to `batch_max` and half the largest message), and hands the batch to
//! the stream as soon as the stream can take it. Nothing waits on a timer: an idle edge sends
//! each decision at once, and a busy one sends whatever queued while the last batch was
//! being written. Answers come back by sequence number, in any order.
//!
//! When the stream breaks (the replica died, the connection was reset), every decision
//! waiting on it fails as an outage, so that its caller asks the next replica with the same
//! request id; the stream is opened again for the next decision. A replica that does not
//! serve `DecideStream` (an older version, during a rolling upgrade) is asked with unary
//! `Decide` from then on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::MAX_MESSAGE_BYTES;
use crate::proto::decision_service_client::DecisionServiceClient;
use crate::proto::{DecideBatch, DecideItem, DecideRequest, Decision, DecisionBatch};

/// Default for the most decisions one stream message carries.
pub const DEFAULT_BATCH_MAX: usize = 256;

/// Decisions a replica's stream may have unanswered at once, per `batch_max`; callers beyond
/// that wait in the queue.
const IN_FLIGHT_PER_BATCH: usize = 16;

/// A batch stops growing at this many encoded bytes (well under the message limit, since a
/// call's arguments can be large).
const MAX_BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;

type Answer = Result<Decision, Status>;

struct Queued {
    item: DecideItem,
    answer: oneshot::Sender<Answer>,
}

/// The queue in front of one replica's decision stream.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Queued>,
    unary: Arc<AtomicBool>,
}

impl Batcher {
    /// Starts the task that feeds `client`'s stream. Needs a Tokio runtime.
    pub(crate) fn start(
        client: DecisionServiceClient<Channel>,
        address: String,
        authorization: Option<AsciiMetadataValue>,
        batch_max: usize,
    ) -> Batcher {
        let batch_max = batch_max.max(1);
        let in_flight = batch_max * IN_FLIGHT_PER_BATCH;
        let (queue, waiting) = mpsc::channel(in_flight);
        let unary = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            client,
            address,
            authorization,
            batch_max,
            in_flight,
            unary: unary.clone(),
            next_seq: 0,
        };
        tokio::spawn(driver.run(waiting));
        Batcher { queue, unary }
    }

    /// Whether this replica answered that it has no `DecideStream`.
    pub(crate) fn unary(&self) -> bool {
        self.unary.load(Ordering::Relaxed)
    }

    /// Asks for one decision on the stream. The caller bounds the wait; giving up drops the
    /// answer, and a decision not yet sent is then not sent at all.
    pub(crate) async fn decide(&self, request: DecideRequest) -> Answer {
        let (traceparent, tracestate) = tollgate_telemetry::propagation::current_pair();
        let (answer, answered) = oneshot::channel();
        let item = DecideItem {
            seq: 0,
            request: Some(request),
            traceparent,
            tracestate,
        };
        self.queue
            .send(Queued { item, answer })
            .await
            .map_err(|_| Status::unavailable("the decision stream's task has stopped"))?;
        answered
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the decision stream closed before answering")))
    }
}

struct Driver {
    client: DecisionServiceClient<Channel>,
    address: String,
    authorization: Option<AsciiMetadataValue>,
    batch_max: usize,
    in_flight: usize,
    unary: Arc<AtomicBool>,
    next_seq: u64,
}

/// What ended one stream.
enum Ended {
    /// Every `Batcher` is gone: the decider was dropped.
    Dropped,
    /// The stream could not be opened or broke; the next decision opens another.
    Broke,
}

impl Driver {
    async fn run(mut self, mut waiting: mpsc::Receiver<Queued>) {
        let mut carry: Option<Queued> = None;
        loop {
            let first = match carry.take() {
                Some(queued) => queued,
                None => match waiting.recv().await {
                    Some(queued) => queued,
                    None => return,
                },
            };
            if first.answer.is_closed() {
                continue;
            }
            if self.unary.load(Ordering::Relaxed) {
                let _ = first.answer.send(Err(Status::unimplemented("DecideStream")));
                continue;
            }
            carry = Some(first);
            if let Ended::Dropped = self.stream(&mut waiting, &mut carry).await {
                return;
            }
        }
    }

    /// Builds the next batch: `first`, then whatever else is queued now, within the count and
    /// byte bounds. A request that does not fit is left in `carry` for the next batch.
    fn batch(
        &mut self,
        first: Queued,
        waiting: &mut mpsc::Receiver<Queued>,
        carry: &mut Option<Queued>,
        pending: &mut HashMap<u64, oneshot::Sender<Answer>>,
    ) -> DecideBatch {
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(mut queued) = next.take() {
            if !queued.answer.is_closed() {
                let size = queued.item.encoded_len();
                if !items.is_empty() && bytes + size > MAX_BATCH_BYTES {
                    *carry = Some(queued);
                    break;
                }
                bytes += size;
                self.next_seq = self.next_seq.wrapping_add(1);
                queued.item.seq = self.next_seq;
                pending.insert(self.next_seq, queued.answer);
                items.push(queued.item);
            }
            if items.len() < self.batch_max && pending.len() < self.in_flight {
                next = waiting.try_recv().ok();
            }
        }
        tollgate_telemetry::metrics::metrics().observe_batch("sent", items.len());
        DecideBatch { items }
    }

    /// Runs one stream until it breaks or the decider is dropped, starting with `carry`.
    async fn stream(&mut self, waiting: &mut mpsc::Receiver<Queued>, carry: &mut Option<Queued>) -> Ended {
        let mut pending = HashMap::new();
        let (batches, outgoing) = mpsc::channel::<DecideBatch>(1);
        // The first batch goes out with the stream's headers, not a round trip later.
        if let Some(first) = carry.take() {
            let batch = self.batch(first, waiting, carry, &mut pending);
            // A fresh channel of capacity one always takes its first message; should it not,
            // the batch's callers are failed as an outage rather than left waiting.
            if batches.try_send(batch).is_err() {
                fail_all(&mut pending, &Status::unavailable("could not queue the first batch"));
                return Ended::Broke;
            }
        }
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        let mut answers = match self.client.decide_stream(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if status.code() == Code::Unimplemented {
                    tracing::info!(replica = %self.address, "decision replica has no DecideStream; asking it one call at a time");
                    self.unary.store(true, Ordering::Relaxed);
                }
                fail_all(&mut pending, &status);
                return Ended::Broke;
            }
        };
        loop {
            tokio::select! {
                biased;
                answer = answers.message() => match answer {
                    Ok(Some(batch)) => self.deliver(batch, &mut pending),
                    Ok(None) => {
                        let status = Status::unavailable(format!("{} ended the decision stream", self.address));
                        fail_all(&mut pending, &status);
                        return Ended::Broke;
                    }
                    Err(status) => {
                        tracing::warn!(replica = %self.address, code = ?status.code(), "decision stream broke: {}", status.message());
                        let status = if crate::client::stream_outage(status.code()) {
                            Status::unavailable(format!("{}: decision stream broke: {}", self.address, status.message()))
                        } else {
                            status
                        };
                        fail_all(&mut pending, &status);
                        return Ended::Broke;
                    }
                },
                queued = waiting.recv(), if carry.is_none() && pending.len() < self.in_flight => match queued {
                    Some(queued) => *carry = Some(queued),
                    None => return Ended::Dropped,
                },
                permit = batches.reserve(), if carry.is_some() => {
                    let Ok(permit) = permit else {
                        let status = Status::unavailable(format!("{}: the decision stream's request ended", self.address));
                        fail_all(&mut pending, &status);
                        return Ended::Broke;
                    };
                    if let Some(first) = carry.take() {
                        let batch = self.batch(first, waiting, carry, &mut pending);
                        if !batch.items.is_empty() {
                            permit.send(batch);
                        }
                    }
                }
            }
        }
    }

    fn deliver(&self, batch: DecisionBatch, pending: &mut HashMap<u64, oneshot::Sender<Answer>>) {
        for item in batch.items {
            let Some(answer) = pending.remove(&item.seq) else {
                tracing::warn!(replica = %self.address, seq = item.seq, "decision stream answered a decision it was not asked");
                continue;
            };
            let outcome = match (item.decision, item.invalid.is_empty()) {
                (_, false) => Err(Status::invalid_argument(item.invalid)),
                (Some(decision), true) => Ok(decision),
                (None, true) => Err(Status::internal("decision stream answered without a decision")),
            };
            let _ = answer.send(outcome);
        }
    }
}

fn fail_all(pending: &mut HashMap<u64, oneshot::Sender<Answer>>, status: &Status) {
    for (_, answer) in pending.drain() {
        let _ = answer.send(Err(Status::new(status.code(), status.message().to_owned())));
    }
}
