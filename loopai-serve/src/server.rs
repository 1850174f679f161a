//! The server: builder, the tokio runtime that runs it, loading, and shutdown.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopai_core::{Error, ErrorKind, Result, Runtime, MAX_INPUT_DOCUMENT_BYTES};
use loopai_http::{ConnectionLimits, Listener, ServerTls, Serving};
pub use loopai_http::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS};

use crate::auth::ApiKeys;
use crate::state::{AppState, Mode, Phase};
use crate::tasks::{self, Source, TaskSet};

/// The default port.
pub const DEFAULT_PORT: u16 = 8080;
/// The default time given to requests in flight, then to flushing the execution logs, when
/// the server stops.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often each task follows the artifact cache's `active` pointer and rollout state by
/// default (see [`ServerBuilder::follow_interval`]).
pub const DEFAULT_FOLLOW_INTERVAL: Duration = Duration::from_secs(2);
/// How long dropping a [`ServerHandle`] that was not shut down waits.
pub const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The default largest number of inputs of one batch request.
pub const DEFAULT_MAX_BATCH: usize = 1000;
/// The default body limit of batch requests: the runtime's [`MAX_INPUT_DOCUMENT_BYTES`].
pub const DEFAULT_MAX_BATCH_BODY_BYTES: usize = MAX_INPUT_DOCUMENT_BYTES;
/// The default time allowed to receive a request body; slower ones get 408.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Tasks {
    Task(String),
    List(Vec<String>),
    AllActive,
    Runtime(Runtime),
    Runtimes(Vec<Runtime>),
    /// No execute task: only the gateway.
    GatewayOnly,
}

/// Builds a [`Server`]; every option is checked by [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct ServerBuilder {
    data_dir: Option<PathBuf>,
    config_file: Option<PathBuf>,
    tasks: Option<Tasks>,
    conflicting_tasks: bool,
    bind: IpAddr,
    port: u16,
    api_keys: Option<ApiKeys>,
    api_keys_file: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_batch: usize,
    max_batch_body_bytes: usize,
    body_timeout: Duration,
    connections: ConnectionLimits,
    shutdown_timeout: Duration,
    worker_threads: Option<usize>,
    ready_requires_log: bool,
    follow_interval: Duration,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            data_dir: None,
            config_file: None,
            tasks: None,
            conflicting_tasks: false,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            api_keys: None,
            api_keys_file: None,
            max_body_bytes: None,
            max_batch: DEFAULT_MAX_BATCH,
            max_batch_body_bytes: DEFAULT_MAX_BATCH_BODY_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            connections: ConnectionLimits {
                nodelay: true,
                ..ConnectionLimits::default()
            },
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            worker_threads: None,
            ready_requires_log: true,
            follow_interval: DEFAULT_FOLLOW_INTERVAL,
            tls: None,
        }
    }
}

impl ServerBuilder {
    fn set_tasks(mut self, tasks: Tasks) -> Self {
        if self.tasks.is_some() {
            self.conflicting_tasks = true;
        }
        self.tasks = Some(tasks);
        self
    }

    /// The data directory the tasks are loaded from (required with [`task`](Self::task),
    /// [`tasks`](Self::tasks) and [`all_tasks`](Self::all_tasks)).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Reads the deployment configuration from this file instead of
    /// `<data_dir>/config/deployment.yaml`, for every task.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Serve one task, in [`Mode::Single`].
    pub fn task(self, task: impl Into<String>) -> Self {
        self.set_tasks(Tasks::Task(task.into()))
    }

    /// Serve these tasks, in [`Mode::Central`].
    pub fn tasks<I, S>(self, tasks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set_tasks(Tasks::List(tasks.into_iter().map(Into::into).collect()))
    }

    /// Serve every task of the data directory that has an active artifact, in
    /// [`Mode::Central`] (the list is taken by [`build`](Self::build)).
    pub fn all_tasks(self) -> Self {
        self.set_tasks(Tasks::AllActive)
    }

