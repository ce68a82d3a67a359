//! Reading a policy's text: format detection, parsing with positions, and finding where a key
//! was written so that errors found after parsing still point at a line and column.

use serde::Deserialize;
use serde_json::Value;

use crate::document::{PolicyDocument, RuleSpec, ScopeSpec};
use crate::error::{Diagnostic, Location, PolicyError};

/// The syntax a policy is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Toml,
}

impl Format {
    /// Picks the format from the file name's extension; JSON when there is none.
    pub fn from_path(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else if lower.ends_with(".toml") {
            Format::Toml
        } else {
            Format::Json
        }
    }
}

/// A policy's text and the name it is reported under.
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
    pub format: Format,
}

impl<'a> Source<'a> {
    pub fn location_at_offset(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.location(line, column)
    }

    pub fn location(&self, line: usize, column: usize) -> Location {
        Location {
            file: self.name.to_owned(),
            line: line.max(1),
            column: column.max(1),
        }
    }

    /// Parses the document. When it does not fit the policy's types, every such mistake that
    /// can be found is reported, not only the first: the parser's own error (with its exact
    /// position), then the errors of every other rule, each at the rule's key.
    pub(crate) fn parse(&self) -> Result<PolicyDocument, PolicyError> {
        self.parse_typed().map_err(|first| {
            let mut errors = first.errors;
            // The parser's own report of a mistake is kept (it is more precise); the first
            // rule-by-rule report of the same mistake is its repetition, later ones are other
            // rules with the same mistake.
            let mut repeated = vec![false; errors.len()];
            for more in self.every_error() {
                let core = more.message.split_once(": ").map_or(more.message.as_str(), |(_, m)| m);
                let same = errors.iter().enumerate().position(|(i, e)| {
                    i < repeated.len()
                        && !repeated[i]
                        && (e.message.contains(core) || core.contains(e.message.as_str()))
                });
                match same {
                    Some(i) => repeated[i] = true,
                    None => errors.push(more),
                }
            }
            errors.sort_by_key(|e| (e.location.line, e.location.column));
            PolicyError { errors }
        })
    }

    /// The document as untyped values (`None` when its syntax is broken: then the first
    /// error is all there is).
    fn untyped(&self) -> Option<Value> {
        match self.format {
            Format::Json => serde_json::from_str(self.text).ok(),
            Format::Yaml => serde_norway::from_str(self.text).ok(),
            Format::Toml => toml::from_str(self.text).ok(),
        }
    }

    /// Every rule, scope and top-level mistake, each checked on its own.
    fn every_error(&self) -> Vec<Diagnostic> {
        let Some(Value::Object(mut document)) = self.untyped() else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        let mut check = |path: &[&str], value: &mut Value, is_rule: bool| {
            let result = if is_rule {
                RuleSpec::deserialize(&*value).map(|_| ())
            } else {
                ScopeSpec::deserialize(&*value).map(|_| ())
            };
            if let Err(e) = result {
                errors.push(Diagnostic {
                    location: self.locate(path),
                    message: format!("{}: {e}", path.join(".")),
                });
                // Checked: the rest of the document is checked without it.
                *value = Value::Object(Default::default());
            }
        };
        for section in ["tools", "resources", "prompts", "classes"] {
            if let Some(Value::Object(rules)) = document.get_mut(section) {
                for (key, rule) in rules.iter_mut() {
                    check(&[section, key], rule, true);
                }
            }
        }
        for scope_kind in ["servers", "grants"] {
            if let Some(Value::Object(scopes)) = document.get_mut(scope_kind) {
                for (name, scope) in scopes.iter_mut() {
                    if let Value::Object(inner) = scope {
                        for section in ["tools", "resources", "prompts"] {
                            if let Some(Value::Object(rules)) = inner.get_mut(section) {
                                for (key, rule) in rules.iter_mut() {
                                    check(&[scope_kind, name, section, key], rule, true);
                                }
                            }
                        }
                    }
                    check(&[scope_kind, name], scope, false);
                }
            }
        }
        if let Err(e) = PolicyDocument::deserialize(Value::Object(document)) {
            let message = e.to_string();
            // The key it names, when it names one, says where.
            let key = message.split('`').nth(1).unwrap_or_default().to_owned();
            errors.push(Diagnostic {
                location: if key.is_empty() {
                    self.location(1, 1)
                } else {
                    self.locate(&[key.as_str()])
                },
                message,
            });
        }
        errors
    }

