//! `tollgate pins`: review tool definitions (list, diff, approve, reject) through the
//! operators' API of any decision replica, write the approved ones as a lockfile, and check
//! upstreams' live definitions against a lockfile (for CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};
use tollgate_decision::definitions::{Line, line_diff, readable};
use tollgate_edge::pin_refresh::read_lists;
use tollgate_edge::pins::{LockedPin, Lockfile, kind_word};

use crate::config::Config;

pub enum PinsAction {
    List {
        json: bool,
    },
    Diff {
        id: String,
    },
    Resolve {
        ids: Vec<String>,
        all: bool,
        approve: bool,
        reason: String,
    },
    Export,
    Check {
        lockfile: Option<PathBuf>,
    },
}

/// Text for a terminal: control and bidirectional characters as `\u{…}` escapes, so a
/// definition cannot rewrite what the operator reads.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c != '\n' && (c.is_control() || crate::console::is_invisible_control(c)) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The readable form of a definition held as canonical JSON text (escaped for a terminal).
fn shown_definition(canonical: &str) -> String {
    shown(&readable(canonical))
}

/// Prints the lines of a diff, `-` for the old, `+` for the new.
fn print_diff(old: &str, new: &str) {
    let (old, new) = (shown_definition(old), shown_definition(new));
    for line in line_diff(&old, &new) {
        match line {
            Line::Same(l) => println!("  {l}"),
            Line::Removed(l) => println!("- {l}"),
            Line::Added(l) => println!("+ {l}"),
        }
    }
}

pub fn pins(config_path: &Path, url: Option<String>, key: Option<String>, action: PinsAction) -> anyhow::Result<()> {
    if let PinsAction::Check { lockfile } = action {
        return check(config_path, lockfile);
    }
    let api = crate::commands::OperatorsApi::new(config_path, url, key)?;
    crate::commands::runtime()?.block_on(async move {
        match action {
            PinsAction::Resolve {
                ids,
                all,
                approve,
                reason,
            } => {
                if ids.is_empty() && !all {
                    bail!("name the definitions to resolve (ids from `tollgate pins list`), or --all");
                }
                let body = api
                    .ask(api.post("/admin/pins/resolve").json(&json!({
                        "ids": ids, "all_pending": all, "approve": approve, "reason": reason
                    })))
                    .await?;
                let verb = if approve { "approved" } else { "rejected" };
                let resolved = body["resolved"].as_array().cloned().unwrap_or_default();
                for d in &resolved {
                    println!(
                        "{verb} {}: {} {} of {} (digest {})",
                        text(d, "id"),
                        text(d, "kind"),
                        shown(&text(d, "name")),
                        shown(&text(d, "server")),
                        short(&text(d, "digest"))
                    );
                }
                let missed: Vec<String> = body["not_resolved"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).map(shown).collect())
                    .unwrap_or_default();
                if !missed.is_empty() {
                    bail!("not {verb} (no such definition, or not pending): {}", missed.join(", "));
                }
                if resolved.is_empty() {
                    println!("nothing was pending");
                }
                Ok(())
            }
            other => {
                let listed = api.ask(api.get("/admin/pins")).await?;
                let listed = listed.as_array().cloned().unwrap_or_default();
                show(other, &listed)
            }
        }
    })
}

fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_owned()
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn show(action: PinsAction, listed: &[Value]) -> anyhow::Result<()> {
    match action {
        PinsAction::List { json: true } => {
            println!("{}", crate::commands::terminal_json(&listed)?);
        }
        PinsAction::List { json: false } => {
            if listed.is_empty() {
                println!("no definitions recorded (upstreams with pinning = \"off\" are not recorded)");
            }
            for d in listed {
                println!(
                    "{}  {:<8} {:<8} {}/{}  digest {}{}{}",
                    text(d, "id"),
                    text(d, "state"),
                    text(d, "kind"),
                    shown(&text(d, "server")),
                    shown(&text(d, "name")),
                    short(&text(d, "digest")),
                    if d["current"].as_bool() == Some(true) {
                        "  (listed now)"
                    } else {
                        ""
                    },
                    match text(d, "reason") {
                        r if r.is_empty() => String::new(),
                        r => format!("  {}: {}", text(d, "resolved_by"), shown(&r)),
                    }
                );
            }
        }
        PinsAction::Diff { id } => {
            let Some(d) = listed.iter().find(|d| d["id"] == id.as_str()) else {
                bail!("no definition {} (see `tollgate pins list`)", shown(&id));
            };
            let approved = text(d, "approved_digest");
            let same_name = |o: &&Value| o["server"] == d["server"] && o["kind"] == d["kind"] && o["name"] == d["name"];
            let old = listed
                .iter()
                .filter(same_name)
                .find(|o| o["digest"] == approved.as_str() && !approved.is_empty());
            println!(
                "{} {} of {}: {} definition {} against {}",
                text(d, "kind"),
                shown(&text(d, "name")),
                shown(&text(d, "server")),
                text(d, "state"),
                short(&text(d, "digest")),
                match old {
                    Some(o) => format!("the approved one {}", short(&text(o, "digest"))),
                    None => "nothing approved".into(),
                }
            );
            let new = text(d, "definition");
            if new.is_empty() {
                println!("(the definition is not kept: {})", shown(&text(d, "reason")));
                return Ok(());
            }
            print_diff(old.map(|o| text(o, "definition")).as_deref().unwrap_or(""), &new);
        }
        PinsAction::Export => {
            let mut pins: Vec<LockedPin> = listed
                .iter()
                .filter(|d| d["state"] == "approved")
                .map(|d| LockedPin {
                    server: text(d, "server"),
                    kind: text(d, "kind"),
                    name: text(d, "name"),
                    digest: text(d, "digest"),
                    definition: serde_json::from_str(&text(d, "definition")).ok(),
                })
                .collect();
            pins.sort_by(|a, b| (&a.server, &a.kind, &a.name).cmp(&(&b.server, &b.kind, &b.name)));
            let lock = Lockfile { version: 1, pins };
            println!("{}", serde_json::to_string_pretty(&lock)?);
        }
        PinsAction::Resolve { .. } | PinsAction::Check { .. } => {}
    }
    Ok(())
}

