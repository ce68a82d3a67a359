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
    /// Signs each closed segment's last record (`<segment>.sig`).
    pub signing_key: Option<Arc<crate::sign::SigningKey>>,
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
    /// The last record's sequence number.
    pub last_seq: AtomicU64,
    /// The last batch could not be written, or a record did not fit: until a batch is
    /// written whole again.
    pub failing: std::sync::atomic::AtomicBool,
}

struct Append {
    payload: Vec<u8>,
    done: Option<oneshot::Sender<Result<Receipt, JournalError>>>,
}

/// A journal open for appending.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Append>,
    stats: Arc<JournalStats>,
}

/// Records queued for the writer at most.
const QUEUE: usize = 65_536;

impl Journal {
    /// Opens (or creates) the journal in `settings.dir`, cutting a torn tail, and starts its
    /// writer.
    pub fn open(settings: JournalSettings) -> Result<Journal, JournalError> {
        let stats = Arc::new(JournalStats::default());
        let writer = Writer::open(settings, stats.clone()).map_err(|e| JournalError::Io(e.to_string()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer.run(rx));
        Ok(Journal { tx, stats })
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
            })
            .await
            .map_err(|_| JournalError::Stopped)?;
        answer.await.unwrap_or(Err(JournalError::Stopped))
    }

    /// Appends `payload` without waiting for it (when the queue is full the record waits for
    /// room in a task of its own).
    pub fn append_later(&self, payload: Vec<u8>) {
        if payload.len() > MAX_PAYLOAD_BYTES {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let append = Append { payload, done: None };
        if let Err(mpsc::error::TrySendError::Full(append)) = self.tx.try_send(append) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(append).await;
            });
        }
    }

    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.stats
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
}

impl Writer {
    fn open(settings: JournalSettings, stats: Arc<JournalStats>) -> std::io::Result<Writer> {
        std::fs::create_dir_all(&settings.dir)?;
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
        let (file, size, next_seq, head) = match found.last() {
            Some((_, path)) => {
                let segment = read_segment(path)?;
                if !matches!(segment.end, End::Clean) {
                    tracing::warn!(
                        segment = %path.display(),
                        "the journal's last segment ends {:?}; cutting it after its last whole record (byte {})",
                        segment.end,
                        segment.valid_bytes
                    );
                }
                let file = OpenOptions::new().read(true).write(true).open(path)?;
                if segment.valid_bytes < HEADER_BYTES {
                    // Not even a whole header: start the segment again.
                    file.set_len(0)?;
                    let mut file = file;
                    file.write_all(&header(segment.first_seq.max(1), &segment.previous))?;
                    file.sync_all()?;
                    (file, HEADER_BYTES, segment.first_seq.max(1), segment.previous)
                } else {
                    file.set_len(segment.valid_bytes)?;
                    file.sync_all()?;
                    let (next, head) = match segment.records.last() {
                        Some((_, r)) => (r.seq + 1, r.hash),
                        None => (segment.first_seq, segment.previous),
                    };
                    (file, segment.valid_bytes, next, head)
                }
            }
            None => {
                let path = settings.dir.join(segment_name(1));
                let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
                file.write_all(&header(1, &[0; 32]))?;
                file.sync_all()?;
                sync_dir(&settings.dir)?;
                (file, HEADER_BYTES, 1, [0; 32])
            }
        };
        let mut writer = Writer {
            settings,
            stats,
            file,
            size,
            open_first,
            next_seq,
            head,
            sealed,
        };
        use std::io::Seek;
        writer.file.seek(std::io::SeekFrom::End(0))?;
        writer.stats.bytes.store(writer.total_bytes(), Ordering::Relaxed);
        writer.stats.last_seq.store(writer.next_seq - 1, Ordering::Relaxed);
        Ok(writer)
    }

