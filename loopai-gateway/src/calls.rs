//! The gateway's call log, `<data_dir>/datasets/<task>/gateway/calls-YYYY-MM-DD.jsonl`:
//! the record of a call, the background writer, and reading it back.
//!
//! With `storage.encryption` the files are encrypted as the dataset's logs are (one
//! AES-256-GCM frame per record, `loopai_core::LogSealer`); reading takes plain and
//! encrypted files alike.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use loopai_core::{
    day_string, open_log_or_plain, DatasetLayout, Error, ErrorKind, KeyRing, LogSealer, Result,
    Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Lines queued for the writer at most; more are dropped and counted.
pub(crate) const QUEUE: usize = 8192;
/// While records keep coming, the writer naps this long between rounds instead of parking
/// on the queue: a request then enqueues its record without waking a thread (a futex call
/// on the request path per record otherwise), and rounds are written out in one go.
const BUSY_NAP: Duration = Duration::from_millis(1);
/// With nothing queued, how long the writer parks before it writes out what it buffered.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// What the program answered on a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramAnswer {
    /// The artifact version that ran.
    pub version: u32,
    /// Its output (a label, or null when it abstained without one).
    pub output: Value,
    /// Its confidence.
    pub confidence: f64,
    /// For a task of three labels or more, the margin between its two highest per-label
    /// scores: the calibration score the threshold applies to (absent for two labels,
    /// where the confidence is; and in records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
}

impl ProgramAnswer {
    /// The calibration score the task's threshold applies to: the margin when there is
    /// one, else the confidence.
    pub fn score(&self) -> f64 {
        self.margin.unwrap_or(self.confidence)
    }
}

/// `call` or `validation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// A call answered by the program or forwarded.
    Call,
    /// The upstream's answer on a call the program answered, asked in the background.
    Validation,
}

/// Who answered a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The program, locally.
    Program,
    /// The upstream LLM.
    Oracle,
}

/// One line of the call log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallRecord {
    /// The call's id (the execution id when the program answered).
    pub id: Uuid,
    /// When the call was recorded.
    pub timestamp: Timestamp,
    /// `call` or `validation`.
    pub kind: CallKind,
    /// Who answered the client.
    pub source: Source,
    /// The program's input.
    pub input: Value,
    /// The oracle's answer normalised to a label (a string), or for an extraction task
    /// to an object of the output's fields (null when it answered outside the labels or
    /// the schema, or did not answer).
    pub label: Option<Value>,
    /// Whether the oracle answered outside the label set (or, for an extraction task, not
    /// with a JSON object of the output's fields).
    pub outside_labels: bool,
    /// What the program answered, when it ran.
    pub program: Option<ProgramAnswer>,
    /// Time in the program, in milliseconds.
    pub program_latency_ms: Option<f64>,
    /// Time of the upstream call, in milliseconds.
    pub upstream_latency_ms: Option<f64>,
    /// The upstream's `usage.total_tokens`.
    pub upstream_tokens: Option<u64>,
}

/// `datasets/<task>/gateway/`.
pub(crate) fn calls_dir(data_dir: &Path, task: &str) -> PathBuf {
    DatasetLayout::new(data_dir, task).root().join("gateway")
}

enum Msg {
    /// A record, serialized by the writer thread (not on the request path).
    Line(usize, Box<CallRecord>),
    Flush(Sender<()>),
    Stop,
}

/// The background writer of every task's call log.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Sender<MsgBox>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) write_errors: Arc<AtomicU64>,
}

/// `Msg` behind a newtype so that `Writer` can derive `Debug`.
struct MsgBox(Msg);

