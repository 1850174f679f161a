//! The PostgreSQL storage: every backend interface of `storage/` on one database shared by
//! any number of instances (`loopai cloud serve --database postgres://...`).
//!
//! * telemetry (`telemetry.rs`): a batch is one row of `telemetry_batches` (its `batch_id`
//!   the primary key, so de-duplication holds across instances), its execution summaries
//!   and validations rows of their own tables, indexed per task / version / day, all in
//!   one transaction;
//! * artifacts (`artifacts.rs`): versions with their bodies in `artifact_versions`; a
//!   publication takes a per-task transaction-scoped advisory lock, so numbers never
//!   collide, and sends `NOTIFY loopai_artifacts` on commit, which every instance's
//!   listener (`listen.rs`) relays to its notification streams;
//! * improvement (`improvement.rs`): state and escalations in tables; a pass holds a
//!   session advisory lock, so one pass runs at a time across instances.
//!
//! The schema is applied at start (`migrate.rs`). The driver is tokio-postgres with a
//! deadpool connection pool, run on a small tokio runtime of the storage's own: the
//! interface is blocking (see `storage/`), so each call blocks on that runtime from the
//! caller's thread (the server's blocking pool, the improvement thread).

mod artifacts;
mod fleet;
mod improvement;
mod listen;
mod migrate;
mod telemetry;

pub(crate) use fleet::PgFleet;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use loopai_core::{ArtifactSigner, Clock};
use parking_lot::Mutex;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::NoTls;

use crate::error::{Error, ErrorKind, Result};

/// Connections each instance keeps at most (the pool's size). With PostgreSQL's default
/// `max_connections` of 100, up to five instances fit (each also holds one listener
/// connection, and one more while an improvement pass runs).
pub(crate) const POOL_SIZE: usize = 16;
/// How long a call waits for a pooled connection, and for a new one to be made.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);
/// The connect timeout when the URL gives none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The channel publications are announced on.
pub(crate) const ARTIFACT_CHANNEL: &str = "loopai_artifacts";

/// The PostgreSQL storage of one instance.
pub(crate) struct PgStorage {
    /// The runtime the pool's connections and the listener run on; `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    config: tokio_postgres::Config,
    /// Where the database is, without credentials (for messages).
    place: String,
    clock: Arc<dyn Clock>,
    signer: Option<ArtifactSigner>,
    /// When this instance last recorded each deployment as seen (at most once a second
    /// each, so that a busy deployment's uploads do not queue on its row).
    seen: Mutex<HashMap<String, Instant>>,
    /// The sha256 of each spec file this instance last imported (or rejected), by task: a
    /// file is looked at again only when it changes.
    imported_specs: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStorage")
            .field("database", &self.place)
            .finish_non_exhaustive()
    }
}

/// `host:port/dbname` of a connection config, never its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

impl PgStorage {
    /// Connects to `url`, applies the schema's migrations and returns the storage.
    /// Errors name the database and what failed (never the password).
    pub(crate) fn open(
        url: &str,
        clock: Arc<dyn Clock>,
        signer: Option<ArtifactSigner>,
    ) -> Result<PgStorage> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("database: not a PostgreSQL connection string or URL: {e}"),
            )
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(Error::new(
                ErrorKind::Config,
                "database: sslmode=require: this build connects without TLS; reach PostgreSQL over a private network or a unix socket (sslmode=disable or prefer)",
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("loopai-cloud");
        }
        let place = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("loopai-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the database runtime", e))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, format!("database: {e}")))?;
        let storage = PgStorage {
            runtime: Some(runtime),
            pool,
            config,
            place,
            clock,
            signer,
            seen: Mutex::new(HashMap::new()),
            imported_specs: Mutex::new(HashMap::new()),
        };
        let started = Instant::now();
        let applied = storage.run(async {
            let mut client = storage.client().await?;
            migrate::run(&mut client, &storage.place).await
        })?;
        log::info!(
            "database {}: schema v{} ({} migrations applied now), ready in {:.3} s",
            storage.place,
            migrate::LATEST,
            applied,
            started.elapsed().as_secs_f64()
        );
        Ok(storage)
    }

    /// Runs `future` on the storage's runtime from a plain (non-async) thread.
    fn run<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        match &self.runtime {
            Some(rt) => rt.block_on(future),
            // Only `drop` takes the runtime.
            None => Err(Error::new(
                ErrorKind::Internal,
                format!("database {}: the storage is closed", self.place),
            )),
        }
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|rt| rt.handle().clone())
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("database {}: no connection: {e}", self.place),
            )
        })
    }

    /// An error about `what` the database did not do.
    fn db_error(&self, what: &str, err: &tokio_postgres::Error) -> Error {
        let detail = match err.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => err.to_string(),
        };
        Error::new(
            ErrorKind::Io,
            format!("database {}: {what}: {detail}", self.place),
        )
    }
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        // Never blocks (the last reference may go away on an async thread): the
        // connections and the listener are dropped with the runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_described_without_its_password() {
        let config = tokio_postgres::Config::from_str(
            "postgres://loopai:s3cret@db.internal:6543/cloud?sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            describe(&config),
            "postgres://loopai@db.internal:6543/cloud"
        );
        let config =
            tokio_postgres::Config::from_str("host=/var/run/postgresql user=x dbname=y").unwrap();
        assert_eq!(describe(&config), "postgres://x@/var/run/postgresql:5432/y");
    }
}
