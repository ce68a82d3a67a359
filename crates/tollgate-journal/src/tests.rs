use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::format::{HEADER_BYTES, RECORD_OVERHEAD};

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-journal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn payload(i: u64) -> Vec<u8> {
    format!("{{\"decision\": {i}, \"verdict\": \"ALLOW\"}}").into_bytes()
}

async fn write(dir: &Path, settings: impl Fn(JournalSettings) -> JournalSettings, n: u64) -> Vec<Receipt> {
    let journal = Journal::open(settings(JournalSettings::new(dir))).expect("open");
    let mut receipts = Vec::new();
    for i in 0..n {
        receipts.push(journal.append(payload(i)).await.expect("append"));
    }
    drop(journal);
    // The writer lets go of the journal (its lock) once it sees the journal dropped.
    for _ in 0..200 {
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(LOCK_FILE))
            .expect("lock file");
        if lock.try_lock().is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    receipts
}

#[tokio::test]
async fn one_writer_per_journal_and_a_crashed_roll_continues_the_chain() {
    let dir = temp("one-writer");
    let journal = Journal::open(JournalSettings::new(&dir)).expect("open");
    let second = Journal::open(JournalSettings::new(&dir));
    assert!(
        matches!(second, Err(JournalError::Io(ref e)) if e.contains("in use")),
        "a second writer is refused"
    );
    drop(journal);
    // A roll cut short: the next segment exists, empty, after 10 records.
    let dir = temp("crashed-roll");
    write(&dir, |s| s, 10).await;
    std::fs::write(dir.join(segment_name(11)), b"").expect("an empty segment");
    let more = write(&dir, |s| s, 3).await;
    assert_eq!(more[0].seq, 11, "the chain goes on from the segment before");
    let verified = verify(&dir, None).expect("the chain holds");
    assert_eq!(verified.records, 13);
    // A segment that breaks the chain is not cut: the journal refuses to start.
    let segment = dir.join(segment_name(11));
    let mut bytes = std::fs::read(&segment).expect("read");
    let last = bytes.len() - 40;
    bytes[last] ^= 1;
    std::fs::write(&segment, bytes).expect("write");
    let refused = Journal::open(JournalSettings::new(&dir));
    assert!(
        matches!(refused, Err(JournalError::Io(ref e)) if e.contains("does not match its hash")),
        "{:?}",
        refused.err()
    );
}

/// The byte offset of record `seq` in a single-segment journal whose payloads are `payload(i)`.
fn offset_of(seq: u64) -> u64 {
    HEADER_BYTES
        + (1..seq)
            .map(|s| RECORD_OVERHEAD + payload(s - 1).len() as u64)
            .sum::<u64>()
}

fn only_segment(dir: &Path) -> PathBuf {
    let found = segments(dir).expect("segments");
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].1.clone()
}

#[tokio::test]
async fn records_come_back_in_order_with_their_chain() {
    let dir = temp("order");
    let receipts = write(&dir, |s| s, 20).await;
    assert_eq!(receipts.first().map(|r| r.seq), Some(1));
    assert_eq!(receipts.last().map(|r| r.seq), Some(20));
    let read = records(&dir, 1, 1000).expect("records");
    assert_eq!(read.len(), 20);
    assert_eq!(read[3].payload, payload(3));
    assert_eq!(
        records(&dir, 15, 3)
            .expect("records")
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![15, 16, 17]
    );
    let verified = verify(&dir, None).expect("a clean journal verifies");
    assert_eq!(verified.records, 20);
    assert_eq!(verified.head, hex::encode(receipts[19].hash));
    // Reopened, it goes on from where it was.
    let more = write(&dir, |s| s, 2).await;
    assert_eq!(more[0].seq, 21);
    assert_eq!(verify(&dir, None).expect("verifies").records, 22);
}

