//! Daily analytics: `analytics/daily-stats-YYYY-MM-DD.json`.
//!
//! The writer keeps one [`DailyAggregate`] per UTC day it writes, feeds it every record
//! ([`observe_execution`](DailyAggregate::observe_execution) costs a few tens of nanoseconds
//! and allocates only when an output or a program version appears for the first time), and
//! writes [`DailyStats`] with [`write_stats`] every minute, at day rollover and at shutdown.
//! [`rebuild_stats`] computes the same statistics from the JSONL files.
//!
//! ## Definitions
//!
//! * Counts are over all execution records of the day: `successful`, `failed`
//!   (`status: error`), `abstained`, `timeouts` add up to `total`.
//!   `success_rate = successful / total`, `sampling_rate = sampled_count / total` (0 when
//!   there are no executions).
//! * Latencies are over all executions. `avg` and `max` are exact; the percentiles come from
//!   a log-linear histogram (64 linear sub-buckets per power of two of microseconds), each
//!   percentile reported as the middle of its bucket clamped to the observed minimum and
//!   maximum (the top rank is the exact maximum): **relative error at most 1/128 (0.8 %)
//!   from 1 µs to 2³² µs (71 minutes)**;
//!   below 1 µs the absolute error is under 1 µs, above 71 minutes the maximum is reported.
//!   A percentile `q` is the nearest-rank value: the smallest latency such that at least
//!   `ceil(q × total)` executions are at or below it.
//! * `output_distribution` counts executions by output: a string output is the string
//!   itself, `null` (errors, most abstentions) is `"null"`, any other value its compact JSON.
//!   At most [`MAX_OUTPUT_KEYS`] distinct outputs are kept a day; later new ones are counted
//!   under `"(other)"`.
//! * `versions` counts executions by program version (`"v3"`; `"v0"` for executions that
//!   failed before any program ran).
//! * `validations` counts the day's validation records (by their validation day) and how
//!   many matched; `match_rate` is `null` when there were none.
//!
//! Statistics kept in memory and statistics rebuilt from the files agree exactly on all
//! counts, and on latencies to within the precision above.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::Date;

use super::reader::DatasetReader;
use super::record::{DatasetLayout, ExecutionRecord, ValidationRecord};
use crate::clock::{day_string, parse_day, Clock, SystemClock, Timestamp};
use crate::crypt::{self, KeyRing};
use crate::dataset::ExecutionStatus;
use crate::error::{Error, ErrorKind, Result};
use crate::fnv::Fnv;
use crate::fsutil::{create_dir_all_durable, remove_stale_temporaries, write_atomic};

/// The most distinct outputs counted per day; further new outputs count as `"(other)"`.
pub const MAX_OUTPUT_KEYS: usize = 1000;

/// A temporary of the analytics directory this old is a crash's leftover (a live writer
/// renames it within milliseconds).
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// The key under which outputs beyond [`MAX_OUTPUT_KEYS`] are counted.
const OTHER_OUTPUTS: &str = "(other)";

/// Linear sub-buckets per power of two (2^6 = 64: relative bucket width ≤ 1/64).
const SUB_BITS: u32 = 6;
const SUBS: usize = 1 << SUB_BITS;
/// Powers of two of microseconds covered: 1 µs ..= 2^32 µs.
const OCTAVES: usize = 32;
/// Bucket 0: below 1 µs (or not a number); last bucket: 2^32 µs and more.
const BUCKETS: usize = 1 + OCTAVES * SUBS + 1;
const TOP_US: f64 = 4_294_967_296.0;

/// The histogram bucket of a latency in milliseconds.
#[inline]
fn bucket_of(latency_ms: f64) -> usize {
    let us = latency_ms * 1000.0;
    if us.is_nan() || us < 1.0 {
        return 0;
    }
    if us >= TOP_US {
        return BUCKETS - 1;
    }
    let bits = us.to_bits();
    // 1 <= us < 2^32: a normal number with an unbiased exponent in 0..32.
    let exponent = ((bits >> 52) & 0x7ff) as usize - 1023;
    let sub = (bits >> (52 - SUB_BITS)) as usize & (SUBS - 1);
    1 + exponent * SUBS + sub
}

