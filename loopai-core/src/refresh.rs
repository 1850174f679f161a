//! Background artifact refresh: polls the artifact repository's versions list (with
//! `If-None-Match`), listens to its notification stream, downloads and verifies new
//! versions, installs them in the [`ArtifactStore`] and hands them over to the runtime.
//!
//! * [`Checker`] does one check per call and never waits; tests drive it with a fake
//!   transport. The threads here do the waiting, on channels, so `shutdown` wakes them.
//! * The refresh thread checks at start-up, then every `cloud.refresh_interval_sec`, and at
//!   once when the notification listener receives an `artifact` event. After a failure it
//!   retries sooner, with exponential backoff and jitter, never later than the interval.
//! * The notification listener holds one `GET {api_url}/api/v1/notifications/{task}`
//!   server-sent-events stream open and reconnects with backoff and jitter.
//!
//! Neither thread holds the runtime alive: they keep a `Weak` reference and stop when the
//! runtime is gone. The protocol is documented in `docs/repository.md`.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;

use crate::artifact::{ArtifactMetadata, ArtifactStatus, ArtifactStore, LoadedArtifact};
use crate::clock::{Clock, Timestamp};
use crate::config::DeploymentConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::executor::Executor;
use crate::net::{self, parse_retry_after, Backoff, Jitter};
use crate::program::ProgramLimits;
use crate::repository::{notifications_url, task_url, MAX_VERSIONS_BYTES};
use crate::repository::{ArtifactArchive, VersionInfo, VersionList, MAX_ARCHIVE_BYTES};

/// The timeout of every versions-list and download request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to the notification stream and receiving its response headers.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A notification stream is closed and reopened after this long (its request timeout).
const STREAM_MAX_AGE: Duration = Duration::from_secs(600);
/// The longest line accepted on the notification stream.
const MAX_EVENT_LINE: u64 = 64 << 10;
/// Reconnection backoff of the notification listener.
const STREAM_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(300),
    max_retry_after: Duration::from_secs(3600),
    jitter: Jitter::Full,
};
/// Retry backoff of the start-up wait.
const STARTUP_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(250),
    cap: Duration::from_secs(5),
    max_retry_after: Duration::from_secs(5),
    jitter: Jitter::Full,
};

/// What the repository answered to a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// GETs documents from the artifact repository.
pub(crate) trait Repo: Send + Sync + fmt::Debug {
    /// GETs `url` (with `If-None-Match: etag` when given), reading at most `limit` body
    /// bytes and giving up after `timeout`. `Err` is a transport failure or a body over
    /// the limit.
    fn get(
        &self,
        url: &str,
        etag: Option<&str>,
        limit: u64,
        timeout: Duration,
    ) -> std::result::Result<Reply, String>;
}

/// The real repository client (`ureq`).
pub(crate) struct HttpRepo {
    agent: ureq::Agent,
    authorization: Option<String>,
    tls: net::Tls,
}

impl fmt::Debug for HttpRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRepo")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl HttpRepo {
    /// Checks the repository's certificate as `tls` says (`cloud.ca_file`).
    pub(crate) fn new(api_key: Option<&str>, tls: net::Tls) -> HttpRepo {
        HttpRepo {
            agent: net::agent(true, &tls),
            authorization: api_key.map(|k| format!("Bearer {k}")),
            tls,
        }
    }
}

impl Repo for HttpRepo {
    fn get(
        &self,
        url: &str,
        etag: Option<&str>,
        limit: u64,
        timeout: Duration,
    ) -> std::result::Result<Reply, String> {
        let mut request = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .build();
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        let response = request
            .call()
            .map_err(|e| net::describe_error(&e, url, &self.tls))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let retry_after = header("retry-after");
        let status = response.status().as_u16();
        let body = if status == 200 {
            response
                .into_body()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map_err(|e| format!("reading the body: {e}"))?
        } else {
            response
                .into_body()
                .with_config()
                .limit(64 << 10)
                .read_to_vec()
                .unwrap_or_default()
        };
        Ok(Reply {
            status,
            etag,
            retry_after,
            body,
        })
    }
}

/// The state of the notification stream, in [`RefreshMetrics::notifications`].
const NOTIFY_OFF: &str = "off";
const NOTIFY_CONNECTING: &str = "connecting";
const NOTIFY_CONNECTED: &str = "connected";

