//! The improvement engine: watches the validations deployments report, and when a task's
//! program fails the oracle too often, learns a new program from the task's specification
//! plus the failing cases the oracle labelled (and the validated cases it got right, so the
//! new program does not unlearn them), and publishes it.
//!
//! Inputs, all under the server's directory `D`:
//!
//! * `D/telemetry/<task>/*.jsonl` — the stored telemetry batches (`loopai.telemetry/1`):
//!   `sampled_validations` say, per program version, whether the program matched the
//!   oracle, and with the oracle's answer (balanced and permissive modes);
//!   `execution_summaries` carry the inputs of sampled executions (PII redacted);
//! * `D/specs/<task>.json` — the task's specification (a `TaskSpecification` with its
//!   examples), placed by the operator or uploaded by a publisher.
//!
//! State and output:
//!
//! * `D/improvement/<task>.json` — the attempts so far (atomically rewritten);
//! * `D/escalations.jsonl` — one JSON line per escalation: after
//!   [`ImprovementConfig::max_attempts`] consecutive unsuccessful improvements the engine
//!   writes the failing examples there for a human and stops regenerating the task until
//!   its specification changes (its sha256 differs from the one escalated).
//!
//! A server with a database ([`CloudServerBuilder::database`](crate::CloudServerBuilder::database))
//! reads the validations from its tables and keeps the attempts and escalations there
//! instead, and one pass runs at a time across the instances sharing it. The
//! specifications live in the database too: every instance imports its own `D/specs/`
//! files at start and, at each of its passes (run or skipped), the files that changed, so
//! the pass reads the same specifications whichever instance runs it.
//!
//! An **attempt** is started for the newest version that has at least
//! [`ImprovementConfig::min_samples`] validations with a failure rate (mismatches over
//! validations) above [`ImprovementConfig::failure_threshold`]. It is **unsuccessful**
//! when the regenerated program's cross-validated accuracy does not reach
//! `1 - failure_threshold` (nothing is published), when the version it published later
//! crosses the threshold itself, or when that version does not gather `min_samples`
//! validations within [`ImprovementConfig::pending_timeout`] (deployments rolled it back
//! early); it is successful when that version gathers `min_samples` validations under the
//! threshold. A version whose attempts were all unsuccessful is tried again (with the
//! validations gathered since), each try counting towards the escalation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use loopai_core::{ArtifactStore, NewArtifact};
use loopai_synth::{Example, SynthOptions, TaskSpec};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::storage::file::FileImprovement;
use crate::storage::{sha256_hex, Attempt, ImprovementBackend, TaskState, VersionStats};

/// Settings of the [`ImprovementEngine`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ImprovementConfig {
    /// Failure rate above which a version is improved (the design's
    /// `improvement.failure_threshold`, default 0.15).
    pub failure_threshold: f64,
    /// Validations a version needs before its failure rate is trusted (default 100).
    pub min_samples: u64,
    /// Consecutive unsuccessful attempts before escalating to a human (default 3).
    pub max_attempts: u32,
    /// Seed of the synthesis (default 0).
    pub seed: u64,
    /// How long a published version may take to gather `min_samples` validations before
    /// its attempt counts as unsuccessful (default 24 h).
    pub pending_timeout: std::time::Duration,
}

