//! The deployment configuration (`<data_dir>/config/deployment.yaml`).
//!
//! Every section and key is optional; a missing key takes the default listed on its field.
//! Loading goes: parse to a generic value → `${ENV_VAR}` substitution in every string
//! value → typed deserialization (unknown keys and wrong types are errors naming the key
//! path) → [`DeploymentConfig::validate`] (range checks naming the key path). Every error
//! is an [`ErrorKind::Config`] whose message starts with the origin (usually a file path).
//!
//! ## Environment variables
//!
//! In string values, `${NAME}` is replaced by the variable's value, `${NAME:-default}` by
//! `default` when the variable is unset or empty, and `$$` by a literal `$`. Any other `$`
//! is kept as is. An unset variable without a default is an error. Substitution produces
//! strings, so it is meant for string keys (`cloud.api_key`, `cloud.api_url`,
//! `storage.data_dir`, mode names, ...); numeric keys must be written as numbers.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value as YamlValue;

use crate::error::{Error, ErrorKind, Result};
use crate::repository::decode_ed25519_public_key;

mod gateway;
mod sampling;

pub use gateway::{
    GatewayConfig, GatewayRoute, GatewayTaskConfig, InputMapping, InputMode, LearnConfig,
    MessagePick, Pick, UpstreamConfig,
};
pub use sampling::{SamplingConfig, SamplingStrategies, SamplingStrategy};

/// The largest accepted `execution.max_input_bytes` (64 MiB).
const MAX_INPUT_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// The largest accepted `execution.worker_count` and `validation.workers`.
const MAX_WORKERS: usize = 1024;
/// The largest accepted `telemetry.batch_size`.
const MAX_BATCH_SIZE: usize = 100_000;
/// Nesting deeper than this in a config document is rejected (configs are ~4 levels deep).
const MAX_DEPTH: usize = 64;

/// The typed deployment configuration of a runtime.
///
/// Build it from YAML ([`from_yaml_str`](Self::from_yaml_str), [`from_file`](Self::from_file),
/// [`load_for_data_dir`](Self::load_for_data_dir)) or from a JSON value
/// ([`from_json_value`](Self::from_json_value)), or start from [`Default`] and change fields.
/// All loaders call [`validate`](Self::validate).
///
/// ```
/// use loopai_core::{DeploymentConfig, ErrorKind, RuntimeMode, SamplingStrategy};
///
/// let yaml = "
/// runtime:
///   mode: hybrid
/// sampling:
///   strategy: [random, uncertainty]
///   rate: 0.1
/// ";
/// let config = DeploymentConfig::from_yaml_str(yaml, "deployment.yaml")?;
/// assert_eq!(config.runtime.mode, RuntimeMode::Hybrid);
/// assert!(config.sampling.strategy.contains(SamplingStrategy::Uncertainty));
/// assert_eq!(config.execution.worker_count, 4); // default
///
/// let err = DeploymentConfig::from_yaml_str("sampling:\n  rate: 1.5\n", "deployment.yaml")
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Config);
/// assert_eq!(
///     err.to_string(),
///     "deployment.yaml: sampling.rate: must be between 0 and 1, got 1.5"
/// );
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploymentConfig {
    /// `runtime`: how this runtime is deployed.
    #[serde(deserialize_with = "null_as_default")]
    pub runtime: RuntimeConfig,
    /// `cloud`: the connection to the Loopai cloud.
    #[serde(deserialize_with = "null_as_default")]
    pub cloud: CloudConfig,
    /// `execution`: the executor.
    #[serde(deserialize_with = "null_as_default")]
    pub execution: ExecutionConfig,
    /// `sampling`: which executions are sampled for validation.
    #[serde(deserialize_with = "null_as_default")]
    pub sampling: SamplingConfig,
    /// `telemetry`: uploads to the cloud.
    #[serde(deserialize_with = "null_as_default")]
    pub telemetry: TelemetryConfig,
    /// `storage`: local storage under the data directory.
    #[serde(deserialize_with = "null_as_default")]
    pub storage: StorageConfig,
    /// `privacy`: what leaves the process and in which form.
    #[serde(deserialize_with = "null_as_default")]
    pub privacy: PrivacyConfig,
    /// `retention`: how long local data is kept.
    #[serde(deserialize_with = "null_as_default")]
    pub retention: RetentionConfig,
    /// `validation`: comparing sampled outputs with the oracle.
    #[serde(deserialize_with = "null_as_default")]
    pub validation: ValidationConfig,
    /// `oracle`: the reference model used for validation and fallback (default: none).
    pub oracle: Option<OracleConfig>,
    /// `rollout`: canary rollout of new versions (see `docs/rollout.md`).
    #[serde(deserialize_with = "null_as_default")]
    pub rollout: RolloutConfig,
    /// `gateway`: the OpenAI-compatible gateway of `loopai serve` (default: off; see
    /// `docs/gateway.md`).
    pub gateway: Option<GatewayConfig>,
    /// `learn`: background learning of gateway tasks (see `docs/gateway.md`).
    #[serde(deserialize_with = "null_as_default")]
    pub learn: LearnConfig,
}

/// The `runtime` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `runtime.mode` (default `edge`).
    pub mode: RuntimeMode,
    /// `runtime.deployment_id` (default none: the runtime derives one).
    pub deployment_id: Option<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            mode: RuntimeMode::Edge,
            deployment_id: None,
        }
    }
}

/// `runtime.mode`: where programs execute.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeMode {
    /// Programs execute in this process; data stays local (`edge`, the default).
    #[default]
    Edge,
    /// Programs execute in the Loopai cloud (`central`).
    Central,
    /// Local execution with continuous improvement through the cloud (`hybrid`).
    Hybrid,
}

/// The `cloud` section. Its `Debug` output redacts `api_key`.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// `cloud.api_url` (default none); must start with `http://` or `https://`.
    pub api_url: Option<String>,
    /// `cloud.api_key` (default none), typically `${LOOPAI_API_KEY}`.
    pub api_key: Option<String>,
    /// `cloud.notifications` (default `true`): subscribe to the cloud's notification hub.
    /// The design's older name `signalr_enabled` is accepted as an alias.
    #[serde(alias = "signalr_enabled")]
    pub notifications: bool,
    /// `cloud.refresh_interval_sec` (default 300, at least 1): how often to poll for artifacts.
    pub refresh_interval_sec: u64,
    /// `cloud.trusted_keys` (default empty): ed25519 public keys (32 bytes, hex or base64)
    /// whose artifact signatures are accepted.
    pub trusted_keys: Vec<String>,
    /// `cloud.startup_wait_sec` (default 10): how long startup waits for a first artifact.
    pub startup_wait_sec: u64,
    /// `cloud.ca_file` (default none: Mozilla's root certificates): a PEM file of CA
    /// certificates that alone are trusted for the cloud's HTTPS certificate (repository,
    /// notifications, telemetry), for a cloud behind a private CA.
    pub ca_file: Option<PathBuf>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            api_url: None,
            api_key: None,
            notifications: true,
            refresh_interval_sec: 300,
            trusted_keys: Vec::new(),
            startup_wait_sec: 10,
            ca_file: None,
        }
    }
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("api_url", &self.api_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("notifications", &self.notifications)
            .field("refresh_interval_sec", &self.refresh_interval_sec)
            .field("trusted_keys", &self.trusted_keys)
            .field("startup_wait_sec", &self.startup_wait_sec)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The `execution` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// `execution.worker_count` (default 4, 1..=1024).
    pub worker_count: usize,
    /// `execution.timeout_ms` (default 1000, at least 1): per-execution timeout; with
    /// `fallback: oracle`, how long `execute` may wait for the oracle on an abstention.
    pub timeout_ms: u64,
    /// `execution.max_input_bytes` (default 65536, 1 ..= 64 MiB): largest accepted input.
    pub max_input_bytes: usize,
    /// `execution.fallback` (default `none`): what to do when the program abstains.
    pub fallback: Fallback,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            worker_count: 4,
            timeout_ms: 1000,
            max_input_bytes: 65536,
            fallback: Fallback::None,
        }
    }
}