impl std::fmt::Debug for MsgBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Writer {
    /// Starts the writer thread for the tasks' directories (index = task index); with
    /// `keys` (`storage.encryption`) the files are encrypted.
    pub(crate) fn start(
        dirs: Vec<PathBuf>,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<(Writer, JoinHandle<()>)> {
        let (tx, rx) = bounded::<MsgBox>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let write_errors = Arc::new(AtomicU64::new(0));
        let errors = Arc::clone(&write_errors);
        let handle = std::thread::Builder::new()
            .name("loopai-gateway-log".into())
            .spawn(move || write_loop(&dirs, keys.as_deref(), &rx, &errors))
            .map_err(|e| Error::io("starting the gateway log thread", e))?;
        Ok((
            Writer {
                tx,
                dropped,
                write_errors,
            },
            handle,
        ))
    }

    /// Queues a record of task `index`; drops and counts it when the queue is full.
    pub(crate) fn push(&self, index: usize, record: CallRecord) {
        match self.tx.try_send(MsgBox(Msg::Line(index, Box::new(record)))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn flush(&self, timeout: Duration) -> Result<()> {
        let (done_tx, done_rx) = bounded(1);
        let deadline = Instant::now() + timeout;
        self.tx
            .send_deadline(MsgBox(Msg::Flush(done_tx)), deadline)
            .map_err(|_| timeout_error())?;
        done_rx.recv_deadline(deadline).map_err(|_| timeout_error())
    }

    /// Stops the writer: it writes what is queued before, then exits.
    pub(crate) fn stop(&self) {
        let _ = self
            .tx
            .send_timeout(MsgBox(Msg::Stop), Duration::from_secs(1));
    }
}

fn timeout_error() -> Error {
    Error::new(
        ErrorKind::Timeout,
        "gateway call log: not written within the timeout",
    )
}

/// A day's file open for appending: its day, the file, and with encryption its sealer.
type OpenDay = (String, BufWriter<File>, Option<LogSealer>);

fn write_loop(dirs: &[PathBuf], keys: Option<&KeyRing>, rx: &Receiver<MsgBox>, errors: &AtomicU64) {
    let mut open: HashMap<usize, OpenDay> = HashMap::new();
    let mut sealed = Vec::new();
    let mut busy = false;
    loop {
        let msg = if busy {
            match rx.try_recv() {
                Ok(MsgBox(msg)) => msg,
                Err(TryRecvError::Empty) => {
                    // The round is drained: write it out, then nap rather than park while
                    // records keep coming.
                    flush_all(&mut open, errors);
                    std::thread::sleep(BUSY_NAP);
                    match rx.try_recv() {
                        Ok(MsgBox(msg)) => msg,
                        Err(TryRecvError::Empty) => {
                            busy = false;
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.recv_timeout(IDLE_TICK) {
                Ok(MsgBox(msg)) => {
                    busy = true;
                    msg
                }
                Err(RecvTimeoutError::Timeout) => {
                    flush_all(&mut open, errors);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        match msg {
            Msg::Line(index, record) => {
                let ts = record.timestamp;
                let mut line = match serde_json::to_vec(&record) {
                    Ok(line) => line,
                    Err(e) => {
                        log::warn!("loopai gateway: could not serialize a call record: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                line.push(b'\n');
                let Some(dir) = dirs.get(index) else { continue };
                let day = day_string(ts.day());
                let stale = open.get(&index).is_none_or(|(d, _, _)| *d != day);
                if stale {
                    if let Some((_, mut w, _)) = open.remove(&index) {
                        let _ = w.flush();
                    }
                    match open_day(dir, &day, keys) {
                        Ok((w, sealer)) => {
                            open.insert(index, (day, w, sealer));
                        }
                        Err(e) => {
                            log::warn!("loopai gateway: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                if let Some((_, w, sealer)) = open.get_mut(&index) {
                    let bytes = match sealer {
                        None => &line,
                        Some(sealer) => {
                            sealed.clear();
                            if let Err(e) = sealer.seal_into(&line, &mut sealed) {
                                log::warn!("loopai gateway: encrypting a call record: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            &sealed
                        }
                    };
                    if let Err(e) = w.write_all(bytes) {
                        log::warn!("loopai gateway: writing the call log: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Msg::Flush(done) => {
                flush_all(&mut open, errors);
                let _ = done.send(());
            }
            Msg::Stop => break,
        }
    }
    flush_all(&mut open, errors);
}

fn flush_all(open: &mut HashMap<usize, OpenDay>, errors: &AtomicU64) {
    for (_, w, _) in open.values_mut() {
        if let Err(e) = w.flush() {
            log::warn!("loopai gateway: flushing the call log: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens a day's file for appending. With `keys` it is prepared as the dataset writer
/// prepares its logs ([`LogSealer::open_append`]: a file written in clear or with an old
/// key is first rewritten with the current one, a torn tail is cut) and records are sealed.
fn open_day(
    dir: &Path,
    day: &str,
    keys: Option<&KeyRing>,
) -> Result<(BufWriter<File>, Option<LogSealer>)> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(format!("calls-{day}.jsonl"));
    if let Some(keys) = keys {
        let (file, sealer) = LogSealer::open_append(&path, keys)?;
        return Ok((BufWriter::with_capacity(64 * 1024, file), Some(sealer)));
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    Ok((BufWriter::with_capacity(64 * 1024, file), None))
}

/// Every record of `task`'s call log, oldest day first. A torn last line (a crash while
/// writing) is skipped; other unreadable lines are errors naming file and line.
///
/// Files may be plain or encrypted (`storage.encryption`, read with `keys`): an encrypted
/// file's torn last frame is skipped as a torn line is; a damaged frame before it, an
/// encrypted file without `keys` or of a key not among them is an error naming the file.
pub(crate) fn read_all(
    data_dir: &Path,
    task: &str,
    keys: Option<&KeyRing>,
) -> Result<Vec<CallRecord>> {
    let dir = calls_dir(data_dir, task);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("calls-") && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let text = open_log_or_plain(&bytes, keys, &path.display().to_string())?;
        let text = text.strip_suffix(b"\n").unwrap_or(&text);
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        let last = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<CallRecord>(line) {
                Ok(r) => out.push(r),
                Err(_) if i + 1 == last => {}
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("{}:{}: {e}", path.display(), i + 1),
                    ))
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> CallRecord {
        CallRecord {
            id: Uuid::from_u64_pair(0, n),
            // 2026-12-07, noon UTC: every record of the test on one day's file.
            timestamp: Timestamp(1_796_644_800_000),
            kind: CallKind::Call,
            source: Source::Oracle,
            input: serde_json::json!({ "text": format!("call {n}") }),
            label: Some(Value::String("spam".into())),
            outside_labels: false,
            program: None,
            program_latency_ms: None,
            upstream_latency_ms: Some(1.0),
            upstream_tokens: None,
        }
    }

    #[test]
    fn bursts_from_many_threads_and_lone_records_after_idle_are_all_written() {
        let data = tempfile::tempdir().unwrap();
        let dirs = vec![calls_dir(data.path(), "t")];
        let (writer, handle) = Writer::start(dirs, None).unwrap();
        // A burst from 4 threads (the writer naps between rounds instead of parking).
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let writer = &writer;
                s.spawn(move || {
                    for i in 0..1500 {
                        writer.push(0, record(t * 10_000 + i));
                    }
                });
            }
        });
        writer.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(writer.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(read_all(data.path(), "t", None).unwrap().len(), 6000);
        // Idle long enough for the writer to park again, then one record: written out
        // without a flush being asked (the writer writes a drained round at once).
        std::thread::sleep(IDLE_TICK + BUSY_NAP * 10);
        writer.push(0, record(99_999));
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_all(data.path(), "t", None).unwrap().len() < 6001 {
            assert!(
                Instant::now() < deadline,
                "a lone record was not written out"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ids: std::collections::HashSet<Uuid> = read_all(data.path(), "t", None)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids.len(), 6001);
        writer.stop();
        handle.join().unwrap();
    }

    #[test]
    fn the_margin_is_the_score_when_kept_and_older_records_still_read() {
        let with: ProgramAnswer =
            serde_json::from_str(r#"{"version":2,"output":"fr","confidence":0.9,"margin":0.3}"#)
                .unwrap();
        assert_eq!((with.margin, with.score()), (Some(0.3), 0.3));
        let older: ProgramAnswer =
            serde_json::from_str(r#"{"version":2,"output":"fr","confidence":0.9}"#).unwrap();
        assert_eq!((older.margin, older.score()), (None, 0.9));
        // Two labels: no margin written, the line is as before.
        let binary = ProgramAnswer {
            margin: None,
            ..older
        };
        assert_eq!(
            serde_json::to_string(&binary).unwrap(),
            r#"{"version":2,"output":"fr","confidence":0.9}"#
        );
    }
}
