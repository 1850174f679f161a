//! `loopai cloud ...`: the reference cloud server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use loopai_core::{Error, ErrorKind};

#[derive(Debug, Subcommand)]
pub(crate) enum CloudCommand {
    /// Run the telemetry collector (POST /api/v1/telemetry, GET /health) until SIGINT or
    /// SIGTERM. Logs go to stderr (level from LOOPAI_LOG: error, warn, info, debug).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The storage directory: batches go to DIR/telemetry/<task_id>/YYYY-MM-DD.jsonl.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The port to listen on (0 picks a free one; the log says which).
    #[arg(long, value_name = "PORT")]
    port: u16,
    /// The address to listen on (0.0.0.0 or :: for every interface).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// API keys file (JSON lines: {"key", "role": "deployment"|"publisher",
    /// "deployment_id"}). Without it the server runs open, as a development server.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
}

fn core_error(err: loopai_cloud::Error) -> Error {
    let kind = match err.kind() {
        loopai_cloud::ErrorKind::Config => ErrorKind::Config,
        loopai_cloud::ErrorKind::Io => ErrorKind::Io,
        loopai_cloud::ErrorKind::Timeout => ErrorKind::Timeout,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, err.to_string())
}

pub(crate) fn run(cmd: CloudCommand) -> Result<ExitCode, Error> {
    match cmd {
        CloudCommand::Serve(args) => {
            crate::logger::init();
            let mut builder = loopai_cloud::CloudServer::builder()
                .dir(&args.dir)
                .bind(args.bind)
                .port(args.port);
            if let Some(keys) = &args.api_keys {
                builder = builder.api_keys_file(keys);
            }
            builder
                .build()
                .map_err(core_error)?
                .serve()
                .map_err(core_error)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
