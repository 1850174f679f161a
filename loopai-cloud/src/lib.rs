//! # Loopai reference cloud
//!
//! The server behind `loopai cloud serve`: the **telemetry collector** (deployments upload
//! telemetry batches, stored once, durably, as one JSON line per batch), the **artifact
//! repository** (publishers upload program versions, validated by compiling them; versions
//! are immutable and optionally ed25519-signed; deployments list and download them) and the
//! **notification hub** (server-sent events on publication). The improvement engine will be
//! added to the same server. The protocol is documented in `docs/cloud.md` and
//! `docs/repository.md`.
//!
//! ## Overview
//!
//! * [`CloudServer`] / [`CloudServerBuilder`] — options (storage directory, address, API
//!   keys, signing key, limits), then [`CloudServer::serve`] (block until SIGINT/SIGTERM) or
//!   [`CloudServer::spawn`] (run in the background).
//! * [`ServerHandle`] — the bound address ([`ServerHandle::local_addr`], so port 0 works)
//!   and a bounded, graceful [`ServerHandle::shutdown`].
//! * [`ApiKeys`], [`Principal`], [`Role`] — the keys file and who a key belongs to.
//!
//! Endpoints:
//!
//! | endpoint | |
//! |---|---|
//! | `POST /api/v1/telemetry` | a telemetry batch (JSON, optionally `Content-Encoding: gzip`); needs a `deployment` key |
//! | `GET /api/v1/artifacts/{task}/versions` | the versions list, `ETag` / `If-None-Match` → 304; a `deployment` or `publisher` key |
//! | `GET /api/v1/artifacts/{task}/v{N}/download` | the tar.gz archive of a version; a `deployment` or `publisher` key |
//! | `POST /api/v1/artifacts/{task}/upload[?version=N]` | publish a version (archive or program.json); needs a `publisher` key |
//! | `GET /api/v1/notifications/{task}` | server-sent events `artifact` and `heartbeat`; a `deployment` or `publisher` key |
//! | `POST /api/v1/heartbeats` | a deployment's state (`loopai_core::Heartbeat`); needs the `deployment` key of that deployment |
//! | `GET /api/v1/query/...` | the query API (JSON, paginated): tasks, per-day figures per version, rollouts, improvement attempts, escalations, deployments; a `viewer` or `publisher` key |
//! | `GET /`, `GET /tasks/{task}` | the monitoring dashboard (HTML, inline SVG charts); `/login` sets a cookie holding a `viewer` or `publisher` key |
//! | `GET /health` | `{"status": "ok", "auth": "open" \| "api_keys", "telemetry_batches": N, "artifact_tasks": T, "signing_key": ...}` |
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use loopai_cloud::CloudServer;
//!
//! let dir = tempfile::tempdir()?;
//! let mut handle = CloudServer::builder().dir(dir.path()).port(0).build()?.spawn()?;
//! println!("collector at {}/api/v1/telemetry", handle.url());
//! // ... deployments upload with cloud.api_url = handle.url() ...
//! handle.shutdown(Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Storage
//!
//! Each accepted batch is re-serialized as one JSON line (its fields, known or not, kept)
//! and appended to `<dir>/telemetry/<task_id>/YYYY-MM-DD.jsonl`, the UTC day of receipt.
//! The line is fsynced before the server answers, files only ever hold whole lines, and a
//! torn last line left by a crash is cut off when the server starts.
//!
//! Batches are de-duplicated by `batch_id` across all tasks and deployments: a batch
//! whose `batch_id` is already stored is answered `200 {"status": "duplicate"}` and not
//! written again, also after a restart (the index is rebuilt from the files at startup)
//! and when copies arrive concurrently. Uploads are therefore idempotent, and a client
//! may retry any failed upload.
//!
//! Published artifacts go to `<dir>/artifacts/<task>/` (`versions`, `v<N>/download`,
//! `v<N>/program.json`, `v<N>/metadata.json`), a layout any static HTTP server can serve
//! to runtimes as it is.
//!
//! With [`CloudServerBuilder::database`] (`loopai cloud serve --database postgres://...`)
//! everything goes to PostgreSQL instead — batches (with their execution summaries and
//! validations as rows), artifact versions with their bodies, the improvement engine's
//! state and escalations, deployments — and several instances may share the database
//! behind a load balancer: de-duplication is the batches' primary key, publications are
//! numbered under a per-task advisory lock and announced to every instance with
//! `LISTEN`/`NOTIFY`, and one improvement pass runs at a time (a session advisory lock).
//! Start-up reads no batch. See `docs/cloud.md`.
//!
//! ## API keys
//!
//! Without a keys file the server runs **open** (a development server) and logs a
//! warning saying so. With one, every request needs `Authorization: Bearer <key>`: 401 when
//! the header is missing or the key unknown, 403 when the key's role does not fit the
//! endpoint or a `deployment` key uploads a batch of another `deployment_id`. The file is
//! JSON lines (`#` comments and blank lines allowed):
//!
//! ```text
//! {"key": "dk_7f3a9c0e1b2d4f6a8c", "role": "deployment", "deployment_id": "edge-eu-1"}
//! {"key": "pk_0b1c2d3e4f5a6b7c8d", "role": "publisher", "name": "ci"}
//! ```
//!
//! Keys are 16-256 printable ASCII bytes; `deployment_id` is required for, and only
//! allowed with, role `deployment`.
//!
//! ## Connections
//!
//! A request's headers must arrive within [`CloudServerBuilder::header_read_timeout`], an
//! idle keep-alive connection is closed after [`CloudServerBuilder::idle_timeout`], and
//! past [`CloudServerBuilder::max_connections`] a new connection is answered 503 and closed
//! at once; `GET /metrics` counts all three.
//!
//! ## Threading & shutdown
//!
//! The server runs on a tokio runtime of its own (so callers need no async code); blocking
//! work — gzip decompression, parsing, append and fsync — runs on tokio's blocking pool.
//! Appends are serialized by one lock, so throughput is bounded by the disk's fsync rate.
//! [`ServerHandle::shutdown`] stops accepting, waits up to its timeout for requests in
//! flight, then drops what is left; dropping the handle does the same within
//! [`DROP_SHUTDOWN_TIMEOUT`]. `spawn`, `serve` and `shutdown` block, and refuse (with an
//! error, not a panic) to be called from async code.
//!
//! ## Source layout
//!
//! Dependencies run one way: `storage/` (the backends' interfaces and records, and the
//! improvement engine's file storage) sits below the file implementations
//! (`telemetry_store.rs`, `repository.rs`) and the PostgreSQL one (`postgres/`);
//! `state.rs` (what every handler shares) sits below the
//! handlers (`telemetry.rs`, `artifacts.rs`) and `server.rs` (builder, lifecycle, the
//! improvement thread); the publish service (`publish.rs`: repository + notification hub)
//! sits below both the upload handler and the improvement engine, so every new version
//! takes the same path. The fleet's read side, `query/` (the query interface both
//! storage backends answer, and the in-memory index fed at ingest), sits below the state;
//! its handlers (`query_api.rs`, `heartbeat.rs`, `dashboard/`) above it. The body reader,
//! the JSON error type and the keys-file parser are loopai-http's, shared with `loopai
//! serve`.
//!
//! ## Fleet
//!
//! Deployments report heartbeats (and their batches carry the latest one); the server keeps
//! each deployment's last state and last-seen time, and marks it `silent` after
//! [`CloudServerBuilder::silent_after_intervals`] missed intervals. Per task, UTC day and
//! version, the batches' metrics are summed in memory as they are accepted (rebuilt from
//! the stored batches at start), so the query API and the dashboard never re-read batches.
//! See `docs/cloud.md`.
//!
//! ## Errors
//!
//! Functions return [`Error`], whose [`ErrorKind`] classifies it; messages name the thing
//! at fault (``keys.jsonl:3: role: unknown variant `admin` ...``, `127.0.0.1:8080: Address
//! already in use`). Refused HTTP requests get a 4xx status and `{"error": "<message>"}`
//! naming the field (`task_id: task id "../x": may only contain ...`).

mod artifacts;
mod auth;
mod dashboard;
mod error;
mod heartbeat;
mod http;
mod improvement;
mod postgres;
mod publish;
mod query;
mod query_api;
mod repository;
mod server;
mod state;
mod storage;
mod telemetry;
mod telemetry_store;

pub use auth::{ApiKeys, Principal, Role, MAX_KEY_BYTES, MIN_KEY_BYTES};
pub use error::{Error, ErrorKind, Result};
pub use improvement::{ImprovementAction, ImprovementConfig, ImprovementEngine, PublishFn};
pub use query::index::DEFAULT_SILENT_AFTER_INTERVALS;
pub use server::{
    CloudServer, CloudServerBuilder, ServerHandle, DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_PORT, DEFAULT_SHUTDOWN_TIMEOUT, DROP_SHUTDOWN_TIMEOUT,
};
pub use telemetry::MAX_BATCH_ID_BYTES;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<crate::CloudServer>();
        assert_send_sync::<crate::ServerHandle>();
        assert_send_sync::<crate::ApiKeys>();
        assert_send_sync::<crate::Error>();
    }
}
