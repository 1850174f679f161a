//! The schema's migrations, embedded, applied in order at start under an advisory lock
//! (instances starting together do not race), each in its own transaction and recorded in
//! `loopai_schema_migrations`.

use crate::error::{Error, ErrorKind, Result};

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "fleet", include_str!("migrations/0002_fleet.sql")),
    (3, "specs", include_str!("migrations/0003_specs.sql")),
];
/// The schema version this build creates.
pub(crate) const LATEST: i32 = 3;
/// The advisory lock key held while migrating (`'loopai.migrate'` as a number).
const MIGRATE_LOCK: i64 = 0x6c6f_6f70_6169_6d31;

fn error(place: &str, what: &str, err: &tokio_postgres::Error) -> Error {
    let detail = match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    };
    Error::new(ErrorKind::Io, format!("database {place}: {what}: {detail}"))
}

/// Applies the missing migrations; returns how many were applied.
pub(crate) async fn run(client: &mut deadpool_postgres::Object, place: &str) -> Result<usize> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(|e| error(place, "taking the migration lock", &e))?;
    let result = apply(client, place).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(|e| error(place, "releasing the migration lock", &e));
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply(client: &mut deadpool_postgres::Object, place: &str) -> Result<usize> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS loopai_schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| error(place, "creating loopai_schema_migrations", &e))?;
    let rows = client
        .query("SELECT version FROM loopai_schema_migrations", &[])
        .await
        .map_err(|e| error(place, "reading loopai_schema_migrations", &e))?;
    let done: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    if let Some(newer) = done.iter().copied().filter(|v| *v > LATEST).max() {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "database {place}: the schema is at v{newer}, newer than this loopai knows (v{LATEST}); upgrade loopai"
            ),
        ));
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let what = format!("applying migration {version:04}_{name}");
        let tx = client
            .transaction()
            .await
            .map_err(|e| error(place, &what, &e))?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| error(place, &what, &e))?;
        tx.execute(
            "INSERT INTO loopai_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(|e| error(place, &what, &e))?;
        tx.commit().await.map_err(|e| error(place, &what, &e))?;
        log::info!("database {place}: applied migration {version:04}_{name}");
        applied += 1;
    }
    Ok(applied)
}
