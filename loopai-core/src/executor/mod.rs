//! The [`Executor`]: runs the active program, validates inputs and outputs against the
//! task's schemas, and swaps programs atomically while other threads execute.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde_json::Value;

pub(crate) mod canary;

use crate::artifact::LoadedArtifact;
use crate::error::{Error, ErrorKind, Result};
use crate::program::{ExplainOptions, Explanation, Outcome, Program, ProgramLimits};
use crate::sampler::SampleReason;
use crate::schema::JsonSchema;
use canary::{ArmHandle, CanarySlot};

/// A program together with the artifact version it was loaded from.
#[derive(Debug)]
pub struct ActiveProgram {
    program: Program,
    version: u32,
    labels: Arc<[String]>,
}

impl ActiveProgram {
    /// The compiled program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The artifact version (0 for a program that did not come from the artifact cache).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The output labels (empty for extraction programs).
    pub fn labels(&self) -> &Arc<[String]> {
        &self.labels
    }
}

/// The result of one execution by an [`Executor`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Execution {
    /// What the program computed.
    pub outcome: Outcome,
    /// The artifact version that computed it.
    pub version: u32,
    /// The labels that `outcome.scores` is aligned with.
    pub labels: Arc<[String]>,
    /// Path of the deciding rule or model, e.g. `decide.steps[0].rules[2]`.
    pub decided_by: Option<String>,
}

/// What [`Executor::execute_routed`] returns: the result, the version that ran (or would
/// have run) and, during a rollout, the arm to count the outcome against.
#[derive(Debug)]
pub(crate) struct Routed {
    pub result: Result<Execution>,
    pub version: u32,
    pub arm: Option<ArmHandle>,
}

/// Runs the active program of a task.
///
/// `Executor` is `Send + Sync`; [`execute`](Executor::execute) takes no lock: the active
/// program is read through an [`ArcSwap`], and [`swap`](Executor::swap) replaces it
/// atomically, so executions in flight finish on the program they started with.
///
/// During a canary rollout ([`Runtime::begin_rollout`](crate::Runtime::begin_rollout)) the
/// executor holds a second program, also behind an atomic pointer, and routes each
/// execution to one of the two by a hash of its routing key (see `docs/rollout.md`).
///
/// ```
/// use loopai_core::{Executor, Program};
/// use serde_json::json;
///
/// let v1 = Program::from_json(br#"{"format": "loopai.program/1", "task": "t",
///   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
///   "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": "ham", "confidence": 0.6}]},
///   "output": {"kind": "label", "labels": ["spam", "ham"]}}"#)?;
/// let executor = Executor::new(v1, 1, None, None)?;
/// let run = executor.execute(&json!({"text": "hello"}))?;
/// assert_eq!((run.outcome.output.as_str(), run.version), (Some("ham"), 1));
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Executor {
    active: ArcSwap<ActiveProgram>,
    /// The canary of a rollout in progress. `canary_on` is set after it is stored and
    /// cleared before it is removed, so without a rollout `execute` reads one flag.
    canary: ArcSwapOption<CanarySlot>,
    canary_on: AtomicBool,
    input_schema: Option<JsonSchema>,
    output_schema: Option<JsonSchema>,
}

impl Executor {
    /// An executor for `program` (artifact `version`), validating inputs against
    /// `input_schema` and outputs against `output_schema` when given.
    ///
    /// Fails with [`ErrorKind::Schema`] when the program's labels are not all allowed by
    /// the output schema's `enum`.
    pub fn new(
        program: Program,
        version: u32,
        input_schema: Option<JsonSchema>,
        output_schema: Option<JsonSchema>,
    ) -> Result<Executor> {
        let active = Self::prepare(program, version, output_schema.as_ref())?;
        Ok(Executor {
            active: ArcSwap::from_pointee(active),
            canary: ArcSwapOption::empty(),
            canary_on: AtomicBool::new(false),
            input_schema,
            output_schema,
        })
    }

    /// An executor for an artifact loaded from the cache: its program, compiled with
    /// `limits`, and the task schemas recorded in its metadata (`input_schema`,
    /// `output_schema`, both optional). This is exactly what [`Runtime`](crate::Runtime)
    /// executes, without the execution log.
    pub fn from_artifact(artifact: &LoadedArtifact, limits: &ProgramLimits) -> Result<Executor> {
        let (program, input, output) = compile_artifact(artifact, limits)?;
        Executor::new(program, artifact.metadata.version, input, output)
    }

