//! Synthesis: cross-validate the candidate strategies on the specification's examples,
//! pick one, train it on every example and emit the `loopai.program/1` program.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopai_core::{Error, ErrorKind, Program, ProgramLimits, ProgramStats, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::features::{FeatureConfig, MAX_INPUT_BYTES};
use crate::inputs::InputFields;
use crate::linear::{LinearModel, SparseVec};
use crate::metrics::{class_metrics, metric_value, ClassMetrics};
use crate::rules::{self, MineParams, RuleList, TermIndex};
use crate::spec::{Metric, TaskSpec};
use crate::structured::{self, Encoding, Row};

pub(crate) mod folds;
mod install;
mod ml;
mod report;
mod trust;

use folds::{par_map, stratified_folds};
pub use install::{synthesize_and_install, Activation};
use trust::trust_warnings;

/// How to build the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Cross-validate every candidate and pick the most accurate one that meets the
    /// latency target (the simpler one on a tie).
    Auto,
    /// Human-readable keyword rules mined per class, with a default class.
    Rule,
    /// A linear model (SVM, logistic regression or naive Bayes) over TF-IDF vectors of word
    /// and character n-grams, with calibrated confidence.
    Ml,
    /// High-precision rules first, the model for everything else.
    Hybrid,
    /// Extraction (an object output): per-field extractors, cross-validated by exact
    /// match. The only strategy for extraction tasks, where `auto` means it.
    Extract,
}

impl Strategy {
    /// The lowercase name (`auto`, `rule`, `ml`, `hybrid`).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Rule => "rule",
            Strategy::Ml => "ml",
            Strategy::Hybrid => "hybrid",
            Strategy::Extract => "extract",
        }
    }

    /// Simplicity rank for tie-breaking (lower is simpler).
    fn rank(self) -> u8 {
        match self {
            Strategy::Rule => 0,
            Strategy::Hybrid => 1,
            Strategy::Ml | Strategy::Auto | Strategy::Extract => 2,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    /// Parses `auto`, `rule`, `ml` or `hybrid` (case-insensitive).
    fn from_str(s: &str) -> Result<Strategy> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Strategy::Auto),
            "rule" | "rules" => Ok(Strategy::Rule),
            "ml" => Ok(Strategy::Ml),
            "hybrid" => Ok(Strategy::Hybrid),
            "extract" => Ok(Strategy::Extract),
            _ => Err(Error::new(
                ErrorKind::Config,
                format!("strategy: {s:?} is not one of auto, rule, ml, hybrid, extract"),
            )),
        }
    }
}

/// Receives progress reports while synthesis runs (the CLI renders them as progress bars
/// on a terminal, as plain lines otherwise). Methods may be called from worker threads.
///
/// Stages are named after what they do and on what: `preprocess`, `rules`,
/// `tf-idf vocabulary [w1-2]`, `vectorize [w1-2,c1-5] 40000 terms`, `ml/svm[w1-2,c1-5]` and
/// `ml/logreg[w1-2]` (one step per fold × class, then per class of the final fit),
/// `ml/naive_bayes[w1-2]`, `hybrid rules`, `measure latency`; [`step`](Progress::step) says
/// which candidate, fold and class a stage is on.
pub trait Progress: Send + Sync {
    /// A stage with `total` steps begins.
    fn stage(&self, name: &str, total: u64);
    /// `n` more steps of the current stage are done.
    fn advance(&self, n: u64);
    /// The current stage is over.
    fn finish_stage(&self);
    /// A candidate is trained: its name as in the report (`ml/logreg[w1-2] C=4`) and its
    /// cross-validated accuracy (NaN when not cross-validated). Does nothing by default.
    fn candidate(&self, name: &str, cv_accuracy: f64) {
        let _ = (name, cv_accuracy);
    }
    /// What the current stage is doing now, e.g. `ml/svm[w1-2] fold 2/5 class "sport"`
    /// (jobs run in parallel: the latest one started). Does nothing by default.
    fn step(&self, what: &str) {
        let _ = what;
    }
}

