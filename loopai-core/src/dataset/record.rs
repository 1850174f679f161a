//! The records written to the dataset, the clock that stamps them, and the on-disk layout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::{ExecutionSource, ExecutionStatus};

/// A source of wall-clock time, injectable for tests (day rollover, retention).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch (UTC).
    fn now_millis(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A UTC instant with millisecond precision, serialized as RFC 3339
/// (`2026-11-25T04:23:14.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    fn datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The UTC day of this instant.
    pub fn day(self) -> Date {
        // Julian day number of 1970-01-01 is 2440588.
        let days = self.0.div_euclid(MS_PER_DAY);
        i32::try_from(days + 2_440_588)
            .ok()
            .and_then(|jd| Date::from_julian_day(jd).ok())
            .unwrap_or_else(|| self.datetime().date())
    }

    /// Parses an RFC 3339 timestamp.
    pub fn parse(s: &str) -> Option<Timestamp> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Timestamp)
    }
}

const MS_PER_DAY: i64 = 86_400_000;

/// `(year, month, day)` of a count of days since 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hot in the dataset writer: formatted by hand for years 0..=9999.
        let (y, mo, d) = civil_from_days(self.0.div_euclid(MS_PER_DAY));
        if (0..=9999).contains(&y) {
            let ms = self.0.rem_euclid(MS_PER_DAY);
            let fields = [
                (y as u32, 4, b'-'),
                (mo, 2, b'-'),
                (d, 2, b'T'),
                ((ms / 3_600_000) as u32, 2, b':'),
                ((ms / 60_000 % 60) as u32, 2, b':'),
                ((ms / 1000 % 60) as u32, 2, b'.'),
                ((ms % 1000) as u32, 3, b'Z'),
            ];
            let mut buf = [0u8; 24];
            let mut at = 0;
            for (value, width, sep) in fields {
                let mut v = value;
                for i in (0..width).rev() {
                    buf[at + i] = b'0' + (v % 10) as u8;
                    v /= 10;
                }
                buf[at + width] = sep;
                at += width + 1;
            }
            return f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?);
        }
        let t = self.datetime();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 timestamp {s:?}")))
    }
}

/// `YYYY-MM-DD` of a UTC day.
pub fn day_string(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// Parses `YYYY-MM-DD`.
pub fn parse_day(s: &str) -> Option<Date> {
    let mut it = s.splitn(3, '-');
    let y: i32 = it.next()?.parse().ok()?;
    let m: u8 = it.next()?.parse().ok()?;
    let d: u8 = it.next()?.parse().ok()?;
    if s.len() != 10 {
        return None;
    }
    Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
}

/// One execution, as logged to `executions/YYYY-MM-DD.jsonl` (one JSON object a line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExecutionRecord {
    /// The execution's UUID (also in the caller's `ExecutionResult`).
    pub execution_id: Uuid,
    /// The task id.
    pub task_id: String,
    /// The artifact version that ran (0 when the execution failed before any program ran).
    pub program_version: u32,
    /// The input object, or its HMAC-SHA256 (lowercase hex, keyed with the deployment secret
    /// `config/hmac.key`) when `privacy.hash_inputs` is on.
    pub input: Value,
    /// The output (`null` on error).
    pub output: Value,
    /// The confidence (0 on error).
    pub confidence: f64,
    /// Time spent in `execute`, in milliseconds.
    pub latency_ms: f64,
    /// success | error | timeout | abstain.
    pub status: ExecutionStatus,
    /// The error message, for `status: error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the execution was sampled for validation.
    pub sampled: bool,
    /// Who produced `output`: `program`, or `oracle` when the program abstained and
    /// `execution.fallback: oracle` answered (`program` in logs written before this field).
    #[serde(default)]
    pub source: ExecutionSource,
    /// When the execution happened (UTC, millisecond precision).
    pub timestamp: Timestamp,
}

impl ExecutionRecord {
    /// An execution record (`error` set for `status: error`), produced by the program
    /// (set [`source`](ExecutionRecord::source) for an oracle's answer).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        execution_id: Uuid,
        task_id: impl Into<String>,
        program_version: u32,
        input: Value,
        output: Value,
        confidence: f64,
        latency_ms: f64,
        status: ExecutionStatus,
        error: Option<String>,
        sampled: bool,
        timestamp: Timestamp,
    ) -> ExecutionRecord {
        ExecutionRecord {
            execution_id,
            task_id: task_id.into(),
            program_version,
            input,
            output,
            confidence,
            latency_ms,
            status,
            error,
            sampled,
            source: ExecutionSource::Program,
            timestamp,
        }
    }
}

