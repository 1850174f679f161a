//! Retention: compressing, expiring and capping a task's dataset.
//!
//! [`apply_retention`] runs at start-up and daily in the background (one run at a time per
//! task). Ages count in whole UTC days: the file of day `D` is
//!
//! * **compressed** (executions only) once `today >= D + 1 + compress_after_days`;
//! * **deleted** once `today >= D + 1 + keep_days`, with `executions_keep_days` for
//!   executions and `validations_keep_days` for validations; a day's `daily-stats` file is
//!   kept as long as the longer of the two (it is tiny).
//!
//! Today's and yesterday's files are never compressed or expired, whatever the policy (a
//! policy value of 0 acts as 1): the writer appends to today's file and, just after
//! midnight, to yesterday's, so retention never races with it.
//!
//! ## Compression and crashes
//!
//! `YYYY-MM-DD.jsonl` is compressed into `YYYY-MM-DD.jsonl.gz.tmp-<random>`, which is
//! fsynced and renamed to `YYYY-MM-DD.jsonl.gz`; the directory is fsynced, the plain file is
//! removed and the directory fsynced again. Only complete lines are copied (a torn last
//! line left by a crash is dropped; readers skip it anyway). A crash at any point leaves
//! every record readable exactly once:
//!
//! * before the rename: a `.tmp-*` leftover that readers ignore and the next run deletes;
//! * after the rename: both files; the `.gz` is complete, readers prefer it, and the next
//!   run deletes the plain leftover.
//!
//! ## Size cap
//!
//! After the age-based work, while the files under `datasets/<task>/` total more than
//! `max_total_bytes`, the oldest day's executions and validations are deleted together,
//! day by day (yesterday's included, as a last resort), then the oldest `daily-stats`
//! files. Today's files are never deleted, so the dataset may stay above the cap when
//! today's data alone exceeds it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use memmap2::Mmap;
use serde::Serialize;
use time::{Date, Duration};

use super::reader::{day_files, DayFile, FileKind, EXECUTIONS, STATS, VALIDATIONS};
use super::DatasetLayout;
use crate::config::DeploymentConfig;
use crate::error::{Error, Result};
use crate::fsutil::{remove_if_exists, sync_dir};

/// How long a task's dataset files are kept; the rules are under [`apply_retention`].
///
/// ```
/// use loopai_core::{DeploymentConfig, RetentionPolicy};
///
/// let policy = RetentionPolicy::from_config(&DeploymentConfig::default());
/// assert_eq!(policy.compress_after_days, 1);
/// assert_eq!(policy.executions_keep_days, 7);
/// assert_eq!(policy.validations_keep_days, 30);
/// assert_eq!(policy.max_total_bytes, 100_000_000_000);
/// ```
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Execution files are gzip-compressed this many days after their day ends.
    pub compress_after_days: u32,
    /// Execution files are deleted this many days after their day ends.
    pub executions_keep_days: u32,
    /// Validation files are deleted this many days after their day ends.
    pub validations_keep_days: u32,
    /// The most bytes the task's dataset may take (oldest days deleted first).
    pub max_total_bytes: u64,
}

impl RetentionPolicy {
    /// The policy of `retention.executions.{compress_after, keep_days}`,
    /// `retention.validations.keep_days` and `storage.max_size_gb` (1 GB = 10⁹ bytes).
    pub fn from_config(cfg: &DeploymentConfig) -> Self {
        RetentionPolicy {
            compress_after_days: cfg.retention.executions.compress_after,
            executions_keep_days: cfg.retention.executions.keep_days,
            validations_keep_days: cfg.retention.validations.keep_days,
            // Saturating float-to-int conversion; the config guarantees a positive number.
            max_total_bytes: (cfg.storage.max_size_gb * 1e9) as u64,
        }
    }
}

/// What one [`apply_retention`] run did.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct RetentionReport {
    /// Plain execution files replaced by their `.gz`.
    pub compressed: Vec<PathBuf>,
    /// Files deleted (expired, over the size cap, or crash leftovers).
    pub deleted: Vec<PathBuf>,
    /// Bytes freed by compression and deletion.
    pub bytes_freed: u64,
}