/// The middle of a histogram bucket (1 ..= OCTAVES × SUBS), in milliseconds.
fn bucket_middle_ms(bucket: usize) -> f64 {
    let i = bucket - 1;
    let octave = f64::from(1u32 << (i / SUBS) as u32);
    let width = octave / SUBS as f64;
    (octave + width * (i % SUBS) as f64 + width / 2.0) / 1000.0
}

/// The statistics of one task on one UTC day, as stored in
/// `analytics/daily-stats-YYYY-MM-DD.json`.
///
/// Counts are over all execution records of the day (`successful + failed + abstained +
/// timeouts == total`); rates are 0 without executions. `avg` and `max` latencies are exact;
/// percentiles are nearest-rank values from a log-linear histogram, within 0.8 % relative
/// error from 1 µs to 71 minutes (absolute error under 1 µs below that). Outputs are keyed by
/// the label string, `"null"`, or compact JSON, at most [`MAX_OUTPUT_KEYS`] a day (then
/// `"(other)"`). More in `docs/datasets.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DailyStats {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// The task id.
    pub task_id: String,
    /// Executions logged that day.
    pub total: u64,
    /// Executions with `status: success`.
    pub successful: u64,
    /// Executions with `status: error`.
    pub failed: u64,
    /// Executions with `status: abstain`.
    pub abstained: u64,
    /// Executions with `status: timeout`.
    pub timeouts: u64,
    /// `successful / total` (0 without executions).
    pub success_rate: f64,
    /// Executions sampled for validation.
    pub sampled_count: u64,
    /// `sampled_count / total` (0 without executions).
    pub sampling_rate: f64,
    /// Execution latency.
    pub latency_ms: LatencyStats,
    /// Executions per output (label string, `"null"`, or compact JSON).
    pub output_distribution: BTreeMap<String, u64>,
    /// Executions per program version (`"v3"`).
    pub versions: BTreeMap<String, u64>,
    /// Validations against the oracle.
    pub validations: ValidationStats,
    /// When these statistics were computed.
    pub updated_at: Timestamp,
}

/// Latency statistics in milliseconds (all 0 without executions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LatencyStats {
    /// The mean (exact).
    pub avg: f64,
    /// The median (within 0.8 %).
    pub p50: f64,
    /// The 95th percentile (within 0.8 %).
    pub p95: f64,
    /// The 99th percentile (within 0.8 %).
    pub p99: f64,
    /// The maximum (exact).
    pub max: f64,
}

/// Validation statistics of a day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValidationStats {
    /// Validation records of the day.
    pub total: u64,
    /// Those where the program's output matched the oracle's.
    pub matched: u64,
    /// `matched / total`, `None` without validations.
    pub match_rate: Option<f64>,
}

/// Running statistics of one task on one UTC day. Not thread-safe by design: the writer
/// thread owns it.
///
/// ```
/// use loopai_core::{DailyAggregate, parse_day, Timestamp};
///
/// let day = parse_day("2026-11-25").unwrap();
/// let agg = DailyAggregate::new("spam", day);
/// let stats = agg.to_stats(Timestamp(0));
/// assert_eq!((stats.date.as_str(), stats.total), ("2026-11-25", 0));
/// ```
pub struct DailyAggregate {
    task: String,
    day: Date,
    total: u64,
    successful: u64,
    failed: u64,
    abstained: u64,
    timeouts: u64,
    sampled: u64,
    latency_sum: f64,
    latency_min: f64,
    latency_max: f64,
    histogram: Box<[u64]>,
    outputs: HashMap<String, u64, BuildHasherDefault<LabelHasher>>,
    other_outputs: u64,
    versions: Vec<(u32, u64)>,
    validations: u64,
    matched: u64,
    /// Reused to render non-string outputs without allocating.
    scratch: Vec<u8>,
}