/// Artifact refresh state, part of [`Health`](crate::Health) when `cloud.api_url` is set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RefreshMetrics {
    /// The versions list polled: `{cloud.api_url}/api/v1/artifacts/{task}/versions`.
    pub endpoint: String,
    /// When the last check finished (successful or not).
    pub last_check: Option<Timestamp>,
    /// When the last check succeeded (the list was read, and a new version, if any, was
    /// installed).
    pub last_success: Option<Timestamp>,
    /// The error of the last check or hand-over, cleared by the next successful check.
    pub last_error: Option<String>,
    /// The highest version the repository lists.
    pub available_version: Option<u32>,
    /// How many versions this runtime downloaded and installed.
    pub installed: u64,
    /// The last version downloaded and installed.
    pub last_installed: Option<u32>,
    /// Downloads refused: size, sha256 or signature mismatch, a bad archive or a program
    /// that does not compile. Never installed.
    pub refused: u64,
    /// Checks done (each one request for the versions list).
    pub checks: u64,
    /// Checks answered `304 Not Modified`.
    pub not_modified: u64,
    /// The notification stream: `off` (`cloud.notifications: false`), `connecting`
    /// (connecting or waiting to reconnect) or `connected`.
    pub notifications: &'static str,
    /// `artifact` events received from the notification stream.
    pub notifications_received: u64,
}

/// State shared by the checker, the threads and [`RefreshMetrics`].
#[derive(Debug)]
pub(crate) struct Shared {
    metrics: Mutex<RefreshMetrics>,
}

