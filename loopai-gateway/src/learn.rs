//! Learning a task's program from the spec examples and the oracle's labels, in the
//! background; and re-estimating its threshold as calibration pairs arrive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use loopai_core::{
    open_document_or_plain, ArtifactStore, Error, ErrorKind, KeyRing, Program, Result,
};
use loopai_synth::{synthesize, Example, SynthOptions};
use serde::{Deserialize, Serialize};

use crate::calibrate::{choose_threshold, guarded, margin};
use crate::calls::{self, CallRecord};
use crate::canary::{shadow_of, Canary, CanaryOutcome, Verdict};
use crate::extract::Answers;
use crate::gateway::{job_of, Calibration, Inner, Job, JobRx, Task};

/// Oracle labels a pass trains on at most: the newest; older ones are scored by the pass's
/// program (out of sample), which bounds a pass's cost whatever the call rate.
pub(crate) const MAX_TRAIN: usize = 4000;
/// Cross-validation folds inside each synthesis of a pass (the generator's candidate
/// selection; its default is 5).
const SYNTH_FOLDS: usize = 3;
/// Threads of each synthesis (at `nice` 10), at most the machine's cores.
const LEARN_THREADS: usize = 2;

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
    /// Older oracle labels left out of training (beyond the newest 4000) and scored by
    /// the program itself, out of sample.
    pub held_out: usize,
    /// Whether it was activated: the task's first program. A later version goes into
    /// canary instead (see `docs/gateway.md`).
    pub activated: bool,
    /// Whether it went into canary (a later version).
    pub canary: bool,
    /// The threshold after the pass (null: every call is forwarded).
    pub threshold: Option<f64>,
}

/// `artifacts/<task>/gateway.json`: JSON, or with `storage.encryption` the JSON sealed as
/// a document (`LOOPAIE1`, one AES-256-GCM frame); read back either way.
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
    /// Whether `holdout`'s scores are margins for a task of three labels or more (false
    /// in files written before margins were: their confidences are not restored).
    #[serde(default)]
    pub(crate) margins: bool,
}

fn stored_path(data_dir: &Path, task: &str) -> Result<PathBuf> {
    Ok(ArtifactStore::open(data_dir, task)?
        .task_dir()
        .join(STORED_FILE))
}

