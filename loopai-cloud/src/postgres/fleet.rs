//! The fleet's read side on PostgreSQL (schema v2, `migrations/0002_fleet.sql`): every
//! instance adds what it ingests — an accepted batch's figures to `fleet_daily`, its
//! rollout events to `fleet_rollouts`, heartbeats and last-seen times to
//! `fleet_deployments` — so every instance answers the query API and the dashboard for the
//! whole fleet. Batches are counted once: a batch's figures are added in the transaction
//! that stores it ([`add_batch`], called by `postgres/telemetry.rs`), so only the instance
//! that stored it (the `telemetry_batches` primary key decides) adds them, a duplicate adds
//! nothing, and a crash or a failed figure update stores neither the batch nor its figures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;
use tokio_postgres::GenericClient;

use super::PgStorage;
use crate::error::Result;
use crate::query::figures::{deployment_status, figures, rollout_records};
use crate::query::{
    DailyFilter, DailyVersionStats, DayLatency, DeploymentStatus, FleetIngest, FleetQueries, Page,
    PageRequest, QueryError, RolloutRecord, TaskSummary,
};
use crate::storage::ImprovementBackend;

/// The fleet queries and ingest over a [`PgStorage`].
#[derive(Debug)]
pub(crate) struct PgFleet {
    pg: Arc<PgStorage>,
    silent_after: u32,
}

impl PgFleet {
    pub(crate) fn new(pg: Arc<PgStorage>, silent_after: u32) -> PgFleet {
        PgFleet {
            pg,
            silent_after: silent_after.max(1),
        }
    }
}

/// Records `deployment` for `task` as seen at `now` (with its heartbeat and batch version
/// when known), on `client` (a connection or the batch's transaction).
async fn upsert_deployment(
    pg: &PgStorage,
    client: &impl GenericClient,
    deployment: &str,
    task: &str,
    now: i64,
    heartbeat: Option<Value>,
    batch_version: Option<i64>,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO fleet_deployments (deployment_id, task_id, last_seen_ms, heartbeat, batch_version)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (deployment_id, task_id) DO UPDATE
             SET last_seen_ms = greatest(fleet_deployments.last_seen_ms, EXCLUDED.last_seen_ms),
                 heartbeat = coalesce(EXCLUDED.heartbeat, fleet_deployments.heartbeat),
                 batch_version = coalesce(EXCLUDED.batch_version, fleet_deployments.batch_version)",
            &[&deployment, &task, &now, &heartbeat, &batch_version],
        )
        .await
        .map_err(|e| pg.db_error(&format!("recording deployment {deployment:?}"), &e))?;
    Ok(())
}

