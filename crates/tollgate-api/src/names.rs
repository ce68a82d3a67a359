//! What a tool name, prompt name and resource URI may be. They come from agents, reach
//! logs, span attributes, counter keys and policy patterns, so the edge and the decision
//! service refuse what no MCP server would publish before anything else sees it.
//!
//! Tool and prompt names: 1 to 128 characters of ASCII letters, digits, `_`, `-`, `.` and
//! `/` (the MCP specification's set for tool names, plus `/`).
//!
//! Resource URIs must be in the normal form RFC 3986 gives them, because policy patterns
//! match their text: a URI that names the same resource as another in a different spelling
//! (`FILE:///etc/passwd`, `file:///tmp/../etc/passwd`, `file:///%65tc/passwd`,
//! `file:///etc%2Fpasswd`) could otherwise slip past a rule written for the plain spelling.
//! Such URIs are refused, not rewritten: the upstream receives exactly what was decided.

use crate::proto::SubjectKind;

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

/// Longest resource URI accepted, in bytes.
pub const MAX_RESOURCE_URI_BYTES: usize = 2048;

/// Checks a prompt name: the same rules as tool names.
pub fn check_prompt_name(name: &str) -> Result<(), &'static str> {
    check_tool_name(name).map_err(|e| match e {
        "the tool name is empty" => "the prompt name is empty",
        "the tool name is longer than 128 characters" => "the prompt name is longer than 128 characters",
        _ => "a prompt name may only hold ASCII letters, digits, '_', '-', '.' and '/'",
    })
}

/// Checks that `uri` is an absolute URI in normal form: printable ASCII without spaces or
/// `\`, a lowercase scheme, a lowercase authority without user information or a default
/// port (and `file:///`, never `file://localhost/`), a path without empty, `.` or `..`
/// segments and without a trailing `/` (but for the root path), a query and fragment that
/// are not empty and hold no `//`, `.` or `..` segments, and percent-encoding only where it
/// is needed (never of a letter, digit, `-`, `.`, `_`, `~`, `/` or `\`). The error says
/// why, without repeating the URI.
pub fn check_resource_uri(uri: &str) -> Result<(), &'static str> {
    if uri.is_empty() {
        return Err("the resource URI is empty");
    }
    if uri.len() > MAX_RESOURCE_URI_BYTES {
        return Err("the resource URI is longer than 2048 bytes");
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err("a resource URI may only hold printable ASCII without spaces or '\\' (percent-encode the rest)");
    }
    let Some(colon) = uri.find(':') else {
        return Err("the resource URI has no scheme");
    };
    let scheme = &uri[..colon];
    let scheme_ok = scheme.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err("the resource URI's scheme must be lowercase letters, digits, '+', '-' and '.'");
    }
    let bytes = uri.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                return Err("the resource URI has a '%' that is not followed by two hex digits");
            };
            let decoded = (hi * 16 + lo) as u8;
            if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\') {
                return Err("the resource URI percent-encodes a character that must be written as it is");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let rest = &uri[colon + 1..];
    if rest.is_empty() {
        return Err("the resource URI has nothing after its scheme");
    }
    // The whole URI is checked, its query and fragment too: an upstream that reads a URI as
    // a file path does not stop at '?' or '#'.
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (rest, None),
    };
    let (hier, query) = match before_fragment.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (before_fragment, None),
    };
    let mut path = hier;
    let web = matches!(scheme, "http" | "https" | "ws" | "wss");
    if let Some(after) = hier.strip_prefix("//") {
        let authority_end = after.find('/').unwrap_or(after.len());
        check_authority(scheme, &after[..authority_end])?;
        path = &after[authority_end..];
        // RFC 3986 6.2.3: an empty path of an http(s) URI is "/".
        if web && path.is_empty() {
            return Err("the resource URI has no path: write the root path as '/'");
        }
    } else if scheme == "file" || web {
        // `file:/x`, `file:x` and `https:example.com/x` name what `file:///x` and
        // `https://example.com/x` name to common URL parsers.
        return Err(
            "a file:, http(s): or ws(s): resource URI must be written with '//' (file:///path, https://host/path)",
        );
    }
    // One spelling per path: no empty segment (`a//b`, `file:////x`), no trailing '/'
    // except the root path itself, no '.' or '..'.
    let segments = match path {
        "" | "/" => "",
        p => p.strip_prefix('/').unwrap_or(p),
    };
    if !segments.is_empty() {
        for segment in segments.split('/') {
            match segment {
                "" => return Err("the resource URI has an empty path segment ('//' or a trailing '/')"),
                "." | ".." => return Err("the resource URI has '.' or '..' path segments"),
                _ => {}
            }
        }
    }
    for part in [query, fragment].into_iter().flatten() {
        if part.is_empty() {
            return Err("the resource URI has an empty query or fragment");
        }
        for segment in part.split(['/', '?']) {
            match segment {
                "." | ".." => return Err("the resource URI has '.' or '..' segments in its query or fragment"),
                "" if part.contains("//") => return Err("the resource URI has '//' in its query or fragment"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The authority of a resource URI in normal form: lowercase, no user information, no
/// empty or default port, and `file:` URIs without `localhost` (RFC 8089: `file:///x`).
fn check_authority(scheme: &str, authority: &str) -> Result<(), &'static str> {
    if authority.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("the resource URI's host must be lowercase");
    }
    if authority.contains('@') {
        return Err("the resource URI has user information ('@') in its authority");
    }
    if scheme == "file" && !authority.is_empty() {
        return Err("a file: resource URI names the local host as file:///path, with no host");
    }
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    let host = match authority[host_end..].find(':') {
        Some(colon) => &authority[..host_end + colon],
        None => authority,
    };
    if matches!(scheme, "http" | "https" | "ws" | "wss") && host.is_empty() {
        return Err("the resource URI has no host");
    }
    if host.ends_with('.') {
        return Err("the resource URI's host ends with '.'");
    }
    // The port is what follows the first ':' after an IPv6 literal's brackets.
    if let Some(colon) = authority[host_end..].find(':') {
        let port = &authority[host_end + colon + 1..];
        let default = match scheme {
            "http" | "ws" => Some("80"),
            "https" | "wss" => Some("443"),
            _ => None,
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.starts_with('0') {
            return Err("the resource URI's port must be digits without a leading zero");
        }
        if default == Some(port) {
            return Err("the resource URI names its scheme's default port");
        }
    }
    Ok(())
}

/// Checks the name a decision is about, by its kind.
pub fn check_subject(kind: SubjectKind, name: &str) -> Result<(), &'static str> {
    match kind {
        SubjectKind::Tool => check_tool_name(name),
        SubjectKind::Resource => check_resource_uri(name),
        SubjectKind::Prompt => check_prompt_name(name),
    }
}

/// The MCP method a decision of `kind` is for.
pub fn subject_method(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Tool => "tools/call",
        SubjectKind::Resource => "resources/read",
        SubjectKind::Prompt => "prompts/get",
    }
}

/// The kind of decision a `method` asks for ([`subject_method`]'s inverse); `None` for any
/// other method.
pub fn method_subject(method: &str) -> Option<SubjectKind> {
    [SubjectKind::Tool, SubjectKind::Resource, SubjectKind::Prompt]
        .into_iter()
        .find(|kind| subject_method(*kind) == method)
}

/// The span attribute (OpenTelemetry GenAI and MCP conventions) that names a subject of
/// `kind`: `gen_ai.tool.name`, `mcp.resource.uri` or `gen_ai.prompt.name`.
pub fn subject_attribute(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Tool => "gen_ai.tool.name",
        SubjectKind::Resource => "mcp.resource.uri",
        SubjectKind::Prompt => "gen_ai.prompt.name",
    }
}