/// Options of [`synthesize`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SynthOptions {
    /// The strategy (default [`Strategy::Auto`]).
    pub strategy: Strategy,
    /// Seed of fold assignment and SGD shuffles: the same spec and seed give a
    /// byte-identical program.
    pub seed: u64,
    /// Cross-validation folds (default 5; fewer when there are fewer examples).
    pub folds: usize,
    /// Worker threads for training (default 0 = the available cores, at most 4). The result
    /// does not depend on it.
    pub threads: usize,
    /// Progress receiver.
    pub progress: Option<Arc<dyn Progress>>,
    /// The limits the program must load within (default [`ProgramLimits::default`], the
    /// runtime's): candidates beyond them are left out with a note
    /// ([`Synthesis::notes`]), and model sizes are planned to stay well inside them.
    pub limits: ProgramLimits,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            strategy: Strategy::Auto,
            seed: 0,
            folds: 5,
            threads: 0,
            progress: None,
            limits: ProgramLimits::default(),
        }
    }
}

impl SynthOptions {
    /// The defaults with another strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The defaults with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the limits the program must load within.
    pub fn with_limits(mut self, limits: ProgramLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the progress receiver.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl fmt::Debug for SynthOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SynthOptions")
            .field("strategy", &self.strategy)
            .field("seed", &self.seed)
            .field("folds", &self.folds)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

/// One candidate program that synthesis evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CandidateReport {
    /// Its strategy.
    pub strategy: Strategy,
    /// What it is, e.g. `ml/logreg[w1-2,c2-5] C=8`.
    pub name: String,
    /// Cross-validated accuracy on the examples; NaN when not cross-validated (see
    /// [`Synthesis::cv_accuracy`]).
    pub cv_accuracy: f64,
    /// Cross-validated macro-F1 (mean of the per-label F1 over labels with examples); NaN
    /// when not cross-validated.
    pub cv_macro_f1: f64,
    /// Cross-validated per-class metrics (empty when not cross-validated).
    pub per_class: Vec<ClassMetrics>,
    /// Median time of one execution of the final program, measured in-process on a
    /// sample of the examples, in microseconds.
    pub est_latency_us: Option<f64>,
    /// Size of the final program's JSON.
    pub program_bytes: usize,
    /// Rules in the final program.
    pub rules: usize,
    /// Whether it was chosen.
    pub chosen: bool,
}

/// The result of [`synthesize`]: the program and how it was chosen.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Synthesis {
    /// The `loopai.program/1` JSON of the chosen program (compiles with
    /// [`Program::from_json`]).
    pub program_json: Vec<u8>,
    /// The chosen strategy.
    pub strategy: Strategy,
    /// The chosen candidate's name.
    pub model: String,
    /// Its cross-validated accuracy (the confidence estimate). NaN when nothing was
    /// cross-validated (`folds` is 0: only one label has examples, and the program always
    /// answers it).
    pub cv_accuracy: f64,
    /// Whether the estimate can be relied on enough to activate the program: false when
    /// the cross-validated accuracy is below the spec's `accuracy_target`, or no better than
    /// always answering the most frequent label (which includes an accuracy of 0, and a
    /// single label in the examples). [`synthesize_and_install`] then installs the program
    /// without activating it unless [`Activation::Always`] is asked for.
    pub trusted: bool,
    /// Remarks on the run, e.g. a candidate left out because its program exceeds the
    /// runtime's size limits.
    pub notes: Vec<String>,
    /// Accuracy of the final program on the training examples, computed by the trainer
    /// (equal to what the runtime gives on the same examples).
    pub train_accuracy: f64,
    /// Every candidate evaluated, the chosen one marked.
    pub candidates: Vec<CandidateReport>,
    /// The output labels (empty for extraction).
    pub labels: Vec<String>,
    /// Extraction tasks: what was learnt per field, with its cross-validated exact match
    /// (empty for classification). [`cv_accuracy`](Self::cv_accuracy) is then the share of
    /// held-out examples whose whole object was right.
    pub fields: Vec<crate::extract::FieldReport>,
    /// Examples trained on.
    pub examples: usize,
    /// Cross-validation folds used; 0 when there was nothing to cross-validate.
    pub folds: usize,
    /// Shape of the chosen program.
    pub stats: ProgramStats,
    /// The spec's accuracy target, if any.
    pub accuracy_target: Option<f64>,
    /// What the candidates were compared on (the spec's `metric`).
    pub metric: Metric,
    /// Wall-clock synthesis time.
    pub elapsed: Duration,
    /// What is legal but probably not what was meant ([`TaskSpec::warnings`], and that the
    /// program is constant when only one label has examples), and what the estimate cannot
    /// be trusted for (labels with one or few examples, an accuracy at chance or below
    /// the spec's `accuracy_target`). Printed by [`report_text`](Self::report_text).
    pub warnings: Vec<String>,
}

