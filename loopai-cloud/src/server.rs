//! The server: builder, routes, the tokio runtime that runs them, and shutdown.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use loopai_core::{ArtifactSigner, Clock, SystemClock};
use loopai_http::{ConnectionLimits, Listener, ServerTls, Serving};
pub use loopai_http::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS};

use crate::auth::{ApiKeys, Auth};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{self, BodyLimits};
use crate::improvement::{ImprovementConfig, ImprovementEngine};
use crate::postgres::{PgFleet, PgStorage};
use crate::publish::{self, Hub};
use crate::query::index::{FleetIndex, DEFAULT_SILENT_AFTER_INTERVALS};
use crate::query::{FleetIngest, FleetQueries};
use crate::repository::Repository;
use crate::state::{AppState, ImprovementCounters};
use crate::storage::file::FileImprovement;
use crate::storage::{ArtifactBackend, ImprovementBackend, TelemetryBackend};
use crate::telemetry_store::TelemetryStore;
use crate::{artifacts, dashboard, heartbeat, query_api, telemetry};

/// The default largest request body, in bytes, as received and after decompression (16 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
/// The default time allowed to receive a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The default time [`CloudServer::serve`] gives requests in flight at SIGINT/SIGTERM.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dropping a [`ServerHandle`] that was not shut down waits for requests in flight.
pub const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The default port.
pub const DEFAULT_PORT: u16 = 8080;
/// The default period of `heartbeat` events on notification streams.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// Builds a [`CloudServer`]; every option is checked by [`build`](Self::build).
#[derive(Debug)]
pub struct CloudServerBuilder {
    dir: Option<PathBuf>,
    bind: IpAddr,
    port: u16,
    api_keys_file: Option<PathBuf>,
    api_keys: Option<ApiKeys>,
    max_body_bytes: usize,
    body_timeout: Duration,
    connections: ConnectionLimits,
    shutdown_timeout: Duration,
    worker_threads: Option<usize>,
    clock: Arc<dyn Clock>,
    signing_key_file: Option<PathBuf>,
    signer: Option<ArtifactSigner>,
    heartbeat: Duration,
    improvement: Option<(ImprovementConfig, Duration)>,
    database: Option<String>,
    silent_after_intervals: u32,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Default for CloudServerBuilder {
    fn default() -> Self {
        CloudServerBuilder {
            dir: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            api_keys_file: None,
            api_keys: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            connections: ConnectionLimits::default(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            worker_threads: None,
            clock: Arc::new(SystemClock),
            signing_key_file: None,
            signer: None,
            heartbeat: DEFAULT_HEARTBEAT,
            improvement: None,
            database: None,
            silent_after_intervals: DEFAULT_SILENT_AFTER_INTERVALS,
            tls: None,
        }
    }
}

impl CloudServerBuilder {
    /// The storage directory (required): telemetry goes to `<dir>/telemetry/`.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The address to listen on (default `127.0.0.1`; `0.0.0.0` for every interface).
    pub fn bind(mut self, addr: IpAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The port to listen on (default [`DEFAULT_PORT`]); `0` picks a free port, see
    /// [`ServerHandle::local_addr`].
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Require API keys from this keys file (JSON lines, see the crate docs). Without keys
    /// the server runs open, as a development server, and logs a warning saying so.
    pub fn api_keys_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.api_keys_file = Some(path.into());
        self
    }

    /// Require these API keys (instead of a keys file).
    pub fn api_keys(mut self, keys: ApiKeys) -> Self {
        self.api_keys = Some(keys);
        self
    }

    /// The largest request body in bytes, both as received and after gzip decompression
    /// (default [`DEFAULT_MAX_BODY_BYTES`]); larger ones get 413.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How long receiving a request body may take (default [`DEFAULT_BODY_TIMEOUT`]);
    /// slower ones get 408.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// How long a request's headers may take to arrive (default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`]): from the accept for a connection's first request,
    /// from its first byte for a later one. A slower client (slowloris) is disconnected.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.connections.header_read_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may wait for its next request before it is closed
    /// (default [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.connections.idle_timeout = timeout;
        self
    }

    /// The largest number of open connections (default [`DEFAULT_MAX_CONNECTIONS`], lowered
    /// at start to fit under the process's file descriptor limit). A connection past it is
    /// answered 503 and closed at once; the open ones keep being served. Notification
    /// streams hold a connection each.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.connections.max_connections = max;
        self
    }

