//! The journal's files. A journal is a directory of segments named by the sequence number of
//! their first record (`00000000000000000001.tgj`), read in that order.
//!
//! A segment starts with a header: the magic `TGJ1`, the first record's sequence number
//! (u64, little-endian) and the hash of the record before it (32 bytes; zeros before the
//! journal's first record). Then records, each:
//!
//! ```text
//! length  u32 LE   of the payload
//! seq     u64 LE   one more than the record before
//! payload length bytes (a decision record)
//! hash    32 bytes SHA-256(previous hash ‖ seq LE ‖ payload)
//! ```
//!
//! The segment being written holds zeros after its last record (written ahead, so that an
//! append does not change the file's size): a record header of zeros (sequence number 0,
//! which no record has) marks the end of the records. A closed segment ends at its last
//! record.
//!
//! Every record's hash covers the one before it, so the records form one chain across
//! segments: a changed byte, a removed, reordered or inserted record breaks it at that
//! position, and a record cut short by a crash (a torn tail) is recognised as incomplete.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A segment's first bytes.
pub const MAGIC: &[u8; 4] = b"TGJ1";
/// Bytes of a segment's header.
pub const HEADER_BYTES: u64 = 4 + 8 + 32;
/// Bytes a record takes besides its payload.
pub const RECORD_OVERHEAD: u64 = 4 + 8 + 32;
/// Longest payload a record may carry.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Segment files end with this.
pub const SEGMENT_SUFFIX: &str = ".tgj";

/// A record's chain hash.
pub type Hash = [u8; 32];

/// The hash of the record `seq` carrying `payload`, after the record whose hash is `previous`.
pub fn chain(previous: &Hash, seq: u64, payload: &[u8]) -> Hash {
    Sha256::new()
        .chain_update(previous)
        .chain_update(seq.to_le_bytes())
        .chain_update(payload)
        .finalize()
        .into()
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
    pub hash: Hash,
}

/// A record's bytes as written.
pub fn encode(seq: u64, payload: &[u8], hash: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + RECORD_OVERHEAD as usize);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(hash);
    out
}

/// A segment header's bytes.
pub fn header(first_seq: u64, previous: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(previous);
    out
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The segments of `dir`, in order, with their first sequence numbers.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(first) = stem.parse::<u64>()
        {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Where reading a segment stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// At the end of the file, after a whole record (or the header).
    Clean,
    /// At `offset` the file ends inside a record: a write cut short (a torn tail).
    Torn { offset: u64 },
    /// At `offset` a record breaks the chain or cannot be read: `what` says how.
    Broken { offset: u64, seq: u64, what: String },
}

/// A segment read back: its header, its whole records up to where reading stopped, and why
/// it stopped.
#[derive(Debug)]
pub struct Segment {
    pub first_seq: u64,
    pub previous: Hash,
    pub records: Vec<(u64, Record)>,
    pub end: End,
    /// Bytes up to the end of the last whole, valid record.
    pub valid_bytes: u64,
}

/// Reads the segment at `path`, checking every record against the chain.
pub fn read_segment(path: &Path) -> std::io::Result<Segment> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut head = [0u8; HEADER_BYTES as usize];
    if let Err(e) = reader.read_exact(&mut head) {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Ok(Segment {
                first_seq: 0,
                previous: [0; 32],
                records: Vec::new(),
                end: End::Torn { offset: 0 },
                valid_bytes: 0,
            });
        }
        return Err(e);
    }
    if &head[..4] != MAGIC {
        return Ok(Segment {
            first_seq: 0,
            previous: [0; 32],
            records: Vec::new(),
            end: End::Broken {
                offset: 0,
                seq: 0,
                what: "not a journal segment (no TGJ1 header)".into(),
            },
            valid_bytes: 0,
        });
    }
    let first_seq = u64::from_le_bytes(head[4..12].try_into().unwrap_or_default());
    let mut previous: Hash = head[12..44].try_into().unwrap_or([0; 32]);
    let start_previous = previous;
    let mut offset = HEADER_BYTES;
    let mut expected = first_seq;
    let mut records = Vec::new();
    let end = loop {
        let mut fixed = [0u8; 12];
        match read_full(&mut reader, &mut fixed)? {
            0 => break End::Clean,
            n if n < fixed.len() => break End::Torn { offset },
            _ => {}
        }
        if fixed == [0; 12] {
            // The end of the records, if only zeros follow; anything else there is a write
            // cut short (the records after a crash's gap were never acknowledged).
            break if zeros_to_the_end(&mut reader)? {
                End::Clean
            } else {
                End::Torn { offset }
            };
        }
        let len = u32::from_le_bytes(fixed[..4].try_into().unwrap_or_default()) as usize;
        let seq = u64::from_le_bytes(fixed[4..12].try_into().unwrap_or_default());
        if len > MAX_PAYLOAD_BYTES {
            break End::Broken {
                offset,
                seq,
                what: format!("a record length of {len} bytes (at most {MAX_PAYLOAD_BYTES})"),
            };
        }
        let mut body = vec![0u8; len + 32];
        if read_full(&mut reader, &mut body)? < body.len() {
            break End::Torn { offset };
        }
        let hash: Hash = body[len..].try_into().unwrap_or([0; 32]);
        body.truncate(len);
        if seq != expected {
            break End::Broken {
                offset,
                seq,
                what: format!("record {seq} where record {expected} belongs (removed, reordered or inserted)"),
            };
        }
        if chain(&previous, seq, &body) != hash {
            // Written over zeros, a record whose write a crash cut short can keep its first
            // page and lose the rest: it then ends in zeros, and only zeros follow it. That
            // is a torn tail (never acknowledged), not a changed record.
            // (A real hash ends in 8 zero bytes once in 2^64.)
            if hash[24..].iter().all(|b| *b == 0) && zeros_to_the_end(&mut reader)? {
                break End::Torn { offset };
            }
            break End::Broken {
                offset,
                seq,
                what: format!("record {seq} does not match its hash (changed, or not chained to the record before)"),
            };
        }
        records.push((
            offset,
            Record {
                seq,
                payload: body,
                hash,
            },
        ));
        offset += RECORD_OVERHEAD + len as u64;
        previous = hash;
        let Some(next) = expected.checked_add(1) else {
            break End::Broken {
                offset,
                seq,
                what: "the last sequence number there can be".into(),
            };
        };
        expected = next;
    };
    Ok(Segment {
        first_seq,
        previous: start_previous,
        records,
        end,
        valid_bytes: offset,
    })
}

/// Whether nothing but zeros is left to read.
fn zeros_to_the_end(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|b| *b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