impl Shared {
    fn new(endpoint: String, notifications: bool) -> Shared {
        Shared {
            metrics: Mutex::new(RefreshMetrics {
                endpoint,
                last_check: None,
                last_success: None,
                last_error: None,
                available_version: None,
                installed: 0,
                last_installed: None,
                refused: 0,
                checks: 0,
                not_modified: 0,
                notifications: if notifications {
                    NOTIFY_CONNECTING
                } else {
                    NOTIFY_OFF
                },
                notifications_received: 0,
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut RefreshMetrics)) {
        f(&mut self.metrics.lock());
    }

    pub(crate) fn metrics(&self) -> RefreshMetrics {
        self.metrics.lock().clone()
    }
}

/// Downloads, verifies and installs new versions; one check per [`check`](Self::check).
#[derive(Debug)]
pub(crate) struct Checker {
    task: String,
    versions_url: String,
    task_url: String,
    repo: Arc<dyn Repo>,
    trusted_keys: Vec<String>,
    limits: ProgramLimits,
    store: ArtifactStore,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    etag: Option<String>,
    list: Option<VersionList>,
    /// `Retry-After` of the last answer, if it sent one.
    retry_after: Option<Duration>,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Nothing to do: nothing newer than `active` (or nothing published).
    Nothing,
    /// This version is installed and newer than the active one: hand it over.
    New(u32),
}

impl Checker {
    pub(crate) fn new(
        api_url: &str,
        config: &DeploymentConfig,
        store: ArtifactStore,
        limits: ProgramLimits,
        clock: Arc<dyn Clock>,
        repo: Arc<dyn Repo>,
    ) -> Checker {
        let task = store.task().to_owned();
        let task_url = task_url(api_url, &task);
        let versions_url = format!("{task_url}/versions");
        Checker {
            shared: Arc::new(Shared::new(
                versions_url.clone(),
                config.cloud.notifications,
            )),
            task,
            versions_url,
            task_url,
            repo,
            trusted_keys: config.cloud.trusted_keys.clone(),
            limits,
            store,
            clock,
            etag: None,
            list: None,
            retry_after: None,
        }
    }

    /// One check against `active` (the version running now; `None` at start-up without a
    /// cached program), recorded in the metrics.
    pub(crate) fn check(&mut self, active: Option<u32>) -> Result<Found> {
        self.retry_after = None;
        let result = self.check_inner(active);
        let now = Timestamp(self.clock.now_millis());
        self.shared.update(|m| {
            m.checks += 1;
            m.last_check = Some(now);
            match &result {
                Ok(_) => {
                    m.last_success = Some(now);
                    m.last_error = None;
                }
                Err(e) => m.last_error = Some(e.message().to_owned()),
            }
        });
        if let Err(e) = &result {
            log::warn!("loopai: artifact refresh for task {:?}: {e}", self.task);
        }
        result
    }

    /// Records a failed hand-over in the metrics.
    pub(crate) fn record_error(&self, error: &Error) {
        log::error!("loopai: artifact refresh for task {:?}: {error}", self.task);
        self.shared
            .update(|m| m.last_error = Some(error.message().to_owned()));
    }

    fn check_inner(&mut self, active: Option<u32>) -> Result<Found> {
        let list = self.fetch_list()?;
        let Some(latest) = list.latest().cloned() else {
            return Ok(Found::Nothing);
        };
        self.shared
            .update(|m| m.available_version = Some(latest.version));
        if active.is_some_and(|a| latest.version <= a) {
            return Ok(Found::Nothing);
        }
        if self.store.versions()?.contains(&latest.version) {
            let installed = self.store.verify(latest.version)?;
            if installed.sha256 != latest.program_sha256 {
                return Err(Error::new(
                    ErrorKind::Artifact,
                    format!(
                        "v{}: installed locally with another program than the repository's \
                         (sha256 {}, repository {}); not handed over",
                        latest.version,
                        crate::digest::abbreviate(&installed.sha256),
                        crate::digest::abbreviate(&latest.program_sha256)
                    ),
                ));
            }
            // Installed but never activated (an interrupted hand-over): resume it. A
            // version that was active before, or whose canary was rolled back
            // (`rolled_back_at`), is left alone.
            let rolled_back = installed.extra.contains_key("rolled_back_at");
            return Ok(
                if installed.status == ArtifactStatus::Validated && !rolled_back {
                    Found::New(latest.version)
                } else {
                    Found::Nothing
                },
            );
        }
        match self.download(&latest) {
            Ok(version) => {
                self.shared.update(|m| {
                    m.installed += 1;
                    m.last_installed = Some(version);
                });
                log::info!(
                    "loopai: task {:?}: downloaded and installed v{version}",
                    self.task
                );
                Ok(Found::New(version))
            }
            Err((refused, e)) => {
                if refused {
                    self.shared.update(|m| m.refused += 1);
                }
                Err(e)
            }
        }
    }

    /// The versions list: fetched, or the cached one on `304 Not Modified`.
    fn fetch_list(&mut self) -> Result<VersionList> {
        let url = &self.versions_url;
        let reply = self
            .repo
            .get(
                url,
                self.etag.as_deref(),
                MAX_VERSIONS_BYTES,
                REQUEST_TIMEOUT,
            )
            .map_err(|e| Error::new(ErrorKind::Io, format!("{url}: {e}")))?;
        match reply.status {
            200 => {
                let list = VersionList::parse(&reply.body, &self.task, url)?;
                self.etag = reply.etag;
                self.list = Some(list.clone());
                Ok(list)
            }
            304 => {
                self.shared.update(|m| m.not_modified += 1);
                self.list.clone().ok_or_else(|| {
                    self.etag = None;
                    Error::new(
                        ErrorKind::Artifact,
                        format!("{url}: 304 Not Modified, but no list was received before"),
                    )
                })
            }
            // Nothing published for this task (yet), or a telemetry-only cloud.
            404 => {
                self.etag = None;
                self.list = None;
                Ok(VersionList::new(&self.task, Vec::new()))
            }
            status => {
                self.retry_after = reply
                    .retry_after
                    .as_deref()
                    .and_then(|v| parse_retry_after(v, self.clock.now_millis()));
                Err(Error::new(ErrorKind::Io, format!("{url}: HTTP {status}")))
            }
        }
    }

    /// Downloads, verifies, compiles and imports `entry`. `Err((true, _))` when the
    /// download itself was refused (counted in `refused`).
    fn download(&self, entry: &VersionInfo) -> std::result::Result<u32, (bool, Error)> {
        let version = entry.version;
        let url = format!("{}/v{version}/download", self.task_url);
        let limit = entry.size.min(MAX_ARCHIVE_BYTES);
        let reply = self
            .repo
            .get(&url, None, limit, REQUEST_TIMEOUT)
            .map_err(|e| (false, Error::new(ErrorKind::Io, format!("{url}: {e}"))))?;
        if reply.status != 200 {
            return Err((
                false,
                Error::new(ErrorKind::Io, format!("{url}: HTTP {}", reply.status)),
            ));
        }
        let refuse = |e: Error| (true, e.context(format!("{url}: refused")));
        entry
            .verify_download(&reply.body, &self.trusted_keys, &url)
            .map_err(|e| (true, e))?;
        let archive = ArtifactArchive::unpack(&reply.body).map_err(refuse)?;
        let metadata =
            parse_metadata(archive.metadata.as_deref(), entry, &self.task).map_err(refuse)?;
        let loaded = LoadedArtifact {
            metadata,
            program: archive.program,
            dir: self.store.task_dir().join(format!("v{version}")),
        };
        let executor = Executor::from_artifact(&loaded, &self.limits).map_err(refuse)?;
        let program_task = executor.current().program().task().to_owned();
        if program_task != self.task {
            return Err(refuse(Error::new(
                ErrorKind::Artifact,
                format!(
                    "program.json: the program is for task {program_task:?}, not {:?}",
                    self.task
                ),
            )));
        }
        // The signed archive is kept, so that every later load can verify it again.
        match &entry.signature {
            Some(signature) => {
                self.store
                    .import_signed(&loaded.metadata, &loaded.program, &reply.body, signature)
            }
            None => self.store.import(&loaded.metadata, &loaded.program),
        }
        .map_err(|e| (false, e))?;
        Ok(version)
    }
}

fn parse_metadata(
    bytes: Option<&[u8]>,
    entry: &VersionInfo,
    task: &str,
) -> Result<ArtifactMetadata> {
    let bad = |m: String| Error::new(ErrorKind::Artifact, format!("metadata.json: {m}"));
    let bytes = bytes.ok_or_else(|| bad("missing from the archive".to_owned()))?;
    let metadata: ArtifactMetadata =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid metadata: {e}")))?;
    if metadata.version != entry.version {
        return Err(bad(format!(
            "records version {}, but was listed as v{}",
            metadata.version, entry.version
        )));
    }
    if metadata.task_id != task {
        return Err(bad(format!(
            "records task_id {:?}, not {task:?}",
            metadata.task_id
        )));
    }
    if metadata.sha256 != entry.program_sha256 {
        return Err(bad(format!(
            "records program sha256 {}, but the versions list says {}",
            crate::digest::abbreviate(&metadata.sha256),
            crate::digest::abbreviate(&entry.program_sha256)
        )));
    }
    Ok(metadata)
}

/// Waits up to `wait` for the first version to download and install (start-up without a
/// cached program); `sleep` waits between attempts. Returns the installed version.
pub(crate) fn first_download(
    checker: &mut Checker,
    wait: Duration,
    sleep: &dyn Fn(Duration),
) -> Result<u32> {
    let start = Instant::now();
    let mut slept = Duration::ZERO;
    let mut rng = fastrand::Rng::new();
    let mut failures = 0;
    loop {
        let why = match checker.check(None) {
            Ok(Found::New(version)) => return Ok(version),
            Ok(Found::Nothing) => {
                "no version is published yet (the versions list is missing or empty)".to_owned()
            }
            Err(e) => e.message().to_owned(),
        };
        failures += 1;
        // With an injected sleep, the time slept counts even if no time passed.
        let elapsed = start.elapsed().max(slept);
        if elapsed >= wait {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "task {:?} has no cached program in {} and none could be downloaded from {} \
                     within cloud.startup_wait_sec ({} s); last error: {why}",
                    checker.task,
                    checker.store.task_dir().display(),
                    checker.versions_url,
                    wait.as_secs()
                ),
            ));
        }
        let delay = STARTUP_BACKOFF
            .delay(failures, checker.retry_after, &mut rng)
            .min(wait - elapsed);
        sleep(delay);
        slept += delay;
    }
}