/// Adds an accepted batch's figures to `fleet_daily`, its rollout events to
/// `fleet_rollouts` and its deployment to `fleet_deployments`, on `tx` — the transaction
/// that stores the batch, so the figures hold exactly the stored batches (a duplicate
/// `batch_id` is rolled back before this, a failure here stores nothing).
pub(super) async fn add_batch(
    pg: &PgStorage,
    tx: &impl GenericClient,
    batch: &Value,
    now: i64,
) -> Result<()> {
    if let Some(f) = figures(batch) {
        let (w, p50, p95, p99, max) = f.latency.unwrap_or((0, 0.0, 0.0, 0.0, 0.0));
        tx.execute(
            "INSERT INTO fleet_daily (task_id, day, version, executions, errors, abstains,
                             sampled, validations, matches, oracle_cost, batches, latency_weight,
                             p50, p95, p99, max_latency)
                         VALUES ($1, to_date($2, 'YYYY-MM-DD'), $3, $4, $5, $6, $7, $8, $9, $10, 1,
                             $11, $12, $13, $14, $15)
                         ON CONFLICT (task_id, day, version) DO UPDATE SET
                             executions = fleet_daily.executions + EXCLUDED.executions,
                             errors = fleet_daily.errors + EXCLUDED.errors,
                             abstains = fleet_daily.abstains + EXCLUDED.abstains,
                             sampled = fleet_daily.sampled + EXCLUDED.sampled,
                             validations = fleet_daily.validations + EXCLUDED.validations,
                             matches = fleet_daily.matches + EXCLUDED.matches,
                             oracle_cost = fleet_daily.oracle_cost + EXCLUDED.oracle_cost,
                             batches = fleet_daily.batches + 1,
                             latency_weight = fleet_daily.latency_weight + EXCLUDED.latency_weight,
                             p50 = fleet_daily.p50 + EXCLUDED.p50,
                             p95 = fleet_daily.p95 + EXCLUDED.p95,
                             p99 = fleet_daily.p99 + EXCLUDED.p99,
                             max_latency = greatest(fleet_daily.max_latency, EXCLUDED.max_latency)",
            &[
                &f.task,
                &f.day,
                &i64::from(f.version),
                &i64_of(f.executions),
                &i64_of(f.errors),
                &i64_of(f.abstains),
                &i64_of(f.sampled),
                &i64_of(f.validations),
                &i64_of(f.matches),
                &f.oracle_cost,
                &i64_of(w),
                &p50,
                &p95,
                &p99,
                &max,
            ],
        )
        .await
        .map_err(|e| pg.db_error(&format!("adding the figures of task {}", f.task), &e))?;
    }
    let Some(task) = batch.get("task_id").and_then(Value::as_str) else {
        return Ok(());
    };
    for r in &rollout_records(batch) {
        tx.execute(
            "INSERT INTO fleet_rollouts (task_id, deployment_id, at, kind, stable_version,
                                 canary_version, stage, fraction, reason)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &task,
                &r.deployment_id,
                &r.at,
                &r.kind,
                &i64_of(r.stable_version),
                &i64_of(r.canary_version),
                &i64_of(r.stage),
                &r.fraction,
                &r.reason,
            ],
        )
        .await
        .map_err(|e| pg.db_error("adding a rollout event", &e))?;
    }
    if let Some(deployment) = batch.get("deployment_id").and_then(Value::as_str) {
        let version = batch
            .get("program_version")
            .and_then(Value::as_u64)
            .map(i64_of);
        let heartbeat = batch.get("heartbeat").filter(|h| h.is_object()).cloned();
        upsert_deployment(pg, tx, deployment, task, now, heartbeat, version).await?;
    }
    Ok(())
}

