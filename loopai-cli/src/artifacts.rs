//! `loopai artifacts ...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use loopai_core::{
    ArtifactStore, DeploymentConfig, Error, ErrorKind, Executor, JsonSchema, NewArtifact,
};
use serde_json::Value;

use crate::TaskArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum ArtifactsCommand {
    /// Validate a program and install it as the task's next version.
    Install {
        #[command(flatten)]
        task: TaskArgs,
        /// The program.json to install.
        file: PathBuf,
        /// A task specification whose input_schema/output_schema the runtime enforces.
        #[arg(long, value_name = "SPEC.json")]
        spec: Option<PathBuf>,
        /// Install without making it the active version.
        #[arg(long)]
        no_activate: bool,
    },
    /// List installed versions, each verified as the runtime loads it (with the signature
    /// when `cloud.trusted_keys` is set); damaged ones are marked. Exits 1 when the active
    /// version is damaged.
    List {
        #[command(flatten)]
        task: TaskArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make an installed version the active one (a rollout of another version in
    /// progress is aborted).
    Activate {
        #[command(flatten)]
        task: TaskArgs,
        /// The version number N (as in `vN`).
        #[arg(value_name = "VERSION")]
        number: u32,
    },
    /// Roll back the canary rollout in progress (the stable version stays active and the
    /// canary is not rolled out again automatically); without one, activate the newest
    /// version older than the active one.
    Rollback {
        #[command(flatten)]
        task: TaskArgs,
    },
    /// Finish the canary rollout in progress now (its canary becomes active), or activate
    /// VERSION (aborting a rollout of another version).
    Promote {
        #[command(flatten)]
        task: TaskArgs,
        /// The version number N (as in `vN`); default: the canary in progress.
        #[arg(value_name = "VERSION")]
        number: Option<u32>,
    },
    /// Show the rollout in progress, or the last one, as JSON (docs/rollout.md).
    Rollout {
        #[command(flatten)]
        task: TaskArgs,
    },
}

/// The store of a task that exists, verifying signatures at every load when the data
/// directory's configuration sets `cloud.trusted_keys` (as the runtime does). Every
/// subcommand but `install` only reads or changes what is there: a mistyped data dir or
/// task fails, naming them, and creates nothing.
pub(crate) fn store(task: &TaskArgs) -> Result<ArtifactStore, Error> {
    let store = ArtifactStore::open_existing(&task.data_dir, &task.task)?;
    let config = DeploymentConfig::load_for_data_dir(&task.data_dir)?;
    store.with_trusted_keys(&config.cloud.trusted_keys)
}

pub(crate) fn run(cmd: ArtifactsCommand) -> Result<ExitCode, Error> {
    match cmd {
        ArtifactsCommand::Install {
            task,
            file,
            spec,
            no_activate,
        } => {
            let meta = install_metadata(&task, &file, spec.as_deref())?;
            let bytes = std::fs::read(&file).map_err(|e| Error::io(file.display(), e))?;
            // Installing creates the task; the configuration's trusted keys apply as in
            // `store`.
            let config = DeploymentConfig::load_for_data_dir(&task.data_dir)?;
            let installed = ArtifactStore::open(&task.data_dir, &task.task)?
                .with_trusted_keys(&config.cloud.trusted_keys)?
                .install(&bytes, meta, !no_activate)?;
            println!(
                "installed {} v{} ({}, sha256 {}){}",
                task.task,
                installed.version,
                file.display(),
                &installed.sha256[..12],
                if no_activate { "" } else { ", active" }
            );
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCommand::List { task, json } => list(&task, json),
        ArtifactsCommand::Activate { task, number } => {
            store(&task)?.promote(Some(number))?;
            println!("{} v{number} is active", task.task);
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCommand::Rollback { task } => {
            let store = store(&task)?;
            if let Some(canary) =
                store.abort_rollout("rolled back by hand (loopai artifacts rollback)")?
            {
                let active = store
                    .active_version()?
                    .map_or_else(|| "no version".to_owned(), |v| format!("v{v}"));
                println!(
                    "{} rollout of v{canary} rolled back: {active} stays active",
                    task.task
                );
                return Ok(ExitCode::SUCCESS);
            }
            let version = store.rollback()?;
            println!("{} rolled back: v{version} is active", task.task);
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCommand::Promote { task, number } => {
            let version = store(&task)?.promote(number)?;
            println!("{} v{version} is active", task.task);
            Ok(ExitCode::SUCCESS)
        }
        ArtifactsCommand::Rollout { task } => {
            let status = store(&task)?.rollout()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("serializable")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `loopai artifacts list`: every version verified as the runtime loads it.
fn list(task: &TaskArgs, json: bool) -> Result<ExitCode, Error> {
    let store = store(task)?;
    let mut versions = store.versions()?;
    let active = store.active_version();
    if let Ok(Some(v)) = active {
        // An active version that is no directory (a symlink) is still listed, as damaged.
        if !versions.contains(&v) {
            versions.push(v);
            versions.sort_unstable();
        }
    }
    let active_damaged = match &active {
        Err(e) => Some(e.message().to_owned()),
        Ok(Some(v)) => store.verify(*v).err().map(|e| e.message().to_owned()),
        Ok(None) => None,
    };
    let entries: Vec<(u32, Option<loopai_core::ArtifactMetadata>, Option<String>)> = versions
        .iter()
        .map(|&v| match store.verify(v) {
            Ok(meta) => (v, Some(meta), None),
            Err(e) => {
                let meta = store.metadata(v).ok();
                (v, meta, Some(e.message().to_owned()))
            }
        })
        .collect();
    let active = active.ok().flatten();
    if json {
        let versions: Vec<Value> = entries
            .iter()
            .map(|(v, meta, damaged)| {
                let mut value = meta
                    .as_ref()
                    .and_then(|m| serde_json::to_value(m).ok())
                    .unwrap_or_else(|| serde_json::json!({"version": v}));
                if let (Some(object), Some(damaged)) = (value.as_object_mut(), damaged) {
                    object.insert("damaged".into(), Value::String(damaged.clone()));
                }
                value
            })
            .collect();
        let out = serde_json::json!({
            "task": task.task,
            "active": active,
            "active_damaged": active_damaged,
            "versions": versions,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializable")
        );
    } else if entries.is_empty() {
        println!("no versions installed for {}", task.task);
    } else {
        println!(
            "  {:<8} {:<11} {:<9} {:>10}  {:<24}  sha256",
            "version", "status", "strategy", "confidence", "created_at"
        );
        for (v, meta, damaged) in &entries {
            let mark = if Some(*v) == active { "*" } else { " " };
            match meta {
                Some(m) => {
                    let confidence = m
                        .confidence_score
                        .map_or_else(|| "-".to_string(), |c| format!("{c:.4}"));
                    let status = serde_json::to_value(m.status).expect("serializable");
                    println!(
                        "{mark} v{:<7} {:<11} {:<9} {:>10}  {:<24}  {}",
                        m.version,
                        if damaged.is_some() {
                            "DAMAGED"
                        } else {
                            status.as_str().unwrap_or("?")
                        },
                        m.synthesis_strategy,
                        confidence,
                        m.created_at,
                        m.sha256.get(..12).unwrap_or(&m.sha256)
                    );
                }
                None => println!("{mark} v{v:<7} DAMAGED"),
            }
            if let Some(damaged) = damaged {
                println!("    damaged: {damaged}");
            }
        }
    }
    match active_damaged {
        Some(damaged) => {
            eprintln!(
                "error: the active version of {} is damaged: {damaged}",
                task.task
            );
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Compiles the program (refusing a malformed one before anything is written), checks
/// it against the spec's schemas, and builds the metadata to record.
fn install_metadata(
    task: &TaskArgs,
    file: &std::path::Path,
    spec: Option<&std::path::Path>,
) -> Result<NewArtifact, Error> {
    let program = crate::program::load(file)?;
    if program.task() != task.task {
        return Err(Error::new(
            ErrorKind::Program,
            format!(
                "{}: the program is for task {:?}, not {:?}",
                file.display(),
                program.task(),
                task.task
            ),
        ));
    }
    let mut meta = NewArtifact {
        complexity_metrics: match serde_json::to_value(program.stats()) {
            Ok(Value::Object(map)) => map,
            _ => Default::default(),
        },
        ..NewArtifact::default()
    };
    if let Some(spec) = spec {
        let text = std::fs::read(spec).map_err(|e| Error::io(spec.display(), e))?;
        let value: Value = serde_json::from_slice(&text).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("{}: not valid JSON: {e}", spec.display()),
            )
        })?;
        let compile = |key: &str| -> Result<Option<JsonSchema>, Error> {
            value
                .get(key)
                .map(|v| {
                    JsonSchema::compile(v)
                        .map_err(|e| e.context(format!("{}: {key}", spec.display())))
                })
                .transpose()
        };
        let input = compile("input_schema")?;
        let output = compile("output_schema")?;
        // Refuses a program whose labels the output schema does not allow.
        Executor::new(program, 0, input, output).map_err(|e| e.context(file.display()))?;
        for key in ["input_schema", "output_schema"] {
            if let Some(v) = value.get(key) {
                meta.extra.insert(key.to_string(), v.clone());
            }
        }
    }
    Ok(meta)
}
