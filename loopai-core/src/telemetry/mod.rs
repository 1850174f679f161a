//! The telemetry queue: batches of what the privacy mode lets leave the process, spooled
//! to disk and uploaded to the cloud collector.
//!
//! * The dataset writer thread already sees every execution and validation record; a
//!   [`TelemetryObserver`] rides on it, so `execute` pays nothing extra. It builds a
//!   [`TelemetryBatch`] per program version ([`batch`]), cuts it every
//!   `telemetry.upload_interval_sec` or at `telemetry.batch_size` records, and writes it to
//!   the spool ([`spool`]) — file I/O only, never the network.
//! * One uploader thread per runtime sends spooled batches oldest first ([`upload`]), with
//!   a per-request timeout, exponential backoff with full jitter and `Retry-After`.
//! * The same thread sends a [`Heartbeat`] every `telemetry.heartbeat_interval_sec`
//!   ([`heartbeat`]); the latest one also rides on every batch spooled after it.
//!
//! The format, the spool and the retry rules are documented in `docs/telemetry.md`.

mod batch;
mod heartbeat;
mod spool;
mod upload;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::clock::{Clock, Timestamp};
use crate::config::{DeploymentConfig, PrivacyMode};
use crate::crypt::KeyRing;
use crate::dataset::RecordObserver;
use crate::dataset::{ExecutionRecord, ValidationRecord};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{create_dir_all_durable, remove_if_exists, sync_dir};
use crate::privacy::{KeyedHasher, PrivacyPolicy};
use crate::rollout::RolloutOutbox;

use batch::{BatchBuilder, BatchContext};
pub use batch::{
    BatchMetrics, ExecutionSummary, LatencySummary, StatusCounts, TelemetryBatch,
    ValidationSummary, MAX_OUTPUT_CLASSES, TELEMETRY_FORMAT,
};
pub use heartbeat::{Heartbeat, HeartbeatRollout, QueueDepths, HEARTBEAT_FORMAT};
pub(crate) use heartbeat::{HeartbeatSource, RuntimeState};
use spool::Spool;
use upload::{HttpTransport, Step, Transport, Uploader};

