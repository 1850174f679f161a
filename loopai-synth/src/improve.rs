//! Edge-local improvement: learn a new program from the task's specification plus the
//! answers the oracle gave on sampled executions, all read from the local data directory.
//! No data leaves the machine.
//!
//! The specification a program was synthesized from is kept beside its versions, in
//! `<data_dir>/artifacts/<task>/spec.json` ([`save_spec`], written by
//! [`synthesize_and_install`](crate::synthesize_and_install)). Validation records
//! (`datasets/<task>/validations/`) carry the oracle's answer for an execution id; the
//! execution log (`datasets/<task>/executions/`) carries that execution's input. Joined,
//! they are new labelled examples ([`oracle_labels`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use loopai_core::{
    ArtifactMetadata, ArtifactStore, DatasetReader, Error, ErrorKind, Executor, ProgramLimits,
    Result,
};
use serde_json::Value;

use crate::{synthesize, Example, SynthOptions, Synthesis, TaskSpec};

/// File name of the stored specification in a task's artifact directory.
pub const SPEC_FILE: &str = "spec.json";

/// `<data_dir>/artifacts/<task>/spec.json`.
pub fn spec_path(data_dir: &Path, task: &str) -> Result<PathBuf> {
    Ok(ArtifactStore::open(data_dir, task)?
        .task_dir()
        .join(SPEC_FILE))
}

/// Stores `spec` as the specification of its task in `data_dir` (atomically: a reader
/// sees the old or the new file, never a part).
pub fn save_spec(data_dir: &Path, spec: &TaskSpec) -> Result<()> {
    let path = spec_path(data_dir, &spec.name)?;
    let bytes = serde_json::to_vec_pretty(spec)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("serializing the spec: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(".{SPEC_FILE}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })
}

/// The stored specification of `task` ([`save_spec`]).
///
/// Errors: [`ErrorKind::InvalidInput`] when there is none (the task was not synthesized
/// here: give the spec explicitly) or it does not parse.
pub fn load_spec(data_dir: &Path, task: &str) -> Result<TaskSpec> {
    let path = spec_path(data_dir, task)?;
    if !path.exists() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{}: no stored specification for task {task:?} (it is written by `loopai synth`; pass the spec explicitly)",
                path.display()
            ),
        ));
    }
    TaskSpec::from_path(&path)
}

/// The oracle's answers found in the local dataset, as examples, and what was skipped.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OracleLabels {
    /// One example per distinct input, labelled with the oracle's latest answer.
    pub examples: Vec<Example>,
    /// Validation records read.
    pub validations: usize,
    /// Of those, how many disagreed with the program.
    pub mismatches: usize,
    /// Validations whose execution is not in the log any more (retention) or not yet.
    pub missing_execution: usize,
    /// Executions logged as keyed hashes (`privacy.hash_inputs`): no text to learn from.
    pub hashed_inputs: usize,
    /// Oracle answers that are not one of the task's labels.
    pub not_allowed: usize,
}

/// Joins the validation records of `task` with the logged inputs of their executions:
/// every input the oracle answered becomes an example labelled with its answer (the
/// latest, when an input was validated more than once). Only answers that are labels of
/// `spec` are kept.
pub fn oracle_labels(data_dir: &Path, task: &str, spec: &TaskSpec) -> Result<OracleLabels> {
    let labels: HashSet<String> = spec.labels()?.into_iter().collect();
    // Encrypted logs (`storage.encryption`) are read with the data dir's keys.
    let config = loopai_core::DeploymentConfig::load_for_data_dir(data_dir)?;
    let reader = DatasetReader::new(data_dir, task).with_config(&config)?;
    let mut out = OracleLabels::default();
    let mut answers: HashMap<uuid::Uuid, String> = HashMap::new();
    let days = reader.validation_days()?;
    if let (Some(&from), Some(&to)) = (days.first(), days.last()) {
        for record in reader.validations(from, to)? {
            let record = record?;
            out.validations += 1;
            out.mismatches += usize::from(!record.matched);
            match record.oracle_output.as_str() {
                Some(label) if labels.contains(label) => {
                    answers.insert(record.execution_id, label.to_owned());
                }
                _ => out.not_allowed += 1,
            }
        }
    }
    let mut found = 0usize;
    // Distinct inputs by canonical text, in first-seen order; the latest answer wins.
    let mut index: HashMap<String, usize> = HashMap::new();
    let days = reader.execution_days()?;
    if let (Some(&from), Some(&to)) = (days.first(), days.last()) {
        for record in reader.executions(from, to)? {
            let record = record?;
            let Some(label) = answers.get(&record.execution_id) else {
                continue;
            };
            found += 1;
            if !record.input.is_object() {
                out.hashed_inputs += 1;
                continue;
            }
            let key = record.input.to_string();
            let example = Example {
                input: record.input,
                output: Value::String(label.clone()),
            };
            match index.get(&key) {
                Some(&i) => out.examples[i] = example,
                None => {
                    index.insert(key, out.examples.len());
                    out.examples.push(example);
                }
            }
        }
    }
    out.missing_execution = answers.len().saturating_sub(found);
    Ok(out)
}

