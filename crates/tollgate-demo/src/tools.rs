//! The demo's tools: definitions with MCP annotations, and handlers that only describe what
//! they would have done.

use serde_json::{Map, Value, json};

struct Tool {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    /// (argument, JSON type, required)
    arguments: &'static [(&'static str, &'static str, bool)],
    read_only: bool,
    destructive: bool,
    idempotent: bool,
}

const WORKLOAD: &[(&str, &str, bool)] = &[
    ("namespace", "string", true),
    ("name", "string", true),
    ("kind", "string", false),
];

const TOOLS: &[Tool] = &[
    Tool {
        name: "k8s_list_namespaces",
        title: "List namespaces",
        description: "List the namespaces of the cluster.",
        arguments: &[],
        read_only: true,
        destructive: false,
        idempotent: true,
    },
    Tool {
        name: "k8s_get_pods",
        title: "Get pods",
        description: "List the pods of a namespace with their status.",
        arguments: &[("namespace", "string", true)],
        read_only: true,
        destructive: false,
        idempotent: true,
    },
    Tool {
        name: "k8s_rollout_pause",
        title: "Pause rollout",
        description: "Pause an in-progress rollout for a deployment, daemonset, or statefulset.",
        arguments: WORKLOAD,
        read_only: false,
        destructive: false,
        idempotent: true,
    },
    Tool {
        name: "k8s_rollout_resume",
        title: "Resume rollout",
        description: "Resume a paused rollout for a deployment, daemonset, or statefulset.",
        arguments: WORKLOAD,
        read_only: false,
        destructive: false,
        idempotent: true,
    },
    Tool {
        name: "k8s_scale",
        title: "Scale workload",
        description: "Set the number of replicas of a deployment or statefulset.",
        arguments: &[
            ("namespace", "string", true),
            ("name", "string", true),
            ("replicas", "integer", true),
        ],
        read_only: false,
        destructive: false,
        idempotent: true,
    },
    Tool {
        name: "k8s_delete_namespace",
        title: "Delete namespace",
        description: "Delete a namespace and everything in it.",
        arguments: &[("namespace", "string", true)],
        read_only: false,
        destructive: true,
        idempotent: true,
    },
];

pub fn definitions() -> Vec<Value> {
    TOOLS
        .iter()
        .map(|t| {
            let mut properties = Map::new();
            for (name, kind, _) in t.arguments {
                properties.insert((*name).into(), json!({"type": kind}));
            }
            let required: Vec<&str> = t.arguments.iter().filter(|a| a.2).map(|a| a.0).collect();
            json!({
                "name": t.name,
                "title": t.title,
                "description": t.description,
                "inputSchema": {"type": "object", "properties": properties, "required": required},
                "annotations": {
                    "title": t.title,
                    "readOnlyHint": t.read_only,
                    "destructiveHint": t.destructive,
                    "idempotentHint": t.idempotent,
                    "openWorldHint": false
                }
            })
        })
        .collect()
}

/// `tools/call` requests this process received, per known tool (`GET /stats`): what reached
/// the upstream, for tests that check nothing was forwarded without a decision.
static CALLS: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn count_call(tool: &'static str) {
    *CALLS.lock().unwrap_or_else(|e| e.into_inner()).entry(tool).or_default() += 1;
}

/// POSTs this process received, per HTTP version (`GET /stats`).
static VERSIONS: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub(crate) fn count_version(version: axum::http::Version) {
    *VERSIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(match version {
            axum::http::Version::HTTP_2 => "HTTP/2",
            axum::http::Version::HTTP_11 => "HTTP/1.1",
            _ => "other",
        })
        .or_default() += 1;
}

/// `{"tools_call": {tool: count}, "http_versions": {"HTTP/1.1": count, ...}}`.
pub fn stats() -> Value {
    let calls = CALLS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let versions = VERSIONS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    serde_json::json!({ "tools_call": calls, "http_versions": versions })
}

/// What a tool answered: its text, and whether it is an error (bad arguments).
pub struct Answer {
    pub text: String,
    pub is_error: bool,
}

/// Runs a `tools/call`: `Err` is the message of a JSON-RPC error (unknown tool), bad
/// arguments are a tool result with `isError`, as MCP asks.
pub fn call(name: &str, arguments: &Value) -> Result<Answer, String> {
    let tool = TOOLS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("unknown tool: {name}"))?;
    count_call(tool.name);
    let empty = Map::new();
    let args = arguments.as_object().unwrap_or(&empty);
    for (arg, kind, required) in tool.arguments {
        let ok = match (args.get(*arg), *kind) {
            (None, _) => !required,
            (Some(v), "string") => v.is_string(),
            (Some(v), "integer") => v.is_i64() || v.is_u64(),
            _ => true,
        };
        if !ok {
            return Ok(Answer {
                text: format!("{name}: argument \"{arg}\" must be a {kind}"),
                is_error: true,
            });
        }
    }
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let kind = args.get("kind").and_then(Value::as_str).unwrap_or("deployment");
    let text = match name {
        "k8s_list_namespaces" => "namespaces: default, kube-system, payments, web".to_owned(),
        "k8s_get_pods" => format!(
            "pods in {}: web-7d9f8-abcde (Running), web-7d9f8-fghij (Running)",
            s("namespace")
        ),
        "k8s_rollout_pause" => format!(
            "paused rollout of {kind} {}/{} (demo: nothing was changed)",
            s("namespace"),
            s("name")
        ),
        "k8s_rollout_resume" => format!(
            "resumed rollout of {kind} {}/{} (demo: nothing was changed)",
            s("namespace"),
            s("name")
        ),
        "k8s_scale" => format!(
            "scaled {}/{} to {} replicas (demo: nothing was changed)",
            s("namespace"),
            s("name"),
            args.get("replicas").unwrap_or(&Value::Null)
        ),
        "k8s_delete_namespace" => format!("deleted namespace {} (demo: nothing was changed)", s("namespace")),
        _ => unreachable!("every tool in TOOLS has a handler"),
    };
    Ok(Answer { text, is_error: false })
}