    fn parse_typed(&self) -> Result<PolicyDocument, PolicyError> {
        match self.format {
            Format::Json => serde_json::from_str(self.text).map_err(|e| {
                let message = strip_position_suffix(&e.to_string());
                PolicyError::single(self.location(e.line(), e.column()), message)
            }),
            Format::Yaml => serde_norway::from_str(self.text).map_err(|e| {
                let location = e
                    .location()
                    .map_or_else(|| self.location(1, 1), |l| self.location(l.line(), l.column()));
                PolicyError::single(location, strip_position_suffix(&e.to_string()))
            }),
            Format::Toml => toml::from_str(self.text).map_err(|e| {
                let location = e
                    .span()
                    .map_or_else(|| self.location(1, 1), |s| self.location_at_offset(s.start));
                PolicyError::single(location, e.message().to_owned())
            }),
        }
    }

    /// Where the key at `path` (e.g. `["grants", "ci-bot", "tools", "k8s_*"]`) was written.
    ///
    /// Searches for each key in order, each after the previous one, as a quoted or bare word
    /// followed by `:`, `=`, `.` or `]`, which is how keys look in JSON, YAML and TOML. Falls
    /// back to the deepest key it found, then to the start of the file.
    pub fn locate(&self, path: &[&str]) -> Location {
        let mut from = 0;
        let mut found = None;
        for key in path {
            match find_key(self.text, key, from) {
                Some(at) => {
                    found = Some(at);
                    from = at + key.len();
                }
                None => break,
            }
        }
        self.location_at_offset(found.unwrap_or(0))
    }
}

fn find_key(text: &str, key: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut start = from;
    while let Some(rel) = text.get(start..)?.find(key) {
        let at = start + rel;
        let end = at + key.len();
        let quote = at.checked_sub(1).map(|i| bytes[i]);
        let quoted = matches!(quote, Some(b'"') | Some(b'\'')) && bytes.get(end) == quote.as_ref();
        let bare_ok = !quoted && quote.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
        if quoted || bare_ok {
            let after = if quoted { end + 1 } else { end };
            let next = text[after..].trim_start_matches([' ', '\t']).bytes().next();
            if matches!(next, Some(b':') | Some(b'=') | Some(b'.') | Some(b']')) {
                return Some(if quoted { at - 1 } else { at });
            }
        }
        start = end;
    }
    None
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// serde_json and serde_norway append " at line L column C"; we print the position up front.
fn strip_position_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_keys_in_each_format() {
        let json = "{\n  \"tools\": {\n    \"a\": {},\n    \"k8s_*\": {}\n  }\n}";
        let src = Source {
            name: "p.json",
            text: json,
            format: Format::Json,
        };
        let at = src.locate(&["tools", "k8s_*"]);
        assert_eq!((at.line, at.column), (4, 5));

        let yaml = "version: \"1\"\ntools:\n  k8s_get: {}\n  'k8s_*': {}\n";
        let src = Source {
            name: "p.yaml",
            text: yaml,
            format: Format::Yaml,
        };
        assert_eq!(src.locate(&["tools", "k8s_*"]).line, 4);

        let toml = "version = \"1\"\n[tools.k8s_get]\n[tools.\"k8s_*\"]\n";
        let src = Source {
            name: "p.toml",
            text: toml,
            format: Format::Toml,
        };
        assert_eq!(src.locate(&["tools", "k8s_*"]).line, 3);
    }

    #[test]
    fn locate_skips_values_that_merely_contain_the_key() {
        let json = "{\"reason\": \"tools are off\",\n \"tools\": {}}";
        let src = Source {
            name: "p.json",
            text: json,
            format: Format::Json,
        };
        assert_eq!(src.locate(&["tools"]).line, 2);
    }
}