/// `execution.fallback`: what happens when a program abstains.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Return the program's answer with status `abstain` (`none`, the default).
    #[default]
    None,
    /// Ask the oracle synchronously within `execution.timeout_ms` and return its answer
    /// (requires an oracle: the `oracle` section or `RuntimeBuilder::oracle`).
    Oracle,
}

/// The `telemetry` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `telemetry.enabled` (default `true`).
    pub enabled: bool,
    /// `telemetry.upload_interval_sec` (default 60, at least 1).
    pub upload_interval_sec: u64,
    /// `telemetry.batch_size` (default 1000, 1..=100000): records per upload.
    pub batch_size: usize,
    /// `telemetry.privacy_mode` (default `balanced`).
    pub privacy_mode: PrivacyMode,
    /// `telemetry.spool_max_mb` (default 100, at least 1): disk space of the spool
    /// (`<data_dir>/telemetry/spool/<task>/`) for batches waiting to upload; the oldest are
    /// dropped (and counted) beyond it.
    pub spool_max_mb: u64,
    /// `telemetry.request_timeout_sec` (default 10, 1..=600): timeout of one upload request.
    pub request_timeout_sec: u64,
    /// `telemetry.heartbeat_interval_sec` (default 30, 0 or 1..=86400): how often the
    /// telemetry thread reports the deployment's state (active version, rollout stage,
    /// queue depths, last error) to `{cloud.api_url}/api/v1/heartbeats`; 0 sends none.
    pub heartbeat_interval_sec: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            upload_interval_sec: 60,
            batch_size: 1000,
            privacy_mode: PrivacyMode::Balanced,
            spool_max_mb: 100,
            request_timeout_sec: 10,
            heartbeat_interval_sec: 30,
        }
    }
}

/// `telemetry.privacy_mode`: how much of an execution telemetry may carry.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyMode {
    /// `strict`: aggregates only.
    Strict,
    /// `balanced` (the default): sampled records with PII filtered.
    #[default]
    Balanced,
    /// `permissive`: sampled records as executed.
    Permissive,
}

/// The `storage` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `storage.data_dir` (default `/loopai-data`; set to the runtime's data directory by
    /// [`DeploymentConfig::load_for_data_dir`] when not given).
    pub data_dir: PathBuf,
    /// `storage.retention_days` (default 30).
    pub retention_days: u32,
    /// `storage.max_size_gb` (default 100, greater than 0; fractions allowed).
    pub max_size_gb: f64,
    /// `storage.durability` (default `buffered`).
    pub durability: Durability,
    /// `storage.on_full` (default `block`): what a full write queue does.
    pub on_full: OnFull,
    /// `storage.queue_capacity` (default 65536, at least 1): records waiting to be written.
    pub queue_capacity: usize,
    /// `storage.encryption` (default none): the execution and validation logs are written
    /// encrypted (AES-256-GCM frames; see `docs/datasets.md`).
    pub encryption: Option<EncryptionConfig>,
}

/// `storage.encryption`: where the data keys come from. Exactly one of `key_env` and
/// `key_file` gives the current key (32 bytes, 64 hex digits or base64), which encrypts;
/// `old_keys` list earlier keys, which still decrypt files written before a rotation.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// `storage.encryption.key_env`: the environment variable holding the current key.
    pub key_env: Option<String>,
    /// `storage.encryption.key_file`: a file holding the current key (on Unix, not
    /// readable by group or others).
    pub key_file: Option<PathBuf>,
    /// `storage.encryption.old_keys`: earlier keys, each `{key_env: ...}` or
    /// `{key_file: ...}`, for reading files written before a rotation.
    pub old_keys: Vec<KeySource>,
}

/// Where one key comes from: exactly one of the two.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySource {
    /// An environment variable holding the key.
    pub key_env: Option<String>,
    /// A file holding the key.
    pub key_file: Option<PathBuf>,
}

impl KeySource {
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        match (&self.key_env, &self.key_file) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(config_error(format!(
                "{what}: give exactly one of key_env and key_file"
            ))),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("/loopai-data"),
            retention_days: 30,
            max_size_gb: 100.0,
            durability: Durability::Buffered,
            on_full: OnFull::Block,
            queue_capacity: 65536,
            encryption: None,
        }
    }
}

/// `storage.durability`: when written records reach the disk.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `buffered` (the default): written in batches; a crash may lose the last batch.
    #[default]
    Buffered,
    /// `durable`: each batch is synced to disk before `flush` returns.
    Durable,
}

/// `storage.on_full`: what happens when the write queue is full.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// `block` (the default): the executing call waits for room.
    #[default]
    Block,
    /// `drop`: the record is dropped and counted in the metrics.
    Drop,
}

/// The `privacy` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// `privacy.pii_detection` (default `true`): filter PII from what leaves the process.
    pub pii_detection: bool,
    /// `privacy.hash_inputs` (default `false`): replace inputs by their hash.
    pub hash_inputs: bool,
    /// `privacy.sample_only` (default `true`): upload sampled executions only.
    pub sample_only: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            pii_detection: true,
            hash_inputs: false,
            sample_only: true,
        }
    }
}

/// The `retention` section (the design's "Retention Policy").
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// `retention.executions`.
    #[serde(deserialize_with = "null_as_default")]
    pub executions: ExecutionRetention,
    /// `retention.validations`.
    #[serde(deserialize_with = "null_as_default")]
    pub validations: ValidationRetention,
    /// `retention.artifacts`.
    #[serde(deserialize_with = "null_as_default")]
    pub artifacts: ArtifactRetention,
}

/// `retention.executions`: raw execution logs.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionRetention {
    /// `retention.executions.keep_days` (default 7).
    pub keep_days: u32,
    /// `retention.executions.compress_after` (default 1, at most `keep_days`): days after
    /// which a log file is gzip-compressed.
    pub compress_after: u32,
}

impl Default for ExecutionRetention {
    fn default() -> Self {
        ExecutionRetention {
            keep_days: 7,
            compress_after: 1,
        }
    }
}

/// `retention.validations`: validation records.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationRetention {
    /// `retention.validations.keep_days` (default 30).
    pub keep_days: u32,
}

impl Default for ValidationRetention {
    fn default() -> Self {
        ValidationRetention { keep_days: 30 }
    }
}

/// `retention.artifacts`: program versions kept on disk.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactRetention {
    /// `retention.artifacts.keep_versions` (default 10, at least 1).
    pub keep_versions: u32,
}

