//! The rollout controller: starts a rollout, moves it through its stages, promotes or rolls
//! it back, and keeps the events for telemetry. It drives the executor (the canary slot)
//! and reaches the rest of the runtime only through [`RolloutContext`].

use crate::artifact::{ArtifactStore, LoadedArtifact};
use crate::clock::{Clock, Timestamp};
use crate::config::RolloutConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::executor::canary::{CanarySlot, Route, StageCounters, StageCounts};
use crate::executor::{ActiveProgram, Executor};
use crate::program::ProgramLimits;
use crate::rollout::state::{log_event, mark_rolled_back, RolloutFile};
use crate::rollout::stats::{decide, Decision, MetricComparison};
use crate::rollout::{
    RolloutEvent, RolloutEventKind, RolloutState, RolloutStatus, MAX_OUTBOX, ROLLOUT_FILE,
    ROLLOUT_FORMAT,
};
use crate::validator::TaskInfo;
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Telemetry outbox

/// Rollout events waiting for the next telemetry batch.
#[derive(Debug, Default)]
pub(crate) struct RolloutOutbox {
    pub(crate) events: Mutex<VecDeque<RolloutEvent>>,
    pub(crate) dropped: AtomicU64,
}

impl RolloutOutbox {
    pub(crate) fn push(&self, event: RolloutEvent) {
        let mut events = self.events.lock();
        if events.len() >= MAX_OUTBOX {
            events.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        events.push_back(event);
    }

    /// Takes every waiting event.
    pub(crate) fn take(&self) -> Vec<RolloutEvent> {
        self.events.lock().drain(..).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The controller

/// Everything the controller changes when a rollout moves.
pub(crate) struct RolloutContext {
    pub executor: Arc<Executor>,
    pub store: ArtifactStore,
    pub limits: ProgramLimits,
    pub task: Arc<TaskInfo>,
    pub config: RolloutConfig,
    /// Whether validations that count can arrive: there is an oracle and the sampler can
    /// sample at random ([`SampleReason::Random`]).
    pub with_validations: bool,
    pub clock: Arc<dyn Clock>,
    pub outbox: Arc<RolloutOutbox>,
}

#[derive(Debug, Default)]
pub(super) struct Live {
    /// The last file read or written (in progress or finished).
    pub(crate) file: Option<RolloutFile>,
    /// Counts restored from disk, per stage.
    pub(crate) base: Vec<StageCounts>,
    /// Counters of this process, per stage.
    pub(crate) live: Vec<Option<Arc<StageCounters>>>,
    /// The revision this runtime last wrote or adopted.
    pub(crate) revision: u64,
    /// The counts last persisted (to skip writes when nothing changed).
    pub(crate) persisted: Vec<StageCounts>,
    pub(crate) comparisons: Vec<MetricComparison>,
}

impl Live {
    pub(crate) fn counts(&self) -> Vec<StageCounts> {
        let n = self.base.len().max(self.live.len());
        (0..n)
            .map(|i| {
                let mut c = self.base.get(i).cloned().unwrap_or_default();
                if let Some(Some(l)) = self.live.get(i) {
                    c.add(&l.snapshot());
                }
                c
            })
            .collect()
    }

    pub(crate) fn in_progress(&self) -> Option<&RolloutFile> {
        self.file
            .as_ref()
            .filter(|f| f.state == RolloutState::InProgress)
    }
}

/// Drives one runtime's rollouts. Shared by the runtime and its rollout thread.
pub(crate) struct RolloutController {
    pub(crate) ctx: RolloutContext,
    pub(super) live: Mutex<Live>,
    pub(crate) next_check_ms: AtomicI64,
}

impl std::fmt::Debug for RolloutController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutController")
            .field("task", &self.ctx.task.task)
            .finish_non_exhaustive()
    }
}

impl RolloutController {
    /// Reads `rollout.json` and resumes a rollout in progress.
    pub(crate) fn start(ctx: RolloutContext) -> Result<RolloutController> {
        let now = ctx.clock.now_millis();
        let controller = RolloutController {
            next_check_ms: AtomicI64::new(now.saturating_add(ctx.config.check_interval_ms_i64())),
            ctx,
            live: Mutex::new(Live::default()),
        };
        let file = match controller.ctx.store.read_rollout_file() {
            Ok(f) => f,
            Err(e) => {
                log::error!(
                    "loopai: task {:?}: ignoring the rollout state: {e}",
                    controller.ctx.task.task
                );
                None
            }
        };
        if let Some(file) = file {
            controller.resume(file)?;
        }
        Ok(controller)
    }

