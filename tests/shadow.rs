//! Issue 29, items 2 and 3: a candidate policy evaluated beside the live one on real traffic
//! through two decision replicas on Redis (the metric, the audit records and the console's
//! "Candidate policy" page show exactly the calls it would answer otherwise; the live
//! verdicts and the counters in Redis are what the live policy alone makes them), and
//! `tollgate policy replay` deciding the recorded run again: no difference under the live
//! policy, exactly the expected ones under the candidate.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::{KEY_A, Mcp, Proc, append, refusal, run, sha256_hex, write_config};

const OPERATOR_KEY: &str = "tg_operator_shadow_key";

const LIVE: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "1m", "max": 10, "scope": "grant" }] },
    "k8s_scale": { "action": "allow" },
    "k8s_get_pods": { "action": "allow" },
    "k8s_list_namespaces": { "action": "allow" }
  }
}"#;

/// Denies one tool, lowers one limit (the same counter, counted the same way: answered from
/// the live decision's own store answer), limits another tool on that live counter (read from
/// the store), and adds a counter the live policy does not have.
const CANDIDATE: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_rollout_pause": { "limits": [{ "counter": "pause", "window": "1m", "max": 3, "scope": "grant" }] },
    "k8s_scale": { "action": "deny", "reason": "scaling goes through the change process" },
    "k8s_get_pods": { "limits": [{ "counter": "pods_candidate", "window": "1m", "max": 1, "scope": "grant" }] },
    "k8s_list_namespaces": { "limits": [{ "counter": "pause", "window": "1m", "max": 6, "scope": "grant" }] }
  }
}"#;

async fn sign_in(admin: &str) -> String {
    support::console_sign_in(admin, OPERATOR_KEY).await
}