/// Learns a program from the specification's examples.
///
/// Errors: [`ErrorKind::InvalidInput`] for a malformed spec (the message names the path),
/// [`ErrorKind::Program`] when the task cannot be synthesized (extraction tasks).
///
/// ```
/// use loopai_synth::{synthesize, SynthOptions, TaskSpec};
/// use serde_json::json;
///
/// let mut examples = Vec::new();
/// for i in 0..30 {
///     examples.push(json!({"input": {"text": format!("win a free prize now {i}")}, "output": "spam"}));
///     examples.push(json!({"input": {"text": format!("see you at lunch {i}")}, "output": "ham"}));
/// }
/// let spec = TaskSpec::from_json(json!({
///     "name": "spam",
///     "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
///     "output_schema": {"type": "string", "enum": ["spam", "ham"]},
///     "examples": examples,
/// }).to_string().as_bytes())?;
/// let synthesis = synthesize(&spec, &SynthOptions::default())?;
/// assert!(synthesis.cv_accuracy > 0.9);
///
/// let program = loopai_core::Program::from_json(&synthesis.program_json)?;
/// let outcome = program.evaluate(&json!({"text": "claim your free prize"}))?;
/// assert_eq!(outcome.output, "spam");
/// # Ok::<(), loopai_core::Error>(())
/// ```
pub fn synthesize(spec: &TaskSpec, options: &SynthOptions) -> Result<Synthesis> {
    if spec.is_extraction() {
        return crate::extract::synthesize(spec, options);
    }
    if options.strategy == Strategy::Extract {
        return Err(Error::new(
            ErrorKind::Config,
            "strategy: extract applies to extraction tasks (an object output_schema) only",
        ));
    }
    let start = Instant::now();
    spec.validate()?;
    let labels = spec.labels()?;
    let input_fields = InputFields::of(&spec.input_schema, spec.examples.iter().map(|e| &e.input))?;
    let fields = input_fields.text;
    let structured_fields =
        structured::fit(&input_fields.other, &spec.examples, MAX_CONDITION_POSTINGS);
    let y: Vec<usize> = spec
        .examples
        .iter()
        .map(|e| {
            let s = e.output.as_str().unwrap_or_default();
            labels.iter().position(|l| l == s).unwrap_or(0)
        })
        .collect();
    let n = y.len();
    let k = labels.len();
    let threads = match options.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4),
        t => t,
    };
    let progress = Progress2(options.progress.as_deref());
    let mut ctx = Ctx {
        spec,
        labels: labels.clone(),
        y,
        k,
        threads,
        seed: options.seed,
        progress,
        base: FeatureConfig {
            fields,
            ngrams: Vec::new(),
            view_max_bytes: MAX_INPUT_BYTES,
            vocabs: Vec::new(),
            structured: Encoding {
                fields: structured_fields,
                scaled: true,
            },
        },
        views: Vec::new(),
        rows: Vec::new(),
        folds: Vec::new(),
        n_folds: 0,
        hybrid_required: options.strategy == Strategy::Hybrid,
        cjk: false,
        // Weights (4 bytes, a third more in base64) within half the program size limit.
        limits: options.limits.clone(),
        metric: spec.metric,
        max_weights: MAX_MODEL_WEIGHTS
            .min(options.limits.max_weights)
            .min(options.limits.max_program_bytes / 2 / 4 * 3 / 4),
    };

    ctx.progress.stage("preprocess", n as u64);
    let views = par_map(n, threads, |i| {
        let v = ctx.base.views(&spec.examples[i].input);
        ctx.progress.advance(1);
        v
    });
    ctx.progress.finish_stage();
    ctx.views = views;
    ctx.rows = spec
        .examples
        .iter()
        .map(|e| structured::row(&ctx.base.structured.fields, &e.input))
        .collect();
    ctx.cjk = crate::features::unspaced_share(ctx.views.iter().flatten().map(String::as_str)) > 0.0;

    let present = {
        let mut seen = vec![false; k];
        ctx.y.iter().for_each(|&c| seen[c] = true);
        seen.iter().filter(|&&b| b).count()
    };
    let mut cands: Vec<Cand> = Vec::new();
    let mut ml_notes = Vec::new();
    // Labels without examples (the trust warnings below leave them to the spec).
    let mut warnings = spec.warnings();
    if present < 2 {
        // One label: nothing to learn, the program always answers it.
        let list = RuleList {
            rules: Vec::new(),
            default: Some((ctx.y[0], 1.0)),
        };
        let program = ctx.program(
            &ctx.base,
            Vec::new(),
            json!({"op": "rules", "rules": [{"name": format!("default: {}", labels[ctx.y[0]]),
                "when": {"always": true}, "then": labels[ctx.y[0]], "confidence": 1.0}]}),
            Strategy::Rule,
        );
        let _ = list;
        warnings.push(format!(
            "only {:?} has examples: the program always answers it, and its accuracy cannot be \
             estimated (not cross-validated)",
            labels[ctx.y[0]]
        ));
        ctx.progress.candidate("rule/constant", f64::NAN);
        cands.push(Cand {
            strategy: Strategy::Rule,
            name: "rule/constant".into(),
            oof: ctx.y.iter().map(|&c| Some(c)).collect(),
            program,
            train_pred: ctx.y.iter().map(|&c| Some(c)).collect(),
            weights: 0,
            over_base: None,
        });
        ctx.n_folds = 0;
    } else {
        ctx.n_folds = options.folds.clamp(2, 20).min(n);
        let inputs: Vec<&Value> = spec.examples.iter().map(|e| &e.input).collect();
        ctx.folds = stratified_folds(&inputs, &ctx.y, k, ctx.n_folds, options.seed);
        let want_ml = options.strategy != Strategy::Rule;
        let want_rule = matches!(options.strategy, Strategy::Rule | Strategy::Auto);
        let want_hybrid = matches!(options.strategy, Strategy::Hybrid | Strategy::Auto);
        let index = if want_rule || want_hybrid {
            let mut index = TermIndex::build(&ctx.views);
            index.add_conditions(structured::conditions(
                &ctx.base.structured.fields,
                &ctx.rows,
            ));
            Some(index)
        } else {
            None
        };
        if let (true, Some(index)) = (want_rule, &index) {
            let cand = ctx.rule_candidate(index);
            ctx.announce(&cand);
            cands.push(cand);
        }
        if want_ml {
            let ml = ctx.ml_candidates(&mut ml_notes);
            if want_hybrid {
                if let (Some(best), Some(index)) = (ctx.best_ml(&ml), &index) {
                    if let Some(cand) = ctx.hybrid_candidate(index, best) {
                        ctx.announce(&cand);
                        cands.push(cand);
                    }
                }
            }
            cands.extend(ml.into_iter().map(|m| m.cand));
        }
    }

    // Compile every candidate, measure it, pick one.
    let mut reports = Vec::new();
    let mut compiled = Vec::new();
    let mut notes = ml_notes;
    let limits = &options.limits;
    ctx.progress.stage("measure latency", cands.len() as u64);
    let mut kept = Vec::new();
    for c in cands {
        let bytes = serde_json::to_vec(&c.program).map_err(|e| {
            Error::new(ErrorKind::Internal, format!("serializing the program: {e}"))
        })?;
        // A candidate over the runtime's size limits is left out; the others still compete.
        let max_bytes = limits.max_program_bytes.min(ml::MAX_PROGRAM_BYTES);
        let over = if bytes.len() > max_bytes {
            Some(format!(
                "program is {} bytes, over the limit of {max_bytes} bytes",
                bytes.len(),
            ))
        } else if c.weights > limits.max_weights {
            Some(format!(
                "{} weights, over the limit of {} numbers per weight array",
                c.weights, limits.max_weights
            ))
        } else {
            None
        };
        if let Some(why) = over {
            notes.push(format!("candidate {} skipped: {why}", c.name));
            ctx.progress.advance(1);
            continue;
        }
        let program = Program::from_json_with_limits(&bytes, limits).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("generated program does not compile (a loopai-synth bug): {e}"),
            )
        })?;
        let latency = measure_latency(&program, spec);
        let (acc, per_class) = if ctx.n_folds == 0 {
            (f64::NAN, Vec::new())
        } else {
            class_metrics(&labels, &ctx.y, &c.oof)
        };
        let macro_f1 = if ctx.n_folds == 0 {
            f64::NAN
        } else {
            metric_value(Metric::MacroF1, &ctx.y, &c.oof, k)
        };
        reports.push(CandidateReport {
            strategy: c.strategy,
            name: c.name.clone(),
            cv_accuracy: acc,
            cv_macro_f1: macro_f1,
            per_class,
            est_latency_us: latency,
            program_bytes: bytes.len(),
            rules: program.stats().rules,
            chosen: false,
        });
        compiled.push((bytes, program));
        kept.push(c);
        ctx.progress.advance(1);
    }
    ctx.progress.finish_stage();
    let cands = kept;
    // A hybrid is the model it builds on plus rules: under `auto` it competes only when
    // its rules fix significantly more cross-validated answers of that model than they
    // break. One row more in a few hundred is noise, and on a larger stream such rules
    // can break twice what they fix.
    let eligible: Vec<bool> = cands
        .iter()
        .map(|c| match (options.strategy, c.over_base) {
            (Strategy::Auto, Some((fixed, broke))) => {
                let p = sign_test_p(fixed, broke);
                let ok = p <= HYBRID_ALPHA;
                // Said only where it changes the choice (else it lost on its metric).
                if !ok && fixed >= broke && fixed > 0 {
                    notes.push(format!(
                        "candidate {} not considered: its rules fix {fixed} cross-validated \
                         answer(s) of its model and break {broke}, not significantly more \
                         (one-sided sign test p = {p:.2} > {HYBRID_ALPHA})",
                        c.name
                    ));
                }
                ok
            }
            _ => true,
        })
        .collect();
    let budget_us = spec.latency_target_ms.map(|ms| ms * 1000.0);
    let allowed = |r: &CandidateReport| match options.strategy {
        // With a single label there is only the constant program.
        _ if present < 2 => true,
        Strategy::Auto => true,
        s => r.strategy == s,
    };
    let fits = |r: &CandidateReport| match (budget_us, r.est_latency_us) {
        (Some(b), Some(l)) => l <= b,
        _ => true,
    };
    let better = |a: &CandidateReport, b: &CandidateReport| {
        // Is `a` preferable to `b`?
        let (fa, fb) = match spec.metric {
            Metric::Accuracy => (a.cv_accuracy, b.cv_accuracy),
            Metric::MacroF1 => (a.cv_macro_f1, b.cv_macro_f1),
        };
        if fa != fb {
            return fa > fb;
        }
        (a.strategy.rank(), a.program_bytes) < (b.strategy.rank(), b.program_bytes)
    };
    let mut pick: Option<usize> = None;
    for pass_fits in [true, false] {
        for (i, r) in reports.iter().enumerate() {
            if !allowed(r) || !eligible[i] || (pass_fits && !fits(r)) {
                continue;
            }
            if pick.is_none_or(|p| better(r, &reports[p])) {
                pick = Some(i);
            }
        }
        if pick.is_some() {
            break;
        }
    }
    let pick = pick.ok_or_else(|| {
        let why = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        Error::new(
            ErrorKind::Program,
            format!("no {} candidate could be built{why}", options.strategy),
        )
    })?;
    reports[pick].chosen = true;
    let chosen = &cands[pick];
    let (bytes, program) = compiled.swap_remove(pick);
    let train_correct = chosen
        .train_pred
        .iter()
        .zip(&ctx.y)
        .filter(|(p, &y)| **p == Some(y))
        .count();
    let trust = trust_warnings(
        &labels,
        &ctx.y,
        present,
        reports[pick].cv_accuracy,
        spec.accuracy_target,
    );
    let trusted = trust.iter().all(|w| !w.blocks_activation);
    warnings.extend(trust.into_iter().filter_map(|w| w.text));
    Ok(Synthesis {
        program_json: bytes,
        strategy: chosen.strategy,
        model: chosen.name.clone(),
        cv_accuracy: reports[pick].cv_accuracy,
        trusted,
        notes,
        train_accuracy: train_correct as f64 / n as f64,
        candidates: reports,
        labels,
        fields: Vec::new(),
        examples: n,
        folds: ctx.n_folds,
        stats: program.stats().clone(),
        accuracy_target: spec.accuracy_target,
        metric: spec.metric,
        elapsed: start.elapsed(),
        warnings,
    })
}

