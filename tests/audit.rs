//! The decision journal (issue 25, first part), through `tollgate up`: every decision is a
//! record in `[audit] journal_dir`, `tollgate audit verify` checks the chain and names where
//! it is broken, `tollgate audit export` writes the records as JSON lines, and with
//! `on_full = "refuse"` a call whose record does not fit is refused with the reason.

mod support;

use serde_json::{Value, json};
use support::{KEY_A, Mcp, Proc, append, refusal, run, write_config};

fn up_with_journal(tag: &str, audit: &str) -> (Proc, Proc, std::path::PathBuf) {
    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir(tag);
    let config = write_config(&dir, &upstream.url("/mcp"), &[], &support::seed_policy("1m"), "");
    let journal = dir.join("journal");
    append(
        &config,
        &format!("\n[audit]\njournal_dir = \"{}\"\n{audit}\n", journal.display()),
    );
    let up = Proc::start("up", &["up", "--config", config.to_str().expect("path")], &[]);
    (upstream, up, journal)
}

#[tokio::test]
async fn every_decision_is_a_record_that_verifies_and_exports() {
    let (_upstream, up, journal) = up_with_journal("audit-journal", "");
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let mut refused_ids = Vec::new();
    for _ in 0..12 {
        let result = agent
            .call("k8s_rollout_pause", json!({"namespace": "default", "name": "web"}))
            .await;
        if let Some(details) = refusal(&result) {
            refused_ids.push(details["decision_id"].as_str().expect("decision id").to_owned());
        }
    }
    let denied = agent.call("k8s_delete_namespace", json!({"namespace": "prod"})).await;
    refused_ids.push(
        refusal(&denied).expect("denied")["decision_id"]
            .as_str()
            .expect("id")
            .to_owned(),
    );
    assert_eq!(refused_ids.len(), 3, "two over the limit, one denied");
    // Records are made durable within journal_sync_ms (5 ms); the gauges refresh every second.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let metrics = support::get_text(&up.url("/metrics")).await;
    assert!(metrics.contains("tollgate_journal_appended_records 13"), "{metrics}");
    assert!(metrics.contains("tollgate_journal_dropped_records 0"), "{metrics}");
    up.terminate();

    let dir = journal.to_str().expect("path");
    let (code, out, err) = run(&["audit", "verify", dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the chain holds: 13 records"), "{out}");
    let (code, out, err) = run(&["audit", "export", dir]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(records.len(), 13, "{out}");
    let verdicts = |v: &str| records.iter().filter(|r| r["verdict"] == v).count();
    assert_eq!(
        (verdicts("ALLOW"), verdicts("RATE_LIMITED"), verdicts("DENY")),
        (10, 2, 1),
        "{out}"
    );
    for id in &refused_ids {
        assert!(
            records.iter().any(|r| r["id"] == json!(id)),
            "decision {id} is in the journal"
        );
    }
    assert!(
        records
            .iter()
            .all(|r| r["grant"] == "a" && r["server"] == "k8s" && r["seq"].is_u64())
    );
    assert_eq!(records[0]["seq"], 1);

    // One byte changed in the middle of the journal: verify names the record.
    let segment = std::fs::read_dir(&journal)
        .expect("journal dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgj"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write");
    let (code, out, err) = run(&["audit", "verify", dir]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("the journal's chain is broken at record"), "{err}");
}

#[tokio::test]
async fn a_full_journal_that_refuses_refuses_calls_with_the_reason() {
    let (_upstream, up, journal) = up_with_journal(
        "audit-full",
        "on_full = \"refuse\"\njournal_segment_bytes = 4096\njournal_max_bytes = 8192",
    );
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    let mut full = None;
    for i in 0..40 {
        let result = agent.call("k8s_list_namespaces", json!({})).await;
        if let Some(details) = refusal(&result)
            && details["reason"]
                .as_str()
                .is_some_and(|r| r.contains("audit journal full"))
        {
            full = Some((i, details.clone()));
            break;
        }
    }
    let (after, details) = full.expect("the journal filled up and calls were refused");
    assert!(after > 5, "some calls were recorded first ({after})");
    assert_eq!(details["verdict"], "DENY", "{details}");
    let ready = || async { reqwest::get(up.url("/readyz")).await.expect("readyz").status().as_u16() };
    assert_eq!(ready().await, 503, "a node that refuses every call is not ready");
    // Room comes back (the oldest segment archived away): calls are recorded again, and the
    // node is ready, by itself.
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(&journal)
        .expect("journal")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tgj"))
        .collect();
    found.sort();
    std::fs::remove_file(&found[0]).expect("archive the oldest segment");
    // Ready again by itself (a node nobody sends calls to must come back).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ready().await != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready again without a call");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let result = agent.call("k8s_list_namespaces", json!({})).await;
    let reason = refusal(&result).map(|d| d["reason"].as_str().unwrap_or_default().to_owned());
    assert!(
        !reason.as_deref().unwrap_or_default().contains("audit journal"),
        "recorded again: {result}"
    );
    assert_eq!(ready().await, 200, "ready again");
}

#[tokio::test]
async fn closed_segments_are_signed_and_verify_with_the_public_key() {
    let (code, keys, err) = run(&["audit", "keygen"]);
    assert_eq!(code, 0, "{err}");
    let value = |label: &str| {
        keys.lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.rsplit(' ').next())
            .expect("key line")
            .to_owned()
    };
    let (seed, public) = (value("signing key"), value("public key"));
    let (_upstream, up, journal) = up_with_journal(
        "audit-signed",
        &format!("journal_segment_bytes = 4096\nsigning_key = \"{seed}\""),
    );
    let mut agent = Mcp::new(&up.url("/mcp/k8s"), KEY_A);
    agent.initialize().await;
    for _ in 0..30 {
        agent.call("k8s_list_namespaces", json!({})).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    up.terminate();
    let dir = journal.to_str().expect("path");
    let (code, out, err) = run(&["audit", "verify", dir, "--key", &public]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("closed segments carry a valid signature"), "{out}");
    assert!(!out.contains(" 0 closed segments"), "{out}");
    let (_, other, _) = run(&["audit", "keygen"]);
    let other = other
        .lines()
        .find(|l| l.starts_with("public key"))
        .and_then(|l| l.rsplit(' ').next())
        .expect("key")
        .to_owned();
    let (code, out, err) = run(&["audit", "verify", dir, "--key", &other]);
    assert_eq!(code, 1, "another key: {out}{err}");
    assert!(err.contains("does not verify"), "{err}");
}
