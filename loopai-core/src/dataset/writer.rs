//! The dataset writer: `execute` hands records to a bounded queue; one background thread
//! drains it, appends whole JSON lines to the day's files and group-commits each batch.
//!
//! * `buffered` (default): a batch is written to the OS as soon as the thread wakes up
//!   (well within 100 ms); it is fsync'd at every [`DatasetWriter::flush`], day rollover,
//!   shutdown and at least every few seconds while there is unsynced data.
//! * `durable`: `log` returns only once the record has been written and fsync'd. Records
//!   are numbered in queue order under a small lock, and the thread publishes how far it
//!   has synced, so concurrent callers share one fsync per batch.
//!
//! Nothing accepted is dropped silently: on a full queue the producer blocks (`on_full:
//! block`) or the record is counted as dropped (`on_full: drop`). A failed write keeps the
//! whole lines that reached the file (a disk with room for part of the backlog takes that
//! part) and cuts a torn last line; it is reported (metrics, `log`, health) and the rest is
//! retried with exponential backoff (50 ms doubling to 5 s), which every path honours: no
//! periodic sync, durable batch or flush makes an attempt before the backoff has passed,
//! only the final one of `shutdown`. While writes fail, records stay in memory up to a
//! bound and then the queue fills. Health recovers at the first write that drains the
//! backlog.
//!
//! Observers (analytics, telemetry) see a record only once it is in the local log: written
//! to the OS in `buffered` mode, written and fsync'd in `durable` mode. A record that was
//! never written never reaches them.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};
use time::Date;

use super::record::{DatasetLayout, ExecutionRecord, ValidationRecord};
use crate::clock::{Clock, Timestamp};
use crate::crypt::{self, KeyRing, Sealer};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{create_dir_all_durable, sync_dir};

/// Most records drained into one batch.
const MAX_BATCH: usize = 8192;
/// Unwritten bytes held in memory while writes fail, before the queue is left to fill.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Longest time unsynced data stays in the OS cache in `buffered` mode.
const BUFFERED_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How often the thread wakes up when idle (periodic stats, retries).
const TICK: Duration = Duration::from_millis(100);
/// Pause between batches while records keep arriving (`buffered` mode).
const BUSY_NAP: Duration = Duration::from_millis(1);

/// Sees every record the writer thread has appended to the local log (`durable`: and
/// synced), on that thread, in queue order: the daily analytics and the telemetry queue.
pub(crate) trait RecordObserver: Send {
    /// Called before the writer first appends records of `day` (UTC), while the day's
    /// files do not hold them yet: an observer that starts from what is on disk reads it
    /// now, so that the records it is then shown are not counted twice.
    fn prepare_day(&mut self, _day: Date) {}
    fn execution(&mut self, record: &ExecutionRecord);
    fn validation(&mut self, record: &ValidationRecord);
    /// Called after every batch and at least every 100 ms (periodic work).
    fn tick(&mut self, now: Timestamp);
    /// Called for every flush request: persist whatever is kept in memory.
    fn persist(&mut self, now: Timestamp);
    /// Called once when the writer stops.
    fn finish(&mut self, now: Timestamp);
}

/// Options of a [`DatasetWriter`].
#[derive(Debug, Clone)]
pub(crate) struct WriterOptions {
    pub durable: bool,
    pub drop_when_full: bool,
    pub queue_capacity: usize,
    /// `storage.encryption`: records are written as AES-256-GCM frames (see `crypt.rs`).
    pub encryption: Option<Arc<KeyRing>>,
}

/// Where the writer's files live: the file system ([`FileSystem`]), or in tests a disk that
/// fills up.
pub(crate) trait LogStorage: Send + Sync {
    /// Opens `path` for appending (created durably if new, a torn tail cut off) and returns
    /// it with its length.
    fn open(&self, path: &Path) -> io::Result<(Box<dyn LogFile>, u64)>;
}

/// A file the writer appends to.
pub(crate) trait LogFile: Send {
    /// Appends from `buf`; returns how many bytes were taken (a full disk may take part).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Truncates to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// fsync of the data.
    fn sync_data(&mut self) -> io::Result<()>;
}

impl LogFile for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// The real file system.
pub(crate) struct FileSystem;

impl LogStorage for FileSystem {
    fn open(&self, path: &Path) -> io::Result<(Box<dyn LogFile>, u64)> {
        let (file, len) = open_for_append(path)?;
        Ok((Box::new(file), len))
    }
}

/// The file system with encrypted files (`storage.encryption`): a new file starts with the
/// header of the current key; an existing one is appended to only when it is encrypted
/// with the current key (its torn tail, an incomplete or unauthentic last frame, cut
/// first); a plain file, or one of an old key, is first rewritten with the current key
/// (atomically). The whole file is read once when it is opened.
pub(crate) struct EncryptedFileSystem(pub Arc<KeyRing>);

impl LogStorage for EncryptedFileSystem {
    fn open(&self, path: &Path) -> io::Result<(Box<dyn LogFile>, u64)> {
        crypt::prepare_append(path, &self.0)?;
        let mut file = OpenOptions::new().read(true).append(true).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        Ok((Box::new(file), len))
    }
}

/// Work to run once a record is in the log.
pub(crate) type AfterLog = Box<dyn FnOnce() + Send>;

enum Msg {
    Execution(ExecutionRecord, Option<AfterLog>),
    Validation(ValidationRecord),
    Flush(Arc<Signal>),
    Shutdown(Arc<Signal>),
}

/// A one-shot completion flag with a bounded wait.
#[derive(Default)]
struct Signal {
    done: Mutex<Option<std::result::Result<(), String>>>,
    cv: Condvar,
}

impl Signal {
    fn complete(&self, result: std::result::Result<(), String>) {
        *self.done.lock() = Some(result);
        self.cv.notify_all();
    }

    fn wait(&self, deadline: Instant) -> Option<std::result::Result<(), String>> {
        let mut done = self.done.lock();
        while done.is_none() {
            if self.cv.wait_until(&mut done, deadline).timed_out() {
                break;
            }
        }
        done.clone()
    }
}