impl fmt::Debug for DailyAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DailyAggregate")
            .field("task", &self.task)
            .field("day", &day_string(self.day))
            .field("total", &self.total)
            .field("successful", &self.successful)
            .field("failed", &self.failed)
            .field("abstained", &self.abstained)
            .field("timeouts", &self.timeouts)
            .field("sampled", &self.sampled)
            .field("distinct_outputs", &self.outputs.len())
            .field("versions", &self.versions)
            .field("validations", &self.validations)
            .field("matched", &self.matched)
            .finish_non_exhaustive()
    }
}

impl DailyAggregate {
    /// An empty aggregate of `task` on `day`.
    pub fn new(task: &str, day: Date) -> Self {
        DailyAggregate {
            task: task.to_owned(),
            day,
            total: 0,
            successful: 0,
            failed: 0,
            abstained: 0,
            timeouts: 0,
            sampled: 0,
            latency_sum: 0.0,
            latency_min: f64::INFINITY,
            latency_max: 0.0,
            histogram: vec![0; BUCKETS].into_boxed_slice(),
            outputs: HashMap::default(),
            other_outputs: 0,
            versions: Vec::new(),
            validations: 0,
            matched: 0,
            scratch: Vec::new(),
        }
    }

    /// The aggregate of what is already on disk for `day`: its executions (plain or `.gz`)
    /// and validations. The writer calls it at start-up and at day rollover so that a
    /// restart in the middle of a day does not undercount. A malformed line is an error.
    pub fn load(layout: &DatasetLayout, task: &str, day: Date) -> Result<Self> {
        Self::load_from(&DatasetReader::with_layout(layout.clone(), task), task, day)
    }

    /// [`load`](Self::load) through `reader` (with the keys of encrypted files).
    pub(crate) fn load_from(reader: &DatasetReader, task: &str, day: Date) -> Result<Self> {
        let mut agg = DailyAggregate::new(task, day);
        for record in reader.executions(day, day)? {
            agg.observe_execution(&record?);
        }
        for record in reader.validations(day, day)? {
            agg.observe_validation(&record?);
        }
        Ok(agg)
    }

    /// Counts one execution. The record's timestamp is not checked against the day: the
    /// caller routes records to the aggregate of their day.
    #[inline]
    pub fn observe_execution(&mut self, r: &ExecutionRecord) {
        self.total += 1;
        match r.status {
            ExecutionStatus::Success => self.successful += 1,
            ExecutionStatus::Error => self.failed += 1,
            ExecutionStatus::Abstain => self.abstained += 1,
            ExecutionStatus::Timeout => self.timeouts += 1,
        }
        self.sampled += u64::from(r.sampled);

        let latency = r.latency_ms;
        if latency.is_finite() && latency >= 0.0 {
            self.latency_sum += latency;
            self.latency_min = self.latency_min.min(latency);
            self.latency_max = self.latency_max.max(latency);
        }
        self.histogram[bucket_of(latency)] += 1;

        self.count_output(&r.output);

        match self
            .versions
            .iter_mut()
            .find(|(v, _)| *v == r.program_version)
        {
            Some((_, n)) => *n += 1,
            None => self.versions.push((r.program_version, 1)),
        }
    }

    #[inline]
    fn count_output(&mut self, output: &Value) {
        // (`outputs` is keyed with a fast FNV hasher: it holds at most MAX_OUTPUT_KEYS
        // entries, so adversarial collisions cannot make it grow costly.)
        let key: &str = match output {
            Value::String(s) => s,
            Value::Null => "null",
            other => {
                self.scratch.clear();
                if serde_json::to_writer(&mut self.scratch, other).is_err() {
                    self.other_outputs += 1;
                    return;
                }
                // serde_json writes UTF-8.
                std::str::from_utf8(&self.scratch).unwrap_or(OTHER_OUTPUTS)
            }
        };
        if let Some(n) = self.outputs.get_mut(key) {
            *n += 1;
        } else if self.outputs.len() < MAX_OUTPUT_KEYS {
            self.outputs.insert(key.to_owned(), 1);
        } else {
            self.other_outputs += 1;
        }
    }

    /// Counts one validation.
    #[inline]
    pub fn observe_validation(&mut self, r: &ValidationRecord) {
        self.validations += 1;
        self.matched += u64::from(r.matched);
    }

    /// The UTC day of this aggregate.
    pub fn day(&self) -> Date {
        self.day
    }