/// What the refresh thread needs of the runtime it feeds. The runtime implements it on a
/// weak handle: once the runtime is gone, every call answers `None` and the thread exits.
pub(crate) trait RefreshTarget: Send + 'static {
    /// The artifact version executing now; `None` once the runtime is gone.
    fn active_version(&self) -> Option<u32>;

    /// Hands a newly installed version over: the runtime starts the version's canary
    /// rollout ([`Runtime::begin_rollout`](crate::Runtime::begin_rollout); with
    /// `rollout.enabled: false` the version is activated at once). Executions in flight
    /// finish on the program they started with. `None` once the runtime is gone.
    fn hand_over(&self, version: u32) -> Option<Result<()>>;
}

enum Ctl {
    /// Check now (an `artifact` notification arrived).
    Check,
}

/// The refresh and notification threads of one runtime.
pub(crate) struct Refresh {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// Dropping the senders wakes both threads at once.
    stop_tx: Mutex<Option<(Sender<Ctl>, Sender<()>)>>,
    pending: Mutex<Option<Pending>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    exited: Receiver<()>,
}

/// What [`Refresh::start`] needs, kept until the runtime exists.
struct Pending {
    checker: Checker,
    ctl_rx: Receiver<Ctl>,
    stop_rx: Receiver<()>,
    ctl_tx: Sender<Ctl>,
    exited_tx: Sender<()>,
    interval: Duration,
    notifications: Option<(String, Option<String>, net::Tls)>,
}

impl fmt::Debug for Refresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresh")
            .field("endpoint", &self.shared.metrics().endpoint)
            .finish_non_exhaustive()
    }
}

impl Refresh {
    /// Prepares the threads for `checker` (started by [`start`](Self::start)).
    /// The notification stream checks the cloud's certificate as `tls` says.
    pub(crate) fn new(
        checker: Checker,
        api_url: &str,
        config: &DeploymentConfig,
        tls: net::Tls,
    ) -> Refresh {
        let (ctl_tx, ctl_rx) = bounded::<Ctl>(1);
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let (exited_tx, exited) = bounded::<()>(2);
        let notifications = config.cloud.notifications.then(|| {
            (
                notifications_url(api_url, &checker.task),
                config.cloud.api_key.clone(),
                tls,
            )
        });
        Refresh {
            shared: checker.shared.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            stop_tx: Mutex::new(Some((ctl_tx.clone(), stop_tx))),
            pending: Mutex::new(Some(Pending {
                checker,
                ctl_rx,
                stop_rx,
                ctl_tx,
                exited_tx,
                interval: Duration::from_secs(config.cloud.refresh_interval_sec),
                notifications,
            })),
            handles: Mutex::new(Vec::new()),
            exited,
        }
    }