#[derive(Default)]
struct Progress {
    /// Every record numbered up to this one is on disk and synced.
    durable_seq: u64,
    /// Records up to this one were in a batch whose write failed.
    failed_seq: u64,
    last_error: Option<String>,
}

/// Counters of the writer, readable at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DatasetMetrics {
    /// Records accepted into the queue.
    pub accepted: u64,
    /// Records written to the OS.
    pub written: u64,
    /// Records dropped because the queue was full (`storage.on_full: drop`).
    pub dropped: u64,
    /// Failed write or sync attempts.
    pub write_errors: u64,
    /// Records waiting in the queue or in memory.
    pub pending: u64,
    /// fsync calls made.
    pub syncs: u64,
    /// The last write error, if the last attempt failed.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Shared {
    enqueue: Mutex<u64>,
    progress: Mutex<Progress>,
    progress_cv: Condvar,
    accepted: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    syncs: AtomicU64,
    failing: AtomicBool,
    closed: AtomicBool,
    dead: AtomicBool,
}

/// Owns the writer thread of one task's dataset.
pub(crate) struct DatasetWriter {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
    exited: Receiver<()>,
    options: WriterOptions,
    /// The fork generation the thread was started in: in a forked child the thread does
    /// not exist, and nothing waits for it.
    fork_generation: u64,
}

impl std::fmt::Debug for DatasetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetWriter")
            .field("options", &self.options)
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl DatasetWriter {
    /// Starts the writer thread for `layout`.
    pub(crate) fn start(
        layout: DatasetLayout,
        task: &str,
        options: WriterOptions,
        clock: Arc<dyn Clock>,
        observers: Vec<Box<dyn RecordObserver>>,
    ) -> Result<DatasetWriter> {
        let storage: Arc<dyn LogStorage> = match &options.encryption {
            Some(keys) => Arc::new(EncryptedFileSystem(keys.clone())),
            None => Arc::new(FileSystem),
        };
        Self::start_with(layout, task, options, clock, observers, storage)
    }

    /// [`start`](Self::start) with the files opened through `storage`.
    pub(crate) fn start_with(
        layout: DatasetLayout,
        task: &str,
        options: WriterOptions,
        clock: Arc<dyn Clock>,
        observers: Vec<Box<dyn RecordObserver>>,
        storage: Arc<dyn LogStorage>,
    ) -> Result<DatasetWriter> {
        create_dir_all_durable(&layout.executions_dir())?;
        create_dir_all_durable(&layout.validations_dir())?;
        let (tx, rx) = bounded(options.queue_capacity.max(1));
        let (exited_tx, exited) = bounded(1);
        let fork_generation = crate::fork::generation();
        let shared = Arc::new(Shared::default());
        let mut state = WriterState::new(
            layout,
            options.durable,
            clock,
            observers,
            shared.clone(),
            storage,
        );
        state.keys = options.encryption.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loopai-dataset-{task}"))
            .spawn(move || {
                let _exit = ExitGuard(exited_tx, state.shared.clone());
                state.run(&rx);
            })
            .map_err(|e| Error::io("starting the dataset writer thread", e))?;
        Ok(DatasetWriter {
            tx,
            shared,
            handle: Mutex::new(Some(handle)),
            exited,
            options,
            fork_generation,
        })
    }

    /// Queues an execution record; in `durable` mode, returns once it is synced to disk.
    pub(crate) fn log_execution(&self, record: ExecutionRecord) -> Result<()> {
        self.log(Msg::Execution(record, None))
    }

    /// [`log_execution`](Self::log_execution), running `after` on the writer thread once
    /// the record is in the log (with the observers): how the rollout counts an execution
    /// only once it is logged. `after` is dropped, not run, if the record is never written.
    pub(crate) fn log_execution_then(
        &self,
        record: ExecutionRecord,
        after: AfterLog,
    ) -> Result<()> {
        self.log(Msg::Execution(record, Some(after)))
    }

    /// Queues a validation record (same durability rules as executions).
    pub(crate) fn log_validation(&self, record: ValidationRecord) -> Result<()> {
        self.log(Msg::Validation(record))
    }

    fn log(&self, msg: Msg) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the runtime is shut down"));
        }
        if !self.options.durable {
            return self.send(msg).map(|_| ());
        }
        let seq = {
            let mut next = self.shared.enqueue.lock();
            if !self.send(msg)? {
                return Ok(());
            }
            *next += 1;
            *next
        };
        let mut progress = self.shared.progress.lock();
        loop {
            if progress.durable_seq >= seq {
                return Ok(());
            }
            if progress.failed_seq >= seq {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "execution log not durable (it stays queued and is retried): {}",
                        progress.last_error.as_deref().unwrap_or("write failed")
                    ),
                ));
            }
            if self.shared.dead.load(Ordering::Acquire) {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "the dataset writer thread stopped",
                ));
            }
            self.shared
                .progress_cv
                .wait_for(&mut progress, Duration::from_millis(200));
        }
    }

    /// Sends to the queue; `Ok(false)` when the record was dropped on a full queue.
    fn send(&self, msg: Msg) -> Result<bool> {
        let sent = if self.options.drop_when_full {
            match self.tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(TrySendError::Disconnected(_)) => Err(()),
            }
        } else {
            self.tx.send(msg).map_err(|_| ())
        };
        match sent {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(()) => Err(Error::new(ErrorKind::Closed, "the runtime is shut down")),
        }
    }

    /// Makes every record accepted before this call durable (written and fsync'd).
    pub(crate) fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let signal = Arc::new(Signal::default());
        self.tx
            .send_deadline(Msg::Flush(signal.clone()), deadline)
            .map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => timeout_error("flush", timeout),
                crossbeam_channel::SendTimeoutError::Disconnected(_) => {
                    Error::new(ErrorKind::Closed, "the runtime is shut down")
                }
            })?;
        match signal.wait(deadline) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::new(ErrorKind::Io, format!("flush: {e}"))),
            None => Err(timeout_error("flush", timeout)),
        }
    }

    /// Stops accepting records, writes and syncs everything queued, and stops the thread,
    /// all within `timeout`. Calling it again is harmless.
    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.shared.closed.store(true, Ordering::Release);
        if crate::fork::current() != self.fork_generation {
            // A forked child: the thread (and whatever it held) stayed in the parent.
            return Ok(());
        }
        let Some(handle) = self.handle.lock().take() else {
            return Ok(());
        };
        let signal = Arc::new(Signal::default());
        let sent = self
            .tx
            .send_deadline(Msg::Shutdown(signal.clone()), deadline);
        let result = match sent {
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => Ok(()),
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => {
                Err(timeout_error("shutdown", timeout))
            }
            Ok(()) => match signal.wait(deadline) {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(Error::new(ErrorKind::Io, format!("shutdown: {e}"))),
                None => Err(timeout_error("shutdown", timeout)),
            },
        };
        // Join only when the thread has exited or is about to: never an unbounded wait.
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.exited.recv_timeout(remaining).is_ok() || self.shared.dead.load(Ordering::Acquire) {
            let _ = handle.join();
        } else {
            *self.handle.lock() = Some(handle);
            if result.is_ok() {
                return Err(timeout_error("shutdown", timeout));
            }
        }
        result
    }

    /// Current counters.
    pub(crate) fn metrics(&self) -> DatasetMetrics {
        let s = &self.shared;
        let accepted = s.accepted.load(Ordering::Relaxed);
        let written = s.written.load(Ordering::Relaxed);
        DatasetMetrics {
            accepted,
            written,
            dropped: s.dropped.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            pending: accepted.saturating_sub(written),
            syncs: s.syncs.load(Ordering::Relaxed),
            last_error: if s.failing.load(Ordering::Relaxed) {
                s.progress.lock().last_error.clone()
            } else {
                None
            },
        }
    }

    /// Whether `shutdown` was called (or the thread exited).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the thread is running and the last write succeeded.
    pub(crate) fn healthy(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire) && !self.shared.failing.load(Ordering::Relaxed)
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        // Bounded best effort; an explicit shutdown reports failures.
        let _ = self.shutdown(Duration::from_secs(5));
    }
}

