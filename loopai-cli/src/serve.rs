//! `loopai serve`: the HTTP runtime (edge container or central execution).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use loopai_core::Error;
use loopai_serve::{ServeEvent, Server};

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("which").args(["task", "tasks", "all_tasks"]))]
pub(crate) struct ServeArgs {
    /// The data directory (artifacts/, datasets/, config/).
    #[arg(long, value_name = "DIR", env = "LOOPAI_DATA_DIR")]
    data_dir: PathBuf,
    /// Serve this task at POST /execute (the edge runtime).
    #[arg(long, value_name = "TASK", env = "LOOPAI_TASK")]
    task: Option<String>,
    /// Central mode: serve these tasks at POST /v1/execute/{task} (needs --api-keys).
    #[arg(
        long,
        value_name = "A,B,...",
        value_delimiter = ',',
        env = "LOOPAI_TASKS"
    )]
    tasks: Vec<String>,
    /// Central mode: serve every task of the data directory that has an active artifact.
    #[arg(long)]
    all_tasks: bool,
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = loopai_serve::DEFAULT_PORT, env = "LOOPAI_PORT")]
    port: u16,
    /// The address to listen on (0.0.0.0 for every interface, as in a container).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1",
        env = "LOOPAI_BIND"
    )]
    bind: IpAddr,
    /// deployment.yaml to use instead of DATA_DIR/config/deployment.yaml.
    #[arg(long, value_name = "FILE", env = "LOOPAI_CONFIG")]
    config: Option<PathBuf>,
    /// Bearer API keys (JSON lines, see docs/serve.md); required in central mode.
    #[arg(long, value_name = "FILE", env = "LOOPAI_API_KEYS")]
    api_keys: Option<PathBuf>,
    /// Body limit of POST /execute in bytes [default: 2 x execution.max_input_bytes + 64 KiB].
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Most inputs in one batch request.
    #[arg(long, value_name = "N", default_value_t = loopai_serve::DEFAULT_MAX_BATCH)]
    max_batch: usize,
    /// Seconds given at SIGTERM/SIGINT to requests in flight, then to flushing the logs.
    #[arg(long, value_name = "SECS", default_value_t = loopai_serve::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    shutdown_timeout: f64,
    /// Seconds a request's headers may take to arrive (from the accept for a connection's
    /// first request, from its first byte for a later one); slower clients are
    /// disconnected.
    #[arg(long, value_name = "SECS", default_value_t = loopai_serve::DEFAULT_HEADER_READ_TIMEOUT.as_secs_f64())]
    header_read_timeout: f64,
    /// Seconds a keep-alive connection may wait for its next request before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = loopai_serve::DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    idle_timeout: f64,
    /// Most open connections; past it a new connection gets 503 and is closed at once
    /// (lowered at start to fit under the file descriptor limit, ulimit -n).
    #[arg(long, value_name = "N", default_value_t = loopai_serve::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Async worker threads [default: one per CPU].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Seconds between two reads of each task's `active` pointer and rollout state, so that
    /// `loopai artifacts activate|rollback|promote` from another process take effect
    /// without a restart; 0 never reads them.
    #[arg(long, value_name = "SECS", default_value_t = loopai_serve::DEFAULT_FOLLOW_INTERVAL.as_secs_f64())]
    follow_interval: f64,
    /// Keep GET /ready at 200 while an execution log cannot be written (by default it
    /// turns 503, so that load balancers stop sending traffic that would not be logged).
    #[arg(long)]
    ready_ignores_log: bool,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    /// SIGHUP reloads the certificate and key without dropping connections.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOOPAI_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        value_name = "FILE",
        env = "LOOPAI_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

/// `value` seconds of option `--{flag}` as a duration.
fn seconds(flag: &str, value: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        Error::new(
            loopai_core::ErrorKind::Config,
            format!("--{flag}: expected seconds, got {value}"),
        )
    })
}

pub(crate) fn run(args: ServeArgs) -> Result<ExitCode, Error> {
    let shutdown_timeout = seconds("shutdown-timeout", args.shutdown_timeout)?;
    let follow_interval = seconds("follow-interval", args.follow_interval)?;
    let mut builder = Server::builder()
        .data_dir(&args.data_dir)
        .bind(args.bind)
        .port(args.port)
        .max_batch(args.max_batch)
        .header_read_timeout(seconds("header-read-timeout", args.header_read_timeout)?)
        .idle_timeout(seconds("idle-timeout", args.idle_timeout)?)
        .max_connections(args.max_connections)
        .shutdown_timeout(shutdown_timeout)
        .ready_requires_log(!args.ready_ignores_log)
        .follow_interval(follow_interval);
    // No task at all: only the gateway (`gateway:` in the configuration), or an error
    // from `build` saying what to give.
    builder = match (args.task, args.all_tasks) {
        (Some(task), _) => builder.task(task),
        (None, true) => builder.all_tasks(),
        (None, false) if args.tasks.is_empty() => builder,
        (None, false) => builder.tasks(args.tasks),
    };
    if let Some(config) = args.config {
        builder = builder.config_file(config);
    }
    if let Some(keys) = args.api_keys {
        builder = builder.api_keys_file(keys);
    }
    if let Some(bytes) = args.max_body_bytes {
        builder = builder.max_body_bytes(bytes);
    }
    if let Some(workers) = args.workers {
        builder = builder.worker_threads(workers);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        builder = builder.tls(cert, key);
    }
    let server = builder.build()?;
    crate::logger::init();
    let tasks = server.tasks().join(", ");
    let handle = server.spawn()?;
    log::info!("listening on {} (tasks: {tasks})", handle.url());
    handle.run_until_signal(|event| match event {
        ServeEvent::Ready(versions) => {
            let list: Vec<String> = versions.iter().map(|(t, v)| format!("{t} v{v}")).collect();
            log::info!("ready ({})", list.join(", "));
        }
        ServeEvent::Stopping(signal) => log::info!(
            "{signal}: draining requests and flushing the execution logs (at most {:.0} s)",
            shutdown_timeout.as_secs_f64()
        ),
        _ => {}
    })?;
    log::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
