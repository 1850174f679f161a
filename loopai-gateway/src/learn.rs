//! Learning a task's program from the spec examples and the oracle's labels, in the
//! background; and re-estimating its threshold as calibration pairs arrive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use loopai_core::{ArtifactStore, Error, ErrorKind, Program, Result};
use loopai_synth::{synthesize, Example, SynthOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::calibrate::choose_threshold;
use crate::calls::{self, CallRecord};
use crate::gateway::{job_of, Calibration, Inner, Job, JobRx, Task};

/// The learning state kept beside a task's versions: `artifacts/<task>/gateway.json`.
pub(crate) const STORED_FILE: &str = "gateway.json";

/// What a learning pass did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LearnReport {
    /// The task.
    pub task: String,
    /// Labels (spec examples + oracle labels) when the pass started.
    pub labels: u64,
    /// Distinct labelled inputs trained on.
    pub trained_on: usize,
    /// Oracle labels scored out of sample (cross-fitted: each by a program learnt
    /// without its fold).
    pub cross_fitted: usize,
    /// Their agreement with the oracle.
    pub agreement: Option<f64>,
    /// The running program's cross-fitted agreement, from when it was learnt.
    pub previous_agreement: Option<f64>,
    /// The version installed.
    pub version: u32,
    /// Whether it was activated (the first program, or one at least as good).
    pub activated: bool,
    /// The threshold after the pass (null: every call is forwarded).
    pub threshold: Option<f64>,
}

/// `artifacts/<task>/gateway.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// Labels at the start of the last learning pass.
    pub(crate) learned_at: u64,
    /// The version the cross-fitted pairs belong to.
    pub(crate) version: u32,
    /// `(confidence, agreed)` of that version's cross-fitted pairs.
    pub(crate) holdout: Vec<(f64, bool)>,
    /// The threshold last chosen (for `loopai tasks list`; recomputed at start).
    #[serde(default)]
    pub(crate) threshold: Option<f64>,
}

fn stored_path(data_dir: &Path, task: &str) -> Result<PathBuf> {
    Ok(ArtifactStore::open(data_dir, task)?
        .task_dir()
        .join(STORED_FILE))
}

impl Stored {
    pub(crate) fn load(data_dir: &Path, task: &str) -> Result<Stored> {
        let path = stored_path(data_dir, task)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::new(ErrorKind::Artifact, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn save(&self, data_dir: &Path, task: &str) -> Result<()> {
        let path = stored_path(data_dir, task)?;
        let bytes = serde_json::to_vec(self)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("gateway.json: {e}")))?;
        let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
        std::fs::write(&tmp, bytes)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("renaming {}", tmp.display()), e)
        })
    }
}

/// Lowers the calling thread's priority (Linux: per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers; `who = 0` is the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

pub(crate) fn learner_loop(inner: &Weak<Inner>, rx: &JobRx) {
    lower_priority();
    while let Ok(msg) = rx.recv() {
        let Job::Task(index) = job_of(msg) else { break };
        let Some(inner) = inner.upgrade() else { break };
        if inner.is_closed() {
            break;
        }
        let task = Arc::clone(&inner.tasks[index]);
        task.learning.store(true, Ordering::Release);
        task.learn_queued.store(false, Ordering::Release);
        if let Err(e) = run_pass(&inner, &task) {
            log::warn!("loopai gateway: learning {} failed: {e}", task.name);
        }
        task.learning.store(false, Ordering::Release);
    }
}