#[tokio::test]
async fn a_torn_tail_is_cut_never_read_as_a_record() {
    let dir = temp("torn");
    write(&dir, |s| s, 10).await;
    let segment = only_segment(&dir);
    let len = std::fs::metadata(&segment).expect("meta").len();
    // A crash in the middle of writing record 10.
    let cut = offset_of(10) + 7;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(cut))
        .expect("cut");
    assert!(cut < len);
    let verified = verify(&dir, None).expect("a torn tail is not a break");
    assert!(verified.torn_tail);
    assert_eq!(verified.records, 9);
    assert_eq!(records(&dir, 1, 100).expect("records").len(), 9);
    // Opening cuts it and appends after the last whole record.
    let more = write(&dir, |s| s, 1).await;
    assert_eq!(more[0].seq, 10);
    let verified = verify(&dir, None).expect("verifies");
    assert!(!verified.torn_tail);
    assert_eq!(verified.records, 10);
}

/// Rewrites the single segment of `dir` with `edit` applied to its bytes.
fn edit(dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let segment = only_segment(dir);
    let mut bytes = std::fs::read(&segment).expect("read");
    edit(&mut bytes);
    std::fs::write(&segment, bytes).expect("write");
}

fn record_range(seq: u64) -> std::ops::Range<usize> {
    let start = offset_of(seq) as usize;
    start..start + RECORD_OVERHEAD as usize + payload(seq - 1).len()
}

#[tokio::test]
async fn verify_finds_a_changed_removed_swapped_or_inserted_record_where_it_is() {
    // Each break is found at record 5's place; the sequence number reported is the one the
    // record found there carries.
    for (tag, expected_seq) in [("changed", 5u64), ("removed", 6), ("swapped", 6), ("inserted", 4)] {
        let dir = temp(tag);
        write(&dir, |s| s, 8).await;
        assert!(verify(&dir, None).is_ok());
        edit(&dir, |bytes| match tag {
            // One byte of record 5's payload.
            "changed" => {
                let at = offset_of(5) as usize + 12 + 3;
                bytes[at] ^= 0x01;
            }
            "removed" => {
                bytes.drain(record_range(5));
            }
            "swapped" => {
                let (five, six) = (record_range(5), record_range(6));
                let a: Vec<u8> = bytes[five.clone()].to_vec();
                let b: Vec<u8> = bytes[six.clone()].to_vec();
                let mut swapped = b;
                swapped.extend_from_slice(&a);
                bytes.splice(five.start..six.end, swapped);
            }
            "inserted" => {
                // A copy of record 4 put after it.
                let four = bytes[record_range(4)].to_vec();
                let at = record_range(5).start;
                bytes.splice(at..at, four);
            }
            _ => unreachable!(),
        });
        let broken = verify(&dir, None).expect_err(tag);
        assert_eq!(broken.seq, expected_seq, "{tag}: {broken}");
        assert_eq!(broken.offset, offset_of(5), "{tag}: {broken}");
    }
}

#[tokio::test]
async fn segments_roll_and_chain_and_a_missing_one_is_found() {
    let dir = temp("roll");
    let small = |mut s: JournalSettings| {
        s.segment_bytes = 400;
        s
    };
    write(&dir, small, 30).await;
    let found = segments(&dir).expect("segments");
    assert!(found.len() >= 3, "{found:?}");
    let verified = verify(&dir, None).expect("verifies");
    assert_eq!((verified.records, verified.segments), (30, found.len()));
    assert_eq!(records(&dir, 1, 100).expect("records").len(), 30);
    assert_eq!(records(&dir, 29, 100).expect("records").len(), 2);
    std::fs::remove_file(&found[1].1).expect("remove");
    let broken = verify(&dir, None).expect_err("a segment is missing");
    assert_eq!(broken.segment, found[2].1, "{broken}");
    assert!(broken.what.contains("removed or inserted"), "{broken}");
}

