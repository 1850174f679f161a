//! `loopai rollout ...`: start, finish or abort a task's canary rollout from the command
//! line. The state lives in `artifacts/<task>/rollout.json`: a running `loopai serve` (or
//! any runtime following the artifact cache) adopts the change within its follow interval,
//! and drives a rollout started here (see docs/rollout.md, "Who decides").

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use loopai_core::{Error, ErrorKind, Runtime};

use crate::TaskArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Start the canary rollout of an installed VERSION next to the active one (its first
    /// stage: 10% of the executions by default). A rollout of another version in progress
    /// is superseded. A running `loopai serve` takes it over and decides its stages.
    Start {
        #[command(flatten)]
        task: TaskArgs,
        /// The version number N (as in `vN`).
        #[arg(value_name = "VERSION")]
        number: u32,
    },
    /// Finish the rollout in progress now: its canary becomes the active version.
    Promote {
        #[command(flatten)]
        task: TaskArgs,
    },
    /// Roll back the rollout in progress: the stable version stays active and the canary
    /// is not rolled out again automatically.
    Abort {
        #[command(flatten)]
        task: TaskArgs,
    },
    /// Show the rollout in progress, or the last one, as JSON (docs/rollout.md).
    Status {
        #[command(flatten)]
        task: TaskArgs,
    },
}

/// How long `start` gives its short-lived runtime to save the rollout and release it.
const SHUTDOWN: Duration = Duration::from_secs(10);

pub(crate) fn run(cmd: RolloutCommand) -> Result<ExitCode, Error> {
    match cmd {
        RolloutCommand::Start { task, number } => {
            // A runtime checks the version exactly as serving it would (verified, compiled,
            // labels allowed by the schema) and writes rollout.json; at shutdown it
            // releases the rollout, which a running server then takes over.
            let runtime = Runtime::builder()
                .data_dir(&task.data_dir)
                .task(&task.task)
                .follow_interval(Duration::ZERO)
                .build()?;
            let stable = runtime.active_version();
            let started = runtime.begin_rollout(number);
            let stopped = runtime.shutdown(SHUTDOWN);
            started?;
            stopped?;
            if runtime.config().rollout.enabled {
                println!(
                    "{} canary rollout of v{number} started next to v{stable} (see `loopai rollout status`)",
                    task.task
                );
            } else {
                println!(
                    "{} v{number} is active (rollout.enabled is false: no canary stage)",
                    task.task
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Promote { task } => {
            let store = crate::artifacts::store(&task)?;
            if store
                .rollout()?
                .is_none_or(|s| s.state != loopai_core::RolloutState::InProgress)
            {
                return Err(no_rollout(&task));
            }
            let version = store.promote(None)?;
            println!("{} rollout promoted: v{version} is active", task.task);
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Abort { task } => {
            let store = crate::artifacts::store(&task)?;
            let Some(canary) = store.abort_rollout("rolled back by hand (loopai rollout abort)")?
            else {
                return Err(no_rollout(&task));
            };
            let active = store
                .active_version()?
                .map_or_else(|| "no version".to_owned(), |v| format!("v{v}"));
            println!(
                "{} rollout of v{canary} rolled back: {active} stays active",
                task.task
            );
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Status { task } => {
            let status = crate::artifacts::store(&task)?.rollout()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("serializable")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn no_rollout(task: &TaskArgs) -> Error {
    Error::new(
        ErrorKind::Artifact,
        format!(
            "task {:?} in {}: no rollout in progress",
            task.task,
            task.data_dir.display()
        ),
    )
}
