//! The storage backends' interfaces, below everything that stores or reads: the telemetry
//! collector, the artifact repository, the improvement engine's inputs and state, and the
//! deployments seen. Two implementations:
//!
//! * **files** (the default): `telemetry_store.rs` (`<dir>/telemetry/`), `repository.rs`
//!   (`<dir>/artifacts/`), [`file::FileImprovement`] (`<dir>/improvement/`,
//!   `<dir>/escalations.jsonl`, reading the telemetry files) — one process per directory;
//! * **PostgreSQL** (`postgres/`): every table in one database shared by several instances.
//!
//! Every method blocks (file I/O, fsync, or a database round trip): the server calls them on
//! tokio's blocking pool, the improvement engine on its own thread. None may be called from
//! async code.
//!
//! The records the backends exchange sit here too ([`NewBatch`], [`Appended`],
//! [`Published`], the improvement engine's [`TaskState`] and [`VersionStats`]).

pub(crate) mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use loopai_core::VersionInfo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::http::ApiError;

/// A validated telemetry batch to store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewBatch<'a> {
    pub(crate) batch_id: &'a str,
    /// Passed `loopai_core::validate_task_id` (the file backend makes it a directory name).
    pub(crate) task_id: &'a str,
    pub(crate) deployment_id: Option<&'a str>,
    /// The whole batch as received (unknown fields kept).
    pub(crate) value: &'a Value,
    /// `value` serialized as one line, without a newline.
    pub(crate) line: &'a [u8],
}

/// The outcome of [`TelemetryBackend::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Appended {
    /// The batch was stored durably; where (a file, a table), for the log.
    Accepted(String),
    /// A batch with this `batch_id` is already stored; nothing was written.
    Duplicate,
}

/// The telemetry collector's storage: batches de-duplicated by `batch_id`.
pub(crate) trait TelemetryBackend: Send + Sync + fmt::Debug {
    /// Stores `batch` unless its `batch_id` is already stored (by any instance sharing the
    /// storage); returns once it is durable.
    fn append(&self, batch: &NewBatch<'_>) -> Result<Appended>;

    /// The number of distinct batches stored.
    fn batches(&self) -> Result<u64>;
}

/// A published version, broadcast to the notification streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) task: String,
    pub(crate) version: u32,
}

/// The artifact repository's storage: immutable, numbered versions per task.
pub(crate) trait ArtifactBackend: Send + Sync + fmt::Debug {
    /// Validates and publishes an upload: `body` is a tar.gz archive (program.json and an
    /// optional metadata.json) or a bare program.json. `requested` asks for a version
    /// number (409 if it exists); otherwise the next one is taken. Two publications never
    /// get the same number, whichever instance they reach.
    fn publish(
        &self,
        task: &str,
        body: &[u8],
        requested: Option<u32>,
    ) -> std::result::Result<VersionInfo, ApiError>;

    /// The versions list of `task` (`loopai.versions/1` JSON), `None` when nothing is
    /// published.
    fn versions_list(&self, task: &str) -> Result<Option<Vec<u8>>>;

    /// The archive of `task` `version`, `None` when there is no such version.
    fn download(&self, task: &str, version: u32) -> Result<Option<Vec<u8>>>;

    /// The highest published version of `task`.
    fn latest(&self, task: &str) -> Result<Option<u32>>;

    /// The number of tasks with at least one version.
    fn task_count(&self) -> Result<usize>;

    /// The public key versions are signed with, if any.
    fn public_key(&self) -> Option<String>;

    /// Whether the backend itself delivers every publication to the notification hub of
    /// every instance, this one included (PostgreSQL `LISTEN`/`NOTIFY`); when `false` the
    /// publish service notifies this instance's hub directly.
    fn delivers_notifications(&self) -> bool;
}

/// One improvement attempt, as kept by [`ImprovementBackend::write_state`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Attempt {
    pub(crate) at: String,
    pub(crate) from_version: u32,
    pub(crate) failure_rate: f64,
    pub(crate) samples: u64,
    /// The published version, if any.
    pub(crate) version: Option<u32>,
    /// `pending` (published, waiting for its validations), `successful`, `unsuccessful`.
    pub(crate) outcome: String,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// The improvement engine's state of one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskState {
    pub(crate) attempts: Vec<Attempt>,
    /// The spec sha256 escalated; regeneration resumes when the spec changes.
    #[serde(default)]
    pub(crate) escalated_spec_sha256: Option<String>,
}

impl TaskState {
    pub(crate) fn consecutive_unsuccessful(&self) -> u32 {
        self.attempts
            .iter()
            .rev()
            .take_while(|a| a.outcome == "unsuccessful")
            .count() as u32
    }
}

/// Per-version validation totals of a task, with its oracle-labelled cases.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct VersionStats {
    pub(crate) validations: u64,
    pub(crate) mismatches: u64,
    /// Failing cases whose input and oracle answer are known, by execution id.
    pub(crate) failing: Vec<(uuid::Uuid, Value)>,
    /// Every validated case (matched or not) whose input and oracle answer are known.
    pub(crate) labelled: Vec<Value>,
}

/// Held while an improvement pass runs; dropping it lets the next pass (on any instance)
/// start.
pub(crate) struct PassLock(#[allow(dead_code)] Option<Box<dyn Send>>);

impl PassLock {
    /// A lock that holds nothing (one process owns the storage).
    pub(crate) fn local() -> PassLock {
        PassLock(None)
    }

    /// A lock released when `guard` is dropped.
    pub(crate) fn holding(guard: Box<dyn Send>) -> PassLock {
        PassLock(Some(guard))
    }
}

/// A task's specification as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSpec {
    /// The specification file's bytes (a `TaskSpecification` as JSON).
    pub(crate) body: Vec<u8>,
    /// Where it is, for messages (a file, a table row).
    pub(crate) place: String,
}

/// The lowercase hex sha256 of `bytes` (what escalations record of a specification).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The improvement engine's inputs (the stored validations and the task specifications)
/// and state (attempts, escalations).
pub(crate) trait ImprovementBackend: Send + Sync + fmt::Debug {
    /// Takes the pass lock: `None` when a pass runs elsewhere (another instance).
    fn lock_pass(&self) -> Result<Option<PassLock>>;

    /// The tasks with stored telemetry, sorted.
    fn tasks(&self) -> Result<Vec<String>>;

    /// Validation totals per program version of `task`, with the validated cases whose
    /// input is known and whose oracle answer is in `allowed` (any answer when `None`).
    fn version_stats(
        &self,
        task: &str,
        allowed: Option<&[Value]>,
    ) -> Result<BTreeMap<u32, VersionStats>>;

    /// The state of `task` (empty when none is stored).
    fn read_state(&self, task: &str) -> Result<TaskState>;

    /// Replaces the state of `task`, durably.
    fn write_state(&self, task: &str, state: &TaskState) -> Result<()>;

    /// Records an escalation (a JSON object with `task_id`); returns where, for the log.
    fn escalate(&self, task: &str, record: &Value) -> Result<String>;

    /// Brings the specifications an operator placed in `<dir>/specs/<task>.json` into the
    /// storage, so that every instance sharing it reads them; returns how many were new or
    /// changed. The file backend reads them in place (nothing to do); the database imports
    /// each file that changed since this instance last imported it. A file that cannot be
    /// read or is not a JSON object is logged, naming it, and skipped.
    fn import_specs(&self, dir: &Path) -> Result<usize>;

    /// The specification of `task`, `None` when it has none.
    fn spec(&self, task: &str) -> Result<Option<StoredSpec>>;
}