fn storage(e: crate::error::Error) -> QueryError {
    QueryError::Storage(e.to_string())
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl FleetIngest for PgFleet {
    /// Nothing to do: the figures of a batch are added in the transaction that stores it
    /// ([`add_batch`], called by `postgres/telemetry.rs`).
    fn ingest_batch(&self, _batch: &Value) -> Result<()> {
        Ok(())
    }

    fn ingest_heartbeat(&self, deployment: &str, task: &str, heartbeat: Value) -> Result<()> {
        let pg = &self.pg;
        let now = pg.clock.now_millis();
        pg.run(async {
            let client = pg.client().await?;
            upsert_deployment(pg, &**client, deployment, task, now, Some(heartbeat), None).await
        })
    }
}

impl PgFleet {
    fn summaries(&self, only: Option<&str>) -> std::result::Result<Vec<TaskSummary>, QueryError> {
        let pg = &self.pg;
        let (daily, deployments, escalations) = pg
            .run(async {
                let client = pg.client().await?;
                let daily = client
                    .query(
                        "SELECT task_id, array_agg(DISTINCT version ORDER BY version),
                                to_char(min(day), 'YYYY-MM-DD'), to_char(max(day), 'YYYY-MM-DD'),
                                sum(executions)::bigint, sum(validations)::bigint, sum(matches)::bigint
                         FROM fleet_daily WHERE ($1::text IS NULL OR task_id = $1) GROUP BY task_id",
                        &[&only],
                    )
                    .await
                    .map_err(|e| pg.db_error("summing fleet_daily", &e))?;
                let deployments = client
                    .query(
                        "SELECT task_id, count(*) FROM fleet_deployments
                         WHERE ($1::text IS NULL OR task_id = $1) GROUP BY task_id",
                        &[&only],
                    )
                    .await
                    .map_err(|e| pg.db_error("counting fleet_deployments", &e))?;
                let escalations = client
                    .query(
                        "SELECT task_id, count(*) FROM escalations
                         WHERE ($1::text IS NULL OR task_id = $1) GROUP BY task_id",
                        &[&only],
                    )
                    .await
                    .map_err(|e| pg.db_error("counting escalations", &e))?;
                Ok((daily, deployments, escalations))
            })
            .map_err(storage)?;
        let count = |rows: &[tokio_postgres::Row]| -> BTreeMap<String, usize> {
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        usize::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    )
                })
                .collect()
        };
        let deployments = count(&deployments);
        let escalations = count(&escalations);
        let mut names: BTreeSet<String> = deployments.keys().cloned().collect();
        let mut by_task: BTreeMap<String, TaskSummary> = BTreeMap::new();
        for r in &daily {
            let task: String = r.get(0);
            let versions: Vec<i64> = r.get(1);
            let (validations, matches) = (u64_of(r.get(5)), u64_of(r.get(6)));
            names.insert(task.clone());
            by_task.insert(
                task.clone(),
                TaskSummary {
                    task_id: task,
                    versions: versions
                        .into_iter()
                        .filter_map(|v| u32::try_from(v).ok())
                        .collect(),
                    published_version: None,
                    first_day: r.get(2),
                    last_day: r.get(3),
                    executions: u64_of(r.get(4)),
                    validations,
                    matches,
                    match_rate: (validations > 0).then(|| matches as f64 / validations as f64),
                    deployments: 0,
                    escalations: 0,
                },
            );
        }
        Ok(names
            .into_iter()
            .map(|task| {
                let mut s = by_task.remove(&task).unwrap_or_else(|| TaskSummary {
                    task_id: task.clone(),
                    versions: Vec::new(),
                    published_version: None,
                    first_day: None,
                    last_day: None,
                    executions: 0,
                    validations: 0,
                    matches: 0,
                    match_rate: None,
                    deployments: 0,
                    escalations: 0,
                });
                s.deployments = deployments.get(&task).copied().unwrap_or(0);
                s.escalations = escalations.get(&task).copied().unwrap_or(0);
                s
            })
            .collect())
    }

    /// `Ok` when something was received for `task` (one indexed lookup), else `NotFound`.
    fn known(&self, task: &str) -> std::result::Result<(), QueryError> {
        let not_found = || {
            QueryError::NotFound(format!(
                "task {task:?}: no telemetry or heartbeat received for it"
            ))
        };
        if loopai_core::validate_task_id(task).is_err() {
            return Err(not_found());
        }
        let pg = &self.pg;
        let exists = pg
            .run(async {
                let client = pg.client().await?;
                let row = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM fleet_daily WHERE task_id = $1)
                             OR EXISTS (SELECT 1 FROM fleet_deployments WHERE task_id = $1)",
                        &[&task],
                    )
                    .await
                    .map_err(|e| pg.db_error(&format!("looking task {task:?} up"), &e))?;
                Ok(row.get::<_, bool>(0))
            })
            .map_err(storage)?;
        if exists {
            Ok(())
        } else {
            Err(not_found())
        }
    }
}

impl FleetQueries for PgFleet {
    fn tasks(&self, page: PageRequest) -> std::result::Result<Page<TaskSummary>, QueryError> {
        Ok(page.slice(self.summaries(None)?))
    }

    fn task(&self, task: &str) -> std::result::Result<TaskSummary, QueryError> {
        self.known(task)?;
        self.summaries(Some(task))?.pop().ok_or_else(|| {
            QueryError::NotFound(format!(
                "task {task:?}: no telemetry or heartbeat received for it"
            ))
        })
    }

    fn daily(
        &self,
        task: &str,
        filter: &DailyFilter,
        page: PageRequest,
    ) -> std::result::Result<Page<DailyVersionStats>, QueryError> {
        self.known(task)?;
        let pg = &self.pg;
        let version = filter.version.map(i64::from);
        let rows = pg
            .run(async {
                let client = pg.client().await?;
                client
                    .query(
                        "SELECT to_char(day, 'YYYY-MM-DD'), version, executions, errors, abstains, sampled,
                                validations, matches, oracle_cost, batches, latency_weight, p50, p95, p99,
                                max_latency
                         FROM fleet_daily
                         WHERE task_id = $1
                           AND ($2::text IS NULL OR day >= to_date($2, 'YYYY-MM-DD'))
                           AND ($3::text IS NULL OR day <= to_date($3, 'YYYY-MM-DD'))
                           AND ($4::bigint IS NULL OR version = $4)
                         ORDER BY day, version",
                        &[&task, &filter.from, &filter.to, &version],
                    )
                    .await
                    .map_err(|e| pg.db_error(&format!("reading the daily figures of {task}"), &e))
            })
            .map_err(storage)?;
        let all = rows
            .iter()
            .map(|r| {
                let (validations, matches) = (u64_of(r.get(6)), u64_of(r.get(7)));
                let weight: i64 = r.get(10);
                let w = weight as f64;
                DailyVersionStats {
                    day: r.get(0),
                    version: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    executions: u64_of(r.get(2)),
                    errors: u64_of(r.get(3)),
                    abstains: u64_of(r.get(4)),
                    sampled: u64_of(r.get(5)),
                    validations,
                    matches,
                    match_rate: (validations > 0).then(|| matches as f64 / validations as f64),
                    latency_ms: (weight > 0).then(|| DayLatency {
                        p50: r.get::<_, f64>(11) / w,
                        p95: r.get::<_, f64>(12) / w,
                        p99: r.get::<_, f64>(13) / w,
                        max: r.get(14),
                    }),
                    oracle_cost: r.get(8),
                    batches: u64_of(r.get(9)),
                }
            })
            .collect();
        Ok(page.slice(all))
    }