/// A candidate: its out-of-fold predictions, final program and the final program's
/// predictions on the training examples.
struct Cand {
    strategy: Strategy,
    name: String,
    oof: Vec<Option<usize>>,
    program: Value,
    train_pred: Vec<Option<usize>>,
    /// Numbers in the largest weight array of the program.
    weights: usize,
    /// For a hybrid: cross-validated rows its rules answer right where the model it
    /// builds on is wrong, and rows they answer wrong where the model is right.
    over_base: Option<(usize, usize)>,
}

/// The level of the sign test a hybrid must pass against the model it builds on.
const HYBRID_ALPHA: f64 = 0.05;

/// `(fixed, broke)`: rows whose cross-validated answer `with` gets right and `without`
/// wrong, and the reverse.
fn gain_over(y: &[usize], with: &[Option<usize>], without: &[Option<usize>]) -> (usize, usize) {
    let mut gain = (0, 0);
    for ((&t, &a), &b) in y.iter().zip(with).zip(without) {
        match (a == Some(t), b == Some(t)) {
            (true, false) => gain.0 += 1,
            (false, true) => gain.1 += 1,
            _ => {}
        }
    }
    gain
}

/// The one-sided p-value of an exact sign test: `P(X >= fixed)` for `X ~ Binomial(fixed +
/// broke, 1/2)`, that is `P(X <= broke)` by symmetry (1 with no discordant rows).
fn sign_test_p(fixed: usize, broke: usize) -> f64 {
    crate::metrics::binomial_cdf(broke as u64, (fixed + broke) as u64, 0.5)
}

