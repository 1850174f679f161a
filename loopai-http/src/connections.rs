//! Serving connections: the accept loop, the cap on open connections, the header-read and
//! idle keep-alive timeouts, the graceful stop, and the counters of all three.
//!
//! axum's `serve` reads headers and keeps idle connections without a time limit and
//! accepts without a cap, so slow or idle clients can hold every file descriptor of the
//! process. Here each connection is served with hyper directly and watched: a request's
//! headers must arrive within `header_read_timeout`, a keep-alive connection may sit idle
//! for `idle_timeout`, and a connection over `max_connections` is answered 503 and closed
//! at once instead of waiting.
//!
//! With TLS ([`ServerTls`]) the handshake happens in the connection's task, after its place
//! under the cap is taken (TLS connections count like any other) and within the first
//! request's header-read time; a connection over the cap is closed without an answer (a
//! plain-text 503 would mean nothing to a TLS client).

use std::fmt::Write as _;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::tls::ServerTls;

/// The default time allowed for a request's headers: from the connection's accept for
/// its first request, from the first byte for a later one.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a keep-alive connection may wait for its next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default largest number of open connections. It is lowered at start to leave 64
/// file descriptors free under the process's limit (`ulimit -n`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// File descriptors kept free under `RLIMIT_NOFILE` for everything but connections (the
/// listener, logs, data files, the runtime's own).
const RESERVED_FDS: u64 = 64;

/// What a connection over the cap receives before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 82\r\n\r\n{\"error\":{\"kind\":\"overloaded\",\"message\":\"too many open connections; retry later\"}}";

/// Limits on the connections of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a request's headers may take to arrive: counted from the accept for a
    /// connection's first request, from its first byte for a later one. Then the
    /// connection is closed (a slowloris client).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait, after a response, for its next request.
    pub idle_timeout: Duration,
    /// The largest number of open connections; a connection past it is answered 503 and
    /// closed at once. Lowered at start to fit under the process's file descriptor limit.
    pub max_connections: usize,
    /// Set `TCP_NODELAY` on accepted connections.
    pub nodelay: bool,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            nodelay: false,
        }
    }
}

