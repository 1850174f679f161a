//! Heartbeats: a small report of the runtime's state — active version, rollout stage,
//! queue depths, last error — that the telemetry uploader thread sends to the cloud every
//! `telemetry.heartbeat_interval_sec` (`POST {cloud.api_url}/api/v1/heartbeats`) and that
//! also rides on every telemetry batch (the latest one taken, in its `heartbeat` field).
//!
//! The runtime's state comes from a [`HeartbeatSource`] the runtime hands over once it is
//! built (a weak reference: telemetry never keeps the runtime alive); heartbeats are built
//! and sent on the uploader thread only, never on the `execute` path.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// The `format` of every heartbeat this version sends.
pub const HEARTBEAT_FORMAT: &str = "loopai.heartbeat/1";

/// One heartbeat: what a deployment reports about itself (`docs/telemetry.md`).
///
/// ```
/// use loopai_core::{Heartbeat, HEARTBEAT_FORMAT};
///
/// let body = r#"{"format": "loopai.heartbeat/1", "deployment_id": "edge-1", "task_id": "spam",
///   "timestamp": "2026-11-25T04:24:00.000Z", "interval_sec": 30, "status": "ok",
///   "active_version": 3,
///   "rollout": {"state": "in_progress", "stable_version": 3, "canary_version": 4,
///               "stage": 1, "fraction": 0.05},
///   "queues": {"dataset_pending": 0, "validation_queued": 2, "telemetry_spooled": 1,
///              "telemetry_pending_records": 17},
///   "last_error": null}"#;
/// let hb: Heartbeat = serde_json::from_str(body)?;
/// assert_eq!(hb.format, HEARTBEAT_FORMAT);
/// assert_eq!(hb.rollout.unwrap().canary_version, 4);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Heartbeat {
    /// Always `loopai.heartbeat/1`.
    pub format: String,
    /// The deployment id (as in telemetry batches).
    pub deployment_id: String,
    /// The task id.
    pub task_id: String,
    /// When the heartbeat was built.
    pub timestamp: Timestamp,
    /// `telemetry.heartbeat_interval_sec`: when the next one is due (the cloud marks a
    /// deployment silent after a few missed intervals).
    pub interval_sec: u64,
    /// `ok`, or `degraded` when the execution log cannot be written.
    pub status: String,
    /// The artifact version executing now.
    pub active_version: u32,
    /// The rollout in progress or the last one; `None` when the task never had one.
    #[serde(default)]
    pub rollout: Option<HeartbeatRollout>,
    /// Queue depths.
    #[serde(default)]
    pub queues: QueueDepths,
    /// The most recent error of the execution log, the telemetry upload or the artifact
    /// refresh (in that order of precedence), if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The rollout part of a [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HeartbeatRollout {
    /// `in_progress`, `promoted`, `rolled_back` or `aborted`.
    pub state: String,
    /// The stable version.
    pub stable_version: u32,
    /// The canary version.
    pub canary_version: u32,
    /// The index of the current stage.
    pub stage: usize,
    /// The canary's share of executions now.
    pub fraction: f64,
}

/// Queue depths in a [`Heartbeat`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueDepths {
    /// Execution and validation records waiting for the log writer.
    #[serde(default)]
    pub dataset_pending: u64,
    /// Sampled executions waiting for the oracle.
    #[serde(default)]
    pub validation_queued: u64,
    /// Telemetry batches waiting in the spool.
    #[serde(default)]
    pub telemetry_spooled: u64,
    /// Records in telemetry batches not cut yet.
    #[serde(default)]
    pub telemetry_pending_records: u64,
}

/// What the runtime reports about itself; telemetry adds its own part.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuntimeState {
    pub status: String,
    pub active_version: u32,
    pub rollout: Option<HeartbeatRollout>,
    pub dataset_pending: u64,
    pub validation_queued: u64,
    /// The execution log's or the refresh's last error.
    pub last_error: Option<String>,
}

/// Where heartbeats get the runtime's state (the runtime, by a weak reference).
pub(crate) trait HeartbeatSource: Send + Sync {
    /// The runtime's state now; `None` once the runtime is gone.
    fn runtime_state(&self) -> Option<RuntimeState>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trips_and_tolerates_missing_optional_parts() {
        let hb = Heartbeat {
            format: HEARTBEAT_FORMAT.into(),
            deployment_id: "d".into(),
            task_id: "t".into(),
            timestamp: Timestamp(1_700_000_000_000),
            interval_sec: 30,
            status: "ok".into(),
            active_version: 2,
            rollout: None,
            queues: QueueDepths::default(),
            last_error: Some("disk full".into()),
        };
        let json = serde_json::to_string(&hb).unwrap();
        assert_eq!(serde_json::from_str::<Heartbeat>(&json).unwrap(), hb);
        let minimal = r#"{"format": "loopai.heartbeat/1", "deployment_id": "d", "task_id": "t",
            "timestamp": "2026-11-25T04:24:00.000Z", "interval_sec": 5, "status": "ok",
            "active_version": 1}"#;
        let parsed: Heartbeat = serde_json::from_str(minimal).unwrap();
        assert_eq!(parsed.queues, QueueDepths::default());
        assert!(parsed.rollout.is_none() && parsed.last_error.is_none());
    }
}
