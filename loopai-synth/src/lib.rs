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
//! * **ml** — linear models over three feature sets: hashed word 1–2-grams with character
//!   1–5-grams, the same with character 1–3-grams (faster), and word 1–2-grams alone
//!   (character n-grams read the first 512 bytes of the text, punctuation included; `log1p`
//!   counts, L2-normalised; each hash table sized to hold the distinct n-grams of the
//!   examples at most half full). Each is learnt by L2-regularised logistic regression
//!   (sigmoid for two labels, softmax otherwise) trained by seeded SGD — the initial step
//!   calibrated on a sample, after Bottou — with the regularisation chosen by
//!   cross-validation, and by multinomial naive Bayes. Confidence is calibrated by a
//!   temperature fitted on out-of-fold predictions; with two labels the decision threshold
//!   is moved to where the out-of-fold accuracy is highest.
//! * **hybrid** — very high-precision rules first, the best model for everything else.
//! * **auto** (default) — k-fold cross-validation of every candidate; the most accurate one
//!   whose measured latency meets `latency_target_ms` wins, the simpler one on a tie.
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
//! `Config` for an unknown strategy name and `Program` for tasks that cannot be synthesized
//! (extraction tasks are not supported yet).

mod features;
mod improve;
mod linear;
mod metrics;
mod rng;
mod rules;
mod spec;
mod synth;

pub use improve::{
    improve, load_spec, oracle_labels, save_spec, spec_path, Improvement, OracleLabels,
    RuntimeImprove, SPEC_FILE,
};
pub use metrics::{percentile, score, ClassMetrics, Confusion, EvalReport};
pub use spec::{Example, TaskSpec};
pub use synth::{
    synthesize, synthesize_and_install, Activation, CandidateReport, Progress, Strategy,
    SynthOptions, Synthesis,
};