/// A trained ML candidate with what the hybrid needs.
struct MlCand {
    cand: Cand,
    config: FeatureConfig,
    model: LinearModel,
    xs: Arc<Vec<SparseVec>>,
}

struct Progress2<'a>(Option<&'a dyn Progress>);

impl Progress2<'_> {
    fn stage(&self, name: &str, total: u64) {
        if let Some(p) = self.0 {
            p.stage(name, total);
        }
    }
    fn advance(&self, n: u64) {
        if let Some(p) = self.0 {
            p.advance(n);
        }
    }
    fn finish_stage(&self) {
        if let Some(p) = self.0 {
            p.finish_stage();
        }
    }
    fn candidate(&self, name: &str, cv_accuracy: f64) {
        if let Some(p) = self.0 {
            p.candidate(name, cv_accuracy);
        }
    }
    fn step(&self, what: &str) {
        if let Some(p) = self.0 {
            p.step(what);
        }
    }
}

struct Ctx<'a> {
    spec: &'a TaskSpec,
    labels: Vec<String>,
    y: Vec<usize>,
    k: usize,
    threads: usize,
    seed: u64,
    progress: Progress2<'a>,
    base: FeatureConfig,
    /// `views[example][field]`.
    views: Vec<Vec<String>>,
    /// The number and category fields of each example.
    rows: Vec<Row>,
    /// Fold of each example.
    folds: Vec<usize>,
    n_folds: usize,
    /// The hybrid was asked for explicitly: build it even without rules.
    hybrid_required: bool,
    /// The examples contain scripts written without spaces: word n-grams use
    /// `alnum_cjk` tokens.
    cjk: bool,
    /// Most weights of one linear model.
    max_weights: usize,
    /// The limits the program must load within.
    limits: ProgramLimits,
    /// What candidates are compared on.
    metric: Metric,
}

