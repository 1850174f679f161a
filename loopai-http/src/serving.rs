//! Binding, the server's tokio runtime, the serving task, signals and the graceful stop.
//! Connections themselves are served by `connections.rs`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};

use crate::connections::{fit_to_fd_limit, serve_until_stopped, ConnectionLimits, ConnectionStats};
use crate::tls::ServerTls;
use crate::{Error, ErrorKind, Result};

/// Where and how a server listens: its address and, for HTTPS, its [`ServerTls`].
/// A plain [`SocketAddr`] converts into a listener without TLS.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The address to bind.
    pub addr: SocketAddr,
    /// The certificate to serve HTTPS with; `None` serves plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
}

impl From<SocketAddr> for Listener {
    fn from(addr: SocketAddr) -> Listener {
        Listener { addr, tls: None }
    }
}

/// Fails with [`ErrorKind::Config`] when called from async code (inside a tokio runtime):
/// `what` (e.g. `"ServerHandle::shutdown"`) blocks and must be called from a plain thread.
pub fn refuse_inside_runtime(what: &str) -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{what} blocks: call it from a plain thread, not from async code"),
        ));
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM (Ctrl-C on other platforms) and returns its name:
/// `"SIGINT"`, `"SIGTERM"` or `"Ctrl-C"`. When SIGTERM cannot be listened for, logs a
/// warning and waits for SIGINT alone.
pub async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                log::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Binds `addr`, builds a multi-thread tokio runtime (`worker_threads` of them, default one
/// per CPU; threads named `thread_name`) and starts serving `app` on it until
/// [`Serving::stop`]. With `nodelay`, accepted connections get `TCP_NODELAY`.
///
/// Errors are [`ErrorKind::Io`]: binding (named by `addr`), starting the runtime (named by
/// `runtime_context`, e.g. `"starting the server runtime"`).
///
/// ```
/// use std::time::Duration;
///
/// let app = axum::Router::new();
/// let addr = "127.0.0.1:0".parse()?;
/// let mut serving = loopai_http::start(addr, Some(1), "example", "starting", app, false)?;
/// assert_ne!(serving.local_addr.port(), 0);
/// serving.stop();
/// serving.join(Duration::from_secs(5))?;
/// serving.shutdown_background();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn start(
    addr: SocketAddr,
    worker_threads: Option<usize>,
    thread_name: &str,
    runtime_context: &str,
    app: Router,
    nodelay: bool,
) -> Result<Serving> {
    let limits = ConnectionLimits {
        nodelay,
        ..ConnectionLimits::default()
    };
    start_with(
        addr,
        worker_threads,
        thread_name,
        runtime_context,
        app,
        limits,
        Arc::default(),
    )
}

/// [`start`] with explicit [`ConnectionLimits`] (header-read and idle timeouts, the cap on
/// open connections, `TCP_NODELAY`), counting into `stats` (for a server's `/metrics`).
/// The cap is lowered to fit under the process's file descriptor limit (logged).
///
/// With a [`Listener`] that has TLS, every connection is HTTPS (TLS 1.2 or 1.3, HTTP/1.1)
/// and, on Unix, SIGHUP reloads the certificate and key files ([`ServerTls::reload`]):
/// new handshakes get the new pair, established connections go on; a reload that fails is
/// logged and the previous pair stays. The SIGHUP handler is installed before this returns.
///
/// Errors are [`ErrorKind::Config`] for limits that fail [`ConnectionLimits::check`], else
/// as [`start`]'s.
pub fn start_with(
    listener: impl Into<Listener>,
    worker_threads: Option<usize>,
    thread_name: &str,
    runtime_context: &str,
    app: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
) -> Result<Serving> {
    let Listener { addr, tls } = listener.into();
    limits
        .check()
        .map_err(|message| Error::new(ErrorKind::Config, message))?;
    let listener = TcpListener::bind(addr).map_err(|e| Error::io(addr, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(addr, e))?;
    let local_addr = listener.local_addr().map_err(|e| Error::io(addr, e))?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name(thread_name);
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().map_err(|e| Error::io(runtime_context, e))?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|e| Error::io(local_addr, e))?
    };
    let limits = ConnectionLimits {
        max_connections: fit_to_fd_limit(limits.max_connections),
        ..limits
    };
    stats.max_connections.store(
        u64::try_from(limits.max_connections).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Some(tls) = &tls {
        reload_on_sighup(&runtime, Arc::clone(tls))?;
    }
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = runtime.spawn(serve_until_stopped(
        listener,
        tls.clone(),
        app,
        stop_rx,
        limits,
        Arc::clone(&stats),
    ));
    Ok(Serving {
        local_addr,
        runtime,
        task,
        connections: stats,
        tls,
        stop: Some(stop_tx),
    })
}

