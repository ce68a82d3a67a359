//! The edge's structure, read from its source: its modules form layers that import only
//! downward (front doors → decided exchange → response guard → resolution → shared state →
//! basics), there is no import cycle, and no file grows past the size a newcomer can read.
//! A new module must be given its layer here, which is the point: where it sits is decided,
//! not accreted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module of `crates/tollgate-edge/src` and its layer; a module may import modules of
/// its own layer or below, never above.
const LAYERS: &[(&str, u8)] = &[
    // Front doors.
    ("aggregate", 8),
    ("per_server", 8),
    // The decided exchange.
    ("calls", 7),
    ("discover", 6),
    ("held", 6),
    ("listen", 6),
    ("lists", 6),
    ("exchange", 5),
    // The response guard.
    ("guard", 4),
    // One resolution of every request.
    ("mrtr", 3),
    ("pin_refresh", 3),
    ("resolve", 3),
    ("spans", 3),
    // Shared state.
    ("gateway", 2),
    // Basics.
    ("auth", 1),
    ("eras", 1),
    ("identity", 1),
    ("marks", 1),
    ("order", 1),
    ("origin", 1),
    ("pins", 1),
    ("protocol", 1),
    ("refusal", 1),
    ("request", 1),
    ("sealed", 1),
    ("server", 1),
    ("tasks", 1),
    ("upstream", 1),
    ("visible", 1),
    ("jsonrpc", 0),
    ("method", 0),
    ("settings", 0),
    ("sse", 0),
];

/// Longest source file, in lines.
const MAX_LINES: usize = 650;

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`aggregate/fanout.rs` → `aggregate`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// The modules `text` names as `crate::module` (also inside `crate::{a, b::c}`).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').collect()
        } else {
            vec![rest]
        };
        for name in names {
            let name = name.trim();
            let end = name
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
                .unwrap_or(name.len());
            let module = &name[..end];
            if !module.is_empty() {
                found.insert(module.to_owned());
            }
        }
    }
    found
}

#[test]
fn the_edge_imports_only_downward_without_cycles_and_files_stay_small() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/tollgate-edge/src");
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!("{} has {lines} lines (at most {MAX_LINES})", file.display()));
        }
        let Some(&layer) = layers.get(module.as_str()) else {
            problems.push(format!("module {module} has no layer in tests/edge_layers.rs"));
            continue;
        };
        // Code only: a doc comment may point anywhere.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for imported in imports(&code) {
            if imported == module || !layers.contains_key(imported.as_str()) {
                continue; // itself, or an item of the crate root (EdgeError)
            }
            if layers[imported.as_str()] > layer {
                problems.push(format!(
                    "{module} (layer {layer}) imports {imported} (layer {}), above it",
                    layers[imported.as_str()]
                ));
            }
            graph.entry(module.clone()).or_default().insert(imported);
        }
    }
    // A cycle within one layer: depth-first search with colours.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new()) {
            problems.push(format!("import cycle: {}", cycle.join(" → ")));
            break;
        }
    }
    assert!(problems.is_empty(), "the edge's structure:\n{}", problems.join("\n"));
}

#[test]
fn imports_are_read_from_paths_and_groups() {
    let found = imports(
        "use crate::gateway::{Gateway, Unreached};\nuse crate::{calls, spans};\nuse crate::EdgeError;\n crate::guard::holding(x)",
    );
    let expected: BTreeSet<String> = ["gateway", "calls", "spans", "guard"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}