impl ConnectionLimits {
    /// Checks the limits: timeouts and the cap must not be zero. The message names the
    /// option (`header_read_timeout: must not be zero`).
    pub fn check(&self) -> Result<(), String> {
        if self.header_read_timeout.is_zero() {
            return Err("header_read_timeout: must not be zero".to_owned());
        }
        if self.idle_timeout.is_zero() {
            return Err("idle_timeout: must not be zero".to_owned());
        }
        if self.max_connections == 0 {
            return Err("max_connections: must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Counters of a server's connections, shared with whoever renders its metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    tls_handshake_errors: AtomicU64,
    tls_handshake_timeouts: AtomicU64,
    pub(crate) max_connections: AtomicU64,
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted and served since the start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused (503, closed) because `max_connections` were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed because a request's headers did not arrive in time.
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }

    /// Keep-alive connections closed because they stayed idle too long.
    pub fn idle_timeouts(&self) -> u64 {
        self.idle_timeouts.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed (the client refused the certificate, spoke plain HTTP,
    /// offered no common protocol version or cipher suite, or hung up).
    pub fn tls_handshake_errors(&self) -> u64 {
        self.tls_handshake_errors.load(Ordering::Relaxed)
    }

    /// TLS handshakes not finished within the header-read timeout.
    pub fn tls_handshake_timeouts(&self) -> u64 {
        self.tls_handshake_timeouts.load(Ordering::Relaxed)
    }

    /// The cap in force (after fitting it under the file descriptor limit); 0 before the
    /// server starts.
    pub fn max_connections(&self) -> u64 {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Appends the connection families in Prometheus text format:
    /// `loopai_http_connections_open`, `loopai_http_connections_max`,
    /// `loopai_http_connections_accepted_total`, `loopai_http_connections_refused_total`
    /// `loopai_http_connections_timed_out_total{reason="header"|"idle"}` and
    /// `loopai_http_tls_handshakes_failed_total{reason="error"|"timeout"}`.
    pub fn render_prometheus(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "loopai_http_connections_open",
            "gauge",
            "Connections open now.",
            &[("", self.open())],
        );
        family(
            "loopai_http_connections_max",
            "gauge",
            "The cap on open connections.",
            &[("", self.max_connections())],
        );
        family(
            "loopai_http_connections_accepted_total",
            "counter",
            "Connections accepted and served.",
            &[("", self.accepted())],
        );
        family(
            "loopai_http_connections_refused_total",
            "counter",
            "Connections refused with 503 because the cap was reached.",
            &[("", self.refused())],
        );
        family(
            "loopai_http_connections_timed_out_total",
            "counter",
            "Connections closed by a timeout: a request's headers too slow, or idle too long.",
            &[
                ("{reason=\"header\"}", self.header_timeouts()),
                ("{reason=\"idle\"}", self.idle_timeouts()),
            ],
        );
        family(
            "loopai_http_tls_handshakes_failed_total",
            "counter",
            "TLS handshakes that failed or did not finish within the header-read timeout.",
            &[
                ("{reason=\"error\"}", self.tls_handshake_errors()),
                ("{reason=\"timeout\"}", self.tls_handshake_timeouts()),
            ],
        );
    }
}

/// The cap actually used: `wanted`, lowered to leave [`RESERVED_FDS`] descriptors free
/// under the soft `RLIMIT_NOFILE`.
pub(crate) fn fit_to_fd_limit(wanted: usize) -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass; nothing else is touched.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        if ok && limit.rlim_cur != libc::RLIM_INFINITY {
            // rlim_t is u64 on Linux, not on every Unix.
            #[allow(clippy::unnecessary_cast)]
            let soft = limit.rlim_cur as u64;
            let room = soft.saturating_sub(RESERVED_FDS).max(1);
            if (wanted as u64) > room {
                log::warn!(
                    "max_connections {wanted} lowered to {room}: the process may open {soft} files (ulimit -n); raise it to allow more"
                );
                return usize::try_from(room).unwrap_or(wanted);
            }
        }
    }
    wanted
}

// Where a connection is in its life, for its watchdog.
const FRESH: u8 = 0; // accepted, no byte of its first request yet
const HEAD: u8 = 1; // a request's headers are arriving
const BUSY: u8 = 2; // a request is being served (body timeouts are the handlers')
const IDLE: u8 = 3; // keep-alive, waiting for the next request

/// The state a connection's watchdog reads: updated by the socket wrapper (bytes in), the
/// service (request started) and the response body (request done).
struct Activity {
    phase: AtomicU8,
    /// When the phase last changed, in ms since `epoch`.
    since_ms: AtomicU64,
    in_flight: AtomicUsize,
    epoch: Instant,
    /// Woken when the connection goes idle (the watchdog then arms the idle deadline).
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: AtomicU8::new(FRESH),
            since_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn bytes_in(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE
            && self
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
        }
        // FRESH becomes HEAD without resetting the clock: the first request's headers
        // are timed from the accept.
        let _ = self
            .phase
            .compare_exchange(FRESH, HEAD, Ordering::AcqRel, Ordering::Acquire);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.phase.store(BUSY, Ordering::Release);
    }

    fn request_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.phase.store(IDLE, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// When the current phase times out, and as what; `None` while a request is served.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Timeout)> {
        let since = self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        match self.phase.load(Ordering::Acquire) {
            FRESH | HEAD => Some((since + limits.header_read_timeout, Timeout::Header)),
            IDLE => Some((since + limits.idle_timeout, Timeout::Idle)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    Header,
    Idle,
}

/// Ends the request in `Activity` when dropped: with the response body, once it is sent
/// (or the connection is gone).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// The connection (TCP, or TLS over TCP), noting each read that brings bytes.
struct WatchedIo<S> {
    tcp: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_in();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Counts an open connection until dropped.
struct OpenGuard(Arc<ConnectionStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept errors that concern one connection only (the loop goes on at once).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Accepts and serves connections until `stop` fires (or its sender is dropped), then
/// stops accepting, lets each connection finish the request it is serving (idle ones are
/// closed) and returns once every connection is closed.
pub(crate) async fn serve_until_stopped(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    app: Router,
    stop: oneshot::Receiver<()>,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
) -> std::io::Result<()> {
    let acceptor = tls.map(|tls| TlsAcceptor::from(tls.config()));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (draining_tx, draining_rx) = watch::channel(false);
    // Every connection task holds a receiver; `closed()` resolves when the last is gone.
    let (closed_tx, closed_rx) = watch::channel(());
    let mut stop = pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or similar: wait, as hyper's examples do,
                    // instead of spinning.
                    log::warn!("accepting a connection failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = &mut stop => break,
                    }
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if acceptor.is_none() {
                // Best effort: a fresh socket's send buffer takes this at once; never wait.
                let _ = tcp.try_write(REFUSAL);
            }
            continue;
        };
        if limits.nodelay {
            if let Err(e) = tcp.set_nodelay(true) {
                log::debug!("TCP_NODELAY: {e}");
            }
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard(Arc::clone(&stats));
        tokio::spawn(serve_connection(
            tcp,
            acceptor.clone(),
            app.clone(),
            limits,
            Arc::clone(&stats),
            draining_rx.clone(),
            (permit, open, closed_rx.clone()),
        ));
    }
    drop(listener);
    draining_tx.send_replace(true);
    drop(closed_rx);
    closed_tx.closed().await;
    Ok(())
}

/// Serves one connection (after its TLS handshake, with TLS) until it ends, times out, or
/// (draining) finishes its request.
async fn serve_connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    draining: watch::Receiver<bool>,
    // Released when the connection ends: its place under the cap, its count, and its
    // hold on the server's graceful stop.
    _held: (OwnedSemaphorePermit, OpenGuard, watch::Receiver<()>),
) {
    // Created at the accept: the first request's header-read time includes the handshake.
    let activity = Arc::new(Activity::new());
    let Some(acceptor) = tls else {
        return serve_http(tcp, activity, app, limits, stats, draining).await;
    };
    let deadline = activity.epoch + limits.header_read_timeout;
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => serve_http(stream, activity, app, limits, stats, draining).await,
        Ok(Err(e)) => {
            stats.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
            log::debug!("TLS handshake failed: {e}");
        }
        Err(_) => {
            stats.tls_handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            log::debug!("TLS handshake not finished within the header-read timeout");
        }
    }
}

/// Serves HTTP/1.1 on an accepted (and, with TLS, handshaken) connection.
async fn serve_http<S>(
    stream: S,
    activity: Arc<Activity>,
    app: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    mut draining: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(WatchedIo {
        tcp: stream,
        activity: Arc::clone(&activity),
    });
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        service_activity.request_started();
        let guard = RequestGuard(Arc::clone(&service_activity));
        let mut router = app.clone();
        async move {
            let response = router.call(request.map(Body::new)).await?;
            // The request ends when its body has been sent (or dropped).
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &guard;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut draining_seen = *draining.borrow();
    if draining_seen {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = activity.deadline(&limits);
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    log::debug!("connection ended: {e}");
                }
                return;
            }
            changed = draining.changed(), if !draining_seen => {
                draining_seen = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = activity.changed.notified() => {}
            () = sleep => {
                // Still the same phase and past its deadline? Then close.
                if let Some((at, which)) = activity.deadline(&limits) {
                    if Instant::now() >= at {
                        match which {
                            Timeout::Header => stats.header_timeouts.fetch_add(1, Ordering::Relaxed),
                            Timeout::Idle => stats.idle_timeouts.fetch_add(1, Ordering::Relaxed),
                        };
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{ErrorKind as IoErrorKind, Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};

    use axum::routing::get;

    use super::*;
    use crate::{start_with, Serving};

    /// Not a timed assertion: how long a client waits before declaring the server never
    /// closed the connection.
    const GUARD: Duration = Duration::from_secs(30);

    /// Polls `done` until it holds; panics if it still does not after `GUARD`.
    pub(crate) fn wait_for(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + GUARD;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "condition not met within {GUARD:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn serve(limits: ConnectionLimits) -> (Serving, Arc<ConnectionStats>) {
        let app = Router::new().route("/", get(|| async { "hello" }));
        let stats = Arc::new(ConnectionStats::default());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let serving = start_with(
            addr,
            Some(1),
            "test-conn",
            "starting",
            app,
            limits,
            Arc::clone(&stats),
        )
        .unwrap();
        (serving, stats)
    }

    fn connect(serving: &Serving) -> TcpStream {
        let stream = TcpStream::connect(serving.local_addr).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        stream
    }

    /// Sends one keep-alive request and reads its response (the body is "hello").
    fn request(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"hello") {
            let n = stream.read(&mut buf).expect("a response");
            assert!(n > 0, "closed before the response");
            response.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(response).unwrap()
    }

    /// Reads until the server closes the connection; panics if it is still open after
    /// `GUARD`. Returns what was read.
    fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == IoErrorKind::ConnectionReset => return all,
                Err(e) => panic!("connection still open after {GUARD:?} ({e})"),
            }
        }
    }

    fn stop(mut serving: Serving) {
        serving.stop();
        serving.join(Duration::from_secs(10)).unwrap();
        serving.shutdown_background();
    }

    #[test]
    fn a_slowloris_client_is_disconnected_after_the_header_timeout() {
        let (serving, stats) = serve(ConnectionLimits {
            header_read_timeout: Duration::from_millis(500),
            ..ConnectionLimits::default()
        });
        let mut stream = connect(&serving);
        stream.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        // One header line at a time, each well within any per-read timeout, never the
        // blank line that ends the headers: the connection must be closed anyway.
        let mut closed = false;
        for i in 0..200 {
            std::thread::sleep(Duration::from_millis(150));
            if stream
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                closed = true;
                break;
            }
            stream.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            let peek = stream.read(&mut buf);
            stream.set_nonblocking(false).unwrap();
            if matches!(peek, Ok(0))
                || matches!(&peek, Err(e) if e.kind() != IoErrorKind::WouldBlock)
            {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "a slow header was still being accepted after 200 lines"
        );
        assert_eq!(stats.header_timeouts(), 1);
        assert_eq!(stats.open(), 0);
        stop(serving);
    }

    #[test]
    fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
        let (serving, stats) = serve(ConnectionLimits {
            idle_timeout: Duration::from_millis(300),
            ..ConnectionLimits::default()
        });
        let mut stream = connect(&serving);
        assert!(request(&mut stream).starts_with("HTTP/1.1 200"));
        assert!(read_until_closed(&mut stream).is_empty());
        assert_eq!((stats.idle_timeouts(), stats.header_timeouts()), (1, 0));
        stop(serving);
    }

    #[test]
    fn over_the_cap_a_connection_is_refused_while_others_are_served() {
        let (serving, stats) = serve(ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        });
        let mut first = connect(&serving);
        let mut second = connect(&serving);
        request(&mut first);
        request(&mut second);
        assert_eq!(stats.open(), 2);
        let mut third = connect(&serving);
        let refused = String::from_utf8(read_until_closed(&mut third)).unwrap();
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("too many open connections"), "{refused}");
        assert_eq!(stats.refused(), 1);
        // The connections under the cap keep being served.
        assert!(request(&mut first).starts_with("HTTP/1.1 200"));
        drop(second);
        // Its place is freed once the server sees it closed.
        let mut fourth = loop {
            let mut c = connect(&serving);
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut head = [0u8; 12];
            if c.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200" {
                break c;
            }
            assert!(
                stats.refused() < 1000,
                "the closed connection's place never came back"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(fourth.write_all(b""));
        stop(serving);
    }

    #[test]
    fn the_graceful_stop_closes_idle_connections_and_ends() {
        let (serving, stats) = serve(ConnectionLimits::default());
        let mut stream = connect(&serving);
        request(&mut stream);
        stop(serving);
        assert!(read_until_closed(&mut stream).is_empty());
        assert_eq!(stats.open(), 0);
    }

    #[test]
    fn zero_limits_are_refused_naming_the_option() {
        for (limits, want) in [
            (
                ConnectionLimits {
                    header_read_timeout: Duration::ZERO,
                    ..ConnectionLimits::default()
                },
                "header_read_timeout: must not be zero",
            ),
            (
                ConnectionLimits {
                    idle_timeout: Duration::ZERO,
                    ..ConnectionLimits::default()
                },
                "idle_timeout: must not be zero",
            ),
            (
                ConnectionLimits {
                    max_connections: 0,
                    ..ConnectionLimits::default()
                },
                "max_connections: must be at least 1",
            ),
        ] {
            assert_eq!(limits.check().unwrap_err(), want);
        }
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.ends_with(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["kind"], "overloaded");
    }

    #[test]
    fn stats_render_as_prometheus_families() {
        let stats = ConnectionStats::default();
        stats.refused.fetch_add(3, Ordering::Relaxed);
        let mut out = String::new();
        stats.render_prometheus(&mut out);
        assert!(out.contains(
            "# TYPE loopai_http_connections_open gauge\nloopai_http_connections_open 0\n"
        ));
        assert!(out.contains("loopai_http_connections_refused_total 3\n"));
        assert!(out.contains("loopai_http_connections_timed_out_total{reason=\"idle\"} 0\n"));
    }
}