    /// Serve a runtime built by the caller, in [`Mode::Single`]. The server shuts it down
    /// when it stops.
    pub fn runtime(self, runtime: Runtime) -> Self {
        self.set_tasks(Tasks::Runtime(runtime))
    }

    /// Serve runtimes built by the caller (one per task), in [`Mode::Central`].
    pub fn runtimes(self, runtimes: impl IntoIterator<Item = Runtime>) -> Self {
        self.set_tasks(Tasks::Runtimes(runtimes.into_iter().collect()))
    }

    /// The address to listen on (default `127.0.0.1`; `0.0.0.0` for every interface, as
    /// in a container).
    pub fn bind(mut self, addr: IpAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The port (default [`DEFAULT_PORT`]); `0` picks a free one, see
    /// [`ServerHandle::local_addr`].
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Require `Authorization: Bearer <key>` on the execute routes (required in
    /// [`Mode::Central`]).
    pub fn api_keys(mut self, keys: ApiKeys) -> Self {
        self.api_keys = Some(keys);
        self
    }

    /// Like [`api_keys`](Self::api_keys), from a keys file (see [`ApiKeys`]).
    pub fn api_keys_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.api_keys_file = Some(path.into());
        self
    }

    /// The body limit of single executions, in bytes, for every task (default per task:
    /// [`default_body_limit`](crate::default_body_limit) of its
    /// `execution.max_input_bytes`). Larger bodies get 413.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// The largest number of inputs of one batch (default [`DEFAULT_MAX_BATCH`]).
    pub fn max_batch(mut self, inputs: usize) -> Self {
        self.max_batch = inputs;
        self
    }

    /// The body limit of batch requests (default [`DEFAULT_MAX_BATCH_BODY_BYTES`]).
    pub fn max_batch_body_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_body_bytes = bytes;
        self
    }