    /// How long [`CloudServer::serve`] waits for requests in flight after SIGINT/SIGTERM
    /// (default [`DEFAULT_SHUTDOWN_TIMEOUT`]).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The number of async worker threads (default: one per CPU). Blocking work (gzip,
    /// fsync) runs on tokio's separate blocking pool.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads);
        self
    }

    /// The clock that decides the UTC day file a batch is appended to (default: the
    /// system clock). For tests.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sign published artifacts with the ed25519 secret key in this file (32 bytes as 64
    /// hex digits or base64, e.g. from `loopai cloud keygen`). Deployments check the
    /// signatures when their `cloud.trusted_keys` lists the public key, which the server
    /// logs at start.
    pub fn signing_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.signing_key_file = Some(path.into());
        self
    }

    /// Sign published artifacts with this key (instead of a key file).
    pub fn signing_key(mut self, signer: ArtifactSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// After how many of its reporting intervals without a heartbeat or batch a
    /// deployment is shown `silent` (default [`DEFAULT_SILENT_AFTER_INTERVALS`]; the
    /// interval is the `interval_sec` of its heartbeats, else 60 s).
    pub fn silent_after_intervals(mut self, intervals: u32) -> Self {
        self.silent_after_intervals = intervals;
        self
    }

    /// How often notification streams get a `heartbeat` event (default
    /// [`DEFAULT_HEARTBEAT`]).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Runs the improvement engine ([`ImprovementEngine`]) every `every` on a thread of
    /// the server: failing tasks are regenerated and the new versions published through
    /// the artifact repository (archive, versions list, signature, notification), exactly
    /// like uploads. Off by default.
    pub fn improvement(mut self, config: ImprovementConfig, every: Duration) -> Self {
        self.improvement = Some((config, every));
        self
    }

    /// Store everything in this PostgreSQL database (`postgres://user@host:port/db`, or
    /// `host=... user=... dbname=...`) instead of the directory's files: telemetry
    /// batches, their execution summaries and validations, artifact versions (bodies
    /// included), the improvement engine's state and escalations, deployments. Several
    /// instances may share one database (see `docs/cloud.md`); the schema is created or
    /// migrated at [`build`](Self::build). The specifications the improvement engine
    /// reads live there too (`task_specs`): the files placed in `<dir>/specs/<task>.json`
    /// are imported at `build` and, with [`improvement`](Self::improvement), whenever they
    /// change, so every instance reads the same ones.
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.database = Some(url.into());
        self
    }

    /// Serve HTTPS with the certificate chain in `cert` and its private key in `key` (PEM
    /// files; TLS 1.2 and 1.3 only, HTTP/1.1). On Unix, SIGHUP reloads both files: new
    /// connections get the new certificate, established ones go on; a reload that fails
    /// is logged and the previous certificate stays. Without it the server speaks plain
    /// HTTP. The files are loaded and checked by [`build`](Self::build).
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Checks the options, loads the API keys, opens the storage directory (cutting off
    /// torn tails and rebuilding the `batch_id` index) and returns a server ready to
    /// [`spawn`](CloudServer::spawn) or [`serve`](CloudServer::serve).
    pub fn build(self) -> Result<CloudServer> {
        let dir = self.dir.ok_or_else(|| {
            Error::new(ErrorKind::Config, "dir: the storage directory is required")
        })?;
        if self.max_body_bytes == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "max_body_bytes: must be at least 1",
            ));
        }
        if self.body_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "body_timeout: must not be zero",
            ));
        }
        if self.worker_threads == Some(0) {
            return Err(Error::new(
                ErrorKind::Config,
                "worker_threads: must be at least 1",
            ));
        }
        self.connections
            .check()
            .map_err(|message| Error::new(ErrorKind::Config, message))?;
        let tls = match &self.tls {
            Some((cert, key)) => Some(ServerTls::load(cert, key).map_err(Error::from_http)?),
            None => None,
        };
        let auth = match (self.api_keys, self.api_keys_file) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "api_keys: give either keys or a keys file, not both",
                ))
            }
            (Some(keys), None) => Auth::Keys(keys),
            (None, Some(path)) => Auth::Keys(ApiKeys::from_file(&path)?),
            (None, None) => Auth::Open,
        };
        if self.heartbeat.is_zero() {
            return Err(Error::new(ErrorKind::Config, "heartbeat: must not be zero"));
        }
        if self.silent_after_intervals == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "silent_after_intervals: must be at least 1",
            ));
        }
        let signer = match (self.signer, self.signing_key_file) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "signing_key: give either a key or a key file, not both",
                ))
            }
            (Some(signer), None) => Some(signer),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
                Some(ArtifactSigner::from_key_text(&text).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("{}: {}", path.display(), e.message()),
                    )
                })?)
            }
            (None, None) => None,
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        match &signer {
            Some(s) => log::info!(
                "signing artifacts with ed25519 public key {} (put it in cloud.trusted_keys)",
                s.public_key_hex()
            ),
            None => log::info!("artifacts are not signed (no signing key)"),
        }
        let hub = Hub::new(self.heartbeat);
        let storage = match &self.database {
            Some(url) => {
                let pg = Arc::new(PgStorage::open(url, self.clock.clone(), signer)?);
                pg.listen(hub.tx.clone());
                // This instance's specification files, shared with every instance (the
                // improvement ticks import the ones that change later).
                pg.import_specs(&dir)?;
                Storage {
                    kind: "postgres",
                    telemetry: Arc::clone(&pg) as Arc<dyn TelemetryBackend>,
                    repository: Arc::clone(&pg) as Arc<dyn ArtifactBackend>,
                    improvement: Arc::clone(&pg) as Arc<dyn ImprovementBackend>,
                    database: Some(pg),
                }
            }
            None => open_files(&dir, self.clock.clone(), signer)?,
        };
        let (fleet, queries) = match &storage.database {
            Some(pg) => {
                let fleet = Arc::new(PgFleet::new(Arc::clone(pg), self.silent_after_intervals));
                (
                    Arc::clone(&fleet) as Arc<dyn FleetIngest>,
                    fleet as Arc<dyn FleetQueries>,
                )
            }
            None => {
                let (index, indexed) = FleetIndex::open(
                    &dir,
                    self.clock.clone(),
                    self.silent_after_intervals,
                    Arc::clone(&storage.improvement),
                )?;
                log::info!(
                    "fleet index: {} batches aggregated, {} deployments known{}",
                    indexed.batches,
                    indexed.deployments,
                    if indexed.skipped_lines > 0 {
                        format!(
                            ", {} lines that are not batches skipped",
                            indexed.skipped_lines
                        )
                    } else {
                        String::new()
                    }
                );
                let index = Arc::new(index);
                (
                    Arc::clone(&index) as Arc<dyn FleetIngest>,
                    index as Arc<dyn FleetQueries>,
                )
            }
        };
        let improvement = match self.improvement {
            Some((config, every)) => {
                if every.is_zero() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "improvement interval: must not be zero",
                    ));
                }
                let engine = ImprovementEngine::with_storage(
                    dir.clone(),
                    config,
                    Arc::clone(&storage.improvement),
                )?;
                Some((engine, every))
            }
            None => None,
        };
        Ok(CloudServer {
            improvement,
            dir,
            addr: SocketAddr::new(self.bind, self.port),
            tls,
            shutdown_timeout: self.shutdown_timeout,
            worker_threads: self.worker_threads,
            state: Arc::new(AppState {
                auth,
                telemetry: storage.telemetry,
                repository: storage.repository,
                hub,
                limits: BodyLimits {
                    max_bytes: self.max_body_bytes,
                    read_timeout: self.body_timeout,
                },
                connections: Arc::default(),
                storage: storage.kind,
                improvement: ImprovementCounters::default(),
                queries,
                fleet,
            }),
            connections: self.connections,
        })
    }
}

