//! `loopai`: check, install, activate and execute Loopai programs from the command line.

mod artifacts;
mod cloud;
mod exec;
mod logger;
mod program;
mod publish;
mod serve;
mod stats;
mod synth;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The dataset writer thread frees the execution records that `execute` (a server worker
/// thread, under `loopai serve`) allocated; glibc's malloc takes an arena lock for each
/// such cross-thread free, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Serve tasks over HTTP (POST /execute, /health, /ready, /metrics) until SIGTERM.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Program(cmd) => program::run(cmd),
        Command::Artifacts(cmd) => artifacts::run(cmd),
        Command::Exec(args) => exec::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Synth(args) => synth::synth(args),
        Command::Eval(args) => synth::eval(args),
        Command::Improve(args) => synth::improve(args),
        Command::Cloud(cmd) => cloud::run(cmd),
        Command::Publish(args) => publish::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
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
