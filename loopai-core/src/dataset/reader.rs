//! Reading a task's dataset: records over a date range, plain or gzip-compressed, and
//! the daily statistics.
//!
//! ## Which file is read for a day
//!
//! A day's executions live in `executions/YYYY-MM-DD.jsonl` until retention compresses
//! them into `executions/YYYY-MM-DD.jsonl.gz`. Compression writes the `.gz` under a
//! temporary name, fsyncs it and renames it into place, so **a `.gz` file is complete once it
//! exists**. If both files exist for a day (a crash between the rename and the removal of the
//! plain file), the reader reads only the `.gz` and the next retention run deletes the plain
//! leftover. Temporaries (`*.jsonl.gz.tmp-*`) are never read.
//!
//! ## Lines
//!
//! Each file holds one JSON object per line. A last line without `\n` is a write in progress
//! (or torn by a crash) and is skipped, never an error. Blank lines are skipped. A line that
//! does not parse is an [`ErrorKind::Io`] error naming `file:line`; iteration can continue
//! past it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use memmap2::Mmap;
use serde::de::DeserializeOwned;
use time::Date;

use super::{DatasetLayout, ExecutionRecord, ValidationRecord};
use crate::clock::{day_string, parse_day};
use crate::crypt::{self, KeyRing};
use crate::error::{Error, ErrorKind, Result};

/// File-name prefix and extension of the three per-day file families.
pub(crate) const EXECUTIONS: (&str, &str) = ("", ".jsonl");
pub(crate) const VALIDATIONS: (&str, &str) = ("sampled-", ".jsonl");
pub(crate) const STATS: (&str, &str) = ("daily-stats-", ".json");

/// What a per-day file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `<prefix>YYYY-MM-DD<ext>`.
    Plain,
    /// `<prefix>YYYY-MM-DD<ext>.gz`.
    Gz,
    /// `<prefix>YYYY-MM-DD<ext>.gz.tmp-*`: an unfinished compression.
    Temp,
}

/// One per-day file found in a directory.
#[derive(Debug, Clone)]
pub(crate) struct DayFile {
    pub day: Date,
    pub kind: FileKind,
    pub path: PathBuf,
    pub len: u64,
}

/// The per-day files of one family in `dir`, sorted by day then kind. A missing directory
/// has no files; names that do not match are ignored.
pub(crate) fn day_files(dir: &Path, (prefix, ext): (&str, &str)) -> Result<Vec<DayFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let (Some(day), Some(suffix)) = (rest.get(..10).and_then(parse_day), rest.get(10..)) else {
            continue;
        };
        let Some(suffix) = suffix.strip_prefix(ext) else {
            continue;
        };
        let kind = match suffix {
            "" => FileKind::Plain,
            ".gz" => FileKind::Gz,
            s if s.starts_with(".gz.tmp-") => FileKind::Temp,
            _ => continue,
        };
        let meta = match entry.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            // Removed since the listing (compression, retention): not there any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(entry.path().display(), e)),
        };
        files.push(DayFile {
            day,
            kind,
            path: entry.path(),
            len: meta.len(),
        });
    }
    files.sort_by_key(|f| (f.day, f.kind as u8));
    Ok(files)
}

/// Reads the dataset of one task. Cheap to create and clone; every call reads the disk
/// afresh, so it can run beside a live runtime (including from another process).
///
/// ```
/// use loopai_core::{DatasetReader, parse_day};
///
/// let data_dir = tempfile::tempdir()?;
/// let reader = DatasetReader::new(data_dir.path(), "spam");
/// let day = parse_day("2026-11-25").unwrap();
/// assert!(reader.execution_days()?.is_empty());
/// assert_eq!(reader.executions(day, day)?.count(), 0);
/// assert!(reader.stats(7, day)?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct DatasetReader {
    layout: DatasetLayout,
    task: String,
    /// The keys of `storage.encryption`, for encrypted files.
    keys: Option<Arc<KeyRing>>,
}