/// The storage backends a server runs on.
struct Storage {
    kind: &'static str,
    telemetry: Arc<dyn TelemetryBackend>,
    repository: Arc<dyn ArtifactBackend>,
    improvement: Arc<dyn ImprovementBackend>,
    /// The database, which also keeps the fleet's read side.
    database: Option<Arc<PgStorage>>,
}

/// Opens the file storage under `dir`: cuts off torn tails, rebuilds the `batch_id` index,
/// completes interrupted publishes.
fn open_files(
    dir: &Path,
    clock: Arc<dyn Clock>,
    signer: Option<ArtifactSigner>,
) -> Result<Storage> {
    let (telemetry, report) = TelemetryStore::open(dir, clock)?;
    for (path, bytes) in &report.repaired {
        log::warn!(
            "{}: cut off a torn last line ({bytes} bytes) left by an interrupted write",
            path.display()
        );
    }
    log::info!(
        "telemetry under {}: {} batches in {} files{}",
        dir.join("telemetry").display(),
        report.batches,
        report.files,
        if report.unreadable_lines > 0 {
            format!(", {} unreadable lines skipped", report.unreadable_lines)
        } else {
            String::new()
        }
    );
    let (repository, opened) = Repository::open(dir, signer)?;
    log::info!(
        "artifacts under {}: {} versions of {} tasks{}",
        dir.join("artifacts").display(),
        opened.versions,
        opened.tasks,
        if opened.completed > 0 {
            format!(", {} interrupted publishes completed", opened.completed)
        } else {
            String::new()
        }
    );
    Ok(Storage {
        kind: "files",
        telemetry: Arc::new(telemetry),
        repository: Arc::new(repository),
        improvement: Arc::new(FileImprovement::new(dir)),
        database: None,
    })
}

