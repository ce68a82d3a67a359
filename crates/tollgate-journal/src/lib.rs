//! Tollgate's decision journal (the audit trail that loses nothing): every decision replica
//! appends its decision records to segmented, hash-chained files with group commit
//! ([`Journal`]); `tollgate audit verify` checks a journal's chain ([`verify()`]) and
//! `tollgate audit export` reads its records ([`records`]).

mod format;
mod journal;
mod reader;
mod sign;
mod verify;

pub use format::{Hash, MAX_PAYLOAD_BYTES, Record, chain, segment_name, segments};
pub use journal::{
    EXPORTED_FILE, Journal, JournalError, JournalSettings, JournalStats, LOCK_FILE, OnFull, Receipt, read_exported,
    write_exported,
};
pub use reader::Reader;
pub use sign::{SigningKey, generate as generate_signing_key};
pub use verify::{Broken, Verified, verify};

/// The whole records of the journal in `dir` from sequence number `from` on, in order; at
/// most `most`. Reading stops at the first record that breaks the chain (run [`verify()`] to
/// find it) or at a torn tail.
pub fn records(dir: &std::path::Path, from: u64, most: usize) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    each_record(dir, from, |record| {
        out.push(record);
        Ok(out.len() < most)
    })?;
    Ok(out)
}

/// Hands `visit` each whole record of the journal in `dir` from sequence number `from` on, in
/// order, reading each segment once, until `visit` answers false. Reading stops at the first
/// record that breaks the chain (run [`verify()`] to find it) or at a torn tail.
pub fn each_record(
    dir: &std::path::Path,
    from: u64,
    mut visit: impl FnMut(Record) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    let found = format::segments(dir)?;
    for (index, (_, path)) in found.iter().enumerate() {
        // Skip segments that end before `from`.
        if found.get(index + 1).is_some_and(|(next, _)| *next <= from) {
            continue;
        }
        let segment = format::read_segment(path)?;
        for (_, record) in segment.records {
            if record.seq >= from && !visit(record)? {
                return Ok(());
            }
        }
        if !matches!(segment.end, format::End::Clean) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