    fn rollouts(
        &self,
        task: &str,
        page: PageRequest,
    ) -> std::result::Result<Page<RolloutRecord>, QueryError> {
        self.known(task)?;
        let pg = &self.pg;
        let rows = pg
            .run(async {
                let client = pg.client().await?;
                client
                    .query(
                        "SELECT deployment_id, at, kind, stable_version, canary_version, stage, fraction, reason
                         FROM fleet_rollouts WHERE task_id = $1 ORDER BY at DESC, id DESC",
                        &[&task],
                    )
                    .await
                    .map_err(|e| pg.db_error(&format!("reading the rollouts of {task}"), &e))
            })
            .map_err(storage)?;
        Ok(page.slice(
            rows.iter()
                .map(|r| RolloutRecord {
                    deployment_id: r.get(0),
                    at: r.get(1),
                    kind: r.get(2),
                    stable_version: u64_of(r.get(3)),
                    canary_version: u64_of(r.get(4)),
                    stage: u64_of(r.get(5)),
                    fraction: r.get(6),
                    reason: r.get(7),
                })
                .collect(),
        ))
    }

    fn improvements(
        &self,
        task: &str,
        page: PageRequest,
    ) -> std::result::Result<Page<Value>, QueryError> {
        self.known(task)?;
        let state = self.pg.read_state(task).map_err(storage)?;
        Ok(page.slice(
            state
                .attempts
                .iter()
                .rev()
                .filter_map(|a| serde_json::to_value(a).ok())
                .collect(),
        ))
    }

    fn escalations(
        &self,
        task: Option<&str>,
        page: PageRequest,
    ) -> std::result::Result<Page<Value>, QueryError> {
        if let Some(task) = task {
            self.known(task)?;
        }
        let pg = &self.pg;
        let rows = pg
            .run(async {
                let client = pg.client().await?;
                client
                    .query(
                        "SELECT record FROM escalations WHERE ($1::text IS NULL OR task_id = $1)
                         ORDER BY id DESC",
                        &[&task],
                    )
                    .await
                    .map_err(|e| pg.db_error("reading escalations", &e))
            })
            .map_err(storage)?;
        Ok(page.slice(rows.iter().map(|r| r.get::<_, Value>(0)).collect()))
    }

    fn deployments(
        &self,
        task: Option<&str>,
        page: PageRequest,
    ) -> std::result::Result<Page<DeploymentStatus>, QueryError> {
        if let Some(task) = task {
            self.known(task)?;
        }
        let pg = &self.pg;
        let rows = pg
            .run(async {
                let client = pg.client().await?;
                client
                    .query(
                        "SELECT deployment_id, task_id, last_seen_ms, heartbeat, batch_version
                         FROM fleet_deployments WHERE ($1::text IS NULL OR task_id = $1)
                         ORDER BY deployment_id, task_id",
                        &[&task],
                    )
                    .await
                    .map_err(|e| pg.db_error("reading fleet_deployments", &e))
            })
            .map_err(storage)?;
        let now = pg.clock.now_millis();
        Ok(page.slice(
            rows.iter()
                .map(|r| {
                    let heartbeat: Option<Value> = r.get(3);
                    let version: Option<i64> = r.get(4);
                    deployment_status(
                        &r.get::<_, String>(0),
                        &r.get::<_, String>(1),
                        r.get(2),
                        heartbeat.as_ref(),
                        version.and_then(|v| u32::try_from(v).ok()),
                        now,
                        self.silent_after,
                    )
                })
                .collect(),
        ))
    }
}