/// The result of [`improve`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Improvement {
    /// The new program's synthesis (candidates, cross-validated accuracy, ...).
    pub synthesis: Synthesis,
    /// The installed (not activated) version.
    pub installed: ArtifactMetadata,
    /// The oracle-labelled examples it learnt from, beside the spec's.
    pub labels: OracleLabels,
    /// The active version when `improve` ran.
    pub previous_version: Option<u32>,
    /// Accuracy of the previously active program on the oracle-labelled examples.
    pub previous_accuracy: Option<f64>,
    /// Accuracy of the new program on the same examples (which it was trained on).
    pub new_accuracy: f64,
}

/// Learns a new program for `task` from its stored specification plus the oracle's
/// answers in the local dataset, and installs it as a new, inactive version: the caller
/// starts its canary (`Runtime::begin_rollout`) or activates it.
///
/// Errors: [`ErrorKind::InvalidInput`] when there is no stored specification or no
/// oracle-labelled execution to learn from (the message says which), and any error of
/// [`synthesize`] or of the artifact cache.
pub fn improve(data_dir: &Path, task: &str, options: &SynthOptions) -> Result<Improvement> {
    let spec = load_spec(data_dir, task)?;
    let labels = oracle_labels(data_dir, task, &spec)?;
    if labels.examples.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "task {task:?}: no oracle-labelled execution to learn from ({} validation records, {} without their execution, {} with hashed inputs, {} with answers that are not labels)",
                labels.validations, labels.missing_execution, labels.hashed_inputs, labels.not_allowed
            ),
        ));
    }
    let store = ArtifactStore::open(data_dir, task)?;
    let active = store.load_active()?;
    let previous_version = active.as_ref().map(|a| a.metadata.version);
    let previous_accuracy = match &active {
        Some(artifact) => {
            let executor = Executor::from_artifact(artifact, &ProgramLimits::default())?;
            Some(accuracy(&labels.examples, |input| {
                executor.execute(input).ok().map(|e| e.outcome.output)
            }))
        }
        None => None,
    };
    let mut grown = spec.clone();
    grown.examples.extend(labels.examples.iter().cloned());
    let synthesis = synthesize(&grown, options)?;
    let program = loopai_core::Program::from_json(&synthesis.program_json)
        .map_err(|e| e.context("the synthesized program does not load (a loopai-synth bug)"))?;
    let new_accuracy = accuracy(&labels.examples, |input| {
        program.evaluate(input).ok().map(|o| o.output)
    });
    let mut meta = synthesis.new_artifact();
    meta.extra
        .insert("input_schema".into(), spec.input_schema.clone());
    meta.extra
        .insert("output_schema".into(), spec.output_schema.clone());
    meta.extra.insert(
        "improved_from".into(),
        serde_json::json!({
            "version": previous_version,
            "oracle_examples": labels.examples.len(),
            "spec_examples": spec.examples.len(),
        }),
    );
    let installed = store.install(&synthesis.program_json, meta, false)?;
    Ok(Improvement {
        synthesis,
        installed,
        labels,
        previous_version,
        previous_accuracy,
        new_accuracy,
    })
}

fn accuracy(examples: &[Example], predict: impl Fn(&Value) -> Option<Value>) -> f64 {
    let correct = examples
        .iter()
        .filter(|e| predict(&e.input).as_ref() == Some(&e.output))
        .count();
    correct as f64 / examples.len().max(1) as f64
}

/// [`improve`] for a live [`Runtime`](loopai_core::Runtime): learns from its data
/// directory and starts the new version's canary rollout on it.
///
/// ```no_run
/// use loopai_synth::{RuntimeImprove, SynthOptions};
/// # fn f(runtime: &loopai_core::Runtime) -> loopai_core::Result<()> {
/// let improvement = runtime.improve(&SynthOptions::default())?;
/// println!("canary v{}", improvement.installed.version);
/// # Ok(()) }
/// ```
pub trait RuntimeImprove {
    /// Flushes the runtime (so the latest validations are on disk; a flush that times out
    /// waiting for telemetry uploads is not an error here), runs [`improve`] on
    /// its data directory and task, and starts the new version's canary
    /// ([`Runtime::begin_rollout`](loopai_core::Runtime::begin_rollout)).
    fn improve(&self, options: &SynthOptions) -> Result<Improvement>;
}

impl RuntimeImprove for loopai_core::Runtime {
    fn improve(&self, options: &SynthOptions) -> Result<Improvement> {
        // A flush that times out on telemetry uploads (an offline deployment) has still
        // written the execution log: learn from what is on disk.
        if let Err(e) = self.flush(std::time::Duration::from_secs(30)) {
            if e.kind() != ErrorKind::Timeout {
                return Err(e);
            }
        }
        let improvement = improve(self.data_dir(), self.task(), options)?;
        self.begin_rollout(improvement.installed.version)?;
        Ok(improvement)
    }
}
