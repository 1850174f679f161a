//! # Loopai runtime core
//!
//! Loopai replaces narrow, repetitive LLM calls with **synthesized programs** that run
//! in-process in microseconds. This crate is the runtime: it loads `loopai.program/1`
//! programs from a local artifact cache, compiles them once, and executes them from any
//! number of threads.
//!
//! ## Overview
//!
//! * [`Program`] — the program language: parsing with JSON-path errors, validation against
//!   [`ProgramLimits`], compilation into an execution plan, deterministic evaluation into an
//!   [`Outcome`]. The format is documented in `docs/program-format.md`.
//! * [`Executor`] — runs the active program, validates inputs and outputs against the task's
//!   schemas ([`JsonSchema`]), swaps programs atomically with no lock on the hot path.
//! * [`ArtifactStore`] — the on-disk cache `<data_dir>/artifacts/<task>/v<N>/` with an
//!   `active -> vN` pointer: atomic installs, sha256 verification, activation, rollback, pruning.
//! * [`DeploymentConfig`] — `<data_dir>/config/deployment.yaml`, with `${ENV}` substitution
//!   and errors that name the key path.
//! * [`DatasetReader`], [`DailyAggregate`], [`apply_retention`] — the dataset under
//!   `<data_dir>/datasets/<task>/`: executions and validations as JSONL (gzip-compressed
//!   when old), daily statistics ([`DailyStats`]), retention ([`RetentionPolicy`]). The
//!   layout and rules are documented in `docs/datasets.md`.
//! * [`KeyRing`], [`LogSealer`], [`open_log_or_plain`], [`open_document_or_plain`] —
//!   encryption at rest (`storage.encryption`, AES-256-GCM): the runtime encrypts its own
//!   files; these let other crates (the gateway's call log and learning state) write and
//!   read files in the same format. Documented in `docs/datasets.md`.
//! * [`PiiFilter`], [`KeyedHasher`], [`PrivacyPolicy`] — privacy: PII detection and
//!   redaction (`[EMAIL]`, `[PHONE]`, `[SSN]`, `[CREDIT_CARD]`, `[IBAN]`, `[IP]`), HMAC-SHA256
//!   with the deployment secret in `<data_dir>/config/hmac.key`, and what each privacy mode
//!   lets leave the process. Documented in `docs/privacy.md`.
//! * [`TelemetryBatch`], [`TelemetryMetrics`] — telemetry: when `cloud.api_url` is set, the
//!   runtime cuts batches of aggregates and of what `telemetry.privacy_mode` allows
//!   (`strict`: keyed hashes only; `balanced`: sampled records with PII redacted;
//!   `permissive`: everything), spools them under `<data_dir>/telemetry/spool/<task>/` and
//!   uploads them gzip-compressed to `{cloud.api_url}/api/v1/telemetry` with retries,
//!   backoff and `Retry-After`. Documented in `docs/telemetry.md`.
//! * [`Sampler`] — which executions are checked against the oracle (`random`,
//!   `uncertainty`, `stratified`, `temporal`; a few nanoseconds per decision).
//! * [`Oracle`], [`FnOracle`], [`HttpOracle`] — the reference model: an in-process callback
//!   or an LLM behind the chat-completions API, with strict checking of its answers
//!   ([`OracleRequest::check_output`]). Sampled executions are validated against it on
//!   background workers ([`compare_outputs`]: `exact`, `normalized`, `fuzzy`,
//!   `structured`), and with `execution.fallback: oracle` it answers when the program
//!   abstains ([`ExecutionSource::Oracle`]). Match rates per version:
//!   [`Runtime::validation_metrics`]. Documented in `docs/oracle.md`.
//! * [`VersionList`], [`ArtifactArchive`], [`ArtifactSigner`], [`RefreshMetrics`] — the
//!   artifact repository protocol (`{api_url}/api/v1/artifacts/{task}/versions`,
//!   `.../v{N}/download`, servable as static files) and the background refresh: with
//!   `cloud.api_url` set, the runtime polls the versions list (`If-None-Match`), listens to
//!   the notification stream, downloads new versions, checks their SHA-256 and — with
//!   `cloud.trusted_keys` — their ed25519 signature, imports them
//!   ([`ArtifactStore::import`]) and swaps them in. Documented in `docs/repository.md`.
//! * [`Runtime::begin_rollout`], [`RolloutStatus`] — canary rollout: a new version serves
//!   a growing share of executions (10% → 50% → 100% by default, sticky per key), per-arm
//!   statistics feed an anytime-valid sequential test that promotes it or rolls it back;
//!   the state survives restarts in `artifacts/<task>/rollout.json`. Documented in
//!   `docs/rollout.md`.
//! * [`Runtime`] — the facade that ties them together for one task.
//!
//! ## Layout
//!
//! Modules depend on each other one way (checked by `scripts/check_layers.py`), and
//! import each other by path (`use crate::dataset::…`); the re-exports below are for
//! users. At the bottom, importing nothing above: `clock` ([`Clock`], [`Timestamp`]),
//! `net` (the `ureq` agent, the retryable-status rule, `Retry-After`, backoff with
//! jitter: used by the oracle, telemetry and refresh), `fnv` (the one FNV-1a of n-gram
//! buckets, routing and sampling), `digest` (SHA-256 hex). Then the program language,
//! schemas, the repository protocol (archives, signatures), the artifact cache,
//! configuration, privacy, sampler and oracle; the dataset
//! (records with [`ExecutionStatus`] and [`ExecutionSource`], writer, reader, analytics);
//! the validator; the executor, which owns what `execute` touches during a rollout
//! (`executor/canary.rs`: routing, the canary slot, per-arm counters); `rollout/`
//! (controller, statistics, `rollout.json`, the checker thread), which drives the
//! executor; telemetry; refresh, which reaches the runtime only through a small trait it
//! defines; and at the top `runtime/` (the facade and its builder).
//!
//! ## Quick start
//!
//! ```
//! use loopai_core::{ArtifactStore, NewArtifact, Runtime};
//! use serde_json::json;
//!
//! let data_dir = tempfile::tempdir()?;
//! let program = br#"{"format": "loopai.program/1", "task": "spam",
//!   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
//!   "preprocess": [{"name": "clean", "from": "text", "steps": [{"op": "lowercase"}]}],
//!   "features": [{"name": "prize", "op": "keywords", "source": "clean", "terms": ["prize", "free"]}],
//!   "decide": {"op": "rules", "rules": [
//!     {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.9},
//!     {"when": {"always": true}, "then": "ham", "confidence": 0.7}]},
//!   "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;
//! ArtifactStore::open(data_dir.path(), "spam")?.install(program, NewArtifact::default(), true)?;
//!
//! let runtime = Runtime::builder().data_dir(data_dir.path()).task("spam").build()?;
//! let result = runtime.execute(&json!({"text": "Claim your FREE prize"}))?;
//! assert_eq!(result.output, "spam");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Threading & shutdown
//!
//! [`Runtime`], [`Executor`], [`Program`] and [`ArtifactStore`] are `Send + Sync`.
//! [`Runtime::execute`] takes no lock and does no I/O: the active program is read through an
//! `ArcSwap`, and scratch buffers are per thread (a few KiB, plus 2 bytes per bucket of
//! the largest hashed n-gram feature up to 2^18 buckets: at most 512 KiB per thread).
//! [`Runtime::activate`] and [`Runtime::reload`] swap programs atomically; executions in
//! flight finish on the program they started with. During a canary rollout
//! ([`Runtime::begin_rollout`]) `execute` also hashes the routing key and bumps per-arm
//! atomic counters; stage changes, promotion and rollback are decided on the rollout
//! thread (and at [`Runtime::flush`]) and swap programs the same way.
//!
//! Logging, flushing and shutdown: see [`Runtime::execute`], [`Runtime::flush`] and
//! [`Runtime::shutdown`]; every wait takes a timeout, and dropping the last clone of a
//! runtime shuts it down within [`DROP_SHUTDOWN_TIMEOUT`]. The runtime owns its threads:
//! the dataset writer (which also builds telemetry batches), the retention thread, the
//! rollout thread (which checks a canary rollout and does its `rollout.json` I/O), with
//! telemetry on one uploader, with `cloud.api_url` the artifact refresh thread and the
//! notification listener, and when there is an oracle the `validation.workers`
//! validation threads; none of them blocks `execute` (a full validation queue skips the
//! sample and counts it). Only the opt-in oracle fallback makes `execute` wait, at most
//! `execution.timeout_ms`, and only on abstentions. `flush` also validates queued samples
//! and uploads spooled telemetry within its timeout; `shutdown` uploads until the first
//! failure or the deadline and leaves the rest spooled for the next start.
//! The refresh threads stop first (no version is handed over once shutting down); one still
//! inside a request or a notification read finishes it on its own, touching nothing.
//! Without a cached program, [`RuntimeBuilder::build`] waits at most
//! `cloud.startup_wait_sec` for a first download.
//!
//! After `fork()`: background threads do not exist in the child, so a runtime built before
//! the fork refuses to execute there ([`ErrorKind::Closed`], saying so). Build a new
//! runtime in the child; it starts its own threads.
//!
//! ## Errors
//!
//! Every fallible function returns [`Error`], whose [`ErrorKind`] is the stable
//! classification (also the C status codes and Python exception classes). Messages name the
//! thing at fault: `features[2].pattern: invalid regex: ...`,
//! `input /text: expected a string, got a number`,
//! `config/deployment.yaml: sampling.rate: must be between 0 and 1, got 1.5`.
//!
//! ## Safety of programs
//!
//! Programs come from outside. They have no loops or recursion, every step is linear in the
//! input, regexes use the linear-time `regex` crate with size limits, and sizes (program,
//! inputs, features, rules, vocabularies, weights, tree nodes) are bounded by
//! [`ProgramLimits`]. A program cannot read files, open sockets or allocate without bound.
//!
//! ## Allocator
//!
//! The dataset writer thread frees the execution records that `execute` allocates on the
//! caller's thread. glibc's `malloc` takes the allocating arena's lock for each such free,
//! and the caller's thread then waits on it: with the system allocator `execute` adds about
//! twice the latency, and logged throughput on two threads halves. A library does not pick
//! the process's allocator; set one that frees across threads without a lock, as the
//! shipped artifacts (Python module, `libloopai`, the `loopai` binary) do:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
//! ```

