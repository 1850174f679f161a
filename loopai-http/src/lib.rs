//! The lifecycle shared by Loopai's HTTP servers, `loopai-cloud` (the reference cloud) and
//! `loopai-serve` (the HTTP runtime behind `loopai serve`).
//!
//! # Overview
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

mod error;
mod serving;

pub use error::{Error, ErrorKind, Result};
pub use serving::{refuse_inside_runtime, start, termination_signal, Serving};
