//! Reading a journal as it grows (the exporter): a position in a segment, kept between
//! reads, so each record is read once however long the journal gets. A record the writer has
//! not finished yet is left for the next read; a record that breaks the chain stops reading
//! (`tollgate audit verify` names it).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::format::{HEADER_BYTES, Hash, MAGIC, MAX_PAYLOAD_BYTES, RECORD_OVERHEAD, Record, chain, segments};

/// Where the next record is.
struct Position {
    segment: PathBuf,
    /// The segment's first sequence number.
    first: u64,
    offset: u64,
    previous: Hash,
    next_seq: u64,
}

/// Reads a journal's records in order, from a sequence number on.
pub struct Reader {
    dir: PathBuf,
    from: u64,
    position: Option<Position>,
    /// The writer's durable records, when it runs in this process: reading stops after the
    /// last of them (a record being written is never read half-way).
    durable: Option<std::sync::Arc<crate::JournalStats>>,
}

impl Reader {
    /// A reader of the journal in `dir` whose first record will be `from` (or the first one
    /// kept after it, when older segments were removed).
    /// For a journal no writer is appending to (or one written only between reads).
    pub fn new(dir: &Path, from: u64) -> Reader {
        Reader {
            dir: dir.to_owned(),
            from: from.max(1),
            position: None,
            durable: None,
        }
    }

    /// A reader of a journal this process is writing (`journal.stats()`): it reads only
    /// records already durable.
    pub fn following(dir: &Path, from: u64, stats: std::sync::Arc<crate::JournalStats>) -> Reader {
        Reader {
            durable: Some(stats),
            ..Reader::new(dir, from)
        }
    }

    /// The next records, at most `most`; empty when there is nothing new yet.
    pub fn read(&mut self, most: usize) -> std::io::Result<Vec<Record>> {
        self.read_up_to(most, usize::MAX)
    }

    /// The next records, at most `most` and, past the first, at most `max_bytes` of
    /// payload in all.
    pub fn read_up_to(&mut self, most: usize, max_bytes: usize) -> std::io::Result<Vec<Record>> {
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        while out.len() < most && bytes < max_bytes {
            if self.position.is_none() && !self.seek()? {
                break;
            }
            let Some(position) = self.position.as_mut() else { break };
            let limit = self
                .durable
                .as_ref()
                .map_or(u64::MAX, |s| s.last_seq.load(std::sync::atomic::Ordering::Acquire));
            let read = match read_from(position, most - out.len(), max_bytes - bytes, limit) {
                Ok(read) => read,
                // Its segment was removed (the journal was full and dropped it): go on from
                // the first segment kept.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.position = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let ended = read.is_empty();
            bytes += read.iter().map(|r| r.payload.len()).sum::<usize>();
            out.extend(read.into_iter().filter(|r| r.seq >= self.from));
            if ended && !self.next_segment()? {
                break;
            }
        }
        Ok(out)
    }

    /// Finds the segment holding `from` (or the first kept after it) and the record in it.
    fn seek(&mut self) -> std::io::Result<bool> {
        let found = segments(&self.dir)?;
        let Some((first, path)) = found
            .iter()
            .rev()
            .find(|(first, _)| *first <= self.from)
            .or_else(|| found.first())
            .cloned()
        else {
            return Ok(false);
        };
        let Some(previous) = header_of(&path, first)? else {
            return Ok(false);
        };
        self.position = Some(Position {
            segment: path,
            first,
            offset: HEADER_BYTES,
            previous,
            next_seq: first,
        });
        Ok(true)
    }

    /// Moves to the segment after the current one, when the writer has started it.
    fn next_segment(&mut self) -> std::io::Result<bool> {
        let Some(position) = &self.position else {
            return Ok(false);
        };
        if position.next_seq == position.first {
            return Ok(false); // nothing read from this segment yet: the next is not begun
        }
        let next = self.dir.join(crate::format::segment_name(position.next_seq));
        if !next.exists() {
            return Ok(false);
        }
        let Some(previous) = header_of(&next, position.next_seq)? else {
            return Ok(false);
        };
        if previous != position.previous {
            return Ok(false); // not chained to what was read: verify names it
        }
        let next_seq = position.next_seq;
        self.position = Some(Position {
            segment: next,
            first: next_seq,
            offset: HEADER_BYTES,
            previous,
            next_seq,
        });
        Ok(true)
    }
}

/// The previous-hash of a segment's header, if the header is whole and names `first`.
fn header_of(path: &Path, first: u64) -> std::io::Result<Option<Hash>> {
    let mut head = [0u8; HEADER_BYTES as usize];
    let mut file = File::open(path)?;
    if file.read_exact(&mut head).is_err() || &head[..4] != MAGIC {
        return Ok(None);
    }
    if u64::from_le_bytes(head[4..12].try_into().unwrap_or_default()) != first {
        return Ok(None);
    }
    Ok(head[12..44].try_into().ok())
}

/// Whole, chained records from `position` on, at most `most` and none after `limit`; the
/// position moves past them.
fn read_from(position: &mut Position, most: usize, max_bytes: usize, limit: u64) -> std::io::Result<Vec<Record>> {
    let mut file = File::open(&position.segment)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(position.offset))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < most && bytes < max_bytes && position.offset + RECORD_OVERHEAD <= len {
        let mut fixed = [0u8; 12];
        reader.read_exact(&mut fixed)?;
        let size = u32::from_le_bytes(fixed[..4].try_into().unwrap_or_default()) as usize;
        let seq = u64::from_le_bytes(fixed[4..12].try_into().unwrap_or_default());
        if fixed == [0; 12] || seq > limit {
            break; // the end of the records so far (zeros written ahead of them), or not durable yet
        }
        if size > MAX_PAYLOAD_BYTES || position.offset + RECORD_OVERHEAD + size as u64 > len {
            break; // being written (or broken): read again later
        }
        let mut body = vec![0u8; size + 32];
        reader.read_exact(&mut body)?;
        let hash: Hash = body[size..].try_into().unwrap_or([0; 32]);
        body.truncate(size);
        if seq != position.next_seq || chain(&position.previous, seq, &body) != hash {
            // Not a record being written: one that breaks the chain. Said, not skipped.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: at byte {}: record {seq} breaks the chain (record {} expected); run `tollgate audit verify`",
                    position.segment.display(),
                    position.offset,
                    position.next_seq
                ),
            ));
        }
        position.offset += RECORD_OVERHEAD + size as u64;
        position.previous = hash;
        position.next_seq += 1;
        bytes += size;
        out.push(Record {
            seq,
            payload: body,
            hash,
        });
    }
    Ok(out)
}