impl Default for ImprovementConfig {
    fn default() -> Self {
        ImprovementConfig {
            failure_threshold: 0.15,
            min_samples: 100,
            max_attempts: 3,
            seed: 0,
            pending_timeout: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

impl ImprovementConfig {
    /// Sets [`failure_threshold`](Self::failure_threshold).
    #[must_use]
    pub fn with_failure_threshold(mut self, threshold: f64) -> Self {
        self.failure_threshold = threshold;
        self
    }

    /// Sets [`min_samples`](Self::min_samples).
    #[must_use]
    pub fn with_min_samples(mut self, n: u64) -> Self {
        self.min_samples = n;
        self
    }

    /// Sets [`pending_timeout`](Self::pending_timeout).
    #[must_use]
    pub fn with_pending_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.pending_timeout = timeout;
        self
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    #[must_use]
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    fn validate(&self) -> Result<()> {
        if !(self.failure_threshold > 0.0 && self.failure_threshold < 1.0) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "improvement.failure_threshold: must be between 0 and 1 (exclusive), got {}",
                    self.failure_threshold
                ),
            ));
        }
        if self.min_samples == 0 || self.max_attempts == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "improvement: min_samples and max_attempts must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What one pass of the engine did for a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ImprovementAction {
    /// A new version was learnt and published.
    Published {
        /// The task.
        task: String,
        /// The failing version.
        from_version: u32,
        /// The published version.
        version: u32,
        /// The failing version's failure rate.
        failure_rate: f64,
        /// Oracle-labelled cases (the failing ones and the validated ones) added to the
        /// spec's examples.
        oracle_examples: usize,
        /// The new program's cross-validated accuracy.
        cv_accuracy: f64,
    },
    /// An attempt did not produce a good enough program; nothing was published.
    Unsuccessful {
        /// The task.
        task: String,
        /// The failing version.
        from_version: u32,
        /// Why.
        reason: String,
    },
    /// The task was escalated to a human (see `escalations.jsonl`).
    Escalated {
        /// The task.
        task: String,
        /// Consecutive unsuccessful attempts.
        attempts: u32,
    },
}

/// Publishes a program as the task's next version and notifies deployments; returns the
/// version. The default installs into `D/artifacts/<task>/` (the repository's layout).
pub type PublishFn<'a> = dyn Fn(&str, &[u8], NewArtifact) -> Result<u32> + 'a;

/// The improvement engine of a cloud directory. See the module documentation.
#[derive(Debug, Clone)]
pub struct ImprovementEngine {
    dir: PathBuf,
    config: ImprovementConfig,
    storage: Arc<dyn ImprovementBackend>,
}

impl ImprovementEngine {
    /// An engine for the server directory `dir`.
    ///
    /// Errors: [`ErrorKind::Config`] for an invalid `config`.
    pub fn new(dir: impl Into<PathBuf>, config: ImprovementConfig) -> Result<ImprovementEngine> {
        let dir = dir.into();
        let storage = Arc::new(FileImprovement::new(dir.clone()));
        ImprovementEngine::with_storage(dir, config, storage)
    }

    /// An engine reading the specifications under `dir` and its inputs and state from
    /// `storage` (the server's database when it has one).
    pub(crate) fn with_storage(
        dir: PathBuf,
        config: ImprovementConfig,
        storage: Arc<dyn ImprovementBackend>,
    ) -> Result<ImprovementEngine> {
        config.validate()?;
        Ok(ImprovementEngine {
            dir,
            config,
            storage,
        })
    }

    /// One pass over every task with telemetry, publishing through `publish`. Tasks
    /// without a specification are skipped (logged once per pass).
    ///
    /// With a database shared by several instances, one pass runs at a time: a pass that
    /// finds another instance's in progress does nothing.
    pub fn run_once(&self, publish: &PublishFn<'_>) -> Result<Vec<ImprovementAction>> {
        Ok(self.run_pass(publish)?.unwrap_or_default())
    }

    /// [`run_once`](Self::run_once), telling a pass skipped because another instance's
    /// runs (`None`) from a pass that ran.
    pub(crate) fn run_pass(
        &self,
        publish: &PublishFn<'_>,
    ) -> Result<Option<Vec<ImprovementAction>>> {
        let mut actions = Vec::new();
        // Every instance brings its specification files into the shared storage, whether or
        // not it runs the pass.
        if let Err(e) = self.storage.import_specs(&self.dir) {
            log::warn!("improvement: importing the specifications: {e}");
        }
        // One pass at a time across the instances sharing the storage.
        let Some(_lock) = self.storage.lock_pass()? else {
            log::debug!("improvement: a pass runs on another instance; skipped");
            return Ok(None);
        };
        for task in self.storage.tasks()? {
            match self.improve_task(&task, publish) {
                Ok(Some(action)) => actions.push(action),
                Ok(None) => {}
                Err(e) => log::warn!("improvement: task {task:?}: {e}"),
            }
        }
        Ok(Some(actions))
    }

