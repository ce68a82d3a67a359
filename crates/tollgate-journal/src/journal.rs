//! The journal a decision replica writes: records appended to the current segment by one
//! writer task, made durable together (group commit: one `fsync` for every record that
//! arrived within `sync_ms`, or as soon as `sync_records` are waiting), segments rolled at
//! `segment_bytes`, the whole bounded by `max_bytes`.
//!
//! Opening a journal reads its last segment back: a record cut short by a crash (a torn tail)
//! is cut off, never read as a record; a record that breaks the chain there is cut off too,
//! with a warning (the journal goes on from the last good record).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::format::{
    End, HEADER_BYTES, Hash, MAX_PAYLOAD_BYTES, RECORD_OVERHEAD, chain, encode, header, read_segment, segment_name,
    segments,
};

/// What the journal does when appending would pass `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Remove the oldest segments, exported or not (counted as dropped).
    #[default]
    DropOldestUnexported,
    /// Refuse the record: the caller refuses what it records (`audit journal full`).
    Refuse,
}

/// How a journal is kept.
#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub dir: PathBuf,
    /// Longest a record waits for its `fsync`.
    pub sync_ms: u64,
    /// Records that make an `fsync` at once.
    pub sync_records: usize,
    /// Bytes of segments kept at most.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Segments whose records are all exported are removed once older than this.
    pub retain: Duration,
    pub on_full: OnFull,
    /// Signs each closed segment's last record (`<segment>.sig`), and the journal's head
    /// (`head.sig`) at most every `sign_head_every`.
    pub signing_key: Option<Arc<crate::sign::SigningKey>>,
    pub sign_head_every: Duration,
}

impl JournalSettings {
    pub fn new(dir: impl Into<PathBuf>) -> JournalSettings {
        JournalSettings {
            dir: dir.into(),
            sync_ms: 5,
            sync_records: 256,
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            retain: Duration::from_secs(7 * 24 * 3600),
            on_full: OnFull::default(),
            signing_key: None,
            sign_head_every: Duration::from_secs(1),
        }
    }
}

/// Why a record is not in the journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("audit journal full (journal_max_bytes)")]
    Full,
    #[error("audit journal cannot be written: {0}")]
    Io(String),
    #[error("audit record of {0} bytes is larger than a journal record may be")]
    TooLarge(usize),
    #[error("the audit journal has stopped")]
    Stopped,
}

/// A record made durable: its sequence number and chain hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: Hash,
}

/// Counters the journal keeps (for metrics and readiness).
#[derive(Debug, Default)]
pub struct JournalStats {
    pub bytes: AtomicU64,
    pub appended: AtomicU64,
    pub dropped: AtomicU64,
    pub refused: AtomicU64,
    pub failures: AtomicU64,
    pub syncs: AtomicU64,
    /// The last durable record's sequence number (written whole and synced): a
    /// [`crate::Reader`] following the journal reads up to it.
    pub last_seq: AtomicU64,
    /// The last batch could not be written, or a record did not fit: until a batch is
    /// written whole again.
    pub failing: std::sync::atomic::AtomicBool,
}

struct Append {
    payload: Vec<u8>,
    done: Option<oneshot::Sender<Result<Receipt, JournalError>>>,
    /// Not a record: asks the writer whether it could take records again.
    probe: bool,
    /// Not a record: the writer writes what is queued, ends the segment at its last record
    /// and stops (`done` is told once it has).
    close: bool,
}

/// A journal open for appending.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Append>,
    stats: Arc<JournalStats>,
    /// Wakes the writer while it gathers a batch, once `sync_records` are queued (records
    /// nobody waits for do not wake it one by one).
    full: Arc<tokio::sync::Notify>,
    sync_records: usize,
}

/// Records queued for the writer at most.
const QUEUE: usize = 65_536;