/// One validation of a sampled execution against the oracle, as logged to
/// `validations/sampled-YYYY-MM-DD.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValidationRecord {
    /// The validated execution.
    pub execution_id: Uuid,
    /// The artifact version that produced the validated output.
    pub program_version: u32,
    /// What the oracle answered.
    pub oracle_output: Value,
    /// How long the oracle took, in milliseconds.
    pub oracle_latency_ms: f64,
    /// What the oracle call cost (provider units, 0 for in-process oracles).
    pub oracle_cost: f64,
    /// Whether the program's output matched the oracle's.
    #[serde(rename = "match")]
    pub matched: bool,
    /// Similarity in `[0, 1]` (1 for an exact match).
    pub similarity_score: f64,
    /// exact | normalized | fuzzy | structured.
    pub comparison_method: String,
    /// When the validation finished.
    pub validated_at: Timestamp,
}

impl ValidationRecord {
    /// A validation record.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        execution_id: Uuid,
        program_version: u32,
        oracle_output: Value,
        oracle_latency_ms: f64,
        oracle_cost: f64,
        matched: bool,
        similarity_score: f64,
        comparison_method: impl Into<String>,
        validated_at: Timestamp,
    ) -> ValidationRecord {
        ValidationRecord {
            execution_id,
            program_version,
            oracle_output,
            oracle_latency_ms,
            oracle_cost,
            matched,
            similarity_score,
            comparison_method: comparison_method.into(),
            validated_at,
        }
    }
}

/// Paths of one task's dataset: `<data_dir>/datasets/<task>/...`.
#[derive(Debug, Clone)]
pub struct DatasetLayout {
    root: PathBuf,
}

impl DatasetLayout {
    /// The layout of `task` under `data_dir`.
    pub fn new(data_dir: &Path, task: &str) -> DatasetLayout {
        DatasetLayout {
            root: data_dir.join("datasets").join(task),
        }
    }

    /// `<data_dir>/datasets/<task>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `executions/`.
    pub fn executions_dir(&self) -> PathBuf {
        self.root.join("executions")
    }

    /// `validations/`.
    pub fn validations_dir(&self) -> PathBuf {
        self.root.join("validations")
    }

    /// `analytics/`.
    pub fn analytics_dir(&self) -> PathBuf {
        self.root.join("analytics")
    }

    /// `executions/YYYY-MM-DD.jsonl`.
    pub fn executions_file(&self, day: Date) -> PathBuf {
        self.executions_dir()
            .join(format!("{}.jsonl", day_string(day)))
    }

    /// `validations/sampled-YYYY-MM-DD.jsonl`.
    pub fn validations_file(&self, day: Date) -> PathBuf {
        self.validations_dir()
            .join(format!("sampled-{}.jsonl", day_string(day)))
    }

    /// `analytics/daily-stats-YYYY-MM-DD.json`.
    pub fn stats_file(&self, day: Date) -> PathBuf {
        self.analytics_dir()
            .join(format!("daily-stats-{}.json", day_string(day)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_millis_and_round_trip() {
        let t = Timestamp(1_764_044_594_123);
        assert_eq!(t.to_string(), "2025-11-25T04:23:14.123Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
        assert_eq!(day_string(t.day()), "2025-11-25");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn fast_formatting_agrees_with_the_time_crate() {
        let mut t = -86_400_000i64 * 800_000; // year -220
        while t < 253_402_300_799_999 {
            let ts = Timestamp(t);
            let dt = ts.datetime();
            let expect = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            );
            assert_eq!(ts.to_string(), expect, "at {t}");
            assert_eq!(ts.day(), dt.date(), "at {t}");
            t += 7_777_777_777;
        }
    }

    #[test]
    fn execution_records_without_source_parse_as_program() {
        let old = r#"{"execution_id":"4f1c2a7e-3b9d-4c61-8e2f-0a5b6c7d8e9f","task_id":"spam","program_version":3,"input":{"text":"x"},"output":"spam","confidence":0.9,"latency_ms":0.021,"status":"success","sampled":false,"timestamp":"2026-11-25T04:23:14.123Z"}"#;
        let r: ExecutionRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.source, ExecutionSource::Program);
        let mut r = r;
        r.source = ExecutionSource::Oracle;
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""source":"oracle""#), "{line}");
        assert_eq!(serde_json::from_str::<ExecutionRecord>(&line).unwrap(), r);
    }

    #[test]
    fn days_parse_strictly() {
        assert_eq!(
            parse_day("2026-02-28").map(day_string).as_deref(),
            Some("2026-02-28")
        );
        assert_eq!(parse_day("2026-02-30"), None);
        assert_eq!(parse_day("2026-2-3"), None);
        assert_eq!(parse_day("x"), None);
    }

    #[test]
    fn layout_matches_the_design() {
        let l = DatasetLayout::new(Path::new("/d"), "spam");
        let day = parse_day("2026-11-25").unwrap();
        assert_eq!(
            l.executions_file(day),
            Path::new("/d/datasets/spam/executions/2026-11-25.jsonl")
        );
        assert_eq!(
            l.validations_file(day),
            Path::new("/d/datasets/spam/validations/sampled-2026-11-25.jsonl")
        );
        assert_eq!(
            l.stats_file(day),
            Path::new("/d/datasets/spam/analytics/daily-stats-2026-11-25.json")
        );
    }
}
