//! Durable storage of telemetry batches: `<dir>/telemetry/<task_id>/YYYY-MM-DD.jsonl`, one
//! batch per line, with a `batch_id` index rebuilt from the files at startup.
//!
//! Invariants:
//! * every file holds whole lines only: a line is written with a single `write_all` of
//!   `json + "\n"` and fsynced before the request is answered; a failed write is cut off
//!   again, and a torn tail left by a crash is cut off when the store is opened (and,
//!   should cutting it off have failed, before the next append to that file);
//! * a `batch_id` is stored at most once: the index and the append happen under one lock,
//!   so concurrent uploads of the same batch store it once and the others see a duplicate;
//! * the index is exactly the set of `batch_id`s in the files, so it survives a restart.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loopai_core::{day_string, parse_day, validate_task_id, Clock};
use parking_lot::Mutex;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::storage::{Appended, NewBatch, TelemetryBackend};

/// What opening the store found.
#[derive(Debug, Default)]
pub(crate) struct OpenReport {
    /// Batch files scanned.
    pub(crate) files: usize,
    /// Distinct batch ids indexed.
    pub(crate) batches: usize,
    /// Files whose torn tail was cut off, with the number of bytes removed.
    pub(crate) repaired: Vec<(PathBuf, u64)>,
    /// Complete lines that are not a JSON object with a string `batch_id` (left in place,
    /// not indexed).
    pub(crate) unreadable_lines: usize,
}

#[derive(Debug)]
struct State {
    seen: HashSet<String>,
}

/// The telemetry batches under `<dir>/telemetry/`.
#[derive(Debug)]
pub(crate) struct TelemetryStore {
    root: PathBuf,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Deserialize)]
struct BatchIdOnly {
    batch_id: String,
}

impl TelemetryStore {
    /// Opens (creating) `<dir>/telemetry/`, cuts off torn tails and indexes every stored
    /// `batch_id`.
    pub(crate) fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<(TelemetryStore, OpenReport)> {
        let root = dir.join("telemetry");
        create_dir_durable(&root).map_err(|e| Error::io(root.display(), e))?;
        let mut report = OpenReport::default();
        let mut seen = HashSet::new();
        let tasks = fs::read_dir(&root).map_err(|e| Error::io(root.display(), e))?;
        for task in tasks {
            let task = task.map_err(|e| Error::io(root.display(), e))?;
            let task_dir = task.path();
            let name = task.file_name();
            let Some(name) = name.to_str() else { continue };
            if !task_dir.is_dir() || validate_task_id(name).is_err() {
                continue;
            }
            let files = fs::read_dir(&task_dir).map_err(|e| Error::io(task_dir.display(), e))?;
            for file in files {
                let file = file.map_err(|e| Error::io(task_dir.display(), e))?;
                let path = file.path();
                if !is_batch_file(&path) {
                    continue;
                }
                report.files += 1;
                scan_file(&path, &mut seen, &mut report)
                    .map_err(|e| Error::io(path.display(), e))?;
            }
        }
        report.batches = seen.len();
        Ok((
            TelemetryStore {
                root,
                clock,
                state: Mutex::new(State { seen }),
            },
            report,
        ))
    }

    /// The number of distinct batches stored.
    pub(crate) fn batches(&self) -> usize {
        self.state.lock().seen.len()
    }

    /// Appends `line` (one JSON document without a newline) for `task_id` unless
    /// `batch_id` is already stored. Returns once the line is on disk.
    ///
    /// `task_id` must have passed [`validate_task_id`] (it becomes a directory name).
    pub(crate) fn append(
        &self,
        batch_id: &str,
        task_id: &str,
        line: &[u8],
    ) -> io::Result<Appended> {
        debug_assert!(!line.contains(&b'\n'));
        let mut state = self.state.lock();
        if state.seen.contains(batch_id) {
            return Ok(Appended::Duplicate);
        }
        let millis = self.clock.now_millis();
        let day = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
            .map_err(|e| io::Error::other(format!("clock out of range: {e}")))?
            .date();
        let task_dir = self.root.join(task_id);
        create_dir_durable(&task_dir)?;
        let path = task_dir.join(format!("{}.jsonl", day_string(day)));
        append_line(&path, line)?;
        state.seen.insert(batch_id.to_owned());
        Ok(Appended::Accepted(path.display().to_string()))
    }
}

impl TelemetryBackend for TelemetryStore {
    fn append(&self, batch: &NewBatch<'_>) -> Result<Appended> {
        TelemetryStore::append(self, batch.batch_id, batch.task_id, batch.line)
            .map_err(|e| Error::io(format!("{}/{}", self.root.display(), batch.task_id), e))
    }

    fn batches(&self) -> Result<u64> {
        Ok(TelemetryStore::batches(self) as u64)
    }
}

/// `YYYY-MM-DD.jsonl` with a valid date.
fn is_batch_file(path: &Path) -> bool {
    path.is_file()
        && path.extension().is_some_and(|e| e == "jsonl")
        && path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(parse_day)
            .is_some()
}

