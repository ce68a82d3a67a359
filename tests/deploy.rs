//! The shipped deployment files hold together: every YAML and JSON file parses, compose
//! mounts only files that exist, the collector's pipeline is wired, Prometheus scrapes the
//! ports Tollgate listens on by default, and every metric the dashboard queries is one
//! Tollgate exports. (No Docker engine runs in CI, so nothing here starts containers.)

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::json;
use serde_norway::Value as Yaml;
use support::{KEY_A, Mcp, Proc, write_config};

const DIR: &str = "deploy/observability";

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(Path::new(DIR).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

#[test]
fn compose_mounts_only_files_that_exist() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["otel-collector", "jaeger", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name}");
    }
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .expect("volume string");
            assert!(
                Path::new(DIR).join(host).exists(),
                "{name:?} mounts {host}, which is missing"
            );
        }
    }
}

#[test]
fn collector_forwards_traces_to_jaeger() {
    let config = yaml("otel-collector.yaml");
    let pipeline = &config["service"]["pipelines"]["traces"];
    for (section, key) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        for item in pipeline[key].as_sequence().expect(key) {
            let item = item.as_str().expect("name");
            assert!(
                config[section].get(item).is_some(),
                "pipeline uses {section}.{item}, which is not defined"
            );
        }
    }
    assert!(
        config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
            .as_str()
            .is_some_and(|e| e.ends_with(":4317"))
    );
    assert_eq!(
        config["exporters"]["otlp/jaeger"]["endpoint"].as_str(),
        Some("jaeger:4317")
    );
}

#[test]
fn prometheus_scrapes_the_default_ports_and_grafana_is_provisioned() {
    let prometheus = yaml("prometheus.yml");
    let targets: Vec<&str> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| job["static_configs"][0]["targets"].as_sequence().expect("targets"))
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        targets,
        ["edge:8080", "decision:9464"],
        "edge.listen and decision.metrics_listen defaults"
    );
    let datasource = yaml("grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(
        datasource["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    let provider = yaml("grafana/provisioning/dashboards/tollgate.yaml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
}

/// Sample names a metrics text can contain, from its `# TYPE` lines.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

#[tokio::test]
async fn dashboard_queries_only_metrics_tollgate_exports() {
    let text = std::fs::read_to_string(Path::new(DIR).join("grafana/dashboards/tollgate.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("tollgate_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 8, "{queried:?}");

    let upstream = Proc::start("demo-upstream", &["demo-upstream", "--listen", "127.0.0.1:0"], &[]);
    let dir = support::temp_dir("dashboard");
    let config = write_config(&dir, &upstream.url("/mcp"), &[], &support::seed_policy("minute"), "");
    let up = Proc::start("up", &["up", "--config", config.to_str().unwrap()], &[]);
    Mcp::new(&up.url("/mcp/k8s"), KEY_A)
        .call("k8s_rollout_pause", json!({"namespace": "a", "name": "b"}))
        .await;
    let metrics = reqwest::get(up.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let exported = exported_names(&metrics);
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics Tollgate does not export: {unknown:?}\nexported: {exported:?}"
    );
}