    /// Starts the refresh thread (and the notification listener when
    /// `cloud.notifications` is on) for the runtime behind `runtime`.
    pub(crate) fn start(&self, runtime: Box<dyn RefreshTarget>) -> Result<()> {
        let Some(p) = self.pending.lock().take() else {
            return Ok(());
        };
        let task = p.checker.task.clone();
        let mut handles = self.handles.lock();
        if let Some((url, api_key, tls)) = p.notifications {
            let stop = self.stop.clone();
            let shared = self.shared.clone();
            let ctl = p.ctl_tx.clone();
            let stop_rx = p.stop_rx.clone();
            let exited = p.exited_tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("loopai-notify-{task}"))
                    .spawn(move || {
                        let agent = net::agent(true, &tls);
                        let client = (&agent, &tls);
                        listen(
                            &url,
                            api_key.as_deref(),
                            client,
                            &ctl,
                            &stop_rx,
                            &stop,
                            &shared,
                        );
                        let _ = exited.send(());
                    })
                    .map_err(|e| Error::io("starting the notification listener thread", e))?,
            );
        }
        let stop = self.stop.clone();
        let exited = p.exited_tx;
        let mut checker = p.checker;
        let (ctl_rx, interval) = (p.ctl_rx, p.interval);
        handles.push(
            std::thread::Builder::new()
                .name(format!("loopai-refresh-{task}"))
                .spawn(move || {
                    run(&mut checker, &ctl_rx, runtime.as_ref(), interval, &stop);
                    let _ = exited.send(());
                })
                .map_err(|e| Error::io("starting the artifact refresh thread", e))?,
        );
        Ok(())
    }

    pub(crate) fn metrics(&self) -> RefreshMetrics {
        self.shared.metrics()
    }

    /// Stops both threads, waiting until `deadline` at most. A thread still inside a
    /// request then is left to finish it (at most [`REQUEST_TIMEOUT`]) and exits without
    /// touching the artifact store or the runtime. Called again, does nothing.
    pub(crate) fn shutdown(&self, deadline: Instant) {
        self.stop.store(true, Ordering::Release);
        drop(self.stop_tx.lock().take());
        self.pending.lock().take();
        let handles = std::mem::take(&mut *self.handles.lock());
        let me = std::thread::current().id();
        let mut waiting = handles.len();
        if handles.iter().any(|h| h.thread().id() == me) {
            // The last runtime clone was dropped by the refresh thread itself: it exits
            // when this returns.
            return;
        }
        while waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.exited.recv_timeout(left).is_err() {
                log::debug!("loopai: artifact refresh threads still in a request at shutdown; they exit after it");
                return;
            }
            waiting -= 1;
        }
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// The refresh thread: a check at once, then every `interval`, on notification, and
/// sooner after a failure.
fn run(
    checker: &mut Checker,
    ctl: &Receiver<Ctl>,
    runtime: &dyn RefreshTarget,
    interval: Duration,
    stop: &AtomicBool,
) {
    let mut rng = fastrand::Rng::new();
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        match ctl.recv_timeout(wait) {
            Ok(Ctl::Check) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Some(active) = runtime.active_version() else {
            return;
        };
        let found = checker.check(Some(active));
        if stop.load(Ordering::Acquire) {
            return;
        }
        wait = match found {
            Ok(found) => {
                failures = 0;
                if let Found::New(version) = found {
                    match runtime.hand_over(version) {
                        None => return,
                        Some(Err(e)) => {
                            checker.record_error(&e.context(format!("handing over v{version}")));
                        }
                        Some(Ok(())) => {}
                    }
                }
                interval
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                Backoff::default()
                    .delay(failures, checker.retry_after, &mut rng)
                    .min(interval)
            }
        };
    }
}

