//! What the fleet keeps of a batch and of a deployment, shared by the backends: a batch's
//! figures for its task, day and version; its rollout events; a deployment's health.

use loopai_core::Timestamp;
use serde_json::Value;

use super::{DeploymentStatus, RolloutRecord};

/// The interval assumed for a deployment that sent no heartbeat saying its own (the
/// default `telemetry.upload_interval_sec`).
pub(crate) const DEFAULT_REPORT_INTERVAL_SEC: u64 = 60;

/// A batch's contribution to its task's figures of one UTC day and version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchFigures {
    pub(crate) task: String,
    /// `YYYY-MM-DD` of the batch's `timestamp`.
    pub(crate) day: String,
    pub(crate) version: u32,
    pub(crate) executions: u64,
    /// `error` + `timeout`.
    pub(crate) errors: u64,
    pub(crate) abstains: u64,
    pub(crate) sampled: u64,
    pub(crate) validations: u64,
    pub(crate) matches: u64,
    pub(crate) oracle_cost: f64,
    /// The batch's latency percentiles, weighted by its executions (at least 1):
    /// `(weight, p50 * weight, p95 * weight, p99 * weight, max)`.
    pub(crate) latency: Option<(u64, f64, f64, f64, f64)>,
}

pub(crate) fn u64_at(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

pub(crate) fn f64_at(v: &Value, path: &str) -> Option<f64> {
    v.pointer(path)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
}

/// The batch's `timestamp` (RFC 3339 or integer milliseconds).
fn timestamp_of(v: &Value) -> Option<Timestamp> {
    match v.get("timestamp")? {
        Value::String(s) => Timestamp::parse(s),
        Value::Number(n) => n.as_i64().map(Timestamp),
        _ => None,
    }
}

/// The figures of a stored batch; `None` without a `task_id`, a `program_version` or a
/// `timestamp` (such a batch counts for nothing).
pub(crate) fn figures(batch: &Value) -> Option<BatchFigures> {
    let task = batch.get("task_id").and_then(Value::as_str)?;
    let version = batch
        .get("program_version")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())?;
    let ts = timestamp_of(batch)?;
    let m = batch.get("metrics").unwrap_or(&Value::Null);
    let executions = u64_at(m, "/executions");
    let latency = match (
        f64_at(m, "/latency_ms/p50"),
        f64_at(m, "/latency_ms/p95"),
        f64_at(m, "/latency_ms/p99"),
    ) {
        (Some(p50), Some(p95), Some(p99)) => {
            let w = executions.max(1);
            let wf = w as f64;
            let max = f64_at(m, "/latency_ms/max").unwrap_or(p99);
            Some((w, p50 * wf, p95 * wf, p99 * wf, max))
        }
        _ => None,
    };
    let oracle_cost = batch
        .get("sampled_validations")
        .and_then(Value::as_array)
        .map_or(0.0, |vs| {
            vs.iter()
                .filter_map(|v| f64_at(v, "/oracle_cost"))
                .sum::<f64>()
        });
    Some(BatchFigures {
        task: task.to_owned(),
        day: loopai_core::day_string(ts.day()),
        version,
        executions,
        errors: u64_at(m, "/by_status/error") + u64_at(m, "/by_status/timeout"),
        abstains: u64_at(m, "/by_status/abstain"),
        sampled: u64_at(m, "/sampled"),
        validations: u64_at(m, "/validations"),
        matches: u64_at(m, "/matches"),
        oracle_cost,
        latency,
    })
}

/// The rollout events a batch carries, with its deployment.
pub(crate) fn rollout_records(batch: &Value) -> Vec<RolloutRecord> {
    let Some(events) = batch.get("rollout_events").and_then(Value::as_array) else {
        return Vec::new();
    };
    let deployment = batch
        .get("deployment_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    events
        .iter()
        .map(|e| RolloutRecord {
            deployment_id: deployment.clone(),
            at: text(e, "at"),
            kind: text(e, "kind"),
            stable_version: u64_at(e, "/stable_version"),
            canary_version: u64_at(e, "/canary_version"),
            stage: u64_at(e, "/stage"),
            fraction: f64_at(e, "/fraction").unwrap_or(0.0),
            reason: text(e, "reason"),
        })
        .collect()
}

/// A deployment's status now (`now_ms`): `silent` after `silent_after` of its intervals
/// without news, `degraded` when its last heartbeat says so or reports an error, else `ok`.
pub(crate) fn deployment_status(
    deployment_id: &str,
    task_id: &str,
    last_seen_ms: i64,
    heartbeat: Option<&Value>,
    batch_version: Option<u32>,
    now_ms: i64,
    silent_after: u32,
) -> DeploymentStatus {
    let interval = heartbeat
        .and_then(|h| h.get("interval_sec"))
        .and_then(Value::as_u64)
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_REPORT_INTERVAL_SEC);
    let since_ms = now_ms.saturating_sub(last_seen_ms).max(0);
    let silent = since_ms as u128 > u128::from(interval) * u128::from(silent_after) * 1000;
    let degraded = heartbeat.is_some_and(|h| {
        h.get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| s != "ok")
            || h.get("last_error").is_some_and(|e| !e.is_null())
    });
    DeploymentStatus {
        deployment_id: deployment_id.to_owned(),
        task_id: task_id.to_owned(),
        health: if silent {
            "silent"
        } else if degraded {
            "degraded"
        } else {
            "ok"
        },
        last_seen: Timestamp(last_seen_ms).to_string(),
        seconds_since_seen: since_ms as f64 / 1000.0,
        heartbeat: heartbeat.cloned(),
        active_version: heartbeat
            .and_then(|h| h.get("active_version"))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .or(batch_version),
    }
}