    /// Installs into `D/artifacts/<task>/` with the local artifact store, activated: for
    /// running the engine without a server (offline, tests). It writes no repository
    /// archive, versions-list entry, signature or notification; a running server publishes
    /// through the repository instead ([`CloudServerBuilder::improvement`](crate::CloudServerBuilder::improvement)).
    pub fn publish_locally(&self, task: &str, program: &[u8], meta: NewArtifact) -> Result<u32> {
        let store = ArtifactStore::open(&self.dir, task).map_err(from_core)?;
        let installed = store.install(program, meta, true).map_err(from_core)?;
        Ok(installed.version)
    }

    fn improve_task(
        &self,
        task: &str,
        publish: &PublishFn<'_>,
    ) -> Result<Option<ImprovementAction>> {
        let Some(stored) = self.storage.spec(task)? else {
            log::debug!("improvement: task {task:?} has no specification: skipped");
            return Ok(None);
        };
        let spec_sha = sha256_hex(&stored.body);
        let spec = TaskSpec::from_json(&stored.body)
            .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", stored.place)))?;
        let mut state = self.storage.read_state(task)?;
        if state.escalated_spec_sha256.as_deref() == Some(spec_sha.as_str()) {
            return Ok(None);
        }
        if state.escalated_spec_sha256.is_some() {
            // The specification changed since the escalation: start afresh.
            log::info!("improvement: task {task:?}: specification updated, resuming");
            state = TaskState::default();
        }
        let stats = self.version_stats(task, &spec)?;
        let rate = |s: &VersionStats| s.mismatches as f64 / s.validations.max(1) as f64;
        // Settle the pending attempt: by its version's validations once there are enough,
        // or as unsuccessful when they did not come within `pending_timeout` (deployments
        // rolled the version back early, or stopped sampling it).
        if let Some(last) = state.attempts.last_mut() {
            if last.outcome == "pending" {
                let validations = last
                    .version
                    .and_then(|v| stats.get(&v))
                    .map_or(0, |s| s.validations);
                let settled = match last.version.and_then(|v| stats.get(&v)) {
                    Some(s) if s.validations >= self.config.min_samples => {
                        Some(if rate(s) > self.config.failure_threshold {
                            ("unsuccessful", None)
                        } else {
                            ("successful", None)
                        })
                    }
                    _ if age(&last.at) >= self.config.pending_timeout => Some((
                        "unsuccessful",
                        Some(format!(
                            "v{} gathered {validations} validations (of {}) within {} s",
                            last.version.unwrap_or_default(),
                            self.config.min_samples,
                            self.config.pending_timeout.as_secs()
                        )),
                    )),
                    _ => None,
                };
                if let Some((outcome, reason)) = settled {
                    last.outcome = outcome.into();
                    if reason.is_some() {
                        last.reason = reason;
                    }
                    self.storage.write_state(task, &state)?;
                }
            }
        }
        if state.consecutive_unsuccessful() >= self.config.max_attempts {
            return self.escalate(task, &spec_sha, &mut state, &stats);
        }
        // The newest version with enough validations over the threshold, not yet tried.
        let Some((&version, failing)) = stats.iter().rev().find(|(_, s)| {
            s.validations >= self.config.min_samples && rate(s) > self.config.failure_threshold
        }) else {
            return Ok(None);
        };
        // Tried already, unless every attempt from it was unsuccessful (a retry learns from
        // the validations gathered since, and counts towards the escalation).
        if state
            .attempts
            .iter()
            .any(|a| a.from_version == version && a.outcome != "unsuccessful")
            || state
                .attempts
                .last()
                .is_some_and(|a| a.outcome == "pending")
        {
            return Ok(None);
        }
        let failure_rate = rate(failing);
        // The failing cases, and the cases the version got right too: learning from the
        // failures alone would unlearn what the version did well.
        let oracle_examples: Vec<Example> = failing
            .labelled
            .iter()
            .map(|example| Example {
                input: example["input"].clone(),
                output: example["output"].clone(),
            })
            .collect();
        let mut grown = spec.clone();
        grown.examples.extend(oracle_examples.iter().cloned());
        let options = SynthOptions::default().with_seed(self.config.seed);
        let mut attempt = Attempt {
            at: now_rfc3339(),
            from_version: version,
            failure_rate,
            samples: failing.validations,
            version: None,
            outcome: "unsuccessful".into(),
            reason: None,
        };
        let action = match loopai_synth::synthesize(&grown, &options) {
            Ok(synthesis) if synthesis.cv_accuracy >= 1.0 - self.config.failure_threshold => {
                let mut meta = synthesis.new_artifact();
                meta.extra
                    .insert("input_schema".into(), spec.input_schema.clone());
                meta.extra
                    .insert("output_schema".into(), spec.output_schema.clone());
                meta.extra.insert(
                    "improved_from".into(),
                    serde_json::json!({"version": version, "failure_rate": failure_rate,
                        "oracle_examples": oracle_examples.len()}),
                );
                let published = publish(task, &synthesis.program_json, meta)?;
                attempt.version = Some(published);
                attempt.outcome = "pending".into();
                log::info!(
                    "improvement: task {task:?}: v{version} failed {:.1}% of {} validations; published v{published} (cv accuracy {:.4}, {} oracle examples)",
                    failure_rate * 100.0,
                    failing.validations,
                    synthesis.cv_accuracy,
                    oracle_examples.len()
                );
                ImprovementAction::Published {
                    task: task.to_owned(),
                    from_version: version,
                    version: published,
                    failure_rate,
                    oracle_examples: oracle_examples.len(),
                    cv_accuracy: synthesis.cv_accuracy,
                }
            }
            Ok(synthesis) => {
                let reason = format!(
                    "cross-validated accuracy {:.4} below {:.4}",
                    synthesis.cv_accuracy,
                    1.0 - self.config.failure_threshold
                );
                attempt.reason = Some(reason.clone());
                ImprovementAction::Unsuccessful {
                    task: task.to_owned(),
                    from_version: version,
                    reason,
                }
            }
            Err(e) => {
                let reason = format!("synthesis failed: {e}");
                attempt.reason = Some(reason.clone());
                ImprovementAction::Unsuccessful {
                    task: task.to_owned(),
                    from_version: version,
                    reason,
                }
            }
        };
        state.attempts.push(attempt);
        self.storage.write_state(task, &state)?;
        if state.consecutive_unsuccessful() >= self.config.max_attempts {
            return self.escalate(task, &spec_sha, &mut state, &stats);
        }
        Ok(Some(action))
    }