/// The notification listener: holds the SSE stream open, asks for a check on every
/// `artifact` event, reconnects with backoff and jitter.
fn listen(
    url: &str,
    api_key: Option<&str>,
    client: (&ureq::Agent, &net::Tls),
    ctl: &Sender<Ctl>,
    stop_rx: &Receiver<()>,
    stop: &AtomicBool,
    shared: &Shared,
) {
    let (agent, tls) = client;
    let mut rng = fastrand::Rng::new();
    let mut failures = 0u32;
    while !stop.load(Ordering::Acquire) {
        shared.update(|m| m.notifications = NOTIFY_CONNECTING);
        let mut request = agent
            .get(url)
            .config()
            .timeout_connect(Some(STREAM_CONNECT_TIMEOUT))
            .timeout_recv_response(Some(STREAM_CONNECT_TIMEOUT))
            .timeout_global(Some(STREAM_MAX_AGE))
            .build()
            .header("Accept", "text/event-stream");
        if let Some(key) = api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut retry_after = None;
        match request.call() {
            Ok(response) if response.status().as_u16() == 200 => {
                shared.update(|m| m.notifications = NOTIFY_CONNECTED);
                let reader = response.into_body().into_reader();
                match read_events(reader, ctl, stop, shared) {
                    Ok(events) if events > 0 => failures = 0,
                    Ok(_) => {}
                    Err(e) => log::debug!("loopai: notification stream {url}: {e}"),
                }
            }
            Ok(response) => {
                let status = response.status().as_u16();
                retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, 0));
                log::warn!("loopai: notification stream {url}: HTTP {status}");
            }
            // A refused certificate is a configuration to fix: said at warn level.
            Err(e) if net::is_tls_error(&e) => log::warn!(
                "loopai: notification stream {url}: {}",
                net::describe_error(&e, url, tls)
            ),
            Err(e) => log::debug!("loopai: notification stream {url}: {e}"),
        }
        shared.update(|m| m.notifications = NOTIFY_CONNECTING);
        failures = failures.saturating_add(1);
        let delay = STREAM_BACKOFF.delay(failures, retry_after, &mut rng);
        match stop_rx.recv_timeout(delay) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// Reads server-sent events until the stream ends; returns how many events arrived.
