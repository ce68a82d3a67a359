//! Reading newline-delimited text from a child without letting it choose how much memory a
//! line takes.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read by [`read_line`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A complete line, without its `\n` (or `\r\n`).
    Complete(Vec<u8>),
    /// A line longer than the limit: its first `max` bytes; the rest was read and dropped.
    TooLong(Vec<u8>),
    /// End of the stream (an unterminated last line is returned as complete first).
    End,
}

/// Reads one line, keeping at most `max` bytes of it.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (line.is_empty() && !too_long, too_long) {
                (true, _) => Line::End,
                (false, true) => Line::TooLong(line),
                (false, false) => Line::Complete(trim_cr(line)),
            });
        }
        let (chunk, found) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..at], Some(at)),
            None => (available, None),
        };
        let room = max.saturating_sub(line.len());
        if chunk.len() > room {
            too_long = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = found.map_or(available.len(), |at| at + 1);
        reader.consume(used);
        if found.is_some() {
            return Ok(if too_long {
                Line::TooLong(line)
            } else {
                Line::Complete(trim_cr(line))
            });
        }
    }
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let input: &[u8] = b"one\r\ntwo\nthis line is long\nlast";
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        assert_eq!(
            read_line(&mut reader, 8).await.ok(),
            Some(Line::Complete(b"one".to_vec()))
        );
        assert_eq!(
            read_line(&mut reader, 8).await.ok(),
            Some(Line::Complete(b"two".to_vec()))
        );
        assert_eq!(
            read_line(&mut reader, 8).await.ok(),
            Some(Line::TooLong(b"this lin".to_vec()))
        );
        assert_eq!(
            read_line(&mut reader, 8).await.ok(),
            Some(Line::Complete(b"last".to_vec()))
        );
        assert_eq!(read_line(&mut reader, 8).await.ok(), Some(Line::End));
    }
}