fn timeout_error(what: &str, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("dataset {what} did not finish within {timeout:?}"),
    )
}

/// Marks the writer dead and wakes every waiter when the thread exits, even by panic.
struct ExitGuard(Sender<()>, Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.1.dead.store(true, Ordering::Release);
        self.1.closed.store(true, Ordering::Release);
        let _guard = self.1.progress.lock();
        self.1.progress_cv.notify_all();
        let _ = self.0.try_send(());
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Executions,
    Validations,
}

/// An open append-only file and its confirmed length (everything before it is whole lines).
struct OpenFile {
    file: Box<dyn LogFile>,
    path: PathBuf,
    len: u64,
    unsynced: bool,
}

/// A record as the observers see it.
enum Observed {
    Execution(ExecutionRecord, Option<AfterLog>),
    Validation(ValidationRecord),
}

/// One line of [`Pending::bytes`].
struct Line {
    len: usize,
    seq: u64,
    record: Observed,
}

/// Bytes waiting to be appended to one file, one line per record.
struct Pending {
    key: (Kind, Date),
    /// Seals this slot's records (`storage.encryption`): one nonce prefix per slot.
    sealer: Option<Sealer>,
    bytes: Vec<u8>,
    lines: VecDeque<Line>,
}

struct WriterState {
    layout: DatasetLayout,
    durable: bool,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    files: HashMap<(Kind, Date), OpenFile>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// Sequence number of the last record serialized.
    seq: u64,
    observers: Vec<Box<dyn RecordObserver>>,
    /// Written records the observers have not seen yet (`durable`: not synced yet).
    unobserved: Vec<(u64, Observed)>,
    storage: Arc<dyn LogStorage>,
    keys: Option<Arc<KeyRing>>,
    /// One record's JSON before it is sealed (`storage.encryption`).
    scratch: Vec<u8>,
    last_sync: Instant,
    /// No write or sync is attempted before this, except the last one of a shutdown.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl WriterState {
    fn new(
        layout: DatasetLayout,
        durable: bool,
        clock: Arc<dyn Clock>,
        observers: Vec<Box<dyn RecordObserver>>,
        shared: Arc<Shared>,
        storage: Arc<dyn LogStorage>,
    ) -> WriterState {
        WriterState {
            observers,
            unobserved: Vec::new(),
            storage,
            keys: None,
            scratch: Vec::new(),
            layout,
            durable,
            clock,
            shared,
            files: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            seq: 0,
            last_sync: Instant::now(),
            retry_at: None,
            backoff: Duration::from_millis(50),
        }
    }

    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut batch: Vec<Msg> = Vec::with_capacity(256);
        let mut stop: Option<Arc<Signal>> = None;
        let mut busy = false;
        while stop.is_none() {
            // Stop draining while too much is pending: the queue then applies back-pressure.
            if self.pending_bytes < MAX_PENDING_BYTES {
                if busy {
                    // Under load, nap instead of parking: producers' sends then wake no
                    // thread (a futex call per record otherwise), and batches grow.
                    std::thread::sleep(BUSY_NAP);
                    match rx.try_recv() {
                        Ok(msg) => batch.push(msg),
                        Err(crossbeam_channel::TryRecvError::Empty) => {}
                        Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                    }
                } else {
                    match rx.recv_timeout(TICK) {
                        Ok(msg) => batch.push(msg),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(msg) => batch.push(msg),
                        Err(_) => break,
                    }
                }
            } else {
                std::thread::sleep(TICK);
            }
            // Keep napping while records keep coming; park again once a round is empty.
            // Durable callers wait for their sync, so they are not kept waiting for a nap.
            busy = !self.durable && !batch.is_empty();
            let mut flushes = Vec::new();
            for msg in batch.drain(..) {
                match msg {
                    Msg::Execution(r, after) => {
                        let day = r.timestamp.day();
                        self.append(Kind::Executions, day, Observed::Execution(r, after));
                    }
                    Msg::Validation(r) => {
                        let day = r.validated_at.day();
                        self.append(Kind::Validations, day, Observed::Validation(r));
                    }
                    Msg::Flush(s) => flushes.push(s),
                    Msg::Shutdown(s) => {
                        stop = Some(s);
                        break;
                    }
                }
            }
            let must_sync = self.durable
                || !flushes.is_empty()
                || stop.is_some()
                || self.last_sync.elapsed() >= BUFFERED_SYNC_INTERVAL;
            let result = self.commit(must_sync, stop.is_some());
            let now = self.now();
            for o in &mut self.observers {
                o.tick(now);
                if !flushes.is_empty() {
                    o.persist(now);
                }
            }
            for s in flushes {
                s.complete(result.clone());
            }
        }
        let now = self.now();
        for o in &mut self.observers {
            o.finish(now);
        }
        self.files.clear();
        if let Some(s) = stop {
            let unwritten: usize = self.pending.iter().map(|p| p.lines.len()).sum();
            let result = if unwritten == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{unwritten} records could not be written: {}",
                    self.shared
                        .progress
                        .lock()
                        .last_error
                        .clone()
                        .unwrap_or_default()
                ))
            };
            s.complete(result);
        }
    }

    fn append(&mut self, kind: Kind, day: Date, record: Observed) {
        self.seq += 1;
        // A day older than yesterday may already be compressed by retention: a late record
        // (say, a validation stamped long ago) goes to today's file instead, keeping its
        // own timestamp. Nothing is ever appended to a file retention may rewrite.
        let today = self.now().day();
        let day = match today.previous_day() {
            Some(yesterday) if day < yesterday => today,
            _ => day,
        };
        let key = (kind, day);
        let idx = match self.pending.iter().position(|p| p.key == key) {
            Some(i) => i,
            None => {
                for o in &mut self.observers {
                    o.prepare_day(day);
                }
                let sealer = match &self.keys {
                    Some(keys) => match Sealer::new(keys.current()) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            log::error!("loopai: a dataset record was skipped: {e}");
                            return;
                        }
                    },
                    None => None,
                };
                self.pending.push(Pending {
                    key,
                    sealer,
                    bytes: Vec::with_capacity(64 << 10),
                    lines: VecDeque::new(),
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[idx];
        let before = p.bytes.len();
        // serde_json escapes control characters: a record is always exactly one line.
        let serialized = match &mut p.sealer {
            None => match &record {
                Observed::Execution(r, _) => serde_json::to_writer(&mut p.bytes, r),
                Observed::Validation(r) => serde_json::to_writer(&mut p.bytes, r),
            }
            .map(|()| p.bytes.push(b'\n'))
            .map_err(|e| e.to_string()),
            Some(sealer) => {
                // One frame per line: a torn append is cut like a torn line.
                self.scratch.clear();
                match &record {
                    Observed::Execution(r, _) => serde_json::to_writer(&mut self.scratch, r),
                    Observed::Validation(r) => serde_json::to_writer(&mut self.scratch, r),
                }
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.scratch.push(b'\n');
                    sealer
                        .seal_into(&self.scratch, &mut p.bytes)
                        .map_err(|e| e.to_string())
                })
            }
        };
        if serialized.is_ok() {
            let len = p.bytes.len() - before;
            p.lines.push_back(Line {
                len,
                seq: self.seq,
                record,
            });
            self.pending_bytes += len;
        } else {
            p.bytes.truncate(before);
            log::error!("loopai: a dataset record could not be serialized and was skipped");
        }
    }

    /// Writes pending bytes and, if asked, fsyncs; then publishes progress and hands what
    /// is in the log to the observers. During the backoff after a failure nothing is
    /// attempted unless `last` (the final commit of a shutdown).
    fn commit(&mut self, sync: bool, last: bool) -> std::result::Result<(), String> {
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at && !last {
                let mut progress = self.shared.progress.lock();
                // Durable callers waiting for these records learn now that they are not
                // durable yet (they stay queued and are retried).
                progress.failed_seq = self.seq;
                let error = format!(
                    "{} (next attempt in {:?})",
                    progress.last_error.as_deref().unwrap_or("write failed"),
                    at - now
                );
                drop(progress);
                self.shared.progress_cv.notify_all();
                return Err(error);
            }
        }
        let mut error: Option<String> = None;
        let mut written = 0u64;
        for i in 0..self.pending.len() {
            if self.pending[i].lines.is_empty() {
                continue;
            }
            let path = self.path_for(self.pending[i].key);
            let (lines, result) = self.write_pending(i, &path);
            written += lines;
            if let Err(e) = result {
                error = Some(format!("{}: {e}", path.display()));
            }
        }
        self.shared.written.fetch_add(written, Ordering::Relaxed);
        if error.is_none() && (sync || (self.durable && written > 0)) {
            if let Err(e) = self.sync_all() {
                error = Some(e);
            }
        }
        // Idle pending slots of past days are released.
        let today = self.now().day();
        self.pending
            .retain(|p| !p.lines.is_empty() || p.key.1 >= today);
        self.close_old_files();
        // The observers see what is now in the log before anyone waiting on progress is
        // woken, so that a completed flush means they have seen every flushed record.
        self.observe();

        let mut progress = self.shared.progress.lock();
        match &error {
            None => {
                let lowest_unsynced = self
                    .pending
                    .iter()
                    .filter_map(|p| p.lines.front().map(|l| l.seq))
                    .min();
                let synced_all = self.files.values().all(|f| !f.unsynced);
                if synced_all {
                    progress.durable_seq = lowest_unsynced.map_or(self.seq, |s| s - 1);
                }
                progress.last_error = None;
                self.shared.failing.store(false, Ordering::Relaxed);
                self.retry_at = None;
                self.backoff = Duration::from_millis(50);
            }
            Some(e) => {
                progress.failed_seq = self.seq;
                progress.last_error = Some(e.clone());
                self.shared.failing.store(true, Ordering::Relaxed);
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "loopai: dataset write failed (will retry in {:?}): {e}",
                    self.backoff
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
            }
        }
        drop(progress);
        self.shared.progress_cv.notify_all();
        error.map_or(Ok(()), Err)
    }

    /// Hands the records in the log to the observers, in queue order: every written record
    /// in `buffered` mode, once every file is synced in `durable` mode.
    fn observe(&mut self) {
        if self.unobserved.is_empty() || (self.durable && self.files.values().any(|f| f.unsynced)) {
            return;
        }
        self.unobserved.sort_unstable_by_key(|(seq, _)| *seq);
        for (_, record) in self.unobserved.drain(..) {
            for o in &mut self.observers {
                match &record {
                    Observed::Execution(r, _) => o.execution(r),
                    Observed::Validation(r) => o.validation(r),
                }
            }
            if let Observed::Execution(_, Some(after)) = record {
                after();
            }
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.clock.now_millis())
    }

    fn path_for(&self, (kind, day): (Kind, Date)) -> PathBuf {
        match kind {
            Kind::Executions => self.layout.executions_file(day),
            Kind::Validations => self.layout.validations_file(day),
        }
    }

    /// Appends the lines of `pending[i]` to its file (`path`). On a failure, the whole
    /// lines that reached the file stay there and leave the pending bytes; a torn last line
    /// is cut off. Returns how many lines were written.
    fn write_pending(&mut self, i: usize, path: &Path) -> (u64, io::Result<()>) {
        let key = self.pending[i].key;
        if !self.files.contains_key(&key) {
            match self.storage.open(path) {
                Ok((file, len)) => {
                    let path = path.to_path_buf();
                    let unsynced = false;
                    self.files.insert(
                        key,
                        OpenFile {
                            file,
                            path,
                            len,
                            unsynced,
                        },
                    );
                }
                Err(e) => return (0, Err(e)),
            }
        }
        let Some(f) = self.files.get_mut(&key) else {
            return (0, Err(io::Error::other("the file was not opened")));
        };
        let p = &mut self.pending[i];
        let mut done = 0;
        let mut failure = None;
        while done < p.bytes.len() {
            match f.file.write(&p.bytes[done..]) {
                Ok(0) => {
                    failure = Some(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file took no bytes",
                    ));
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // The whole lines among the bytes the file took.
        let (mut lines, mut bytes) = (0, 0);
        for line in &p.lines {
            if bytes + line.len > done {
                break;
            }
            lines += 1;
            bytes += line.len;
        }
        if done > bytes {
            // Cut the torn line. If even that fails, the handle is dropped and the reopen
            // repairs the tail (cutting exactly the torn line), after syncing what is whole.
            if f.file.set_len(f.len + bytes as u64).is_err() {
                if bytes > 0 {
                    let _ = f.file.sync_data();
                }
                self.files.remove(&key);
            }
        }
        if let Some(f) = self.files.get_mut(&key) {
            f.len += bytes as u64;
            f.unsynced |= bytes > 0;
        }
        p.bytes.drain(..bytes);
        self.pending_bytes -= bytes;
        for line in p.lines.drain(..lines) {
            self.unobserved.push((line.seq, line.record));
        }
        (lines as u64, failure.map_or(Ok(()), Err))
    }

    fn sync_all(&mut self) -> std::result::Result<(), String> {
        for f in self.files.values_mut().filter(|f| f.unsynced) {
            f.file
                .sync_data()
                .map_err(|e| format!("{}: fsync: {e}", f.path.display()))?;
            f.unsynced = false;
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Keeps only today's and yesterday's files open.
    fn close_old_files(&mut self) {
        let Some(yesterday) = self.now().day().previous_day() else {
            return;
        };
        if self.files.keys().any(|k| k.1 < yesterday) {
            let _ = self.sync_all();
            self.files.retain(|k, f| k.1 >= yesterday || f.unsynced);
        }
    }
}

/// Opens (creating durably if needed) a JSONL file for appending, after repairing a torn
/// tail: anything after the last newline, and a last line that does not parse, is cut off.
fn open_for_append(path: &Path) -> io::Result<(File, u64)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    if !existed {
        file.sync_all()?;
        sync_dir(dir)?;
    }
    let len = repair_tail(&mut file, path)?;
    Ok((file, len))
}

/// Truncates a torn last line; returns the resulting length.
pub(crate) fn repair_tail(file: &mut File, path: &Path) -> io::Result<u64> {
    let mut len = file.metadata()?.len();
    let original = len;
    loop {
        if len == 0 {
            break;
        }
        // Find the start of the last line within a bounded window.
        let window = len.min(1 << 20);
        let start = len - window;
        let mut buf = vec![0u8; window as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        if buf.last() != Some(&b'\n') {
            // Partial final line: cut back to the previous newline.
            len = match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => start + i as u64 + 1,
                None if start == 0 => 0,
                None => start, // a >1 MiB torn line: keep shrinking
            };
            continue;
        }
        // Complete final line: make sure it parses (a crash can leave zeroed blocks).
        let body = &buf[..buf.len() - 1];
        let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if line_start == 0 && start > 0 {
            break; // a very long valid-looking line; trust it
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body[line_start..]).is_ok() {
            break;
        }
        len = start + line_start as u64;
    }
    if len != original {
        file.set_len(len)?;
        file.sync_all()?;
        log::warn!(
            "loopai: {}: removed a torn tail of {} bytes left by an interrupted write",
            path.display(),
            original - len
        );
    }
    file.seek(SeekFrom::End(0))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_day;
    use crate::dataset::ExecutionStatus;
    use crate::testing::{TestClock, DAY1};
    use serde_json::json;

    #[derive(Default, Clone)]
    struct Counting(Arc<Mutex<(u64, u64, bool)>>);

    impl RecordObserver for Counting {
        fn execution(&mut self, _: &ExecutionRecord) {
            self.0.lock().0 += 1;
        }
        fn validation(&mut self, _: &ValidationRecord) {
            self.0.lock().1 += 1;
        }
        fn tick(&mut self, _: Timestamp) {}
        fn persist(&mut self, _: Timestamp) {}
        fn finish(&mut self, _: Timestamp) {
            self.0.lock().2 = true;
        }
    }

    fn record(i: u64, at: i64) -> ExecutionRecord {
        ExecutionRecord {
            execution_id: uuid::Uuid::from_u128(u128::from(i) + 1),
            task_id: "spam".into(),
            program_version: 1,
            input: json!({"text": format!("message {i}\nwith a newline")}),
            output: json!("ham"),
            confidence: 0.9,
            latency_ms: 0.002,
            status: ExecutionStatus::Success,
            error: None,
            sampled: false,
            source: crate::dataset::ExecutionSource::Program,
            timestamp: Timestamp(at),
        }
    }

    fn day1_clock() -> Arc<dyn Clock> {
        TestClock::at(DAY1)
    }

    fn writer(
        dir: &Path,
        options: WriterOptions,
        clock: Arc<dyn Clock>,
        obs: Counting,
    ) -> DatasetWriter {
        DatasetWriter::start(
            DatasetLayout::new(dir, "spam"),
            "spam",
            options,
            clock,
            vec![Box::new(obs)],
        )
        .unwrap()
    }

    fn opts(durable: bool) -> WriterOptions {
        WriterOptions {
            encryption: None,
            durable,
            drop_when_full: false,
            queue_capacity: 1024,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every line parses"))
            .collect()
    }

    #[test]
    fn records_are_whole_json_lines_in_the_days_file() {
        let dir = tempfile::tempdir().unwrap();
        let obs = Counting::default();
        let w = writer(dir.path(), opts(false), day1_clock(), obs.clone());
        for i in 0..10 {
            w.log_execution(record(i, DAY1 + 1000 * i as i64)).unwrap();
        }
        w.flush(Duration::from_secs(5)).unwrap();
        let file = DatasetLayout::new(dir.path(), "spam")
            .executions_file(parse_day("2025-11-25").unwrap());
        let got = lines(&file);
        assert_eq!(got.len(), 10);
        assert_eq!(got[3]["input"]["text"], "message 3\nwith a newline");
        assert_eq!(got[3]["timestamp"], "2025-11-25T00:00:03.000Z");
        assert_eq!(w.metrics().written, 10);
        assert!(w.metrics().syncs >= 1, "flush syncs");
        w.shutdown(Duration::from_secs(5)).unwrap();
        assert_eq!(*obs.0.lock(), (10, 0, true));
        w.shutdown(Duration::from_secs(1)).unwrap();
        let err = w.log_execution(record(99, DAY1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
    }

    #[test]
    fn torn_tail_is_truncated_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let file = layout.executions_file(parse_day("2025-11-25").unwrap());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let good = serde_json::to_string(&record(1, DAY1)).unwrap();
        // A whole line, then a line cut mid-write.
        std::fs::write(&file, format!("{good}\n{}", &good[..40])).unwrap();
        let w = writer(dir.path(), opts(true), day1_clock(), Counting::default());
        w.log_execution(record(2, DAY1 + 5)).unwrap();
        let got = lines(&file);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1]["execution_id"],
            record(2, 0).execution_id.to_string()
        );

        // A zero-filled tail with a newline (as a crash can leave) is also removed.
        drop(w);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(&[0u8; 100]);
        bytes.push(b'\n');
        std::fs::write(&file, bytes).unwrap();
        let w = writer(dir.path(), opts(true), day1_clock(), Counting::default());
        w.log_execution(record(3, DAY1 + 6)).unwrap();
        assert_eq!(lines(&file).len(), 3);
    }

    #[test]
    fn durable_mode_group_commits_concurrent_callers() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(writer(
            dir.path(),
            opts(true),
            day1_clock(),
            Counting::default(),
        ));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        w.log_execution(record(t * 1000 + i, DAY1)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let m = w.metrics();
        assert_eq!(m.written, 400);
        assert!(
            m.syncs < 400,
            "callers share fsyncs ({} syncs for 400 records)",
            m.syncs
        );
        let file = DatasetLayout::new(dir.path(), "spam")
            .executions_file(parse_day("2025-11-25").unwrap());
        assert_eq!(
            lines(&file).len(),
            400,
            "every acknowledged record is on disk"
        );
    }

    #[test]
    fn exact_counts_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let obs = Counting::default();
        let w = Arc::new(writer(dir.path(), opts(false), day1_clock(), obs.clone()));
        let per_thread = 20_000u64;
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        w.log_execution(record(t * per_thread + i, DAY1 + i as i64))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        w.shutdown(Duration::from_secs(30)).unwrap();
        let file = DatasetLayout::new(dir.path(), "spam")
            .executions_file(parse_day("2025-11-25").unwrap());
        let got = lines(&file);
        assert_eq!(got.len() as u64, 8 * per_thread);
        let ids: std::collections::HashSet<_> = got
            .iter()
            .map(|v| v["execution_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ids.len() as u64,
            8 * per_thread,
            "no record lost or doubled"
        );
        assert_eq!(obs.0.lock().0, 8 * per_thread);
    }

    #[test]
    fn a_full_queue_drops_and_counts_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let options = WriterOptions {
            encryption: None,
            durable: false,
            drop_when_full: true,
            queue_capacity: 1,
        };
        let w = writer(dir.path(), options, day1_clock(), Counting::default());
        for i in 0..20_000 {
            w.log_execution(record(i, DAY1)).unwrap();
        }
        w.flush(Duration::from_secs(5)).unwrap();
        let m = w.metrics();
        assert_eq!(m.accepted + m.dropped, 20_000);
        assert_eq!(m.written, m.accepted);
        let file = DatasetLayout::new(dir.path(), "spam")
            .executions_file(parse_day("2025-11-25").unwrap());
        assert_eq!(lines(&file).len() as u64, m.written);
    }

    #[test]
    fn records_go_to_the_file_of_their_utc_day() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::at(DAY1);
        let w = writer(dir.path(), opts(false), clock.clone(), Counting::default());
        w.log_execution(record(1, DAY1 + 86_399_999)).unwrap();
        clock.set(DAY1 + 86_400_000);
        w.log_execution(record(2, DAY1 + 86_400_000)).unwrap();
        w.log_validation(ValidationRecord::new(
            record(1, 0).execution_id,
            1,
            json!("ham"),
            120.0,
            0.0,
            true,
            1.0,
            "exact",
            Timestamp(DAY1 + 86_400_001),
        ))
        .unwrap();
        w.flush(Duration::from_secs(5)).unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        assert_eq!(
            lines(&layout.executions_file(parse_day("2025-11-25").unwrap())).len(),
            1
        );
        assert_eq!(
            lines(&layout.executions_file(parse_day("2025-11-26").unwrap())).len(),
            1
        );
        let v = lines(&layout.validations_file(parse_day("2025-11-26").unwrap()));
        assert_eq!(v[0]["match"], true);
    }

    #[test]
    fn late_records_for_compressible_days_go_to_todays_file() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::at(DAY1 + 3 * 86_400_000);
        let w = writer(dir.path(), opts(false), clock, Counting::default());
        w.log_execution(record(1, DAY1)).unwrap(); // three days old
        w.log_execution(record(2, DAY1 + 2 * 86_400_000)).unwrap(); // yesterday
        w.flush(Duration::from_secs(5)).unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        assert!(!layout
            .executions_file(parse_day("2025-11-25").unwrap())
            .exists());
        let today = lines(&layout.executions_file(parse_day("2025-11-28").unwrap()));
        assert_eq!(
            today[0]["timestamp"], "2025-11-25T00:00:00.000Z",
            "the record keeps its time"
        );
        assert_eq!(
            lines(&layout.executions_file(parse_day("2025-11-27").unwrap())).len(),
            1
        );
    }

    #[test]
    fn write_errors_are_reported_and_records_kept_for_retry() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let w = writer(dir.path(), opts(false), day1_clock(), Counting::default());
        // Make the day's file impossible to create: a directory in its place.
        let file = layout.executions_file(parse_day("2025-11-25").unwrap());
        std::fs::create_dir_all(&file).unwrap();
        w.log_execution(record(1, DAY1)).unwrap();
        let err = w.flush(Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.to_string().contains("2025-11-25.jsonl"), "{err}");
        assert!(!w.healthy());
        assert!(w.metrics().write_errors >= 1);
        assert_eq!(w.metrics().pending, 1);
        // Repair the disk: the kept record is written on retry.
        std::fs::remove_dir(&file).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.flush(Duration::from_secs(5)).is_err() {
            assert!(Instant::now() < deadline, "retry never succeeded");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(w.healthy());
        assert_eq!(lines(&file).len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_forked_child_does_not_wait_for_the_parents_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let obs = Counting::default();
        let w = writer(dir.path(), opts(false), day1_clock(), obs.clone());
        w.log_execution(record(0, DAY1)).unwrap();
        w.flush(Duration::from_secs(10)).unwrap();
        // SAFETY: the child shuts the writer down (atomics only once it sees the fork),
        // drops it and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // Without the fork check this waits the whole hour for a thread that is not here.
            let ok = w.shutdown(Duration::from_secs(3600)).is_ok()
                && w.log_execution(record(1, DAY1)).is_err();
            drop(w);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        crate::fork::expect_child_success(pid, "in the writer's shutdown");
        // The parent's writer is untouched by the child.
        w.log_execution(record(2, DAY1)).unwrap();
        w.shutdown(Duration::from_secs(10)).unwrap();
        assert_eq!(obs.0.lock().0, 2);
    }

    /// A disk with `free` bytes left: a write takes what fits, then fails as a full disk
    /// does; truncating gives the bytes back. `fail_sync` makes fsync fail.
    #[derive(Clone, Default)]
    struct SmallDisk {
        free: Arc<AtomicU64>,
        fail_sync: Arc<AtomicBool>,
    }

    impl SmallDisk {
        fn with_free(free: u64) -> SmallDisk {
            let disk = SmallDisk::default();
            disk.free.store(free, Ordering::SeqCst);
            disk
        }
    }

    struct SmallFile {
        file: File,
        disk: SmallDisk,
    }

    impl LogStorage for SmallDisk {
        fn open(&self, path: &Path) -> io::Result<(Box<dyn LogFile>, u64)> {
            let (file, len) = open_for_append(path)?;
            let disk = self.clone();
            Ok((Box::new(SmallFile { file, disk }), len))
        }
    }

    impl LogFile for SmallFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let free = self.disk.free.load(Ordering::SeqCst);
            if free == 0 {
                return Err(io::Error::other("No space left on device (simulated)"));
            }
            let n = Write::write(&mut self.file, &buf[..buf.len().min(free as usize)])?;
            self.disk.free.fetch_sub(n as u64, Ordering::SeqCst);
            Ok(n)
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            let old = self.file.metadata()?.len();
            self.file.set_len(len)?;
            self.disk
                .free
                .fetch_add(old.saturating_sub(len), Ordering::SeqCst);
            Ok(())
        }

        fn sync_data(&mut self) -> io::Result<()> {
            if self.disk.fail_sync.load(Ordering::SeqCst) {
                return Err(io::Error::other("fsync failed (simulated)"));
            }
            self.file.sync_data()
        }
    }

    fn small_disk_writer(
        dir: &Path,
        options: WriterOptions,
        disk: &SmallDisk,
        obs: Counting,
    ) -> DatasetWriter {
        DatasetWriter::start_with(
            DatasetLayout::new(dir, "spam"),
            "spam",
            options,
            day1_clock(),
            vec![Box::new(obs)],
            Arc::new(disk.clone()),
        )
        .unwrap()
    }

    /// Polls `done` every 10 ms for at most 30 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn line_len(i: u64) -> u64 {
        serde_json::to_vec(&record(i, DAY1)).unwrap().len() as u64 + 1
    }

    #[test]
    fn no_commit_retries_before_the_backoff_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let disk = SmallDisk::with_free(0);
        let shared = Arc::new(Shared::default());
        let layout = DatasetLayout::new(dir.path(), "spam");
        std::fs::create_dir_all(layout.executions_dir()).unwrap();
        let mut state = WriterState::new(
            layout.clone(),
            false,
            day1_clock(),
            Vec::new(),
            shared.clone(),
            Arc::new(disk.clone()),
        );
        state.backoff = Duration::from_secs(3600);
        let day = parse_day("2025-11-25").unwrap();
        state.append(
            Kind::Executions,
            day,
            Observed::Execution(record(1, DAY1), None),
        );
        assert!(state.commit(true, false).is_err());
        assert_eq!(shared.write_errors.load(Ordering::SeqCst), 1);
        // The disk has room again, but within the backoff neither the periodic sync nor a
        // durable batch or a flush (all `commit(true, _)`) makes an attempt.
        disk.free.store(u64::MAX, Ordering::SeqCst);
        for _ in 0..50 {
            let err = state.commit(true, false).unwrap_err();
            assert!(
                err.contains("No space left") && err.contains("next attempt in"),
                "{err}"
            );
        }
        assert_eq!(shared.write_errors.load(Ordering::SeqCst), 1);
        assert_eq!(shared.written.load(Ordering::SeqCst), 0);
        // The last commit of a shutdown tries regardless.
        state.commit(true, true).unwrap();
        assert_eq!(lines(&layout.executions_file(day)).len(), 1);
    }

    #[test]
    fn a_failing_disk_is_retried_with_backoff_not_at_every_periodic_sync() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let w = writer(dir.path(), opts(false), day1_clock(), Counting::default());
        let file = layout.executions_file(parse_day("2025-11-25").unwrap());
        std::fs::create_dir_all(&file).unwrap();
        w.log_execution(record(1, DAY1)).unwrap();
        // 8 s idle: the backoff (50 ms doubling to 5 s) allows 8 attempts; the periodic
        // sync used to force one every 100 ms once 5 s had passed (~35 attempts). A loaded
        // machine can only make fewer.
        std::thread::sleep(Duration::from_secs(8));
        let attempts = w.metrics().write_errors;
        eprintln!("failed write attempts in 8 s idle: {attempts}");
        assert!((1..=9).contains(&attempts), "{attempts} attempts in 8 s");
    }

    #[test]
    fn a_disk_with_room_for_part_of_the_backlog_takes_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let file = layout.executions_file(parse_day("2025-11-25").unwrap());
        let disk = SmallDisk::with_free(0);
        let obs = Counting::default();
        let w = small_disk_writer(dir.path(), opts(false), &disk, obs.clone());
        for i in 0..30 {
            w.log_execution(record(i, DAY1)).unwrap();
        }
        assert!(w.flush(Duration::from_secs(5)).is_err());
        assert!(!w.healthy());
        // Room for 10 records and half of the 11th.
        let room: u64 = (0..10).map(line_len).sum::<u64>() + line_len(10) / 2;
        disk.free.store(room, Ordering::SeqCst);
        eventually("10 records written", || w.metrics().written >= 10);
        let got = lines(&file);
        assert_eq!(got.len(), 10);
        for (i, line) in got.iter().enumerate() {
            assert_eq!(
                line["input"]["text"],
                format!("message {i}\nwith a newline")
            );
        }
        let m = w.metrics();
        assert_eq!((m.written, m.pending), (10, 20));
        assert!(!w.healthy() && m.last_error.is_some());
        // The torn half line was cut off and its bytes given back.
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            (0..10).map(line_len).sum::<u64>()
        );
        // Room for everything: health recovers once the backlog is drained.
        disk.free.store(u64::MAX, Ordering::SeqCst);
        eventually("healthy again", || w.healthy());
        let m = w.metrics();
        assert_eq!((m.written, m.pending, m.last_error), (30, 0, None));
        let got = lines(&file);
        assert_eq!(got.len(), 30);
        for (i, line) in got.iter().enumerate() {
            assert_eq!(
                line["input"]["text"],
                format!("message {i}\nwith a newline")
            );
        }
        w.shutdown(Duration::from_secs(10)).unwrap();
        assert_eq!(obs.0.lock().0, 30);
    }

    #[test]
    fn observers_see_only_records_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let disk = SmallDisk::with_free(0);
        let obs = Counting::default();
        let w = small_disk_writer(dir.path(), opts(false), &disk, obs.clone());
        for i in 0..5 {
            w.log_execution(record(i, DAY1)).unwrap();
        }
        assert!(w.flush(Duration::from_secs(5)).is_err());
        assert_eq!(
            obs.0.lock().0,
            0,
            "observers saw records that are not in the log"
        );
        disk.free.store(line_len(0) + line_len(1), Ordering::SeqCst);
        eventually("2 records written", || w.metrics().written >= 2);
        assert_eq!(obs.0.lock().0, 2);
        disk.free.store(u64::MAX, Ordering::SeqCst);
        eventually("all written", || w.metrics().written == 5);
        w.shutdown(Duration::from_secs(10)).unwrap();
        assert_eq!(obs.0.lock().0, 5);
    }

    #[test]
    fn a_record_never_written_never_reaches_the_observers() {
        let dir = tempfile::tempdir().unwrap();
        let disk = SmallDisk::with_free(0);
        let obs = Counting::default();
        let w = small_disk_writer(dir.path(), opts(false), &disk, obs.clone());
        w.log_execution(record(1, DAY1)).unwrap();
        let err = w.shutdown(Duration::from_secs(10)).unwrap_err();
        assert!(
            err.to_string().contains("1 records could not be written"),
            "{err}"
        );
        let seen = obs.0.lock();
        assert_eq!((seen.0, seen.2), (0, true));
    }

    #[test]
    fn durable_observers_see_a_record_only_once_it_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let disk = SmallDisk::with_free(u64::MAX);
        disk.fail_sync.store(true, Ordering::SeqCst);
        let obs = Counting::default();
        let w = small_disk_writer(dir.path(), opts(true), &disk, obs.clone());
        let err = w.log_execution(record(1, DAY1)).unwrap_err();
        assert!(err.to_string().contains("fsync failed"), "{err}");
        assert_eq!(w.metrics().written, 1);
        assert_eq!(
            obs.0.lock().0,
            0,
            "observers saw a record that is not synced"
        );
        disk.fail_sync.store(false, Ordering::SeqCst);
        eventually("synced and observed", || obs.0.lock().0 == 1);
        assert!(w.healthy());
        w.shutdown(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn writer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DatasetWriter>();
    }
}