#[tokio::test]
async fn a_full_journal_refuses_or_drops_its_oldest_as_configured() {
    let dir = temp("full-refuse");
    let journal = Journal::open(JournalSettings {
        segment_bytes: 300,
        max_bytes: 900,
        on_full: OnFull::Refuse,
        ..JournalSettings::new(&dir)
    })
    .expect("open");
    let mut refused = 0;
    for i in 0..40 {
        if journal.append(payload(i)).await == Err(JournalError::Full) {
            refused += 1;
        }
    }
    assert!(refused > 0, "a full journal refuses");
    assert!(verify(&dir, None).is_ok());
    let dir = temp("full-drop");
    let journal = Journal::open(JournalSettings {
        segment_bytes: 300,
        max_bytes: 900,
        ..JournalSettings::new(&dir)
    })
    .expect("open");
    for i in 0..40 {
        journal
            .append(payload(i))
            .await
            .expect("dropping the oldest makes room");
    }
    assert!(journal.stats().dropped.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let total: u64 = segments(&dir)
        .expect("segments")
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(total <= 900, "{total} bytes on disk");
    let verified = verify(&dir, None).expect("what is left still verifies");
    assert_eq!(verified.last_seq, Some(40));
}

#[tokio::test]
async fn a_reader_follows_the_journal_as_it_grows_across_segments() {
    let dir = temp("reader");
    let journal = Journal::open(JournalSettings {
        segment_bytes: 400,
        ..JournalSettings::new(&dir)
    })
    .expect("open");
    let mut reader = Reader::new(&dir, 3);
    assert!(reader.read(100).expect("read").is_empty(), "nothing yet");
    for i in 0..10 {
        journal.append(payload(i)).await.expect("append");
    }
    let first: Vec<u64> = reader.read(4).expect("read").iter().map(|r| r.seq).collect();
    assert_eq!(first, vec![3, 4, 5, 6]);
    for i in 10..25 {
        journal.append(payload(i)).await.expect("append");
    }
    let rest: Vec<u64> = reader.read(100).expect("read").iter().map(|r| r.seq).collect();
    assert_eq!(rest, (7..=25).collect::<Vec<u64>>());
    assert!(segments(&dir).expect("segments").len() > 2, "it crossed segments");
    assert!(reader.read(100).expect("read").is_empty());
    // The segment it reads is removed (a full journal dropped it): it goes on from the first
    // segment kept.
    let mut reader = Reader::new(&dir, 1);
    assert_eq!(reader.read(1).expect("read")[0].seq, 1);
    std::fs::remove_file(&segments(&dir).expect("segments")[0].1).expect("remove");
    let next = reader.read(1).expect("read after the removal");
    assert!(next.first().is_some_and(|r| r.seq > 2), "{next:?}");
}

#[tokio::test]
async fn closed_segments_are_signed_and_checked_with_the_public_key() {
    let dir = temp("signed");
    let (seed, public) = crate::generate_signing_key().expect("key");
    let key = std::sync::Arc::new(SigningKey::from_hex(&seed).expect("seed"));
    let signed = |mut s: JournalSettings| {
        s.segment_bytes = 400;
        s.signing_key = Some(key.clone());
        s.sign_head_every = std::time::Duration::ZERO;
        s
    };
    write(&dir, signed, 30).await;
    let public = hex::decode(&public).expect("hex");
    let verified = verify(&dir, Some(&public)).expect("signed segments verify");
    assert!(verified.signed_segments >= 2, "{verified:?}");
    // Another key does not verify them.
    let (_, other) = crate::generate_signing_key().expect("key");
    let other = hex::decode(&other).expect("hex");
    let broken = verify(&dir, Some(&other)).expect_err("another key");
    assert!(broken.what.contains("does not verify"), "{broken}");
    // The newest segment removed (its records with it): the signed head names a record the
    // journal no longer holds.
    let found = segments(&dir).expect("segments");
    let newest = found.last().expect("segments").1.clone();
    let kept = std::fs::read(&newest).expect("read");
    std::fs::remove_file(&newest).expect("remove");
    let broken = verify(&dir, Some(&public)).expect_err("the end removed");
    assert!(broken.what.contains("no longer holds"), "{broken}");
    std::fs::write(&newest, kept).expect("put back");
    assert!(verify(&dir, Some(&public)).is_ok());
    // A closed segment without its signature is reported.
    let first = segments(&dir).expect("segments")[0].1.clone();
    std::fs::remove_file(crate::sign::signature_path(&first)).expect("remove");
    let broken = verify(&dir, Some(&public)).expect_err("a missing signature");
    assert!(broken.what.contains("no signature"), "{broken}");
}

#[tokio::test]
async fn a_journal_whose_directory_was_removed_refuses_records() {
    let dir = temp("removed");
    let journal = Journal::open(JournalSettings::new(&dir)).expect("open");
    journal.append(payload(0)).await.expect("append");
    std::fs::remove_dir_all(&dir).expect("remove");
    assert!(
        matches!(journal.append(payload(1)).await, Err(JournalError::Io(ref e)) if e.contains("was removed")),
        "a record written to a removed file would be lost"
    );
    assert!(journal.stats().failing.load(std::sync::atomic::Ordering::Relaxed));
}

/// Retention: sealed segments all of whose records are exported and older than `retain` are
/// removed; a segment holding a record not yet exported stays, with every one after it.
#[tokio::test]
async fn exported_segments_past_retention_are_removed_and_the_rest_kept() {
    let dir = temp("retention");
    let small = |s: JournalSettings| JournalSettings {
        segment_bytes: 4096,
        retain: std::time::Duration::ZERO,
        ..s
    };
    write(&dir, small, 300).await;
    let segments = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(crate::format::SEGMENT_SUFFIX))
            .collect();
        names.sort();
        names
    };
    let before = segments(&dir);
    assert!(before.len() >= 4, "several segments: {before:?}");
    write_exported(&dir, 150).expect("exported position");
    // The next record applies retention (the first append after opening does at once).
    write(&dir, small, 1).await;
    let after = segments(&dir);
    assert!(
        !after.contains(&segment_name(1)),
        "the first segment is gone: {after:?}"
    );
    assert!(after.len() < before.len(), "{before:?} → {after:?}");
    // What is left starts at or before record 151: nothing unexported was removed.
    let first_kept: u64 = after[0]
        .trim_end_matches(crate::format::SEGMENT_SUFFIX)
        .trim_start_matches('0')
        .parse()
        .expect("a segment's first sequence number");
    assert!(first_kept <= 151, "{after:?}");
    let records = records(&dir, first_kept, 1000).expect("records");
    assert_eq!(records.last().map(|r| r.seq), Some(301));
}

