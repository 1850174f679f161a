//! What Loopai's HTTP servers share: `loopai-cloud` (the reference cloud) and
//! `loopai-serve` (the HTTP runtime behind `loopai serve`).
//!
//! # Overview
//!
//! * The serving lifecycle: [`start`] / [`start_with`], [`Serving`], [`termination_signal`].
//! * HTTPS: a [`Listener`] with a [`ServerTls`] (certificate and key PEM files; TLS 1.2
//!   and 1.3 only, HTTP/1.1, rustls with the `ring` provider), reloaded on SIGHUP.
//! * Connections: [`ConnectionLimits`] (header-read timeout, idle keep-alive timeout, a
//!   cap on open connections, past which a connection is answered 503 and closed at once)
//!   and their counters, [`ConnectionStats`], for a server's `/metrics`.
//! * Request bodies: [`read_body`] within [`BodyLimits`] (size and time).
//! * The JSON API error: [`ApiError`], written in each server's documented style
//!   ([`KindAndMessage`] for `loopai serve`, [`MessageOnly`] for the cloud), and
//!   [`json_response`].
//! * API-key files: [`KeyFile`] (JSON lines, keys kept as SHA-256 digests), [`check_key`].
//!
//! A server [`start`]s: it binds its listening socket, builds a multi-thread tokio runtime
//! of its own and serves an axum [`Router`](axum::Router) on it. The returned [`Serving`]
//! owns that runtime and the serving task: [`Serving::wait_for_signal`] blocks until
//! SIGINT/SIGTERM ([`termination_signal`]), [`Serving::stop`] ends accepting connections and
//! [`Serving::join`] waits, bounded, for requests in flight. What else a server does when it
//! stops (its own threads, logs to flush) stays in that server.
//!
//! # Threading & shutdown
//!
//! Every blocking function must be called from a plain thread, never from async code;
//! [`refuse_inside_runtime`] is the check. Nothing here waits without a timeout except
//! [`Serving::wait_for_signal`], which waits for a signal by design.
//!
//! # Errors
//!
//! Functions return [`Error`], whose [`ErrorKind`] each server maps to its own error type;
//! the message is final and names what is wrong (an address, the blocking call).

mod api_error;
mod body;
mod connections;
mod error;
mod keys;
mod serving;
mod tls;

pub use api_error::{
    bytes_response, json_response, ApiError, ErrorFields, ErrorStyle, KindAndMessage, MessageOnly,
};
pub use body::{read_body, BodyLimits};
pub use connections::{
    ConnectionLimits, ConnectionStats, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
};
pub use error::{Error, ErrorKind, Result};
pub use keys::{
    check_key, key_digest, parse_key_digest, KeyDigest, KeyFile, KeyProblem, LineErrors,
    MAX_KEY_BYTES, MIN_KEY_BYTES,
};
pub use serving::{
    refuse_inside_runtime, start, start_with, termination_signal, Listener, Serving,
};
pub use tls::ServerTls;