impl Journal {
    /// Opens (or creates) the journal in `settings.dir`, cutting a torn tail, and starts its
    /// writer.
    pub fn open(settings: JournalSettings) -> Result<Journal, JournalError> {
        let stats = Arc::new(JournalStats::default());
        let full = Arc::new(tokio::sync::Notify::new());
        let sync_records = settings.sync_records.max(1);
        let writer = Writer::open(settings, stats.clone()).map_err(|e| JournalError::Io(e.to_string()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        // The writer has a thread of its own (its disk work blocks), with a single-threaded
        // runtime for its queue and the group commit's timer: no hand-off to a blocking pool
        // and back for every batch. It ends when the last `Journal` is dropped.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| JournalError::Io(format!("cannot start the journal's writer: {e}")))?;
        std::thread::Builder::new()
            .name("tollgate-journal".into())
            .spawn({
                let full = full.clone();
                move || runtime.block_on(writer.run(rx, full))
            })
            .map_err(|e| JournalError::Io(format!("cannot start the journal's writer: {e}")))?;
        Ok(Journal {
            tx,
            stats,
            full,
            sync_records,
        })
    }

    /// Appends `payload`; the receipt once it is durable (its batch `fsync`ed). Dropping the
    /// future does not withdraw the record.
    pub async fn append(&self, payload: Vec<u8>) -> Result<Receipt, JournalError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(JournalError::TooLarge(payload.len()));
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Append {
                payload,
                done: Some(done),
                probe: false,
                close: false,
            })
            .await
            .map_err(|_| JournalError::Stopped)?;
        // Someone waits for this one: the writer stops gathering.
        self.full.notify_one();
        answer.await.unwrap_or(Err(JournalError::Stopped))
    }