    /// How long receiving a request body may take (default [`DEFAULT_BODY_TIMEOUT`]).
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
    /// answered 503 and closed at once; the open ones keep being served.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.connections.max_connections = max;
        self
    }

    /// The time [`Server::serve`] gives, at SIGINT/SIGTERM, to requests in flight and then
    /// to flushing the execution logs (default [`DEFAULT_SHUTDOWN_TIMEOUT`]).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether `GET /ready` is 503 while a task's execution log cannot be written (a full
    /// or read-only data directory), so that a load balancer stops sending traffic to a
    /// replica that is losing records (default `true`). `GET /health` says why either way.
    pub fn ready_requires_log(mut self, on: bool) -> Self {
        self.ready_requires_log = on;
        self
    }

    /// How often every task loaded by the server re-reads the artifact cache's `active`
    /// pointer and rollout state, so that `loopai artifacts activate|rollback|promote` and
    /// `loopai rollout start|promote|abort` run in another process take effect without a
    /// restart (default [`DEFAULT_FOLLOW_INTERVAL`]; zero: never). It is the runtimes' own
    /// [`RuntimeBuilder::follow_interval`](loopai_core::RuntimeBuilder::follow_interval):
    /// their rollout thread follows, swapping versions atomically (no request fails), and
    /// takes over a rollout started elsewhere that nobody drives (docs/rollout.md).
    /// Runtimes given with `runtime`/`runtimes` keep the setting they were built with.
    pub fn follow_interval(mut self, interval: Duration) -> Self {
        self.follow_interval = interval;
        self
    }

    /// Async worker threads (default: one per CPU). Executions run on them directly;
    /// with `storage.durability: durable` they run on tokio's blocking pool.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads);
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

    /// Checks every option, reads the API keys, and resolves the task list. Runtimes are
    /// built after the server starts listening (see [`Server::spawn`]), except those given
    /// with [`runtime`](Self::runtime) / [`runtimes`](Self::runtimes).
    ///
    /// Errors ([`ErrorKind::Config`]) name the option: no task given or two ways of giving
    /// them, a task id that is invalid or listed twice, central mode without API keys,
    /// zero limits, a TLS certificate or key file that is unreadable, malformed or
    /// mismatched; [`ErrorKind::Io`] for an unreadable data or keys file.
    pub fn build(self) -> Result<Server> {
        let config = |msg: &str| Error::new(ErrorKind::Config, msg.to_string());
        if self.conflicting_tasks {
            return Err(config(
                "tasks: give only one of task, tasks, all_tasks, runtime, runtimes",
            ));
        }
        if self.max_body_bytes == Some(0) {
            return Err(config("max_body_bytes: must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(config("max_batch: must be at least 1"));
        }
        if self.max_batch_body_bytes == 0 {
            return Err(config("max_batch_body_bytes: must be at least 1"));
        }
        if self.body_timeout.is_zero() {
            return Err(config("body_timeout: must not be zero"));
        }
        if self.worker_threads == Some(0) {
            return Err(config("worker_threads: must be at least 1"));
        }
        self.connections.check().map_err(|m| config(&m))?;
        let tls = match &self.tls {
            Some((cert, key)) => Some(ServerTls::load(cert, key).map_err(http_error)?),
            None => None,
        };
        let auth = match (self.api_keys, &self.api_keys_file) {
            (Some(_), Some(_)) => {
                return Err(config(
                    "api_keys: give either keys or a keys file, not both",
                ))
            }
            (Some(keys), None) => Some(keys),
            (None, Some(path)) => Some(ApiKeys::from_file(path)?),
            (None, None) => None,
        };
        let gateway = match &self.data_dir {
            Some(dir) => crate::gateway::configured(dir, self.config_file.as_deref())?,
            None => None,
        };
        let gateway = gateway.zip(self.data_dir.clone());
        let tasks = match (self.tasks, &gateway) {
            (Some(tasks), _) => tasks,
            (None, Some(_)) => Tasks::GatewayOnly,
            (None, None) => {
                return Err(config(
                    "tasks: give a task, a task list, all_tasks, or runtimes to serve (or a gateway: section in the configuration)",
                ))
            }
        };
        let needs_dir = |data_dir: Option<PathBuf>| {
            data_dir.ok_or_else(|| config("data_dir: required to load tasks"))
        };
        let load = |data_dir: PathBuf, tasks: Vec<String>| -> Result<Source> {
            tasks::check_task_list(&tasks)?;
            if !data_dir.is_dir() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("data_dir: {} is not a directory", data_dir.display()),
                ));
            }
            Ok(Source::Load {
                data_dir,
                tasks,
                config_file: self.config_file.clone(),
                follow_interval: self.follow_interval,
            })
        };
        let (mode, source) = match tasks {
            Tasks::Task(task) => (Mode::Single, load(needs_dir(self.data_dir)?, vec![task])?),
            Tasks::List(list) => (Mode::Central, load(needs_dir(self.data_dir)?, list)?),
            Tasks::AllActive => {
                let dir = needs_dir(self.data_dir)?;
                let list = tasks::active_tasks(&dir)?;
                if list.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "all_tasks: no task in {} has an active artifact",
                            dir.join("artifacts").display()
                        ),
                    ));
                }
                (Mode::Central, load(dir, list)?)
            }
            Tasks::Runtime(rt) => (Mode::Single, Source::Built(vec![rt])),
            Tasks::Runtimes(list) => {
                let names: Vec<String> = list.iter().map(|r| r.task().to_string()).collect();
                tasks::check_task_list(&names)?;
                (Mode::Central, Source::Built(list))
            }
            Tasks::GatewayOnly => (Mode::Central, Source::Built(Vec::new())),
        };
        if let Some((_, dir)) = &gateway {
            crate::gateway::check_no_overlap(dir, &source.task_names())?;
        }
        if mode == Mode::Central && auth.is_none() && !source.task_names().is_empty() {
            return Err(config(
                "api_keys: central mode (several tasks) requires API keys (a keys file)",
            ));
        }
        let mut state = AppState::new(
            mode,
            source.task_names(),
            auth,
            self.max_batch,
            self.max_batch_body_bytes,
            self.max_body_bytes,
            self.body_timeout,
        )
        .with_gateway(gateway.is_some());
        state.ready_requires_log = self.ready_requires_log;
        Ok(Server {
            connections: self.connections,
            addr: SocketAddr::new(self.bind, self.port),
            tls,
            shutdown_timeout: self.shutdown_timeout,
            worker_threads: self.worker_threads,
            source,
            gateway,
            state: Arc::new(state),
        })
    }
}