impl Default for ArtifactRetention {
    fn default() -> Self {
        ArtifactRetention { keep_versions: 10 }
    }
}

/// The `validation` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// `validation.comparison` (default `exact`): how a program output is compared with
    /// the oracle's.
    pub comparison: ComparisonMode,
    /// `validation.fuzzy_threshold` (default 0.9, 0..=1): similarity needed by `fuzzy`.
    pub fuzzy_threshold: f64,
    /// `validation.workers` (default 2, 1..=1024).
    pub workers: usize,
    /// `validation.queue_capacity` (default 1024, at least 1).
    pub queue_capacity: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            comparison: ComparisonMode::Exact,
            fuzzy_threshold: 0.9,
            workers: 2,
            queue_capacity: 1024,
        }
    }
}

/// The `rollout` section: how a new version is rolled out as a canary and promoted or
/// rolled back (see `docs/rollout.md`).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// `rollout.enabled` (default `true`); `false`: `Runtime::begin_rollout` activates the
    /// version at once.
    pub enabled: bool,
    /// `rollout.stages` (default `[0.1, 0.5, 1.0]`): the canary's share of executions at
    /// each stage; strictly increasing, each in (0, 1].
    pub stages: Vec<f64>,
    /// `rollout.min_samples_per_stage` (default 1000, at least 1): executions per arm in a
    /// stage before it can be promoted.
    pub min_samples_per_stage: u64,
    /// `rollout.min_validations_per_stage` (default 50): validations per arm in a stage
    /// before it can be promoted, when validations that count can arrive (an oracle and
    /// random sampling: only executions sampled at random count, see `docs/rollout.md`).
    pub min_validations_per_stage: u64,
    /// `rollout.confidence` (default 0.95, in (0, 1)): confidence of the sequential test.
    pub confidence: f64,
    /// `rollout.max_error_rate_increase` (default 0.02, in (0, 1]): how much higher the
    /// canary's error and mismatch rates may be for it to be promoted.
    pub max_error_rate_increase: f64,
    /// `rollout.max_abstain_rate_increase` (default 0.05, in (0, 1]): the same for the
    /// abstain rate; the canary is rolled back when it is significantly above it.
    pub max_abstain_rate_increase: f64,
    /// `rollout.max_p99_latency_ratio` (default 2.0, at least 1): promotion waits while the
    /// canary's p99 latency is above this multiple of the stable's (and above
    /// `p99_floor_ms`).
    pub max_p99_latency_ratio: f64,
    /// `rollout.p99_floor_ms` (default 1.0, at least 0): canary p99 latencies below this
    /// never hold a promotion.
    pub p99_floor_ms: f64,
    /// `rollout.sticky_key` (default none): JSON pointer (`/user_id`) of the input value
    /// that routes an execution; without it, the input's canonical JSON.
    pub sticky_key: Option<String>,
    /// `rollout.check_interval_ms` (default 1000, at least 1): time between background
    /// checks, on the runtime's clock.
    pub check_interval_ms: u64,
    /// `rollout.follow_interval_ms` (default 2000; 0: never): how often the runtime
    /// re-reads the task's `active` pointer and `rollout.json` (real time), so that
    /// `loopai artifacts activate|rollback|promote` and `loopai rollout start|promote|abort`
    /// run in another process take effect without a restart (see `docs/rollout.md`).
    /// [`RuntimeBuilder::follow_interval`](crate::RuntimeBuilder::follow_interval) overrides it.
    pub follow_interval_ms: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            enabled: true,
            stages: vec![0.1, 0.5, 1.0],
            min_samples_per_stage: 1000,
            min_validations_per_stage: 50,
            confidence: 0.95,
            max_error_rate_increase: 0.02,
            max_abstain_rate_increase: 0.05,
            max_p99_latency_ratio: 2.0,
            p99_floor_ms: 1.0,
            sticky_key: None,
            check_interval_ms: 1000,
            follow_interval_ms: 2000,
        }
    }
}

impl RolloutConfig {
    pub(crate) fn check_interval_ms_i64(&self) -> i64 {
        i64::try_from(self.check_interval_ms).unwrap_or(i64::MAX)
    }

    fn validate(&self) -> Result<()> {
        if self.stages.is_empty() {
            return Err(config_error("rollout.stages: must list at least one stage"));
        }
        for (i, &s) in self.stages.iter().enumerate() {
            if !(s > 0.0 && s <= 1.0) {
                return Err(config_error(format!(
                    "rollout.stages[{i}]: must be greater than 0 and at most 1, got {s}"
                )));
            }
            if i > 0 && s <= self.stages[i - 1] {
                return Err(config_error(format!(
                    "rollout.stages[{i}]: must be greater than the stage before ({}), got {s}",
                    self.stages[i - 1]
                )));
            }
        }
        at_least(
            "rollout.min_samples_per_stage",
            self.min_samples_per_stage,
            1,
        )?;
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(config_error(format!(
                "rollout.confidence: must be greater than 0 and less than 1, got {}",
                self.confidence
            )));
        }
        for (key, v) in [
            (
                "rollout.max_error_rate_increase",
                self.max_error_rate_increase,
            ),
            (
                "rollout.max_abstain_rate_increase",
                self.max_abstain_rate_increase,
            ),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(config_error(format!(
                    "{key}: must be greater than 0 and at most 1, got {v}"
                )));
            }
        }
        if !(self.max_p99_latency_ratio.is_finite() && self.max_p99_latency_ratio >= 1.0) {
            return Err(config_error(format!(
                "rollout.max_p99_latency_ratio: must be at least 1, got {}",
                self.max_p99_latency_ratio
            )));
        }
        if !(self.p99_floor_ms.is_finite() && self.p99_floor_ms >= 0.0) {
            return Err(config_error(format!(
                "rollout.p99_floor_ms: must be at least 0, got {}",
                self.p99_floor_ms
            )));
        }
        if let Some(p) = &self.sticky_key {
            if !p.starts_with('/') {
                return Err(config_error(format!(
                    "rollout.sticky_key: must be a JSON pointer starting with `/` (like `/user_id`), got {p:?}"
                )));
            }
        }
        at_least("rollout.check_interval_ms", self.check_interval_ms, 1)
    }
}

/// `validation.comparison`: how outputs are compared.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonMode {
    /// `exact` (the default): equal JSON values.
    #[default]
    Exact,
    /// `normalized`: equal after case and whitespace normalization of strings.
    Normalized,
    /// `fuzzy`: string similarity at least `fuzzy_threshold`.
    Fuzzy,
    /// `structured`: field-by-field comparison of objects.
    Structured,
}

/// The `oracle` section: the reference model.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OracleConfig {
    /// `oracle.kind` (default `http`).
    pub kind: OracleKind,
    /// `oracle.base_url` (required): must start with `http://` or `https://`.
    pub base_url: String,
    /// `oracle.model` (required): the model name sent to the oracle.
    pub model: String,
    /// `oracle.api_key_env` (default none): the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// `oracle.timeout_ms` (default 10000, at least 1): per-request timeout.
    pub timeout_ms: u64,
    /// `oracle.max_retries` (default 3).
    pub max_retries: u32,
    /// `oracle.ca_file` (default none: Mozilla's root certificates): a PEM file of CA
    /// certificates that alone are trusted for the oracle's HTTPS certificate.
    pub ca_file: Option<PathBuf>,
}

