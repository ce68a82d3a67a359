//! `tollgate audit verify`: walks a journal's chain from its first segment to its last and
//! reports the first place it breaks.

use std::path::{Path, PathBuf};

use crate::format::{End, Hash, Record, read_segment, segments};

/// A journal that checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The chain's head: the last record's hash (hex).
    pub head: String,
    /// The last segment ends inside a record (a crash while writing; the journal cuts it
    /// when it is next opened). Everything before it is whole.
    pub torn_tail: bool,
    /// Closed segments whose signature was checked (with a key).
    pub signed_segments: usize,
}

/// Where a journal's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: at byte {offset}: {what}", segment.display())]
pub struct Broken {
    pub segment: PathBuf,
    pub offset: u64,
    /// The sequence number the record there carries (or the one expected).
    pub seq: u64,
    pub what: String,
}

/// Checks every record of the journal in `dir`; the first break, if any. With `key` (an
/// Ed25519 public key), every closed segment must also carry a valid signature of its last
/// record.
pub fn verify(dir: &Path, key: Option<&[u8]>) -> Result<Verified, Broken> {
    let found = segments(dir).map_err(|e| Broken {
        segment: dir.to_owned(),
        offset: 0,
        seq: 0,
        what: format!("cannot read the directory: {e}"),
    })?;
    let mut verified = Verified {
        segments: found.len(),
        records: 0,
        first_seq: None,
        last_seq: None,
        head: hex::encode([0u8; 32]),
        torn_tail: false,
        signed_segments: 0,
    };
    let mut last: Option<(u64, Hash)> = None;
    let count = found.len();
    // With a key, the signed head names a record the journal must still hold, unchanged.
    let no_head = !dir.join(crate::sign::HEAD_FILE).exists();
    let head = match key {
        Some(_) if no_head => None,
        Some(public) => Some(crate::sign::signed_head(dir, public).map_err(|what| Broken {
            segment: dir.join(crate::sign::HEAD_FILE),
            offset: 0,
            seq: 0,
            what,
        })?),
        None => None,
    };
    let mut head_found = false;
    for (index, (named, path)) in found.into_iter().enumerate() {
        let segment = read_segment(&path).map_err(|e| Broken {
            segment: path.clone(),
            offset: 0,
            seq: named,
            what: format!("cannot read: {e}"),
        })?;
        let broken = |offset: u64, seq: u64, what: String| Broken {
            segment: path.clone(),
            offset,
            seq,
            what,
        };
        if segment.first_seq != named {
            return Err(broken(
                0,
                segment.first_seq,
                format!(
                    "the segment named for record {named} starts with record {}",
                    segment.first_seq
                ),
            ));
        }
        // Segments chain too: each starts after the last record of the one before.
        if let Some((last_seq, last_hash)) = last {
            if Some(segment.first_seq) != last_seq.checked_add(1) {
                return Err(broken(
                    0,
                    segment.first_seq,
                    format!(
                        "starts with record {} after record {last_seq} (records removed or inserted between segments)",
                        segment.first_seq
                    ),
                ));
            }
            if segment.previous != last_hash {
                return Err(broken(
                    0,
                    segment.first_seq,
                    "its header's previous hash is not the last hash of the segment before".into(),
                ));
            }
        }
        match &segment.end {
            End::Clean => {}
            End::Torn { offset } if index + 1 == count => {
                verified.torn_tail = true;
                let _ = offset;
            }
            End::Torn { offset } => {
                return Err(broken(
                    *offset,
                    0,
                    "a record cut short in a segment that is not the last".into(),
                ));
            }
            End::Broken { offset, seq, what } => return Err(broken(*offset, *seq, what.clone())),
        }
        for (_, Record { seq, hash, .. }) in &segment.records {
            if let Some((head_seq, head_hash)) = head
                && *seq == head_seq
            {
                if *hash != head_hash {
                    return Err(broken(0, *seq, "record named by the signed head was changed".into()));
                }
                head_found = true;
            }
            verified.records += 1;
            verified.first_seq.get_or_insert(*seq);
            verified.last_seq = Some(*seq);
            last = Some((*seq, *hash));
        }
        if let (Some(public), Some((last_seq, last_hash))) = (key, last)
            && index + 1 < count
        {
            crate::sign::check_segment(&path, last_seq, &last_hash, public)
                .map_err(|what| broken(0, last_seq, what))?;
            verified.signed_segments += 1;
        }
        if segment.records.is_empty() && last.is_none() {
            // An empty first segment: the chain starts from its header.
            last = segment.first_seq.checked_sub(1).map(|s| (s, segment.previous));
        }
    }
    if key.is_some() && no_head && verified.records > 0 {
        return Err(Broken {
            segment: dir.join(crate::sign::HEAD_FILE),
            offset: 0,
            seq: 0,
            what: "no signed head (head.sig) for a signed journal with records".into(),
        });
    }
    if let Some((head_seq, _)) = head
        && !head_found
    {
        return Err(Broken {
            segment: dir.join(crate::sign::HEAD_FILE),
            offset: 0,
            seq: head_seq,
            what: format!(
                "the signed head names record {head_seq}, which the journal no longer holds (records removed from its end?)"
            ),
        });
    }
    if let Some((_, hash)) = last {
        verified.head = hex::encode(hash);
    }
    Ok(verified)
}