/// Indexes the complete lines of `path` and cuts off an incomplete last line.
fn scan_file(path: &Path, seen: &mut HashSet<String>, report: &mut OpenReport) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let total = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 16, &file);
    let mut line = Vec::new();
    let mut complete: u64 = 0;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        complete += n as u64;
        match serde_json::from_slice::<BatchIdOnly>(&line) {
            Ok(b) => {
                seen.insert(b.batch_id);
            }
            Err(e) => {
                report.unreadable_lines += 1;
                log::warn!(
                    "{}: line ending at byte {complete} is not a batch ({e}); left in place, not indexed",
                    path.display()
                );
            }
        }
    }
    drop(reader);
    if complete < total {
        file.set_len(complete)?;
        file.sync_all()?;
        report.repaired.push((path.to_path_buf(), total - complete));
    }
    Ok(())
}

/// Appends `line + "\n"` to `path` and fsyncs it; on failure the file is cut back to its
/// previous length. A file that does not end with a newline (a cut that failed earlier) is
/// repaired first.
fn append_line(path: &Path, line: &[u8]) -> io::Result<()> {
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut len = file.metadata()?.len();
    if len > 0 {
        file.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            len = last_newline_end(&mut file, len)?;
            file.set_len(len)?;
            log::warn!(
                "{}: cut off an incomplete last line before appending",
                path.display()
            );
        }
    }
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line);
    buf.push(b'\n');
    let written = file.write_all(&buf).and_then(|()| file.sync_data());
    if let Err(e) = written {
        if let Err(cut) = file.set_len(len).and_then(|()| file.sync_data()) {
            log::error!(
                "{}: could not cut off a failed append ({cut}); it will be cut before the next one",
                path.display()
            );
        }
        return Err(e);
    }
    if created {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// The length of `file` up to and including its last newline (0 if it has none).
fn last_newline_end(file: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 1 << 16];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates `dir` (and its parents) and makes the new entry durable.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    sync_dir(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(i64);
    impl Clock for Fixed {
        fn now_millis(&self) -> i64 {
            self.0
        }
    }

    // 2026-11-25T23:59:59.999Z
    const LATE: i64 = 1_795_651_199_999;

    #[test]
    fn lines_go_to_the_utc_day_of_receipt_and_duplicates_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = TelemetryStore::open(dir.path(), Arc::new(Fixed(LATE))).unwrap();
        let got = store
            .append("b1", "spam", b"{\"batch_id\":\"b1\"}")
            .unwrap();
        let path = dir.path().join("telemetry/spam/2026-11-25.jsonl");
        assert_eq!(got, Appended::Accepted(path.display().to_string()));
        assert_eq!(
            store
                .append("b1", "spam", b"{\"batch_id\":\"b1\"}")
                .unwrap(),
            Appended::Duplicate
        );
        let (store, _) = TelemetryStore::open(dir.path(), Arc::new(Fixed(LATE + 1))).unwrap();
        assert_eq!(
            store
                .append("b1", "spam", b"{\"batch_id\":\"b1\"}")
                .unwrap(),
            Appended::Duplicate
        );
        let got = store
            .append("b2", "spam", b"{\"batch_id\":\"b2\"}")
            .unwrap();
        assert_eq!(
            got,
            Appended::Accepted(
                dir.path()
                    .join("telemetry/spam/2026-11-26.jsonl")
                    .display()
                    .to_string()
            )
        );
        assert_eq!(fs::read_to_string(path).unwrap(), "{\"batch_id\":\"b1\"}\n");
    }

    #[test]
    fn an_incomplete_last_line_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        fs::write(&path, "{\"batch_id\":\"a\"}\n{\"batch_id\":\"b").unwrap();
        append_line(&path, b"{\"batch_id\":\"c\"}").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"batch_id\":\"a\"}\n{\"batch_id\":\"c\"}\n"
        );
        fs::write(&path, "no newline at all").unwrap();
        append_line(&path, b"{}").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn open_cuts_torn_tails_and_keeps_unreadable_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("telemetry/spam");
        fs::create_dir_all(&task).unwrap();
        fs::write(
            task.join("2026-11-24.jsonl"),
            "{\"batch_id\":\"a\"}\nnot json\n{\"batch_id\":\"b\",\"x\":[1,",
        )
        .unwrap();
        fs::write(task.join("notes.txt"), "ignored").unwrap();
        let (store, report) = TelemetryStore::open(dir.path(), Arc::new(Fixed(LATE))).unwrap();
        assert_eq!(report.files, 1);
        assert_eq!(report.batches, 1);
        assert_eq!(report.unreadable_lines, 1);
        assert_eq!(report.repaired.len(), 1);
        assert_eq!(
            report.repaired[0].1,
            "{\"batch_id\":\"b\",\"x\":[1,".len() as u64
        );
        assert_eq!(
            fs::read_to_string(task.join("2026-11-24.jsonl")).unwrap(),
            "{\"batch_id\":\"a\"}\nnot json\n"
        );
        assert_eq!(
            store.append("a", "spam", b"{}").unwrap(),
            Appended::Duplicate
        );
        assert!(matches!(
            store.append("b", "spam", b"{}").unwrap(),
            Appended::Accepted(_)
        ));
    }
}
