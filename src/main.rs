//! `tollgate`: one binary for every role. Parses arguments, loads the config, and hands
//! over to the component crates; no request logic lives here.

mod admin;
mod commands;
mod config;
mod console;
mod explain;
mod pins;
mod policy_test;
mod replay;
mod shutdown;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: the request path makes many small, short-lived
/// allocations across worker threads, which glibc's arenas serve slowly (see BENCHMARKS.md,
/// "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tollgate: a policy gateway for MCP tool calls.
///
/// Agents connect to Tollgate's edge instead of their MCP servers. Every tools/call is
/// checked against your policy (allow, deny, rate-limit, require approval) before it
/// reaches the server, and tools/list only shows what the agent may call.
/// `0.1.0 (commit 1a2b3c4d5e6f)`: the version and the commit the binary was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TOLLGATE_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "tollgate", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Edge and decision service in one process with in-memory counters (laptop mode).
    Up {
        /// Config file (TOML); TOLLGATE_* environment variables override it.
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// Also run the bundled demo MCP server, so there is something to protect.
        #[arg(long)]
        demo: bool,
        /// Where the demo MCP server listens (with --demo).
        #[arg(long, default_value = "127.0.0.1:9000")]
        demo_listen: String,
    },
    /// The edge proxy: MCP Streamable HTTP at /mcp/{server}, deciding through gRPC.
    Edge {
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
    },
    /// The decision service: gRPC tollgate.v1.DecisionService and grpc.health.v1.
    Decision {
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
    },
    /// A harmless MCP server with Kubernetes-style tools, at http://LISTEN/mcp.
    ///
    /// Built on the official Rust MCP SDK (rmcp): it speaks MCP 2026-07-28 (stateless) and the
    /// session-based revisions up to 2025-11-25 (initialize hands out a session; a request
    /// sent without one is served on its own). GET /stats counts the tools/call requests that
    /// reached it, per tool, and its POSTs per HTTP version.
    DemoUpstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Answer POSTs as SSE streams instead of JSON (when the client accepts both).
        #[arg(long)]
        sse: bool,
        /// Page tools/list answers this many tools at a time (nextCursor).
        #[arg(long)]
        page_size: Option<usize>,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// With TLS: accept only clients presenting a certificate signed by this CA (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
    /// Runs a stdio MCP server behind MCP Streamable HTTP at http://LISTEN/mcp.
    ///
    /// Each MCP session gets a child process of its own, started by its initialize and
    /// ended by DELETE, the idle timeout or shutdown; its stderr goes to the log. Run it as a
    /// sidecar next to the server and point an [[upstreams]] url at it. Example:
    ///
    ///   tollgate stdio-bridge --listen 127.0.0.1:9100 -- uvx mcp-server-time
    StdioBridge {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
        /// The server's name in logs and errors (default: the program's file name).
        #[arg(long)]
        name: Option<String>,
        /// KEY=VALUE set in the server's environment (repeatable). The bridge's own
        /// TOLLGATE_* variables are never passed on.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The server's working directory.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// End a session after this long without a request or an open stream.
        #[arg(long, default_value_t = 600_000)]
        idle_timeout_ms: u64,
        /// Sessions (child processes) at once; initialize beyond it gets 503.
        #[arg(long, default_value_t = 100)]
        max_sessions: usize,
        /// Sessions one grant may have at once (named by the edge's `tollgate-grant` header,
        /// believed only with --token-sha256; set `forward_grant = true` on the edge's
        /// upstream). Default 8 with a token; without one, --max-sessions.
        #[arg(long)]
        max_sessions_per_grant: Option<usize>,
        /// Largest message either way, in bytes.
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_message_bytes: usize,
        /// How long a request waits for the server's answer.
        #[arg(long, default_value_t = 300_000)]
        request_timeout_ms: u64,
        /// Hex SHA-256 of a bearer token every request must carry (required when LISTEN is
        /// not a loopback address); the edge sends it with [[upstreams]] headers.
        #[arg(long, env = "TOLLGATE_BRIDGE_TOKEN_SHA256")]
        token_sha256: Option<String>,
        /// The server's command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List, approve and deny calls waiting for an operator (require_approval rules).
    ///
    /// Talks to the operators' API of any decision replica (decision.admin_listen) with an
    /// operator key ([[operators]], made by `tollgate keygen`).
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
        /// Config file: the API address comes from decision.admin_listen.
        #[arg(long, short, global = true, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// The operators' API, e.g. http://10.0.0.5:9465 (overrides the config file).
        #[arg(long, global = true)]
        url: Option<String>,
        /// Operator key.
        #[arg(long, global = true, env = "TOLLGATE_ADMIN_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Review tool definitions pinned by the edges (`pinning`): list, diff, approve, reject,
    /// export the approved ones as a lockfile, and check upstreams against a lockfile.
    ///
    /// list, diff, approve, reject and export talk to the operators' API of any decision
    /// replica (decision.admin_listen) with an operator key; check reads the upstreams of
    /// the config itself.
    Pins {
        #[command(subcommand)]
        command: PinsCommand,
        /// Config file: the API address comes from decision.admin_listen; `check` reads its
        /// [[upstreams]] and edge.pins_file.
        #[arg(long, short, global = true, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// The operators' API, e.g. http://10.0.0.5:9465 (overrides the config file).
        #[arg(long, global = true)]
        url: Option<String>,
        /// Operator key.
        #[arg(long, global = true, env = "TOLLGATE_ADMIN_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Check a configuration (with the TOLLGATE_* environment) without starting anything.
    ///
    /// Makes every check ROLE makes before it listens (settings, policy, store settings, TLS
    /// files, cluster token, upstreams, grants, identity) and exits 1 with the first problem.
    /// No port is bound and nothing is contacted. For deployment pipelines (image, Compose,
    /// Helm) and before a rolling restart.
    Check {
        #[arg(long, short, env = "TOLLGATE_CONFIG", default_value = "tollgate.toml")]
        config: PathBuf,
        /// The process the configuration is for.
        #[arg(long, value_enum, default_value = "up")]
        role: RoleArg,
    },
    /// Check or read a decision journal ([audit] journal_dir).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a new random key and its SHA-256 (an agent key or a cluster token).
    ///
    /// As an agent key: give the key to the agent and put the hash in its [[grants]] entry
    /// (key_sha256). As a cluster token: the key is edge.decision_token on the edges, the
    /// hash is decision.token_sha256 on the decision service.
    Keygen,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Up,
    Edge,
    Decision,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the journal's hash chain and report the first record that was changed, removed,
    /// reordered or inserted, with its segment, byte offset and sequence number (exit 1).
    /// A record cut short at the very end (a crash while writing) is reported, not an error.
    Verify {
        /// The journal directory (audit.journal_dir).
        dir: PathBuf,
        /// The replica's Ed25519 public key (hex, from `tollgate audit keygen`): every closed
        /// segment must then carry a valid signature.
        #[arg(long)]
        key: Option<String>,
    },
    /// Print a new Ed25519 signing key for audit.signing_key (a secret: keep it like the
    /// cluster token) and its public key for `audit verify --key`.
    Keygen,
    /// Write the journal's decision records as JSON lines (for a SIEM or a log shipper):
    /// each record's fields, with its sequence number (`seq`) and chain hash (`hash`).
    Export {
        /// The journal directory (audit.journal_dir).
        dir: PathBuf,
        /// Only records from this sequence number on.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Only decisions made at or after this time (milliseconds since the Unix epoch).
        #[arg(long)]
        since: Option<u64>,
        /// Format of the output (only `jsonl`).
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
}

#[derive(Subcommand)]
enum PinsCommand {
    /// Every recorded definition, pending first: id, state, kind, upstream/name, digest.
    List {
        /// One JSON array (with each definition's canonical JSON).
        #[arg(long)]
        json: bool,
    },
    /// A definition against the approved one of the same name, line by line.
    Diff { id: String },
    /// Approve definitions: each becomes the approved one of its name (its tool is shown
    /// and callable again in `enforce`).
    Approve {
        ids: Vec<String>,
        /// Every pending definition.
        #[arg(long)]
        all: bool,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject definitions: they stay hidden and refused (only their digest is kept).
    Reject {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print the approved definitions as a lockfile (for edge.pins_file): `tollgate pins
    /// export > tools.lock.json`.
    Export,
    /// Read every pinned upstream's lists now and compare them with a lockfile; exit 1 with
    /// a readable diff when a definition changed, is new, or is gone.
    Check {
        /// The lockfile (default: edge.pins_file of the config).
        #[arg(long)]
        lockfile: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Every approval of the cluster, newest first: pending, and resolved within the last hour.
    List {
        /// One JSON array (id, server, tool, grant, agent, arguments, status, expires_at, …).
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending call: its next identical call goes through (once).
    Approve {
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a pending call: the agent is told, with the reason.
    Deny {
        id: String,
        /// Why (the agent sees it, and the audit trail records it).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file; prints errors and warnings as FILE:LINE:COLUMN, exits 1 on errors.
    Check { file: PathBuf },
    /// Show which rule decides a call (a tools/call, resources/read or prompts/get), and the
    /// counters it would take.
    Explain {
        file: PathBuf,
        /// The tool of a `tools/call` (one of --tool, --resource, --prompt).
        #[arg(long, required_unless_present_any = ["resource", "prompt"], conflicts_with_all = ["resource", "prompt"])]
        tool: Option<String>,
        /// The URI of a `resources/read`.
        #[arg(long, conflicts_with = "prompt")]
        resource: Option<String>,
        /// The name of a `prompts/get`.
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long)]
        grant: String,
        #[arg(long, default_value = "")]
        server: String,
        #[arg(long, default_value = "")]
        agent: String,
        /// The call's arguments as a JSON object.
        #[arg(long)]
        args: Option<String>,
    },
    /// Test a policy offline against case files: calls (with times, for limits) and operator
    /// actions, each with what must happen. Memory store, virtual clock; exits 1 when a case
    /// fails, naming its file:line.
    ///
    /// A case file (YAML or JSON):
    ///   defaults: { server: k8s, grant: a }
    ///   cases:
    ///     - name: pauses are limited to 10 a minute
    ///       steps:
    ///         - { tool: k8s_rollout_pause, repeat: 10, expect: { verdict: ALLOW } }
    ///         - { tool: k8s_rollout_pause, expect: { verdict: RATE_LIMITED, remaining: { k8s_rollout_pause_rate: 0 } } }
    ///         - { after: 1m, tool: k8s_rollout_pause, expect: { verdict: ALLOW } }
    ///
    /// `expect` may also hold `shadow: { verdict, rule }`: what the policy's "mode": "shadow"
    /// rules would answer (recorded, not enforced).
    Test {
        /// The policy file.
        policy: PathBuf,
        /// Case files (YAML or JSON).
        #[arg(long, required = true, num_args = 1..)]
        cases: Vec<PathBuf>,
        /// Also write a JUnit XML report here (for CI).
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Decide recorded decisions again under a candidate policy, offline, and print what
    /// would change: counts by verdict pair (live -> candidate), by tool and grant, and
    /// sample calls. Records come from decision journals ([audit] journal_dir, one per
    /// replica) or from `tollgate audit export` JSON lines; limits are counted on a memory
    /// store whose clock follows the recorded times; an approval the live call consumed, or an
    /// operator's denial it met, is given to the candidate too; a decision given twice is
    /// replayed once. The policy is decided as it would be enforced live (its "mode":
    /// "shadow" rules left out; see --with-shadow-rules). Calls whose arguments were not
    /// recorded (telemetry.record_arguments) are not decided again when the candidate's rule
    /// reads arguments; they are counted as such. Exits 1 on an input with no records, a
    /// journal whose chain breaks, or a --fail-on condition that holds.
    Replay {
        /// A journal directory, or a JSON lines file from `tollgate audit export` (repeat for
        /// several replicas).
        #[arg(long = "journal", required = true, num_args = 1..)]
        journal: Vec<PathBuf>,
        /// The candidate policy (JSON, YAML or TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Only decisions made at or after this time (ms since the Unix epoch, or UTC like
        /// 2026-12-08T10:15:00Z).
        #[arg(long, value_parser = replay::parse_time)]
        since: Option<u64>,
        /// Only decisions made before this time (same forms as --since).
        #[arg(long, value_parser = replay::parse_time)]
        until: Option<u64>,
        /// Exit 1 when this holds (repeatable): newly-denied, newly-allowed, any-change,
        /// unknown.
        #[arg(long = "fail-on", value_enum)]
        fail_on: Vec<replay::FailOn>,
        /// Sample calls shown per verdict pair.
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Decide with the policy's `"mode": "shadow"` rules in force (as a `shadow_policy`
        /// candidate is evaluated); by default they are left out, as when the policy is live.
        #[arg(long)]
        with_shadow_rules: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            config,
            demo,
            demo_listen,
        } => commands::up(&config, demo.then_some(demo_listen)),
        Command::Edge { config } => commands::edge(&config),
        Command::Decision { config } => commands::decision(&config),
        Command::DemoUpstream {
            listen,
            sse,
            page_size,
            tls_cert,
            tls_key,
            tls_client_ca,
        } => commands::demo_upstream(
            &listen,
            tollgate_demo::DemoOptions { sse, page_size },
            tls_cert.zip(tls_key),
            tls_client_ca,
        ),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => return commands::policy_check(&file),
        Command::Policy {
            command: PolicyCommand::Test { policy, cases, junit },
        } => policy_test::policy_test(&policy, &cases, junit.as_deref()),
        Command::Policy {
            command:
                PolicyCommand::Replay {
                    journal,
                    policy,
                    since,
                    until,
                    fail_on,
                    samples,
                    json,
                    with_shadow_rules,
                },
        } => replay::policy_replay(replay::Options {
            inputs: journal,
            policy,
            since,
            until,
            fail_on,
            samples,
            json,
            with_shadow_rules,
        }),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    file,
                    tool,
                    resource,
                    prompt,
                    grant,
                    server,
                    agent,
                    args,
                },
        } => {
            let subject = match (tool, resource, prompt) {
                (Some(tool), _, _) => (tollgate_policy::Kind::Tool, tool),
                (_, Some(uri), _) => (tollgate_policy::Kind::Resource, uri),
                (_, _, Some(name)) => (tollgate_policy::Kind::Prompt, name),
                (None, None, None) => unreachable!("clap requires one of --tool, --resource, --prompt"),
            };
            commands::policy_explain(&file, &server, subject, &grant, &agent, args.as_deref())
        }
        Command::Keygen => commands::keygen(),
        Command::Audit { command } => match command {
            AuditCommand::Verify { dir, key } => commands::audit_verify(&dir, key.as_deref()),
            AuditCommand::Keygen => commands::audit_keygen(),
            AuditCommand::Export {
                dir,
                from,
                since,
                format,
            } => commands::audit_export(&dir, from, since, &format),
        },
        Command::Check { config, role } => commands::check(
            &config,
            match role {
                RoleArg::Up => commands::Role::Up,
                RoleArg::Edge => commands::Role::Edge,
                RoleArg::Decision => commands::Role::Decision,
            },
        ),
        Command::StdioBridge {
            listen,
            name,
            env,
            cwd,
            idle_timeout_ms,
            max_sessions,
            max_sessions_per_grant,
            max_message_bytes,
            request_timeout_ms,
            token_sha256,
            command,
        } => commands::stdio_bridge(
            &listen,
            commands::BridgeArgs {
                name,
                env,
                cwd,
                idle_timeout: std::time::Duration::from_millis(idle_timeout_ms),
                max_sessions,
                max_sessions_per_grant,
                max_message_bytes,
                request_timeout: std::time::Duration::from_millis(request_timeout_ms),
                token_sha256,
                command,
            },
        ),
        Command::Approvals {
            command,
            config,
            url,
            key,
        } => {
            let action = match command {
                ApprovalsCommand::List { json } => commands::ApprovalAction::List { json },
                ApprovalsCommand::Approve { id, reason } => commands::ApprovalAction::Resolve {
                    id,
                    approve: true,
                    reason,
                },
                ApprovalsCommand::Deny { id, reason } => commands::ApprovalAction::Resolve {
                    id,
                    approve: false,
                    reason,
                },
            };
            commands::approvals(&config, url, key, action)
        }
        Command::Pins {
            command,
            config,
            url,
            key,
        } => {
            let action = match command {
                PinsCommand::List { json } => pins::PinsAction::List { json },
                PinsCommand::Diff { id } => pins::PinsAction::Diff { id },
                PinsCommand::Approve { ids, all, reason } => pins::PinsAction::Resolve {
                    ids,
                    all,
                    approve: true,
                    reason,
                },
                PinsCommand::Reject { ids, reason } => pins::PinsAction::Resolve {
                    ids,
                    all: false,
                    approve: false,
                    reason,
                },
                PinsCommand::Export => pins::PinsAction::Export,
                PinsCommand::Check { lockfile } => pins::PinsAction::Check { lockfile },
            };
            pins::pins(&config, url, key, action)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
