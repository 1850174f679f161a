//! The records written to the dataset, how an execution ended and who answered it, and the
//! on-disk layout.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::Date;
use uuid::Uuid;

use crate::clock::{day_string, Timestamp};

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// The program produced an output with enough confidence.
    Success,
    /// The program abstained: its confidence is below its `abstain_below` threshold, or no
    /// decision applied (the output is then `null`).
    Abstain,
    /// The execution failed (recorded in execution logs; `execute` returns the error).
    Error,
    /// The execution did not finish within `execution.timeout_ms` (used by oracle fallback).
    Timeout,
}

/// Who produced an execution's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExecutionSource {
    /// The program (the default, and the only source unless `execution.fallback: oracle`).
    #[default]
    Program,
    /// The oracle, asked because the program abstained (`execution.fallback: oracle`).
    Oracle,
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
    use crate::clock::parse_day;

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
