//! Canary rollout: a new version serves a growing fraction of executions (by default 10%,
//! then 50%, then 100%) next to the stable one, and is promoted or rolled back on
//! measured results.
//!
//! * Routing ([`Route`]): an execution goes to the canary when a keyed hash of its routing
//!   key (the key given to [`Runtime::execute_with_key`](crate::Runtime::execute_with_key),
//!   else the string at `rollout.sticky_key` in the input, else the input's canonical JSON)
//!   falls below the stage's fraction of the hash space. A key stays on the canary as the
//!   fraction grows.
//! * Statistics ([`ArmCounters`]): per arm and per stage, atomic counters bumped by
//!   `execute` (executions, errors, abstentions, a fixed-bucket latency histogram) and by
//!   the validation workers (validations, mismatches). Only validations of executions
//!   sampled by the random draw ([`SampleReason::Random`]) are counted: those sampled for
//!   low confidence or a class quota are not comparable between the arms (a canary sure
//!   of its wrong answers would send fewer, and less telling, executions to validation).
//!   Without random sampling the mismatch rate is not compared at all, as without an
//!   oracle.
//! * Decisions ([`decide`]): an anytime-valid confidence sequence per arm and metric
//!   (Robbins' beta-binomial mixture), checked by the runtime's rollout thread
//!   ([`RolloutChecker`], `loopai-rollout`) every `rollout.check_interval_ms` of the
//!   runtime's clock and by every `flush`. A check's file I/O happens there, never on
//!   the dataset writer thread nor in `execute`.
//! * State: `<data_dir>/artifacts/<task>/rollout.json`, written atomically; a restarted
//!   runtime resumes the rollout at the same stage with its counters.
//!
//! The statistics and the file format are documented in `docs/rollout.md`.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// The `format` of `rollout.json`.
pub const ROLLOUT_FORMAT: &str = "loopai.rollout/1";
/// The file name of the rollout state, in the task's artifact directory.
pub const ROLLOUT_FILE: &str = "rollout.json";
/// The lock file taken while a runtime takes a rollout over (see `driver.rs`).
const ROLLOUT_LOCK_FILE: &str = "rollout.lock";

/// Events kept in `rollout.json` (the oldest are dropped).
const MAX_HISTORY: usize = 1000;
/// Events waiting for a telemetry batch (the oldest are dropped and counted).
const MAX_OUTBOX: usize = 256;
/// Events shown by [`RolloutStatus::recent_events`].
const RECENT_EVENTS: usize = 20;

mod checker;
mod controller;
pub(crate) mod driver;
mod state;
mod stats;

pub(crate) use checker::RolloutChecker;
pub(crate) use controller::{RolloutContext, RolloutController, RolloutOutbox};
pub use stats::MetricComparison;

use crate::executor::canary::ArmCounts;
use stats::rate;

// ---------------------------------------------------------------------------------------
// Public state

/// Where a rollout stands.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// The canary serves its stage's fraction; decisions are pending.
    InProgress,
    /// The canary was promoted: it is the active version.
    Promoted,
    /// The canary was rolled back (automatically or by hand); the stable version stays
    /// active and the canary is not rolled out again automatically.
    RolledBack,
    /// The rollout was abandoned: superseded by a newer canary, or another version was
    /// activated by hand.
    Aborted,
}

/// What happened to a rollout.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutEventKind {
    /// A canary started at the first stage.
    Started,
    /// A restarted runtime resumed the rollout.
    Resumed,
    /// The canary moved to the next stage.
    StageAdvanced,
    /// The canary became the active version.
    Promoted,
    /// The canary was rolled back.
    RolledBack,
    /// The rollout was abandoned.
    Aborted,
    /// A kind this version does not know (from a newer writer).
    #[serde(other)]
    Other,
}

/// One rollout event: logged, kept in `rollout.json` and sent with telemetry
/// (`rollout_events` of a [`TelemetryBatch`](crate::TelemetryBatch)).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: RolloutEventKind,
    /// The stable version of the rollout.
    pub stable_version: u32,
    /// The canary version.
    pub canary_version: u32,
    /// The stage index after the event.
    pub stage: usize,
    /// The canary's share of executions after the event (0 once it no longer serves,
    /// 1 once promoted).
    pub fraction: f64,
    /// Why (the decision's reason, or who asked).
    pub reason: String,
}

/// One arm's statistics over a rollout (and over its current stage).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmStats {
    /// The artifact version of this arm.
    pub version: u32,
    /// Executions served since the rollout started.
    pub executions: u64,
    /// Of those, errors.
    pub errors: u64,
    /// Of those, abstentions.
    pub abstains: u64,
    /// Validations against the oracle of executions served by this arm and sampled at
    /// random ([`SampleReason::Random`](crate::SampleReason::Random)); executions sampled
    /// for another reason are validated but not counted here.
    pub validations: u64,
    /// Of those, how many disagreed with the oracle.
    pub mismatches: u64,
    /// `errors / executions`.
    pub error_rate: Option<f64>,
    /// `abstains / executions`.
    pub abstain_rate: Option<f64>,
    /// `1 - mismatches / validations`.
    pub match_rate: Option<f64>,
    /// 99th percentile of `execute` latency (upper bound of its histogram bucket, ~19%
    /// wide), in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// Executions in the current stage.
    pub stage_executions: u64,
    /// Validations in the current stage.
    pub stage_validations: u64,
}

impl ArmStats {
    pub(crate) fn new(version: u32, total: &ArmCounts, stage: &ArmCounts) -> ArmStats {
        ArmStats {
            version,
            executions: total.executions,
            errors: total.errors,
            abstains: total.abstains,
            validations: total.validations,
            mismatches: total.mismatches,
            error_rate: rate(total.errors, total.executions),
            abstain_rate: rate(total.abstains, total.executions),
            match_rate: rate(
                total.validations.saturating_sub(total.mismatches),
                total.validations,
            ),
            latency_p99_ms: total.p99_ms(),
            stage_executions: stage.executions,
            stage_validations: stage.validations,
        }
    }
}

/// The state of a task's rollout: [`Runtime::rollout`](crate::Runtime::rollout), the
/// `rollout` of [`Health`](crate::Health), [`ArtifactStore::rollout`](crate::ArtifactStore::rollout).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStatus {
    /// Where the rollout stands.
    pub state: RolloutState,
    /// The version serving the rest of the executions.
    pub stable_version: u32,
    /// The version being rolled out.
    pub canary_version: u32,
    /// Index of the current stage in `stages`.
    pub stage: usize,
    /// The canary's share of executions at each stage.
    pub stages: Vec<f64>,
    /// The canary's share now (`stages[stage]` while in progress).
    pub fraction: f64,
    /// When the rollout started.
    pub started_at: Timestamp,
    /// The stable arm's statistics.
    pub stable: ArmStats,
    /// The canary's statistics.
    pub canary: ArmStats,
    /// The compared metrics, with their confidence sequences.
    pub comparisons: Vec<MetricComparison>,
    /// The reason of the last decision (what it waits for, or why it ended).
    pub decision: String,
    /// The last events, oldest first (the whole history is in `rollout.json`).
    pub recent_events: Vec<RolloutEvent>,
    /// The runtime that makes the rollout's decisions (`<host>:<pid>:<random>`), or
    /// `None` when nobody does now (the next runtime to run the task takes it over). See
    /// docs/rollout.md.
    pub driver: Option<String>,
}

#[cfg(test)]
mod tests;