    /// Appends `payload` without waiting for it (when the queue is full the record waits for
    /// room in a task of its own).
    pub fn append_later(&self, payload: Vec<u8>) {
        if payload.len() > MAX_PAYLOAD_BYTES {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let append = Append {
            payload,
            done: None,
            probe: false,
            close: false,
        };
        match self.tx.try_send(append) {
            Ok(()) => {
                if self.tx.max_capacity() - self.tx.capacity() >= self.sync_records {
                    self.full.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Full(append)) => {
                self.full.notify_one();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(append).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// While the journal refuses records (`stats().failing`), asks it to check whether it
    /// could take them again (room came back, the segment syncs), so that readiness recovers
    /// without a record to try.
    pub fn probe(&self) {
        let _ = self.tx.try_send(Append {
            payload: Vec::new(),
            done: None,
            probe: true,
            close: false,
        });
    }

    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.stats
    }

    /// Writes and syncs every record queued before it, ends the open segment at its last
    /// record (no zeros ahead), and stops the writer: for a clean stop. Appends after it are
    /// refused (`Stopped`). Waits at most `wait`.
    pub async fn close(&self, wait: Duration) -> Result<(), JournalError> {
        let (done, answer) = oneshot::channel();
        let close = Append {
            payload: Vec::new(),
            done: Some(done),
            probe: false,
            close: true,
        };
        tokio::time::timeout(wait, async {
            self.tx.send(close).await.map_err(|_| JournalError::Stopped)?;
            self.full.notify_one();
            answer.await.map_err(|_| JournalError::Stopped)?.map(|_| ())
        })
        .await
        .map_err(|_| JournalError::Io(format!("the journal's writer did not finish within {wait:?}")))?
    }
}

/// The writer's state: the open segment and the chain's head.
struct Writer {
    settings: JournalSettings,
    stats: Arc<JournalStats>,
    file: File,
    /// Bytes of the open segment.
    size: u64,
    /// The open segment's first sequence number.
    open_first: u64,
    next_seq: u64,
    head: Hash,
    /// Sealed segments: (first seq, path, bytes, last seq), oldest first.
    sealed: Vec<(u64, PathBuf, u64, u64)>,
    /// Held (locked) while the writer lives.
    _lock: File,
    /// When the head was last signed.
    head_signed: Option<std::time::Instant>,
    /// When retention was last applied (it reads the export position, a file).
    expired_checked: Option<std::time::Instant>,
    /// The open segment's length on disk: its records, then zeros written ahead of them.
    zeroed: u64,
}

/// Zeros written ahead of the records at a time. A record written over zeros that are
/// already in the file leaves the file's size as it is, so its `fdatasync` writes only the
/// data, not the inode as well: on the disks measured (BENCHMARKS) that halves the time an
/// `fsync` takes. The zeros cost one size change per MiB of records instead of one per group.
const ZERO_AHEAD: u64 = 1 << 20;
/// The zero record header after the last record (a real record's sequence number is never 0):
/// where the records end in a segment still being written.
const END_MARKER: u64 = 12;

impl Writer {
    fn open(settings: JournalSettings, stats: Arc<JournalStats>) -> std::io::Result<Writer> {
        std::fs::create_dir_all(&settings.dir)?;
        // One writer per journal: a second process on the same directory would write over
        // the first one's records.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(settings.dir.join(LOCK_FILE))?;
        if lock.try_lock().is_err() {
            return Err(std::io::Error::other(format!(
                "{} is in use by another process (one journal directory per decision replica)",
                settings.dir.display()
            )));
        }
        let found = segments(&settings.dir)?;
        let mut sealed = Vec::new();
        for (first, path) in &found[..found.len().saturating_sub(1)] {
            let bytes = std::fs::metadata(path)?.len();
            sealed.push((*first, path.clone(), bytes, 0));
        }
        // Each sealed segment's last record is the one before the next segment's first.
        for (segment, (next_first, _)) in sealed.iter_mut().zip(found.iter().skip(1)) {
            segment.3 = next_first.saturating_sub(1);
        }
        let open_first = found.last().map_or(1, |(first, _)| (*first).max(1));
        let refuse = |path: &Path, what: String| {
            std::io::Error::other(format!(
                "{}: {what}; run `tollgate audit verify` on the journal, and move the segment away (keeping it for the \
                 auditors) to start again after it",
                path.display()
            ))
        };
        let (file, size, next_seq, head) = match found.last() {
            Some((named, path)) => {
                let segment = read_segment(path)?;
                match &segment.end {
                    End::Clean => {}
                    // A write cut short by a crash: the records before it are whole.
                    End::Torn { offset } if *offset >= HEADER_BYTES => tracing::warn!(
                        segment = %path.display(),
                        "the journal's last segment ends inside a record (a write cut short); cutting it after byte {}",
                        segment.valid_bytes
                    ),
                    End::Torn { .. } => {}
                    // A record that breaks the chain is evidence, not a tail to cut.
                    End::Broken { offset, what, .. } => {
                        return Err(refuse(path, format!("at byte {offset}: {what}")));
                    }
                }
                let mut file = OpenOptions::new().read(true).write(true).open(path)?;
                if segment.valid_bytes < HEADER_BYTES {
                    // A roll cut short before its header was written: the segment continues
                    // the one before, as its name says.
                    let previous = match found.len().checked_sub(2).map(|i| &found[i]) {
                        Some((_, before)) => {
                            let before = read_segment(before)?;
                            if !matches!(before.end, End::Clean) {
                                return Err(refuse(path, "the segment before it does not end cleanly".into()));
                            }
                            match before.records.last() {
                                Some((_, r)) if r.seq.checked_add(1) == Some(*named) => r.hash,
                                _ => return Err(refuse(path, "it does not follow the segment before it".into())),
                            }
                        }
                        None if *named == 1 => [0; 32],
                        None => return Err(refuse(path, "an empty first segment that is not record 1".into())),
                    };
                    file.set_len(0)?;
                    file.write_all(&header(*named, &previous))?;
                    file.sync_all()?;
                    (file, HEADER_BYTES, *named, previous)
                } else {
                    if segment.first_seq != *named {
                        return Err(refuse(
                            path,
                            format!(
                                "it is named for record {named} but starts with record {}",
                                segment.first_seq
                            ),
                        ));
                    }
                    keep_torn_tail(path, segment.valid_bytes)?;
                    file.set_len(segment.valid_bytes)?;
                    file.sync_all()?;
                    let (next, head) = match segment.records.last() {
                        Some((_, r)) => (r.seq.saturating_add(1), r.hash),
                        None => (segment.first_seq, segment.previous),
                    };
                    (file, segment.valid_bytes, next, head)
                }
            }
            None => {
                let path = settings.dir.join(segment_name(1));
                let mut file = OpenOptions::new().create_new(true).write(true).open(&path)?;
                file.write_all(&header(1, &[0; 32]))?;
                file.sync_all()?;
                sync_dir(&settings.dir)?;
                (file, HEADER_BYTES, 1, [0; 32])
            }
        };
        // A closed segment left unsigned (a crash between a roll and its signature) is signed
        // now, from its own last record.
        if let Some(key) = &settings.signing_key {
            for (_, path) in &found[..found.len().saturating_sub(1)] {
                if crate::sign::signature_path(path).exists() {
                    continue;
                }
                let segment = read_segment(path)?;
                if let (End::Clean, Some((_, last))) = (&segment.end, segment.records.last()) {
                    tracing::warn!(segment = %path.display(), "signing a closed journal segment that had no signature");
                    key.sign_segment(path, last.seq, &last.hash)?;
                }
            }
        }
        // An export position past the journal's end belongs to a journal that is gone (its
        // segments archived): this one's records are all still to be exported.
        if read_exported(&settings.dir) > next_seq.saturating_sub(1) {
            write_exported(&settings.dir, next_seq.saturating_sub(1))?;
        }
        let writer = Writer {
            settings,
            stats,
            file,
            size,
            open_first,
            next_seq,
            head,
            sealed,
            _lock: lock,
            head_signed: None,
            expired_checked: None,
            zeroed: size,
        };
        writer.stats.bytes.store(writer.total_bytes(), Ordering::Relaxed);
        writer.stats.last_seq.store(writer.next_seq - 1, Ordering::Release);
        Ok(writer)
    }

    fn total_bytes(&self) -> u64 {
        self.size + self.sealed.iter().map(|s| s.2).sum::<u64>()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Append>, full: Arc<tokio::sync::Notify>) {
        let wait = Duration::from_millis(self.settings.sync_ms);
        let most = self.settings.sync_records.max(1);
        while let Some(first) = rx.recv().await {
            // Group commit: everything already queued goes in this batch. A decision that waits
            // for its record (required) is written at once, with whatever came meanwhile (more
            // arrive while the fsync runs, for the next batch); records nobody waits for gather
            // for up to sync_ms, so that one fsync covers many.
            let mut batch = vec![first];
            while batch.len() < most {
                match rx.try_recv() {
                    Ok(append) => batch.push(append),
                    Err(_) => break,
                }
            }
            if batch.len() < most && !batch.iter().any(|a| a.done.is_some()) {
                // Sleeps through the window instead of taking records one wake-up at a time
                // (a wake-up of this thread per decision cost more than the write); woken
                // early when sync_records are queued.
                let deadline = tokio::time::Instant::now() + wait;
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = full.notified() => {}
                }
                while batch.len() < most {
                    match rx.try_recv() {
                        Ok(append) => batch.push(append),
                        Err(_) => break,
                    }
                }
            }
            let probed = batch.iter().any(|a| a.probe);
            batch.retain(|a| !a.probe);
            // A close ends the batch: what came after it is refused below.
            let closing = batch.iter().position(|a| a.close);
            let mut after = Vec::new();
            let mut closer = None;
            if let Some(at) = closing {
                after = batch.split_off(at + 1);
                closer = batch.pop();
            }
            // On the writer's own thread: blocking here holds up nothing else.
            let results = if batch.is_empty() {
                Vec::new()
            } else {
                self.write_batch(&batch)
            };
            if probed {
                self.probe();
            }
            for (append, result) in batch.into_iter().zip(results) {
                if let Some(done) = append.done {
                    let _ = done.send(result);
                }
            }
            if let Some(closer) = closer {
                let ended = self.end_segment();
                for refused in after {
                    if let Some(done) = refused.done {
                        let _ = done.send(Err(JournalError::Stopped));
                    }
                }
                if let Some(done) = closer.done {
                    let _ = done.send(ended.map(|()| Receipt {
                        seq: self.next_seq.saturating_sub(1),
                        hash: self.head,
                    }));
                }
                rx.close();
                while let Ok(refused) = rx.try_recv() {
                    if let Some(done) = refused.done {
                        let _ = done.send(Err(JournalError::Stopped));
                    }
                }
                return;
            }
        }
        // Closed: the segment ends at its last record (after a crash the zeros ahead stay,
        // and mark the end just as well).
        let _ = self.end_segment();
    }

    /// Cuts the zeros ahead of the open segment's records, so that it ends at its last one.
    fn end_segment(&mut self) -> Result<(), JournalError> {
        if self.zeroed > self.size && self.linked().is_ok() {
            self.file
                .set_len(self.size)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| JournalError::Io(e.to_string()))?;
            self.zeroed = self.size;
        }
        Ok(())
    }

    /// Writes and syncs one batch; each record's outcome. Records are made durable segment
    /// by segment: those written into a segment before a roll are synced with it; a failure
    /// cuts the open segment back to its last durable record and fails only the records not
    /// yet durable.
    fn write_batch(&mut self, batch: &[Append]) -> Vec<Result<Receipt, JournalError>> {
        let mut results: Vec<Result<Receipt, JournalError>> = Vec::with_capacity(batch.len());
        let mut bytes = Vec::new();
        // Where the bytes not yet durable start: their first result, and the state before them.
        let mut pending_from = 0;
        let mut before = (self.next_seq, self.head, self.size);
        let mut failed = false;
        for append in batch {
            let needed = RECORD_OVERHEAD + append.payload.len() as u64;
            if self.size + needed > self.settings.segment_bytes && self.size > HEADER_BYTES {
                let flushed = self.flush(&bytes, before, &mut results[pending_from..]);
                bytes.clear();
                pending_from = results.len();
                before = (self.next_seq, self.head, self.size);
                if !flushed {
                    failed = true;
                }
                if flushed && let Err(e) = self.roll() {
                    tracing::error!("the audit journal cannot start its next segment: {e}");
                    failed = true;
                }
                if self.size + needed > self.settings.segment_bytes && self.size > HEADER_BYTES {
                    // Still in the full segment: the roll failed.
                    results.push(Err(JournalError::Io("cannot start the next journal segment".into())));
                    pending_from = results.len();
                    continue;
                }
                before = (self.next_seq, self.head, self.size);
            }
            if let Err(e) = self.make_room(needed) {
                results.push(Err(e));
                failed = true;
                continue;
            }
            let seq = self.next_seq;
            let hash = chain(&self.head, seq, &append.payload);
            bytes.extend_from_slice(&encode(seq, &append.payload, &hash));
            self.size += needed;
            self.next_seq += 1;
            self.head = hash;
            results.push(Ok(Receipt { seq, hash }));
        }
        if !self.flush(&bytes, before, &mut results[pending_from..]) {
            failed = true;
        }
        if failed {
            self.stats.failing.store(true, Ordering::Relaxed);
        } else {
            self.stats.failing.store(false, Ordering::Relaxed);
        }
        let appended = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.stats.appended.fetch_add(appended, Ordering::Relaxed);
        // The head is signed at most a second apart: the open segment and the journal's end
        // are then covered by a signature too (but the last second's records).
        if appended > 0
            && let Some(key) = &self.settings.signing_key
            && self
                .head_signed
                .is_none_or(|at| at.elapsed() >= self.settings.sign_head_every)
        {
            match key.sign_head(&self.settings.dir, self.next_seq.saturating_sub(1), &self.head) {
                Ok(()) => self.head_signed = Some(std::time::Instant::now()),
                Err(e) => tracing::warn!("cannot sign the journal's head: {e}"),
            }
        }
        self.stats.bytes.store(self.total_bytes(), Ordering::Relaxed);
        self.stats
            .last_seq
            .store(self.next_seq.saturating_sub(1), Ordering::Release);
        results
    }

    /// Writes `bytes` (the records whose results are `pending`) to the open segment and syncs
    /// it; on failure cuts the segment back to `before` and fails those records.
    fn flush(&mut self, bytes: &[u8], before: (u64, Hash, u64), pending: &mut [Result<Receipt, JournalError>]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        use std::os::unix::fs::FileExt;
        let at = before.2;
        let written = self.linked().and_then(|()| {
            if let Err(e) = self.zero_ahead(at + bytes.len() as u64) {
                // No room for zeros ahead (a nearly full disk): append plainly instead.
                tracing::warn!("cannot write zeros ahead of the journal's records (appending without them): {e}");
                self.file.set_len(at)?;
                self.zeroed = at;
            }
            self.file.write_all_at(bytes, at)?;
            self.file.sync_data()
        });
        let Err(e) = written else {
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!("the audit journal cannot be written: {e}");
        let (seq, head, size) = before;
        let _ = self.file.set_len(size);
        self.zeroed = size;
        (self.next_seq, self.head, self.size) = (seq, head, size);
        let error = JournalError::Io(e.to_string());
        for result in pending.iter_mut() {
            if result.is_ok() {
                *result = Err(error.clone());
            }
        }
        false
    }

    /// Makes sure the open segment holds zeros from `end` (where the records being written
    /// will end) through the end marker after them, writing up to [`ZERO_AHEAD`] more (within
    /// the segment's size).
    fn zero_ahead(&mut self, end: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let needed = end + END_MARKER;
        if needed <= self.zeroed {
            return Ok(());
        }
        let most = (self.settings.segment_bytes + END_MARKER).max(needed);
        let target = needed.saturating_add(ZERO_AHEAD).min(most);
        let mut at = self.zeroed.max(self.size);
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64);
            self.file.write_all_at(&ZEROS[..n as usize], at)?;
            at += n;
        }
        self.zeroed = target;
        Ok(())
    }

    /// An error when the open segment is no longer in the journal's directory (removed, or
    /// the directory with it): what is written there would be lost.
    fn linked(&self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let open = self.settings.dir.join(segment_name(self.open_first));
        let (file, path) = (self.file.metadata()?, std::fs::metadata(&open));
        match path {
            Ok(path) if file.nlink() > 0 && path.ino() == file.ino() && path.dev() == file.dev() => Ok(()),
            _ => Err(std::io::Error::other(format!(
                "the open journal segment {} was removed",
                open.display()
            ))),
        }
    }

    /// Keeps the journal within `max_bytes` (removing old segments, or refusing).
    fn make_room(&mut self, needed: u64) -> Result<(), JournalError> {
        // Retention is applied at most once a second (it reads the export position and a
        // segment's time), and at once when the journal is full.
        if self
            .expired_checked
            .is_none_or(|at| at.elapsed() >= EXPIRED_CHECK_EVERY)
        {
            self.remove_expired();
        }
        if self.total_bytes() + needed > self.settings.max_bytes {
            self.remove_expired();
            // Segments an operator removed (or archived) give their room back.
            self.sealed.retain(|(_, path, _, _)| path.exists());
        }
        while self.total_bytes() + needed > self.settings.max_bytes {
            if self.settings.on_full == OnFull::Refuse || self.sealed.is_empty() {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(JournalError::Full);
            }
            let (first, path, _, last) = self.sealed.remove(0);
            let dropped = last.saturating_sub(first) + 1;
            tracing::warn!(segment = %path.display(), "audit journal full: removing its oldest segment ({dropped} records)");
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(segment = %path.display(), "cannot remove a journal segment: {e}");
                return Err(JournalError::Io(e.to_string()));
            }
        }
        Ok(())
    }