impl Default for OracleConfig {
    fn default() -> Self {
        OracleConfig {
            kind: OracleKind::Http,
            base_url: String::new(),
            model: String::new(),
            api_key_env: None,
            timeout_ms: 10_000,
            max_retries: 3,
            ca_file: None,
        }
    }
}

/// `oracle.kind`: how the oracle is reached.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    /// `http` (the default): an HTTP API.
    #[default]
    Http,
}

/// Deserializes `null` (an empty section such as `cloud:`) as the default.
fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The process environment, as seen by `${NAME}` substitution.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, message)
}

impl DeploymentConfig {
    /// Where the configuration lives inside a data directory.
    pub const PATH_IN_DATA_DIR: &'static str = "config/deployment.yaml";

    /// Parses YAML text. `origin` (usually the file path) prefixes every error message.
    /// An empty document gives the defaults.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self> {
        Self::from_yaml_str_with_env(text, origin, &process_env)
    }

    /// Reads and parses a YAML file; a missing or unreadable file is an error naming it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            config_error(format!("{origin}: cannot read config file: {e}")).with_source(e)
        })?;
        Self::from_yaml_str(&text, &origin)
    }

    /// Builds the configuration from a JSON value with the same layout as the YAML file
    /// (used for configs passed as a Python dict or as JSON through the C ABI). `null`
    /// gives the defaults.
    pub fn from_json_value(value: &serde_json::Value, origin: &str) -> Result<Self> {
        Self::from_json_value_with_env(value, origin, &process_env)
    }

    /// Loads `<data_dir>/config/deployment.yaml` if it exists, else the defaults. In both
    /// cases `storage.data_dir` is set to `data_dir` unless the file sets it.
    pub fn load_for_data_dir(data_dir: &Path) -> Result<Self> {
        Self::load_for_data_dir_with_env(data_dir, &process_env)
    }

    pub(crate) fn from_yaml_str_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let value = parse_yaml(text, origin)?;
        Self::from_generic(value, origin, env).map(|(config, _)| config)
    }

    pub(crate) fn from_json_value_with_env(
        value: &serde_json::Value,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        check_json_depth(value, 0)
            .map_err(|()| config_error(format!("{origin}: nesting deeper than {MAX_DEPTH}")))?;
        let value = serde_yaml_ng::to_value(value).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("{origin}: converting JSON config: {e}"),
            )
        })?;
        Self::from_generic(value, origin, env).map(|(config, _)| config)
    }

    pub(crate) fn load_for_data_dir_with_env(
        data_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let path = data_dir.join(Self::PATH_IN_DATA_DIR);
        let origin = path.display().to_string();
        let (mut config, explicit_data_dir) = match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_generic(parse_yaml(&text, &origin)?, &origin, env)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self::default(), false),
            Err(e) => {
                return Err(
                    config_error(format!("{origin}: cannot read config file: {e}")).with_source(e),
                )
            }
        };
        if !explicit_data_dir {
            config.storage.data_dir = data_dir.to_path_buf();
        }
        Ok(config)
    }

    /// The shared pipeline: env substitution → typed parsing → validation. Also reports
    /// whether `storage.data_dir` was given.
    fn from_generic(
        mut value: YamlValue,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, bool)> {
        if value.is_null() {
            value = YamlValue::Mapping(Default::default());
        }
        let mut path = String::new();
        substitute_env_in(&mut value, &mut path, env, 0)
            .map_err(|msg| config_error(format!("{origin}: {msg}")))?;
        let explicit_data_dir = value
            .get("storage")
            .and_then(|s| s.get("data_dir"))
            .is_some_and(|v| !v.is_null());
        let config: DeploymentConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                config_error(format!("{origin}: {inner}"))
            } else {
                config_error(format!("{origin}: {path}: {inner}"))
            }
        })?;
        config.validate().map_err(|e| e.context(origin))?;
        Ok((config, explicit_data_dir))
    }

    /// Checks every range and cross-key rule; the error names the key path
    /// (`sampling.rate: must be between 0 and 1, got 1.5`). The loaders call this and
    /// prefix the origin; call it yourself after changing fields.
    pub fn validate(&self) -> Result<()> {
        if let Some(gateway) = &self.gateway {
            gateway.validate()?;
            if self.privacy.hash_inputs {
                return Err(config_error(
                    "gateway: cannot run with privacy.hash_inputs: true (the gateway learns from the inputs' text)",
                ));
            }
        }
        self.learn.validate()?;
        if let Some(enc) = &self.storage.encryption {
            KeySource {
                key_env: enc.key_env.clone(),
                key_file: enc.key_file.clone(),
            }
            .check("storage.encryption")?;
            for (i, k) in enc.old_keys.iter().enumerate() {
                k.check(&format!("storage.encryption.old_keys[{i}]"))?;
            }
        }
        if let Some(id) = &self.runtime.deployment_id {
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                return Err(config_error(
                    "runtime.deployment_id: must be 1 to 256 bytes without control characters",
                ));
            }
        }

        let cloud = &self.cloud;
        if let Some(url) = &cloud.api_url {
            check_http_url("cloud.api_url", url)?;
        }
        at_least("cloud.refresh_interval_sec", cloud.refresh_interval_sec, 1)?;
        for (i, key) in cloud.trusted_keys.iter().enumerate() {
            if decode_ed25519_public_key(key).is_none() {
                return Err(config_error(format!(
                    "cloud.trusted_keys[{i}]: expected a 32-byte ed25519 public key in hex \
                     (64 digits) or base64"
                )));
            }
        }

        let exec = &self.execution;
        between("execution.worker_count", exec.worker_count, 1, MAX_WORKERS)?;
        at_least("execution.timeout_ms", exec.timeout_ms, 1)?;
        between(
            "execution.max_input_bytes",
            exec.max_input_bytes,
            1,
            MAX_INPUT_BYTES_LIMIT,
        )?;
        // `execution.fallback: oracle` also needs an oracle: the `oracle` section or one
        // given to `RuntimeBuilder::oracle`, so `RuntimeBuilder::build` checks it.

        let sampling = &self.sampling;
        if sampling.strategy.is_empty() {
            return Err(config_error(
                "sampling.strategy: must name at least one strategy",
            ));
        }
        unit_interval("sampling.rate", sampling.rate)?;
        unit_interval(
            "sampling.uncertainty_threshold",
            sampling.uncertainty_threshold,
        )?;
        unit_interval("sampling.temporal_boost_rate", sampling.temporal_boost_rate)?;
        at_least(
            "sampling.temporal_half_life_sec",
            sampling.temporal_half_life_sec,
            1,
        )?;

        let telemetry = &self.telemetry;
        at_least(
            "telemetry.upload_interval_sec",
            telemetry.upload_interval_sec,
            1,
        )?;
        between(
            "telemetry.batch_size",
            telemetry.batch_size,
            1,
            MAX_BATCH_SIZE,
        )?;
        at_least("telemetry.spool_max_mb", telemetry.spool_max_mb, 1)?;
        between(
            "telemetry.request_timeout_sec",
            telemetry.request_timeout_sec,
            1,
            600,
        )?;
        between(
            "telemetry.heartbeat_interval_sec",
            telemetry.heartbeat_interval_sec,
            0,
            86_400,
        )?;

        let storage = &self.storage;
        if storage.data_dir.as_os_str().is_empty() {
            return Err(config_error("storage.data_dir: must not be empty"));
        }
        if !(storage.max_size_gb.is_finite() && storage.max_size_gb > 0.0) {
            return Err(config_error(format!(
                "storage.max_size_gb: must be greater than 0, got {}",
                storage.max_size_gb
            )));
        }
        at_least("storage.queue_capacity", storage.queue_capacity, 1)?;

        let retention = &self.retention;
        if retention.executions.compress_after > retention.executions.keep_days {
            return Err(config_error(format!(
                "retention.executions.compress_after: must be at most keep_days ({}), got {}",
                retention.executions.keep_days, retention.executions.compress_after
            )));
        }
        at_least(
            "retention.artifacts.keep_versions",
            retention.artifacts.keep_versions,
            1,
        )?;

        let validation = &self.validation;
        unit_interval("validation.fuzzy_threshold", validation.fuzzy_threshold)?;
        between("validation.workers", validation.workers, 1, MAX_WORKERS)?;
        at_least("validation.queue_capacity", validation.queue_capacity, 1)?;

        if let Some(oracle) = &self.oracle {
            check_http_url("oracle.base_url", &oracle.base_url)?;
            if oracle.model.is_empty() {
                return Err(config_error("oracle.model: required when `oracle` is set"));
            }
            if let Some(name) = &oracle.api_key_env {
                if !is_env_name(name) {
                    return Err(config_error(format!(
                        "oracle.api_key_env: {name:?} is not a valid environment variable name"
                    )));
                }
            }
            at_least("oracle.timeout_ms", oracle.timeout_ms, 1)?;
        }
        self.rollout.validate()
    }
}