/// The Candidate policy page at `admin`, once it satisfies `ready` (10 s at most).
async fn candidate_page(admin: &str, cookie: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = support::console_page(&format!("{admin}/console/candidate"), cookie).await;
        if ready(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never got there:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tollgate_shadow_disagreements_total` of every replica, added up by (live, shadow, tool).
async fn disagreements(metrics: &[String]) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for url in metrics {
        let text = support::get_text(url).await;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("tollgate_shadow_disagreements_total{") else {
                continue;
            };
            let (labels, value) = rest.split_once("} ").expect("a sample");
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let n: u64 = value.trim().parse().expect("a count");
            *out.entry((label("live"), label("shadow"), label("tool"))).or_default() += n;
        }
    }
    out
}

fn key(live: &str, shadow: &str, tool: &str) -> (String, String, String) {
    (live.into(), shadow.into(), tool.into())
}

/// The decision records of a journal directory, as `tollgate audit export` writes them.
fn exported(journal: &Path) -> Vec<Value> {
    let (code, out, err) = run(&["audit", "export", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn replay(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["policy", "replay", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run(&all);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{out}\n{err}"));
    (code, report, err)
}

#[tokio::test]
async fn a_candidate_policy_is_evaluated_on_live_traffic_and_replayed_from_the_journals() {
    let redis = RedisServer::start();
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("shadow");
    let candidate = dir.join("candidate.json");
    std::fs::write(&candidate, CANDIDATE).expect("write the candidate");
    let live = dir.join("live.json");
    std::fs::write(&live, LIVE).expect("write the live policy");
    let journals = [dir.join("journal-0"), dir.join("journal-1")];

    let mut replicas = Vec::new();
    for (i, journal) in journals.iter().enumerate() {
        let config = write_config(&dir, &upstream.url("/mcp"), &[], LIVE, "");
        append(
            &config,
            &format!(
                "\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\n[[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n\n\
                 [console]\nsession_secret = \"{}\"\n",
                redis.url(),
                sha256_hex(OPERATOR_KEY),
                "s".repeat(40)
            ),
        );
        let env = [
            ("TOLLGATE_DECISION__SHADOW_POLICY", candidate.to_str().unwrap()),
            ("TOLLGATE_AUDIT__JOURNAL_DIR", journal.to_str().unwrap()),
            ("TOLLGATE_TELEMETRY__RECORD_ARGUMENTS", "true"),
        ];
        replicas.push(Proc::start(
            &format!("decision-{i}"),
            &["decision", "--config", config.to_str().unwrap()],
            &env,
        ));
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
    let config = write_config(&dir, &upstream.url("/mcp"), &urls, LIVE, "decision_timeout_ms = 5000");
    let edge = Proc::start("edge", &["edge", "--config", config.to_str().unwrap()], &[]);

    // Traffic through both replicas (the edge asks them in turn).
    let mut agent = Mcp::new(&edge.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    // Listed first, so the metric names the tools (unlisted ones are `_unlisted`).
    agent.tool_names().await;
    for i in 0..6 {
        let result = agent
            .call(
                "k8s_rollout_pause",
                json!({"namespace": "web", "name": format!("api-{i}")}),
            )
            .await;
        assert!(refusal(&result).is_none(), "pause {i} is admitted live: {result}");
    }
    for i in 0..2 {
        let result = agent
            .call(
                "k8s_scale",
                json!({"namespace": "web", "name": "api", "replicas": i + 2}),
            )
            .await;
        assert!(refusal(&result).is_none(), "scale {i} is admitted live: {result}");
        let result = agent.call("k8s_get_pods", json!({"namespace": "web"})).await;
        assert!(refusal(&result).is_none(), "get_pods {i} is admitted live: {result}");
    }
    let result = agent.call("k8s_list_namespaces", json!({})).await;
    assert!(refusal(&result).is_none(), "list_namespaces is admitted live: {result}");
    let result = agent.call("k8s_delete_namespace", json!({"namespace": "prod"})).await;
    assert!(refusal(&result).is_some(), "delete is denied live: {result}");

    // The metric: exactly the six calls the candidate answers otherwise: three pauses past
    // the lowered limit, both scales, and list_namespaces on the six pauses the live counter
    // holds (the candidate's own counter `pods_candidate` is never filled, so shadow
    // evaluation cannot limit on it).
    let metrics: Vec<String> = replicas
        .iter()
        .map(|r| r.metrics_url.clone().expect("metrics"))
        .collect();
    let found = disagreements(&metrics).await;
    let expected = BTreeMap::from([
        (key("ALLOW", "RATE_LIMITED", "k8s_rollout_pause"), 3),
        (key("ALLOW", "DENY", "k8s_scale"), 2),
        (key("ALLOW", "RATE_LIMITED", "k8s_list_namespaces"), 1),
    ]);
    assert_eq!(found, expected);

    // Counters in Redis are the live policy's alone: six pauses taken, and nothing written
    // for the candidate's counter.
    let keys = redis.cli(&["--scan", "--pattern", "*"]);
    assert!(!keys.contains("pods_candidate"), "the candidate created a key:\n{keys}");
    let pause_keys: Vec<&str> = keys.lines().filter(|k| k.contains("pause/grant=a")).collect();
    assert_eq!(pause_keys.len(), 1, "{keys}");
    assert_eq!(redis.cli(&["ZCARD", pause_keys[0]]).trim(), "6");

    // The audit records carry both verdicts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records: Vec<Value> = journals.iter().flat_map(|j| exported(j)).collect();
    assert_eq!(records.len(), 12, "{records:#?}");
    let pairs: BTreeMap<(String, String, String), usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        let field = |f: &str| r[f].as_str().unwrap_or_default().to_owned();
        *m.entry((field("verdict"), field("shadow_verdict"), field("tool")))
            .or_default() += 1;
        m
    });
    assert_eq!(pairs[&key("ALLOW", "RATE_LIMITED", "k8s_rollout_pause")], 3);
    assert_eq!(pairs[&key("ALLOW", "ALLOW", "k8s_rollout_pause")], 3);
    assert_eq!(pairs[&key("ALLOW", "DENY", "k8s_scale")], 2);
    assert_eq!(pairs[&key("DENY", "DENY", "k8s_delete_namespace")], 1);
    let scale = records
        .iter()
        .find(|r| r["tool"] == "k8s_scale")
        .expect("a scale record");
    assert_eq!(scale["shadow_rule"], "tools[\"k8s_scale\"]");
    assert!(
        records.iter().any(|r| r["replica"] != records[0]["replica"]),
        "both replicas decided"
    );

    // The console of one replica shows every replica's disagreements.
    let admin = replicas[1].admin_url.clone().expect("admin");
    let cookie = sign_in(&admin).await;
    let shown = candidate_page(&admin, &cookie, |t| t.contains("id=\"shadow-evaluated\">12<")).await;
    assert!(shown.contains("id=\"shadow-changed\">6<"), "{shown}");
    assert!(shown.contains(&candidate.display().to_string()), "{shown}");
    let rows: Vec<&str> = shown.split("<tr class=\"change\">").skip(1).collect();
    assert_eq!(rows.len(), 3, "{shown}");
    assert!(
        rows[0].contains("k8s_rollout_pause") && rows[0].contains("RATE_LIMITED"),
        "{}",
        rows[0]
    );
    assert!(rows[0].contains("<td class=\"count\">3</td>"), "{}", rows[0]);
    assert!(rows[1].contains("k8s_scale") && rows[1].contains("scaling goes through the change process"));
    assert!(rows[1].contains("<td class=\"count\">2</td>"), "{}", rows[1]);
    assert!(rows[2].contains("k8s_list_namespaces") && rows[2].contains("rate limit pause: 6 per 1m"));
    let table = shown.split("</table>").next().unwrap_or_default();
    assert!(!table.contains("k8s_get_pods"), "{table}");

    // Replay: the live policy reproduces every recorded verdict.
    let j0 = journals[0].to_str().unwrap();
    let j1 = journals[1].to_str().unwrap();
    let (code, report, err) = replay(&[
        "--journal",
        j0,
        j1,
        "--policy",
        live.to_str().unwrap(),
        "--fail-on",
        "any-change",
    ]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(report["compared"], 12, "{report:#}");
    assert_eq!(report["same"], 12, "{report:#}");
    assert_eq!(report["changed"], json!({}));
    // --since/--until select by decision time; a window with no decision is an error, not a
    // pass.
    let live_path = live.to_str().unwrap();
    for window in [["--since", "2999-01-01T00:00:00Z"], ["--until", "1"]] {
        let mut args = vec!["policy", "replay", "--journal", j0, j1, "--policy", live_path];
        args.extend_from_slice(&window);
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{window:?}");
        assert!(
            err.contains("no decision records to replay within --since/--until"),
            "{err}"
        );
    }

    // The candidate: the pauses and scales the shadow saw, and the second get_pods, which
    // replay counts on the candidate's own counter; list_namespaces is admitted here, since
    // under the candidate only three pauses would have taken the counter it shares. One
    // journal given as an export's JSON lines.
    let (code, lines, err) = run(&["audit", "export", j1]);
    assert_eq!(code, 0, "{err}");
    let jsonl = dir.join("journal-1.jsonl");
    std::fs::write(&jsonl, lines).expect("write the export");
    let candidate_path = candidate.to_str().unwrap();
    let (code, report, err) = replay(&[
        "--journal",
        j0,
        jsonl.to_str().unwrap(),
        "--policy",
        candidate_path,
        "--fail-on",
        "newly-allowed",
    ]);
    assert_eq!(code, 0, "nothing newly allowed: {report:#}\n{err}");
    assert_eq!(
        report["changed"],
        json!({"ALLOW -> DENY": 2, "ALLOW -> RATE_LIMITED": 4}),
        "{report:#}"
    );
    let by_tool: BTreeMap<String, u64> = report["by_tool"]
        .as_array()
        .expect("by_tool")
        .iter()
        .map(|t| {
            (
                format!("{} {}", t["tool"].as_str().unwrap(), t["candidate"].as_str().unwrap()),
                t["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_tool,
        BTreeMap::from([
            ("k8s_get_pods RATE_LIMITED".to_owned(), 1),
            ("k8s_rollout_pause RATE_LIMITED".to_owned(), 3),
            ("k8s_scale DENY".to_owned(), 2),
        ])
    );
    let sample = &report["samples"]["ALLOW -> DENY"][0];
    assert_eq!(sample["candidate_rule"], "tools[\"k8s_scale\"]");
    let (code, _, err) = replay(&[
        "--journal",
        j0,
        j1,
        "--policy",
        candidate_path,
        "--fail-on",
        "newly-denied",
    ]);
    assert_eq!(code, 1, "newly denied calls fail the replay");
    assert!(err.contains("--fail-on newly-denied holds"), "{err}");
    // The human-readable form names the pairs and the tools.
    let (code, text, _) = run(&["policy", "replay", "--journal", j0, j1, "--policy", candidate_path]);
    assert_eq!(code, 0);
    assert!(
        text.contains("12 decisions replayed: 6 the same, 6 answered otherwise"),
        "{text}"
    );
    assert!(text.contains("ALLOW -> RATE_LIMITED"), "{text}");

    // Without the arguments, a candidate whose rule reads them cannot decide those calls.
    let reads = dir.join("reads-arguments.json");
    std::fs::write(
        &reads,
        r#"{"version": "1", "default": "allow", "tools": {"k8s_scale": {"arguments": {"type": "object", "properties": {"replicas": {"maximum": 2}}}}}}"#,
    )
    .expect("write");
    let (code, lines0, err) = run(&["audit", "export", j0]);
    assert_eq!(code, 0, "{err}");
    let exported_lines = std::fs::read_to_string(&jsonl).expect("read") + &lines0;
    let scales = exported_lines
        .lines()
        .filter(|l| l.contains("\"tool\":\"k8s_scale\""))
        .count() as u64;
    let stripped: String = exported_lines
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("json");
            v.as_object_mut().expect("object").remove("arguments");
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&jsonl, stripped).expect("write");
    let (code, report, _) = replay(&[
        "--journal",
        jsonl.to_str().unwrap(),
        "--policy",
        reads.to_str().unwrap(),
        "--fail-on",
        "unknown",
    ]);
    assert_eq!(code, 1, "{report:#}");
    let unknown: u64 = report["unknown"]
        .as_object()
        .expect("unknown")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!((unknown, scales), (2, 2), "{report:#}");
    assert_eq!(report["compared"], 10, "{report:#}");

    // The candidate reloads like the live policy: a file that does not compile is reported on
    // the page and the last good candidate stays; a good one replaces it, and counting starts
    // again for it.
    std::fs::write(
        &candidate,
        r#"{"version": "1", "tools": {"k8s_scale": {"action": "maybe"}}}"#,
    )
    .expect("write");
    let text = candidate_page(&admin, &cookie, |t| {
        t.contains("The last reload of the candidate was rejected")
    })
    .await;
    assert!(text.contains("maybe"), "{text}");
    assert!(
        text.contains("id=\"shadow-changed\">6<"),
        "still the last good candidate: {text}"
    );
    std::fs::write(&candidate, LIVE).expect("write");
    candidate_page(&admin, &cookie, |t| {
        t.contains("<dt>Generation</dt><dd>2</dd>") && !t.contains("was rejected")
    })
    .await;
    // Both replicas must have the new candidate before the call (each polls its file).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = agent
        .call("k8s_scale", json!({"namespace": "web", "name": "api", "replicas": 3}))
        .await;
    assert!(refusal(&result).is_none(), "{result}");
    let text = candidate_page(&admin, &cookie, |t| t.contains("id=\"shadow-evaluated\">1<")).await;
    assert!(text.contains("id=\"no-changes\""), "{text}");
}

/// A rule with `"mode": "shadow"` inside the live policy: its verdict is recorded, the call
/// is decided as if it were not there.
#[tokio::test]
async fn a_shadow_mode_rule_is_recorded_not_enforced() {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("shadow-rule");
    let policy = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "k8s_scale": { "action": "allow" },
    "k8s_rollout_pause": {
      "action": "require_approval", "approval": { "mode": "retry" },
      "limits": [{ "counter": "pauses", "window": "1h", "max": 1, "scope": "grant" }]
    }
  },
  "grants": { "a": { "tools": { "k8s_scale": { "action": "deny", "mode": "shadow", "reason": "grant a loses scale" } } } },
  "resources": { "k8s://secrets/*": { "action": "deny", "mode": "shadow" } }
}"#;
    let config = write_config(&dir, &upstream.url("/mcp"), &[], policy, "");
    append(
        &config,
        &format!(
            "\n[[operators]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n\n[audit]\njournal_dir = \"{}\"\n",
            sha256_hex(OPERATOR_KEY),
            dir.join("journal").display()
        ),
    );
    // `policy explain` names the shadow-mode rule that would decide the call.
    let (code, explained, err) = run(&[
        "policy",
        "explain",
        dir.join("policy.json").to_str().unwrap(),
        "--tool",
        "k8s_scale",
        "--grant",
        "a",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(explained.contains("rule:   tools[\"k8s_scale\"]"), "{explained}");
    assert!(
        explained
            .contains("shadow: grants[\"a\"].tools[\"k8s_scale\"] (\"mode\": \"shadow\") would decide this call: deny"),
        "{explained}"
    );
    // A resources section of shadow-mode rules only: not there for the policy enforced, but
    // the candidate has it, so there every read is decided (here by the default).
    let (code, explained, err) = run(&[
        "policy",
        "explain",
        dir.join("policy.json").to_str().unwrap(),
        "--resource",
        "k8s://config/x",
        "--grant",
        "a",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        explained.contains("rule:   none: the policy has no `resources` section"),
        "{explained}"
    );
    assert!(
        explained.contains("give the candidate a `resources` section") && explained.contains("by default: deny"),
        "{explained}"
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    let admin = up.admin_url.clone().expect("admin");
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    agent.tool_names().await;
    let result = agent
        .call("k8s_scale", json!({"namespace": "web", "name": "api", "replicas": 2}))
        .await;
    assert!(refusal(&result).is_none(), "the shadow rule is not enforced: {result}");

    let metrics = support::get_text(&up.url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_shadow_disagreements_total{")
                && l.contains("live=\"ALLOW\"")
                && l.contains("shadow=\"DENY\"")
                && l.contains("tool=\"k8s_scale\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    let cookie = sign_in(&admin).await;
    let text = candidate_page(&admin, &cookie, |t| t.contains("id=\"shadow-changed\">1<")).await;
    assert!(text.contains("id=\"candidate-rules\""), "{text}");
    assert!(
        text.contains("grants[&quot;a&quot;].tools[&quot;k8s_scale&quot;]"),
        "{text}"
    );
    // A resources section of shadow-mode rules only is not there for the policy enforced:
    // a resource read passes unchecked, as without the section (the demo has no resources,
    // so the upstream answers; Tollgate does not refuse it).
    let read = agent
        .post(&json!({"jsonrpc": "2.0", "id": 90, "method": "resources/read", "params": {"uri": "k8s://secrets/db"}}))
        .await;
    assert!(
        !read.message.to_string().contains("Tollgate refused"),
        "a shadow-mode resource rule is not enforced: {}",
        read.message
    );

    // Approvals: one denied by an operator, one approved and consumed.
    let asked = agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    let denied_id = refusal(&asked).expect("held for approval")["approval_id"]
        .as_str()
        .expect("an approval id")
        .to_owned();
    let (code, _, err) = run(&[
        "approvals",
        "deny",
        &denied_id,
        "--reason",
        "not now",
        "--url",
        &admin,
        "--key",
        OPERATOR_KEY,
    ]);
    assert_eq!(code, 0, "{err}");
    let again = agent
        .call("k8s_rollout_pause", json!({"namespace": "web", "name": "api"}))
        .await;
    assert_eq!(refusal(&again).expect("denied")["verdict"], "DENY", "{again}");
    let asked = agent
        .call("k8s_rollout_pause", json!({"namespace": "db", "name": "pg"}))
        .await;
    let approved_id = refusal(&asked).expect("held for approval")["approval_id"]
        .as_str()
        .expect("an approval id")
        .to_owned();
    let (code, _, err) = run(&[
        "approvals",
        "approve",
        &approved_id,
        "--url",
        &admin,
        "--key",
        OPERATOR_KEY,
    ]);
    assert_eq!(code, 0, "{err}");
    let consumed = agent
        .call("k8s_rollout_pause", json!({"namespace": "db", "name": "pg"}))
        .await;
    assert!(refusal(&consumed).is_none(), "{consumed}");
    // Approved, but the rule's limit refuses it: live RATE_LIMITED, the approval kept; the
    // candidate (the same rule) answers the same, it is not "held for approval".
    let asked = agent
        .call("k8s_rollout_pause", json!({"namespace": "ops", "name": "q"}))
        .await;
    let kept_id = refusal(&asked).expect("held for approval")["approval_id"]
        .as_str()
        .expect("an approval id")
        .to_owned();
    let (code, _, err) = run(&["approvals", "approve", &kept_id, "--url", &admin, "--key", OPERATOR_KEY]);
    assert_eq!(code, 0, "{err}");
    let limited = agent
        .call("k8s_rollout_pause", json!({"namespace": "ops", "name": "q"}))
        .await;
    assert_eq!(
        refusal(&limited).expect("limited")["verdict"],
        "RATE_LIMITED",
        "{limited}"
    );
    let metrics = support::get_text(&up.url("/metrics")).await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("tollgate_shadow_disagreements_total{") && l.contains("k8s_rollout_pause")),
        "the candidate answered the pauses as live did:\n{metrics}"
    );

    // A clean stop closes the journal; then its records.
    up.terminate();
    let journal = dir.join("journal");
    let records = exported(&journal);
    let scale = records
        .iter()
        .find(|r| r["tool"] == "k8s_scale")
        .expect("the scale record");
    assert_eq!(scale["verdict"], "ALLOW");
    assert_eq!(scale["rule"], "tools[\"k8s_scale\"]");
    assert_eq!(scale["shadow_verdict"], "DENY");
    assert_eq!(scale["shadow_rule"], "grants[\"a\"].tools[\"k8s_scale\"]");
    assert_eq!(
        scale["annotations"].as_str().map(|a| a.contains("Hint")),
        Some(true),
        "{scale}"
    );

    // Replay under the policy itself: every verdict again, the operator's answers included
    // (the denial, and the consumed approval).
    let policy_path = dir.join("policy.json");
    let j = journal.to_str().unwrap();
    let (code, report, err) = replay(&[
        "--journal",
        j,
        "--policy",
        policy_path.to_str().unwrap(),
        "--fail-on",
        "any-change",
    ]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(report["compared"], records.len(), "{report:#}");
    // With its shadow-mode rules in force, the policy answers as the shadow did.
    let (code, report, err) = replay(&[
        "--journal",
        j,
        "--policy",
        policy_path.to_str().unwrap(),
        "--with-shadow-rules",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["changed"], json!({"ALLOW -> DENY": 2}), "{report:#}");
    // The same journal twice, or with its own export: each decision replayed once.
    let (code, lines, _) = run(&["audit", "export", j]);
    assert_eq!(code, 0);
    let jsonl = dir.join("journal.jsonl");
    std::fs::write(&jsonl, lines).expect("write");
    let (code, report, err) = replay(&[
        "--journal",
        j,
        j,
        jsonl.to_str().unwrap(),
        "--policy",
        policy_path.to_str().unwrap(),
        "--fail-on",
        "any-change",
    ]);
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(report["duplicates"], 2 * records.len(), "{report:#}");
    // A path with no records is an error, not a replay of nothing.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let (code, _, err) = run(&[
        "policy",
        "replay",
        "--journal",
        empty.to_str().unwrap(),
        "--policy",
        policy_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no records"), "{err}");
    // A journal whose chain breaks (one byte changed in a copy): what comes before the break
    // is replayed and reported, and the replay fails.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    for entry in std::fs::read_dir(&journal).expect("journal").flatten() {
        if entry.path().extension().is_some_and(|x| x == "tgj") {
            let mut bytes = std::fs::read(entry.path()).expect("segment");
            let at = bytes.len() * 3 / 4;
            bytes[at] ^= 0x20;
            std::fs::write(broken.join(entry.file_name()), bytes).expect("copy");
        }
    }
    let (code, out, err) = run(&[
        "policy",
        "replay",
        "--journal",
        broken.to_str().unwrap(),
        "--policy",
        policy_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("decisions replayed"),
        "the records before the break: {out}"
    );
    assert!(
        err.contains("breaks: only the records before the break were replayed"),
        "{err}"
    );
}