    /// Whether the journal could take a record now (for readiness while it refuses): the
    /// open segment is still in the directory, syncs, and there is room.
    fn probe(&mut self) {
        if !self.stats.failing.load(Ordering::Relaxed) {
            return;
        }
        self.sealed.retain(|(_, path, _, _)| path.exists());
        let room = self.settings.on_full != OnFull::Refuse
            || self.total_bytes() + RECORD_OVERHEAD + 1024 <= self.settings.max_bytes;
        let ok = room && self.linked().and_then(|()| self.file.sync_data()).is_ok();
        if ok {
            self.stats.failing.store(false, Ordering::Relaxed);
        }
    }

    /// Closes the open segment and starts the next.
    fn roll(&mut self) -> std::io::Result<()> {
        // A closed segment ends at its last record (the zeros ahead are cut).
        self.file.set_len(self.size)?;
        self.file.sync_all()?;
        let path = self.settings.dir.join(segment_name(self.next_seq));
        // Never over an existing file: a segment is written once.
        let mut file = OpenOptions::new().create_new(true).write(true).open(&path)?;
        file.write_all(&header(self.next_seq, &self.head))?;
        file.sync_all()?;
        sync_dir(&self.settings.dir)?;
        let old = self.settings.dir.join(segment_name(self.open_first));
        if let Some(key) = &self.settings.signing_key {
            key.sign_segment(&old, self.next_seq - 1, &self.head)?;
        }
        self.sealed.push((self.open_first, old, self.size, self.next_seq - 1));
        self.file = file;
        self.size = HEADER_BYTES;
        self.zeroed = HEADER_BYTES;
        self.open_first = self.next_seq;
        Ok(())
    }

