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
//! block`) or the record is counted as dropped (`on_full: drop`). A failed write is rolled
//! back to the last complete line, reported (metrics, `log`, health) and retried with
//! backoff; while it fails, records stay in memory up to a bound and then the queue fills.

use std::collections::HashMap;
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

/// Sees every record the writer thread writes, on that thread: the daily analytics and the
/// telemetry queue.
pub(crate) trait RecordObserver: Send {
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
}

enum Msg {
    Execution(ExecutionRecord),
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
        create_dir_all_durable(&layout.executions_dir())?;
        create_dir_all_durable(&layout.validations_dir())?;
        let (tx, rx) = bounded(options.queue_capacity.max(1));
        let (exited_tx, exited) = bounded(1);
        let fork_generation = crate::fork::generation();
        let shared = Arc::new(Shared::default());
        let mut state = WriterState::new(layout, options.durable, clock, observers, shared.clone());
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
        self.log(Msg::Execution(record))
    }

    /// Queues a validation record (same durability rules as executions).
    pub(crate) fn log_validation(&self, record: ValidationRecord) -> Result<()> {
        self.log(Msg::Validation(record))
    }

    fn log(&self, msg: Msg) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "the dataset writer is shut down",
            ));
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
            Err(()) => Err(Error::new(
                ErrorKind::Closed,
                "the dataset writer is shut down",
            )),
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
                    Error::new(ErrorKind::Closed, "the dataset writer is shut down")
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
    file: File,
    path: PathBuf,
    len: u64,
    unsynced: bool,
}

/// Bytes waiting to be appended to one file.
struct Pending {
    key: (Kind, Date),
    bytes: Vec<u8>,
    /// Sequence number of the first record in `bytes`.
    first_seq: u64,
    records: u64,
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
    last_sync: Instant,
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
    ) -> WriterState {
        WriterState {
            observers,
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
                    Msg::Execution(r) => {
                        for o in &mut self.observers {
                            o.execution(&r);
                        }
                        self.append(Kind::Executions, r.timestamp.day(), &r);
                    }
                    Msg::Validation(r) => {
                        for o in &mut self.observers {
                            o.validation(&r);
                        }
                        self.append(Kind::Validations, r.validated_at.day(), &r);
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
            let result = self.commit(must_sync);
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
            let unwritten: u64 = self.pending.iter().map(|p| p.records).sum();
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

    fn append<T: serde::Serialize>(&mut self, kind: Kind, day: Date, record: &T) {
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
                self.pending.push(Pending {
                    key,
                    bytes: Vec::with_capacity(64 << 10),
                    first_seq: self.seq,
                    records: 0,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[idx];
        if p.records == 0 {
            p.first_seq = self.seq;
        }
        let before = p.bytes.len();
        // serde_json escapes control characters: a record is always exactly one line.
        if serde_json::to_writer(&mut p.bytes, record).is_ok() {
            p.bytes.push(b'\n');
            p.records += 1;
            self.pending_bytes += p.bytes.len() - before;
        } else {
            p.bytes.truncate(before);
            log::error!("loopai: a dataset record could not be serialized and was skipped");
        }
    }

    /// Writes pending bytes and, if asked, fsyncs; then publishes progress.
    fn commit(&mut self, sync: bool) -> std::result::Result<(), String> {
        if let Some(at) = self.retry_at {
            if Instant::now() < at && !sync {
                return Err(self
                    .shared
                    .progress
                    .lock()
                    .last_error
                    .clone()
                    .unwrap_or_default());
            }
        }
        let mut error: Option<String> = None;
        let mut written = 0u64;
        for i in 0..self.pending.len() {
            if self.pending[i].records == 0 {
                continue;
            }
            let key = self.pending[i].key;
            match self.write_pending(i) {
                Ok(()) => {
                    let p = &mut self.pending[i];
                    written += p.records;
                    self.pending_bytes -= p.bytes.len();
                    p.bytes.clear();
                    p.records = 0;
                }
                Err(e) => {
                    let path = self.path_for(key);
                    error = Some(format!("{}: {e}", path.display()));
                }
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
        self.pending.retain(|p| p.records > 0 || p.key.1 >= today);
        self.close_old_files();

        let mut progress = self.shared.progress.lock();
        match &error {
            None => {
                let lowest_unsynced = self
                    .pending
                    .iter()
                    .filter(|p| p.records > 0)
                    .map(|p| p.first_seq)
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

    fn now(&self) -> Timestamp {
        Timestamp(self.clock.now_millis())
    }

    fn path_for(&self, (kind, day): (Kind, Date)) -> PathBuf {
        match kind {
            Kind::Executions => self.layout.executions_file(day),
            Kind::Validations => self.layout.validations_file(day),
        }
    }

    fn write_pending(&mut self, i: usize) -> io::Result<()> {
        let key = self.pending[i].key;
        if !self.files.contains_key(&key) {
            let path = self.path_for(key);
            let file = open_for_append(&path)?;
            self.files.insert(key, file);
        }
        let f = self.files.get_mut(&key).expect("just inserted");
        let bytes = &self.pending[i].bytes;
        match f.file.write_all(bytes) {
            Ok(()) => {
                f.len += bytes.len() as u64;
                f.unsynced = true;
                Ok(())
            }
            Err(e) => {
                // Roll back a partial line so the file stays whole lines; reopen next time.
                let _ = f.file.set_len(f.len);
                self.files.remove(&key);
                Err(e)
            }
        }
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
fn open_for_append(path: &Path) -> io::Result<OpenFile> {
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
    Ok(OpenFile {
        file,
        path: path.to_path_buf(),
        len,
        unsynced: false,
    })
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
    use serde_json::json;
    use std::sync::atomic::AtomicI64;

    #[derive(Debug)]
    struct FixedClock(AtomicI64);

    impl Clock for FixedClock {
        fn now_millis(&self) -> i64 {
            self.0.load(Ordering::Relaxed)
        }
    }

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

    const DAY1: i64 = 1_764_028_800_000; // 2025-11-25T00:00:00Z

    fn day1_clock() -> Arc<dyn Clock> {
        Arc::new(FixedClock(AtomicI64::new(DAY1)))
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
        let clock = Arc::new(FixedClock(AtomicI64::new(DAY1)));
        let w = writer(dir.path(), opts(false), clock.clone(), Counting::default());
        w.log_execution(record(1, DAY1 + 86_399_999)).unwrap();
        clock.0.store(DAY1 + 86_400_000, Ordering::Relaxed);
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
        let clock = Arc::new(FixedClock(AtomicI64::new(DAY1 + 3 * 86_400_000)));
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

    #[test]
    fn writer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DatasetWriter>();
    }
}