/// Records are written over zeros written ahead of them (an append leaves the file's size
/// alone, so its fsync writes no inode). A crash leaves the zeros in place: they mark the end
/// of the records, a reader stops there, and the journal reopens after the last record. Bytes
/// after the zeros (a write cut short) are a torn tail, cut on opening.
#[tokio::test]
async fn records_written_over_zeros_read_back_and_survive_a_crash() {
    let dir = temp("zeroed");
    let journal = Journal::open(JournalSettings::new(&dir)).expect("open");
    let mut receipts = Vec::new();
    for i in 0..20 {
        receipts.push(journal.append(payload(i)).await.expect("append"));
    }
    let segment = only_segment(&dir);
    let data_end = offset_of(21);
    let on_disk = std::fs::metadata(&segment).expect("meta").len();
    assert!(
        on_disk > data_end,
        "zeros ahead of the records: {on_disk} bytes for {data_end}"
    );
    let bytes = std::fs::read(&segment).expect("read");
    assert!(bytes[data_end as usize..].iter().all(|b| *b == 0));
    // Read while the writer has it open: the records, then nothing.
    let verified = verify(&dir, None).expect("verifies");
    assert_eq!((verified.records, verified.torn_tail), (20, false));
    let mut reader = Reader::new(&dir, 1);
    assert_eq!(reader.read(100).expect("read").len(), 20);
    assert!(reader.read(100).expect("read").is_empty());
    // A reader following the writer reads only what it says is durable.
    let stats = Arc::new(JournalStats::default());
    stats.last_seq.store(5, Ordering::Relaxed);
    let mut following = Reader::following(&dir, 1, stats.clone());
    assert_eq!(following.read(100).expect("read").len(), 5);
    stats.last_seq.store(20, Ordering::Relaxed);
    assert_eq!(following.read(100).expect("read").len(), 15);

    // The disk as a crash leaves it (the writer still running): copied elsewhere, reopened.
    let crashed = temp("zeroed-crash");
    std::fs::create_dir_all(&crashed).expect("dir");
    std::fs::copy(&segment, crashed.join(segment_name(1))).expect("copy");
    let more = write(&crashed, |s| s, 2).await;
    assert_eq!(more[0].seq, 21, "it goes on after the last record");
    assert_eq!(verify(&crashed, None).expect("verifies").records, 22);

    // Bytes after the zeros: a write cut short, not records.
    let torn = temp("zeroed-torn");
    std::fs::create_dir_all(&torn).expect("dir");
    let mut cut = bytes.clone();
    let at = data_end as usize + 100;
    cut[at..at + 4].copy_from_slice(b"\x07\x00\x00\x00");
    std::fs::write(torn.join(segment_name(1)), &cut).expect("write");
    let verified = verify(&torn, None).expect("a torn tail is not a break");
    assert_eq!((verified.records, verified.torn_tail), (20, true));
    let more = write(&torn, |s| s, 1).await;
    assert_eq!(more[0].seq, 21);
    let verified = verify(&torn, None).expect("verifies");
    assert_eq!((verified.records, verified.torn_tail), (21, false));
    // What was cut is kept aside for an auditor, not destroyed.
    let kept: Vec<_> = std::fs::read_dir(&torn)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tgj.torn-"))
        .collect();
    assert_eq!(kept.len(), 1, "the cut bytes are kept beside the segment");

    // A crash that kept a record's first page and lost the rest (zeros, as written ahead):
    // the record ends in zeros and only zeros follow. A torn tail, not a changed record.
    let half = temp("zeroed-half");
    std::fs::create_dir_all(&half).expect("dir");
    let mut lost = bytes.clone();
    let last = offset_of(20) as usize;
    for b in &mut lost[last + 20..data_end as usize] {
        *b = 0;
    }
    std::fs::write(half.join(segment_name(1)), &lost).expect("write");
    let verified = verify(&half, None).expect("a half-written last record is not a break");
    assert_eq!((verified.records, verified.torn_tail), (19, true));
    let more = write(&half, |s| s, 1).await;
    assert_eq!(more[0].seq, 20, "record 20 was never whole: it is written again");
    drop(journal);
    assert_eq!(receipts.len(), 20);
}

/// A clean stop: `close` writes what was queued (records nobody waited for included), cuts
/// the zeros ahead so the segment ends at its last record, and refuses records after it.
#[tokio::test]
async fn close_writes_what_was_queued_and_ends_the_segment_at_its_last_record() {
    let dir = temp("close");
    let journal = Journal::open(JournalSettings {
        sync_ms: 1000,
        ..JournalSettings::new(&dir)
    })
    .expect("open");
    for i in 0..5 {
        journal.append_later(payload(i));
    }
    journal.close(std::time::Duration::from_secs(5)).await.expect("closed");
    let segment = segments(&dir).expect("segments").pop().expect("a segment").1;
    let expected: u64 = HEADER_BYTES + (0..5).map(|i| RECORD_OVERHEAD + payload(i).len() as u64).sum::<u64>();
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), expected);
    assert_eq!(
        journal.append(payload(9)).await,
        Err(JournalError::Stopped),
        "nothing is taken after a close"
    );
    let mut seen = 0;
    crate::each_record(&dir, 1, |_| {
        seen += 1;
        Ok(true)
    })
    .expect("read");
    assert_eq!(seen, 5);
    assert!(crate::verify(&dir, None).is_ok());
}