    /// Removes sealed segments all of whose records are exported and older than `retain`.
    fn remove_expired(&mut self) {
        self.expired_checked = Some(std::time::Instant::now());
        let exported = read_exported(&self.settings.dir);
        let now = SystemTime::now();
        while let Some((_, path, _, last)) = self.sealed.first() {
            let old = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > self.settings.retain);
            if *last > exported || !old {
                break;
            }
            let (_, path, _, _) = self.sealed.remove(0);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), "cannot remove an exported journal segment: {e}");
            }
        }
    }
}

/// The file a journal's writer holds locked.
pub const LOCK_FILE: &str = "lock";

/// How often retention is applied while records are written.
const EXPIRED_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The file that holds the last exported sequence number.
pub const EXPORTED_FILE: &str = "exported";

/// The last sequence number the exporter acknowledged (0: none).
/// Before a torn tail is cut from `path` (everything after `valid_bytes`): bytes there that
/// are not zeros are kept beside the segment (`<segment>.torn-<ms>`, which no reader takes
/// for a segment). They were never acknowledged, but what they hold is for an auditor to see,
/// not for the journal to destroy.
fn keep_torn_tail(path: &Path, valid_bytes: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let mut file = File::open(path)?;
    if file.metadata()?.len() <= valid_bytes {
        return Ok(());
    }
    file.seek(std::io::SeekFrom::Start(valid_bytes))?;
    let mut tail = Vec::new();
    file.take(64 << 20).read_to_end(&mut tail)?;
    if tail.iter().all(|b| *b == 0) {
        return Ok(());
    }
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let kept = PathBuf::from(format!("{}.torn-{at}", path.display()));
    let mut out = OpenOptions::new().create_new(true).write(true).open(&kept)?;
    out.write_all(&tail)?;
    out.sync_all()?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    tracing::warn!(
        segment = %path.display(),
        kept = %kept.display(),
        "the journal's last segment ends in a write cut short: its {} bytes after the last whole record are kept aside",
        tail.len()
    );
    Ok(())
}

pub fn read_exported(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(EXPORTED_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Records `seq` as exported (written to a temporary file, then renamed over the old one).
pub fn write_exported(dir: &Path, seq: u64) -> std::io::Result<()> {
    let temporary = dir.join(format!("{EXPORTED_FILE}.tmp"));
    std::fs::write(&temporary, format!("{seq}\n"))?;
    File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, dir.join(EXPORTED_FILE))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