    pub(crate) fn now(&self) -> Timestamp {
        Timestamp(self.ctx.clock.now_millis())
    }

    pub(super) fn emit(&self, live: &mut Live, event: RolloutEvent) {
        log_event(&self.ctx.task.task, &event);
        self.ctx.outbox.push(event.clone());
        if let Some(f) = live.file.as_mut() {
            f.push_event(event);
        }
    }

    /// Persists the state (counters included).
    pub(super) fn save(&self, live: &mut Live) -> Result<()> {
        let counts = live.counts();
        let Some(file) = live.file.as_mut() else {
            return Ok(());
        };
        file.counters.clone_from(&counts);
        file.updated_at = self.now();
        file.revision = file.revision.max(live.revision);
        self.ctx.store.write_rollout_file(file)?;
        live.revision = file.revision;
        live.persisted = counts;
        Ok(())
    }

    pub(super) fn slot(&self, program: Arc<ActiveProgram>, file: &RolloutFile) -> CanarySlot {
        CanarySlot {
            stable_version: file.stable_version,
            route: Route::new(
                &self.ctx.task.task,
                file.canary_version,
                file.stages[file.stage],
                self.ctx.config.sticky_key.clone(),
            ),
            program,
            counters: Arc::new(StageCounters::default()),
        }
    }

    /// Compiles `version` for the executor (checking its labels against the output
    /// schema), plus its task description: the first half of a version switch
    /// ([`switch`](Self::switch) is the second). Nothing changes yet.
    pub(crate) fn compile(&self, version: u32) -> Result<(Arc<ActiveProgram>, String)> {
        self.compile_loaded(&self.ctx.store.load(version)?)
    }

    /// [`compile`](Self::compile) of an artifact already loaded.
    pub(crate) fn compile_loaded(
        &self,
        loaded: &LoadedArtifact,
    ) -> Result<(Arc<ActiveProgram>, String)> {
        let (program, _, _) = crate::executor::compile_artifact(loaded, &self.ctx.limits)?;
        let description = loaded.description(&program);
        let prepared = self
            .ctx
            .executor
            .prepare_shared(program, loaded.metadata.version)?;
        Ok((prepared, description))
    }

    /// The one version switch: makes a compiled program the active one (executions in
    /// flight finish on the program they started with) and gives the oracle its task
    /// description. Every change of the stable version goes through here: activation,
    /// reload, promotion, following an outside change.
    pub(crate) fn switch(&self, program: Arc<ActiveProgram>, description: String) {
        self.ctx.executor.set_active(program);
        self.ctx.task.description.store(Arc::new(description));
    }

    pub(super) fn install(&self, live: &mut Live, program: Arc<ActiveProgram>) {
        let Some(file) = live.file.as_ref() else {
            return;
        };
        let slot = self.slot(program, file);
        let stage = file.stage;
        if live.live.len() <= stage {
            live.live.resize(stage + 1, None);
        }
        live.live[stage] = Some(slot.counters.clone());
        self.ctx.executor.install_canary(slot);
    }

