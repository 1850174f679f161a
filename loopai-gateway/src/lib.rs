//! # Loopai gateway
//!
//! Distil the LLM a team already calls: every answer it gives on live traffic is a label.
//! This crate holds the gateway's logic, with no HTTP server code (the endpoint
//! `POST /v1/chat/completions` is in `loopai-serve`; the Python `loopai.wrap` calls the same
//! API in-process). The protocol, configuration and files are documented in
//! `docs/gateway.md`.
//!
//! ## Overview
//!
//! * [`add_task`], [`add_task_json`], [`gateway_tasks`], [`summarize`] — tasks registered from a
//!   specification alone (`artifacts/<task>/spec.json`), with no program, and their
//!   figures read from the data directory.
//! * [`Gateway`] — for each call ([`ChatRequest`]): the task (`X-Loopai-Task`, else
//!   `gateway.routes`), the program's input built from the messages
//!   (`gateway.tasks.<task>.input`), and the [`Decision`]: answer locally when the task's
//!   program is at least as confident as the task's calibrated threshold, else forward.
//!   [`Gateway::record_upstream`] records the upstream's answer, normalised to the task's
//!   labels, as the oracle's label (`datasets/<task>/gateway/calls-YYYY-MM-DD.jsonl`).
//! * Encryption at rest: with `storage.encryption` in the deployment configuration the call
//!   log and the learning state (`artifacts/<task>/gateway.json`) are encrypted with its key
//!   (the format of the runtime's logs, `docs/datasets.md`); files written in clear before
//!   still read.
//! * Extraction tasks (an object `output_schema` of fields): the upstream's answer is read
//!   as a JSON object (a Markdown code fence around it is tolerated), checked against the
//!   schema and normalised as the extraction program normalises its values (numbers,
//!   ISO dates); agreement is every field equal; a local answer's content is the object as
//!   compact JSON, keys in schema order ([`add_task_json`] keeps the spec file's order).
//! * Learning: once `learn.min_examples` labels are collected, and each time they grow by
//!   `learn.growth`, a low-priority background thread synthesizes a program from the spec
//!   examples and the oracle's labels (the newest 4,000 at most), scores it on held-out
//!   labels (cross-fitted), installs it and activates it (the first program) or puts it in
//!   canary (later versions: run in shadow on the calls the upstream answers, promoted
//!   when it agrees with the upstream at least as often as the running program on 100 of
//!   them, rolled back otherwise) ([`LearnReport`], [`CanaryStatus`], [`CanaryOutcome`]).
//! * The disagreement budget: the threshold is the lowest confidence whose one-sided 95%
//!   Clopper–Pearson upper bound on disagreement, on pairs the program was not trained on,
//!   is within `gateway.max_disagreement`; it is re-estimated as pairs arrive, and a task
//!   whose disagreement drifts above the budget forwards everything again.
//! * [`GatewayStats`], [`TaskStats`] — coverage, disagreement, upstream calls and tokens
//!   saved per task.
//!
//! ## Quick start
//!
//! ```
//! use loopai_core::DeploymentConfig;
//! use loopai_gateway::{add_task, ChatRequest, Decision, Gateway, Recorded, UpstreamAnswer};
//!
//! let dir = tempfile::tempdir()?;
//! let spec = loopai_synth::TaskSpec::from_json(br#"{"name": "spam",
//!   "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
//!   "output_schema": {"type": "string", "enum": ["spam", "ham"]}}"#)?;
//! add_task(dir.path(), &spec)?;
//! let config = DeploymentConfig::from_yaml_str(
//!     "gateway:\n  upstream: {base_url: 'http://127.0.0.1:9/v1'}\n", "deployment.yaml")?;
//! let gw = Gateway::open(dir.path(), &config)?;
//!
//! let request = ChatRequest::parse(br#"{"model": "m", "messages": [{"role": "user", "content": "WIN a prize"}]}"#)?;
//! match gw.decide(Some("spam"), &request)? {
//!     Decision::Local(answer) => println!("{}", answer.content),
//!     Decision::Forward(pending) => {
//!         // Call the LLM with the request as received, then:
//!         let recorded = gw.record_upstream(pending, &UpstreamAnswer::new(Some("spam"), Some(31), 180.0));
//!         assert_eq!(recorded, Recorded::Label("spam".into()));
//!     }
//!     _ => {}
//! }
//! assert_eq!(gw.stats().tasks[0].oracle_labels, 1);
//! gw.shutdown(std::time::Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Threading & shutdown
//!
//! [`Gateway`] is `Send + Sync` and cheap to clone. [`Gateway::decide`] runs the program
//! (microseconds) and does no I/O: local answers and recorded labels go to the call-log
//! writer thread through a bounded queue (8192 lines; when full, lines are dropped and
//! counted in [`GatewayStats::log_dropped`]); the task runtimes log executions as usual.
//! Three threads belong to the gateway: the call-log writer, the calibrator (re-estimates
//! thresholds) and the learner (synthesis, at `nice` 10 on Linux, one thread). Learning
//! never runs on the calling thread except through [`Gateway::learn_now`].
//! [`Gateway::flush`] and [`Gateway::shutdown`] take a timeout; `shutdown` returns within
//! it even while a learning pass runs: the pass installs nothing after it and stops at its
//! next check (before each synthesis).
//!
//! After `fork()`, the gateway's threads do not exist in the child: its task runtimes
//! refuse to execute there (every call is then forwarded) and its call log is no longer
//! written. Open a new [`Gateway`] in the child.
//!
//! ## Errors
//!
//! Functions return [`loopai_core::Error`]. [`ChatRequest::parse`] gives
//! `InvalidInput` naming the field (`request body: messages[0]: missing field \`role\``);
//! [`Gateway::decide`] gives `InvalidInput` for an unknown `X-Loopai-Task` and `Schema` when
//! the input mapping cannot build the program's input.

mod calibrate;
mod calls;
mod canary;
mod chat;
mod extract;
mod gateway;
mod learn;
mod tasks;

pub use calls::{CallKind, CallRecord, ProgramAnswer, Source};
pub use canary::{CanaryOutcome, CanaryStatus};
pub use chat::{ChatMessage, ChatRequest, Content, Part, StreamOptions};
pub use gateway::{
    gateway_tasks, Decision, Gateway, GatewayStats, LocalAnswer, Pending, Recorded, TaskState,
    TaskStats, UpstreamAnswer, DEFAULT_MAX_DISAGREEMENT,
};
pub use learn::LearnReport;
pub use tasks::{add_task, add_task_json, summarize};
