//! `tollgate-loadtest`: parse arguments, run the scenario, print and check the results.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tollgate_loadtest::{Mode, Protocol, Scenario, Target, exactness, run, table};

/// Load harness for Tollgate.
///
/// Sends real MCP traffic (tools/call with the scenario's mix of tools, grants and
/// arguments, in the session era after initialize, or stateless in MCP 2026-07-28 with
/// `mcp --protocol 2026-07-28`) through one or more edges, and reports throughput, latency
/// percentiles (p50, p90, p99, p99.9, max, from an HDR histogram), verdict counts and errors,
/// as a table and optionally as JSON.
///
/// With --policy, checks from its own records that no sliding window admitted more than its
/// limit (exit status 2 on any over-admission). With --baseline, runs the same scenario
/// straight at the upstream too, and prints the gateway/direct ratios. Targets must be on
/// loopback; runs are bounded by duration and request count.
#[derive(Parser)]
#[command(name = "tollgate-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Mcp(McpArgs),
    Decide(DecideArgs),
    Held(HeldArgs),
}

/// Memory of calls held for approval.
///
/// Opens N calls of a tool whose rule requires approval with a hold, each with its own
/// arguments (so each asks for its own approval), one connection each, waits until every one
/// is held, and prints the resident memory of the given processes before and while they are
/// held, per held call. Loopback only.
#[derive(Args)]
struct HeldArgs {
    /// The edge's MCP endpoint, e.g. http://127.0.0.1:8080/mcp/k8s.
    #[arg(long)]
    url: String,
    /// The agent's bearer key.
    #[arg(long)]
    key: String,
    #[arg(long, default_value = "k8s_scale")]
    tool: String,
    /// Calls to hold at once (at most 20000).
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Processes whose memory to read (edge, decision service, or tollgate up).
    #[arg(long = "pid")]
    pids: Vec<u32>,
}

/// MCP load through Tollgate's edges.
///
/// Sends real MCP traffic (tools/call with the scenario's mix of tools, grants and
/// arguments) through one or more edges, and reports throughput, latency percentiles (p50,
/// p90, p99, p99.9, max, from an HDR histogram), verdict counts and errors, as a table and
/// optionally as JSON.
///
/// --protocol (or load.protocol in the scenario) chooses the MCP era: `session` (default)
/// initializes an MCP session per client and sends its calls with its Mcp-Session-Id;
/// `2026-07-28` sends no initialize and no session, and each call carries the revision,
/// client info and capabilities in params._meta and the MCP-Protocol-Version, Mcp-Method and
/// Mcp-Name headers. Bodies and headers are prepared once per run in both eras, so the client
/// does the same work per call and a comparison measures the server
/// (loadtest/modern-vs-session.sh compares the two through one edge). Tools that declare
/// Mcp-Param-* headers (x-mcp-header) are not supported in 2026-07-28 mode.
///
/// With --policy, checks from its own records that no sliding window admitted more than its
/// limit (exit status 2 on any over-admission). With --baseline, runs the same scenario
/// straight at the upstream too, and prints the gateway/direct ratios. Targets must be on
/// loopback; runs are bounded by duration and request count.
#[derive(Args)]
struct McpArgs {
    /// Scenario file (TOML), e.g. loadtest/scenarios/seed.toml.
    scenario: PathBuf,
    /// The policy the gateway enforces, for the exactness check.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Also run against the upstream directly and print ratios.
    #[arg(long)]
    baseline: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Override load.mode.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Override load.duration_s.
    #[arg(long)]
    duration: Option<f64>,
    /// Override load.concurrency (closed mode).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Override load.rate (open mode, calls per second).
    #[arg(long)]
    rate: Option<f64>,
    /// Override load.max_requests.
    #[arg(long)]
    max_requests: Option<u64>,
    /// Override load.protocol: the MCP era of the calls, `session` (initialize, then calls
    /// on an Mcp-Session-Id; the default) or `2026-07-28` (stateless: no initialize, the
    /// revision in each request's params._meta and its MCP-Protocol-Version, Mcp-Method and
    /// Mcp-Name headers).
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Override load.warmup_s: seconds of calls before the measured duration, not counted
    /// in throughput, latency or verdicts (errors are), e.g. to get past connection setup
    /// and each session's first call. At most 60.
    #[arg(long)]
    warmup: Option<f64>,
}

