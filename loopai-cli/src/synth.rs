//! `loopai synth` and `loopai eval`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loopai_core::{ArtifactStore, DeploymentConfig, Error, ErrorKind, Executor, ProgramLimits};
use loopai_synth::{score, Progress, Strategy, SynthOptions, TaskSpec};
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
    /// auto (cross-validate every candidate), rule, ml or hybrid.
    #[arg(long, default_value = "auto")]
    strategy: Strategy,
    /// Seed of every random choice: the same spec and seed give the same program.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// More examples, one `{"input": {...}, "output": ...}` a line.
    #[arg(long, value_name = "FILE.jsonl")]
    examples: Vec<PathBuf>,
    /// Install without making it the active version.
    #[arg(long)]
    no_activate: bool,
    /// Also write the program to this file.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Renders the generator's progress with indicatif, on stderr, only when it is a terminal
/// and a stage takes more than a moment.
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn stage(&self, name: &str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
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
}

pub(crate) fn synth(args: SynthArgs) -> Result<ExitCode, Error> {
    let mut spec = TaskSpec::from_path(&args.spec)?;
    for file in &args.examples {
        let added = spec
            .add_examples_path(file)
            .map_err(|e| e.context(file.display()))?;
        eprintln!("{}: {added} examples added", file.display());
    }
    let mut options = SynthOptions::default()
        .with_strategy(args.strategy)
        .with_seed(args.seed);
    if !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        options = options.with_progress(Arc::new(Bars {
            bar: Mutex::new(None),
        }));
    }
    let (synthesis, installed) =
        loopai_synth::synthesize_and_install(&spec, &options, &args.data_dir, !args.no_activate)?;
    if let Some(out) = &args.output {
        std::fs::write(out, &synthesis.program_json).map_err(|e| Error::io(out.display(), e))?;
    }
    print!("{}", synthesis.report_text());
    println!(
        "installed {} v{}{} ({} bytes, sha256 {})",
        spec.name,
        installed.version,
        if args.no_activate { "" } else { ", active" },
        synthesis.program_json.len(),
        &installed.sha256[..12]
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Labelled test examples, one `{"input": {...}, "output": ...}` a line.
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
    let store = ArtifactStore::open(&args.task.data_dir, &args.task.task)?;
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
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Learns a new version from the stored spec plus the oracle's answers in the local
/// dataset (nothing leaves the machine) and starts its canary.
pub(crate) fn improve(args: ImproveArgs) -> Result<ExitCode, Error> {
    let mut options = SynthOptions::default().with_seed(args.seed);
    if !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        options = options.with_progress(Arc::new(Bars {
            bar: Mutex::new(None),
        }));
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