/// The Loopai HTTP runtime: one task (edge) or several (central) behind an HTTP API.
///
/// Build one with [`Server::builder`], then [`serve`](Self::serve) (block until
/// SIGINT/SIGTERM) or [`spawn`](Self::spawn) (run in the background).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    connections: ConnectionLimits,
    shutdown_timeout: Duration,
    worker_threads: Option<usize>,
    source: Source,
    /// The configuration with a `gateway:` section, and the data directory.
    gateway: Option<(loopai_core::DeploymentConfig, PathBuf)>,
    state: Arc<AppState>,
}

fn refuse_inside_runtime(what: &str) -> Result<()> {
    loopai_http::refuse_inside_runtime(what).map_err(http_error)
}

/// The same error from the server lifecycle shared with loopai-cloud.
fn http_error(err: loopai_http::Error) -> Error {
    let (kind, message, source) = err.into_parts();
    let kind = match kind {
        loopai_http::ErrorKind::Config => ErrorKind::Config,
        loopai_http::ErrorKind::Io => ErrorKind::Io,
        loopai_http::ErrorKind::Timeout => ErrorKind::Timeout,
        _ => ErrorKind::Internal,
    };
    let err = Error::new(kind, message);
    match source {
        Some(source) => err.with_source(source),
        None => err,
    }
}

impl Server {
    /// A builder with the defaults: `127.0.0.1:8080`, no API keys, limits from each
    /// task's configuration.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// [`Mode::Single`] or [`Mode::Central`].
    pub fn mode(&self) -> Mode {
        self.state.mode
    }

    /// The tasks served, in order.
    pub fn tasks(&self) -> &[String] {
        &self.state.task_names
    }

    /// Binds the socket, starts serving on a tokio runtime of its own, and builds the
    /// task runtimes in the background (`GET /ready` answers 503 until they are built);
    /// returns at once. Must be called from a plain thread, not from async code.
    pub fn spawn(self) -> Result<ServerHandle> {
        refuse_inside_runtime("Server::spawn")?;
        let state = self.state;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let listener = Listener {
            addr: self.addr,
            tls: self.tls,
        };
        let serving = loopai_http::start_with(
            listener,
            self.worker_threads,
            "loopai-serve",
            "starting the server's async runtime",
            crate::api::router(Arc::clone(&state)),
            self.connections,
            Arc::clone(&state.connections),
        )
        .map_err(http_error)?;
        let local_addr = serving.local_addr;

        let source = self.source;
        let gateway = self.gateway;
        let body_limit = state.body_limit;
        let loading = Arc::clone(&state);
        let loader = serving.runtime.spawn_blocking(move || {
            let started = Instant::now();
            let loaded = source.load().and_then(|runtimes| {
                if let Some((config, dir)) = &gateway {
                    let gw = crate::gateway_state::GatewayState::open(dir, config)
                        .map_err(|e| e.context("gateway"))?;
                    let _ = loading.gateway.set(gw);
                }
                Ok(runtimes)
            });
            match loaded {
                Ok(runtimes) => {
                    let set = TaskSet::new(runtimes, body_limit);
                    if loading.tasks.set(set).is_ok() {
                        loading.advance(Phase::Starting, Phase::Ready);
                    }
                    log::info!("tasks loaded in {:.3} s", started.elapsed().as_secs_f64());
                }
                Err(err) => {
                    log::error!("loading the tasks failed: {err}");
                    *loading.load_error.lock() = Some((err.kind(), err.to_string()));
                    loading.set_phase(Phase::Failed);
                }
            }
        });
        log::debug!("listening on {scheme}://{local_addr}");
        Ok(ServerHandle {
            local_addr,
            scheme,
            shutdown_timeout: self.shutdown_timeout,
            state,
            running: Some(Running { serving, loader }),
        })
    }

