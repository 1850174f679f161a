//! `loopai program ...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use loopai_core::{Error, Program};

#[derive(Debug, Subcommand)]
pub(crate) enum ProgramCommand {
    /// Validate and compile a program file; print its shape.
    Check {
        /// The program.json to check.
        file: PathBuf,
    },
}

pub(crate) fn run(cmd: ProgramCommand) -> Result<ExitCode, Error> {
    match cmd {
        ProgramCommand::Check { file } => {
            let program = load(&file)?;
            let s = program.stats();
            let shape = match program.labels() {
                Some(labels) => format!("labels [{}]", labels.join(", ")),
                None => format!(
                    "extracts [{}]",
                    program.extract_fields().unwrap_or_default().join(", ")
                ),
            };
            println!(
                "{}: ok: task {:?}, {shape}; {} features, {} rules, {} keywords, {} regexes, {} weights, {} bytes",
                file.display(),
                program.task(),
                s.features,
                s.rules,
                s.keywords,
                s.regexes,
                s.weights,
                s.program_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads and compiles a program file; errors name the file.
pub(crate) fn load(file: &std::path::Path) -> Result<Program, Error> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file.display(), e))?;
    Program::from_json(&bytes).map_err(|e| e.context(file.display()))
}