fn read_events(
    reader: impl Read,
    ctl: &Sender<Ctl>,
    stop: &AtomicBool,
    shared: &Shared,
) -> std::io::Result<u64> {
    let mut reader = BufReader::new(reader);
    let mut event = String::new();
    let mut has_data = false;
    let mut events = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_EVENT_LINE).read_line(&mut line)?;
        if stop.load(Ordering::Acquire) || n == 0 {
            return Ok(events);
        }
        if !line.ends_with('\n') && n as u64 >= MAX_EVENT_LINE {
            return Err(std::io::Error::other("event line too long"));
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            // Dispatch.
            if has_data || !event.is_empty() {
                events += 1;
                if event == "artifact" {
                    shared.update(|m| m.notifications_received += 1);
                    match ctl.try_send(Ctl::Check) {
                        Ok(()) | Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Disconnected(_)) => return Ok(events),
                    }
                }
            }
            event.clear();
            has_data = false;
            continue;
        }
        if text.starts_with(':') {
            continue;
        }
        let (field, value) = text.split_once(':').unwrap_or((text, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => value.clone_into(&mut event),
            "data" => has_data = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::NewArtifact;
    use crate::clock::SystemClock;
    use crate::repository::ArtifactSigner;
    use std::collections::HashMap;

    const API: &str = "http://repo.test";
    const V1: &str = r#"{"format": "loopai.program/1", "task": "spam",
      "inputs": [{"name": "text", "path": "/text", "type": "text"}],
      "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": "ham", "confidence": 0.6}]},
      "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;

    fn program(n: u32) -> Vec<u8> {
        V1.replace("0.6", &format!("0.6{n}")).into_bytes()
    }

    /// A repository in memory: URL -> reply, and every request made.
    #[derive(Debug, Default)]
    struct FakeRepo {
        replies: Mutex<HashMap<String, std::result::Result<Reply, String>>>,
        requests: Mutex<Vec<(String, Option<String>)>>,
    }

    impl FakeRepo {
        fn set(&self, url: &str, reply: std::result::Result<Reply, String>) {
            self.replies.lock().insert(url.to_owned(), reply);
        }

        fn ok(&self, url: &str, body: Vec<u8>, etag: Option<&str>) {
            self.set(
                url,
                Ok(Reply {
                    status: 200,
                    etag: etag.map(str::to_owned),
                    retry_after: None,
                    body,
                }),
            );
        }
    }

    impl Repo for FakeRepo {
        fn get(
            &self,
            url: &str,
            etag: Option<&str>,
            limit: u64,
            _: Duration,
        ) -> std::result::Result<Reply, String> {
            self.requests
                .lock()
                .push((url.to_owned(), etag.map(str::to_owned)));
            let reply = self
                .replies
                .lock()
                .get(url)
                .cloned()
                .unwrap_or_else(|| Err(format!("no route to {url}")))?;
            if reply.etag.is_some() && reply.etag.as_deref() == etag {
                return Ok(Reply {
                    status: 304,
                    body: Vec::new(),
                    ..reply
                });
            }
            if reply.body.len() as u64 > limit {
                return Err("body over the limit".to_owned());
            }
            Ok(reply)
        }
    }

    /// A repository with versions 1..=n of task spam, optionally signed.
    struct Fixture {
        _dir: tempfile::TempDir,
        local: ArtifactStore,
        repo: Arc<FakeRepo>,
        entries: Vec<VersionInfo>,
    }

    fn fixture(n: u32, signer: Option<&ArtifactSigner>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let origin = ArtifactStore::open(&dir.path().join("origin"), "spam").unwrap();
        let repo = Arc::new(FakeRepo::default());
        let mut entries = Vec::new();
        for v in 1..=n {
            let meta = origin
                .install(&program(v), NewArtifact::default(), false)
                .unwrap();
            let metadata =
                std::fs::read(origin.task_dir().join(format!("v{v}/metadata.json"))).unwrap();
            let archive = ArtifactArchive::new(program(v), Some(metadata))
                .pack()
                .unwrap();
            let entry = VersionInfo::new(v, &archive, &meta.created_at, &meta.sha256);
            let signature = signer.map(|s| s.sign(&entry.sha256));
            entries.push(entry.with_signature(signature));
            repo.ok(
                &format!("{API}/api/v1/artifacts/spam/v{v}/download"),
                archive,
                None,
            );
        }
        let list = VersionList::new("spam", entries.clone());
        repo.ok(
            &format!("{API}/api/v1/artifacts/spam/versions"),
            list.to_json(),
            Some("\"e1\""),
        );
        let local = ArtifactStore::open(&dir.path().join("local"), "spam").unwrap();
        local
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        Fixture {
            _dir: dir,
            local,
            repo,
            entries,
        }
    }

    fn checker(f: &Fixture, trusted_keys: Vec<String>) -> Checker {
        let mut config = DeploymentConfig::default();
        config.cloud.trusted_keys = trusted_keys;
        Checker::new(
            API,
            &config,
            f.local.clone(),
            ProgramLimits::default(),
            Arc::new(SystemClock),
            f.repo.clone(),
        )
    }

    #[test]
    fn a_newer_version_is_downloaded_verified_and_imported_but_not_activated() {
        let f = fixture(2, None);
        let mut c = checker(&f, Vec::new());
        assert_eq!(c.check(Some(1)).unwrap(), Found::New(2));
        assert_eq!(f.local.versions().unwrap(), vec![1, 2]);
        assert_eq!(f.local.active_version().unwrap(), Some(1));
        let v2 = f.local.load(2).unwrap();
        assert_eq!(v2.program, program(2));
        assert_eq!(v2.metadata.status, ArtifactStatus::Validated);
        let m = c.shared.metrics();
        assert_eq!(
            (m.available_version, m.installed, m.last_installed),
            (Some(2), 1, Some(2))
        );
        assert_eq!((m.checks, m.refused, m.last_error), (1, 0, None));
        assert!(m.last_success.is_some());
        // Not yet handed over: the next check resumes it, without downloading again.
        assert_eq!(c.check(Some(1)).unwrap(), Found::New(2));
        assert_eq!(c.check(Some(2)).unwrap(), Found::Nothing);
        let downloads = f
            .repo
            .requests
            .lock()
            .iter()
            .filter(|(u, _)| u.ends_with("/download"))
            .count();
        assert_eq!(downloads, 1);
    }

    #[test]
    fn the_list_is_revalidated_with_its_etag_and_304_uses_the_cached_one() {
        let f = fixture(1, None);
        let mut c = checker(&f, Vec::new());
        assert_eq!(c.check(Some(1)).unwrap(), Found::Nothing);
        assert_eq!(c.check(Some(1)).unwrap(), Found::Nothing);
        let requests = f.repo.requests.lock().clone();
        assert_eq!(requests[0].1, None);
        assert_eq!(requests[1].1.as_deref(), Some("\"e1\""));
        let m = c.shared.metrics();
        assert_eq!(
            (m.checks, m.not_modified, m.available_version),
            (2, 1, Some(1))
        );
    }

    #[test]
    fn a_tampered_download_is_refused_and_reported_never_installed() {
        let f = fixture(2, None);
        let url = format!("{API}/api/v1/artifacts/spam/v2/download");
        let mut reply = f.repo.replies.lock()[&url].clone().unwrap();
        let last = reply.body.len() - 1;
        reply.body[last] ^= 0xff;
        f.repo.set(&url, Ok(reply));
        let mut c = checker(&f, Vec::new());
        let err = c.check(Some(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(
            err.message().contains("/v2/download: sha256 mismatch"),
            "{err}"
        );
        assert_eq!(f.local.versions().unwrap(), vec![1]);
        let m = c.shared.metrics();
        assert_eq!(m.refused, 1);
        assert!(m.last_error.unwrap().contains("sha256 mismatch"));
        assert_eq!(m.last_success, None);
    }

    #[test]
    fn with_trusted_keys_only_a_good_signature_is_accepted() {
        let signer = ArtifactSigner::generate().unwrap();
        let other = ArtifactSigner::generate().unwrap();
        let unsigned = fixture(2, None);
        let err = checker(&unsigned, vec![signer.public_key_hex()])
            .check(Some(1))
            .unwrap_err();
        assert!(err.message().contains("unsigned"), "{err}");
        let wrong = fixture(2, Some(&other));
        let err = checker(&wrong, vec![signer.public_key_hex()])
            .check(Some(1))
            .unwrap_err();
        assert!(
            err.message()
                .ends_with("signature: not valid for any key in cloud.trusted_keys"),
            "{err}"
        );
        assert_eq!(wrong.local.versions().unwrap(), vec![1]);
        let good = fixture(2, Some(&signer));
        let keys = vec![other.public_key_hex(), signer.public_key_hex()];
        assert_eq!(
            checker(&good, keys.clone()).check(Some(1)).unwrap(),
            Found::New(2)
        );
        assert!(good.entries[1].signature.is_some());
        // The signed archive was kept: every later load verifies it again.
        let trusting = good.local.clone().with_trusted_keys(&keys).unwrap();
        trusting.load(2).unwrap();
    }

    #[test]
    fn metadata_that_contradicts_the_list_is_refused() {
        let f = fixture(2, None);
        // Serve v1's archive as v2, with a list entry matching those bytes.
        let v1_url = format!("{API}/api/v1/artifacts/spam/v1/download");
        let v1 = f.repo.replies.lock()[&v1_url].clone().unwrap();
        let mut entries = f.entries.clone();
        entries[1] = VersionInfo::new(
            2,
            &v1.body,
            "2026-01-01T00:00:00Z",
            &f.entries[0].program_sha256,
        );
        f.repo.ok(
            &format!("{API}/api/v1/artifacts/spam/versions"),
            VersionList::new("spam", entries).to_json(),
            None,
        );
        f.repo
            .set(&format!("{API}/api/v1/artifacts/spam/v2/download"), Ok(v1));
        let err = checker(&f, Vec::new()).check(Some(1)).unwrap_err();
        assert!(
            err.message()
                .contains("metadata.json: records version 1, but was listed as v2"),
            "{err}"
        );
        assert_eq!(f.local.versions().unwrap(), vec![1]);
    }

    #[test]
    fn a_version_rolled_back_from_is_not_handed_over_again() {
        let f = fixture(2, None);
        let mut c = checker(&f, Vec::new());
        assert_eq!(c.check(Some(1)).unwrap(), Found::New(2));
        f.local.activate(2).unwrap();
        f.local.rollback().unwrap();
        assert_eq!(c.check(Some(1)).unwrap(), Found::Nothing);
    }

    #[test]
    fn first_download_gives_up_after_the_wait_naming_the_url_and_the_error() {
        let f = fixture(1, None);
        f.repo.set(
            &format!("{API}/api/v1/artifacts/spam/versions"),
            Err("Connection refused".to_owned()),
        );
        let mut c = checker(&f, Vec::new());
        let slept = Mutex::new(Vec::new());
        let err =
            first_download(&mut c, Duration::from_secs(3), &|d| slept.lock().push(d)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        let msg = err.message();
        assert!(
            msg.contains(
                "none could be downloaded from http://repo.test/api/v1/artifacts/spam/versions"
            ),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "last error: http://repo.test/api/v1/artifacts/spam/versions: Connection refused"
            ),
            "{msg}"
        );
        let total: Duration = slept.lock().iter().sum();
        assert_eq!(total, Duration::from_secs(3), "waits exactly the budget");
        assert!(slept.lock().len() > 1, "retries with backoff");
    }

    #[test]
    fn first_download_installs_the_latest_version() {
        let f = fixture(3, None);
        let mut c = checker(&f, Vec::new());
        assert_eq!(
            first_download(&mut c, Duration::ZERO, &|_| panic!("no wait")).unwrap(),
            3
        );
        assert_eq!(f.local.versions().unwrap(), vec![1, 3]);
    }

    #[test]
    fn server_sent_events_ask_for_a_check_on_artifact_events_only() {
        let (tx, rx) = bounded(1);
        let shared = Shared::new("u".into(), true);
        let stream = b": hello\n\nevent: heartbeat\ndata: {}\n\nevent: artifact\r\ndata: {\"task\":\"spam\",\"version\":2}\r\n\r\nevent: artifact\ndata:{}\n\n";
        let events = read_events(&stream[..], &tx, &AtomicBool::new(false), &shared).unwrap();
        assert_eq!(events, 3);
        assert_eq!(shared.metrics().notifications_received, 2);
        assert!(matches!(rx.try_recv(), Ok(Ctl::Check)));
        assert!(rx.try_recv().is_err(), "pending checks coalesce");
    }
}
