//! # Loopai HTTP runtime
//!
//! The server behind `loopai serve`: the embeddable [`loopai_core::Runtime`] behind an HTTP
//! API, for teams that prefer a local service (the edge runtime container) and for central
//! execution of several tasks. The protocol is documented in `docs/serve.md`.
//!
//! ## Overview
//!
//! * [`Server`] / [`ServerBuilder`] — what to serve (one task, a list, every task with an
//!   active artifact, or runtimes built by the caller), where, with which limits and keys;
//!   then [`Server::serve`] (block until SIGINT/SIGTERM) or [`Server::spawn`].
//! * [`ServerHandle`] — the bound address (port 0 works), [`ServerHandle::wait_ready`],
//!   a bounded graceful [`ServerHandle::shutdown`] that flushes the execution logs.
//! * [`ApiKeys`], [`Principal`] — the bearer keys file and which tasks a key may execute.
//!
//! | endpoint | |
//! |---|---|
//! | `POST /execute` | `{"input": {...}}` → `{"output", "confidence", "version", "execution_id", "latency_ms", "status", "sampled"}` ([`Mode::Single`]) |
//! | `POST /execute/batch` | `{"inputs": [...]}` → `{"results": [result or {"error": ...}, ...]}` ([`Mode::Single`]) |
//! | `POST /v1/execute/{task}`, `.../batch` | the same for one of the served tasks |
//! | `GET /health` | liveness: status, version, task(s), active version, log and telemetry counters |
//! | `GET /ready` | readiness: 200 once the tasks are loaded, 503 before, during shutdown and while an execution log cannot be written ([`ServerBuilder::ready_requires_log`]) |
//! | `GET /metrics` | Prometheus text format |
//!
//! Connections are bounded (loopai-http): a request's headers must arrive within
//! [`ServerBuilder::header_read_timeout`], an idle keep-alive connection is closed after
//! [`ServerBuilder::idle_timeout`], and past [`ServerBuilder::max_connections`] a new
//! connection is answered 503 and closed at once; `/metrics` counts all three.
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use loopai_core::{ArtifactStore, NewArtifact};
//! use loopai_serve::Server;
//!
//! let dir = tempfile::tempdir()?;
//! let program = br#"{"format": "loopai.program/1", "task": "spam",
//!   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
//!   "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"], "case_insensitive": true}],
//!   "decide": {"op": "rules", "rules": [
//!     {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
//!     {"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
//!   "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;
//! ArtifactStore::open(dir.path(), "spam")?.install(program, NewArtifact::default(), true)?;
//!
//! let mut server = Server::builder().data_dir(dir.path()).task("spam").port(0).build()?.spawn()?;
//! server.wait_ready(Duration::from_secs(10))?;
//! println!("POST {}/execute", server.url());
//! server.shutdown(Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Threading & shutdown
//!
//! The server runs on a tokio runtime of its own (one async worker per CPU by default), so
//! callers need no async code. `Runtime::execute` takes microseconds and does no I/O with
//! the default buffered execution log, so it runs directly on the async worker that read
//! the request: no thread hop per request. With `storage.durability: durable` it waits
//! for fsync and runs on tokio's blocking pool instead, as do batches of more than 16
//! inputs. The server's metric counters are atomics: recording them takes no lock.
//!
//! [`ServerHandle::shutdown`] (and [`Server::serve`] at SIGINT/SIGTERM) marks the server
//! not ready, stops accepting connections, lets requests in flight finish (half the
//! timeout at most), then shuts down every task runtime — flushing and syncing its
//! execution log — within the rest. Dropping a handle does the same within
//! [`DROP_SHUTDOWN_TIMEOUT`]. `spawn`, `serve`, `wait_ready` and `shutdown` block, and
//! refuse (with an error, not a panic) to be called from async code.
//!
//! ## Source layout
//!
//! Dependencies run one way: `state.rs` (mode, phase, loaded tasks, keys, limits, metrics)
//! sits below the handlers (`api.rs`) and the server (`server.rs`: builder, loading,
//! lifecycle), so neither imports the other's internals. The body reader, the JSON error
//! type and the keys-file parser are loopai-http's, shared with the reference cloud.
//!
//! ## Errors
//!
//! Functions return [`loopai_core::Error`]; messages name the option or file at fault
//! (`keys.jsonl:3: key: must be 16 to 256 bytes, got 5`). Refused requests get a 4xx or 5xx
//! status and `{"error": {"kind": "...", "message": "..."}}`; runtime errors keep their
//! [`ErrorKind`](loopai_core::ErrorKind) name as `kind` (`invalid_input` is 422, `closed`
//! 503, `timeout` 504, `oracle` 502, the others 500) and HTTP-level refusals have their
//! own (`invalid_request` 400, `unauthorized` 401, `forbidden` 403, `not_found` 404,
//! `method_not_allowed` 405, `request_timeout` 408, `payload_too_large` 413,
//! `unsupported_media_type` 415, `not_ready` 503).

mod api;
mod auth;
mod gateway;
mod gateway_state;
mod http;
mod metrics;
mod server;
mod state;
mod tasks;

pub use auth::{ApiKeys, Principal, MAX_KEY_BYTES, MIN_KEY_BYTES};
pub use server::{
    ServeEvent, Server, ServerBuilder, ServerHandle, DEFAULT_BODY_TIMEOUT, DEFAULT_FOLLOW_INTERVAL,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BATCH_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_PORT, DEFAULT_SHUTDOWN_TIMEOUT,
    DROP_SHUTDOWN_TIMEOUT,
};
pub use state::Mode;
pub use tasks::{active_tasks, default_body_limit, BODY_ENVELOPE_BYTES};

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<crate::Server>();
        assert_send_sync::<crate::ServerHandle>();
        assert_send_sync::<crate::ApiKeys>();
        assert_send_sync::<crate::Principal>();
    }
}