fn at_least<T: PartialOrd + fmt::Display>(key: &str, value: T, min: T) -> Result<()> {
    if value < min {
        return Err(config_error(format!(
            "{key}: must be at least {min}, got {value}"
        )));
    }
    Ok(())
}

fn between<T: PartialOrd + fmt::Display>(key: &str, value: T, min: T, max: T) -> Result<()> {
    if value < min || value > max {
        return Err(config_error(format!(
            "{key}: must be between {min} and {max}, got {value}"
        )));
    }
    Ok(())
}

fn unit_interval(key: &str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        return Err(config_error(format!(
            "{key}: must be between 0 and 1, got {value}"
        )));
    }
    Ok(())
}

fn check_http_url(key: &str, url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(config_error(format!(
            "{key}: must be an http:// or https:// URL, got {url:?}"
        ))),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

fn parse_yaml(text: &str, origin: &str) -> Result<YamlValue> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let message = match e.location() {
            Some(loc) if !e.to_string().contains(" line ") => format!(
                "{origin}: invalid YAML at line {} column {}: {e}",
                loc.line(),
                loc.column()
            ),
            _ => format!("{origin}: invalid YAML: {e}"),
        };
        config_error(message).with_source(e)
    })
}

fn check_json_depth(value: &serde_json::Value, depth: usize) -> std::result::Result<(), ()> {
    if depth > MAX_DEPTH {
        return Err(());
    }
    match value {
        serde_json::Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_json_depth(v, depth + 1)),
        serde_json::Value::Object(map) => map
            .values()
            .try_for_each(|v| check_json_depth(v, depth + 1)),
        _ => Ok(()),
    }
}