mod artifact;
mod clock;
mod config;
mod crypt;
mod dataset;
mod digest;
mod error;
mod executor;
mod fnv;
mod fork;
mod fsutil;
mod net;
mod oracle;
mod privacy;
mod program;
mod refresh;
mod repository;
mod rollout;
mod runtime;
mod sampler;
mod schema;
mod telemetry;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tls_testing;
mod validator;

pub use artifact::{
    validate_task_id, ArtifactMetadata, ArtifactStatus, ArtifactStore, LoadedArtifact, NewArtifact,
    PROGRAM_LANGUAGE,
};
pub use clock::{day_string, parse_day, Clock, SystemClock, Timestamp};
pub use config::{
    ArtifactRetention, CloudConfig, ComparisonMode, DeploymentConfig, Durability, ExecutionConfig,
    ExecutionRetention, Fallback, GatewayConfig, GatewayRoute, GatewayTaskConfig, InputMapping,
    InputMode, LearnConfig, MessagePick, OnFull, OracleConfig, OracleKind, Pick, PrivacyConfig,
    PrivacyMode, RetentionConfig, RolloutConfig, RuntimeConfig, RuntimeMode, SamplingConfig,
    SamplingStrategies, SamplingStrategy, StorageConfig, TelemetryConfig, UpstreamConfig,
    ValidationConfig, ValidationRetention,
};
pub use crypt::{open_document_or_plain, open_log_or_plain, KeyRing, LogSealer};
pub use dataset::{
    apply_retention, read_stats, rebuild_stats, write_stats, DailyAggregate, DailyStats,
    DatasetLayout, DatasetMetrics, DatasetReader, ExecutionRecord, ExecutionSource,
    ExecutionStatus, LatencyStats, RetentionPolicy, RetentionReport, ValidationRecord,
    ValidationStats, MAX_OUTPUT_KEYS,
};
pub use error::{Error, ErrorKind, Result};
pub use executor::{ActiveProgram, Execution, Executor};
pub use oracle::{FnOracle, HttpOracle, Oracle, OracleAnswer, OracleRequest, SleepFn};
pub use privacy::{
    KeyedHasher, PiiFilter, PiiKind, PiiMatch, PrivacyPolicy, HMAC_KEY_FILE, HMAC_KEY_LEN,
};
pub use program::{
    ngram_hash, Abstention, Decision, DecisionId, ExplainOptions, Explanation, Outcome, Program,
    ProgramLimits, ProgramStats, DEFAULT_TOP_K as DEFAULT_EXPLAIN_TOP_K, FORMAT as PROGRAM_FORMAT,
};
pub use refresh::RefreshMetrics;
pub use repository::{
    verify_artifact_signature, ArtifactArchive, ArtifactSigner, VersionInfo, VersionList,
    MAX_ARCHIVE_BYTES, VERSIONS_FORMAT,
};
pub use rollout::{
    ArmStats, MetricComparison, RolloutEvent, RolloutEventKind, RolloutState, RolloutStatus,
    ROLLOUT_FILE, ROLLOUT_FORMAT,
};
pub use runtime::{
    ExecutionResult, Health, Runtime, RuntimeBuilder, Scores, DROP_SHUTDOWN_TIMEOUT,
    MAX_INPUT_DOCUMENT_BYTES,
};
pub use sampler::{SampleReason, Sampler};
pub use schema::{JsonSchema, SchemaViolation};
pub use telemetry::{
    BatchMetrics, ExecutionSummary, Heartbeat, HeartbeatRollout, LatencySummary, QueueDepths,
    StatusCounts, TelemetryBatch, TelemetryMetrics, ValidationSummary, DEPLOYMENT_ID_FILE,
    HEARTBEAT_FORMAT, MAX_OUTPUT_CLASSES, TELEMETRY_FORMAT,
};
pub use validator::{
    compare_outputs, Comparison, ValidationMetrics, VersionValidationMetrics, ROLLING_WINDOW,
};

/// Not public API: pieces the workspace's other crates share with this one so that they
/// compute exactly the same thing (`loopai-synth` buckets n-grams with `fnv`
/// as the runtime does). May change in any release.
#[doc(hidden)]
pub mod __private {
    /// The FNV-1a of n-gram buckets (part of the program format).
    pub mod fnv {
        pub use crate::fnv::{fmix64, hash, Fnv, FNV_OFFSET, FNV_PRIME};
    }
    /// The scripts written without spaces (`tokens: "alnum_cjk"`, part of the program
    /// format).
    pub mod text {
        pub use crate::program::text::is_unspaced;
    }
    /// The value normalisations of extraction fields (numbers, dates; part of the
    /// program format).
    pub mod extract {
        pub use crate::program::extract::{parse_number, DateFormat, NumberFormat};
    }
}
