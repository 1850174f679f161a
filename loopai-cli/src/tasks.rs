//! `loopai tasks`: gateway tasks registered from a specification alone (see
//! `docs/gateway.md`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use loopai_core::{DeploymentConfig, Error};
use loopai_gateway::TaskStats;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TasksCommand {
    /// Register (or update) a task from its specification, with no program: the gateway
    /// forwards its calls, records the LLM's answers as labels and learns a program.
    Add(AddArgs),
    /// Show each gateway task's state (shadow / learning / serving), labels and coverage.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The data directory (artifacts/, datasets/, config/).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The task specification (JSON: name, description, input_schema, output_schema with
    /// the labels or, for an extraction task, an object of fields; zero or more examples).
    #[arg(value_name = "SPEC.json")]
    spec: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// The data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The configuration giving the disagreement budgets (default:
    /// DIR/config/deployment.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: TasksCommand) -> Result<ExitCode, Error> {
    match cmd {
        TasksCommand::Add(args) => add(&args),
        TasksCommand::List(args) => list(&args),
    }
}

fn add(args: &AddArgs) -> Result<ExitCode, Error> {
    let bytes = std::fs::read(&args.spec)
        .map_err(|e| Error::io(format!("reading {}", args.spec.display()), e))?;
    let spec = loopai_gateway::add_task_json(&args.data_dir, &bytes)
        .map_err(|e| e.context(args.spec.display()))?;
    let what = if spec.is_extraction() {
        let fields = spec
            .output_schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
            .map_or(0, serde_json::Map::len);
        format!("extraction of {fields} field(s)")
    } else {
        let labels = spec.labels()?;
        format!("{} labels: {}", labels.len(), labels.join(", "))
    };
    println!(
        "task {}: registered ({what}; {} example(s)); the gateway forwards its calls until a program is learnt",
        spec.name,
        spec.examples.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(args: &ListArgs) -> Result<ExitCode, Error> {
    let config = match &args.config {
        Some(file) => DeploymentConfig::from_file(file)?,
        None => DeploymentConfig::load_for_data_dir(&args.data_dir)?,
    };
    let stats = loopai_gateway::summarize(&args.data_dir, Some(&config))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write_err = |e: std::io::Error| Error::io("stdout", e);
    if args.json {
        serde_json::to_writer_pretty(&mut out, &stats).map_err(|e| write_err(e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;
        return Ok(ExitCode::SUCCESS);
    }
    if stats.is_empty() {
        writeln!(
            out,
            "no gateway task under {} (add one with `loopai tasks add --data-dir DIR SPEC.json`)",
            args.data_dir.join("artifacts").display()
        )
        .map_err(write_err)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<24} {:<9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10}",
        "TASK", "STATE", "LABELS", "CALLS", "LOCAL", "COVERAGE", "VERSION", "THRESHOLD"
    )
    .map_err(write_err)?;
    for t in &stats {
        writeln!(
            out,
            "{:<24} {:<9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10}",
            t.task,
            t.state.as_str(),
            t.labels,
            t.calls,
            t.local,
            t.coverage.map_or("-".to_string(), pct),
            t.active_version
                .map_or("-".to_string(), |v| format!("v{v}")),
            t.threshold.map_or("-".to_string(), |x| format!("{x:.4}")),
        )
        .map_err(write_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The gateway figures of one task, for `loopai stats`.
pub(crate) fn gateway_block(t: &TaskStats) -> String {
    let opt = |x: Option<f64>| x.map_or("-".to_string(), pct);
    format!(
        "gateway: state {}, labels {} ({} from the spec, {} from the oracle, {} outside the labels)\n  \
         calls {}, answered locally {} (coverage {}), forwarded {}\n  \
         upstream calls {} ({} failed), upstream tokens {}, tokens saved {}\n  \
         threshold {}, disagreement {} (95% upper bound {}, budget {})\n",
        t.state.as_str(),
        t.labels,
        t.spec_examples,
        t.oracle_labels,
        t.outside_labels,
        t.calls,
        t.local,
        opt(t.coverage),
        t.forwarded,
        t.upstream_calls,
        t.upstream_errors,
        t.upstream_tokens,
        t.tokens_saved,
        t.threshold.map_or("-".to_string(), |x| format!("{x:.4}")),
        opt(t.disagreement),
        opt(t.disagreement_upper),
        pct(t.max_disagreement),
    )
}
