//! Decisions over the batched `DecideStream`: concurrent decisions travel together and stay
//! exact, an invalid one is refused alone, a replica that dies mid-stream is failed over,
//! and a replica that predates the stream is asked one call at a time.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::Proc;
use tollgate_decision::proto::decision_service_server::{DecisionService, DecisionServiceServer};
use tollgate_decision::proto::{
    ApprovalUpdate, DecideBatch, DecideRequest, Decision, DecisionBatch, ListApprovalsRequest, ListApprovalsResponse,
    ResolveApprovalRequest, ResolveApprovalResponse, Verdict, VisibleToolsRequest, VisibleToolsResponse,
    WaitApprovalRequest,
};
use tollgate_decision::{Decider, DecisionError, GrpcDecider};
use tonic::{Request, Response, Status};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": {
      "limits": [{ "counter": "pause", "window": "1h", "max": 50, "scope": "grant" }]
    },
    "k8s_get_pods": {}
  }
}"#;

fn request(tool: &str, id: &str) -> DecideRequest {
    DecideRequest {
        request_id: id.into(),
        server: "k8s".into(),
        tool: tool.into(),
        grant: "batch".into(),
        agent: "tester".into(),
        arguments_json: "{}".into(),
        ..Default::default()
    }
}

fn decision_replica(tag: &str) -> Proc {
    let dir = support::temp_dir(tag);
    support::start_decision(&dir, "http://127.0.0.1:9/mcp", POLICY)
}