impl Stored {
    /// Reads the file, plain or sealed (with `keys`); a missing one is the default. A
    /// sealed one without `keys`, of a key not among them, or damaged is an error naming it.
    pub(crate) fn load(data_dir: &Path, task: &str, keys: Option<&KeyRing>) -> Result<Stored> {
        let path = stored_path(data_dir, task)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                let json = open_document_or_plain(&bytes, keys, &path.display().to_string())?;
                serde_json::from_slice(&json).map_err(|e| {
                    Error::new(ErrorKind::Artifact, format!("{}: {e}", path.display()))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes the file atomically; with `keys` sealed with the current key.
    fn save(&self, data_dir: &Path, task: &str, keys: Option<&KeyRing>) -> Result<()> {
        let path = stored_path(data_dir, task)?;
        let mut bytes = serde_json::to_vec(self)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("gateway.json: {e}")))?;
        if let Some(keys) = keys {
            bytes = keys.seal_document(&bytes)?;
        }
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
        let (index, canary) = match job_of(msg) {
            Job::Task(index) => (index, false),
            Job::Canary(index) => (index, true),
            Job::Stop => break,
        };
        let Some(inner) = inner.upgrade() else { break };
        let task = Arc::clone(&inner.tasks[index]);
        if canary {
            judge_canary(&inner, &task);
        } else {
            recalibrate(&inner, &task);
        }
        inner.calibrating.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Promotes or rolls back `task`'s candidate when its canary has a verdict.
pub(crate) fn judge_canary(inner: &Inner, task: &Task) {
    let _installing = inner.install_lock.lock();
    if inner.is_closed() {
        return;
    }
    let canary = {
        let mut guard = task.canary.lock();
        let serves = task.threshold().is_some();
        let verdict = guard.as_ref().map(|c| c.verdict(serves, task.budget));
        match verdict {
            Some(Verdict::Promote | Verdict::RollBack) => guard.take(),
            _ => {
                if let Some(c) = guard.as_mut() {
                    c.queued = false;
                    c.waited = true;
                }
                None
            }
        }
    };
    let Some(canary) = canary else { return };
    task.shadow.store(None);
    let verdict = canary.verdict(task.threshold().is_some(), task.budget);
    let mut outcome = CanaryOutcome {
        version: canary.version,
        promoted: false,
        calls: canary.calls,
        candidate_agreed: canary.candidate_agreed,
        running_agreed: canary.running_agreed,
    };
    if verdict == Verdict::Promote {
        if let Some(rt) = task.runtime.load_full() {
            let version = canary.version;
            let pairs = canary.into_pairs();
            let estimate = choose_threshold(&pairs, task.budget);
            match rt.activate(version) {
                Ok(()) => {
                    *task.calibration.lock() = Calibration {
                        version,
                        pairs: pairs.clone(),
                        new_pairs: 0,
                        estimate: Some(estimate),
                        validations: Default::default(),
                    };
                    task.set_threshold(estimate.threshold);
                    task.set_validation_rate(inner.sampling_rate, Some(&estimate));
                    outcome.promoted = true;
                    let stored = Stored {
                        learned_at: task.learned_at.load(Ordering::Relaxed),
                        version,
                        holdout: pairs,
                        threshold: estimate.threshold,
                        margins: true,
                    };
                    if let Err(e) = stored.save(&inner.data_dir, &task.name, inner.keys.as_deref())
                    {
                        log::warn!("loopai gateway: {e}");
                    }
                }
                Err(e) => log::warn!(
                    "loopai gateway: {}: activating v{version} after its canary: {e}",
                    task.name
                ),
            }
        }
    }
    log::info!(
        "loopai gateway: {}: canary of v{} {} ({} of {} calls agree with the upstream; the running program {})",
        task.name,
        outcome.version,
        if outcome.promoted { "promoted" } else { "rolled back" },
        outcome.candidate_agreed,
        outcome.calls,
        outcome.running_agreed
    );
    *task.last_canary.lock() = Some(outcome);
}

/// Re-estimates the threshold of the task's running version from its pairs.
pub(crate) fn recalibrate(inner: &Inner, task: &Task) {
    let (pairs, validations, version) = {
        let cal = task.calibration.lock();
        (cal.pairs.clone(), cal.validations.clone(), cal.version)
    };
    if version == 0 {
        return;
    }
    let estimate = guarded(
        choose_threshold(&pairs, task.budget),
        &validations,
        task.budget,
    );
    {
        let mut cal = task.calibration.lock();
        if cal.version != version {
            return;
        }
        cal.estimate = Some(estimate);
    }
    let before = task.threshold();
    task.set_threshold(estimate.threshold);
    task.set_validation_rate(inner.sampling_rate, Some(&estimate));
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
        if let Ok(mut stored) = Stored::load(&inner.data_dir, &task.name, inner.keys.as_deref()) {
            stored.threshold = estimate.threshold;
            if let Err(e) = stored.save(&inner.data_dir, &task.name, inner.keys.as_deref()) {
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
            Some(&i) => out[i].output = label,
            None => {
                index.insert(key, out.len());
                out.push(Example {
                    input: r.input,
                    output: label,
                });
            }
        }
    }
    out
}

/// `(calibration score, agreed)` of `program` on `rows` (the score: the margin for three
/// labels or more, else the confidence; for an extraction task, agreed = every field equal
/// after normalisation).
fn score(answers: &Answers, program: &Program, rows: &[Example]) -> Vec<(f64, bool)> {
    rows.iter()
        .map(|ex| match program.evaluate(&ex.input) {
            Ok(o) => (
                margin(o.scores.iter().copied()).unwrap_or(o.confidence),
                !o.abstained && answers.agrees(&o.output, &ex.output),
            ),
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

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the gateway is shut down")
}

fn check_open(inner: &Inner) -> Result<()> {
    if inner.is_closed() {
        Err(closed())
    } else {
        Ok(())
    }
}

fn pass(inner: &Inner, task: &Task) -> Result<LearnReport> {
    let labels = task.labels_total();
    // Everything recorded before the pass is in the log.
    inner.writer.flush(Duration::from_secs(30))?;
    let records = calls::read_all(&inner.data_dir, &task.name, inner.keys.as_deref())?;
    let mut oracle = oracle_examples(records);
    // The newest labels are trained on; older ones beyond MAX_TRAIN are scored by the
    // pass's program, which never saw them.
    let older: Vec<Example> = oracle
        .drain(..oracle.len().saturating_sub(MAX_TRAIN))
        .collect();
    let mut rng = fastrand::Rng::with_seed(inner.learn.seed ^ labels);
    rng.shuffle(&mut oracle);
    let mut options = SynthOptions::default().with_seed(inner.learn.seed);
    options.threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(LEARN_THREADS);
    options.folds = SYNTH_FOLDS;
    check_open(inner)?;
    // 1. The program, on every label trained on: installed before cross-fitting, so that
    //    a first program starts calibrating on forwarded calls at once.
    let mut spec = task.spec.clone();
    spec.examples.extend(oracle.iter().cloned());
    let trained_on = spec.examples.len();
    let synthesis = synthesize(&spec, &options).map_err(|e| e.context(&task.name))?;
    let program = Program::from_json(&synthesis.program_json)?;
    let held = score(&task.answers, &program, &older);
    let previous = task.runtime.load_full();
    let stored_before = Stored::load(&inner.data_dir, &task.name, inner.keys.as_deref())?;
    let previous_agreement = match &previous {
        Some(rt) if stored_before.version == rt.active_version() => {
            agreement(&stored_before.holdout)
        }
        _ => None,
    };
    let first = previous.is_none();
    let version = {
        let _installing = inner.install_lock.lock();
        check_open(inner)?;
        let store = ArtifactStore::open(&inner.data_dir, &task.name)?;
        let meta = store.install(&synthesis.program_json, synthesis.new_artifact(), false)?;
        let version = meta.version;
        if first {
            store.activate(version)?;
            inner.install_runtime(task)?;
            *task.calibration.lock() = Calibration {
                version,
                pairs: held.clone(),
                new_pairs: 0,
                estimate: None,
                validations: Default::default(),
            };
            task.set_threshold(None);
        } else {
            // A later version: in canary, run in shadow next to the running one.
            *task.canary.lock() = Some(Canary::new(version));
            task.shadow
                .store(Some(Arc::new(shadow_of(version, &synthesis.program_json)?)));
        }
        version
    };
    task.learned_at.store(labels, Ordering::Relaxed);
    // When more labels arrived during that synthesis than it trained on, forwarded calls
    // (and the canary's) calibrate the version faster than cross-fitting would: skip it,
    // and the learner is free for the next pass sooner. This keeps learning up with any
    // call rate.
    let arrived = task.labels_total().saturating_sub(labels);
    let cross_fit = arrived < oracle.len() as u64;
    // 2. Cross-fitting: each fold of the labels trained on is scored by a program learnt
    //    without it (and with the spec examples), so every oracle label gets an
    //    out-of-sample pair.
    let folds = if cross_fit {
        inner.learn.folds.min(oracle.len())
    } else {
        0
    };
    let mut pairs = Vec::new();
    if folds >= 2 {
        for k in 0..folds {
            check_open(inner)?;
            let mut spec = task.spec.clone();
            let mut held_fold = Vec::new();
            for (i, ex) in oracle.iter().enumerate() {
                if i % folds == k {
                    held_fold.push(ex.clone());
                } else {
                    spec.examples.push(ex.clone());
                }
            }
            let synthesis = synthesize(&spec, &options)
                .map_err(|e| e.context(format!("{}: fold {}", task.name, k + 1)))?;
            pairs.extend(score(
                &task.answers,
                &Program::from_json(&synthesis.program_json)?,
                &held_fold,
            ));
        }
    }
    let cross_fitted = pairs.len();
    let new_agreement = agreement(&pairs);
    pairs.extend(held.iter().copied());
    // 3. The pairs join the version's calibration (the first program), or its canary.
    {
        let _installing = inner.install_lock.lock();
        check_open(inner)?;
        let mut cal = task.calibration.lock();
        if cal.version == version {
            // The first program (its held-out pairs are there already), or a candidate
            // promoted by its canary before its cross-fitting ended.
            let add = if first {
                &pairs[..cross_fitted]
            } else {
                &pairs[..]
            };
            cal.pairs.extend(add.iter().copied());
            drop(cal);
        } else {
            drop(cal);
            let mut guard = task.canary.lock();
            if let Some(c) = guard.as_mut().filter(|c| c.version == version) {
                if cross_fit {
                    c.cross_fitted = Some(pairs.clone());
                    c.waited = false;
                }
                if c.due() {
                    c.queued = true;
                    drop(guard);
                    inner.queue_canary(task);
                }
            }
        }
        let promoted = !first && task.calibration.lock().version == version;
        let stored = if first {
            Stored {
                learned_at: labels,
                version,
                holdout: pairs,
                threshold: None,
                margins: true,
            }
        } else if promoted {
            // Its canary's pairs were stored at the promotion; the cross-fitted ones join.
            let mut stored = Stored::load(&inner.data_dir, &task.name, inner.keys.as_deref())?;
            stored.learned_at = labels;
            stored.holdout.extend(pairs);
            stored
        } else {
            let mut stored = stored_before;
            stored.learned_at = labels;
            stored
        };
        stored.save(&inner.data_dir, &task.name, inner.keys.as_deref())?;
    }
    recalibrate(inner, task);
    log::info!(
        "loopai gateway: {}: learnt v{version} on {trained_on} examples in {:.1} s; cross-fitted agreement {:?} on {cross_fitted}, {} older labels held out (running program {:?}); {}",
        task.name,
        synthesis.elapsed.as_secs_f64(),
        new_agreement,
        older.len(),
        previous_agreement,
        if first { "activated" } else { "in canary" }
    );
    Ok(LearnReport {
        task: task.name.clone(),
        labels,
        trained_on,
        cross_fitted,
        held_out: older.len(),
        agreement: new_agreement,
        previous_agreement,
        version,
        activated: first,
        canary: !first,
        threshold: task.threshold(),
    })
}
