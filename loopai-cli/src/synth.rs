//! `loopai synth` and `loopai eval`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loopai_core::{
    ArtifactStatus, ArtifactStore, DeploymentConfig, Error, ErrorKind, Executor, ProgramLimits,
};
use loopai_synth::{score, Activation, Progress, Strategy, SynthOptions, TaskSpec};
use parking_lot::Mutex;
use serde_json::Value;

use crate::TaskArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct SynthArgs {
    /// The task specification (TaskSpecification JSON); its `name` is the task id.
    spec: PathBuf,
    /// The data directory to install the new version into.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// auto (cross-validate every candidate), rule, ml or hybrid; extraction tasks (an
    /// object output) use extract (auto means it there).
    #[arg(long, default_value = "auto")]
    strategy: Strategy,
    /// Seed of every random choice: the same spec and seed give the same program.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// More examples, one `{"input": {...}, "output": ...}` a line.
    #[arg(long, value_name = "FILE.jsonl")]
    examples: Vec<PathBuf>,
    /// Install without making it the active version.
    #[arg(long, conflicts_with = "activate_anyway")]
    no_activate: bool,
    /// Activate the new version even when its estimate cannot be trusted (cross-validated
    /// accuracy below the spec's accuracy_target, or no better than always answering the
    /// most frequent label); without it such a program is installed but not activated.
    #[arg(long)]
    activate_anyway: bool,
    /// Also write the program to this file.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// No progress output (bars on a terminal, one line per stage and candidate otherwise).
    #[arg(long)]
    quiet: bool,
}

/// The progress receiver for `synth` and `improve`: bars on stderr when it is a terminal,
/// plain lines (one per stage begun and per candidate trained) when it is not, nothing
/// with `--quiet`.
fn progress(quiet: bool) -> Option<Arc<dyn Progress>> {
    if quiet {
        None
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Some(Arc::new(Bars {
            bar: Mutex::new(None),
        }))
    } else {
        Some(Arc::new(Lines {
            start: Instant::now(),
            last_step: Mutex::new(None),
        }))
    }
}

/// Renders the generator's progress as plain lines on stderr (for logs and CI, where a
/// redrawn bar is noise): `[  1.2s] ml/svm[w1-2,c1-5] (12 steps)`, and one line per
/// candidate with its cross-validated accuracy. What a stage is doing (`... fold 2/5 class
/// "sport"`) is printed at most every [`STEP_EVERY`], so that a run with many folds and
/// classes does not flood the log.
struct Lines {
    start: Instant,
    last_step: Mutex<Option<Instant>>,
}

/// Least time between two step lines of [`Lines`].
const STEP_EVERY: Duration = Duration::from_secs(2);

impl Lines {
    fn line(&self, text: std::fmt::Arguments<'_>) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "[{:6.1}s] {text}", self.start.elapsed().as_secs_f64());
    }
}

impl Progress for Lines {
    fn stage(&self, name: &str, total: u64) {
        self.line(format_args!("{name} ({total} steps)"));
    }

    fn advance(&self, _n: u64) {}

    fn finish_stage(&self) {}

    fn candidate(&self, name: &str, cv_accuracy: f64) {
        if cv_accuracy.is_nan() {
            self.line(format_args!("trained {name}: not cross-validated"));
        } else {
            self.line(format_args!("trained {name}: cv accuracy {cv_accuracy:.4}"));
        }
    }

    fn step(&self, what: &str) {
        let mut last = self.last_step.lock();
        if last.is_none_or(|t| t.elapsed() >= STEP_EVERY) {
            *last = Some(Instant::now());
            drop(last);
            self.line(format_args!("  {what}"));
        }
    }
}