/// Whether day `day` is at least `days` whole days old on `today`, counting at least one
/// day (today's and yesterday's files are never touched by age-based rules).
fn aged(day: Date, days: u32, today: Date) -> bool {
    let days = i64::from(days.max(1));
    day.checked_add(Duration::days(1 + days))
        .is_some_and(|due| today >= due)
}

/// Applies `policy` to the dataset of `layout` as of the UTC day `today`.
///
/// * The executions file of day `D` is gzip-compressed once
///   `today >= D + 1 + compress_after_days` and deleted once
///   `today >= D + 1 + executions_keep_days`; validation files are deleted once
///   `today >= D + 1 + validations_keep_days`; `daily-stats` files are kept as long as the
///   longer of the two.
/// * Today's and yesterday's files are never compressed or expired (0 acts as 1), so this
///   never races with the writer.
/// * Compression goes through a fsynced `*.jsonl.gz.tmp-*` renamed into place, then removes
///   the plain file: after a crash, every record is readable exactly once (readers prefer the
///   `.gz` when both exist), and the next run removes the leftovers.
/// * Then, while the files under `datasets/<task>/` exceed `max_total_bytes`, the oldest
///   day's executions and validations are deleted together (yesterday's as a last resort),
///   then the oldest `daily-stats` files; today's files are never deleted.
///
/// Run it from one thread at a time per task.
pub fn apply_retention(
    layout: &DatasetLayout,
    policy: &RetentionPolicy,
    today: Date,
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let exec_dir = layout.executions_dir();
    let val_dir = layout.validations_dir();
    let stats_dir = layout.analytics_dir();

    // Executions: crash leftovers, expiry, compression.
    let mut exec_files = day_files(&exec_dir, EXECUTIONS)?;
    let gz_days: BTreeSet<Date> = exec_files
        .iter()
        .filter(|f| f.kind == FileKind::Gz)
        .map(|f| f.day)
        .collect();
    for f in &exec_files {
        if f.day >= today {
            continue;
        }
        let leftover = match f.kind {
            FileKind::Temp => true,
            FileKind::Plain => gz_days.contains(&f.day),
            FileKind::Gz => false,
        };
        if leftover || aged(f.day, policy.executions_keep_days, today) {
            delete(f, &mut report)?;
        } else if f.kind == FileKind::Plain && aged(f.day, policy.compress_after_days, today) {
            compress(f, &mut report)?;
        }
    }

    // Validations and statistics: expiry.
    for f in day_files(&val_dir, VALIDATIONS)? {
        if f.day < today && aged(f.day, policy.validations_keep_days, today) {
            delete(&f, &mut report)?;
        }
    }
    let stats_keep = policy
        .executions_keep_days
        .max(policy.validations_keep_days);
    for f in day_files(&stats_dir, STATS)? {
        if f.day < today && aged(f.day, stats_keep, today) {
            delete(&f, &mut report)?;
        }
    }

    // Size cap.
    let mut total = tree_size(layout.root())?;
    if total <= policy.max_total_bytes {
        sync_touched(&report, &[&exec_dir, &val_dir, &stats_dir])?;
        return Ok(report);
    }
    exec_files = day_files(&exec_dir, EXECUTIONS)?;
    let mut data_files: Vec<DayFile> = exec_files
        .into_iter()
        .chain(day_files(&val_dir, VALIDATIONS)?)
        .filter(|f| f.day < today)
        .collect();
    data_files.sort_by_key(|f| f.day);
    let mut stats_files: Vec<DayFile> = day_files(&stats_dir, STATS)?
        .into_iter()
        .filter(|f| f.day < today)
        .collect();
    stats_files.sort_by_key(|f| f.day);

    let mut i = 0;
    while total > policy.max_total_bytes && i < data_files.len() {
        // The whole oldest day at once: its executions and its validations.
        let day = data_files[i].day;
        while i < data_files.len() && data_files[i].day == day {
            total = total.saturating_sub(delete(&data_files[i], &mut report)?);
            i += 1;
        }
    }
    for f in &stats_files {
        if total <= policy.max_total_bytes {
            break;
        }
        total = total.saturating_sub(delete(f, &mut report)?);
    }
    sync_touched(&report, &[&exec_dir, &val_dir, &stats_dir])?;
    Ok(report)
}