    fn prepare(
        program: Program,
        version: u32,
        output_schema: Option<&JsonSchema>,
    ) -> Result<ActiveProgram> {
        let labels: Arc<[String]> = program.labels().unwrap_or(&[]).into();
        if let Some(allowed) = output_schema.and_then(JsonSchema::enum_values) {
            let bad: Vec<&str> = labels
                .iter()
                .filter(|l| !allowed.iter().any(|a| a.as_str() == Some(l.as_str())))
                .map(String::as_str)
                .collect();
            if !bad.is_empty() {
                return Err(Error::new(
                    ErrorKind::Schema,
                    format!(
                        "program v{version} has labels {bad:?} that output_schema.enum does not allow"
                    ),
                ));
            }
        }
        Ok(ActiveProgram {
            program,
            version,
            labels,
        })
    }

    /// Runs the active program on `input`.
    ///
    /// Errors: [`ErrorKind::InvalidInput`] when the input does not match the input schema
    /// or the program's input declarations; [`ErrorKind::InvalidOutput`] when the output
    /// does not match the output schema.
    pub fn execute(&self, input: &Value) -> Result<Execution> {
        if self.canary_on.load(Ordering::Acquire) {
            return self.execute_routed(input, None).result;
        }
        self.run(&self.active.load(), input)
    }

    /// Runs `input` on the arm its routing key selects (`key`, else the input: see
    /// `docs/rollout.md`), or on the active program when no rollout is in progress.
    #[inline]
    pub(crate) fn execute_routed(&self, input: &Value, key: Option<&str>) -> Routed {
        if self.canary_on.load(Ordering::Acquire) {
            if let Some(slot) = self.canary.load_full() {
                let hash = match key {
                    Some(k) => slot.route.hash_key(k),
                    None => slot.route.hash_input(input),
                };
                let canary = slot.route.to_canary(hash);
                let (result, version) = if canary {
                    let program = &slot.program;
                    (self.run(program, input), program.version)
                } else {
                    let active = self.active.load();
                    (self.run(&active, input), active.version)
                };
                return Routed {
                    result,
                    version,
                    arm: Some(ArmHandle { slot, canary }),
                };
            }
        }
        let active = self.active.load();
        Routed {
            result: self.run(&active, input),
            version: active.version,
            arm: None,
        }
    }

    #[inline]
    fn run(&self, active: &ActiveProgram, input: &Value) -> Result<Execution> {
        if let Some(schema) = &self.input_schema {
            schema
                .validate(input)
                .map_err(|v| Error::new(ErrorKind::InvalidInput, format!("input {v}")))?;
        }
        let outcome = active.program.evaluate(input)?;
        if let Some(schema) = &self.output_schema {
            if !outcome.output.is_null() {
                schema.validate(&outcome.output).map_err(|v| {
                    Error::new(
                        ErrorKind::InvalidOutput,
                        format!("program v{} output {v}", active.version),
                    )
                })?;
            }
        }
        let decided_by = outcome
            .decided_by
            .and_then(|id| active.program.decision_path(id))
            .map(str::to_owned);
        Ok(Execution {
            outcome,
            version: active.version,
            labels: Arc::clone(&active.labels),
            decided_by,
        })
    }

    /// Explains what the active program (never a canary) decides on `input`, with the
    /// validation of [`execute`](Executor::execute): see `Runtime::explain`.
    pub(crate) fn explain(&self, input: &Value, options: &ExplainOptions) -> Result<Explanation> {
        let active = self.active.load();
        if let Some(schema) = &self.input_schema {
            schema
                .validate(input)
                .map_err(|v| Error::new(ErrorKind::InvalidInput, format!("input {v}")))?;
        }
        let mut explanation = active.program.explain(input, options)?;
        if let Some(schema) = &self.output_schema {
            if !explanation.output.is_null() {
                schema.validate(&explanation.output).map_err(|v| {
                    Error::new(
                        ErrorKind::InvalidOutput,
                        format!("program v{} output {v}", active.version),
                    )
                })?;
            }
        }
        explanation.version = active.version;
        Ok(explanation)
    }

    /// Replaces the active program atomically. Executions already running finish on the
    /// old program; later ones use the new one.
    pub fn swap(&self, program: Program, version: u32) -> Result<()> {
        let active = Self::prepare(program, version, self.output_schema.as_ref())?;
        self.active.store(Arc::new(active));
        Ok(())
    }

    /// Compiles nothing: checks `program`'s labels against the output schema and wraps it
    /// for [`set_active`](Self::set_active) or a canary slot.
    pub(crate) fn prepare_shared(
        &self,
        program: Program,
        version: u32,
    ) -> Result<Arc<ActiveProgram>> {
        Self::prepare(program, version, self.output_schema.as_ref()).map(Arc::new)
    }

    /// Makes an already prepared program the active one.
    pub(crate) fn set_active(&self, program: Arc<ActiveProgram>) {
        self.active.store(program);
    }

    /// Installs (or replaces) the canary slot.
    pub(crate) fn install_canary(&self, slot: CanarySlot) {
        self.canary.store(Some(Arc::new(slot)));
        self.canary_on.store(true, Ordering::Release);
    }

