//! The Helm chart `deploy/helm/tollgate`, rendered offline with the Helm SDK (PyPI
//! `helm-python-sdk`) with default and non-default values: every object passes
//! `kubernetes-validate --strict`, the pods are hardened and probed, the policy can change
//! without a restart, and the configuration the pods read passes `tollgate check` for their
//! role. Needs `target/py`, which `scripts/test.sh` installs.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use serde_norway::Value as Yaml;

const CHART: &str = "deploy/helm/tollgate";

/// The rendered objects by `kind/name`, and the files they were written to.
struct Rendered {
    objects: BTreeMap<String, Yaml>,
    files: Vec<PathBuf>,
    dir: PathBuf,
}

impl Rendered {
    fn get(&self, kind_name: &str) -> &Yaml {
        self.objects
            .get(kind_name)
            .unwrap_or_else(|| panic!("{kind_name} is rendered; have {:?}", self.objects.keys()))
    }

    fn kinds(&self, kind: &str) -> Vec<&Yaml> {
        self.objects
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{kind}/")))
            .map(|(_, v)| v)
            .collect()
    }
}

/// Renders the chart with `values`; `Err` is the chart's refusal.
fn render(tag: &str, values: &Value) -> Result<Rendered, String> {
    let dir = support::temp_dir(tag);
    let out = Command::new(support::venv("python"))
        .arg("tests/helm/render.py")
        .arg(CHART)
        .arg(&dir)
        .arg(values.to_string())
        .output()
        .expect("render.py");
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("render.py: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    if let Some(error) = answer["error"].as_str() {
        return Err(error.to_owned());
    }
    let files: Vec<PathBuf> = answer["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().expect("file")))
        .collect();
    let mut objects = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("manifest");
        let object: Yaml = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", file.display()));
        let key = format!(
            "{}/{}",
            object["kind"].as_str().expect("kind"),
            object["metadata"]["name"].as_str().expect("name")
        );
        assert!(objects.insert(key.clone(), object).is_none(), "{key} rendered twice");
    }
    Ok(Rendered { objects, files, dir })
}

/// `kubernetes-validate --strict` over every object whose schema it knows (the Prometheus
/// Operator's ServiceMonitor is a CRD: checked by hand below).
fn validate(rendered: &Rendered) {
    let files: Vec<&PathBuf> = rendered
        .files
        .iter()
        .filter(|f| !f.to_string_lossy().contains("servicemonitor"))
        .collect();
    let out = Command::new(support::venv("kubernetes-validate"))
        .args(["--strict", "--quiet", "--no-warn"])
        .args(&files)
        .output()
        .expect("kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every Tollgate pod runs as a non-root user on a read-only root filesystem, without
/// privilege escalation or capabilities, and is probed.
fn check_pods(rendered: &Rendered) {
    for kind in ["Deployment", "StatefulSet"] {
        for workload in rendered.kinds(kind) {
            let name = workload["metadata"]["name"].as_str().expect("name");
            let pod = &workload["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{name}");
            assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false), "{name}");
            for container in pod["containers"].as_sequence().expect("containers") {
                let sc = &container["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
                assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false), "{name}");
                assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"), "{name}");
                assert!(!container["readinessProbe"].is_null(), "{name} has a readiness probe");
                assert!(
                    container["resources"]["requests"].is_mapping(),
                    "{name} requests resources"
                );
            }
        }
    }
}