/// Renders the generator's progress with indicatif, on stderr, when it is a terminal: one
/// bar per stage, named after it (`ml/svm[w1-2,c1-5]`), its message then saying what the
/// stage is doing (`ml/svm[w1-2] fold 2/5 class "sport", C 0.1..10`).
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn stage(&self, name: &str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:<32} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.lock() = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock() {
            bar.inc(n);
        }
    }

    fn finish_stage(&self) {
        if let Some(bar) = self.bar.lock().take() {
            bar.finish_and_clear();
        }
    }

    fn candidate(&self, name: &str, cv_accuracy: f64) {
        let acc = if cv_accuracy.is_nan() {
            "not cross-validated".to_string()
        } else {
            format!("cv accuracy {cv_accuracy:.4}")
        };
        let line = format!("trained {name}: {acc}");
        match &*self.bar.lock() {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn step(&self, what: &str) {
        if let Some(bar) = &*self.bar.lock() {
            bar.set_message(what.to_string());
        }
    }
}

pub(crate) fn synth(args: SynthArgs) -> Result<ExitCode, Error> {
    let mut spec = TaskSpec::from_path(&args.spec)?;
    for file in &args.examples {
        let added = spec
            .add_examples_path(file)
            .map_err(|e| e.context(file.display()))?;
        eprintln!("{}: {added} examples added", file.display());
    }
    // Checked here too (synthesis checks again) so that the errors name the file.
    spec.validate().map_err(|e| match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Program => e.context(args.spec.display()),
        _ => e,
    })?;
    let mut options = SynthOptions::default()
        .with_strategy(args.strategy)
        .with_seed(args.seed);
    if let Some(progress) = progress(args.quiet) {
        options = options.with_progress(progress);
    }
    let activation = if args.no_activate {
        Activation::Never
    } else if args.activate_anyway {
        Activation::Always
    } else {
        Activation::IfTrusted
    };
    let (synthesis, installed) =
        loopai_synth::synthesize_and_install(&spec, &options, &args.data_dir, activation)?;
    if let Some(out) = &args.output {
        std::fs::write(out, &synthesis.program_json).map_err(|e| Error::io(out.display(), e))?;
    }
    print!("{}", synthesis.report_text());
    println!(
        "installed {} v{}{} ({} bytes, sha256 {})",
        spec.name,
        installed.version,
        if installed.status == ArtifactStatus::Active {
            ", active"
        } else {
            ", not activated"
        },
        synthesis.program_json.len(),
        &installed.sha256[..12]
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Labelled test examples, one `{"input": {...}, "output": ...}` a line. Latency is
    /// timed per example after one untimed warm-up call on the first example (so p99 does
    /// not include the cold first call).
    test: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Scores the active program exactly as `loopai exec` runs it (the same executor, schemas
/// and limits), without writing to the execution log.
pub(crate) fn eval(args: EvalArgs) -> Result<ExitCode, Error> {
    let config = DeploymentConfig::load_for_data_dir(&args.task.data_dir)?;
    let limits = ProgramLimits::default().with_max_input_bytes(config.execution.max_input_bytes);
    let store = ArtifactStore::open_existing(&args.task.data_dir, &args.task.task)?;
    let artifact = store.load_active()?.ok_or_else(|| {
        Error::new(
            ErrorKind::Artifact,
            format!("task {:?} has no active program", args.task.task),
        )
    })?;
    let executor = Executor::from_artifact(&artifact, &limits)?;
    let labels: Vec<String> = executor.current().labels().to_vec();

    let file = std::fs::File::open(&args.test).map_err(|e| Error::io(args.test.display(), e))?;
    let (mut expected, mut predicted, mut latencies) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(args.test.display(), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", args.test.display(), i + 1);
        let row: Value = serde_json::from_str(&line).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{at}: not valid JSON: {e}"),
            )
        })?;
        let (Some(input), Some(output)) = (row.get("input"), row.get("output")) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{at}: expected {{\"input\": {{...}}, \"output\": ...}}"),
            ));
        };
        if latencies.is_empty() {
            // Warm-up, untimed: the first call pays for cold caches and lazy allocations.
            let _ = executor.execute(input);
        }
        let start = Instant::now();
        let result = executor.execute(input);
        latencies.push(start.elapsed().as_secs_f64() * 1e6);
        let got = match result {
            Ok(run) => run.outcome.output,
            Err(e) if e.kind() == ErrorKind::InvalidInput => Value::Null,
            Err(e) => return Err(e.context(at)),
        };
        expected.push(output.clone());
        predicted.push(got);
    }
    if expected.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{}: no test examples", args.test.display()),
        ));
    }
    let report = score(&labels, &expected, &predicted, &latencies);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
    } else {
        println!(
            "{} v{} on {}",
            args.task.task,
            artifact.metadata.version,
            args.test.display()
        );
        print!("{report}");
        println!("(latency: in-process, one call per example, after one untimed warm-up call)");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImproveArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Seed of every random choice of the synthesis.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Activate the new version at once instead of starting its canary rollout.
    #[arg(long)]
    activate: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

/// Learns a new version from the stored spec plus the oracle's answers in the local
/// dataset (nothing leaves the machine) and starts its canary.
pub(crate) fn improve(args: ImproveArgs) -> Result<ExitCode, Error> {
    let mut options = SynthOptions::default().with_seed(args.seed);
    if let Some(progress) = progress(args.quiet) {
        options = options.with_progress(progress);
    }
    let data_dir = &args.task.data_dir;
    let task = &args.task.task;
    let improvement = loopai_synth::improve(data_dir, task, &options)?;
    let labels = &improvement.labels;
    print!("{}", improvement.synthesis.report_text());
    println!(
        "oracle-labelled examples: {} (from {} validations, {} mismatches; skipped: {} without their execution, {} hashed inputs, {} answers not a label)",
        labels.examples.len(),
        labels.validations,
        labels.mismatches,
        labels.missing_execution,
        labels.hashed_inputs,
        labels.not_allowed
    );
    if let (Some(v), Some(acc)) = (improvement.previous_version, improvement.previous_accuracy) {
        println!(
            "on those examples: v{v} {acc:.4}, new v{} {:.4}",
            improvement.installed.version, improvement.new_accuracy
        );
    }
    let version = improvement.installed.version;
    let store = ArtifactStore::open(data_dir, task)?;
    if args.activate {
        store.activate(version)?;
        println!("installed {task} v{version}, active");
    } else {
        // The rollout state lives in artifacts/<task>/rollout.json: a runtime serving the
        // task follows it, and one started later resumes it.
        let runtime = loopai_core::Runtime::builder()
            .data_dir(data_dir)
            .task(task)
            .build()?;
        let started = runtime.begin_rollout(version);
        let stopped = runtime.shutdown(Duration::from_secs(10));
        started?;
        stopped?;
        println!(
            "installed {task} v{version}; canary rollout started (see `loopai artifacts rollout`)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
