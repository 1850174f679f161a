//! `loopai exec`: run the active program on one input or a JSONL stream.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use loopai_core::{Error, ErrorKind, ExplainOptions, Runtime};

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
    /// Print why the active program decides what it does instead of executing: the
    /// decision path as JSON (see "Explanations" in docs/program-format.md), pretty-printed
    /// on a terminal, one line per input otherwise. Nothing is logged.
    #[arg(long)]
    explain: bool,
    /// With --explain: most contributions listed per class of a model.
    #[arg(long, value_name = "N", default_value_t = loopai_core::DEFAULT_EXPLAIN_TOP_K, requires = "explain")]
    top_k: usize,
}

/// Writes the explanation of `input` (pretty on a terminal).
fn explain(
    runtime: &Runtime,
    input: &[u8],
    options: &ExplainOptions,
    out: &mut impl Write,
) -> Result<(), Error> {
    let explanation = runtime.explain_json(input, options)?;
    let written = if std::io::stdout().is_terminal() {
        serde_json::to_writer_pretty(&mut *out, &explanation)
    } else {
        serde_json::to_writer(&mut *out, &explanation)
    };
    written.map_err(|e| Error::io("stdout", e.into()))?;
    out.write_all(b"\n").map_err(|e| Error::io("stdout", e))
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

    let options = ExplainOptions::default().with_top_k(args.top_k);
    if let Some(input) = &args.input {
        if args.explain {
            explain(&runtime, input.as_bytes(), &options, &mut out)?;
            runtime.shutdown(SHUTDOWN_TIMEOUT)?;
            return Ok(ExitCode::SUCCESS);
        }
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
        let done = if args.explain {
            explain(&runtime, &line, &options, &mut out)
        } else {
            runtime.execute_json(&line).and_then(|result| {
                serde_json::to_writer(&mut out, &result)
                    .map_err(|e| Error::io("stdout", e.into()))?;
                out.write_all(b"\n").map_err(write_err)
            })
        };
        match done {
            Ok(()) => {
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