/// Deletes a file (gone already is fine); returns the bytes freed.
fn delete(f: &DayFile, report: &mut RetentionReport) -> Result<u64> {
    match fs::remove_file(&f.path) {
        Ok(()) => {
            report.deleted.push(f.path.clone());
            report.bytes_freed += f.len;
            Ok(f.len)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(f.path.display(), e)),
    }
}

/// fsyncs the directories in which files were deleted.
fn sync_touched(report: &RetentionReport, dirs: &[&Path]) -> Result<()> {
    for dir in dirs {
        if report.deleted.iter().any(|p| p.parent() == Some(dir)) {
            sync_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
        }
    }
    Ok(())
}

/// Replaces `YYYY-MM-DD.jsonl` by `YYYY-MM-DD.jsonl.gz` (see the module docs).
fn compress(f: &DayFile, report: &mut RetentionReport) -> Result<()> {
    let dir = f.path.parent().unwrap_or(Path::new("."));
    let mut gz = f.path.clone().into_os_string();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    let mut tmp = gz.clone().into_os_string();
    tmp.push(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);

    let gz_len = match write_gz(&f.path, &tmp).and_then(|len| {
        fs::rename(&tmp, &gz)?;
        sync_dir(dir)?;
        Ok(len)
    }) {
        Ok(len) => len,
        Err(e) => {
            let _ = remove_if_exists(&tmp);
            return Err(Error::io(
                format_args!("compressing {}", f.path.display()),
                e,
            ));
        }
    };
    // The .gz is complete and durable: the plain file is now redundant.
    remove_if_exists(&f.path).map_err(|e| Error::io(f.path.display(), e))?;
    sync_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
    report.compressed.push(f.path.clone());
    report.bytes_freed += f.len.saturating_sub(gz_len);
    Ok(())
}