    /// The statistics so far, stamped `updated_at`.
    pub fn to_stats(&self, updated_at: Timestamp) -> DailyStats {
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let mut output_distribution: BTreeMap<String, u64> =
            self.outputs.iter().map(|(k, &v)| (k.clone(), v)).collect();
        if self.other_outputs > 0 {
            *output_distribution
                .entry(OTHER_OUTPUTS.to_owned())
                .or_default() += self.other_outputs;
        }
        DailyStats {
            date: day_string(self.day),
            task_id: self.task.clone(),
            total: self.total,
            successful: self.successful,
            failed: self.failed,
            abstained: self.abstained,
            timeouts: self.timeouts,
            success_rate: ratio(self.successful, self.total),
            sampled_count: self.sampled,
            sampling_rate: ratio(self.sampled, self.total),
            latency_ms: LatencyStats {
                avg: ratio_f(self.latency_sum, self.total),
                p50: self.percentile(0.50),
                p95: self.percentile(0.95),
                p99: self.percentile(0.99),
                max: self.latency_max,
            },
            output_distribution,
            versions: self
                .versions
                .iter()
                .map(|(v, n)| (format!("v{v}"), *n))
                .collect(),
            validations: ValidationStats {
                total: self.validations,
                matched: self.matched,
                match_rate: (self.validations > 0)
                    .then(|| self.matched as f64 / self.validations as f64),
            },
            updated_at,
        }
    }

    /// The nearest-rank `q` quantile, from the histogram.
    fn percentile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let (min, max) = if self.latency_min <= self.latency_max {
            (self.latency_min, self.latency_max)
        } else {
            (0.0, 0.0) // no finite latency at all
        };
        if rank == self.total {
            return max; // the largest value is known exactly
        }
        let mut seen = 0;
        for (bucket, &n) in self.histogram.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return match bucket {
                    0 => min,
                    b if b == BUCKETS - 1 => max,
                    b => bucket_middle_ms(b).clamp(min, max),
                };
            }
        }
        max
    }
}

fn ratio_f(sum: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

impl DatasetReader {
    /// The statistics of the last `days` UTC days up to `today` (inclusive) that have data,
    /// oldest first. Each day comes from its `daily-stats` file, or when that is missing is
    /// computed from the JSONL files (without writing anything: this is read-only).
    /// Encrypted files are read with the reader's keys ([`with_config`](Self::with_config)).
    pub fn stats(&self, days: u32, today: Date) -> Result<Vec<DailyStats>> {
        if days == 0 {
            return Ok(Vec::new());
        }
        let from = today
            .checked_sub(time::Duration::days(i64::from(days) - 1))
            .unwrap_or(Date::MIN);
        let now = Timestamp(SystemClock.now_millis());
        let mut stats = Vec::new();
        for day in self.days_with_data(from, today)? {
            match read_stats_with(self.layout(), day, self.keys())? {
                Some(s) => stats.push(s),
                None => {
                    stats.push(DailyAggregate::load_from(self, self.task(), day)?.to_stats(now))
                }
            }
        }
        Ok(stats)
    }

    /// Recomputes the statistics of `day` from the JSONL files, writes them (sealed with
    /// the current key when the reader has keys, as the runtime writes them) and returns
    /// them: [`rebuild_stats`] for an encrypted dataset.
    pub fn rebuild_stats(&self, day: Date, now: Timestamp) -> Result<DailyStats> {
        let stats = DailyAggregate::load_from(self, self.task(), day)?.to_stats(now);
        write_stats_with(self.layout(), &stats, self.keys())?;
        Ok(stats)
    }
}

/// Writes `stats` to `analytics/daily-stats-<stats.date>.json` atomically (readers see the
/// previous or the new file, never a mix), creating `analytics/` durably. The file is
/// plain JSON; the runtime seals it when `storage.encryption` is set
/// ([`DatasetReader::rebuild_stats`] does the same).
pub fn write_stats(layout: &DatasetLayout, stats: &DailyStats) -> Result<()> {
    write_stats_with(layout, stats, None)
}

/// [`write_stats`], sealed with the current key of `keys` when given (one frame: see
/// `crypt.rs`).
pub(crate) fn write_stats_with(
    layout: &DatasetLayout,
    stats: &DailyStats,
    keys: Option<&KeyRing>,
) -> Result<()> {
    let day = parse_day(&stats.date).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("daily stats date {:?}: expected YYYY-MM-DD", stats.date),
        )
    })?;
    let path = layout.stats_file(day);
    let dir = layout.analytics_dir();
    create_dir_all_durable(&dir)?;
    // A process killed in `write_atomic` leaves its temporary: removed here once it is
    // old enough not to be another process's write in progress.
    remove_stale_temporaries(&dir, STALE_TMP);
    let mut json = serde_json::to_vec_pretty(stats)
        .map_err(|e| Error::io(path.display(), io::Error::other(e)))?;
    json.push(b'\n');
    let bytes = match keys {
        Some(keys) => crypt::seal_document(keys.current(), &json)?,
        None => json,
    };
    write_atomic(&path, &bytes).map_err(|e| Error::io(path.display(), e))
}

