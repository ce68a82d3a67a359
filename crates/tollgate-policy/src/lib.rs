//! Tollgate's policy language: parse (JSON, YAML, TOML), validate with file:line:column
//! diagnostics, compile, and evaluate which rule decides a `tools/call` (or a `resources/read`, or a
//! `prompts/get`).
//!
//! This crate does no I/O: callers hand it text and facts about a call, and it answers with
//! a rule and the counter hits the call needs. Counting itself is `tollgate-limiter`'s job.

mod canonical;
pub use canonical::{canonical_json, exact_json};
mod compile;
mod document;
mod error;
mod glob;
mod policy;
mod source;

pub use compile::{Compiled, MAX_COUNT, MAX_SLIDING_LOG_MAX, compile_str, compile_with_format};
pub use document::{
    Action, Algorithm, ApprovalBind, ApprovalMode, MAX_WINDOW, OnStoreError, RuleMode, Scope, ScopeDim, Window,
    parse_duration,
};
pub use error::{Diagnostic, Location, PolicyError};
pub use glob::Glob;
pub use policy::{Annotations, ApprovalPolicy, ArgumentSchema, Call, Class, CounterHit, Kind, Limit, Policy, Rule};
pub use source::Format;

/// Reads and compiles a policy file.
pub fn load_file(path: &std::path::Path) -> Result<Compiled, PolicyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        errors: vec![Diagnostic {
            location: Location {
                file: name.clone(),
                line: 1,
                column: 1,
            },
            message: format!("cannot read policy file: {e}"),
        }],
    })?;
    compile_str(&name, &text)
}