/// The file holding the generated deployment id, relative to the data directory.
pub const DEPLOYMENT_ID_FILE: &str = "config/deployment-id";

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters shared by the observer, the uploader and [`Telemetry::metrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches_cut: Counter,
    pub sent: Counter,
    pub retries: Counter,
    pub dropped_spool_full: Counter,
    pub dropped_permanent: Counter,
    pub dropped_corrupt: Counter,
    pub spool_errors: Counter,
    /// Records in batches not cut yet.
    pub pending_records: Counter,
    pub heartbeats_sent: Counter,
    pub heartbeat_failures: Counter,
    last_error: Mutex<Option<String>>,
}

/// Plain values of [`Counters`] (for tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CounterValues {
    pub sent: u64,
    pub retries: u64,
    pub dropped_permanent: u64,
    pub dropped_corrupt: u64,
}

impl Counters {
    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.last_error.lock() = error;
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> CounterValues {
        CounterValues {
            sent: self.sent.get(),
            retries: self.retries.get(),
            dropped_permanent: self.dropped_permanent.get(),
            dropped_corrupt: self.dropped_corrupt.get(),
        }
    }
}

/// Telemetry counters, part of [`Health`](crate::Health) when telemetry runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TelemetryMetrics {
    /// Where batches are sent (`{cloud.api_url}/api/v1/telemetry`).
    pub endpoint: String,
    /// `telemetry.privacy_mode`.
    pub privacy_mode: PrivacyMode,
    /// The spool directory (`<data_dir>/telemetry/spool/<task>`).
    pub spool_dir: PathBuf,
    /// Records (executions and validations) in batches not cut yet.
    pub pending_records: u64,
    /// Batches cut by this runtime.
    pub batches_cut: u64,
    /// Batches waiting in the spool (including ones left by an earlier run).
    pub spooled_batches: u64,
    /// Their size on disk, in bytes (gzip).
    pub spooled_bytes: u64,
    /// Batches the collector accepted (2xx).
    pub sent: u64,
    /// Failed attempts that will be retried (transport errors, 408, 429, 5xx).
    pub retries: u64,
    /// Batches deleted unsent to keep the spool within `telemetry.spool_max_mb` (oldest
    /// first), or not spooled because one batch alone exceeded it.
    pub dropped_spool_full: u64,
    /// Batches the collector refused for good (4xx other than 408 and 429).
    pub dropped_permanent: u64,
    /// Spool files that could not be read back (moved to `corrupt/`).
    pub dropped_corrupt: u64,
    /// Batches lost because writing them to the spool failed.
    pub spool_errors: u64,
    /// The last upload or spool error, cleared by the next successful upload.
    pub last_error: Option<String>,
    /// Heartbeats the cloud accepted (2xx).
    pub heartbeats_sent: u64,
    /// Heartbeats that failed (transport error or non-2xx); never retried, the next one
    /// replaces them.
    pub heartbeat_failures: u64,
}

enum Ctl {
    /// A batch was spooled.
    Wake,
    /// Try now, even during a backoff.
    Flush,
    /// Send what can be sent by the deadline, stopping at the first failure, then exit.
    Shutdown(Instant),
    /// The heartbeat source was set: send the first heartbeat now.
    Heartbeat,
}

/// Upload progress: drain waiters are woken after every attempt.
#[derive(Debug, Default)]
struct Progress {
    lock: Mutex<()>,
    cv: Condvar,
}

impl Progress {
    fn notify(&self) {
        let _guard = self.lock.lock();
        self.cv.notify_all();
    }
}

/// Settings of the telemetry queue, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct TelemetrySettings {
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub request_timeout: Duration,
    /// `telemetry.heartbeat_interval_sec`; zero sends no heartbeats.
    pub heartbeat_interval: Duration,
    /// `storage.encryption`: spool files are sealed with the current key.
    pub keys: Option<Arc<KeyRing>>,
}

/// Owns the uploader thread of one runtime's telemetry.
pub(crate) struct Telemetry {
    ctl: Sender<Ctl>,
    counters: Arc<Counters>,
    spool: Arc<Spool>,
    progress: Arc<Progress>,
    cut_requested: Arc<AtomicBool>,
    handle: Mutex<Option<JoinHandle<()>>>,
    exited: Receiver<()>,
    dead: Arc<AtomicBool>,
    endpoint: String,
    mode: PrivacyMode,
    fork_generation: u64,
    /// Where heartbeats get the runtime's state; set once the runtime is built.
    heartbeat_source: Arc<OnceLock<Box<dyn HeartbeatSource>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("endpoint", &self.endpoint)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The deployment id: `runtime.deployment_id`, or the one generated at the first start in
/// `<data_dir>/config/deployment-id` (a UUID v4, created atomically, kept forever).
pub(crate) fn deployment_id(data_dir: &Path, config: &DeploymentConfig) -> Result<String> {
    if let Some(id) = &config.runtime.deployment_id {
        return Ok(id.clone());
    }
    let path = data_dir.join(DEPLOYMENT_ID_FILE);
    if let Some(id) = read_deployment_id(&path)? {
        return Ok(id);
    }
    let dir = path.parent().unwrap_or(data_dir);
    create_dir_all_durable(dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = dir.join(format!(
        ".tmp-{}-deployment-id",
        uuid::Uuid::new_v4().simple()
    ));
    let created = (|| -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{id}")?;
        f.sync_all()?;
        // A link never replaces: a concurrent first start keeps whichever id landed first.
        match fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) if !path.exists() => fs::rename(&tmp, &path)?,
            Err(e) => return Err(e),
        }
        sync_dir(dir)
    })();
    let _ = remove_if_exists(&tmp);
    created.map_err(|e| Error::io(path.display(), e))?;
    read_deployment_id(&path)?.ok_or_else(|| {
        Error::new(
            ErrorKind::Io,
            format!("{}: disappeared right after creation", path.display()),
        )
    })
}

fn read_deployment_id(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "{}: must hold a deployment id of 1 to 256 bytes without control characters",
                        path.display()
                    ),
                ))
            } else {
                Ok(Some(id.to_owned()))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

impl Telemetry {
    /// Starts telemetry for `task` when `telemetry.enabled` and `cloud.api_url` is set;
    /// `Ok(None)` otherwise (nothing is built or spooled). The observer goes to the
    /// dataset writer. `keys` (`storage.encryption`) seal the spool files.
    pub(crate) fn start(
        data_dir: &Path,
        task: &str,
        config: &DeploymentConfig,
        keys: Option<Arc<KeyRing>>,
        clock: Arc<dyn Clock>,
        outbox: Arc<RolloutOutbox>,
    ) -> Result<Option<(Telemetry, TelemetryObserver)>> {
        if !config.telemetry.enabled {
            return Ok(None);
        }
        let Some(api_url) = &config.cloud.api_url else {
            log::debug!("loopai: telemetry is enabled but cloud.api_url is not set: off");
            return Ok(None);
        };
        let tls =
            crate::net::Tls::for_url("cloud.ca_file", api_url, config.cloud.ca_file.as_deref())?;
        let transport = Arc::new(HttpTransport::new(
            api_url,
            config.cloud.api_key.as_deref(),
            tls,
        ));
        let settings = TelemetrySettings {
            spool_dir: data_dir.join("telemetry").join("spool").join(task),
            spool_max_bytes: config.telemetry.spool_max_mb.saturating_mul(1 << 20),
            request_timeout: Duration::from_secs(config.telemetry.request_timeout_sec),
            heartbeat_interval: Duration::from_secs(config.telemetry.heartbeat_interval_sec),
            keys,
        };
        let policy = PrivacyPolicy::new(
            config.telemetry.privacy_mode,
            &config.privacy,
            KeyedHasher::load_or_create(data_dir)?,
        );
        let ctx = BatchContext {
            deployment_id: deployment_id(data_dir, config)?,
            task_id: task.to_owned(),
            policy,
            hash_inputs: config.privacy.hash_inputs,
            sample_only: config.privacy.sample_only,
            batch_size: config.telemetry.batch_size.max(1),
            interval_ms: i64::try_from(config.telemetry.upload_interval_sec.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        };
        let endpoint = HttpTransport::endpoint(api_url);
        Self::start_with(ctx, settings, transport, endpoint, clock)
            .map(|(t, o)| Some((t, o.with_rollout_events(outbox))))
    }

    /// Starts the uploader over `transport` (tests inject a fake one).
    pub(crate) fn start_with(
        ctx: BatchContext,
        settings: TelemetrySettings,
        transport: Arc<dyn Transport>,
        endpoint: String,
        clock: Arc<dyn Clock>,
    ) -> Result<(Telemetry, TelemetryObserver)> {
        let mode = ctx.policy.mode();
        let (spool, evicted) = Spool::open(
            &settings.spool_dir,
            settings.spool_max_bytes,
            settings.keys.clone(),
        )?;
        let spool = Arc::new(spool);
        let counters = Arc::new(Counters::default());
        if evicted > 0 {
            log::warn!(
                "loopai: telemetry spool {} was over telemetry.spool_max_mb: {evicted} oldest batches dropped",
                settings.spool_dir.display()
            );
            counters.dropped_spool_full.add(evicted);
        }
        let (ctl, ctl_rx) = bounded::<Ctl>(64);
        let (exited_tx, exited) = bounded::<()>(1);
        let progress = Arc::new(Progress::default());
        let dead = Arc::new(AtomicBool::new(false));
        let heartbeat_source: Arc<OnceLock<Box<dyn HeartbeatSource>>> = Arc::default();
        let latest_heartbeat: Arc<Mutex<Option<Heartbeat>>> = Arc::default();
        let mut heartbeats = Heartbeats {
            deployment_id: ctx.deployment_id.clone(),
            task_id: ctx.task_id.clone(),
            interval: settings.heartbeat_interval,
            source: heartbeat_source.clone(),
            latest: latest_heartbeat.clone(),
            spool: spool.clone(),
            failing: false,
        };
        let mut uploader = Uploader {
            spool: spool.clone(),
            transport,
            counters: counters.clone(),
            clock: clock.clone(),
            backoff: crate::net::Backoff::default(),
            rng: fastrand::Rng::new(),
            failures: 0,
        };
        let thread_progress = progress.clone();
        let thread_dead = dead.clone();
        let request_timeout = settings.request_timeout;
        let handle = std::thread::Builder::new()
            .name(format!("loopai-telemetry-{}", ctx.task_id))
            .spawn(move || {
                let _exit = ExitGuard(exited_tx, thread_dead, thread_progress.clone());
                run_uploader(
                    &mut uploader,
                    &mut heartbeats,
                    &ctl_rx,
                    request_timeout,
                    &thread_progress,
                );
            })
            .map_err(|e| Error::io("starting the telemetry uploader thread", e))?;
        let cut_requested = Arc::new(AtomicBool::new(false));
        let observer = TelemetryObserver {
            builder: BatchBuilder::new(ctx),
            spool: spool.clone(),
            counters: counters.clone(),
            cut_requested: cut_requested.clone(),
            wake: ctl.clone(),
            clock,
            outbox: None,
            latest_heartbeat,
        };
        let telemetry = Telemetry {
            ctl,
            counters,
            spool,
            progress,
            cut_requested,
            handle: Mutex::new(Some(handle)),
            exited,
            dead,
            endpoint,
            mode,
            fork_generation: crate::fork::generation(),
            heartbeat_source,
        };
        Ok((telemetry, observer))
    }

    /// Hands over where heartbeats get the runtime's state (once; later calls are
    /// ignored) and has the first heartbeat sent right away.
    pub(crate) fn set_heartbeat_source(&self, source: Box<dyn HeartbeatSource>) {
        if self.heartbeat_source.set(source).is_ok() {
            let _ = self.ctl.try_send(Ctl::Heartbeat);
        }
    }

    /// Asks the observer to cut every open batch at the writer's next flush.
    pub(crate) fn request_cut(&self) {
        self.cut_requested.store(true, Ordering::Release);
    }

    /// Uploads everything spooled, waiting until `deadline` at most.
    ///
    /// Errors: [`ErrorKind::Timeout`] naming what is still spooled and the last error;
    /// [`ErrorKind::Closed`] after shutdown.
    pub(crate) fn drain(&self, deadline: Instant, timeout: Duration) -> Result<()> {
        if self.dead.load(Ordering::Acquire) || self.handle.lock().is_none() {
            return Err(Error::new(ErrorKind::Closed, "telemetry is shut down"));
        }
        let _ = self.ctl.send_deadline(Ctl::Flush, deadline);
        let mut guard = self.progress.lock.lock();
        loop {
            let (batches, bytes) = self.spool.stats();
            if batches == 0 {
                return Ok(());
            }
            if self.dead.load(Ordering::Acquire) {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "the telemetry uploader thread stopped",
                ));
            }
            if self
                .progress
                .cv
                .wait_until(&mut guard, deadline)
                .timed_out()
            {
                let (batches, bytes) = if Instant::now() >= deadline {
                    self.spool.stats()
                } else {
                    (batches, bytes)
                };
                if batches == 0 {
                    return Ok(());
                }
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "telemetry flush: {batches} batches ({bytes} bytes) still spooled after {timeout:?}{}; they stay in {} and are retried",
                        self.counters
                            .last_error()
                            .map(|e| format!(" (last error: {e})"))
                            .unwrap_or_default(),
                        self.spool.dir().display()
                    ),
                ));
            }
        }
    }

    /// Stops the uploader within `timeout`: it first sends spooled batches until one
    /// fails or the deadline passes; what is not sent stays spooled for the next start.
    /// Calling it again is harmless.
    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<()> {
        let Some(handle) = self.handle.lock().take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        let _ = self.ctl.send_deadline(Ctl::Shutdown(deadline), deadline);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.exited.recv_timeout(remaining).is_ok() || self.dead.load(Ordering::Acquire) {
            let _ = handle.join();
            let (batches, _) = self.spool.stats();
            if batches > 0 {
                log::info!(
                    "loopai: {batches} telemetry batches stay spooled in {} for the next start",
                    self.spool.dir().display()
                );
            }
            Ok(())
        } else {
            *self.handle.lock() = Some(handle);
            Err(Error::new(
                ErrorKind::Timeout,
                format!("the telemetry uploader did not stop within {timeout:?}"),
            ))
        }
    }

    /// Current counters.
    pub(crate) fn metrics(&self) -> TelemetryMetrics {
        let c = &self.counters;
        let (spooled_batches, spooled_bytes) = self.spool.stats();
        TelemetryMetrics {
            endpoint: self.endpoint.clone(),
            privacy_mode: self.mode,
            spool_dir: self.spool.dir().to_path_buf(),
            pending_records: c.pending_records.get(),
            batches_cut: c.batches_cut.get(),
            spooled_batches,
            spooled_bytes,
            sent: c.sent.get(),
            retries: c.retries.get(),
            dropped_spool_full: c.dropped_spool_full.get(),
            dropped_permanent: c.dropped_permanent.get(),
            dropped_corrupt: c.dropped_corrupt.get(),
            spool_errors: c.spool_errors.get(),
            last_error: c.last_error(),
            heartbeats_sent: c.heartbeats_sent.get(),
            heartbeat_failures: c.heartbeat_failures.get(),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Only reached without a runtime shutdown (a failed build); bounded, best effort.
        if crate::fork::current() == self.fork_generation {
            let _ = self.shutdown(Duration::from_secs(1));
        }
    }
}

/// Marks the uploader dead and wakes drain waiters when the thread exits, even by panic.
struct ExitGuard(Sender<()>, Arc<AtomicBool>, Arc<Progress>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Release);
        self.2.notify();
        let _ = self.0.try_send(());
    }
}

/// The uploader thread: attempts while there is work and no backoff is pending; waits for
/// a wake-up, a flush, the end of a backoff or shutdown otherwise.
fn run_uploader(
    up: &mut Uploader,
    beats: &mut Heartbeats,
    ctl: &Receiver<Ctl>,
    request_timeout: Duration,
    progress: &Progress,
) {
    // Batches left by an earlier run are sent right away.
    let mut idle = false;
    let mut retry_at: Option<Instant> = None;
    // The first heartbeat goes when the runtime hands over its state (`Ctl::Heartbeat`).
    let mut beat_at: Option<Instant> = None;
    loop {
        if beat_at.is_some_and(|t| Instant::now() >= t) {
            beats.beat(up, request_timeout);
            beat_at = beats.next();
        }
        let ready = retry_at.is_none_or(|t| Instant::now() >= t);
        if ready && !idle {
            let step = up.step(request_timeout);
            progress.notify();
            match step {
                Step::Idle => {
                    idle = true;
                    retry_at = None;
                }
                Step::Sent | Step::Dropped => retry_at = None,
                Step::Retry(delay) => retry_at = Some(Instant::now() + delay),
            }
        }
        // Wait for a message, the end of a backoff or the next heartbeat.
        let wake_at = match (idle, retry_at) {
            (true, _) => beat_at,
            (false, Some(at)) if Instant::now() < at => Some(beat_at.map_or(at, |b| b.min(at))),
            _ => Some(Instant::now()),
        };
        let msg = match wake_at {
            None => ctl.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) if Instant::now() < at => ctl.recv_deadline(at),
            _ => ctl.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
        };
        match msg {
            Ok(Ctl::Wake) => idle = false,
            Ok(Ctl::Flush) => {
                idle = false;
                retry_at = None;
            }
            Ok(Ctl::Shutdown(deadline)) => {
                final_pass(up, deadline, request_timeout, progress);
                return;
            }
            Ok(Ctl::Heartbeat) => beat_at = Some(Instant::now()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Builds and sends heartbeats on the uploader thread.
struct Heartbeats {
    deployment_id: String,
    task_id: String,
    /// Zero: no heartbeats.
    interval: Duration,
    source: Arc<OnceLock<Box<dyn HeartbeatSource>>>,
    /// The latest heartbeat built, shared with the observer (it rides on batches).
    latest: Arc<Mutex<Option<Heartbeat>>>,
    spool: Arc<Spool>,
    /// Whether the last one failed (logs a warning once per outage).
    failing: bool,
}

impl Heartbeats {
    /// When the next heartbeat is due; `None` when heartbeats are off.
    fn next(&self) -> Option<Instant> {
        (!self.interval.is_zero()).then(|| Instant::now() + self.interval)
    }

    /// Builds the heartbeat from the runtime's state and telemetry's own, keeps it for
    /// the next batches, and sends it once (no retry).
    fn build(&self, counters: &Counters, now: Timestamp) -> Option<Heartbeat> {
        let state = self.source.get()?.runtime_state()?;
        let (spooled, _) = self.spool.stats();
        Some(Heartbeat {
            format: HEARTBEAT_FORMAT.to_owned(),
            deployment_id: self.deployment_id.clone(),
            task_id: self.task_id.clone(),
            timestamp: now,
            interval_sec: self.interval.as_secs(),
            status: state.status,
            active_version: state.active_version,
            rollout: state.rollout,
            queues: QueueDepths {
                dataset_pending: state.dataset_pending,
                validation_queued: state.validation_queued,
                telemetry_spooled: spooled,
                telemetry_pending_records: counters.pending_records.get(),
            },
            last_error: state.last_error.or_else(|| counters.last_error()),
        })
    }

    fn beat(&mut self, up: &Uploader, request_timeout: Duration) {
        if self.interval.is_zero() {
            return;
        }
        let now = Timestamp(up.clock.now_millis());
        let Some(heartbeat) = self.build(&up.counters, now) else {
            return;
        };
        *self.latest.lock() = Some(heartbeat.clone());
        let body = match serde_json::to_vec(&heartbeat) {
            Ok(body) => body,
            Err(e) => {
                log::error!("loopai: serializing a heartbeat: {e}");
                return;
            }
        };
        let outcome = match up.transport.post_heartbeat(&body, request_timeout) {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                up.counters.heartbeats_sent.inc();
                self.failing = false;
            }
            Err(e) => {
                up.counters.heartbeat_failures.inc();
                if !self.failing {
                    log::warn!(
                        "loopai: heartbeat not delivered ({e}); the next one follows in {:?}",
                        self.interval
                    );
                }
                self.failing = true;
            }
        }
    }
}

/// At shutdown: sends spooled batches in order until the spool is empty, an attempt fails
/// (no backoff waits at exit) or `deadline` passes.
fn final_pass(
    up: &mut Uploader,
    deadline: Instant,
    request_timeout: Duration,
    progress: &Progress,
) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let step = up.step(request_timeout.min(left));
        progress.notify();
        match step {
            Step::Sent | Step::Dropped => {}
            Step::Idle | Step::Retry(_) => return,
        }
    }
}

/// Builds batches on the dataset writer thread and spools them.
pub(crate) struct TelemetryObserver {
    builder: BatchBuilder,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    cut_requested: Arc<AtomicBool>,
    wake: Sender<Ctl>,
    clock: Arc<dyn Clock>,
    /// Rollout events to send with the next batch.
    outbox: Option<Arc<RolloutOutbox>>,
    /// The latest heartbeat (set by the uploader thread), sent with every batch.
    latest_heartbeat: Arc<Mutex<Option<Heartbeat>>>,
}

impl std::fmt::Debug for TelemetryObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryObserver").finish_non_exhaustive()
    }
}

impl TelemetryObserver {
    /// Sends the rollout events queued in `outbox` with the batches.
    pub(crate) fn with_rollout_events(mut self, outbox: Arc<RolloutOutbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.clock.now_millis())
    }

    /// Moves queued rollout events into the builder (they ride on the next batch cut).
    fn collect_events(&mut self) {
        if let Some(outbox) = &self.outbox {
            let events = outbox.take();
            if !events.is_empty() {
                self.builder.add_rollout_events(events);
            }
        }
    }

    fn spool_batch(&mut self, batch: &TelemetryBatch) {
        self.counters.batches_cut.inc();
        let bytes = match encode(batch) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.spool_failed(batch, &e.to_string());
                return;
            }
        };
        match self.spool.push(batch.batch_id, &bytes) {
            Ok(outcome) => {
                let dropped = outcome.evicted + u64::from(outcome.rejected);
                if dropped > 0 {
                    log::warn!(
                        "loopai: telemetry spool {} full (telemetry.spool_max_mb): {dropped} batches dropped",
                        self.spool.dir().display()
                    );
                    self.counters.dropped_spool_full.add(dropped);
                }
                let _ = self.wake.try_send(Ctl::Wake);
            }
            Err(e) => self.spool_failed(batch, &e.to_string()),
        }
    }

    fn spool_failed(&self, batch: &TelemetryBatch, error: &str) {
        log::error!(
            "loopai: telemetry batch {} lost: spooling failed: {error}",
            batch.batch_id
        );
        self.counters.spool_errors.inc();
        self.counters
            .set_error(Some(format!("spooling batch {}: {error}", batch.batch_id)));
    }

    fn spool_all(&mut self, batches: Vec<TelemetryBatch>) {
        for mut batch in batches {
            batch.heartbeat = self.latest_heartbeat.lock().clone();
            self.spool_batch(&batch);
        }
        self.counters
            .pending_records
            .0
            .store(self.builder.pending_records() as u64, Ordering::Relaxed);
    }
}

/// The upload body of a batch: gzip-compressed JSON.
pub(crate) fn encode(batch: &TelemetryBatch) -> io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    serde_json::to_writer(&mut enc, batch)?;
    enc.finish()
}

impl RecordObserver for TelemetryObserver {
    fn execution(&mut self, record: &ExecutionRecord) {
        let now = self.now();
        if let Some(batch) = self.builder.execution(record, now) {
            self.spool_all(vec![batch]);
        }
    }

    fn validation(&mut self, record: &ValidationRecord) {
        let now = self.now();
        if let Some(batch) = self.builder.validation(record, now) {
            self.spool_all(vec![batch]);
        }
    }

    fn tick(&mut self, now: Timestamp) {
        self.collect_events();
        let due = self.builder.tick(now);
        self.spool_all(due);
    }

    fn persist(&mut self, now: Timestamp) {
        if self.cut_requested.swap(false, Ordering::AcqRel) {
            self.collect_events();
            let all = self.builder.cut_all(now);
            self.spool_all(all);
        }
    }

    fn finish(&mut self, now: Timestamp) {
        self.collect_events();
        let all = self.builder.cut_all(now);
        self.spool_all(all);
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
