//! `loopai exec`: run the active program on one input or a JSONL stream.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use loopai_core::{Error, ErrorKind, Runtime};

use crate::TaskArgs;

/// How long `loopai exec` waits at exit for the execution log to be written and synced.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// deployment.yaml to use instead of DATA_DIR/config/deployment.yaml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// One input object as JSON. Without it, JSONL input objects are read from stdin and
    /// one JSON result per line is written to stdout as soon as it is computed (with
    /// `storage.durability: durable`, only once its log record is on disk).
    #[arg(long, value_name = "JSON")]
    input: Option<String>,
}

pub(crate) fn run(args: ExecArgs) -> Result<ExitCode, Error> {
    let mut builder = Runtime::builder()
        .data_dir(&args.task.data_dir)
        .task(&args.task.task);
    if let Some(config) = &args.config {
        builder = builder.config_file(config);
    }
    let runtime = builder.build()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write_err = |e: std::io::Error| Error::io("stdout", e);

    if let Some(input) = &args.input {
        let result = runtime.execute_json(input.as_bytes())?;
        serde_json::to_writer(&mut out, &result).map_err(|e| Error::io("stdout", e.into()))?;
        out.write_all(b"\n").map_err(write_err)?;
        runtime.shutdown(SHUTDOWN_TIMEOUT)?;
        return Ok(ExitCode::SUCCESS);
    }

    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let mut line = Vec::new();
    let mut failed = 0u64;
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("stdin", e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match runtime.execute_json(&line) {
            Ok(result) => {
                serde_json::to_writer(&mut out, &result)
                    .map_err(|e| Error::io("stdout", e.into()))?;
                out.write_all(b"\n").map_err(write_err)?;
                // Streaming: each result is visible as soon as it is computed.
                out.flush().map_err(write_err)?;
            }
            Err(err)
                if err.kind() == ErrorKind::InvalidInput
                    || err.kind() == ErrorKind::InvalidOutput =>
            {
                failed += 1;
                eprintln!("error: stdin line {line_no}: {err}");
            }
            Err(err) => return Err(err.context(format!("stdin line {line_no}"))),
        }
    }
    // Every result printed is logged; make the whole log durable before exiting.
    runtime.shutdown(SHUTDOWN_TIMEOUT)?;
    if failed > 0 {
        eprintln!("error: {failed} of {line_no} input lines failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