impl DatasetReader {
    /// A reader of `<data_dir>/datasets/<task>/`.
    pub fn new(data_dir: &Path, task: &str) -> DatasetReader {
        DatasetReader::with_layout(DatasetLayout::new(data_dir, task), task)
    }

    pub(crate) fn with_layout(layout: DatasetLayout, task: &str) -> DatasetReader {
        DatasetReader {
            layout,
            task: task.to_owned(),
            keys: None,
        }
    }

    /// Reads encrypted files (`storage.encryption`) with the keys `config` names: the
    /// current one and `old_keys`. Without it an encrypted file is a
    /// [`ErrorKind::Config`] error saying so. Errors: a key that cannot be loaded
    /// ([`ErrorKind::Config`], naming it).
    pub fn with_config(mut self, config: &crate::config::DeploymentConfig) -> Result<Self> {
        if let Some(enc) = &config.storage.encryption {
            self.keys = Some(Arc::new(crate::crypt::key_ring(enc)?));
        }
        Ok(self)
    }

    /// Reads encrypted files with `keys`.
    pub(crate) fn with_keys(mut self, keys: Option<Arc<KeyRing>>) -> Self {
        self.keys = keys;
        self
    }

    /// The keys encrypted files are read with, if any.
    pub(crate) fn keys(&self) -> Option<&KeyRing> {
        self.keys.as_deref()
    }

    /// The paths of the dataset.
    pub fn layout(&self) -> &DatasetLayout {
        &self.layout
    }

    /// The days that have an executions file (plain or `.gz`), sorted.
    pub fn execution_days(&self) -> Result<Vec<Date>> {
        let days: BTreeSet<Date> = day_files(&self.layout.executions_dir(), EXECUTIONS)?
            .into_iter()
            .filter(|f| f.kind != FileKind::Temp)
            .map(|f| f.day)
            .collect();
        Ok(days.into_iter().collect())
    }

    /// The days that have a validations file (plain or `.gz`), sorted.
    pub fn validation_days(&self) -> Result<Vec<Date>> {
        let days: BTreeSet<Date> = day_files(&self.layout.validations_dir(), VALIDATIONS)?
            .into_iter()
            .filter(|f| f.kind != FileKind::Temp)
            .map(|f| f.day)
            .collect();
        Ok(days.into_iter().collect())
    }

    /// The execution records from `from` to `to` (inclusive, UTC days), in day order then
    /// file order. Files are opened lazily, one at a time.
    pub fn executions(
        &self,
        from: Date,
        to: Date,
    ) -> Result<impl Iterator<Item = Result<ExecutionRecord>> + Send> {
        let dir = self.layout.executions_dir();
        Records::new(&dir, EXECUTIONS, from, to, self.keys.clone())
    }

    /// The validation records from `from` to `to` (inclusive, UTC days of validation), in
    /// day order then file order.
    pub fn validations(
        &self,
        from: Date,
        to: Date,
    ) -> Result<impl Iterator<Item = Result<ValidationRecord>> + Send> {
        let dir = self.layout.validations_dir();
        Records::new(&dir, VALIDATIONS, from, to, self.keys.clone())
    }

    /// The task whose dataset this is.
    pub(crate) fn task(&self) -> &str {
        &self.task
    }

    /// The UTC days in `from..=to` that have executions, validations or statistics, in
    /// order. Temporaries are not counted.
    pub(crate) fn days_with_data(&self, from: Date, to: Date) -> Result<BTreeSet<Date>> {
        let mut with_data = BTreeSet::new();
        for (dir, family) in [
            (self.layout.executions_dir(), EXECUTIONS),
            (self.layout.validations_dir(), VALIDATIONS),
            (self.layout.analytics_dir(), STATS),
        ] {
            with_data.extend(
                day_files(&dir, family)?
                    .into_iter()
                    .filter(|f| f.kind != FileKind::Temp && f.day >= from && f.day <= to)
                    .map(|f| f.day),
            );
        }
        Ok(with_data)
    }
}