/// `tollgate pins check`: reads every pinned upstream's lists now and compares them with the
/// lockfile. Exit 1 (an error) when a definition differs, is new, or is gone.
fn check(config_path: &Path, lockfile: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let path = lockfile
        .or_else(|| config.edge.pins_file.clone())
        .ok_or_else(|| anyhow::anyhow!("no lockfile: pass --lockfile FILE or set edge.pins_file"))?;
    let lock = Lockfile::read(&path).map_err(anyhow::Error::msg)?;
    let mut locked: BTreeMap<(String, String, String), &LockedPin> = BTreeMap::new();
    for p in &lock.pins {
        locked.insert((p.server.clone(), p.kind.clone(), p.name.clone()), p);
    }
    let settings = &config.edge;
    let timeout = Duration::from_millis(settings.upstream_timeout_ms);
    let connect = timeout.min(Duration::from_secs(10));
    let mut differences = 0usize;
    let mut checked = 0usize;
    crate::commands::runtime()?.block_on(async {
        for u in &config.upstreams {
            let mode = u.pinning.unwrap_or(settings.pinning);
            if mode == tollgate_edge::PinningMode::Off {
                continue;
            }
            if u.url.is_empty() {
                println!(
                    "{}: skipped (a stdio server: check it through its bridge's url)",
                    u.name
                );
                continue;
            }
            let upstream = tollgate_edge::Upstream::new(u, connect).map_err(|e| anyhow::anyhow!("{e}"))?;
            let lists = read_lists(
                &upstream,
                timeout,
                settings.max_upstream_message_bytes,
                settings.pins_max_definition_bytes,
            )
            .await
            .map_err(|e| anyhow::anyhow!("upstream {}: {e}", u.name))?;
            let mut live = std::collections::BTreeSet::new();
            for (kind, definitions) in lists {
                for d in definitions {
                    checked += 1;
                    let key = (u.name.clone(), kind_word(kind).to_owned(), d.name.clone());
                    live.insert(key.clone());
                    let what = format!("{} {} of {}", kind_word(kind), shown(&d.name), shown(&u.name));
                    match locked.get(&key) {
                        Some(p) if p.digest == d.digest => {}
                        Some(p) => {
                            differences += 1;
                            println!(
                                "changed: {what}: {} in the lockfile, {} live",
                                short(&p.digest),
                                short(&d.digest)
                            );
                            let old = p
                                .definition
                                .as_ref()
                                .map(tollgate_decision::definitions::jcs)
                                .unwrap_or_default();
                            print_diff(&old, &d.canonical);
                        }
                        None => {
                            differences += 1;
                            println!("new: {what} (digest {}), not in the lockfile", short(&d.digest));
                            print_diff("", &d.canonical);
                        }
                    }
                }
            }
            for (key, p) in locked.range((u.name.clone(), String::new(), String::new())..) {
                if key.0 != u.name {
                    break;
                }
                if !live.contains(key) {
                    differences += 1;
                    println!(
                        "gone: {} {} of {} (digest {}) is in the lockfile but no longer listed",
                        p.kind,
                        shown(&p.name),
                        shown(&p.server),
                        short(&p.digest)
                    );
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    if differences > 0 {
        bail!(
            "{differences} definition(s) differ from {} ({checked} checked)",
            path.display()
        );
    }
    println!("{checked} definitions match {}", path.display());
    Ok(())
}