/// The Loopai reference cloud server: telemetry collector, artifact repository and
/// notification hub.
///
/// Build one with [`CloudServer::builder`], then either [`serve`](Self::serve) (block until
/// SIGINT/SIGTERM) or [`spawn`](Self::spawn) (run in the background, get a
/// [`ServerHandle`]).
#[derive(Debug)]
pub struct CloudServer {
    improvement: Option<(ImprovementEngine, Duration)>,
    connections: ConnectionLimits,
    dir: PathBuf,
    addr: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    shutdown_timeout: Duration,
    worker_threads: Option<usize>,
    state: Arc<AppState>,
}

fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(telemetry::routes())
        .merge(heartbeat::routes())
        .merge(artifacts::routes())
        .merge(query_api::routes())
        .merge(dashboard::routes())
        .fallback(http::not_found)
        .with_state(state)
}

async fn health(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    let auth = match state.auth {
        Auth::Open => "open",
        Auth::Keys(_) => "api_keys",
    };
    let counts = artifacts::storage(&state, |app| {
        Ok((app.telemetry.batches()?, app.repository.task_count()?))
    })
    .await;
    let (batches, tasks) = match counts {
        Ok(counts) => counts,
        Err(e) => return e.into_response(),
    };
    http::json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "auth": auth,
            "telemetry_batches": batches,
            "artifact_tasks": tasks,
            "signing_key": state.repository.public_key(),
            "storage": state.storage,
            "improvement": {
                "passes": state.improvement.passes.load(Ordering::Relaxed),
                "skipped": state.improvement.skipped.load(Ordering::Relaxed),
            },
        }),
    )
}

/// `GET /metrics`: the connection counters in Prometheus text format.
async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    let mut text = String::with_capacity(2048);
    state.connections.render_prometheus(&mut text);
    loopai_http::bytes_response(
        StatusCode::OK,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        text.into_bytes(),
    )
}

fn refuse_inside_runtime(what: &str) -> Result<()> {
    loopai_http::refuse_inside_runtime(what).map_err(Error::from_http)
}

impl CloudServer {
    /// A builder with the defaults: `127.0.0.1:8080`, no API keys, 16 MiB bodies.
    ///
    /// ```
    /// use loopai_cloud::CloudServer;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let server = CloudServer::builder().dir(dir.path()).port(0).build()?;
    /// let mut handle = server.spawn()?;
    /// assert_ne!(handle.local_addr().port(), 0);
    /// handle.shutdown(std::time::Duration::from_secs(5))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> CloudServerBuilder {
        CloudServerBuilder::default()
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether requests need an API key (`false`: the server runs open).
    pub fn requires_api_keys(&self) -> bool {
        matches!(self.state.auth, Auth::Keys(_))
    }

    /// Binds the listening socket and starts serving on a tokio runtime of its own;
    /// returns at once with a handle that knows the bound address.
    ///
    /// Must be called from a plain thread, not from async code.
    pub fn spawn(self) -> Result<ServerHandle> {
        refuse_inside_runtime("CloudServer::spawn")?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let listener = Listener {
            addr: self.addr,
            tls: self.tls,
        };
        let serving = loopai_http::start_with(
            listener,
            self.worker_threads,
            "loopai-cloud",
            "starting the server runtime",
            routes(Arc::clone(&self.state)),
            self.connections,
            Arc::clone(&self.state.connections),
        )
        .map_err(Error::from_http)?;
        let local_addr = serving.local_addr;
        if let Auth::Open = self.state.auth {
            log::warn!(
                "no API keys file: running OPEN as a development server; every request is accepted without authentication"
            );
        }
        log::info!(
            "listening on {scheme}://{local_addr} (storage {})",
            self.dir.display()
        );
        let improver = match self.improvement {
            Some((engine, every)) => Some(start_improver(engine, every, Arc::clone(&self.state))?),
            None => None,
        };
        Ok(ServerHandle {
            local_addr,
            shutdown_timeout: self.shutdown_timeout,
            running: Some(Running {
                state: Arc::clone(&self.state),
                serving,
                improver,
            }),
        })
    }