    pub(super) fn resume(&self, mut file: RolloutFile) -> Result<()> {
        let mut live = self.live.lock();
        live.revision = file.revision;
        if file.state != RolloutState::InProgress {
            live.file = Some(file);
            return Ok(());
        }
        let active = self.ctx.executor.version();
        let now = self.now();
        let problem = if active == file.canary_version {
            // Crashed between activating the canary and recording the promotion.
            file.state = RolloutState::Promoted;
            file.decision = "the canary was found active at start-up".to_owned();
            let event = file.event(now, RolloutEventKind::Promoted, file.decision.clone());
            live.file = Some(file);
            self.emit(&mut live, event);
            return self.save(&mut live);
        } else if active != file.stable_version {
            Some(format!(
                "v{active} is active at start-up, not the rollout's stable v{}",
                file.stable_version
            ))
        } else if !self.ctx.config.enabled {
            Some("rollout.enabled is false".to_owned())
        } else {
            None
        };
        let compiled = match problem {
            Some(p) => Err(p),
            None => self
                .compile(file.canary_version)
                .map_err(|e| format!("cannot load the canary: {e}")),
        };
        match compiled {
            Ok((program, _)) => {
                live.base = file.counters.clone();
                live.persisted = file.counters.clone();
                let event = file.event(now, RolloutEventKind::Resumed, "restart".to_owned());
                live.file = Some(file);
                self.install(&mut live, program);
                self.emit(&mut live, event);
                Ok(())
            }
            Err(reason) => {
                file.state = RolloutState::Aborted;
                file.decision.clone_from(&reason);
                let event = file.event(now, RolloutEventKind::Aborted, reason);
                live.file = Some(file);
                self.emit(&mut live, event);
                self.save(&mut live)
            }
        }
    }

