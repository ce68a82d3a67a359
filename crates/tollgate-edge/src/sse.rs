//! Server-sent events, just enough to find and rewrite one JSON-RPC message inside a
//! stream while every other byte passes through as it came.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into SSE events (each ending with a blank line). Each byte is
/// scanned once however the stream is chunked, and an event may not grow past `max_bytes`.
pub struct EventSplitter {
    buffer: BytesMut,
    /// How far `buffer` has been scanned without finding the end of the event.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    max_bytes: usize,
}

/// An upstream event larger than the configured cap.
#[derive(Debug, PartialEq, Eq)]
pub struct EventTooLarge(pub usize);

impl EventSplitter {
    pub fn new(max_bytes: usize) -> Self {
        EventSplitter {
            buffer: BytesMut::new(),
            scanned: 0,
            line_start: 0,
            max_bytes,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event, terminator included.
    pub fn next_event(&mut self) -> Result<Option<Bytes>, EventTooLarge> {
        let buf = &self.buffer[..];
        let mut i = self.scanned;
        while i < buf.len() {
            // An event ends at the first empty line; lines end with \n, \r\n or \r.
            let eol = match buf[i] {
                b'\n' => Some(i + 1),
                b'\r' if buf.get(i + 1) == Some(&b'\n') => Some(i + 2),
                // An empty line ends the event whatever follows; a lone \r ending a non-empty
                // line at the very end may still be followed by \n: wait for more bytes.
                b'\r' if i + 1 == buf.len() && i == self.line_start => Some(i + 1),
                b'\r' if i + 1 == buf.len() => break,
                b'\r' => Some(i + 1),
                _ => None,
            };
            match eol {
                Some(next) if i == self.line_start => {
                    if next > self.max_bytes {
                        return Err(EventTooLarge(self.max_bytes));
                    }
                    self.scanned = 0;
                    self.line_start = 0;
                    return Ok(Some(self.buffer.split_to(next).freeze()));
                }
                Some(next) => {
                    self.line_start = next;
                    i = next;
                }
                None => i += 1,
            }
        }
        self.scanned = i;
        if self.buffer.len() > self.max_bytes {
            return Err(EventTooLarge(self.max_bytes));
        }
        Ok(None)
    }
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

/// Reads an SSE body until the message answering `id` (a response, not a request or
/// notification), each event at most `limit` bytes; why not, when the stream ends, breaks or
/// carries what cannot be read first.
pub(crate) async fn answer_in(
    mut body: hyper::body::Incoming,
    id: &serde_json::Value,
    limit: usize,
) -> Result<serde_json::Value, String> {
    use http_body_util::BodyExt;
    let mut splitter = EventSplitter::new(limit);
    loop {
        let Some(frame) = body.frame().await else {
            return Err("a stream that ended without the answer".into());
        };
        let frame = frame.map_err(|e| format!("a broken stream ({e})"))?;
        let Ok(chunk) = frame.into_data() else { continue };
        splitter.push(&chunk);
        while let Some(event) = splitter
            .next_event()
            .map_err(|EventTooLarge(max)| format!("an event larger than {max} bytes"))?
        {
            let Some(data) = data(&event) else { continue };
            if data.trim().is_empty() {
                continue;
            }
            let message = crate::jsonrpc::parse_strict(data.as_bytes())
                .map_err(|e| format!("an event that is not JSON ({e})"))?;
            if message.get("id") == Some(id) && message.get("method").is_none() {
                return Ok(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks_and_line_endings() {
        let mut s = EventSplitter::new(1024);
        s.push(b"event: message\ndata: {\"a\"");
        assert_eq!(s.next_event(), Ok(None));
        s.push(b":1}\n\nid: 7\r\ndata: x\r\n\r\n: comment\r");
        assert_eq!(
            s.next_event().unwrap().as_deref(),
            Some(&b"event: message\ndata: {\"a\":1}\n\n"[..])
        );
        assert_eq!(
            s.next_event().unwrap().as_deref(),
            Some(&b"id: 7\r\ndata: x\r\n\r\n"[..])
        );
        assert_eq!(s.next_event(), Ok(None), "lone \\r at the end waits");
        s.push(b"\r");
        assert_eq!(s.next_event().unwrap().as_deref(), Some(&b": comment\r\r"[..]));
    }

    #[test]
    fn byte_at_a_time_finds_the_same_events() {
        let stream = b"data: a\r\n\r\n: c\n\ndata: b\rdata: c\r\r";
        let mut s = EventSplitter::new(1024);
        let mut events = Vec::new();
        for b in stream {
            s.push(&[*b]);
            while let Some(e) = s.next_event().unwrap() {
                events.push(e);
            }
        }
        // A CRLF split after its CR leaves the LF as a blank "event" of its own: harmless,
        // since the bytes are relayed as they came.
        assert_eq!(events.concat(), stream.to_vec());
        let data: Vec<Option<String>> = events.iter().map(|e| data(e)).filter(|d| d.is_some()).collect();
        assert_eq!(data, [Some("a".to_owned()), Some("b\nc".to_owned())]);
    }

    #[test]
    fn an_event_over_the_cap_is_an_error() {
        let mut s = EventSplitter::new(16);
        s.push(b"data: 0123456789");
        assert_eq!(s.next_event(), Ok(None));
        s.push(b"abcdef");
        assert_eq!(s.next_event(), Err(EventTooLarge(16)));
        let mut s = EventSplitter::new(16);
        s.push(b"data: 0123456789abcdef\n\n");
        assert_eq!(s.next_event(), Err(EventTooLarge(16)), "complete in one chunk");
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