/// Writes the pods' `tollgate.toml` and policy as they are mounted, and runs `tollgate check`
/// for `role` with the container's environment (`secret` stands in for the Secret's values).
fn tollgate_check(rendered: &Rendered, role: &str, secret: &BTreeMap<&str, String>) {
    let config = rendered.get("ConfigMap/tg-tollgate-config")["data"]["tollgate.toml"]
        .as_str()
        .expect("tollgate.toml");
    let policy = rendered.get("ConfigMap/tg-tollgate-policy")["data"]["policy.json"]
        .as_str()
        .expect("policy.json");
    let etc = rendered.dir.join(format!("etc-{role}"));
    std::fs::create_dir_all(etc.join("policy")).expect("mkdir");
    std::fs::write(etc.join("tollgate.toml"), config).expect("write");
    std::fs::write(etc.join("policy/policy.json"), policy).expect("write");
    let workload = match role {
        "edge" => rendered.get("Deployment/tg-tollgate-edge"),
        _ => rendered.get("StatefulSet/tg-tollgate-decision"),
    };
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, [role, "--config", "/etc/tollgate/tollgate.toml"]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(["check", "--config"])
        .arg(etc.join("tollgate.toml"))
        .args(["--role", role])
        .env_remove("TOLLGATE_CONFIG");
    for var in container["env"].as_sequence().expect("env") {
        let name = var["name"].as_str().expect("name");
        let value = match var["value"].as_str() {
            Some(value) => value.to_owned(),
            None => {
                let reference = &var["valueFrom"]["secretKeyRef"];
                let key = reference["key"].as_str().expect("secret key");
                match secret.get(key) {
                    Some(value) => value.clone(),
                    None if reference["optional"].as_bool() == Some(true) => continue,
                    None => panic!("secret key {key}"),
                }
            }
        };
        command.env(name, value);
    }
    let out = command.output().expect("tollgate check");
    assert!(
        out.status.success(),
        "tollgate check --role {role} on the chart's configuration: {}{}\n{config}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

const TOKEN: &str = "tg_0913d299ef99bcb8c0ce4b6c29f893a30dd93ecba3df4c64b4111594bc0c727f";
const SESSION_KEY: &str = "tg_f19e330716634f8e9023c0addcfb81d628cf80301bdb4f408ece01afeb1446f6";
const CONSOLE_SECRET: &str = "tg_5b0c1f0e8a2d4e7f9a6b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

#[test]
fn the_chart_with_default_values_renders_valid_hardened_objects() {
    let rendered = render(
        "helm-default",
        &json!({
            "secrets": {"clusterToken": TOKEN, "sessionKeys": [SESSION_KEY], "consoleSecret": CONSOLE_SECRET},
            "redis": {"url": "redis://redis.tollgate:6379"},
            "grants": [{"name": "demo", "agent": "demo-agent", "key_sha256": sha256_hex("tg_demo_key")}],
        }),
    )
    .expect("renders");
    validate(&rendered);
    check_pods(&rendered);
    for object in [
        "Deployment/tg-tollgate-edge",
        "Service/tg-tollgate-edge",
        "HorizontalPodAutoscaler/tg-tollgate-edge",
        "PodDisruptionBudget/tg-tollgate-edge",
        "StatefulSet/tg-tollgate-decision",
        "Service/tg-tollgate-decision",
        "PodDisruptionBudget/tg-tollgate-decision",
        "Secret/tg-tollgate-secrets",
    ] {
        rendered.get(object);
    }
    // Off by default.
    assert!(rendered.kinds("NetworkPolicy").is_empty());
    assert!(rendered.kinds("ServiceMonitor").is_empty());
    assert!(!rendered.objects.contains_key("Deployment/tg-tollgate-redis"));

    let edge = rendered.get("Deployment/tg-tollgate-edge");
    assert!(
        edge["spec"]["replicas"].is_null(),
        "the HPA owns the edge's replica count"
    );
    let probe = &edge["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(probe["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(probe["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    let decision = rendered.get("StatefulSet/tg-tollgate-decision");
    let container = &decision["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["grpc"]["port"].as_u64(),
        Some(50051),
        "gRPC health"
    );

    // The policy is mounted as a directory (a changed ConfigMap reaches the file: hot reload),
    // and the pods' config checksum does not cover it (no restart for a new policy).
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let policy = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("policy"))
        .expect("policy mount");
    assert!(
        policy["subPath"].is_null(),
        "subPath mounts never see ConfigMap updates"
    );
    let with_policy = |policy: &str, tag: &str| {
        let rendered = render(
            tag,
            &json!({
                "secrets": {"clusterToken": TOKEN, "sessionKeys": [SESSION_KEY]},
                "redis": {"url": "redis://redis.tollgate:6379"},
                "grants": [{"name": "demo", "agent": "demo-agent", "key_sha256": sha256_hex("tg_demo_key")}],
                "policy": policy,
            }),
        )
        .expect("renders");
        rendered.get("StatefulSet/tg-tollgate-decision")["spec"]["template"]["metadata"]["annotations"]
            ["checksum/config"]
            .as_str()
            .expect("checksum")
            .to_owned()
    };
    assert_eq!(
        with_policy(r#"{"version": "1", "default": "deny"}"#, "helm-policy-a"),
        with_policy(r#"{"version": "1", "default": "allow"}"#, "helm-policy-b"),
        "a new policy does not restart the replicas"
    );

    let secret = BTreeMap::from([
        ("cluster-token", TOKEN.to_owned()),
        ("session-keys", SESSION_KEY.to_owned()),
        ("console-session-secret", CONSOLE_SECRET.to_owned()),
    ]);
    assert_eq!(
        rendered.get("Secret/tg-tollgate-secrets")["stringData"]["console-session-secret"].as_str(),
        Some(CONSOLE_SECRET)
    );
    tollgate_check(&rendered, "edge", &secret);
    tollgate_check(&rendered, "decision", &secret);
    let config = rendered.get("ConfigMap/tg-tollgate-config")["data"]["tollgate.toml"]
        .as_str()
        .expect("toml");
    assert!(
        config.contains(&format!("token_sha256 = \"{}\"", sha256_hex(TOKEN))),
        "the replicas hold the token's hash only"
    );
    assert!(!config.contains(TOKEN), "the token itself stays in the Secret");
}

#[test]
fn the_chart_with_other_values_renders_valid_objects_too() {
    let rendered = render(
        "helm-other",
        &json!({
            "secrets": {"existingSecret": "tollgate-keys"},
            "redis": {"bundled": {"enabled": true}},
            "edge": {"autoscaling": {"enabled": false}, "replicas": 5},
            "decision": {"replicas": 3, "journal": {"enabled": true, "size": "5Gi", "required": true}},
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "networkPolicy": {"enabled": true, "allowFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
            "telemetry": {"otlpEndpoint": "http://otel-collector.observability:4317"},
            "grants": [{"name": "a", "agent": "agent-a", "key_sha256": sha256_hex("tg_demo_key")}],
            "operators": [{"name": "oncall", "key_sha256": sha256_hex("operator key")}],
            "extraConfig": "[edge.aggregate]\nfanout_timeout_ms = 3000\n",
            "extraEnv": [{"name": "TOLLGATE_EDGE__MAX_BODY_BYTES", "value": "1048576"}],
            "topologySpread": {"enabled": false},
        }),
    )
    .expect("renders");
    validate(&rendered);
    check_pods(&rendered);
    assert!(rendered.kinds("HorizontalPodAutoscaler").is_empty());
    assert_eq!(
        rendered.get("Deployment/tg-tollgate-edge")["spec"]["replicas"].as_u64(),
        Some(5)
    );
    assert!(
        !rendered.objects.contains_key("Secret/tg-tollgate-secrets"),
        "the existing Secret is used"
    );
    rendered.get("Deployment/tg-tollgate-redis");
    rendered.get("Service/tg-tollgate-redis");
    assert_eq!(rendered.kinds("NetworkPolicy").len(), 2);
    let monitors = rendered.kinds("ServiceMonitor");
    assert_eq!(monitors.len(), 2, "edges and replicas");
    for monitor in monitors {
        assert_eq!(monitor["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
        assert_eq!(monitor["metadata"]["labels"]["release"].as_str(), Some("prometheus"));
        assert_eq!(monitor["spec"]["endpoints"][0]["path"].as_str(), Some("/metrics"));
    }
    let config = rendered.get("ConfigMap/tg-tollgate-config")["data"]["tollgate.toml"]
        .as_str()
        .expect("toml");
    for i in 0..3 {
        assert!(
            config.contains(&format!("tg-tollgate-decision-{i}.tg-tollgate-decision:50051")),
            "edges list replica {i}: {config}"
        );
    }
    assert!(config.contains("url = \"redis://tg-tollgate-redis:6379\""), "{config}");
    // The decision journal: a claim per replica, mounted where audit.journal_dir says.
    let decision = rendered.get("StatefulSet/tg-tollgate-decision");
    let claim = &decision["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"].as_str(), Some("journal"));
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"].as_str(), Some("5Gi"));
    let container = &decision["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["volumeMounts"].as_sequence().is_some_and(|m| m
            .iter()
            .any(|v| v["mountPath"].as_str() == Some("/var/lib/tollgate/journal"))),
        "the journal is mounted"
    );
    assert!(
        container["env"].as_sequence().is_some_and(|e| e
            .iter()
            .any(|v| v["name"].as_str() == Some("TOLLGATE_AUDIT__JOURNAL_DIR"))),
        "audit.journal_dir points at it"
    );
    let secret = BTreeMap::from([
        ("cluster-token", TOKEN.to_owned()),
        ("cluster-token-sha256", sha256_hex(TOKEN)),
        ("session-keys", SESSION_KEY.to_owned()),
    ]);
    tollgate_check(&rendered, "edge", &secret);
    tollgate_check(&rendered, "decision", &secret);
}

#[test]
fn the_chart_refuses_values_it_cannot_deploy_safely() {
    let grants = json!([{"name": "demo", "agent": "demo-agent", "key_sha256": sha256_hex("tg_demo_key")}]);
    let no_token = render(
        "helm-no-token",
        &json!({"redis": {"url": "redis://r:6379"}, "secrets": {"sessionKeys": [SESSION_KEY]}, "grants": grants}),
    )
    .err()
    .expect("refused");
    assert!(no_token.contains("secrets.clusterToken"), "{no_token}");
    let no_redis = render(
        "helm-no-redis",
        &json!({"secrets": {"clusterToken": TOKEN, "sessionKeys": [SESSION_KEY]}, "grants": grants}),
    )
    .err()
    .expect("refused");
    assert!(no_redis.contains("redis.url"), "{no_redis}");
    let no_grants = render(
        "helm-no-grants",
        &json!({"secrets": {"clusterToken": TOKEN, "sessionKeys": [SESSION_KEY]}, "redis": {"url": "redis://r:6379"}}),
    )
    .err()
    .expect("refused");
    assert!(no_grants.contains("no agent could authenticate"), "{no_grants}");
    assert!(
        Path::new(CHART).join("README.md").exists(),
        "the chart documents its values"
    );
}