    /// Removes the canary: every execution runs the active program again.
    pub(crate) fn clear_canary(&self) {
        self.canary_on.store(false, Ordering::Release);
        self.canary.store(None);
    }

    /// The canary slot of the rollout in progress.
    pub(crate) fn canary_slot(&self) -> Option<Arc<CanarySlot>> {
        self.canary.load_full()
    }

    /// Counts a validation of `version`, sampled for `reason`, against its arm during a
    /// rollout (see [`CanarySlot::record_validation`]).
    pub(crate) fn record_validation(&self, version: u32, reason: SampleReason, matched: bool) {
        if self.canary_on.load(Ordering::Acquire) {
            if let Some(slot) = self.canary.load().as_ref() {
                slot.record_validation(version, reason, matched);
            }
        }
    }

    /// The program executing now.
    pub fn current(&self) -> Arc<ActiveProgram> {
        self.active.load_full()
    }

    /// The version executing now.
    pub fn version(&self) -> u32 {
        self.active.load().version
    }
}

/// Compiles an artifact's program and the task schemas recorded in its metadata
/// (`input_schema`, `output_schema`, both optional).
pub(crate) fn compile_artifact(
    loaded: &LoadedArtifact,
    limits: &ProgramLimits,
) -> Result<(Program, Option<JsonSchema>, Option<JsonSchema>)> {
    let where_ = format!("v{}/program.json", loaded.metadata.version);
    let program =
        Program::from_json_with_limits(&loaded.program, limits).map_err(|e| e.context(&where_))?;
    let schema = |key: &str| -> Result<Option<JsonSchema>> {
        loaded
            .metadata
            .extra
            .get(key)
            .filter(|v| !v.is_null())
            .map(|v| {
                JsonSchema::compile(v).map_err(|e| {
                    e.context(format!("v{}/metadata.json {key}", loaded.metadata.version))
                })
            })
            .transpose()
    };
    Ok((program, schema("input_schema")?, schema("output_schema")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn always(label: &str, labels: &[&str]) -> Program {
        let v = json!({"format": "loopai.program/1", "task": "t",
            "inputs": [{"name": "text", "path": "/text", "type": "text"}],
            "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": label, "confidence": 0.9}]},
            "output": {"kind": "label", "labels": labels}});
        Program::from_value(&v, &Default::default()).unwrap()
    }

    fn schema(v: Value) -> Option<JsonSchema> {
        Some(JsonSchema::compile(&v).unwrap())
    }

    #[test]
    fn input_schema_violations_are_invalid_input() {
        let ex = Executor::new(
            always("ham", &["spam", "ham"]),
            1,
            schema(json!({"type": "object", "properties": {"text": {"type": "string", "maxLength": 5}}, "required": ["text"]})),
            None,
        )
        .unwrap();
        let err = ex.execute(&json!({"text": "far too long"})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().starts_with("input /text:"), "{err}");
    }

    #[test]
    fn labels_outside_the_output_enum_are_refused() {
        let out = schema(json!({"type": "string", "enum": ["spam", "ham"]}));
        let err = Executor::new(always("x", &["x", "ham"]), 3, None, out.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Schema);
        assert_eq!(
            err.to_string(),
            "program v3 has labels [\"x\"] that output_schema.enum does not allow"
        );
        let ex = Executor::new(always("ham", &["spam", "ham"]), 1, None, out).unwrap();
        assert!(ex.swap(always("x", &["x"]), 2).is_err());
        assert_eq!(ex.version(), 1, "a refused swap keeps the old program");
    }

    #[test]
    fn swap_is_atomic_under_concurrent_execution() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let ex = Arc::new(Executor::new(always("ham", &["spam", "ham"]), 1, None, None).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (ex, stop, runs) = (ex.clone(), stop.clone(), runs.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let run = ex.execute(&json!({"text": "x"})).unwrap();
                        // Output and version always come from the same program.
                        let expect = if run.version % 2 == 1 { "ham" } else { "spam" };
                        assert_eq!(run.outcome.output, expect);
                        runs.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for v in 2..=100u32 {
            // Let executions happen between swaps, however the threads are scheduled.
            let before = runs.load(Ordering::Relaxed);
            while runs.load(Ordering::Relaxed) < before + 2 {
                std::thread::yield_now();
            }
            let label = if v % 2 == 1 { "ham" } else { "spam" };
            ex.swap(always(label, &["spam", "ham"]), v).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().expect("no worker saw a torn program");
        }
        assert_eq!(ex.version(), 100);
        assert!(runs.load(Ordering::Relaxed) >= 198);
    }

    #[test]
    fn executor_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Executor>();
        check::<Execution>();
    }
}
