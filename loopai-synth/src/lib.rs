//! Loopai program generator: learns a `loopai.program/1` classifier from a task
//! specification's labeled examples.
//!
//! # Overview
//!
//! A [`TaskSpec`] (the design's `TaskSpecification`) names a task, describes its input and
//! output schemas and carries labeled examples. [`synthesize`] turns it into a program that
//! the runtime core ([`loopai_core::Program`]) runs in-process in microseconds, with no
//! model server and no LLM call. Four strategies ([`Strategy`]):
//!
//! * **rule** — keyword and phrase rules mined per class by sequential covering (each with
//!   high precision on the examples), then a default class. Readable and tiny.
//! * **ml** — linear models over TF-IDF vectors (sublinear TF, smoothed IDF, L2-normalised,
//!   as scikit-learn's `TfidfVectorizer(sublinear_tf=True)`) of two feature sets: word
//!   1–2-grams, and word 1–2-grams with character 1–5-grams of the first 512 bytes of the
//!   text. The vocabularies are the n-grams of the examples, the most frequent kept so that
//!   the program stays within about 6 MB (a budget shared by the vocabulary, its IDF
//!   factors and the int8-quantized weights, whatever the number of classes). Models: a
//!   linear SVM (squared hinge) and a logistic regression, both L2-regularised and trained
//!   by dual coordinate descent as liblinear does, one-vs-rest, with `C` chosen by
//!   cross-validation along a warm-started path (and a class-weighted SVM when the labels
//!   are imbalanced); and multinomial naive Bayes (its rows centred, then int8-quantized
//!   like the others' weights, and stored as the softmax `linear` model it is). Features are extracted once and shared
//!   by every fold and candidate; fold × class jobs run in parallel. Confidence is
//!   calibrated by a temperature fitted on the out-of-fold scores (a softmax over the
//!   one-vs-rest margins); with two labels the decision threshold is moved to where the
//!   out-of-fold accuracy is highest.
//! * **hybrid** — very high-precision rules first, the best model for everything else.
//! * **auto** (default) — k-fold cross-validation of every candidate; the best one on the
//!   spec's `metric` (`accuracy`, the default, or `macro_f1`) whose measured latency meets
//!   `latency_target_ms` wins, the simpler one on a tie. The hybrid competes only when its
//!   rules fix significantly more cross-validated answers of the model it builds on than
//!   they break (a one-sided exact sign test on those rows, p ≤ 0.05; a note says so
//!   otherwise): one row in a few hundred is noise, and on a larger stream a rule chosen on
//!   such evidence was seen to break twice the answers it fixed.
//!
//! # Structured inputs
//!
//! Every field of the input schema is used, by every strategy. `string` properties are
//! text, each with its own clean view and n-gram features (`subject.words` and
//! `body.words` are different model inputs); `number`/`integer` properties are numbers;
//! `boolean` and `enum` properties are categories (without `properties`, the examples' JSON
//! types decide). From the examples (never their labels) a number gets its mean and
//! standard deviation and quantile bin edges, a category its values; the models read the
//! scaled number (clipped to ±8 standard deviations; not naive Bayes, whose inputs must be
//! non-negative), its bin one-hot, the category one-hot (unseen values share an "other"
//! bucket) and, for optional fields, a missing-value flag (a missing number reads the
//! mean). The rule learner tests numbers against learned thresholds (`lines >= 12.5`) and
//! ranges between bin edges, categories by value and optional fields for a missing value,
//! beside its keyword rules. Examples whose fields do not have their schema's type are
//! refused with the path (`spec.examples[3].input.lines: expected a number`).
//!
//! Texts in scripts written without spaces between words (Chinese, Japanese, Thai, Khmer,
//! ...) get word n-grams over `alnum_cjk` tokens, where each character of those scripts is
//! a token of its own (word bigrams become character bigrams there).
//!
//! The training-side feature extraction reproduces the runtime pipeline documented in
//! `docs/program-format.md` bit for bit, so the accuracy the trainer computes is what the
//! runtime gives ([`Synthesis::train_accuracy`]). Long documents are truncated to 64 KiB
//! (`on_oversize: "truncate"`), Unicode text is NFKC-normalised and lowercased. The same
//! spec and [`SynthOptions::seed`] give a byte-identical program.
//!
//! # Quick start
//!
//! ```
//! use loopai_synth::{synthesize, SynthOptions, TaskSpec};
//!
//! let spec = TaskSpec::from_json(br#"{
//!   "name": "greeting",
//!   "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
//!   "output_schema": {"type": "string", "enum": ["greeting", "other"]},
//!   "examples": [
//!     {"input": {"text": "hello there"}, "output": "greeting"},
//!     {"input": {"text": "hello friend"}, "output": "greeting"},
//!     {"input": {"text": "hi, hello"}, "output": "greeting"},
//!     {"input": {"text": "the invoice is due"}, "output": "other"},
//!     {"input": {"text": "the meeting moved"}, "output": "other"},
//!     {"input": {"text": "lunch is at noon"}, "output": "other"}
//!   ]
//! }"#)?;
//! let synthesis = synthesize(&spec, &SynthOptions::default())?;
//! println!("{}", synthesis.report_text());
//! let program = loopai_core::Program::from_json(&synthesis.program_json)?;
//! let out = program.evaluate(&serde_json::json!({"text": "well hello"}))?;
//! assert_eq!(out.output, "greeting");
//! // Install it with loopai_core::ArtifactStore::install(.., synthesis.new_artifact(), ..).
//! # Ok::<(), loopai_core::Error>(())
//! ```
//!
//! # What can be trusted
//!
//! [`Synthesis::warnings`] says what the cross-validated estimate rests on: labels with no
//! example, a single example (cross-validation cannot test it against another of its
//! kind) or five or fewer. The synthesis is not [trusted](Synthesis::trusted) when its
//! cross-validated accuracy is below the spec's `accuracy_target`, or no better than
//! always answering the most frequent label (an accuracy of 0, one label only):
//! [`synthesize_and_install`] then installs the program without activating it, unless
//! [`Activation::Always`] is asked for (`loopai synth --activate-anyway`).
//! A candidate whose program would exceed the runtime's size limits is left out with a
//! [note](Synthesis::notes) and the others still compete; the hash tables of a linear model
//! are halved until its weights (dimension × classes) fit 2^24 numbers, so tasks with
//! hundreds of labels get programs well within the limits.
//!
//! # Extraction
//!
//! A spec whose `output_schema` is an object of fields (`{"type": "object", "properties":
//! {"order_id": {"type": "string"}, "total": {"type": ["number", "null"]}, "when":
//! {"type": "string", "format": "date"}, "to": {"type": "string", "format": "email"}}}`;
//! types `string`, `number`, `integer`, with `format` `date` or `email`; a field is
//! nullable when its type includes `"null"` or it is not `required`) is an extraction
//! task ([`TaskSpec::is_extraction`], [`Strategy::Extract`]). Its examples give the
//! expected object (dates in ISO 8601, `null` for an absent field). Per field, the
//! generator locates each value in its text whatever its notation (`€1.234,50` for
//! 1234.5, `5 Mar 2026` for 2026-03-05, `€` for `EUR`), and builds candidate extractors
//! from the examples: a value shape (the type's own for numbers, dates, e-mails and
//! currencies, or one inferred FlashFill-style — runs of character classes with length
//! ranges, letter-bearing constants such as `1Z` kept), in a context (anywhere and the
//! n-th match; next to the tokens that mark the values, such as currency symbols, chosen
//! by their precision on the examples; after anchor words seen before the values),
//! optionally falling back to the bare shape. Each candidate is cross-validated by exact
//! match (rebuilt on every fold from the other folds); the most accurate wins, the
//! simplest on a tie. The field's confidences are the chosen extractor's out-of-fold
//! precision when it finds a value and when it does not ([`FieldReport`],
//! [`Synthesis::fields`]). The synthesis is trusted when every field beats always
//! answering `null` and reaches the spec's `accuracy_target`.
//!
//! # Evaluation
//!
//! [`score`] computes accuracy, per-class precision/recall/F1, the confusion matrix and
//! latency percentiles from expected and predicted outputs ([`EvalReport`], printable and
//! serializable), for `loopai eval`.
//!
//! # Threads
//!
//! Training uses up to [`SynthOptions::threads`] scoped threads (all joined before
//! [`synthesize`] returns); the result does not depend on the thread count.
//! [`Progress`] callbacks may come from those threads.
//!
//! # Errors
//!
//! Every fallible function returns [`loopai_core::Error`]: `InvalidInput` for a malformed
//! specification or examples file (the message names the path or line, e.g.
//! `spec.examples[12].output: "maybe" is not one of output_schema.enum`), `Io` for files,
//! `Config` for an unknown strategy name (or a classification strategy asked of an
//! extraction task) and `Program` for tasks that cannot be synthesized.

mod extract;
mod features;
mod improve;
mod inputs;
mod linear;
mod metrics;
mod rng;
mod rules;
mod solver;
mod spec;
mod structured;
mod synth;
mod tfidf;

pub use extract::FieldReport;
pub use improve::{
    improve, load_spec, oracle_labels, save_spec, spec_path, Improvement, OracleLabels,
    RuntimeImprove, SPEC_FILE,
};
pub use metrics::{binomial_cdf, percentile, score, ClassMetrics, Confusion, EvalReport};
pub use spec::{Example, Metric, TaskSpec};
pub use synth::{
    synthesize, synthesize_and_install, Activation, CandidateReport, Progress, Strategy,
    SynthOptions, Synthesis,
};