    fn escalate(
        &self,
        task: &str,
        spec_sha: &str,
        state: &mut TaskState,
        stats: &BTreeMap<u32, VersionStats>,
    ) -> Result<Option<ImprovementAction>> {
        let attempts = state.consecutive_unsuccessful();
        let failing: Vec<&Value> = stats
            .values()
            .rev()
            .flat_map(|s| s.failing.iter().map(|(_, e)| e))
            .take(100)
            .collect();
        let record = serde_json::json!({
            "task_id": task,
            "escalated_at": now_rfc3339(),
            "consecutive_unsuccessful_attempts": attempts,
            "spec_sha256": spec_sha,
            "attempts": state.attempts,
            "failing_examples": failing,
        });
        let place = self.storage.escalate(task, &record)?;
        state.escalated_spec_sha256 = Some(spec_sha.to_owned());
        self.storage.write_state(task, state)?;
        log::warn!(
            "improvement: task {task:?} escalated after {attempts} unsuccessful attempts; see {place} (regeneration resumes when specs/{task}.json changes)"
        );
        Ok(Some(ImprovementAction::Escalated {
            task: task.to_owned(),
            attempts,
        }))
    }

    /// Validation totals per program version of `task`, with the validated cases whose
    /// input is known and whose oracle answer is one of the labels.
    fn version_stats(&self, task: &str, spec: &TaskSpec) -> Result<BTreeMap<u32, VersionStats>> {
        let allowed: Option<Vec<Value>> = spec
            .output_schema
            .get("enum")
            .and_then(Value::as_array)
            .cloned();
        self.storage.version_stats(task, allowed.as_deref())
    }
}

fn from_core(e: loopai_core::Error) -> Error {
    let kind = match e.kind() {
        loopai_core::ErrorKind::Io => ErrorKind::Io,
        loopai_core::ErrorKind::Timeout => ErrorKind::Timeout,
        loopai_core::ErrorKind::Internal => ErrorKind::Internal,
        _ => ErrorKind::Config,
    };
    Error::new(kind, e.to_string())
}

/// Time since an RFC 3339 instant (zero when it does not parse or is in the future).
fn age(at: &str) -> std::time::Duration {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| time::OffsetDateTime::now_utc() - t)
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .unwrap_or_default()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