    /// Starts rolling out `version` (see [`Runtime::begin_rollout`](crate::Runtime::begin_rollout)).
    pub(crate) fn begin(&self, version: u32) -> Result<()> {
        let mut live = self.live.lock();
        let stable = self.ctx.executor.version();
        if version == stable {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!("cannot roll out v{version}: it is the active version"),
            ));
        }
        let marked = self
            .ctx
            .store
            .verify(version)
            .is_ok_and(|m| m.extra.contains_key("rolled_back_at"));
        if marked
            && !live
                .file
                .as_ref()
                .is_some_and(|f| f.rolled_back_versions.contains(&version))
        {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "cannot roll out v{version}: its metadata says it was rolled back (rolled_back_at); it is not rolled out again automatically — activate it by hand (`loopai artifacts promote` or Runtime::activate) if it should run"
                ),
            ));
        }
        if let Some(f) = live.file.as_ref() {
            if f.rolled_back_versions.contains(&version) {
                return Err(Error::new(
                    ErrorKind::Artifact,
                    format!(
                        "cannot roll out v{version}: it was rolled back ({}); it is not rolled out again automatically — activate it by hand (`loopai artifacts promote` or Runtime::activate) if it should run",
                        f.history
                            .iter()
                            .rev()
                            .find(|e| e.canary_version == version && e.kind == RolloutEventKind::RolledBack)
                            .map_or("earlier", |e| e.reason.as_str())
                    ),
                ));
            }
            if f.state == RolloutState::InProgress && f.canary_version == version {
                return Ok(());
            }
        }
        let (program, _) = self.compile(version)?;
        let now = self.now();
        let mut rolled_back = Vec::new();
        let mut revision = live.revision;
        if let Some(old) = live.file.as_ref() {
            rolled_back.clone_from(&old.rolled_back_versions);
            revision = revision.max(old.revision);
        }
        if live.in_progress().is_some() {
            self.end(
                &mut live,
                RolloutState::Aborted,
                format!("superseded by v{version}"),
            )?;
        }
        let stages = self.ctx.config.stages.clone();
        let file = RolloutFile {
            format: ROLLOUT_FORMAT.to_owned(),
            revision,
            task_id: self.ctx.task.task.clone(),
            state: RolloutState::InProgress,
            stable_version: stable,
            canary_version: version,
            stage: 0,
            stages,
            started_at: now,
            updated_at: now,
            decision: "started".to_owned(),
            counters: vec![StageCounts::default()],
            history: Vec::new(),
            rolled_back_versions: rolled_back,
        };
        let event = file.event(
            now,
            RolloutEventKind::Started,
            format!("v{version} installed"),
        );
        live.file = Some(file);
        live.base = Vec::new();
        live.live = Vec::new();
        live.persisted = Vec::new();
        self.install(&mut live, program);
        self.emit(&mut live, event);
        self.save(&mut live)
    }

    /// Ends the rollout in progress without promoting: the canary stops serving.
    pub(super) fn end(&self, live: &mut Live, state: RolloutState, reason: String) -> Result<()> {
        let counts = live.counts();
        self.ctx.executor.clear_canary();
        let now = self.now();
        let Some(file) = live.file.as_mut() else {
            return Ok(());
        };
        file.counters = counts.clone();
        if state == RolloutState::RolledBack {
            mark_rolled_back(file, now, reason);
            let event = file.history.last().cloned().expect("just pushed");
            log_event(&self.ctx.task.task, &event);
            self.ctx.outbox.push(event);
            if let Err(e) = self.ctx.store.mark_rolled_back(file.canary_version, now) {
                log::warn!("loopai: task {:?}: {e}", self.ctx.task.task);
            }
        } else {
            file.state = state;
            file.decision.clone_from(&reason);
            let event = file.event(now, RolloutEventKind::Aborted, reason);
            self.emit(live, event);
        }
        live.base = counts;
        live.live.clear();
        self.save(live)
    }

    /// Makes the canary the active version.
    pub(super) fn finish_promotion(&self, live: &mut Live, reason: String) -> Result<()> {
        let Some(file) = live.in_progress() else {
            return Err(no_rollout(&self.ctx.task.task));
        };
        let version = file.canary_version;
        let (program, description) = match self.ctx.executor.canary_slot() {
            Some(slot) if slot.program.version() == version => (slot.program.clone(), None),
            _ => {
                let (p, d) = self.compile(version)?;
                (p, Some(d))
            }
        };
        self.ctx.store.activate(version)?;
        let counts = live.counts();
        let description = match description {
            Some(d) => d,
            None => self.ctx.store.load(version)?.description(program.program()),
        };
        self.switch(program, description);
        self.ctx.executor.clear_canary();
        let now = self.now();
        if let Some(file) = live.file.as_mut() {
            file.counters = counts.clone();
            file.state = RolloutState::Promoted;
            file.decision.clone_from(&reason);
        }
        live.base = counts;
        live.live.clear();
        let event = live
            .file
            .as_ref()
            .map(|f| f.event(now, RolloutEventKind::Promoted, reason));
        if let Some(event) = event {
            self.emit(live, event);
        }
        self.save(live)
    }

    /// Finishes the rollout in progress now: the canary becomes the active version.
    pub(crate) fn promote(&self) -> Result<u32> {
        let mut live = self.live.lock();
        let version = live
            .in_progress()
            .map(|f| f.canary_version)
            .ok_or_else(|| no_rollout(&self.ctx.task.task))?;
        self.finish_promotion(&mut live, "promoted by hand".to_owned())?;
        Ok(version)
    }

    /// Rolls back the rollout in progress (`mark`: not rolled out again automatically) or
    /// abandons it; returns the canary version, `None` when none was in progress.
    pub(crate) fn abort(&self, reason: String, mark: bool) -> Result<Option<u32>> {
        let mut live = self.live.lock();
        let Some(version) = live.in_progress().map(|f| f.canary_version) else {
            return Ok(None);
        };
        let state = if mark {
            RolloutState::RolledBack
        } else {
            RolloutState::Aborted
        };
        self.end(&mut live, state, reason)?;
        Ok(Some(version))
    }

    /// Adopts a `rollout.json` changed by someone else (`loopai artifacts promote|rollback`).
    /// Returns whether the rollout in progress ended.
    pub(super) fn adopt_external(&self, live: &mut Live) -> Result<bool> {
        let Some(disk) = self.ctx.store.read_rollout_file()? else {
            return Ok(false);
        };
        if disk.revision <= live.revision {
            return Ok(false);
        }
        let ours = live.in_progress().map(|f| f.canary_version);
        let theirs = (disk.state == RolloutState::InProgress).then_some(disk.canary_version);
        live.revision = disk.revision;
        if ours.is_some() && ours == theirs {
            // Our own rollout, rewritten (a concurrent writer): keep our counters.
            if let Some(f) = live.file.as_mut() {
                f.rolled_back_versions
                    .clone_from(&disk.rolled_back_versions);
                f.revision = disk.revision;
            }
            return Ok(false);
        }
        let counts = live.counts();
        self.ctx.executor.clear_canary();
        live.base = counts;
        live.live.clear();
        live.file = Some(disk);
        if ours.is_some() {
            log::info!(
                "loopai: task {:?}: rollout changed outside this runtime ({ROLLOUT_FILE} revision {}); following it",
                self.ctx.task.task,
                live.revision
            );
        }
        Ok(ours.is_some())
    }

    /// Brings the stable program in line with the `active` pointer (after a change made
    /// outside this runtime).
    pub(crate) fn sync_active(&self) -> Result<()> {
        let Some(active) = self.ctx.store.active_version()? else {
            return Ok(());
        };
        if active != self.ctx.executor.version() {
            let (program, description) = self.compile(active)?;
            self.switch(program, description);
        }
        Ok(())
    }

    /// One check: follows outside changes, then decides and acts. Called by the rollout
    /// thread ([`RolloutChecker`]) and by `reload`.
    pub(crate) fn check(&self) -> Result<()> {
        self.check_locked(self.live.lock())
    }

    /// [`check`](Self::check), waiting for the state at most until `deadline` (another
    /// check may be in progress, in I/O on `rollout.json`). Called by `flush`.
    pub(crate) fn check_until(&self, deadline: Instant) -> Result<()> {
        let live = self.live.try_lock_until(deadline).ok_or_else(|| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "task {:?}: rollout check: another check was still running at the deadline",
                    self.ctx.task.task
                ),
            )
        })?;
        self.check_locked(live)
    }

    pub(super) fn check_locked(&self, mut live: MutexGuard<'_, Live>) -> Result<()> {
        if live.in_progress().is_none() {
            return Ok(());
        }
        if self.adopt_external(&mut live)? {
            drop(live);
            return self.sync_active();
        }
        let Some(file) = live.in_progress() else {
            return Ok(());
        };
        let (stage, fraction, last) = (
            file.stage,
            file.stages[file.stage],
            file.stage + 1 >= file.stages.len(),
        );
        let counts = live.counts();
        let mut total = StageCounts::default();
        for c in &counts {
            total.add(c);
        }
        let current = counts.get(stage).cloned().unwrap_or_default();
        let (decision, comparisons) = decide(
            &self.ctx.config,
            self.ctx.with_validations,
            fraction,
            &current,
            &total,
        );
        live.comparisons = comparisons;
        match decision {
            Decision::Rollback(reason) => self.end(&mut live, RolloutState::RolledBack, reason),
            Decision::Advance(reason) if last => self.finish_promotion(&mut live, reason),
            Decision::Advance(reason) => {
                let program = match self.ctx.executor.canary_slot() {
                    Some(slot) => slot.program.clone(),
                    None => return Ok(()),
                };
                let now = self.now();
                let event = {
                    let Some(file) = live.file.as_mut() else {
                        return Ok(());
                    };
                    file.stage = stage + 1;
                    file.decision.clone_from(&reason);
                    file.event(now, RolloutEventKind::StageAdvanced, reason)
                };
                if live.base.len() < stage + 2 {
                    live.base.resize(stage + 2, StageCounts::default());
                }
                self.install(&mut live, program);
                self.emit(&mut live, event);
                self.save(&mut live)
            }
            Decision::Hold(reason) => {
                if let Some(f) = live.file.as_mut() {
                    f.decision = reason;
                }
                if live.persisted != counts {
                    self.save_counters(&mut live)?;
                }
                Ok(())
            }
        }
    }

    /// How long the rollout thread sleeps before its next [`tick`](Self::tick): until the
    /// next check is due on the runtime's clock, at most `rollout.check_interval_ms` (so
    /// that an injected clock that jumps is followed within that much real time), at least
    /// 1 ms.
    pub(crate) fn until_next_check(&self) -> Duration {
        let left = self
            .next_check_ms
            .load(Ordering::Relaxed)
            .saturating_sub(self.ctx.clock.now_millis());
        let ms = u64::try_from(left)
            .unwrap_or(0)
            .clamp(1, self.ctx.config.check_interval_ms.max(1));
        Duration::from_millis(ms)
    }

    /// Called by the rollout thread: checks once `rollout.check_interval_ms` of the
    /// runtime's clock have passed since the last check.
    pub(crate) fn tick(&self) {
        let now_ms = self.ctx.clock.now_millis();
        let due = self.next_check_ms.load(Ordering::Relaxed);
        if now_ms < due {
            return;
        }
        self.next_check_ms.store(
            now_ms.saturating_add(self.ctx.config.check_interval_ms_i64()),
            Ordering::Relaxed,
        );
        if let Err(e) = self.check() {
            log::warn!(
                "loopai: task {:?}: rollout check failed: {e}",
                self.ctx.task.task
            );
        }
    }

    /// Persists the counters (at shutdown), waiting for the state at most until
    /// `deadline` (a check stuck in I/O keeps it).
    pub(crate) fn persist(&self, deadline: Instant) -> Result<()> {
        let mut live = self.live.try_lock_until(deadline).ok_or_else(|| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "task {:?}: rollout counters not persisted: a check was still running at the deadline",
                    self.ctx.task.task
                ),
            )
        })?;
        if live.in_progress().is_some() && live.persisted != live.counts() {
            self.save_counters(&mut live)?;
        }
        Ok(())
    }

    /// Saves the live counters, unless `rollout.json` changed on disk since this runtime
    /// last wrote or read it (a `loopai artifacts rollback | promote | activate` from
    /// another process): then that change is adopted and nothing is written, so a
    /// periodic or shutdown save never overwrites an operator's decision.
    pub(super) fn save_counters(&self, live: &mut Live) -> Result<()> {
        if self.adopt_external(live)? {
            return Ok(());
        }
        self.save(live)
    }

    /// The current state, with live counters; `None` when the task never had a rollout.
    pub(crate) fn status(&self) -> Option<RolloutStatus> {
        self.status_of(&self.live.lock())
    }

    /// Like `status`, without waiting for the lock: `None` when it is held. For a forked
    /// child, where a lock held by the parent's rollout thread at the fork is never
    /// released.
    pub(crate) fn try_status(&self) -> Option<RolloutStatus> {
        let live = self.live.try_lock()?;
        self.status_of(&live)
    }

    /// Holds the rollout lock (tests of what must not wait for it).
    #[cfg(test)]
    pub(crate) fn hold_lock(&self) -> impl Sized + '_ {
        self.live.lock()
    }

    pub(super) fn status_of(&self, live: &Live) -> Option<RolloutStatus> {
        let file = live.file.as_ref()?;
        let counts = live.counts();
        let comparisons = if live.comparisons.is_empty() {
            let mut total = StageCounts::default();
            for c in &counts {
                total.add(c);
            }
            let stage = counts.get(file.stage).cloned().unwrap_or_default();
            decide(
                &self.ctx.config,
                self.ctx.with_validations,
                file.fraction(),
                &stage,
                &total,
            )
            .1
        } else {
            live.comparisons.clone()
        };
        Some(file.status(&counts, comparisons))
    }
}

fn no_rollout(task: &str) -> Error {
    Error::new(
        ErrorKind::Artifact,
        format!("task {task:?}: no rollout in progress"),
    )
}
