//! `loopai`: check, install, activate and execute Loopai programs from the command line.
//!
//! The command is this library's [`main_with_args`], so that other programs can embed the
//! same CLI: the `loopai` binary calls it with the process arguments, and the Python
//! package `loopai-runtime` calls it from its `loopai` script (`python -m loopai`).

mod artifacts;
mod cloud;
mod exec;
mod logger;
mod program;
mod publish;
mod rollout;
mod serve;
mod stats;
mod synth;
mod tasks;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Loopai: synthesized programs that replace LLM calls, run in-process.
#[derive(Debug, Parser)]
#[command(name = "loopai", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a task's data lives.
#[derive(Debug, clap::Args)]
pub(crate) struct TaskArgs {
    /// The data directory (artifacts/, datasets/, config/).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The task id.
    #[arg(long, value_name = "TASK")]
    pub task: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with program files.
    #[command(subcommand)]
    Program(program::ProgramCommand),
    /// Manage the artifact cache of a task (install, list, activate, rollback, promote).
    #[command(subcommand)]
    Artifacts(artifacts::ArtifactsCommand),
    /// Start, promote or abort a task's canary rollout (a running server follows).
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Execute the active program: one --input, or JSONL input objects on stdin.
    Exec(exec::ExecArgs),
    /// Show the daily statistics of a task's dataset (volume, success, latency, outputs).
    Stats(stats::StatsArgs),
    /// Learn a program from a task specification and install it as a new version.
    Synth(synth::SynthArgs),
    /// Score the active program on labelled test examples (exactly as `exec` runs it;
    /// latency p50/p99 are timed after one untimed warm-up call).
    Eval(synth::EvalArgs),
    /// Learn a new version from the stored spec plus the oracle's answers in the local
    /// dataset (nothing leaves the machine), and start its canary rollout.
    Improve(synth::ImproveArgs),
    /// Run the reference cloud server (telemetry collector, artifact repository,
    /// notifications), or make its artifact signing key.
    #[command(subcommand)]
    Cloud(cloud::CloudCommand),
    /// Upload a program (or a version directory) to an artifact repository as a new version.
    Publish(publish::PublishArgs),
    /// Serve tasks over HTTP (POST /execute, /health, /ready, /metrics; with `gateway:` in the
    /// configuration, POST /v1/chat/completions) until SIGTERM.
    Serve(serve::ServeArgs),
    /// Gateway tasks: register one from its specification alone, list their state.
    #[command(subcommand)]
    Tasks(tasks::TasksCommand),
}

/// Runs the `loopai` command with `args` (the first is the program name, as in
/// `std::env::args_os()`) and returns its exit status: 0 on success, 1 on a failure
/// (reported on stderr as `error: ...`), 2 for a usage error (reported by clap). `--help`
/// and `--version` print to stdout and return 0.
///
/// It never calls `std::process::exit`, so an embedding process (the Python package) runs
/// its own exit handlers. Long-running subcommands (`serve`, `cloud serve`) install their
/// own SIGTERM/SIGINT handling; the others leave signals alone.
///
/// ```
/// assert_eq!(loopai_cli::main_with_args(["loopai", "--version"]), 0);
/// assert_eq!(loopai_cli::main_with_args(["loopai", "no-such-command"]), 2);
/// ```
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout with status 0, usage errors to stderr with 2.
            let _ = err.print();
            return err.exit_code();
        }
    };
    match run(cli) {
        Ok(code) => i32::from(code != ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("error: {err}");
            1
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, loopai_core::Error> {
    match cli.command {
        Command::Program(cmd) => program::run(cmd),
        Command::Artifacts(cmd) => artifacts::run(cmd),
        Command::Rollout(cmd) => rollout::run(cmd),
        Command::Exec(args) => exec::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Synth(args) => synth::synth(args),
        Command::Eval(args) => synth::eval(args),
        Command::Improve(args) => synth::improve(args),
        Command::Cloud(cmd) => cloud::run(cmd),
        Command::Publish(args) => publish::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Tasks(cmd) => tasks::run(cmd),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