/// How a subject is named where all kinds meet (approval records, approval bindings): the
/// tool name as it is, `resources/read <uri>` and `prompts/get <name>` for the others. No
/// tool name holds a space, so the three never collide.
pub fn subject_label(kind: SubjectKind, name: &str) -> String {
    match kind {
        SubjectKind::Tool => name.to_owned(),
        other => format!("{} {name}", subject_method(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_must_be_in_normal_form() {
        for ok in [
            "test://static/resource/1",
            "file:///etc/passwd",
            "https://example.com/a/b?x=1#y",
            "demo://notes/caf%C3%A9",
            "urn:isbn:0451450523",
            "file:///a%20b",
            "file:///a/..b/c.",
            "https://example.com/",
            "https://example.com/?q=1",
            "test://static",
            "https://example.com:8443/a",
            "https://[::1]:8443/a",
            "file:///srv/reports/payroll/x.csv",
            "https://example.com/a?x=1&y=2",
        ] {
            assert_eq!(check_resource_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "no-scheme",
            "FILE:///etc/passwd",
            "file:///tmp/../etc/passwd",
            "file:///./etc/passwd",
            "file:///etc/..",
            "file:///%65tc/passwd",
            "file:///etc%2Fpasswd",
            "file:///etc%2fpasswd",
            "file:///a%2",
            "file:///a%zz",
            "file:///a b",
            "file:///a\\b",
            "file:///caf\u{e9}",
            "file:///a\nb",
            "https://EXAMPLE.com/x",
            ":nothing",
            "x:",
            // Issue 23, hole 4: other spellings of one resource.
            "file:///srv/reports//payroll/x.csv",
            "file:////etc/secret",
            "file:///srv/reports/",
            "file:///srv/public?/../secret",
            "file:///srv/public#/../secret",
            "file:///srv/public?..",
            "file:///srv/public?a//b",
            "file:///srv/public?",
            "file:///srv/public#",
            "file://localhost/srv/secret",
            "https://user@example.com/x",
            "https://example.com:443/x",
            "http://example.com:80/x",
            "https://example.com:/x",
            "https://example.com:0443/x",
            "demo:notes//x",
            // Found by the hostile review of issue 23: spellings URL parsers read alike.
            "file:/srv/public/secret/key.txt",
            "file:srv/public/secret/key.txt",
            "file://host/srv/x",
            "https:example.com/public/a",
            "https:/example.com/public/a",
            "https:///example.com/public/a",
            "https://example.com",
            "https://example.com?x",
            "https://example.com#x",
            "https://example.com./public/a",
            "demo:notes/",
            &format!("file:///{}", "a".repeat(2048)),
        ] {
            assert!(check_resource_uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subjects_are_checked_and_labelled_by_kind() {
        assert!(check_subject(SubjectKind::Resource, "file:///x").is_ok());
        assert!(check_subject(SubjectKind::Tool, "file:///x").is_err());
        assert!(check_subject(SubjectKind::Prompt, "simple_prompt").is_ok());
        assert_eq!(check_prompt_name(""), Err("the prompt name is empty"));
        assert_eq!(subject_label(SubjectKind::Tool, "t"), "t");
        assert_eq!(
            subject_label(SubjectKind::Resource, "file:///x"),
            "resources/read file:///x"
        );
        assert_eq!(subject_label(SubjectKind::Prompt, "p"), "prompts/get p");
        for kind in [SubjectKind::Tool, SubjectKind::Resource, SubjectKind::Prompt] {
            assert_eq!(method_subject(subject_method(kind)), Some(kind));
        }
        assert_eq!(method_subject("tools/list"), None);
    }

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
