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
            // A named volume (no path) must be declared; a path must exist.
            if !host.contains('/') && !host.starts_with('.') {
                assert!(
                    compose["volumes"].get(host).is_some(),
                    "{name:?} mounts the volume {host}, which is not declared"
                );
                continue;
            }
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
    let jobs = prometheus["scrape_configs"].as_sequence().expect("scrape_configs");
    let ports: Vec<u64> = jobs
        .iter()
        .map(|job| job["dns_sd_configs"][0]["port"].as_u64().expect("port"))
        .collect();
    assert_eq!(ports, [8080, 9464], "edge.listen and decision.metrics_listen defaults");
    let names = |i: usize| -> Vec<&str> {
        jobs[i]["dns_sd_configs"][0]["names"]
            .as_sequence()
            .expect("names")
            .iter()
            .filter_map(Yaml::as_str)
            .collect()
    };
    // Every Tollgate service of deploy/compose.yaml is scraped.
    let compose = cluster_compose();
    let services = compose["services"].as_mapping().expect("services");
    for (job, role) in [(0, "edge"), (1, "decision")] {
        for (name, service) in services {
            let name = name.as_str().expect("service name");
            if service["command"][0].as_str() == Some(role) {
                assert!(names(job).contains(&name), "Prometheus scrapes {name}");
            }
        }
    }
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
    let metrics = support::get_text(&up.url("/metrics")).await;
    let exported = exported_names(&metrics);
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics Tollgate does not export: {unknown:?}\nexported: {exported:?}"
    );
}

/// `deploy/compose.yaml`, with its `<<: *tollgate` merges applied.
fn cluster_compose() -> Yaml {
    let text = std::fs::read_to_string("deploy/compose.yaml").expect("deploy/compose.yaml");
    let mut compose: Yaml = serde_norway::from_str(&text).expect("deploy/compose.yaml is YAML");
    compose.apply_merge().expect("merge keys");
    compose
}

#[test]
fn compose_runs_the_whole_cluster_and_its_configuration_passes_tollgate_check() {
    let compose = cluster_compose();
    let included: Vec<&str> = compose["include"]
        .as_sequence()
        .expect("include")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(included, ["observability/compose.yaml"]);
    let services = compose["services"].as_mapping().expect("services");
    let service = |name: &str| services.get(name).unwrap_or_else(|| panic!("service {name}"));
    for name in ["redis", "demo-upstream", "decision-1", "decision-2", "edge", "lb"] {
        service(name);
    }
    assert_eq!(service("edge")["deploy"]["replicas"].as_u64(), Some(3), "three edges");

    let deploy = Path::new("deploy");
    let config = deploy.join("compose/tollgate.toml");
    for (name, svc) in services {
        let name = name.as_str().expect("name");
        for volume in svc["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().and_then(|v| v.split(':').next()).expect("volume");
            if !host.contains('/') && !host.starts_with('.') {
                assert!(
                    compose["volumes"].get(host).is_some(),
                    "{name} mounts the undeclared volume {host}"
                );
                continue;
            }
            assert!(deploy.join(host).exists(), "{name} mounts {host}, which is missing");
        }
        // A decision replica's journal directory is on a volume of its own.
        if svc["command"][0].as_str() == Some("decision") {
            let journal = svc["environment"]["TOLLGATE_AUDIT__JOURNAL_DIR"].as_str();
            assert_eq!(journal, Some("/var/lib/tollgate/journal"), "{name}");
            assert!(
                svc["volumes"].as_sequence().is_some_and(|v| v
                    .iter()
                    .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/var/lib/tollgate/journal")))),
                "{name}: the journal is on a volume"
            );
        }
        let Some(role) = svc["command"][0].as_str() else {
            continue;
        };
        if svc["image"].as_str() != Some("tollgate:dev") {
            continue;
        }
        // Tollgate's containers: the image built from this checkout, hardened.
        assert_eq!(svc["build"]["dockerfile"].as_str(), Some("Dockerfile"), "{name}");
        assert!(
            deploy
                .join(svc["build"]["context"].as_str().expect("context"))
                .join("Dockerfile")
                .exists()
        );
        assert_eq!(
            svc["read_only"].as_bool(),
            Some(true),
            "{name}: read-only root filesystem"
        );
        assert_eq!(svc["cap_drop"][0].as_str(), Some("ALL"), "{name}");
        assert_eq!(
            svc["environment"]["TOLLGATE_CONFIG"].as_str(),
            Some("/etc/tollgate/tollgate.toml"),
            "{name}"
        );
        if role == "edge" || role == "decision" {
            // The configuration the container reads is one this role starts with.
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .args(["check", "--config", config.to_str().expect("path"), "--role", role])
                .env_remove("TOLLGATE_CONFIG")
                .output()
                .expect("tollgate check");
            assert!(
                out.status.success(),
                "{name}: tollgate check --role {role}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // What the configuration names exists in the Compose network.
    let toml: toml::Value = toml::from_str(&std::fs::read_to_string(&config).expect("config")).expect("TOML");
    let host_of = |url: &str| {
        url.split("://")
            .nth(1)
            .and_then(|r| r.split(['/', ':']).next())
            .map(str::to_owned)
    };
    for replica in toml["edge"]["decision"].as_array().expect("edge.decision") {
        let host = host_of(replica.as_str().expect("url")).expect("host");
        assert_eq!(service(&host)["command"][0].as_str(), Some("decision"), "{host}");
    }
    let upstream = host_of(toml["upstreams"][0]["url"].as_str().expect("url")).expect("host");
    assert_eq!(service(&upstream)["command"][0].as_str(), Some("demo-upstream"));
    assert_eq!(
        host_of(toml["store"]["url"].as_str().expect("store.url")).as_deref(),
        Some("redis")
    );
    let collector = host_of(toml["telemetry"]["otlp_endpoint"].as_str().expect("otlp")).expect("host");
    assert!(
        yaml("compose.yaml")["services"]
            .as_mapping()
            .expect("services")
            .contains_key(collector.as_str())
    );
    let nginx = std::fs::read_to_string(deploy.join("compose/nginx.conf")).expect("nginx.conf");
    assert!(
        nginx.contains("server edge:8080;"),
        "the load balancer sends to every edge on edge.listen's port"
    );
    assert!(
        nginx.contains("proxy_buffering off;"),
        "SSE answers are passed on as they come"
    );
}

#[test]
fn the_image_runs_as_a_non_root_user_without_a_shell() {
    let dockerfile = std::fs::read_to_string("Dockerfile").expect("Dockerfile");
    let stages: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    assert!(
        stages[1].contains("distroless") && stages[1].contains("nonroot"),
        "the runtime stage has no shell or package manager: {}",
        stages[1]
    );
    let user = dockerfile.lines().find(|l| l.starts_with("USER ")).expect("USER");
    assert!(!user.contains(" 0") && !user.contains("root:"), "{user}");
    assert!(
        dockerfile.contains("ARG TOLLGATE_COMMIT"),
        "--version names the commit without .git"
    );
    assert!(dockerfile.contains("--locked"), "the image builds what Cargo.lock pins");
    let ignore = std::fs::read_to_string(".dockerignore").expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target"),
        "the build context leaves target/ out"
    );
}