/// Installs the SIGHUP handler (now, so that a SIGHUP after [`start_with`] returns never
/// takes the default action, which ends the process) and the task that reloads `tls` on
/// each one.
#[cfg(unix)]
fn reload_on_sighup(runtime: &Runtime, tls: Arc<ServerTls>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = {
        let _guard = runtime.enter();
        signal(SignalKind::hangup()).map_err(|e| Error::io("listening for SIGHUP", e))?
    };
    runtime.spawn(async move {
        while hangups.recv().await.is_some() {
            let reloading = Arc::clone(&tls);
            match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(Ok(())) => log::info!(
                    "SIGHUP: TLS certificate reloaded from {} and {}",
                    tls.cert_path().display(),
                    tls.key_path().display()
                ),
                Ok(Err(e)) => {
                    log::error!("SIGHUP: TLS certificate not reloaded, the previous one stays: {e}")
                }
                Err(e) => log::error!("SIGHUP: the TLS reload failed: {e}"),
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_sighup(_runtime: &Runtime, _tls: Arc<ServerTls>) -> Result<()> {
    Ok(())
}

/// A started server: its tokio runtime and the task that accepts and serves connections.
///
/// Dropping it drops the runtime, which blocks until its tasks end: a server shuts it
/// down with [`shutdown_background`](Self::shutdown_background) instead.
#[derive(Debug)]
pub struct Serving {
    /// The bound address (with the actual port when the requested port was 0).
    pub local_addr: SocketAddr,
    /// The runtime the server runs on, for a server's own tasks and waits.
    pub runtime: Runtime,
    /// The serving task: it ends after [`stop`](Self::stop) once connections are closed,
    /// or by itself on an error.
    pub task: JoinHandle<std::io::Result<()>>,
    /// The counters of the server's connections (open, refused, timed out).
    pub connections: Arc<ConnectionStats>,
    /// The server's TLS when it serves HTTPS (to [`reload`](ServerTls::reload) it).
    pub tls: Option<Arc<ServerTls>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Serving {
    /// Blocks until SIGINT or SIGTERM arrives ([`termination_signal`]) and returns its name,
    /// or until the serving task ends by itself: then the error is [`exit_error`]'s.
    /// Must be called from a plain thread.
    ///
    /// [`exit_error`]: Self::exit_error
    pub fn wait_for_signal(&mut self) -> Result<&'static str> {
        let task = &mut self.task;
        let ended = self.runtime.block_on(async {
            tokio::select! {
                name = termination_signal() => Ok(name),
                result = task => Err(result),
            }
        });
        ended.map_err(|result| self.exit_error(result))
    }

    /// The error for a serving task that ended by itself with `result` (the accept loop
    /// never ends on its own): [`ErrorKind::Io`] for an I/O error, else
    /// [`ErrorKind::Internal`].
    pub fn exit_error(&self, result: std::result::Result<std::io::Result<()>, JoinError>) -> Error {
        match result {
            Ok(Ok(())) => Error::new(ErrorKind::Internal, "the server stopped unexpectedly"),
            Ok(Err(e)) => Error::io(self.local_addr, e),
            Err(e) => Error::new(ErrorKind::Internal, format!("the server task failed: {e}")),
        }
    }

    /// Stops accepting connections; connections already accepted are served to the end.
    /// Calling it again does nothing.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits up to `timeout` for the serving task to end (after [`stop`](Self::stop)).
    /// After the timeout the remaining connections are dropped and the error is
    /// [`ErrorKind::Timeout`]. Call it once, from a plain thread.
    pub fn join(&mut self, timeout: Duration) -> Result<()> {
        let task = &mut self.task;
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, task).await });
        match outcome {
            Err(_) => {
                self.task.abort();
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "requests still in flight after {:.1} s; their connections were dropped",
                        timeout.as_secs_f64()
                    ),
                ))
            }
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::io(self.local_addr, e)),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Internal,
                format!("the server task failed: {e}"),
            )),
        }
    }

    /// Shuts the runtime down without waiting for its tasks (blocking ones finish on
    /// their own).
    pub fn shutdown_background(self) {
        self.runtime.shutdown_background();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpStream};

    use axum::routing::get;

    use super::*;

    fn app() -> Router {
        Router::new().route("/", get(|| async { "hello" }))
    }

    #[test]
    fn serves_until_stopped_then_joins() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut serving = start(addr, Some(1), "test-http", "starting", app(), true).unwrap();
        assert_ne!(serving.local_addr.port(), 0);
        let mut stream = TcpStream::connect(serving.local_addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.ends_with("hello"), "{response}");
        serving.stop();
        serving.stop();
        serving.join(Duration::from_secs(5)).unwrap();
        serving.shutdown_background();
    }

    #[test]
    fn a_taken_port_is_an_io_error_naming_the_address() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = start(addr, None, "test-http", "starting", app(), false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.message().starts_with(&addr.to_string()), "{err}");
    }

    #[test]
    fn blocking_calls_are_refused_inside_a_runtime() {
        assert!(refuse_inside_runtime("f").is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = runtime.block_on(async { refuse_inside_runtime("f").unwrap_err() });
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.message(),
            "f blocks: call it from a plain thread, not from async code"
        );
    }
}