/// `tollgate_decide_batch_size{direction}`'s count (messages) and sum (decisions) on
/// `metrics_url`, zero before the first message.
async fn batches(metrics_url: &str, direction: &str) -> (f64, f64) {
    let text = support::get_text(metrics_url).await;
    let value = |suffix: &str| {
        let prefix = format!("tollgate_decide_batch_size_{suffix}{{direction=\"{direction}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse::<f64>().expect("a number"))
    };
    (value("count"), value("sum"))
}

/// Fires `n` decisions of `tool` at once and returns how many were admitted.
async fn burst(decider: &Arc<GrpcDecider>, tool: &str, tag: &str, n: usize) -> usize {
    let mut calls = Vec::new();
    for i in 0..n {
        let decider = decider.clone();
        let request = request(tool, &format!("{tag}-{i}"));
        calls.push(tokio::spawn(async move { decider.decide(request).await }));
    }
    let mut admitted = 0;
    for call in calls {
        let decision = call.await.expect("task").expect("decided");
        if decision.verdict() == Verdict::Allow {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_travel_together_and_stay_exact() {
    let decision = decision_replica("batch-exact");
    let metrics = decision.metrics_url.clone().expect("metrics URL");
    let decider = Arc::new(GrpcDecider::new(&[decision.url("")], Duration::from_secs(5), None, None).expect("client"));

    let admitted = burst(&decider, "k8s_rollout_pause", "exact", 400).await;
    assert_eq!(admitted, 50, "exactly max admitted out of 400 concurrent decisions");

    let (messages, decisions) = batches(&metrics, "received").await;
    assert_eq!(decisions, 400.0, "every decision came over the stream");
    assert!(
        messages < decisions,
        "concurrent decisions shared messages: {decisions} decisions in {messages} messages"
    );

    // Unary mode asks with `Decide`: the stream's counters do not move.
    let unary = Arc::new(
        GrpcDecider::new(&[decision.url("")], Duration::from_secs(5), None, None)
            .expect("client")
            .with_batch_max(0),
    );
    assert_eq!(burst(&unary, "k8s_get_pods", "unary", 20).await, 20);
    assert_eq!(
        batches(&metrics, "received").await.1,
        400.0,
        "unary decisions bypass the stream"
    );

    // A repeated request id is answered as before, over the stream too (idempotent retries).
    let again = decider
        .decide(request("k8s_rollout_pause", "exact-0"))
        .await
        .expect("decided");
    let first_admitted = again.verdict() == Verdict::Allow;
    let once_more = decider
        .decide(request("k8s_rollout_pause", "exact-0"))
        .await
        .expect("decided");
    assert_eq!(once_more.verdict() == Verdict::Allow, first_admitted);
}

#[tokio::test]
async fn an_invalid_decision_is_refused_alone_and_the_stream_goes_on() {
    let decision = decision_replica("batch-invalid");
    let decider = GrpcDecider::new(&[decision.url("")], Duration::from_secs(5), None, None).expect("client");
    let mut bad = request("k8s_get_pods", "bad");
    bad.grant = "x".repeat(300);
    match decider.decide(bad).await {
        Err(DecisionError::Failed(message)) => {
            assert!(message.contains("InvalidArgument"), "{message}");
            assert!(message.contains("grant"), "names the field: {message}");
        }
        other => panic!("an invalid request is a final error, never an outage: {other:?}"),
    }
    let good = decider
        .decide(request("k8s_get_pods", "good"))
        .await
        .expect("the stream still works");
    assert_eq!(good.verdict(), Verdict::Allow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_move_to_another_replica_when_a_stream_breaks() {
    let mut first = decision_replica("batch-failover-a");
    let second = decision_replica("batch-failover-b");
    let decider = Arc::new(
        GrpcDecider::new(&[first.url(""), second.url("")], Duration::from_secs(3), None, None).expect("client"),
    );
    // Both streams are open and used.
    assert_eq!(burst(&decider, "k8s_get_pods", "before", 40).await, 40);
    first.kill();
    // Half of these start on the dead replica's broken stream; every one is answered.
    for round in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(burst(&decider, "k8s_get_pods", &format!("after-{round}"), 40).await, 40);
        assert!(started.elapsed() < Duration::from_secs(3), "within the deadline");
    }
}

/// A replica from before `DecideStream`: answers `Decide` only.
struct OldReplica {
    unary_calls: Arc<AtomicU64>,
}

type Stream<T> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DecisionService for OldReplica {
    async fn decide(&self, request: Request<DecideRequest>) -> Result<Response<Decision>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Decision {
            decision_id: format!("old-{}", request.into_inner().request_id),
            verdict: Verdict::Allow as i32,
            ..Default::default()
        }))
    }

    type DecideStreamStream = Stream<DecisionBatch>;

    async fn decide_stream(
        &self,
        _: Request<tonic::Streaming<DecideBatch>>,
    ) -> Result<Response<Self::DecideStreamStream>, Status> {
        Err(Status::unimplemented(
            "Method not found: tollgate.v1.DecisionService/DecideStream",
        ))
    }

    async fn visible_tools(&self, _: Request<VisibleToolsRequest>) -> Result<Response<VisibleToolsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type WaitApprovalStream = Stream<ApprovalUpdate>;

    async fn wait_approval(
        &self,
        _: Request<WaitApprovalRequest>,
    ) -> Result<Response<Self::WaitApprovalStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_approvals(
        &self,
        _: Request<ListApprovalsRequest>,
    ) -> Result<Response<ListApprovalsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn resolve_approval(
        &self,
        _: Request<ResolveApprovalRequest>,
    ) -> Result<Response<ResolveApprovalResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn record_task(
        &self,
        _: Request<tollgate_decision::proto::RecordTaskRequest>,
    ) -> Result<Response<tollgate_decision::proto::RecordTaskResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn owned_tasks(
        &self,
        _: Request<tollgate_decision::proto::OwnedTasksRequest>,
    ) -> Result<Response<tollgate_decision::proto::OwnedTasksResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn observe_pins(
        &self,
        _: Request<tollgate_decision::proto::ObservePinsRequest>,
    ) -> Result<Response<tollgate_decision::proto::ObservePinsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_pins(
        &self,
        _: Request<tollgate_decision::proto::ListPinsRequest>,
    ) -> Result<Response<tollgate_decision::proto::ListPinsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn resolve_pins(
        &self,
        _: Request<tollgate_decision::proto::ResolvePinsRequest>,
    ) -> Result<Response<tollgate_decision::proto::ResolvePinsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn a_replica_without_the_stream_is_asked_one_call_at_a_time() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let unary_calls = Arc::new(AtomicU64::new(0));
    let service = DecisionServiceServer::new(OldReplica {
        unary_calls: unary_calls.clone(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let decider = GrpcDecider::new(&[format!("http://{addr}")], Duration::from_secs(3), None, None).expect("client");
    for i in 0..5 {
        let decision = decider
            .decide(request("k8s_get_pods", &format!("old-{i}")))
            .await
            .expect("decided the old way");
        assert_eq!(decision.decision_id, format!("old-old-{i}"));
    }
    assert_eq!(unary_calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_stream_of_hostile_items_is_answered_item_by_item_without_deciding_them() {
    use tollgate_decision::proto::decision_service_client::DecisionServiceClient;
    use tollgate_decision::proto::{DecideBatch, DecideItem};

    let decision = decision_replica("batch-hostile");
    let metrics = decision.metrics_url.clone().expect("metrics URL");
    let mut client = DecisionServiceClient::connect(decision.url("")).await.expect("connect");
    // More items than the replica keeps in progress (4096): missing requests, oversized
    // trace contexts, control characters, a duplicate sequence number.
    let mut items = Vec::new();
    for seq in 0..5000u64 {
        let item = match seq % 4 {
            0 => DecideItem {
                seq,
                ..Default::default()
            },
            1 => DecideItem {
                seq,
                request: Some(request("k8s_get_pods", "x")),
                traceparent: "0".repeat(600),
                ..Default::default()
            },
            2 => DecideItem {
                seq,
                request: Some(request("k8s_get_pods", "x")),
                tracestate: "a=\u{7}".into(),
                ..Default::default()
            },
            _ => DecideItem {
                seq: 1,
                request: Some(DecideRequest {
                    grant: "\n".into(),
                    ..request("k8s_get_pods", "x")
                }),
                ..Default::default()
            },
        };
        items.push(item);
    }
    let outgoing = tokio_stream::iter(vec![DecideBatch { items }]);
    let mut answers = client.decide_stream(outgoing).await.expect("stream").into_inner();
    let mut answered = 0;
    while answered < 5000 {
        let batch = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("answers keep coming")
            .expect("stream")
            .expect("a message");
        for item in batch.items {
            assert!(item.decision.is_none(), "an invalid item is never decided: {item:?}");
            assert!(!item.invalid.is_empty());
            answered += 1;
        }
    }
    assert_eq!(batches(&metrics, "received").await.1, 5000.0);
    let decisions = support::get_text(&metrics).await;
    assert!(
        !decisions.contains("tollgate_decisions_total{"),
        "nothing was decided: {decisions}"
    );
}