pub(crate) fn calibrator_loop(inner: &Weak<Inner>, rx: &JobRx) {
    while let Ok(msg) = rx.recv() {
        let Job::Task(index) = job_of(msg) else { break };
        let Some(inner) = inner.upgrade() else { break };
        let task = Arc::clone(&inner.tasks[index]);
        recalibrate(&inner, &task);
        inner.calibrating.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Re-estimates the threshold of the task's running version from its pairs.
pub(crate) fn recalibrate(inner: &Inner, task: &Task) {
    let (pairs, version) = {
        let cal = task.calibration.lock();
        (cal.pairs.clone(), cal.version)
    };
    if version == 0 {
        return;
    }
    let estimate = choose_threshold(&pairs, task.budget);
    {
        let mut cal = task.calibration.lock();
        if cal.version != version {
            return;
        }
        cal.estimate = Some(estimate);
    }
    let before = task.threshold();
    task.set_threshold(estimate.threshold);
    if before != estimate.threshold {
        log::info!(
            "loopai gateway: {}: threshold {:?} -> {:?} ({} of {} pairs disagree, upper bound {:.4}, budget {})",
            task.name,
            before,
            estimate.threshold,
            estimate.disagreed,
            estimate.answered,
            estimate.upper,
            task.budget
        );
        if let Ok(mut stored) = Stored::load(&inner.data_dir, &task.name) {
            stored.threshold = estimate.threshold;
            if let Err(e) = stored.save(&inner.data_dir, &task.name) {
                log::warn!("loopai gateway: {e}");
            }
        }
    }
}

/// The oracle's labels of the call log as examples: one per distinct input, the latest
/// answer.
fn oracle_examples(records: Vec<CallRecord>) -> Vec<Example> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Example> = Vec::new();
    for r in records {
        let Some(label) = r.label else { continue };
        let key = r.input.to_string();
        match index.get(&key) {
            Some(&i) => out[i].output = Value::String(label),
            None => {
                index.insert(key, out.len());
                out.push(Example {
                    input: r.input,
                    output: Value::String(label),
                });
            }
        }
    }
    out
}

/// `(confidence, agreed)` of `program` on `rows`.
fn score(program: &Program, rows: &[Example]) -> Vec<(f64, bool)> {
    rows.iter()
        .map(|ex| match program.evaluate(&ex.input) {
            Ok(o) => (o.confidence, !o.abstained && o.output == ex.output),
            Err(_) => (0.0, false),
        })
        .collect()
}

fn agreement(pairs: &[(f64, bool)]) -> Option<f64> {
    (!pairs.is_empty()).then(|| pairs.iter().filter(|p| p.1).count() as f64 / pairs.len() as f64)
}

/// One learning pass (see `docs/gateway.md`).
pub(crate) fn run_pass(inner: &Inner, task: &Task) -> Result<LearnReport> {
    let _pass = task.learn_lock.lock();
    let result = pass(inner, task);
    *task.last_learn.lock() = Some(match &result {
        Ok(report) => Ok(report.clone()),
        Err(e) => Err(e.to_string()),
    });
    result
}

fn pass(inner: &Inner, task: &Task) -> Result<LearnReport> {
    let labels = task.labels_total();
    // Everything recorded before the pass is in the log.
    inner.writer.flush(Duration::from_secs(30))?;
    let records = calls::read_all(&inner.data_dir, &task.name)?;
    let mut oracle = oracle_examples(records);
    let mut rng = fastrand::Rng::with_seed(inner.learn.seed ^ labels);
    rng.shuffle(&mut oracle);
    let mut options = SynthOptions::default().with_seed(inner.learn.seed);
    options.threads = 1;
    let closed = || Error::new(ErrorKind::Closed, "the gateway is shut down");
    // Cross-fitting: each fold of the oracle's labels is scored by a program trained
    // without it (and with the spec examples), so every pair is out of sample.
    let folds = inner.learn.folds.min(oracle.len());
    let mut pairs = Vec::new();
    if folds >= 2 {
        for k in 0..folds {
            let mut spec = task.spec.clone();
            let mut held = Vec::new();
            for (i, ex) in oracle.iter().enumerate() {
                if i % folds == k {
                    held.push(ex.clone());
                } else {
                    spec.examples.push(ex.clone());
                }
            }
            let synthesis = synthesize(&spec, &options)
                .map_err(|e| e.context(format!("{}: fold {}", task.name, k + 1)))?;
            pairs.extend(score(&Program::from_json(&synthesis.program_json)?, &held));
            if inner.is_closed() {
                return Err(closed());
            }
        }
    }
    let cross_fitted = pairs.len();
    let mut spec = task.spec.clone();
    spec.examples.extend(oracle);
    let trained_on = spec.examples.len();
    let synthesis = synthesize(&spec, &options).map_err(|e| e.context(&task.name))?;
    let new_agreement = agreement(&pairs);
    let previous = task.runtime.load_full();
    let stored_before = Stored::load(&inner.data_dir, &task.name)?;
    // The running program's own cross-fitted agreement, from when it was learnt.
    let previous_agreement = match &previous {
        Some(rt) if stored_before.version == rt.active_version() => {
            agreement(&stored_before.holdout)
        }
        _ => None,
    };
    if inner.is_closed() {
        return Err(closed());
    }
    let activate = match (previous_agreement, new_agreement) {
        (Some(old), Some(new)) => new >= old,
        _ => true,
    };
    let store = ArtifactStore::open(&inner.data_dir, &task.name)?;
    let meta = store.install(&synthesis.program_json, synthesis.new_artifact(), false)?;
    let version = meta.version;
    if activate {
        match &previous {
            Some(rt) => rt.activate(version)?,
            None => {
                store.activate(version)?;
                inner.install_runtime(task)?;
            }
        }
        *task.calibration.lock() = Calibration {
            version,
            pairs: pairs.clone(),
            new_pairs: 0,
            estimate: None,
        };
        task.set_threshold(None);
    }
    task.learned_at.store(labels, Ordering::Relaxed);
    let stored_pairs = if activate {
        pairs
    } else {
        stored_before.holdout
    };
    let stored = Stored {
        learned_at: labels,
        version: if activate {
            version
        } else {
            task.calibration.lock().version
        },
        holdout: stored_pairs,
        threshold: None,
    };
    stored.save(&inner.data_dir, &task.name)?;
    recalibrate(inner, task);
    log::info!(
        "loopai gateway: {}: learnt v{version} on {trained_on} examples; cross-fitted agreement {:?} on {cross_fitted} (running program {:?}); {}",
        task.name,
        new_agreement,
        previous_agreement,
        if activate { "activated" } else { "kept inactive" }
    );
    Ok(LearnReport {
        task: task.name.clone(),
        labels,
        trained_on,
        cross_fitted,
        agreement: new_agreement,
        previous_agreement,
        version,
        activated: activate,
        threshold: task.threshold(),
    })
}