/// Decide RPCs straight at a decision service (no edge, no MCP).
///
/// N concurrent callers send Decide for one tool and grant for a fixed time; prints
/// decisions per second, admitted, errors and latency percentiles. Used by
/// loadtest/decision-vs-redis.sh to compare with redis-benchmark running the same Lua script.
#[derive(Args)]
struct DecideArgs {
    /// The decision service, e.g. http://127.0.0.1:50051 (loopback only).
    #[arg(long)]
    url: String,
    #[arg(long)]
    tool: String,
    #[arg(long, default_value = "bench")]
    grant: String,
    /// Spread the calls over this many grants (GRANT-0, GRANT-1, …), e.g. to keep that many
    /// per-grant counter keys alive.
    #[arg(long, default_value_t = 1)]
    grants: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds (at most 600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Most decisions per message on the batched decision stream, as an edge's
    /// `edge.decision_batch_max`; 0 sends each as a unary `Decide` call.
    #[arg(long, default_value_t = tollgate_decision::DEFAULT_BATCH_MAX)]
    batch_max: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Closed,
    Open,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    /// The session era: initialize, then calls on an Mcp-Session-Id.
    Session,
    /// MCP 2026-07-28: stateless, no initialize, no session.
    #[value(name = "2026-07-28")]
    Stateless,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => match runtime.block_on(main_async(cli)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tollgate-loadtest: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("tollgate-loadtest: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Mcp(args) => mcp(args).await,
        Command::Decide(args) => decide(args).await,
        Command::Held(args) => held(args).await,
    }
}

async fn held(args: HeldArgs) -> anyhow::Result<ExitCode> {
    if args.calls == 0 || args.calls > 20_000 {
        anyhow::bail!("--calls must be within 1..=20000");
    }
    let out = tollgate_loadtest::held::run(&args.url, &args.key, &args.tool, args.calls, &args.pids).await?;
    println!(
        "held {} calls at once (all held after {:.1} s)",
        out.held,
        out.took.as_secs_f64()
    );
    for (pid, before, during) in out.memory {
        let per_call = (during.saturating_sub(before) as f64 * 1024.0) / out.held as f64;
        println!(
            "process {pid}: resident {:.1} MiB before, {:.1} MiB while held: {:.1} KiB per held call",
            before as f64 / 1024.0,
            during as f64 / 1024.0,
            per_call / 1024.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(args: DecideArgs) -> anyhow::Result<ExitCode> {
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        anyhow::bail!("--duration must be within (0, 600] seconds");
    }
    let duration = std::time::Duration::from_secs_f64(args.duration);
    let out = tollgate_loadtest::decide::run(
        &args.url,
        &args.tool,
        &args.grant,
        args.grants.max(1),
        args.concurrency,
        duration,
        args.batch_max,
    )
    .await?;
    let ms = |q: f64| out.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "decisions {} in {:.1} s: {:.0} decisions/s, admitted {}, errors {}, p50 {:.3} ms, p99 {:.3} ms",
        out.decisions,
        out.elapsed.as_secs_f64(),
        out.decisions as f64 / out.elapsed.as_secs_f64(),
        out.admitted,
        out.errors,
        ms(0.5),
        ms(0.99)
    );
    Ok(if out.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn mcp(cli: McpArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = Scenario::load(&cli.scenario)?;
    if let Some(mode) = cli.mode {
        scenario.load.mode = match mode {
            ModeArg::Closed => Mode::Closed,
            ModeArg::Open => Mode::Open,
        };
    }
    if let Some(d) = cli.duration {
        scenario.load.duration_s = d;
    }
    if let Some(c) = cli.concurrency {
        scenario.load.concurrency = c;
    }
    if let Some(r) = cli.rate {
        scenario.load.rate = r;
    }
    if let Some(m) = cli.max_requests {
        scenario.load.max_requests = m;
    }
    if let Some(p) = cli.protocol {
        scenario.load.protocol = match p {
            ProtocolArg::Session => Protocol::Session,
            ProtocolArg::Stateless => Protocol::Stateless,
        };
    }
    if let Some(w) = cli.warmup {
        scenario.load.warmup_s = w;
    }
    if scenario.load.protocol != Protocol::Session {
        println!("protocol {}", scenario.load.protocol.name());
    }
    let policy = match &cli.policy {
        Some(path) => Some(
            tollgate_policy::load_file(path)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .policy,
        ),
        None => None,
    };

    let mut results = Vec::new();
    if cli.baseline {
        let direct = run(&scenario, Target::Direct).await?;
        print!("{}", table(&direct.summary()));
        results.push(direct);
    }
    let gateway = run(&scenario, Target::Gateway).await?;
    print!("{}", table(&gateway.summary()));

    let mut report = json!({"scenario": cli.scenario.display().to_string(), "runs": []});
    if let Some(direct) = results.first() {
        let (g, d) = (gateway.summary(), direct.summary());
        let throughput_ratio = if d.throughput > 0.0 {
            g.throughput / d.throughput
        } else {
            0.0
        };
        let added_p50 = g.latency_ms["p50"] - d.latency_ms["p50"];
        println!("gateway/direct: throughput ratio {throughput_ratio:.2}, added p50 {added_p50:.3} ms");
        report["ratios"] = json!({"throughput": throughput_ratio, "added_p50_ms": added_p50});
    }
    let mut over_admitted = false;
    if let Some(policy) = &policy {
        let limits = exactness::check(policy, &gateway.admitted);
        for l in &limits {
            let status = if l.violations.is_empty() { "ok" } else { "OVER-ADMITTED" };
            println!(
                "limit {}: max {} per {} ms, most seen in one window {} ({status})",
                l.counter, l.max, l.window_ms, l.max_observed
            );
            for key in &l.violations {
                println!("  over-admitted key: {key}");
            }
        }
        over_admitted = limits.iter().any(|l| !l.violations.is_empty());
        report["exactness"] = serde_json::to_value(&limits)?;
    }
    results.push(gateway);
    report["runs"] = serde_json::to_value(results.iter().map(|o| o.summary()).collect::<Vec<_>>())?;
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(if over_admitted {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