/// Reads the statistics file of `day`; `None` when there is none. A corrupt file is an
/// [`ErrorKind::Io`] error naming it; an encrypted one (`storage.encryption`) is an
/// [`ErrorKind::Config`] error naming it: read it with
/// [`DatasetReader::with_config`] and [`DatasetReader::stats`].
pub fn read_stats(layout: &DatasetLayout, day: Date) -> Result<Option<DailyStats>> {
    read_stats_with(layout, day, None)
}

/// [`read_stats`] of a plain file or one sealed with any of `keys`.
pub(crate) fn read_stats_with(
    layout: &DatasetLayout,
    day: Date,
    keys: Option<&KeyRing>,
) -> Result<Option<DailyStats>> {
    let path = layout.stats_file(day);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path.display(), e)),
    };
    let what = path.display().to_string();
    let json = crypt::open_document_or_plain(&bytes, keys, &what)?;
    let stats: DailyStats = serde_json::from_slice(&json)
        .map_err(|e| Error::new(ErrorKind::Io, format!("{what}: invalid daily stats: {e}")))?;
    if stats.date != day_string(day) {
        return Err(Error::new(
            ErrorKind::Io,
            format!("{what}: invalid daily stats: date is {:?}", stats.date),
        ));
    }
    Ok(Some(stats))
}

/// Recomputes the statistics of `day` from the JSONL files, writes them (as
/// [`write_stats`]) and returns them. For an encrypted dataset use
/// [`DatasetReader::rebuild_stats`].
pub fn rebuild_stats(
    layout: &DatasetLayout,
    task: &str,
    day: Date,
    now: Timestamp,
) -> Result<DailyStats> {
    DatasetReader::with_layout(layout.clone(), task).rebuild_stats(day, now)
}

/// FNV-1a with a MurmurHash3 finalizer ([`crate::fnv`]): much cheaper than SipHash for
/// short labels.
struct LabelHasher(Fnv);

impl Default for LabelHasher {
    fn default() -> Self {
        LabelHasher(Fnv::new(0))
    }
}

