//! `loopai cloud ...`: the reference cloud server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use loopai_core::{Error, ErrorKind};

#[derive(Debug, Subcommand)]
pub(crate) enum CloudCommand {
    /// Run the reference cloud (telemetry collector, heartbeats, artifact repository,
    /// notifications, query API, monitoring dashboard at /; see docs/cloud.md) until SIGINT or SIGTERM. Logs go to stderr (level from
    /// LOOPAI_LOG: error, warn, info, debug).
    Serve(Box<ServeArgs>),
    /// Make an ed25519 artifact signing key: writes the secret key to FILE (mode 0600, for
    /// `serve --signing-key`) and prints the public key (for `cloud.trusted_keys`).
    Keygen {
        /// Where to write the secret key; an existing file is not overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The storage directory: batches go to DIR/telemetry/TASK/YYYY-MM-DD.jsonl,
    /// artifacts to DIR/artifacts/TASK/ (servable as static files).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Store everything in this PostgreSQL database instead of DIR's files (telemetry,
    /// artifact versions with their bodies, improvement state, deployments), so several
    /// instances can share it behind a load balancer: postgres://USER[:PASSWORD]@HOST:PORT/DB
    /// (or key=value form). The schema is created or migrated at start. DIR still holds
    /// the improvement engine's specs (DIR/specs/TASK.json). Also read from
    /// LOOPAI_DATABASE_URL when the flag is absent.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// The port to listen on (0 picks a free one; the log says which).
    #[arg(long, value_name = "PORT")]
    port: u16,
    /// The address to listen on (0.0.0.0 or :: for every interface).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// API keys file (JSON lines: {"key", "role": "deployment"|"publisher"|"viewer",
    /// "deployment_id"}; viewer keys read the query API and the dashboard at /). Without
    /// it the server runs open, as a development server.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// Sign published artifacts with the ed25519 secret key in FILE (from `loopai cloud
    /// keygen`); the log prints the public key for deployments' cloud.trusted_keys.
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Seconds between heartbeat events on notification streams.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    heartbeat_sec: u64,
    /// Run the improvement engine every SECONDS: tasks whose newest version fails the
    /// oracle too often are regenerated from DIR/specs/TASK.json plus the failing cases
    /// and published (docs/cloud.md). Off without this flag.
    #[arg(long, value_name = "SECONDS")]
    improve_interval_sec: Option<u64>,
    /// The improvement engine's failure-rate threshold.
    #[arg(long, value_name = "RATE", default_value_t = 0.15)]
    failure_threshold: f64,
    /// Validations a version needs before the engine judges it.
    #[arg(long, value_name = "N", default_value_t = 100)]
    min_samples: u64,
    /// Seconds a request's headers may take to arrive (from the accept for a connection's
    /// first request, from its first byte for a later one); slower clients are
    /// disconnected.
    #[arg(long, value_name = "SECONDS", default_value_t = loopai_cloud::DEFAULT_HEADER_READ_TIMEOUT.as_secs())]
    header_read_timeout_sec: u64,
    /// Seconds a keep-alive connection may wait for its next request before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = loopai_cloud::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout_sec: u64,
    /// Show a deployment as silent on the dashboard and in the query API after this many
    /// of its heartbeat intervals without news (60 s intervals for deployments that send
    /// no heartbeats).
    #[arg(long, value_name = "N", default_value_t = loopai_cloud::DEFAULT_SILENT_AFTER_INTERVALS)]
    silent_after_intervals: u32,
    /// Most open connections (notification streams included); past it a new connection
    /// gets 503 and is closed at once (lowered at start to fit under ulimit -n).
    #[arg(long, value_name = "N", default_value_t = loopai_cloud::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    /// SIGHUP reloads the certificate and key without dropping connections.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
                .port(args.port)
                .header_read_timeout(std::time::Duration::from_secs(args.header_read_timeout_sec))
                .idle_timeout(std::time::Duration::from_secs(args.idle_timeout_sec))
                .max_connections(args.max_connections)
                .silent_after_intervals(args.silent_after_intervals);
            let database = args.database.clone().or_else(|| {
                std::env::var("LOOPAI_DATABASE_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
            });
            if let Some(url) = database {
                builder = builder.database(url);
            }
            if let Some(keys) = &args.api_keys {
                builder = builder.api_keys_file(keys);
            }
            if let Some(key) = &args.signing_key {
                builder = builder.signing_key_file(key);
            }
            if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
                builder = builder.tls(cert, key);
            }
            builder = builder.heartbeat(std::time::Duration::from_secs(args.heartbeat_sec));
            if let Some(every) = args.improve_interval_sec {
                let config = loopai_cloud::ImprovementConfig::default()
                    .with_failure_threshold(args.failure_threshold)
                    .with_min_samples(args.min_samples);
                builder = builder.improvement(config, std::time::Duration::from_secs(every));
            }
            builder
                .build()
                .map_err(core_error)?
                .serve()
                .map_err(core_error)?;
            Ok(ExitCode::SUCCESS)
        }
        CloudCommand::Keygen { out } => {
            let signer = loopai_core::ArtifactSigner::generate()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&out)
                .map_err(|e| Error::io(out.display(), e))?;
            std::io::Write::write_all(
                &mut file,
                format!("{}\n", signer.secret_key_hex()).as_bytes(),
            )
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(out.display(), e))?;
            println!("{}", signer.public_key_hex());
            Ok(ExitCode::SUCCESS)
        }
    }
}
