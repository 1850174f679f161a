//! The rollout state file `artifacts/<task>/rollout.json`: its format, atomic writes, and
//! the [`ArtifactStore`] methods that read and change it.

use crate::artifact::ArtifactStore;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::RolloutConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::executor::canary::StageCounts;
use crate::fsutil::write_atomic;
use crate::rollout::stats::{decide, MetricComparison};
use crate::rollout::{
    ArmStats, RolloutEvent, RolloutEventKind, RolloutState, RolloutStatus, MAX_HISTORY,
    RECENT_EVENTS, ROLLOUT_FILE, ROLLOUT_FORMAT, ROLLOUT_LOCK_FILE,
};
use serde::{Deserialize, Serialize};
use std::io;

// ---------------------------------------------------------------------------------------
// rollout.json

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RolloutFile {
    pub(crate) format: String,
    /// Incremented by every write; a runtime that finds another revision than the one it
    /// wrote adopts the file (a change made by `loopai artifacts promote|rollback`).
    pub(crate) revision: u64,
    pub(crate) task_id: String,
    pub(crate) state: RolloutState,
    pub(crate) stable_version: u32,
    pub(crate) canary_version: u32,
    pub(crate) stage: usize,
    pub(crate) stages: Vec<f64>,
    pub(crate) started_at: Timestamp,
    pub(crate) updated_at: Timestamp,
    #[serde(default)]
    pub(crate) decision: String,
    /// Counts per stage (index = stage).
    #[serde(default)]
    pub(crate) counters: Vec<StageCounts>,
    #[serde(default)]
    pub(crate) history: Vec<RolloutEvent>,
    /// Canaries rolled back: not rolled out again automatically.
    #[serde(default)]
    pub(crate) rolled_back_versions: Vec<u32>,
    /// The runtime that makes this rollout's decisions (`<host>:<pid>:<random>`), `None`
    /// when nobody does (released at shutdown, or started by an older version): see
    /// `rollout/driver.rs` and docs/rollout.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) driver: Option<String>,
}

impl RolloutFile {
    pub(crate) fn fraction(&self) -> f64 {
        match self.state {
            RolloutState::InProgress => self.stages.get(self.stage).copied().unwrap_or(1.0),
            RolloutState::Promoted => 1.0,
            _ => 0.0,
        }
    }

    pub(crate) fn event(
        &self,
        at: Timestamp,
        kind: RolloutEventKind,
        reason: String,
    ) -> RolloutEvent {
        RolloutEvent {
            at,
            kind,
            stable_version: self.stable_version,
            canary_version: self.canary_version,
            stage: self.stage,
            fraction: self.fraction(),
            reason,
        }
    }

    pub(crate) fn push_event(&mut self, event: RolloutEvent) {
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(0);
        }
        self.history.push(event);
    }

    pub(crate) fn total(&self) -> StageCounts {
        let mut total = StageCounts::default();
        for c in &self.counters {
            total.add(c);
        }
        total
    }

    pub(crate) fn status(
        &self,
        counters: &[StageCounts],
        comparisons: Vec<MetricComparison>,
    ) -> RolloutStatus {
        let mut total = StageCounts::default();
        for c in counters {
            total.add(c);
        }
        let stage = counters.get(self.stage).cloned().unwrap_or_default();
        let skip = self.history.len().saturating_sub(RECENT_EVENTS);
        RolloutStatus {
            state: self.state,
            stable_version: self.stable_version,
            canary_version: self.canary_version,
            stage: self.stage,
            stages: self.stages.clone(),
            fraction: self.fraction(),
            started_at: self.started_at,
            stable: ArmStats::new(self.stable_version, &total.stable, &stage.stable),
            canary: ArmStats::new(self.canary_version, &total.canary, &stage.canary),
            comparisons,
            decision: self.decision.clone(),
            recent_events: self.history[skip..].to_vec(),
            driver: self.driver.clone(),
        }
    }
}

pub(super) fn log_event(task: &str, event: &RolloutEvent) {
    let v = (event.stable_version, event.canary_version);
    match event.kind {
        RolloutEventKind::RolledBack | RolloutEventKind::Aborted => log::warn!(
            "loopai: task {task:?}: rollout of v{} (stable v{}) {:?} at stage {}: {}",
            v.1,
            v.0,
            event.kind,
            event.stage,
            event.reason
        ),
        _ => log::info!(
            "loopai: task {task:?}: rollout of v{} (stable v{}) {:?}, stage {} ({}%): {}",
            v.1,
            v.0,
            event.kind,
            event.stage,
            event.fraction * 100.0,
            event.reason
        ),
    }
}

impl ArtifactStore {
    /// The rollout in progress; an unreadable `rollout.json` counts as none (logged), so
    /// that manual activation and rollback always work.
    pub(super) fn rollout_in_progress(&self) -> Option<RolloutFile> {
        match self.read_rollout_file() {
            Ok(f) => f.filter(|f| f.state == RolloutState::InProgress),
            Err(e) => {
                log::warn!("loopai: ignoring the rollout state: {e}");
                None
            }
        }
    }

    pub(crate) fn rollout_path(&self) -> std::path::PathBuf {
        self.task_dir().join(ROLLOUT_FILE)
    }