/// Writes the complete lines of `plain` gzip-compressed to `tmp` and fsyncs it; returns the
/// compressed size.
fn write_gz(plain: &Path, tmp: &Path) -> io::Result<u64> {
    let file = File::open(plain)?;
    let out = File::create_new(tmp)?;
    let mut enc = GzEncoder::new(
        BufWriter::with_capacity(256 * 1024, out),
        Compression::default(),
    );
    if file.metadata()?.len() > 0 {
        // SAFETY: the file is at least a day old, so the writer no longer appends to or
        // truncates it (see the reader's note on mappings); only this retention run, which
        // is the single one for the task, replaces it, and it unlinks rather than rewrites.
        let map = unsafe { Mmap::map(&file)? };
        // An encrypted file (`storage.encryption`) is compressed whole: its frames are
        // self-delimiting, and a torn last frame is left out by the reader.
        let complete = if crate::crypt::is_encrypted(&map) {
            map.len()
        } else {
            map.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        enc.write_all(&map[..complete])?;
    }
    let out = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    Ok(out.metadata()?.len())
}

/// The total size of the regular files under `root` (symlinks are not followed).
fn tree_size(root: &Path) -> Result<u64> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(root.display(), e)),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(root.display(), e))?;
        let meta = match fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(entry.path().display(), e)),
        };
        if meta.is_dir() {
            total += tree_size(&entry.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::dataset::reader::tests::{day, exec, gzip, jsonl, validation, write};
    use crate::dataset::DatasetReader;
    use crate::dataset::{write_stats, DailyAggregate};

    fn policy() -> RetentionPolicy {
        RetentionPolicy::from_config(&DeploymentConfig::default())
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        let mut v: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Days 2026-11-01 ..= 2026-11-25 with executions, validations and stats.
    fn populate(layout: &DatasetLayout, days: std::ops::RangeInclusive<u8>) {
        for d in days {
            let ds = format!("2026-11-{d:02}");
            let records: Vec<_> = (0..20).map(|n| exec(&ds, n, "ham", 1.0)).collect();
            write(&layout.executions_file(day(&ds)), &jsonl(&records));
            write(
                &layout.validations_file(day(&ds)),
                &jsonl(&[validation(&ds, 0, true)]),
            );
            write_stats(
                layout,
                &DailyAggregate::new("spam", day(&ds)).to_stats(Timestamp(0)),
            )
            .unwrap();
        }
    }

    #[test]
    fn defaults_compress_after_one_day_and_delete_after_seven_and_thirty() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        // 2026-10-20 ..= 2026-10-31 too, for the 30-day validation rule.
        for d in 20..=31u8 {
            let ds = format!("2026-10-{d:02}");
            write(
                &layout.validations_file(day(&ds)),
                &jsonl(&[validation(&ds, 0, true)]),
            );
        }
        populate(&layout, 1..=25);
        let today = day("2026-11-25");
        let report = apply_retention(&layout, &policy(), today).unwrap();

        // Executions: day D deleted once today >= D + 8 (D <= 11-17), compressed once
        // today >= D + 2 (D <= 11-23); yesterday and today untouched.
        let mut want = vec![
            "2026-11-18.jsonl.gz",
            "2026-11-19.jsonl.gz",
            "2026-11-20.jsonl.gz",
            "2026-11-21.jsonl.gz",
            "2026-11-22.jsonl.gz",
            "2026-11-23.jsonl.gz",
            "2026-11-24.jsonl",
            "2026-11-25.jsonl",
        ];
        assert_eq!(dir_names(&layout.executions_dir()), want);
        assert_eq!(
            names(&report.compressed),
            [
                "2026-11-18.jsonl",
                "2026-11-19.jsonl",
                "2026-11-20.jsonl",
                "2026-11-21.jsonl",
                "2026-11-22.jsonl",
                "2026-11-23.jsonl"
            ]
        );
        // Validations: deleted once today >= D + 31 (D <= 10-25).
        let vals = dir_names(&layout.validations_dir());
        assert_eq!(vals.first().unwrap(), "sampled-2026-10-26.jsonl");
        assert_eq!(vals.len(), 6 + 25);
        // Stats: as long as the longer (30 days); none of ours is that old.
        assert_eq!(dir_names(&layout.analytics_dir()).len(), 25);
        assert!(report.bytes_freed > 0);

        // Records read the same through the .gz files.
        let reader = DatasetReader::new(dir.path(), "spam");
        assert_eq!(
            reader
                .executions(day("2026-11-01"), today)
                .unwrap()
                .map(Result::unwrap)
                .count(),
            8 * 20
        );

        // A second run the same day has nothing to do; the next day moves one day on.
        assert_eq!(
            apply_retention(&layout, &policy(), today).unwrap(),
            RetentionReport::default()
        );
        let report = apply_retention(&layout, &policy(), day("2026-11-26")).unwrap();
        assert_eq!(names(&report.compressed), ["2026-11-24.jsonl"]);
        assert_eq!(
            names(&report.deleted),
            ["2026-11-18.jsonl.gz", "sampled-2026-10-26.jsonl"]
        );
        want.remove(0);
        want[5] = "2026-11-24.jsonl.gz";
        assert_eq!(dir_names(&layout.executions_dir()), want);
    }

    #[test]
    fn zero_day_policies_never_touch_today_or_yesterday() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        populate(&layout, 23..=25);
        let p = RetentionPolicy {
            compress_after_days: 0,
            executions_keep_days: 0,
            validations_keep_days: 0,
            max_total_bytes: u64::MAX,
        };
        apply_retention(&layout, &p, day("2026-11-25")).unwrap();
        assert_eq!(
            dir_names(&layout.executions_dir()),
            ["2026-11-24.jsonl", "2026-11-25.jsonl"]
        );
        assert_eq!(
            dir_names(&layout.validations_dir()),
            ["sampled-2026-11-24.jsonl", "sampled-2026-11-25.jsonl"]
        );
    }

    #[test]
    fn crash_leftovers_are_cleaned_without_losing_or_doubling_records() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let reader = DatasetReader::new(dir.path(), "spam");
        let records: Vec<_> = (0..5).map(|n| exec("2026-11-20", n, "ham", 1.0)).collect();
        let plain = layout.executions_file(day("2026-11-20"));
        let mut gz = plain.clone().into_os_string();
        gz.push(".gz");
        // Crash after the rename, before removing the plain file: both exist.
        write(&plain, &jsonl(&records));
        write(Path::new(&gz), &gzip(&jsonl(&records)));
        // Crash before the rename of another day: a temporary beside the plain file.
        let other: Vec<_> = (0..3).map(|n| exec("2026-11-21", n, "ham", 1.0)).collect();
        write(&layout.executions_file(day("2026-11-21")), &jsonl(&other));
        write(
            &layout.executions_dir().join("2026-11-21.jsonl.gz.tmp-0123"),
            b"\x1f\x8b partial",
        );
        let count = |r: &DatasetReader| {
            r.executions(day("2026-11-01"), day("2026-11-30"))
                .unwrap()
                .map(Result::unwrap)
                .count()
        };
        assert_eq!(count(&reader), 8);

        // 2026-11-22: nothing is old enough to compress, but leftovers go.
        let report = apply_retention(&layout, &policy(), day("2026-11-22")).unwrap();
        assert_eq!(
            names(&report.deleted),
            ["2026-11-20.jsonl", "2026-11-21.jsonl.gz.tmp-0123"]
        );
        assert!(report.compressed.is_empty());
        assert_eq!(
            dir_names(&layout.executions_dir()),
            ["2026-11-20.jsonl.gz", "2026-11-21.jsonl"]
        );
        assert_eq!(count(&reader), 8);
    }

    #[test]
    fn compression_drops_a_torn_last_line_only() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let records: Vec<_> = (0..3).map(|n| exec("2026-11-20", n, "ham", 1.0)).collect();
        let mut bytes = jsonl(&records);
        bytes.extend_from_slice(b"{\"execution_id\":");
        write(&layout.executions_file(day("2026-11-20")), &bytes);
        apply_retention(&layout, &policy(), day("2026-11-25")).unwrap();
        let gz = fs::read(layout.executions_dir().join("2026-11-20.jsonl.gz")).unwrap();
        let mut plain = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
        assert_eq!(plain, jsonl(&records));
    }

    #[test]
    fn size_cap_deletes_oldest_days_first_and_never_today() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        populate(&layout, 20..=25);
        let no_age = RetentionPolicy {
            compress_after_days: 100,
            executions_keep_days: 100,
            validations_keep_days: 100,
            max_total_bytes: u64::MAX,
        };
        let total = tree_size(layout.root()).unwrap();
        let day_size = |d: &str| {
            [
                layout.executions_file(day(d)),
                layout.validations_file(day(d)),
            ]
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum::<u64>()
        };
        // Just under what is needed without the two oldest days.
        let cap = total - day_size("2026-11-20") - day_size("2026-11-21") + 1;
        let report = apply_retention(
            &layout,
            &RetentionPolicy {
                max_total_bytes: cap - 2,
                ..no_age.clone()
            },
            day("2026-11-25"),
        )
        .unwrap();
        assert_eq!(
            names(&report.deleted),
            [
                "2026-11-20.jsonl",
                "2026-11-21.jsonl",
                "2026-11-22.jsonl",
                "sampled-2026-11-20.jsonl",
                "sampled-2026-11-21.jsonl",
                "sampled-2026-11-22.jsonl"
            ]
        );
        assert!(tree_size(layout.root()).unwrap() <= cap - 2);

        // A cap below today's size: everything but today's data goes, today's stays.
        let report = apply_retention(
            &layout,
            &RetentionPolicy {
                max_total_bytes: 1,
                ..no_age
            },
            day("2026-11-25"),
        )
        .unwrap();
        assert!(!report.deleted.is_empty());
        assert_eq!(dir_names(&layout.executions_dir()), ["2026-11-25.jsonl"]);
        assert_eq!(
            dir_names(&layout.validations_dir()),
            ["sampled-2026-11-25.jsonl"]
        );
        assert_eq!(
            dir_names(&layout.analytics_dir()),
            ["daily-stats-2026-11-25.json"]
        );
    }

    #[test]
    fn missing_dataset_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        assert_eq!(
            apply_retention(&layout, &policy(), day("2026-11-25")).unwrap(),
            RetentionReport::default()
        );
    }
}
