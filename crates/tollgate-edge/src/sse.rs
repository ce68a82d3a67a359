//! Server-sent events, just enough to find and rewrite one JSON-RPC message inside a
//! stream while every other byte passes through as it came.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into SSE events (each ending with a blank line).
#[derive(Default)]
pub struct EventSplitter {
    buffer: BytesMut,
}

impl EventSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event, terminator included.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let end = find_event_end(&self.buffer)?;
        Some(self.buffer.split_to(end).freeze())
    }

    /// Whatever is left when the stream ends (an unterminated event).
    pub fn rest(self) -> Bytes {
        self.buffer.freeze()
    }
}

fn find_event_end(buf: &[u8]) -> Option<usize> {
    // An event ends at the first empty line; lines end with \n, \r\n or \r.
    let mut i = 0;
    let mut line_start = 0;
    while i < buf.len() {
        let eol = match buf[i] {
            b'\n' => Some(i + 1),
            b'\r' if buf.get(i + 1) == Some(&b'\n') => Some(i + 2),
            // An empty line ends the event whatever follows; a lone \r ending a non-empty
            // line at the very end may still be followed by \n: wait for more bytes.
            b'\r' if i + 1 == buf.len() && i == line_start => Some(i + 1),
            b'\r' if i + 1 == buf.len() => return None,
            b'\r' => Some(i + 1),
            _ => None,
        };
        match eol {
            Some(next) if i == line_start => return Some(next),
            Some(next) => {
                line_start = next;
                i = next;
            }
            None => i += 1,
        }
    }
    None
}

/// The joined `data:` lines of an event, if it has any.
pub fn data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    data
}

/// The event with its data replaced by `new_data`; `id:` and `event:` lines are kept.
pub fn with_data(event: &[u8], new_data: &str) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let mut out = String::with_capacity(new_data.len() + 32);
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if !line.starts_with("data:") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("data: ");
    out.push_str(new_data);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks_and_line_endings() {
        let mut s = EventSplitter::default();
        s.push(b"event: message\ndata: {\"a\"");
        assert!(s.next_event().is_none());
        s.push(b":1}\n\nid: 7\r\ndata: x\r\n\r\n: comment\r");
        assert_eq!(
            s.next_event().as_deref(),
            Some(&b"event: message\ndata: {\"a\":1}\n\n"[..])
        );
        assert_eq!(s.next_event().as_deref(), Some(&b"id: 7\r\ndata: x\r\n\r\n"[..]));
        assert!(s.next_event().is_none(), "lone \\r at the end waits");
        s.push(b"\r");
        assert_eq!(s.next_event().as_deref(), Some(&b": comment\r\r"[..]));
    }

    #[test]
    fn joins_data_lines_and_rewrites_keeping_id() {
        assert_eq!(data(b"data: a\ndata:b\n\n").as_deref(), Some("a\nb"));
        assert_eq!(data(b": keep-alive\n\n"), None);
        assert_eq!(
            &with_data(b"id: 3\nevent: message\ndata: old\n\n", "new")[..],
            b"id: 3\nevent: message\ndata: new\n\n"
        );
    }
}