impl Hasher for LabelHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::dataset::reader::tests::{day, exec, gzip, jsonl, validation, write};

    #[test]
    fn histogram_buckets_are_monotonic_and_within_precision() {
        let mut last = 0;
        let mut x = 0.000_5;
        while x < 5_000_000.0 {
            let b = bucket_of(x);
            assert!(b >= last, "{x}");
            last = b;
            if (1..BUCKETS - 1).contains(&b) {
                let mid = bucket_middle_ms(b);
                assert!(((mid - x) / x).abs() <= 1.0 / 128.0 + 1e-12, "{x} -> {mid}");
            }
            x *= 1.0037;
        }
        assert_eq!(bucket_of(f64::NAN), 0);
        assert_eq!(bucket_of(-1.0), 0);
        assert_eq!(bucket_of(0.000_999), 0);
        assert_eq!(bucket_of(0.001), 1);
        assert_eq!(bucket_of(1e12), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_nearest_rank_within_precision() {
        let mut agg = DailyAggregate::new("spam", day("2026-11-25"));
        // 1..=1000 ms: p50 = 500, p95 = 950, p99 = 990.
        for n in 1..=1000 {
            agg.observe_execution(&exec("2026-11-25", n, "ham", n as f64));
        }
        let s = agg.to_stats(Timestamp(0));
        let close = |got: f64, want: f64| ((got - want) / want).abs() <= 1.0 / 128.0;
        assert!(close(s.latency_ms.p50, 500.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p95, 950.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p99, 990.0), "{:?}", s.latency_ms);
        assert_eq!(s.latency_ms.max, 1000.0);
        assert_eq!(s.latency_ms.avg, 500.5);

        // One value: every percentile is exact thanks to the min/max clamp.
        let mut one = DailyAggregate::new("spam", day("2026-11-25"));
        one.observe_execution(&exec("2026-11-25", 0, "ham", 0.0123));
        // The top rank is the exact maximum.
        let mut few = DailyAggregate::new("spam", day("2026-11-25"));
        for (n, ms) in [1.0, 2.0, 3.0].into_iter().enumerate() {
            few.observe_execution(&exec("2026-11-25", n as i64, "ham", ms));
        }
        assert_eq!(few.to_stats(Timestamp(0)).latency_ms.p95, 3.0);
        let s = one.to_stats(Timestamp(0)).latency_ms;
        assert_eq!((s.p50, s.p99, s.max), (0.0123, 0.0123, 0.0123));
    }

    fn mixed_day(day_s: &str) -> (Vec<ExecutionRecord>, Vec<ValidationRecord>) {
        let mut execs = Vec::new();
        for n in 0..2000i64 {
            let mut r = exec(day_s, n, if n % 3 == 0 { "spam" } else { "ham" }, 0.0);
            r.latency_ms = 0.002 + (n as f64 * 7.31) % 250.0;
            r.program_version = if n < 1500 { 3 } else { 4 };
            match n % 50 {
                1 => {
                    r.status = ExecutionStatus::Error;
                    r.output = Value::Null;
                    r.error = Some("input /text: expected a string".into());
                }
                2 => r.status = ExecutionStatus::Abstain,
                3 => r.status = ExecutionStatus::Timeout,
                4 => r.output = serde_json::json!({"label": "spam", "score": 0.5}),
                _ => {}
            }
            execs.push(r);
        }
        let vals = (0..40).map(|n| validation(day_s, n, n % 4 != 0)).collect();
        (execs, vals)
    }

    #[test]
    fn aggregate_in_memory_and_rebuilt_from_files_agree() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let d = day("2026-11-25");
        let (execs, vals) = mixed_day("2026-11-25");
        let mut live = DailyAggregate::new("spam", d);
        for r in &execs {
            live.observe_execution(r);
        }
        for v in &vals {
            live.observe_validation(v);
        }
        write(&layout.executions_file(d), &jsonl(&execs));
        write(&layout.validations_file(d), &jsonl(&vals));

        let now = Timestamp(1_764_044_594_123);
        let a = live.to_stats(now);
        let b = rebuild_stats(&layout, "spam", d, now).unwrap();
        assert_eq!(read_stats(&layout, d).unwrap().as_ref(), Some(&b));

        assert_eq!(a.total, 2000);
        assert_eq!(
            (a.successful, a.failed, a.abstained, a.timeouts),
            (1880, 40, 40, 40)
        );
        assert_eq!(a.output_distribution["null"], 40);
        assert_eq!(a.output_distribution[r#"{"label":"spam","score":0.5}"#], 40);
        assert_eq!(a.versions["v3"], 1500);
        assert_eq!(a.versions["v4"], 500);
        assert_eq!(a.sampled_count, 200);
        assert_eq!(a.sampling_rate, 0.1);
        assert_eq!((a.validations.total, a.validations.matched), (40, 30));
        assert_eq!(a.validations.match_rate, Some(0.75));

        // Counts agree exactly; latencies within the documented precision (parsing the
        // JSON may round a latency by one ulp).
        let close = |x: f64, y: f64| (x - y).abs() <= x.abs().max(y.abs()) / 128.0;
        let (la, lb) = (&a.latency_ms, &b.latency_ms);
        for (x, y) in [
            (la.avg, lb.avg),
            (la.p50, lb.p50),
            (la.p95, lb.p95),
            (la.p99, lb.p99),
            (la.max, lb.max),
        ] {
            assert!(close(x, y), "{la:?} vs {lb:?}");
        }
        let mut b_same_latency = b.clone();
        b_same_latency.latency_ms = a.latency_ms.clone();
        assert_eq!(a, b_same_latency);
    }

    #[test]
    fn load_counts_records_already_on_disk_plain_or_gz() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let (execs, vals) = mixed_day("2026-11-24");
        let d = day("2026-11-24");
        let mut gz = layout.executions_file(d).into_os_string();
        gz.push(".gz");
        write(Path::new(&gz), &gzip(&jsonl(&execs[..1000])));
        write(&layout.validations_file(d), &jsonl(&vals));
        let mut agg = DailyAggregate::load(&layout, "spam", d).unwrap();
        assert_eq!(agg.day(), d);
        assert_eq!(agg.to_stats(Timestamp(0)).total, 1000);
        assert_eq!(agg.to_stats(Timestamp(0)).validations.total, 40);
        // Restart mid-day: continue counting on top of what is on disk.
        for r in &execs[1000..] {
            agg.observe_execution(r);
        }
        assert_eq!(agg.to_stats(Timestamp(0)).total, 2000);
        // Nothing on disk: an empty aggregate.
        let empty = DailyAggregate::load(&layout, "spam", day("2026-11-20")).unwrap();
        assert_eq!(empty.to_stats(Timestamp(0)).total, 0);
    }

    #[test]
    fn distinct_outputs_are_capped() {
        let mut agg = DailyAggregate::new("spam", day("2026-11-25"));
        for n in 0..(MAX_OUTPUT_KEYS as i64 + 5) {
            let mut r = exec("2026-11-25", n, "x", 1.0);
            r.output = serde_json::json!(n);
            agg.observe_execution(&r);
        }
        agg.observe_execution(&exec("2026-11-25", 0, "ham", 1.0));
        agg.observe_execution(&{
            let mut r = exec("2026-11-25", 0, "x", 1.0);
            r.output = serde_json::json!(7);
            r
        });
        let s = agg.to_stats(Timestamp(0));
        assert_eq!(s.output_distribution.len(), MAX_OUTPUT_KEYS + 1);
        assert_eq!(s.output_distribution["(other)"], 6);
        assert_eq!(s.output_distribution["7"], 2);
    }

    #[test]
    fn stats_file_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let d = day("2026-11-25");
        assert_eq!(read_stats(&layout, d).unwrap(), None);
        let mut agg = DailyAggregate::new("spam", d);
        agg.observe_execution(&exec("2026-11-25", 0, "ham", 1.5));
        write_stats(&layout, &agg.to_stats(Timestamp(1))).unwrap();
        agg.observe_execution(&exec("2026-11-25", 1, "spam", 2.5));
        let stats = agg.to_stats(Timestamp(2));
        write_stats(&layout, &stats).unwrap();
        assert_eq!(read_stats(&layout, d).unwrap(), Some(stats));
        // Only the stats file: no temporaries left behind.
        let names: Vec<_> = fs::read_dir(layout.analytics_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["daily-stats-2026-11-25.json"]);
    }

    #[test]
    fn corrupt_stats_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DatasetLayout::new(dir.path(), "spam");
        let d = day("2026-11-25");
        let path = layout.stats_file(d);
        write(&path, b"{\"date\": \"2026-11-25\", \"tot");
        let err = read_stats(&layout, d).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message()
                .starts_with(&format!("{}: invalid daily stats: ", path.display())),
            "{err}"
        );
        // A file whose date is not its day is corrupt too.
        write_stats(
            &layout,
            &DailyAggregate::new("spam", d).to_stats(Timestamp(0)),
        )
        .unwrap();
        fs::rename(&path, layout.stats_file(day("2026-11-24"))).unwrap();
        let err = read_stats(&layout, day("2026-11-24")).unwrap_err();
        assert!(err.message().contains("date is \"2026-11-25\""), "{err}");
    }
}