    /// [`spawn`](Self::spawn), then [`ServerHandle::run_until_signal`]: serves until
    /// SIGINT or SIGTERM and shuts down gracefully. Returns the error if the tasks could
    /// not be loaded.
    pub fn serve(self) -> Result<()> {
        self.spawn()?.run_until_signal(|_| {})
    }
}

struct Running {
    /// The tokio runtime and the task serving the routes.
    serving: Serving,
    loader: tokio::task::JoinHandle<()>,
}

/// Something [`ServerHandle::run_until_signal`] reports as it happens.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeEvent<'a> {
    /// Every task is loaded: `(task, active version)` pairs.
    Ready(&'a [(String, u32)]),
    /// A termination signal arrived (`"SIGTERM"`, `"SIGINT"`): shutting down.
    Stopping(&'static str),
}

/// A running server. [`shutdown`](Self::shutdown) stops it; dropping the handle does the
/// same within [`DROP_SHUTDOWN_TIMEOUT`].
pub struct ServerHandle {
    local_addr: SocketAddr,
    scheme: &'static str,
    shutdown_timeout: Duration,
    state: Arc<AppState>,
    running: Option<Running>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("phase", &self.state.phase())
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on (the real port when built with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`, or `https://<local_addr>` when serving TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }

    /// Whether every task is loaded and the server is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.state.phase() == Phase::Ready
    }

    /// The runtime of a served task, once loaded.
    pub fn runtime(&self, task: &str) -> Option<Runtime> {
        self.state.tasks.get()?.get(task).map(|e| e.runtime.clone())
    }

    /// Waits until the tasks are loaded. Errors: the loading error (for example
    /// [`ErrorKind::Artifact`] for a task without an active program),
    /// [`ErrorKind::Timeout`] when `timeout` passes first, [`ErrorKind::Closed`] once
    /// shutdown began. Must be called from a plain thread.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        refuse_inside_runtime("ServerHandle::wait_ready")?;
        let Some(running) = &self.running else {
            return Err(Error::new(ErrorKind::Closed, "the server was shut down"));
        };
        let mut rx = self.state.phase_tx.subscribe();
        let outcome = running.serving.runtime.block_on(async {
            tokio::time::timeout(timeout, async {
                rx.wait_for(|p| *p != Phase::Starting)
                    .await
                    .map(|p| *p)
                    .unwrap_or(Phase::Draining)
            })
            .await
        });
        match outcome {
            Ok(Phase::Ready) => Ok(()),
            Ok(Phase::Failed) => Err(self.load_failure()),
            Ok(_) => Err(Error::new(ErrorKind::Closed, "the server is shutting down")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("tasks not loaded within {:.1} s", timeout.as_secs_f64()),
            )),
        }
    }

    fn load_failure(&self) -> Error {
        match self.state.load_error.lock().as_ref() {
            Some((kind, message)) => Error::new(*kind, message.clone()),
            None => Error::new(ErrorKind::Internal, "loading the tasks failed"),
        }
    }

    /// Serves until SIGINT or SIGTERM, reporting [`ServeEvent`]s to `on_event`, then
    /// shuts down within the builder's `shutdown_timeout` (see [`shutdown`](Self::shutdown)).
    /// Returns early with the error if the tasks cannot be loaded, or if the server
    /// stops by itself. Must be called from a plain thread.
    pub fn run_until_signal(mut self, mut on_event: impl FnMut(ServeEvent<'_>)) -> Result<()> {
        refuse_inside_runtime("ServerHandle::run_until_signal")?;
        enum Ended {
            Signal(&'static str),
            LoadFailed,
            ServerExited(std::result::Result<std::io::Result<()>, tokio::task::JoinError>),
        }
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        let state = Arc::clone(&self.state);
        // Subscribed before the first look at the phase: no change is missed.
        let mut rx = state.phase_tx.subscribe();
        // Created once: a signal between two waits is not lost.
        let mut signal = Box::pin(loopai_http::termination_signal());
        let mut ready_reported = false;
        let ended = loop {
            match state.phase() {
                Phase::Ready if !ready_reported => {
                    ready_reported = true;
                    let versions: Vec<(String, u32)> = state
                        .tasks
                        .get()
                        .map(|set| {
                            set.entries
                                .iter()
                                .map(|e| (e.name().to_string(), e.runtime.active_version()))
                                .collect()
                        })
                        .unwrap_or_default();
                    on_event(ServeEvent::Ready(&versions));
                }
                Phase::Failed => break Ended::LoadFailed,
                _ => {}
            }
            let server = &mut running.serving.task;
            let signal = &mut signal;
            // The sender lives in `state`, held here: `changed` cannot fail.
            let step = running.serving.runtime.block_on(async {
                tokio::select! {
                    name = signal => Some(Ended::Signal(name)),
                    result = server => Some(Ended::ServerExited(result)),
                    _ = rx.changed() => None,
                }
            });
            if let Some(ended) = step {
                break ended;
            }
        };
        let timeout = self.shutdown_timeout;
        match ended {
            Ended::Signal(name) => {
                on_event(ServeEvent::Stopping(name));
                self.shutdown(timeout)
            }
            Ended::LoadFailed => {
                let err = self.load_failure();
                let _ = self.shutdown(timeout);
                Err(err)
            }
            Ended::ServerExited(result) => {
                let err = http_error(running.serving.exit_error(result));
                let _ = self.shutdown(timeout);
                Err(err)
            }
        }
    }

    /// Shuts down gracefully within `timeout`: `GET /ready` turns 503, the listener
    /// closes, requests in flight finish (connections still busy when half the timeout
    /// has passed are dropped), then every task runtime flushes its execution log and
    /// stops its threads within what is left. Errors: [`ErrorKind::Timeout`] when
    /// requests or the flush did not finish in time (the first error is returned; every
    /// runtime is still shut down). Calling it again does nothing. Must be called from a
    /// plain thread, not from async code.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<()> {
        refuse_inside_runtime("ServerHandle::shutdown")?;
        let Some(mut running) = self.running.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        if !self.state.advance(Phase::Ready, Phase::Draining) {
            self.state.advance(Phase::Starting, Phase::Draining);
        }
        running.serving.stop();
        let mut first_error = running.serving.join(timeout / 2).err().map(http_error);
        // A load still running finishes first, so that its runtimes are shut down too.
        let loader = &mut running.loader;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let _ = running
            .serving
            .runtime
            .block_on(async { tokio::time::timeout(remaining, loader).await });
        if let Some(set) = self.state.tasks.get() {
            for entry in &set.entries {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = entry.runtime.shutdown(remaining) {
                    let e = e.context(format!(
                        "task {:?}: flushing the execution log",
                        entry.name()
                    ));
                    log::error!("{e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(gw) = self.state.gateway.get() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = gw.gateway.shutdown(remaining) {
                let e = e.context("gateway: writing the call log");
                log::error!("{e}");
                first_error.get_or_insert(e);
            }
        }
        running.serving.shutdown_background();
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.running.is_none() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking is not allowed here: stop the server's runtime without waiting;
            // the task runtimes shut themselves down (bounded) when the state is dropped.
            if let Some(running) = self.running.take() {
                running.serving.shutdown_background();
            }
        } else if let Err(e) = self.shutdown(DROP_SHUTDOWN_TIMEOUT) {
            log::error!("loopai-serve: dropped server: {e}");
        }
    }
}