    /// Locks `rollout.lock` (see `rollout/driver.rs`) until the guard is dropped.
    pub(crate) fn lock_rollout(&self) -> Result<crate::rollout::driver::TakeoverLock> {
        crate::rollout::driver::TakeoverLock::acquire(
            &self.task_dir().join(ROLLOUT_LOCK_FILE),
            &format!("artifacts/{}/{ROLLOUT_LOCK_FILE}", self.task()),
        )
    }

    pub(super) fn read_rollout_file(&self) -> Result<Option<RolloutFile>> {
        let path = self.rollout_path();
        let rel = format!("artifacts/{}/{ROLLOUT_FILE}", self.task());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(rel, e)),
        };
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let file: RolloutFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            Error::new(
                ErrorKind::Artifact,
                format!("{rel}: invalid at `{}`: {}", e.path(), e.inner()),
            )
        })?;
        if file.format != ROLLOUT_FORMAT {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{rel}: format {:?}, expected {ROLLOUT_FORMAT:?}",
                    file.format
                ),
            ));
        }
        if file.stages.is_empty() || file.stage >= file.stages.len() {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{rel}: stage {} is not an index of stages ({} stages)",
                    file.stage,
                    file.stages.len()
                ),
            ));
        }
        Ok(Some(file))
    }

    /// Writes `file` with the next revision (after whatever is on disk).
    pub(super) fn write_rollout_file(&self, file: &mut RolloutFile) -> Result<()> {
        let on_disk = match self.read_rollout_file() {
            Ok(Some(f)) => f.revision,
            _ => 0,
        };
        file.revision = file.revision.max(on_disk) + 1;
        let rel = format!("artifacts/{}/{ROLLOUT_FILE}", self.task());
        let mut bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("serializing {rel}: {e}")))?;
        bytes.push(b'\n');
        write_atomic(&self.rollout_path(), &bytes).map_err(|e| Error::io(rel, e))
    }

    /// The rollout recorded in `rollout.json` (in progress or the last finished one), or
    /// `None` when this task never had one. Counters are those last persisted by the
    /// runtime running it (at every check and at shutdown).
    pub fn rollout(&self) -> Result<Option<RolloutStatus>> {
        Ok(self.read_rollout_file()?.map(|f| {
            let counters = f.counters.clone();
            let total = f.total();
            let stage = counters.get(f.stage).cloned().unwrap_or_default();
            let (_, comparisons) = decide(
                &RolloutConfig::default(),
                total.canary.validations + total.stable.validations > 0,
                f.fraction(),
                &stage,
                &total,
            );
            f.status(&counters, comparisons)
        }))
    }

    /// Finishes the rollout in progress by hand, or activates `version`.
    ///
    /// * No `version`: the canary of the rollout in progress becomes the active version
    ///   (`promoted`); an error when no rollout is in progress.
    /// * `version` equal to the canary: the same.
    /// * Another `version`: it is activated ([`activate`](Self::activate)); a rollout in
    ///   progress is `aborted` (its canary may be rolled out again later).
    ///
    /// A runtime running the rollout adopts the change at its next check
    /// (`rollout.check_interval_ms`, or its next `flush`). Returns the active version.
    pub fn promote(&self, version: Option<u32>) -> Result<u32> {
        let now = Timestamp(SystemClock.now_millis());
        let file = self.rollout_in_progress();
        let target = match (version, &file) {
            (Some(v), _) => v,
            (None, Some(f)) => f.canary_version,
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Artifact,
                    format!(
                        "task {:?}: no rollout in progress; give the version to activate",
                        self.task()
                    ),
                ))
            }
        };
        self.activate(target)?;
        if let Some(mut f) = file {
            let (state, kind, reason) = if target == f.canary_version {
                (
                    RolloutState::Promoted,
                    RolloutEventKind::Promoted,
                    "promoted by hand".to_owned(),
                )
            } else {
                (
                    RolloutState::Aborted,
                    RolloutEventKind::Aborted,
                    format!("v{target} activated by hand"),
                )
            };
            f.state = state;
            f.updated_at = now;
            f.decision.clone_from(&reason);
            let event = f.event(now, kind, reason);
            log_event(self.task(), &event);
            f.push_event(event);
            self.write_rollout_file(&mut f)?;
        }
        Ok(target)
    }

    /// Rolls back the rollout in progress by hand: the stable version stays active and
    /// the canary is marked rolled back (not rolled out again automatically). Returns the
    /// canary's version, or `None` when no rollout is in progress (then nothing changes;
    /// [`rollback`](Self::rollback) is the version-level rollback).
    pub fn abort_rollout(&self, reason: &str) -> Result<Option<u32>> {
        let Some(mut f) = self.rollout_in_progress() else {
            return Ok(None);
        };
        let now = Timestamp(SystemClock.now_millis());
        mark_rolled_back(&mut f, now, reason.to_owned());
        log_event(self.task(), f.history.last().expect("just pushed"));
        self.write_rollout_file(&mut f)?;
        // Also in the version's metadata: it survives a lost or unreadable rollout.json.
        self.mark_rolled_back(f.canary_version, now)?;
        Ok(Some(f.canary_version))
    }
}

pub(crate) fn mark_rolled_back(f: &mut RolloutFile, now: Timestamp, reason: String) {
    f.state = RolloutState::RolledBack;
    f.updated_at = now;
    f.decision.clone_from(&reason);
    if !f.rolled_back_versions.contains(&f.canary_version) {
        f.rolled_back_versions.push(f.canary_version);
    }
    let event = f.event(now, RolloutEventKind::RolledBack, reason);
    f.push_event(event);
}