/// Most weights (input dimension × classes) of one linear model: 16 M numbers.
const MAX_MODEL_WEIGHTS: usize = 1 << 24;

/// Most (condition, example) pairs the rule learner indexes for the thresholds of one
/// number field (each threshold gives two conditions).
const MAX_CONDITION_POSTINGS: usize = 4 << 20;

impl Ctx<'_> {
    fn train_rows(&self, fold: usize) -> Vec<usize> {
        (0..self.y.len())
            .filter(|&i| self.folds[i] != fold)
            .collect()
    }

    fn test_rows(&self, fold: usize) -> Vec<usize> {
        (0..self.y.len())
            .filter(|&i| self.folds[i] == fold)
            .collect()
    }

    fn all_rows(&self) -> Vec<usize> {
        (0..self.y.len()).collect()
    }

    /// The ML candidate the hybrid builds on: the best on the spec's metric.
    fn best_ml<'a>(&self, ml: &'a [MlCand]) -> Option<&'a MlCand> {
        let mut best: Option<(&MlCand, f64)> = None;
        for m in ml {
            let score = metric_value(self.metric, &self.y, &m.cand.oof, self.k);
            if best.is_none_or(|b| score > b.1) {
                best = Some((m, score));
            }
        }
        best.map(|b| b.0)
    }

    /// Tells the progress receiver that `cand` is trained, with its out-of-fold accuracy.
    fn announce(&self, cand: &Cand) {
        let correct = cand
            .oof
            .iter()
            .zip(&self.y)
            .filter(|(p, &y)| **p == Some(y))
            .count();
        let acc = correct as f64 / self.y.len().max(1) as f64;
        self.progress.candidate(&cand.name, acc);
    }

    /// A whole program around `decide`.
    fn program(
        &self,
        config: &FeatureConfig,
        extra_features: Vec<Value>,
        decide: Value,
        strategy: Strategy,
    ) -> Value {
        let mut features = config.features_json();
        features.extend(extra_features);
        let mut p = json!({
            "format": loopai_core::PROGRAM_FORMAT,
            "task": self.spec.name,
            "inputs": config.inputs_json(),
            "preprocess": config.preprocess_json(),
            "features": features,
            "decide": decide,
            "output": {"kind": "label", "labels": self.labels},
            "metadata": {"generator": "loopai-synth", "generator_version": env!("CARGO_PKG_VERSION"),
                         "strategy": strategy.as_str(), "seed": self.seed},
        });
        if !self.spec.description.is_empty() {
            p["description"] = Value::String(self.spec.description.clone());
        }
        p
    }

    fn rule_params(&self, with_default: bool, reserved_features: usize) -> MineParams {
        MineParams {
            min_precision: if with_default { 0.8 } else { 0.97 },
            max_terms: 1000,
            max_rules: 250usize.saturating_sub(reserved_features).max(1),
            with_default,
        }
    }

    fn rule_candidate(&self, index: &TermIndex) -> Cand {
        let n = self.y.len();
        self.progress.stage("rules", self.n_folds as u64 + 1);
        let params = self.rule_params(true, self.base.features_json().len());
        let mut oof = vec![None; n];
        for fold in 0..self.n_folds {
            let list = rules::mine(index, &self.y, &self.train_rows(fold), self.k, params);
            let rows = self.test_rows(fold);
            let predicted = list.predict(index, &self.views, &self.rows, &rows);
            for (r, p) in rows.into_iter().zip(predicted) {
                oof[r] = p;
            }
            self.progress.advance(1);
        }
        let all = self.all_rows();
        let list = rules::mine(index, &self.y, &all, self.k, params);
        let train_pred = list.predict(index, &self.views, &self.rows, &all);
        let (features, decide) = list.to_json(index, &self.base, &self.labels);
        let program = self.program(&self.base, features, decide, Strategy::Rule);
        self.progress.advance(1);
        self.progress.finish_stage();
        Cand {
            strategy: Strategy::Rule,
            name: format!("rule/keywords ({} rules)", list.rules.len() + 1),
            oof,
            program,
            train_pred,
            weights: 0,
            over_base: None,
        }
    }

    fn hybrid_candidate(&self, index: &TermIndex, ml: &MlCand) -> Option<Cand> {
        let n = self.y.len();
        let params = self.rule_params(false, ml.config.features_json().len());
        let mut oof = ml.cand.oof.clone();
        self.progress.stage("hybrid rules", self.n_folds as u64 + 1);
        for fold in 0..self.n_folds {
            let list = rules::mine(index, &self.y, &self.train_rows(fold), self.k, params);
            let rows = self.test_rows(fold);
            let first = list.first_match(index, &self.views, &self.rows, &rows);
            for (r, first) in rows.into_iter().zip(first) {
                if let Some(rule) = list.rules.get(first) {
                    oof[r] = Some(rule.class);
                }
            }
            self.progress.advance(1);
        }
        let list = rules::mine(index, &self.y, &self.all_rows(), self.k, params);
        self.progress.advance(1);
        self.progress.finish_stage();
        if list.rules.is_empty() && !self.hybrid_required {
            return None;
        }
        let first = list.first_match(index, &self.views, &self.rows, &self.all_rows());
        let mut z = Vec::new();
        let train_pred = (0..n)
            .map(|r| match list.rules.get(first[r]) {
                Some(rule) => Some(rule.class),
                None => Some(ml.model.predict(&ml.xs[r], self.k, &mut z)),
            })
            .collect();
        let (features, rules_json) = list.to_json(index, &ml.config, &self.labels);
        let model = self.model_json(&ml.config, &ml.model);
        // No rule met the bar: the hybrid is the model alone.
        let decide = if list.rules.is_empty() {
            model
        } else {
            json!({"op": "first", "steps": [rules_json, model]})
        };
        let program = self.program(&ml.config, features, decide, Strategy::Hybrid);
        Some(Cand {
            strategy: Strategy::Hybrid,
            name: format!(
                "hybrid/{} rules + {}",
                list.rules.len(),
                ml.cand.name.trim_start_matches("ml/")
            ),
            over_base: Some(gain_over(&self.y, &oof, &ml.cand.oof)),
            oof,
            program,
            train_pred,
            weights: ml.cand.weights,
        })
    }
}