/// An iterator over the records of a range of per-day files.
struct Records<T> {
    /// The plain path of each day still to read; the `.gz` is preferred at open time.
    days: std::vec::IntoIter<PathBuf>,
    current: Option<Source>,
    keys: Option<Arc<KeyRing>>,
    _record: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Records<T> {
    fn new(
        dir: &Path,
        family: (&str, &str),
        from: Date,
        to: Date,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<Records<T>> {
        let (prefix, ext) = family;
        let days: BTreeSet<Date> = day_files(dir, family)?
            .into_iter()
            .filter(|f| f.kind != FileKind::Temp && f.day >= from && f.day <= to)
            .map(|f| f.day)
            .collect();
        let paths: Vec<PathBuf> = days
            .into_iter()
            .map(|day| dir.join(format!("{prefix}{}{ext}", day_string(day))))
            .collect();
        Ok(Records {
            days: paths.into_iter(),
            current: None,
            keys,
            _record: PhantomData,
        })
    }
}

impl<T: DeserializeOwned> Iterator for Records<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(source) = &mut self.current {
                match source.next_record() {
                    Some(item) => return Some(item),
                    None => self.current = None,
                }
            }
            let plain = self.days.next()?;
            match Source::open(&plain, self.keys.as_deref()) {
                Ok(Some(source)) => self.current = Some(source),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// One open file.
enum Source {
    Mapped {
        map: Bytes,
        pos: usize,
        line: u64,
        path: PathBuf,
    },
    Gz {
        reader: Box<BufReader<MultiGzDecoder<File>>>,
        buf: Vec<u8>,
        line: u64,
        path: PathBuf,
        done: bool,
    },
}

/// The bytes of a plain file: mapped, or decrypted.
enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

fn gz_path(plain: &Path) -> PathBuf {
    let mut name = plain.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

fn open_if_exists(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

impl Source {
    /// Opens a day's file, preferring `YYYY-MM-DD.jsonl.gz` over `YYYY-MM-DD.jsonl`.
    /// `None` when neither exists (any more) or the plain file is empty.
    fn open(plain: &Path, keys: Option<&KeyRing>) -> Result<Option<Source>> {
        let gz = gz_path(plain);
        if let Some(file) = open_if_exists(&gz)? {
            return Source::gz(file, gz, keys).map(Some);
        }
        let Some(file) = open_if_exists(plain)? else {
            // Compressed (or deleted) since we looked: the `.gz` is complete if it exists.
            return match open_if_exists(&gz)? {
                Some(file) => Source::gz(file, gz, keys).map(Some),
                None => Ok(None),
            };
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io(plain.display(), e))?
            .len();
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: dataset files are append-only: the writer only ever appends whole lines,
        // and retention replaces a file by a new `.gz` and unlinks it (which leaves an
        // existing mapping intact) rather than rewriting it. The one truncation is the
        // writer's torn-tail repair when it opens a file at start-up, which removes only an
        // unterminated last line; a reader mapping that same file at that instant could
        // fault on the removed bytes, a window limited to a crash leftover at start-up.
        // Bytes appended after mapping are simply not seen. We never hand out references
        // that outlive the mapping.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(plain.display(), e))?;
        // An encrypted file (`storage.encryption`) is decrypted whole, frame by frame: a
        // torn last frame is left out, a damaged one is an error naming the offset.
        let map = if crypt::is_encrypted(&map) {
            let what = plain.display().to_string();
            let keys = keys.ok_or_else(|| crypt::no_key_error(&what))?;
            Bytes::Owned(crypt::open_frames(&map, keys, &what)?.plaintext)
        } else {
            Bytes::Map(map)
        };
        Ok(Some(Source::Mapped {
            map,
            pos: 0,
            line: 0,
            path: plain.to_path_buf(),
        }))
    }

    /// A `.gz` day file, streamed; one whose content is encrypted (retention compressed
    /// an encrypted file) is decompressed and decrypted whole.
    fn gz(file: File, path: PathBuf, keys: Option<&KeyRing>) -> Result<Source> {
        let mut reader = Box::new(BufReader::with_capacity(
            64 * 1024,
            MultiGzDecoder::new(file),
        ));
        let head = reader
            .fill_buf()
            .map_err(|e| Error::io(path.display(), e))?;
        if crypt::is_encrypted(head) {
            let what = path.display().to_string();
            let keys = keys.ok_or_else(|| crypt::no_key_error(&what))?;
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut reader, &mut bytes)
                .map_err(|e| Error::io(path.display(), e))?;
            return Ok(Source::Mapped {
                map: Bytes::Owned(crypt::open_frames(&bytes, keys, &what)?.plaintext),
                pos: 0,
                line: 0,
                path,
            });
        }
        Ok(Source::Gz {
            reader,
            buf: Vec::new(),
            line: 0,
            path,
            done: false,
        })
    }

    fn next_record<T: DeserializeOwned>(&mut self) -> Option<Result<T>> {
        loop {
            let (bytes, line, path): (&[u8], u64, &Path) = match self {
                Source::Mapped {
                    map,
                    pos,
                    line,
                    path,
                } => {
                    let rest = map.get(*pos..)?;
                    // No newline: a write in progress (or a torn tail). Skip it.
                    let end = rest.iter().position(|&b| b == b'\n')?;
                    *pos += end + 1;
                    *line += 1;
                    (&rest[..end], *line, path)
                }
                Source::Gz {
                    reader,
                    buf,
                    line,
                    path,
                    done,
                } => {
                    if *done {
                        return None;
                    }
                    buf.clear();
                    match reader.read_until(b'\n', buf) {
                        Ok(0) => return None,
                        Ok(_) if buf.last() != Some(&b'\n') => return None,
                        Ok(_) => {}
                        Err(e) => {
                            *done = true;
                            return Some(Err(Error::io(path.display(), e)));
                        }
                    }
                    *line += 1;
                    (&buf[..buf.len() - 1], *line, path)
                }
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(serde_json::from_slice(bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("{}:{line}: invalid record: {e}", path.display()),
                )
            }));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::clock::Timestamp;
    use crate::dataset::analytics::DailyAggregate;
    use crate::dataset::ExecutionStatus;

    pub(crate) fn day(s: &str) -> Date {
        parse_day(s).unwrap()
    }

    /// An execution at noon UTC of `day` + `n` ms.
    pub(crate) fn exec(day_s: &str, n: i64, output: &str, latency_ms: f64) -> ExecutionRecord {
        let noon = Timestamp::parse(&format!("{day_s}T12:00:00Z")).unwrap();
        ExecutionRecord {
            execution_id: Uuid::from_u128(n as u128 + 1),
            task_id: "spam".into(),
            program_version: 3,
            input: json!({"text": format!("message {n}")}),
            output: json!(output),
            confidence: 0.9,
            latency_ms,
            status: ExecutionStatus::Success,
            error: None,
            sampled: n % 10 == 0,
            source: crate::dataset::ExecutionSource::Program,
            timestamp: Timestamp(noon.millis() + n),
        }
    }

    pub(crate) fn validation(day_s: &str, n: i64, matched: bool) -> ValidationRecord {
        let noon = Timestamp::parse(&format!("{day_s}T12:00:00Z")).unwrap();
        ValidationRecord::new(
            Uuid::from_u128(n as u128 + 1),
            3,
            json!("spam"),
            120.0,
            0.001,
            matched,
            if matched { 1.0 } else { 0.0 },
            "exact",
            Timestamp(noon.millis() + n),
        )
    }

    pub(crate) fn jsonl<T: serde::Serialize>(records: &[T]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            serde_json::to_writer(&mut out, r).unwrap();
            out.push(b'\n');
        }
        out
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    pub(crate) fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn ids(reader: &DatasetReader, from: &str, to: &str) -> Vec<u128> {
        reader
            .executions(day(from), day(to))
            .unwrap()
            .map(|r| r.unwrap().execution_id.as_u128() - 1)
            .collect()
    }

    #[test]
    fn reads_plain_and_gz_days_transparently_in_day_order() {
        let dir = tempfile::tempdir().unwrap();
        let reader = DatasetReader::new(dir.path(), "spam");
        let l = reader.layout().clone();
        let d1: Vec<_> = (0..3).map(|n| exec("2026-11-23", n, "ham", 1.0)).collect();
        let d2: Vec<_> = (3..5).map(|n| exec("2026-11-24", n, "spam", 1.0)).collect();
        let d3: Vec<_> = (5..6).map(|n| exec("2026-11-25", n, "ham", 1.0)).collect();
        // A multi-member gzip file (e.g. concatenated compressions) reads as one stream.
        let mut gz = gzip(&jsonl(&d1[..1]));
        gz.extend(gzip(&jsonl(&d1[1..])));
        write(&gz_path(&l.executions_file(day("2026-11-23"))), &gz);
        write(&l.executions_file(day("2026-11-24")), &jsonl(&d2));
        write(&l.executions_file(day("2026-11-25")), &jsonl(&d3));
        // Ignored: an unfinished compression and an unrelated file.
        write(
            &l.executions_dir().join("2026-11-24.jsonl.gz.tmp-abc"),
            b"garbage",
        );
        write(&l.executions_dir().join("notes.txt"), b"x");

        assert_eq!(
            reader.execution_days().unwrap(),
            vec![day("2026-11-23"), day("2026-11-24"), day("2026-11-25")]
        );
        assert_eq!(
            ids(&reader, "2026-11-01", "2026-11-30"),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert_eq!(ids(&reader, "2026-11-24", "2026-11-24"), vec![3, 4]);
        assert_eq!(
            ids(&reader, "2026-11-23", "2026-11-24"),
            vec![0, 1, 2, 3, 4]
        );
        let first = reader
            .executions(day("2026-11-23"), day("2026-11-23"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(first, d1[0]);
    }

    #[test]
    fn gz_is_preferred_when_a_crash_left_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let reader = DatasetReader::new(dir.path(), "spam");
        let l = reader.layout();
        let records: Vec<_> = (0..4).map(|n| exec("2026-11-20", n, "ham", 1.0)).collect();
        let plain = l.executions_file(day("2026-11-20"));
        write(&plain, &jsonl(&records));
        write(&gz_path(&plain), &gzip(&jsonl(&records)));
        assert_eq!(reader.execution_days().unwrap(), vec![day("2026-11-20")]);
        assert_eq!(ids(&reader, "2026-11-20", "2026-11-20"), vec![0, 1, 2, 3]);
    }

    #[test]
    fn trailing_partial_line_is_skipped_in_plain_and_gz_files() {
        let dir = tempfile::tempdir().unwrap();
        let reader = DatasetReader::new(dir.path(), "spam");
        let l = reader.layout();
        let records: Vec<_> = (0..2).map(|n| exec("2026-11-20", n, "ham", 1.0)).collect();
        let mut bytes = jsonl(&records);
        bytes.extend_from_slice(br#"{"execution_id": "0000"#);
        write(&l.executions_file(day("2026-11-20")), &bytes);
        write(
            &gz_path(&l.executions_file(day("2026-11-21"))),
            &gzip(&bytes),
        );
        // An empty file (just created by the writer) has no records.
        write(&l.executions_file(day("2026-11-22")), b"");
        assert_eq!(ids(&reader, "2026-11-20", "2026-11-22"), vec![0, 1, 0, 1]);
    }

    #[test]
    fn malformed_line_error_names_file_and_line_and_iteration_continues() {
        let dir = tempfile::tempdir().unwrap();
        let reader = DatasetReader::new(dir.path(), "spam");
        let l = reader.layout();
        let mut bytes = jsonl(&[exec("2026-11-25", 0, "ham", 1.0)]);
        bytes.extend_from_slice(b"\n{\"not\": \"a record\"}\n");
        bytes.extend(jsonl(&[exec("2026-11-25", 1, "ham", 1.0)]));
        let path = l.executions_file(day("2026-11-25"));
        write(&path, &bytes);
        let items: Vec<_> = reader
            .executions(day("2026-11-25"), day("2026-11-25"))
            .unwrap()
            .collect();
        assert_eq!(items.len(), 3);
        let err = items[1].as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message()
                .starts_with(&format!("{}:3: invalid record: ", path.display())),
            "{err}"
        );
        assert!(err
            .message()
            .contains("datasets/spam/executions/2026-11-25.jsonl:3:"));
        assert_eq!(items[2].as_ref().unwrap().execution_id.as_u128(), 2);

        // The same in a .gz file.
        let gz = gz_path(&l.executions_file(day("2026-11-24")));
        write(&gz, &gzip(&bytes));
        let err = reader
            .executions(day("2026-11-24"), day("2026-11-24"))
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        assert!(
            err.message()
                .starts_with(&format!("{}:3: invalid record: ", gz.display())),
            "{err}"
        );
    }

    #[test]
    fn validations_are_read_by_day() {
        let dir = tempfile::tempdir().unwrap();
        let reader = DatasetReader::new(dir.path(), "spam");
        let l = reader.layout();
        write(
            &l.validations_file(day("2026-11-25")),
            &jsonl(&[
                validation("2026-11-25", 0, true),
                validation("2026-11-25", 1, false),
            ]),
        );
        let v: Vec<_> = reader
            .validations(day("2026-11-25"), day("2026-11-25"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(v.len(), 2);
        assert!(v[0].matched && !v[1].matched);
        assert_eq!(reader.validation_days().unwrap(), vec![day("2026-11-25")]);
        assert_eq!(
            reader
                .validations(day("2026-11-26"), day("2026-11-30"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn stats_come_from_files_or_are_computed_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let reader = DatasetReader::new(dir.path(), "spam");
        let l = reader.layout().clone();
        // 11-20: only a stats file (its JSONL expired); 11-24: JSONL only; 11-25: both.
        let mut old = DailyAggregate::new("spam", day("2026-11-20"));
        old.observe_execution(&exec("2026-11-20", 0, "ham", 1.0));
        super::super::write_stats(&l, &old.to_stats(Timestamp(5))).unwrap();
        write(
            &l.executions_file(day("2026-11-24")),
            &jsonl(&[
                exec("2026-11-24", 0, "ham", 1.0),
                exec("2026-11-24", 1, "spam", 2.0),
            ]),
        );
        write(
            &l.validations_file(day("2026-11-24")),
            &jsonl(&[validation("2026-11-24", 0, true)]),
        );
        write(
            &l.executions_file(day("2026-11-25")),
            &jsonl(&[exec("2026-11-25", 0, "ham", 1.0)]),
        );
        let mut today = DailyAggregate::new("spam", day("2026-11-25"));
        today.observe_execution(&exec("2026-11-25", 0, "ham", 1.0));
        super::super::write_stats(&l, &today.to_stats(Timestamp(7))).unwrap();

        let stats = reader.stats(7, day("2026-11-25")).unwrap();
        let dates: Vec<_> = stats.iter().map(|s| s.date.as_str()).collect();
        assert_eq!(dates, ["2026-11-20", "2026-11-24", "2026-11-25"]);
        assert_eq!(stats[0].updated_at, Timestamp(5));
        assert_eq!(stats[1].total, 2);
        assert_eq!(stats[1].validations.match_rate, Some(1.0));
        assert_eq!(stats[2].updated_at, Timestamp(7));
        // Read-only: no stats file was written for 11-24.
        assert!(!l.stats_file(day("2026-11-24")).exists());
        // The window: the last 5 days end at 11-25 and start at 11-21.
        assert_eq!(reader.stats(5, day("2026-11-25")).unwrap().len(), 2);
        assert!(reader.stats(0, day("2026-11-25")).unwrap().is_empty());
    }

    #[test]
    fn reader_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DatasetReader>();
    }
}