    fn total_bytes(&self) -> u64 {
        self.size + self.sealed.iter().map(|s| s.2).sum::<u64>()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Append>) {
        let wait = Duration::from_millis(self.settings.sync_ms);
        let most = self.settings.sync_records.max(1);
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + wait;
            while batch.len() < most {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(append)) => batch.push(append),
                    _ => break,
                }
            }
            // Disk work off the async threads; the writer's state goes with it and comes back.
            let writing = tokio::task::spawn_blocking(move || {
                let results = self.write_batch(&batch);
                (self, batch, results)
            })
            .await;
            let Ok((writer, batch, results)) = writing else {
                tracing::error!("the audit journal's writer failed; the journal has stopped");
                return;
            };
            self = writer;
            for (append, result) in batch.into_iter().zip(results) {
                if let Some(done) = append.done {
                    let _ = done.send(result);
                }
            }
        }
    }

    /// Writes and syncs one batch; each record's outcome.
    fn write_batch(&mut self, batch: &[Append]) -> Vec<Result<Receipt, JournalError>> {
        let mut results = Vec::with_capacity(batch.len());
        let mut bytes = Vec::new();
        let (start_seq, start_head, start_size) = (self.next_seq, self.head, self.size);
        for append in batch {
            let needed = RECORD_OVERHEAD + append.payload.len() as u64;
            if let Err(e) = self.make_room(needed, &mut bytes) {
                results.push(Err(e));
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
        let written = self.file.write_all(&bytes).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Nothing of the batch counts: the segment is cut back to where it was.
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.stats.failing.store(true, Ordering::Relaxed);
            tracing::error!("the audit journal cannot be written: {e}");
            let _ = self.file.set_len(start_size);
            use std::io::Seek;
            let _ = self.file.seek(std::io::SeekFrom::Start(start_size));
            (self.next_seq, self.head, self.size) = (start_seq, start_head, start_size);
            let error = JournalError::Io(e.to_string());
            return results
                .into_iter()
                .map(|r| r.and_then(|_| Err(error.clone())))
                .collect();
        }
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        let refused = results.iter().any(|r| r.is_err());
        self.stats.failing.store(refused, Ordering::Relaxed);
        let appended = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.stats.appended.fetch_add(appended, Ordering::Relaxed);
        self.stats.bytes.store(self.total_bytes(), Ordering::Relaxed);
        self.stats.last_seq.store(self.next_seq - 1, Ordering::Relaxed);
        results
    }

    /// Rolls the segment when the record would pass `segment_bytes`, and keeps the journal
    /// within `max_bytes` (removing old segments, or refusing). `pending` holds bytes of the
    /// batch not yet written to the open segment.
    fn make_room(&mut self, needed: u64, pending: &mut Vec<u8>) -> Result<(), JournalError> {
        if self.size + needed > self.settings.segment_bytes && self.size > HEADER_BYTES {
            self.file
                .write_all(pending)
                .and_then(|()| self.roll())
                .map_err(|e| JournalError::Io(e.to_string()))?;
            pending.clear();
        }
        self.remove_expired();
        if self.total_bytes() + needed > self.settings.max_bytes {
            // Segments an operator removed (or archived) give their room back.
            self.sealed.retain(|(_, path, _, _)| path.exists());
        }
        while self.total_bytes() + needed > self.settings.max_bytes {
            if self.settings.on_full == OnFull::Refuse || self.sealed.is_empty() {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(JournalError::Full);
            }
            let (first, path, bytes, last) = self.sealed.remove(0);
            let dropped = last.saturating_sub(first) + 1;
            tracing::warn!(segment = %path.display(), "audit journal full: removing its oldest segment ({dropped} records)");
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(segment = %path.display(), "cannot remove a journal segment: {e}");
                return Err(JournalError::Io(e.to_string()));
            }
            let _ = bytes;
        }
        Ok(())
    }

    /// Closes the open segment and starts the next.
    fn roll(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        let path = self.settings.dir.join(segment_name(self.next_seq));
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
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
        self.open_first = self.next_seq;
        Ok(())
    }

    /// Removes sealed segments all of whose records are exported and older than `retain`.
    fn remove_expired(&mut self) {
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

/// The file that holds the last exported sequence number.
pub const EXPORTED_FILE: &str = "exported";

/// The last sequence number the exporter acknowledged (0: none).
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
