//! What a tool name may be. Tool names come from agents, reach logs, metric labels, span
//! attributes and counter keys, so the edge and the decision service refuse names that no
//! MCP server would publish before anything else sees them: 1 to 128 characters of ASCII
//! letters, digits, `_`, `-`, `.` and `/` (the MCP specification's set, plus `/`).

/// Longest tool name accepted.
pub const MAX_TOOL_NAME_CHARS: usize = 128;

/// Checks that `name` is a plausible MCP tool name; the error says why it is not, without
/// repeating the name.
pub fn check_tool_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the tool name is empty");
    }
    if name.len() > MAX_TOOL_NAME_CHARS {
        return Err("the tool name is longer than 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
    {
        return Err("a tool name may only hold ASCII letters, digits, '_', '-', '.' and '/'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_mcp_names_and_refuses_the_rest() {
        for ok in [
            "k8s_rollout_pause",
            "a",
            "ns.tool-2",
            "github/create_issue",
            &"x".repeat(128),
        ] {
            assert_eq!(check_tool_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a\nb", "tool\u{0}", "é", "a;b", &"x".repeat(129)] {
            assert!(check_tool_name(bad).is_err(), "{bad:?}");
        }
    }
}