    /// Serves until SIGINT or SIGTERM (Ctrl-C on other platforms), then shuts down
    /// gracefully: no new connections, requests in flight get the builder's
    /// `shutdown_timeout` to finish.
    ///
    /// Must be called from a plain thread, not from async code.
    pub fn serve(self) -> Result<()> {
        let mut handle = self.spawn()?;
        handle.wait_for_signal()?;
        let timeout = handle.shutdown_timeout;
        handle.shutdown(timeout)
    }
}

struct Running {
    state: Arc<AppState>,
    /// The tokio runtime and the task serving the routes.
    serving: Serving,
    /// The improvement engine's thread: dropping the sender stops it.
    improver: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// Runs `engine` every `every` until the returned sender is dropped. Each pass publishes
/// through the publish service ([`publish::publish_program`]), like an upload.
fn start_improver(
    engine: ImprovementEngine,
    every: Duration,
    state: Arc<AppState>,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("loopai-improve".into())
        .spawn(move || loop {
            match rx.recv_timeout(every) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let publish = |task: &str, program: &[u8], meta: loopai_core::NewArtifact| {
                publish::publish_program(state.repository.as_ref(), &state.hub, task, program, meta)
            };
            match engine.run_pass(&publish) {
                Ok(None) => {
                    state.improvement.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(actions)) => {
                    state.improvement.passes.fetch_add(1, Ordering::Relaxed);
                    for action in actions {
                        log::info!(
                            "improvement: {}",
                            serde_json::to_string(&action).unwrap_or_default()
                        );
                    }
                }
                Err(e) => log::warn!("improvement pass failed: {e}"),
            }
        })
        .map_err(|e| Error::io("starting the improvement thread", e))?;
    log::info!(
        "improvement engine: a pass every {:.0} s",
        every.as_secs_f64()
    );
    Ok((tx, handle))
}

/// A running server. [`shutdown`](Self::shutdown) stops it; dropping the handle does the
/// same, waiting at most [`DROP_SHUTDOWN_TIMEOUT`].
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown_timeout: Duration,
    running: Option<Running>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl ServerHandle {
    /// The bound address (with the actual port when the builder's port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Blocks until SIGINT or SIGTERM arrives, or the server stops by itself (an error:
    /// the accept loop never ends on its own). Does not stop the server: call
    /// [`shutdown`](Self::shutdown) next.
    pub fn wait_for_signal(&mut self) -> Result<()> {
        refuse_inside_runtime("ServerHandle::wait_for_signal")?;
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        match running.serving.wait_for_signal() {
            Ok(name) => {
                log::info!("{name}: shutting down");
                Ok(())
            }
            Err(e) => {
                // The task is finished; nothing is left to wait for.
                if let Some(r) = self.running.take() {
                    r.serving.shutdown_background();
                }
                Err(Error::from_http(e))
            }
        }
    }

    /// Stops accepting connections and waits up to `timeout` for requests in flight to
    /// finish (every accepted batch is on disk when its response is sent). After the
    /// timeout the remaining connections are dropped and the error is
    /// [`ErrorKind::Timeout`]. Calling it again after a shutdown does nothing.
    ///
    /// Must be called from a plain thread, not from async code.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<()> {
        refuse_inside_runtime("ServerHandle::shutdown")?;
        let Some(mut running) = self.running.take() else {
            return Ok(());
        };
        let started = Instant::now();
        running.serving.stop();
        if let Some((stop, thread)) = running.improver.take() {
            drop(stop);
            // A pass may be learning a program: wait for it within the timeout, else let
            // it finish on its own (it only writes complete files).
            while !thread.is_finished() && started.elapsed() < timeout / 2 {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::warn!("the improvement pass in progress is left to finish on its own");
            }
        }
        // Notification streams never end on their own: end them.
        running.state.hub.stopping.send_replace(true);
        let result = running.serving.join(timeout).map_err(Error::from_http);
        // Blocking tasks (an fsync) finish on their own; nothing waits for them past here.
        running.serving.shutdown_background();
        log::info!("stopped after {:.3} s", started.elapsed().as_secs_f64());
        result
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.running.is_none() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            // Cannot block here: stop at once.
            if let Some(r) = self.running.take() {
                r.serving.shutdown_background();
            }
            return;
        }
        if let Err(e) = self.shutdown(DROP_SHUTDOWN_TIMEOUT) {
            log::warn!("shutting down on drop: {e}");
        }
    }
}
