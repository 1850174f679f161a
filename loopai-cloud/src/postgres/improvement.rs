//! The improvement engine's inputs and state in PostgreSQL. A pass holds a session-level
//! advisory lock on a connection taken out of the pool for the pass: another instance's
//! `pg_try_advisory_lock` fails meanwhile (it skips its pass), and should this instance
//! die, the database ends the session and the lock with it.
//!
//! The task specifications live in `task_specs` (schema v3): each instance imports the
//! files of its own `DIR/specs/` (at start, and at each of its improvement ticks the files
//! that changed since), so the pass reads the same specifications whichever instance runs it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::PgStorage;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{
    sha256_hex, ImprovementBackend, PassLock, StoredSpec, TaskState, VersionStats,
};

/// The advisory lock key of improvement passes (`'loopai.improve'` as a number).
pub(crate) const PASS_LOCK: i64 = 0x6c6f_6f70_6169_6970;

/// The pass lock's connection: released (unlocked, then closed, never reused) on drop.
struct PassGuard {
    client: Option<deadpool_postgres::ClientWrapper>,
    handle: tokio::runtime::Handle,
}

impl Drop for PassGuard {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Not blocking here: the unlock runs on the storage's runtime; the connection
            // closes after it (closing alone would release the lock too).
            self.handle.spawn(async move {
                if let Err(e) = client
                    .execute("SELECT pg_advisory_unlock($1)", &[&PASS_LOCK])
                    .await
                {
                    log::warn!(
                        "releasing the improvement lock: {e} (the closing connection releases it)"
                    );
                }
            });
        }
    }
}

fn version_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// A spec file's task: `<task>.json` with a valid task id, else `None`.
fn spec_task(path: &Path) -> Option<String> {
    if path.extension().and_then(|e| e.to_str()) != Some("json") {
        return None;
    }
    let task = path.file_stem()?.to_str()?;
    loopai_core::validate_task_id(task).ok()?;
    Some(task.to_owned())
}