/// Median execution time of `program` over a sample of the examples, in microseconds.
fn measure_latency(program: &Program, spec: &TaskSpec) -> Option<f64> {
    let n = spec.examples.len();
    if n == 0 {
        return None;
    }
    let step = (n / 200).max(1);
    let sample: Vec<&Value> = spec
        .examples
        .iter()
        .step_by(step)
        .map(|e| &e.input)
        .collect();
    for x in sample.iter().take(20) {
        let _ = program.evaluate(x);
    }
    let mut times = Vec::with_capacity(sample.len() * 3);
    for _ in 0..3 {
        for x in &sample {
            let t = Instant::now();
            let _ = std::hint::black_box(program.evaluate(x));
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    crate::metrics::percentile(&times, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_test_needs_more_than_a_row_or_two() {
        assert_eq!(sign_test_p(0, 0), 1.0);
        // One row fixed, none broken: a coin flip.
        assert!((sign_test_p(1, 0) - 0.5).abs() < 1e-12);
        assert!((sign_test_p(5, 0) - 1.0 / 32.0).abs() < 1e-12);
        // 6 fixed, 1 broken: P(X >= 6) = 8/128.
        assert!((sign_test_p(6, 1) - 8.0 / 128.0).abs() < 1e-12);
        assert!(sign_test_p(6, 1) > HYBRID_ALPHA && sign_test_p(5, 0) <= HYBRID_ALPHA);
        // Large counts stay finite and ordered.
        assert!(sign_test_p(560, 440) < 1e-3);
        assert!(sign_test_p(500, 500) > 0.5);
        assert!((sign_test_p(0, 7) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn gain_over_counts_the_rows_each_side_gets_right_alone() {
        let y = [0, 1, 1, 0, 2];
        let with = [Some(0), Some(1), Some(0), None, Some(2)];
        let without = [Some(1), Some(1), Some(1), Some(0), Some(2)];
        assert_eq!(gain_over(&y, &with, &without), (1, 2));
    }
}
