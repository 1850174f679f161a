//! Telemetry batches in PostgreSQL: the batch row (its `batch_id` the primary key), and —
//! for a well-formed `loopai.telemetry/1` batch — its execution summaries and validations,
//! and its fleet figures (`fleet.rs`), in one transaction; the deployment's `last_seen`
//! after it.

use std::time::{Duration, Instant};

use loopai_core::TelemetryBatch;
use serde::Deserialize;
use serde_json::Value;

use super::PgStorage;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{Appended, NewBatch, TelemetryBackend};

/// How often one instance records a deployment as seen, at most.
const SEEN_EVERY: Duration = Duration::from_secs(1);

/// The rows a well-formed batch adds besides its own.
#[derive(Default)]
struct Rows {
    program_version: i64,
    summary_ordinals: Vec<i32>,
    summary_ids: Vec<uuid::Uuid>,
    summaries: Vec<Value>,
    validation_ordinals: Vec<i32>,
    validation_versions: Vec<i64>,
    validation_ids: Vec<uuid::Uuid>,
    validation_matched: Vec<bool>,
    validations: Vec<Value>,
}

impl Rows {
    /// The summaries and validations of `value` when it is a well-formed batch (as the
    /// improvement engine reads them; other batches are stored whole only).
    fn of(value: &Value) -> Rows {
        let Ok(batch) = TelemetryBatch::deserialize(value) else {
            return Rows::default();
        };
        let mut rows = Rows {
            program_version: i64::from(batch.program_version),
            ..Rows::default()
        };
        let raw = |key: &str| value.get(key).and_then(Value::as_array);
        for (i, summary) in batch.execution_summaries.iter().enumerate() {
            rows.summary_ordinals.push(i as i32);
            rows.summary_ids.push(summary.execution_id);
            rows.summaries.push(
                raw("execution_summaries")
                    .and_then(|a| a.get(i))
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        for (i, v) in batch.sampled_validations.iter().enumerate() {
            rows.validation_ordinals.push(i as i32);
            rows.validation_versions.push(i64::from(v.program_version));
            rows.validation_ids.push(v.execution_id);
            rows.validation_matched.push(v.matched);
            rows.validations.push(
                raw("sampled_validations")
                    .and_then(|a| a.get(i))
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        rows
    }
}

impl TelemetryBackend for PgStorage {
    fn append(&self, batch: &NewBatch<'_>) -> Result<Appended> {
        let millis = self.clock.now_millis();
        let day = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("clock out of range: {e}")))?
            .date();
        let day = loopai_core::day_string(day);
        let rows = Rows::of(batch.value);
        let stored = self.run(async {
            let mut client = self.client().await?;
            let what = format!("storing batch {:?}", batch.batch_id);
            let err = |e: tokio_postgres::Error| self.db_error(&what, &e);
            let tx = client.transaction().await.map_err(err)?;
            let inserted = tx
                .execute(
                    "INSERT INTO telemetry_batches
                         (batch_id, task_id, deployment_id, received_at, day, batch)
                     VALUES ($1, $2, $3, to_timestamp($4::bigint / 1000.0), $5::text::date, $6)
                     ON CONFLICT (batch_id) DO NOTHING",
                    &[
                        &batch.batch_id,
                        &batch.task_id,
                        &batch.deployment_id,
                        &millis,
                        &day,
                        batch.value,
                    ],
                )
                .await
                .map_err(err)?;
            if inserted == 0 {
                // Stored already (by this instance or another): nothing to add.
                tx.rollback().await.map_err(err)?;
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO telemetry_tasks (task_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&batch.task_id],
            )
            .await
            .map_err(err)?;
            if !rows.summaries.is_empty() {
                tx.execute(
                    "INSERT INTO execution_summaries
                         (batch_id, ordinal, task_id, program_version, day, execution_id, summary)
                     SELECT $1, o, $2, $3, $4::text::date, e, s
                     FROM unnest($5::int[], $6::uuid[], $7::jsonb[]) AS t(o, e, s)",
                    &[
                        &batch.batch_id,
                        &batch.task_id,
                        &rows.program_version,
                        &day,
                        &rows.summary_ordinals,
                        &rows.summary_ids,
                        &rows.summaries,
                    ],
                )
                .await
                .map_err(err)?;
            }
            if !rows.validations.is_empty() {
                tx.execute(
                    "INSERT INTO validations
                         (batch_id, ordinal, task_id, program_version, day, execution_id,
                          matched, validation)
                     SELECT $1, o, $2, v, $3::text::date, e, m, j
                     FROM unnest($4::int[], $5::bigint[], $6::uuid[], $7::bool[], $8::jsonb[])
                         AS t(o, v, e, m, j)",
                    &[
                        &batch.batch_id,
                        &batch.task_id,
                        &day,
                        &rows.validation_ordinals,
                        &rows.validation_versions,
                        &rows.validation_ids,
                        &rows.validation_matched,
                        &rows.validations,
                    ],
                )
                .await
                .map_err(err)?;
            }
            // The fleet figures, in the same transaction: all of the batch or none of it.
            super::fleet::add_batch(self, &*tx, batch.value, millis).await?;
            tx.commit().await.map_err(err)?;
            Ok(true)
        })?;
        if !stored {
            return Ok(Appended::Duplicate);
        }
        if let Some(deployment) = batch.deployment_id {
            self.record_seen(deployment, millis);
        }
        Ok(Appended::Accepted(format!(
            "{} telemetry_batches",
            self.place
        )))
    }

    fn batches(&self) -> Result<u64> {
        self.run(async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT count(*) FROM telemetry_batches", &[])
                .await
                .map_err(|e| self.db_error("counting batches", &e))?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }
}

impl PgStorage {
    /// Records `deployment` as seen at `millis` (at most once a second per instance); a
    /// failure is logged, not returned: the batch is stored already.
    fn record_seen(&self, deployment: &str, millis: i64) {
        {
            let mut seen = self.seen.lock();
            let now = Instant::now();
            match seen.get(deployment) {
                Some(at) if now.duration_since(*at) < SEEN_EVERY => return,
                _ => {
                    seen.insert(deployment.to_owned(), now);
                }
            }
        }
        let result = self.run(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO deployments (deployment_id, first_seen, last_seen, last_batch_at)
                     VALUES ($1, to_timestamp($2::bigint / 1000.0), to_timestamp($2::bigint / 1000.0),
                             to_timestamp($2::bigint / 1000.0))
                     ON CONFLICT (deployment_id) DO UPDATE
                     SET last_seen = greatest(deployments.last_seen, EXCLUDED.last_seen),
                         last_batch_at = greatest(deployments.last_batch_at, EXCLUDED.last_batch_at)",
                    &[&deployment, &millis],
                )
                .await
                .map_err(|e| self.db_error(&format!("recording deployment {deployment:?}"), &e))
        });
        if let Err(e) = result {
            log::warn!("{e}");
        }
    }
}