/// Replaces `${...}` in every string value under `value`; `path` is the key path of
/// `value` (`cloud.api_key`, `cloud.trusted_keys[0]`), used in error messages.
fn substitute_env_in(
    value: &mut YamlValue,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> std::result::Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: nesting deeper than {MAX_DEPTH}",
            display_path(path)
        ));
    }
    let restore = path.len();
    match value {
        YamlValue::String(s) => {
            if let Cow::Owned(replaced) =
                substitute_env(s, env).map_err(|e| format!("{}: {e}", display_path(path)))?
            {
                *s = replaced;
            }
        }
        YamlValue::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                use fmt::Write as _;
                let _ = write!(path, "[{i}]");
                substitute_env_in(item, path, env, depth + 1)?;
                path.truncate(restore);
            }
        }
        YamlValue::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                if !path.is_empty() {
                    path.push('.');
                }
                match key {
                    YamlValue::String(k) => path.push_str(k),
                    YamlValue::Bool(b) => path.push_str(if *b { "true" } else { "false" }),
                    YamlValue::Number(n) => path.push_str(&n.to_string()),
                    _ => path.push('?'),
                }
                substitute_env_in(item, path, env, depth + 1)?;
                path.truncate(restore);
            }
        }
        YamlValue::Tagged(tagged) => substitute_env_in(&mut tagged.value, path, env, depth + 1)?,
        YamlValue::Null | YamlValue::Bool(_) | YamlValue::Number(_) => {}
    }
    Ok(())
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// Expands `${NAME}`, `${NAME:-default}` and `$$` in one string.
fn substitute_env<'a>(
    input: &'a str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Cow<'a, str>, String> {
    if !input.contains('$') {
        return Ok(Cow::Borrowed(input));
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
        } else if let Some(body_and_rest) = after.strip_prefix('{') {
            let end = body_and_rest
                .find('}')
                .ok_or_else(|| format!("unterminated \"${{\" in {input:?}"))?;
            let body = &body_and_rest[..end];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            if !is_env_name(name) {
                return Err(format!(
                    "invalid environment variable name {name:?} in \"${{{body}}}\""
                ));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body_and_rest[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The design's `deployment.yaml` (indentation restored), with the design's
    /// `signalr_enabled` and the retention policy.
    const DESIGN_EXAMPLE: &str = "\
# /loopai-data/config/deployment.yaml
runtime:
  mode: edge # edge, central, hybrid

cloud:
  api_url: https://api.loopai.io
  api_key: ${LOOPAI_API_KEY}
  signalr_enabled: true

execution:
  worker_count: 4
  timeout_ms: 1000

sampling:
  strategy: random
  rate: 0.05 # 5%

telemetry:
  enabled: true
  upload_interval_sec: 60
  batch_size: 1000
  privacy_mode: balanced # strict, balanced, permissive

storage:
  data_dir: /loopai-data
  retention_days: 30
  max_size_gb: 100

privacy:
  pii_detection: true
  hash_inputs: false
  sample_only: true

retention:
  executions:
    keep_days: 7 # Raw logs
    compress_after: 1 # Gzip compression
  validations:
    keep_days: 30 # Keep longer
  artifacts:
    keep_versions: 10 # Last 10 versions
";

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn parse(text: &str) -> Result<DeploymentConfig> {
        DeploymentConfig::from_yaml_str_with_env(text, "deployment.yaml", &env_of(&[]))
    }

    fn parse_err(text: &str) -> String {
        let err = parse(text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        err.to_string()
    }

    #[test]
    fn defaults_equal_the_design() {
        let c = DeploymentConfig::default();
        assert_eq!(c.runtime.mode, RuntimeMode::Edge);
        assert_eq!(c.runtime.deployment_id, None);
        assert_eq!(c.cloud.api_url, None);
        assert_eq!(c.cloud.api_key, None);
        assert!(c.cloud.notifications);
        assert_eq!(c.cloud.refresh_interval_sec, 300);
        assert!(c.cloud.trusted_keys.is_empty());
        assert_eq!(c.cloud.startup_wait_sec, 10);
        assert_eq!(c.execution.worker_count, 4);
        assert_eq!(c.execution.timeout_ms, 1000);
        assert_eq!(c.execution.max_input_bytes, 65536);
        assert_eq!(c.execution.fallback, Fallback::None);
        assert_eq!(
            c.sampling.strategy.iter().collect::<Vec<_>>(),
            [SamplingStrategy::Random]
        );
        assert_eq!(c.sampling.rate, 0.05);
        assert_eq!(c.sampling.uncertainty_threshold, 0.7);
        assert_eq!(c.sampling.temporal_boost_rate, 0.5);
        assert_eq!(c.sampling.temporal_half_life_sec, 3600);
        assert_eq!(c.sampling.stratified_min_per_class, 10);
        assert_eq!(c.sampling.seed, None);
        assert!(c.telemetry.enabled);
        assert_eq!(c.telemetry.upload_interval_sec, 60);
        assert_eq!(c.telemetry.batch_size, 1000);
        assert_eq!(c.telemetry.privacy_mode, PrivacyMode::Balanced);
        assert_eq!(c.telemetry.spool_max_mb, 100);
        assert_eq!(c.telemetry.request_timeout_sec, 10);
        assert_eq!(c.telemetry.heartbeat_interval_sec, 30);
        assert_eq!(c.storage.data_dir, Path::new("/loopai-data"));
        assert_eq!(c.storage.retention_days, 30);
        assert_eq!(c.storage.max_size_gb, 100.0);
        assert_eq!(c.storage.durability, Durability::Buffered);
        assert_eq!(c.storage.on_full, OnFull::Block);
        assert_eq!(c.storage.queue_capacity, 65536);
        assert!(c.privacy.pii_detection);
        assert!(!c.privacy.hash_inputs);
        assert!(c.privacy.sample_only);
        assert_eq!(c.retention.executions.keep_days, 7);
        assert_eq!(c.retention.executions.compress_after, 1);
        assert_eq!(c.retention.validations.keep_days, 30);
        assert_eq!(c.retention.artifacts.keep_versions, 10);
        assert_eq!(c.validation.comparison, ComparisonMode::Exact);
        assert_eq!(c.validation.fuzzy_threshold, 0.9);
        assert_eq!(c.validation.workers, 2);
        assert_eq!(c.validation.queue_capacity, 1024);
        assert_eq!(c.oracle, None);
        c.validate().unwrap();
    }

    #[test]
    fn empty_document_and_empty_sections_give_defaults() {
        assert_eq!(parse("").unwrap(), DeploymentConfig::default());
        assert_eq!(
            parse("# only a comment\n").unwrap(),
            DeploymentConfig::default()
        );
        assert_eq!(
            parse("cloud:\nretention:\n  executions:\n").unwrap(),
            DeploymentConfig::default()
        );
    }

    #[test]
    fn design_example_parses_with_signalr_alias() {
        let env = env_of(&[("LOOPAI_API_KEY", "sk-test")]);
        let c =
            DeploymentConfig::from_yaml_str_with_env(DESIGN_EXAMPLE, "design.yaml", &env).unwrap();
        let mut expected = DeploymentConfig::default();
        expected.cloud.api_url = Some("https://api.loopai.io".into());
        expected.cloud.api_key = Some("sk-test".into());
        assert_eq!(c, expected);

        let c = parse("cloud:\n  signalr_enabled: false\n").unwrap();
        assert!(!c.cloud.notifications);
    }

    #[test]
    fn every_key_parses() {
        let key = "ab".repeat(32);
        let text = format!(
            "\
runtime: {{mode: hybrid, deployment_id: dep-1}}
cloud:
  api_url: http://localhost:8080
  api_key: k
  notifications: false
  refresh_interval_sec: 30
  trusted_keys: [\"{key}\"]
  startup_wait_sec: 0
execution: {{worker_count: 8, timeout_ms: 50, max_input_bytes: 1024, fallback: oracle}}
sampling:
  strategy: [uncertainty, temporal, stratified]
  rate: 1
  uncertainty_threshold: 0.5
  temporal_boost_rate: 0
  temporal_half_life_sec: 60
  stratified_min_per_class: 0
  seed: 42
telemetry: {{enabled: false, upload_interval_sec: 5, batch_size: 10, privacy_mode: strict, spool_max_mb: 1}}
storage: {{data_dir: /tmp/x, retention_days: 1, max_size_gb: 0.5, durability: durable, on_full: drop, queue_capacity: 1}}
privacy: {{pii_detection: false, hash_inputs: true, sample_only: false}}
retention:
  executions: {{keep_days: 3, compress_after: 3}}
  validations: {{keep_days: 1}}
  artifacts: {{keep_versions: 1}}
validation: {{comparison: fuzzy, fuzzy_threshold: 0.8, workers: 1, queue_capacity: 16}}
oracle: {{kind: http, base_url: https://oracle.example, model: gpt-x, api_key_env: ORACLE_KEY, timeout_ms: 500, max_retries: 0}}
rollout:
  enabled: false
  stages: [0.05, 0.25, 1]
  min_samples_per_stage: 10
  min_validations_per_stage: 0
  confidence: 0.99
  max_error_rate_increase: 0.01
  max_abstain_rate_increase: 0.1
  max_p99_latency_ratio: 3
  p99_floor_ms: 0
  sticky_key: /user/id
  check_interval_ms: 250
"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.runtime.mode, RuntimeMode::Hybrid);
        assert_eq!(c.runtime.deployment_id.as_deref(), Some("dep-1"));
        assert_eq!(c.cloud.trusted_keys, [key]);
        assert_eq!(c.execution.fallback, Fallback::Oracle);
        assert_eq!(c.sampling.strategy.len(), 3);
        assert!(!c.sampling.strategy.contains(SamplingStrategy::Random));
        assert_eq!(c.sampling.rate, 1.0);
        assert_eq!(c.sampling.seed, Some(42));
        assert_eq!(c.telemetry.privacy_mode, PrivacyMode::Strict);
        assert_eq!(c.storage.max_size_gb, 0.5);
        assert_eq!(c.storage.durability, Durability::Durable);
        assert_eq!(c.storage.on_full, OnFull::Drop);
        assert_eq!(c.validation.comparison, ComparisonMode::Fuzzy);
        let oracle = c.oracle.as_ref().unwrap();
        assert_eq!(oracle.model, "gpt-x");
        assert_eq!(oracle.timeout_ms, 500);
        assert!(!c.rollout.enabled);
        assert_eq!(c.rollout.stages, [0.05, 0.25, 1.0]);
        assert_eq!(c.rollout.sticky_key.as_deref(), Some("/user/id"));
        assert_eq!(c.rollout.check_interval_ms, 250);

        // Serializing and parsing again gives the same config.
        let yaml = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(parse(&yaml).unwrap(), c);
        let yaml = serde_yaml_ng::to_string(&DeploymentConfig::default()).unwrap();
        assert_eq!(parse(&yaml).unwrap(), DeploymentConfig::default());
    }

    #[test]
    fn unknown_key_reports_its_path() {
        let msg = parse_err("sampling:\n  rtae: 0.1\n");
        assert!(
            msg.starts_with("deployment.yaml: sampling.rtae: unknown field `rtae`"),
            "{msg}"
        );
        let msg = parse_err("retention:\n  artifacts:\n    keep: 3\n");
        assert!(
            msg.starts_with("deployment.yaml: retention.artifacts.keep: unknown field `keep`"),
            "{msg}"
        );
        let msg = parse_err("sampling_rate: 0.1\n");
        assert!(
            msg.starts_with("deployment.yaml: sampling_rate: unknown field"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_reports_its_path() {
        assert_eq!(
            parse_err("execution:\n  timeout_ms: fast\n"),
            "deployment.yaml: execution.timeout_ms: invalid type: string \"fast\", expected u64"
        );
        let msg = parse_err("runtime:\n  mode: cloud\n");
        assert!(
            msg.starts_with("deployment.yaml: runtime.mode: unknown variant `cloud`"),
            "{msg}"
        );
        let msg = parse_err("sampling:\n  strategy: [random, lucky]\n");
        assert!(
            msg.starts_with("deployment.yaml: sampling.strategy[1]: unknown variant `lucky`"),
            "{msg}"
        );
        let msg = parse_err("cloud: [1, 2]\n");
        assert!(
            msg.starts_with("deployment.yaml: cloud: invalid type"),
            "{msg}"
        );
        let msg = parse_err("- a\n");
        assert!(
            msg.starts_with("deployment.yaml: invalid type: sequence"),
            "{msg}"
        );
    }

    #[test]
    fn yaml_syntax_error_names_line_and_column() {
        let msg = parse_err("runtime:\n  mode: edge\n bad: [\n");
        assert!(msg.starts_with("deployment.yaml: invalid YAML"), "{msg}");
        assert!(msg.contains("line "), "{msg}");
        assert!(msg.contains("column "), "{msg}");
    }

    #[test]
    fn env_substitution_replaces_variables_in_strings() {
        let env = env_of(&[("KEY", "secret"), ("HOST", "api.example"), ("EMPTY", "")]);
        let text = "\
cloud:
  api_url: https://${HOST}/v1
  api_key: ${KEY}
  trusted_keys: []
storage:
  data_dir: ${DATA:-/var/lib/loopai}
runtime:
  mode: ${MODE:-central}
  deployment_id: ${EMPTY:-fallback}-$$HOME-$x
";
        let c = DeploymentConfig::from_yaml_str_with_env(text, "d.yaml", &env).unwrap();
        assert_eq!(c.cloud.api_url.as_deref(), Some("https://api.example/v1"));
        assert_eq!(c.cloud.api_key.as_deref(), Some("secret"));
        assert_eq!(c.storage.data_dir, Path::new("/var/lib/loopai"));
        assert_eq!(c.runtime.mode, RuntimeMode::Central);
        assert_eq!(
            c.runtime.deployment_id.as_deref(),
            Some("fallback-$HOME-$x")
        );
    }

    #[test]
    fn env_variable_set_but_empty_substitutes_empty_without_default() {
        let env = env_of(&[("EMPTY", "")]);
        let c = DeploymentConfig::from_yaml_str_with_env(
            "cloud: {api_key: \"${EMPTY}\"}",
            "d.yaml",
            &env,
        )
        .unwrap();
        assert_eq!(c.cloud.api_key.as_deref(), Some(""));
    }

    #[test]
    fn missing_env_variable_names_key_and_variable() {
        let msg = parse_err("cloud:\n  api_key: ${LOOPAI_API_KEY}\n");
        assert_eq!(
            msg,
            "deployment.yaml: cloud.api_key: environment variable LOOPAI_API_KEY is not set"
        );
        let msg = parse_err("cloud:\n  trusted_keys: [\"${K1}\"]\n");
        assert_eq!(
            msg,
            "deployment.yaml: cloud.trusted_keys[0]: environment variable K1 is not set"
        );
    }

    #[test]
    fn malformed_env_reference_is_an_error() {
        let msg = parse_err("cloud:\n  api_key: ${OPEN\n");
        assert!(
            msg.starts_with("deployment.yaml: cloud.api_key: unterminated"),
            "{msg}"
        );
        let msg = parse_err("cloud:\n  api_key: ${1BAD}\n");
        assert!(
            msg.starts_with("deployment.yaml: cloud.api_key: invalid environment variable name"),
            "{msg}"
        );
    }

    #[test]
    fn env_substitution_produces_strings_only() {
        let env = env_of(&[("WORKERS", "8")]);
        let err = DeploymentConfig::from_yaml_str_with_env(
            "execution:\n  worker_count: ${WORKERS}\n",
            "d.yaml",
            &env,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "d.yaml: execution.worker_count: invalid type: string \"8\", expected usize"
        );
    }

    #[test]
    fn range_violations_name_the_key() {
        let cases = [
            (
                "sampling:\n  rate: 1.5\n",
                "sampling.rate: must be between 0 and 1, got 1.5",
            ),
            (
                "sampling:\n  rate: .nan\n",
                "sampling.rate: must be between 0 and 1, got NaN",
            ),
            (
                "sampling:\n  uncertainty_threshold: -0.1\n",
                "sampling.uncertainty_threshold: must be between 0 and 1, got -0.1",
            ),
            (
                "sampling:\n  temporal_boost_rate: 2\n",
                "sampling.temporal_boost_rate: must be between 0 and 1, got 2",
            ),
            (
                "sampling:\n  temporal_half_life_sec: 0\n",
                "sampling.temporal_half_life_sec: must be at least 1, got 0",
            ),
            (
                "sampling:\n  strategy: []\n",
                "sampling.strategy: must name at least one strategy",
            ),
            (
                "rollout:\n  stages: [0.1, 0.1, 1]\n",
                "rollout.stages[1]: must be greater than the stage before (0.1), got 0.1",
            ),
            (
                "rollout:\n  stages: [0.5, 1.5]\n",
                "rollout.stages[1]: must be greater than 0 and at most 1, got 1.5",
            ),
            ("rollout:\n  stages: []\n", "rollout.stages: must list at least one stage"),
            (
                "rollout:\n  confidence: 1\n",
                "rollout.confidence: must be greater than 0 and less than 1, got 1",
            ),
            (
                "rollout:\n  max_error_rate_increase: 0\n",
                "rollout.max_error_rate_increase: must be greater than 0 and at most 1, got 0",
            ),
            (
                "rollout:\n  min_samples_per_stage: 0\n",
                "rollout.min_samples_per_stage: must be at least 1, got 0",
            ),
            (
                "rollout:\n  sticky_key: user_id\n",
                "rollout.sticky_key: must be a JSON pointer starting with `/` (like `/user_id`), got \"user_id\"",
            ),
            (
                "rollout:\n  max_p99_latency_ratio: 0.5\n",
                "rollout.max_p99_latency_ratio: must be at least 1, got 0.5",
            ),
            (
                "execution:\n  worker_count: 0\n",
                "execution.worker_count: must be between 1 and 1024, got 0",
            ),
            (
                "execution:\n  worker_count: 1025\n",
                "execution.worker_count: must be between 1 and 1024, got 1025",
            ),
            (
                "execution:\n  timeout_ms: 0\n",
                "execution.timeout_ms: must be at least 1, got 0",
            ),
            (
                "execution:\n  max_input_bytes: 67108865\n",
                "execution.max_input_bytes: must be between 1 and 67108864, got 67108865",
            ),
            (
                "cloud:\n  api_url: ftp://x\n",
                "cloud.api_url: must be an http:// or https:// URL, got \"ftp://x\"",
            ),
            (
                "cloud:\n  refresh_interval_sec: 0\n",
                "cloud.refresh_interval_sec: must be at least 1, got 0",
            ),
            (
                "cloud:\n  trusted_keys: [abc]\n",
                "cloud.trusted_keys[0]: expected a 32-byte ed25519 public key in hex \
                 (64 digits) or base64",
            ),
            (
                "telemetry:\n  upload_interval_sec: 0\n",
                "telemetry.upload_interval_sec: must be at least 1, got 0",
            ),
            (
                "telemetry:\n  batch_size: 100001\n",
                "telemetry.batch_size: must be between 1 and 100000, got 100001",
            ),
            (
                "storage:\n  max_size_gb: 0\n",
                "storage.max_size_gb: must be greater than 0, got 0",
            ),
            (
                "storage:\n  queue_capacity: 0\n",
                "storage.queue_capacity: must be at least 1, got 0",
            ),
            (
                "retention:\n  executions: {keep_days: 2, compress_after: 3}\n",
                "retention.executions.compress_after: must be at most keep_days (2), got 3",
            ),
            (
                "retention:\n  artifacts: {keep_versions: 0}\n",
                "retention.artifacts.keep_versions: must be at least 1, got 0",
            ),
            (
                "validation:\n  fuzzy_threshold: 1.1\n",
                "validation.fuzzy_threshold: must be between 0 and 1, got 1.1",
            ),
            (
                "validation:\n  workers: 0\n",
                "validation.workers: must be between 1 and 1024, got 0",
            ),
            (
                "oracle:\n  model: m\n",
                "oracle.base_url: must be an http:// or https:// URL, got \"\"",
            ),
            (
                "oracle:\n  base_url: https://o\n",
                "oracle.model: required when `oracle` is set",
            ),
            (
                "runtime:\n  deployment_id: \"\"\n",
                "runtime.deployment_id: must be 1 to 256 bytes without control characters",
            ),
            (
                "telemetry:\n  spool_max_mb: 0\n",
                "telemetry.spool_max_mb: must be at least 1, got 0",
            ),
            (
                "telemetry:\n  request_timeout_sec: 0\n",
                "telemetry.request_timeout_sec: must be between 1 and 600, got 0",
            ),
            (
                "telemetry:\n  heartbeat_interval_sec: 86401\n",
                "telemetry.heartbeat_interval_sec: must be between 0 and 86400, got 86401",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_err(text),
                format!("deployment.yaml: {expected}"),
                "for {text:?}"
            );
        }
    }

    #[test]
    fn trusted_keys_accept_hex_and_base64() {
        use base64::Engine as _;
        let bytes = [7u8; 32];
        let hex_key = hex::encode(bytes);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let b64_no_pad = b64.trim_end_matches('=').to_string();
        for key in [&hex_key, &b64, &b64_no_pad] {
            assert_eq!(decode_ed25519_public_key(key), Some(bytes), "{key}");
        }
        assert_eq!(decode_ed25519_public_key(&hex_key[..62]), None);
        assert_eq!(
            decode_ed25519_public_key(&base64::engine::general_purpose::STANDARD.encode([1u8; 31])),
            None
        );
    }

    #[test]
    fn json_value_loads_like_yaml() {
        let value = serde_json::json!({
            "runtime": {"mode": "central"},
            "sampling": {"strategy": "uncertainty", "rate": 0.2, "seed": 7},
            "cloud": {"api_key": "${TOKEN}"},
        });
        let env = env_of(&[("TOKEN", "t")]);
        let c = DeploymentConfig::from_json_value_with_env(&value, "config_json", &env).unwrap();
        assert_eq!(c.runtime.mode, RuntimeMode::Central);
        assert_eq!(c.sampling.rate, 0.2);
        assert_eq!(c.sampling.seed, Some(7));
        assert_eq!(c.cloud.api_key.as_deref(), Some("t"));
        assert!(c.sampling.strategy.contains(SamplingStrategy::Uncertainty));

        assert_eq!(
            DeploymentConfig::from_json_value(&serde_json::Value::Null, "x").unwrap(),
            DeploymentConfig::default()
        );
        let err = DeploymentConfig::from_json_value(
            &serde_json::json!({"execution": {"timeout_ms": "fast"}}),
            "config_json",
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "config_json: execution.timeout_ms: invalid type: string \"fast\", expected u64"
        );
        let err = DeploymentConfig::from_json_value(
            &serde_json::json!({"sampling": {"rate": -1}}),
            "config_json",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config_json: sampling.rate: must be between 0 and 1, got -1"
        );
    }

    #[test]
    fn deeply_nested_json_is_rejected_without_overflow() {
        let mut value = serde_json::json!(1);
        for _ in 0..200 {
            value = serde_json::json!({ "runtime": value });
        }
        let err = DeploymentConfig::from_json_value(&value, "deep").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn load_for_data_dir_without_file_uses_defaults_and_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let c = DeploymentConfig::load_for_data_dir_with_env(dir.path(), &env_of(&[])).unwrap();
        let mut expected = DeploymentConfig::default();
        expected.storage.data_dir = dir.path().to_path_buf();
        assert_eq!(c, expected);
    }

    #[test]
    fn load_for_data_dir_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let file = dir.path().join("config/deployment.yaml");
        std::fs::write(&file, "execution:\n  worker_count: 2\n").unwrap();
        let c = DeploymentConfig::load_for_data_dir_with_env(dir.path(), &env_of(&[])).unwrap();
        assert_eq!(c.execution.worker_count, 2);
        assert_eq!(c.storage.data_dir, dir.path());

        std::fs::write(&file, "storage:\n  data_dir: /elsewhere\n").unwrap();
        let c = DeploymentConfig::load_for_data_dir_with_env(dir.path(), &env_of(&[])).unwrap();
        assert_eq!(c.storage.data_dir, Path::new("/elsewhere"));

        std::fs::write(&file, "sampling:\n  rate: 2\n").unwrap();
        let err =
            DeploymentConfig::load_for_data_dir_with_env(dir.path(), &env_of(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: sampling.rate: must be between 0 and 1, got 2",
                file.display()
            )
        );
    }

    #[test]
    fn from_file_reports_a_missing_file_as_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.yaml");
        let err = DeploymentConfig::from_file(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read config file", path.display())),
            "{err}"
        );

        std::fs::write(&path, "telemetry:\n  enabled: false\n").unwrap();
        let c = DeploymentConfig::from_file(&path).unwrap();
        assert!(!c.telemetry.enabled);
    }

    #[test]
    fn debug_output_redacts_the_api_key() {
        let mut c = DeploymentConfig::default();
        c.cloud.api_key = Some("sk-very-secret".into());
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn config_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DeploymentConfig>();
    }
}