impl ImprovementBackend for PgStorage {
    fn import_specs(&self, dir: &Path) -> Result<usize> {
        let root = dir.join("specs");
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(root.display(), e)),
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let mut imported = 0;
        for path in files {
            let Some(task) = spec_task(&path) else {
                continue;
            };
            let body = match std::fs::read(&path) {
                Ok(body) => body,
                Err(e) => {
                    log::warn!("specification {}: {e}; not imported", path.display());
                    continue;
                }
            };
            let sha = sha256_hex(&body);
            if self.imported_specs.lock().get(&task) == Some(&sha) {
                continue;
            }
            let problem = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(_)) => None,
                Ok(_) => Some("not a JSON object".to_owned()),
                Err(e) => Some(format!("not JSON ({e})")),
            };
            if let Some(problem) = problem {
                // Said once per content: the file is looked at again when it changes.
                log::warn!("specification {}: {problem}; not imported", path.display());
                self.imported_specs.lock().insert(task, sha);
                continue;
            }
            self.run(async {
                let client = self.client().await?;
                client
                    .execute(
                        "INSERT INTO task_specs (task_id, body, sha256, updated_at)
                         VALUES ($1, $2, $3, now())
                         ON CONFLICT (task_id) DO UPDATE
                         SET body = EXCLUDED.body, sha256 = EXCLUDED.sha256, updated_at = now()
                         WHERE task_specs.sha256 <> EXCLUDED.sha256",
                        &[&task, &body, &sha],
                    )
                    .await
                    .map_err(|e| {
                        self.db_error(&format!("importing specification {}", path.display()), &e)
                    })
            })?;
            log::info!(
                "specification {} imported into {} task_specs (sha256 {sha})",
                path.display(),
                self.place
            );
            self.imported_specs.lock().insert(task, sha);
            imported += 1;
        }
        Ok(imported)
    }

    fn spec(&self, task: &str) -> Result<Option<StoredSpec>> {
        let row = self.run(async {
            let client = self.client().await?;
            client
                .query_opt("SELECT body FROM task_specs WHERE task_id = $1", &[&task])
                .await
                .map_err(|e| self.db_error(&format!("reading the specification of {task:?}"), &e))
        })?;
        Ok(row.map(|r| StoredSpec {
            body: r.get(0),
            place: format!("{} task_specs {task:?}", self.place),
        }))
    }

    fn lock_pass(&self) -> Result<Option<PassLock>> {
        let Some(handle) = self.handle() else {
            return Err(Error::new(ErrorKind::Internal, "the storage is closed"));
        };
        self.run(async {
            let client = self.client().await?;
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&PASS_LOCK])
                .await
                .map_err(|e| self.db_error("taking the improvement lock", &e))?
                .get(0);
            if !locked {
                return Ok(None);
            }
            let guard = PassGuard {
                client: Some(deadpool_postgres::Object::take(client)),
                handle,
            };
            Ok(Some(PassLock::holding(Box::new(guard))))
        })
    }

    fn tasks(&self) -> Result<Vec<String>> {
        self.run(async {
            let client = self.client().await?;
            let rows = client
                .query("SELECT task_id FROM telemetry_tasks ORDER BY task_id", &[])
                .await
                .map_err(|e| self.db_error("listing the tasks with telemetry", &e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn version_stats(
        &self,
        task: &str,
        allowed: Option<&[Value]>,
    ) -> Result<BTreeMap<u32, VersionStats>> {
        let (totals, labelled) = self.run(async {
            let client = self.client().await?;
            let what = format!("reading the validations of {task}");
            let totals = client
                .query(
                    "SELECT program_version, count(*), count(*) FILTER (WHERE NOT matched)
                     FROM validations WHERE task_id = $1 GROUP BY program_version",
                    &[&task],
                )
                .await
                .map_err(|e| self.db_error(&what, &e))?;
            // The validated cases with an oracle answer whose input is known, in the order
            // they were received.
            let labelled = client
                .query(
                    "SELECT v.program_version, v.execution_id, v.validation -> 'oracle_output',
                            v.matched, s.input
                     FROM validations v
                     JOIN telemetry_batches b ON b.batch_id = v.batch_id
                     JOIN LATERAL (
                         SELECT e.summary -> 'input' AS input FROM execution_summaries e
                         WHERE e.task_id = v.task_id AND e.execution_id = v.execution_id
                           AND jsonb_typeof(e.summary -> 'input') = 'object'
                         ORDER BY e.day DESC, e.batch_id DESC LIMIT 1
                     ) s ON true
                     WHERE v.task_id = $1
                       AND v.validation -> 'oracle_output' IS NOT NULL
                       AND v.validation -> 'oracle_output' <> 'null'::jsonb
                     ORDER BY b.received_at, v.batch_id, v.ordinal",
                    &[&task],
                )
                .await
                .map_err(|e| self.db_error(&what, &e))?;
            Ok((totals, labelled))
        })?;
        let mut stats: BTreeMap<u32, VersionStats> = BTreeMap::new();
        for row in totals {
            let s = stats.entry(version_u32(row.get(0))).or_default();
            s.validations = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
            s.mismatches = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        }
        for row in labelled {
            let answer: Value = row.get(2);
            if !allowed.is_none_or(|a| a.contains(&answer)) {
                continue;
            }
            let id: uuid::Uuid = row.get(1);
            let matched: bool = row.get(3);
            let input: Value = row.get(4);
            if let Some(s) = stats.get_mut(&version_u32(row.get(0))) {
                let example = serde_json::json!({"input": input, "output": answer});
                if !matched {
                    s.failing.push((id, example.clone()));
                }
                s.labelled.push(example);
            }
        }
        Ok(stats)
    }

    fn read_state(&self, task: &str) -> Result<TaskState> {
        let state = self.run(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT state FROM improvement_state WHERE task_id = $1",
                    &[&task],
                )
                .await
                .map_err(|e| {
                    self.db_error(&format!("reading the improvement state of {task}"), &e)
                })?;
            Ok(row.map(|r| r.get::<_, Value>(0)))
        })?;
        match state {
            None => Ok(TaskState::default()),
            Some(value) => serde_json::from_value(value).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "database {}: improvement_state of {task}: not a valid improvement state: {e}",
                        self.place
                    ),
                )
            }),
        }
    }

    fn write_state(&self, task: &str, state: &TaskState) -> Result<()> {
        let value = serde_json::to_value(state)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("serializing state: {e}")))?;
        self.run(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO improvement_state (task_id, state, updated_at) VALUES ($1, $2, now())
                     ON CONFLICT (task_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                    &[&task, &value],
                )
                .await
                .map_err(|e| self.db_error(&format!("writing the improvement state of {task}"), &e))?;
            Ok(())
        })
    }

    fn escalate(&self, task: &str, record: &Value) -> Result<String> {
        let id: i64 = self.run(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "INSERT INTO escalations (task_id, record) VALUES ($1, $2) RETURNING id",
                    &[&task, record],
                )
                .await
                .map_err(|e| self.db_error(&format!("recording the escalation of {task}"), &e))?;
            Ok(row.get(0))
        })?;
        Ok(format!("{} escalations id {id}", self.place))
    }
}
