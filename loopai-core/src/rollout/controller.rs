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
use crate::rollout::driver;
use crate::rollout::state::{log_event, mark_rolled_back, RolloutFile};
use crate::rollout::stats::{decide, Decision, MetricComparison};
use crate::rollout::{
    RolloutEvent, RolloutEventKind, RolloutState, RolloutStatus, MAX_OUTBOX, ROLLOUT_FILE,
    ROLLOUT_FORMAT,
};
use crate::sampler::Sampler;
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
    /// Restarted (temporal boost) when following switches the active version.
    pub sampler: Arc<Sampler>,
    /// This runtime's id in `rollout.json`'s `driver` (see `driver.rs`).
    pub driver_id: String,
    /// How often the rollout thread follows the artifact cache (`None`: never).
    pub follow: Option<Duration>,
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
    /// Whether this runtime drives the rollout in progress (makes its decisions and
    /// persists its counters); otherwise it only follows it (see `driver.rs`).
    pub(crate) driving: bool,
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
    /// The last error of following the artifact cache (logged once, not at every round).
    follow_error: Mutex<Option<String>>,
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
            follow_error: Mutex::new(None),
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

    pub(super) fn resume(&self, file: RolloutFile) -> Result<()> {
        let mut live = self.live.lock();
        live.revision = file.revision;
        if file.state != RolloutState::InProgress {
            live.file = Some(file);
            return Ok(());
        }
        if !self.claimable(&file) {
            self.follow_file(&mut live, file);
            return Ok(());
        }
        // Take it over under the lock, from the file as it is then (another runtime may
        // have taken it over since it was read).
        let _lock = self.ctx.store.lock_rollout()?;
        let mut file = match self.ctx.store.read_rollout_file()? {
            Some(f) if self.claimable(&f) => f,
            Some(f) => {
                live.revision = f.revision;
                if f.state == RolloutState::InProgress {
                    self.follow_file(&mut live, f);
                } else {
                    live.file = Some(f);
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        live.revision = file.revision;
        file.driver = Some(self.ctx.driver_id.clone());
        live.driving = true;
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
                // Records that this runtime drives it now.
                self.save(&mut live)
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
            driver: Some(self.ctx.driver_id.clone()),
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
        live.driving = true;
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

    /// Adopts a `rollout.json` changed by someone else: `loopai artifacts promote|rollback`,
    /// `loopai rollout start|promote|abort`, another runtime that drives the rollout or
    /// took it over. Returns whether a rollout in progress here ended.
    pub(super) fn adopt_external(&self, live: &mut Live) -> Result<bool> {
        let Some(disk) = self.ctx.store.read_rollout_file()? else {
            return Ok(false);
        };
        if disk.revision <= live.revision {
            return Ok(false);
        }
        let ours = live.in_progress().map(|f| f.canary_version);
        let theirs = (disk.state == RolloutState::InProgress).then_some(disk.canary_version);
        let driven_by_us =
            disk.driver.is_none() || disk.driver.as_deref() == Some(self.ctx.driver_id.as_str());
        if live.driving && ours.is_some() && ours == theirs && driven_by_us {
            // Our own rollout, rewritten (a concurrent writer): keep our counters.
            live.revision = disk.revision;
            if let Some(f) = live.file.as_mut() {
                f.rolled_back_versions
                    .clone_from(&disk.rolled_back_versions);
                f.revision = disk.revision;
            }
            return Ok(false);
        }
        let ended = ours.is_some() && ours != theirs;
        if ended || (live.driving && ours.is_some()) {
            log::info!(
                "loopai: task {:?}: rollout changed outside this runtime ({ROLLOUT_FILE} revision {}{}); following it",
                self.ctx.task.task,
                disk.revision,
                match (&disk.driver, theirs) {
                    (Some(d), Some(_)) => format!(", driven by {d}"),
                    _ => String::new(),
                }
            );
        }
        if ended && live.driving {
            // The counts of this runtime stay with the rollout it ran.
            let counts = live.counts();
            self.ctx.executor.clear_canary();
            live.base = counts;
            live.live.clear();
            live.file = Some(disk);
            live.revision = live.file.as_ref().map_or(0, |f| f.revision);
            live.driving = false;
        } else if theirs.is_some() {
            self.follow_file(live, disk);
        } else {
            self.ctx.executor.clear_canary();
            live.base = disk.counters.clone();
            live.live.clear();
            live.revision = disk.revision;
            live.file = Some(disk);
            live.driving = false;
        }
        Ok(ended)
    }

    /// Whether this runtime may drive `file`: a rollout in progress that it drives
    /// already, or that nobody drives (no driver, a driver on this host whose process is
    /// gone, or a heartbeat older than the lease).
    pub(super) fn claimable(&self, file: &RolloutFile) -> bool {
        if file.state != RolloutState::InProgress {
            return false;
        }
        match &file.driver {
            None => true,
            Some(id) if *id == self.ctx.driver_id => true,
            Some(id) => {
                driver::is_gone(id)
                    || self.now().millis().saturating_sub(file.updated_at.millis())
                        > driver::lease_ms(self.ctx.config.check_interval_ms)
            }
        }
    }

    /// Mirrors a rollout in progress that `disk` describes, driven by the runtime it names:
    /// the canary serves the file's stage (when the file's stable version is the active
    /// one), with the file's counters as the base.
    pub(super) fn follow_file(&self, live: &mut Live, disk: RolloutFile) {
        live.revision = disk.revision;
        live.driving = disk.driver.as_deref() == Some(self.ctx.driver_id.as_str());
        live.base = disk.counters.clone();
        live.persisted = disk.counters.clone();
        live.live.clear();
        live.comparisons.clear();
        let serve = disk.state == RolloutState::InProgress
            && self.ctx.config.enabled
            && disk.stable_version == self.ctx.executor.version();
        let program = if serve {
            match self.ctx.executor.canary_slot() {
                Some(slot) if slot.program.version() == disk.canary_version => {
                    Some(slot.program.clone())
                }
                _ => match self.compile(disk.canary_version) {
                    Ok((program, _)) => Some(program),
                    Err(e) => {
                        log::warn!(
                            "loopai: task {:?}: cannot load the canary v{} of the rollout in progress (serving v{} only): {e}",
                            self.ctx.task.task,
                            disk.canary_version,
                            disk.stable_version
                        );
                        None
                    }
                },
            }
        } else {
            None
        };
        live.file = Some(disk);
        match program {
            Some(program) => self.install(live, program),
            None => self.ctx.executor.clear_canary(),
        }
    }

    /// Takes over the rollout in progress when nobody drives it (see `driver.rs`), under
    /// the lock on `rollout.lock`. Returns whether this runtime drives it now.
    pub(super) fn try_take_over(&self, live: &mut Live) -> Result<bool> {
        if live.driving {
            return Ok(true);
        }
        match live.in_progress() {
            Some(file) if self.claimable(file) => {}
            _ => return Ok(live.driving),
        }
        let _lock = self.ctx.store.lock_rollout()?;
        let Some(mut disk) = self.ctx.store.read_rollout_file()? else {
            return Ok(false);
        };
        if !self.claimable(&disk) {
            if disk.revision > live.revision {
                self.adopt_external(live)?;
            }
            return Ok(live.driving);
        }
        let before = disk.driver.replace(self.ctx.driver_id.clone());
        disk.updated_at = self.now();
        self.ctx.store.write_rollout_file(&mut disk)?;
        log::info!(
            "loopai: task {:?}: this runtime ({}) now drives the rollout of v{} (was {})",
            self.ctx.task.task,
            self.ctx.driver_id,
            disk.canary_version,
            before.as_deref().unwrap_or("nobody")
        );
        self.follow_file(live, disk);
        Ok(live.driving)
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

    /// Follows the artifact cache (every `rollout.follow_interval_ms`, and
    /// [`Runtime::reload`](crate::Runtime::reload)): adopts a `rollout.json` written
    /// elsewhere — a rollout started, promoted or rolled back by another process, taken
    /// over when nobody drives it — then brings the stable program in line with the
    /// `active` pointer. A rollout this runtime drives whose stable version is no longer
    /// active is aborted; one it only follows stops serving its canary here (its driver
    /// aborts it). Returns the active version.
    pub(crate) fn follow(&self) -> Result<u32> {
        {
            let mut live = self.live.lock();
            self.adopt_external(&mut live)?;
            self.try_take_over(&mut live)?;
        }
        let active = self.ctx.store.active_version()?.ok_or_else(|| {
            Error::new(
                ErrorKind::Artifact,
                format!(
                    "task {:?} no longer has an active program",
                    self.ctx.task.task
                ),
            )
        })?;
        let before = self.ctx.executor.version();
        if active == before {
            return Ok(active);
        }
        let (program, description) = self.compile(active)?;
        let mut live = self.live.lock();
        if let Some(canary) = live.in_progress().map(|f| f.canary_version) {
            let reason = format!("v{active} was activated outside this runtime");
            if !live.driving {
                self.ctx.executor.clear_canary();
            } else if active == canary {
                // Promoted by hand (`loopai rollout promote` writes rollout.json next).
                self.finish_promotion(&mut live, reason)?;
            } else {
                self.end(&mut live, RolloutState::Aborted, reason)?;
            }
        }
        self.switch(program, description);
        drop(live);
        self.ctx
            .sampler
            .version_activated(self.ctx.clock.now_millis());
        log::info!(
            "loopai: task {:?}: now serving v{active} (was v{before}): activated outside this runtime",
            self.ctx.task.task
        );
        Ok(active)
    }

    /// Called by the rollout thread every `rollout.follow_interval_ms`: [`follow`](Self::follow),
    /// logging a failure once (not at every round) while it lasts.
    pub(crate) fn follow_tick(&self) {
        let result = self.follow();
        let mut last = self.follow_error.lock();
        match result {
            Ok(_) => {
                if last.take().is_some() {
                    log::info!(
                        "loopai: task {:?}: following the artifact cache again",
                        self.ctx.task.task
                    );
                }
            }
            Err(e) => {
                let message = e.to_string();
                if last.as_deref() != Some(message.as_str()) {
                    log::error!(
                        "loopai: task {:?}: cannot follow the artifact cache (keeps serving v{}): {message}",
                        self.ctx.task.task,
                        self.ctx.executor.version()
                    );
                }
                *last = Some(message);
            }
        }
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
        if !self.try_take_over(&mut live)? {
            // Another runtime drives it: it decides.
            return Ok(());
        }
        let Some(file) = live.in_progress() else {
            return Ok(());
        };
        let active = self.ctx.executor.version();
        if file.stable_version != active {
            if active == file.canary_version {
                let reason = format!("v{active} was activated outside this runtime");
                return self.finish_promotion(&mut live, reason);
            }
            let reason = format!(
                "v{active} is active, not the rollout's stable v{}",
                file.stable_version
            );
            return self.end(&mut live, RolloutState::Aborted, reason);
        }
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
                let heartbeat_due = live.file.as_ref().is_some_and(|f| {
                    self.now().millis().saturating_sub(f.updated_at.millis())
                        >= driver::lease_ms(self.ctx.config.check_interval_ms) / 3
                });
                if live.persisted != counts || heartbeat_due {
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

    /// Persists the counters of the rollout this runtime drives and releases it (at
    /// shutdown: a runtime still running takes it over at its next check), waiting for the
    /// state at most until `deadline` (a check stuck in I/O keeps it).
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
        if live.in_progress().is_none() || !live.driving {
            return Ok(());
        }
        if self.adopt_external(&mut live)? || !live.driving {
            return Ok(());
        }
        // Released: a runtime still running (or the next one to start) takes it over at
        // once instead of waiting for the lease.
        if let Some(f) = live.file.as_mut() {
            f.driver = None;
        }
        self.save(&mut live)?;
        live.driving = false;
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
