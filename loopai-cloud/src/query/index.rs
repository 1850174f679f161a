//! [`FleetIndex`]: the fleet queries over the file store.
//!
//! * Per task, per UTC day and program version: the sums of the stored batches' metrics,
//!   updated when a batch is accepted ([`FleetIndex::ingest_batch`]) and rebuilt from
//!   `<dir>/telemetry/<task>/*.jsonl` at start (one read of every batch, at start only).
//! * Per task: the rollout events the batches carried (the newest
//!   [`MAX_ROLLOUT_EVENTS`]).
//! * Per deployment and task: the last heartbeat and when it was last heard from, kept in
//!   `<dir>/fleet/deployments.json` (rewritten atomically on change, so it survives a
//!   restart; a crash loses at most the last update, which the next heartbeat repeats).
//! * Improvement attempts are read from the improvement engine's storage
//!   ([`ImprovementBackend::read_state`], files or database) and escalations from
//!   `<dir>/escalations.jsonl`, when asked: they are small and written rarely.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loopai_core::{validate_task_id, Clock};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::figures::{deployment_status, figures, rollout_records};
use super::{
    DailyFilter, DailyVersionStats, DayLatency, DeploymentStatus, FleetIngest, FleetQueries, Page,
    PageRequest, QueryError, RolloutRecord, TaskSummary,
};
use crate::error::{Error, Result};
use crate::storage::ImprovementBackend;

/// Rollout events kept per task (the oldest are forgotten past it).
pub(crate) const MAX_ROLLOUT_EVENTS: usize = 10_000;
/// The default number of missed intervals after which a deployment is `silent`.
pub const DEFAULT_SILENT_AFTER_INTERVALS: u32 = 3;

const DEPLOYMENTS_FORMAT: &str = "loopai.fleet-deployments/1";

/// Sums over the batches of one task, day and version.
#[derive(Debug, Clone, Default)]
struct DayAgg {
    executions: u64,
    errors: u64,
    abstains: u64,
    sampled: u64,
    validations: u64,
    matches: u64,
    oracle_cost: f64,
    batches: u64,
    /// Executions of the batches that had latency percentiles (the weights).
    latency_weight: u64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Default)]
struct TaskIndex {
    /// By (day, version).
    days: BTreeMap<(String, u32), DayAgg>,
    /// Oldest first.
    rollouts: Vec<RolloutRecord>,
}

/// A deployment's last known state, as kept in `deployments.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DeploymentEntry {
    deployment_id: String,
    task_id: String,
    last_seen_ms: i64,
    #[serde(default)]
    heartbeat: Option<Value>,
    #[serde(default)]
    batch_version: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct DeploymentsFile {
    format: String,
    deployments: Vec<DeploymentEntry>,
}

#[derive(Debug, Default)]
struct IndexState {
    tasks: BTreeMap<String, TaskIndex>,
    /// By (deployment id, task id).
    deployments: BTreeMap<(String, String), DeploymentEntry>,
}

/// What [`FleetIndex::open`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexReport {
    pub(crate) batches: usize,
    pub(crate) skipped_lines: usize,
    pub(crate) deployments: usize,
}

/// The fleet queries over the file store. See the module documentation.
#[derive(Debug)]
pub(crate) struct FleetIndex {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    silent_after: u32,
    improvement: Arc<dyn ImprovementBackend>,
    state: RwLock<IndexState>,
    /// Serializes rewrites of `deployments.json`.
    persist: Mutex<()>,
}

impl FleetIndex {
    /// Opens the index of the server directory `dir`: reads `fleet/deployments.json` and
    /// aggregates every stored batch.
    pub(crate) fn open(
        dir: &Path,
        clock: Arc<dyn Clock>,
        silent_after: u32,
        improvement: Arc<dyn ImprovementBackend>,
    ) -> Result<(FleetIndex, IndexReport)> {
        let index = FleetIndex {
            dir: dir.to_path_buf(),
            clock,
            silent_after: silent_after.max(1),
            improvement,
            state: RwLock::new(IndexState::default()),
            persist: Mutex::new(()),
        };
        let mut report = IndexReport::default();
        let deployments_path = index.deployments_path();
        match fs::read(&deployments_path) {
            Ok(bytes) => {
                let file: DeploymentsFile = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new(
                        crate::error::ErrorKind::Io,
                        format!(
                            "{}: not a deployments file ({e}); move it aside to start afresh",
                            deployments_path.display()
                        ),
                    )
                })?;
                let mut state = index.state.write();
                for d in file.deployments {
                    state
                        .deployments
                        .insert((d.deployment_id.clone(), d.task_id.clone()), d);
                }
                report.deployments = state.deployments.len();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(deployments_path.display(), e)),
        }
        let root = dir.join("telemetry");
        let tasks = match fs::read_dir(&root) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((index, report)),
            Err(e) => return Err(Error::io(root.display(), e)),
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for task in tasks {
            let task = task.map_err(|e| Error::io(root.display(), e))?;
            let ok = task
                .file_name()
                .to_str()
                .is_some_and(|n| validate_task_id(n).is_ok());
            if !ok || !task.path().is_dir() {
                continue;
            }
            let entries =
                fs::read_dir(task.path()).map_err(|e| Error::io(task.path().display(), e))?;
            for f in entries {
                let path = f.map_err(|e| Error::io(task.path().display(), e))?.path();
                if path.extension().is_some_and(|x| x == "jsonl") {
                    files.push(path);
                }
            }
        }
        files.sort();
        for path in files {
            let file = fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| Error::io(path.display(), e))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(&line) {
                    Ok(batch) if index.aggregate(&batch) => report.batches += 1,
                    _ => report.skipped_lines += 1,
                }
            }
        }
        Ok((index, report))
    }

    fn deployments_path(&self) -> PathBuf {
        self.dir.join("fleet").join("deployments.json")
    }

    /// Adds an accepted batch: its figures, its rollout events, and — with a
    /// `deployment_id` — that the deployment was heard from now (with the heartbeat it
    /// carries, if any).
    fn add_batch(&self, batch: &Value) -> Result<()> {
        self.aggregate(batch);
        let (Some(deployment), Some(task)) = (
            batch.get("deployment_id").and_then(Value::as_str),
            batch.get("task_id").and_then(Value::as_str),
        ) else {
            return Ok(());
        };
        let now = self.clock.now_millis();
        {
            let mut state = self.state.write();
            let entry = state
                .deployments
                .entry((deployment.to_owned(), task.to_owned()))
                .or_insert_with(|| DeploymentEntry {
                    deployment_id: deployment.to_owned(),
                    task_id: task.to_owned(),
                    last_seen_ms: now,
                    heartbeat: None,
                    batch_version: None,
                });
            entry.last_seen_ms = entry.last_seen_ms.max(now);
            entry.batch_version = batch
                .get("program_version")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .or(entry.batch_version);
            if let Some(hb) = batch.get("heartbeat").filter(|h| h.is_object()) {
                entry.heartbeat = Some(hb.clone());
            }
        }
        self.persist_deployments()
    }

    /// Records a heartbeat (already checked against [`loopai_core::Heartbeat`]) heard now.
    fn add_heartbeat(&self, deployment: &str, task: &str, heartbeat: Value) -> Result<()> {
        let now = self.clock.now_millis();
        {
            let mut state = self.state.write();
            let entry = state
                .deployments
                .entry((deployment.to_owned(), task.to_owned()))
                .or_insert_with(|| DeploymentEntry {
                    deployment_id: deployment.to_owned(),
                    task_id: task.to_owned(),
                    last_seen_ms: now,
                    heartbeat: None,
                    batch_version: None,
                });
            entry.last_seen_ms = entry.last_seen_ms.max(now);
            entry.heartbeat = Some(heartbeat);
        }
        self.persist_deployments()
    }

    /// Rewrites `deployments.json` (temporary file, then rename).
    fn persist_deployments(&self) -> Result<()> {
        let _guard = self.persist.lock();
        let file = DeploymentsFile {
            format: DEPLOYMENTS_FORMAT.to_owned(),
            deployments: self.state.read().deployments.values().cloned().collect(),
        };
        let path = self.deployments_path();
        let dir = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let bytes = serde_json::to_vec(&file).map_err(|e| {
            Error::new(
                crate::error::ErrorKind::Internal,
                format!("deployments: {e}"),
            )
        })?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display(), e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(path.display(), e))
    }

    /// Adds a batch's figures and rollout events; `false` when it is not a batch (no
    /// `task_id`).
    fn aggregate(&self, batch: &Value) -> bool {
        let Some(task) = batch.get("task_id").and_then(Value::as_str) else {
            return false;
        };
        let mut state = self.state.write();
        let index = state.tasks.entry(task.to_owned()).or_default();
        if let Some(f) = figures(batch) {
            let agg = index.days.entry((f.day, f.version)).or_default();
            agg.executions += f.executions;
            agg.errors += f.errors;
            agg.abstains += f.abstains;
            agg.sampled += f.sampled;
            agg.validations += f.validations;
            agg.matches += f.matches;
            agg.oracle_cost += f.oracle_cost;
            agg.batches += 1;
            if let Some((w, p50, p95, p99, max)) = f.latency {
                agg.latency_weight += w;
                agg.p50 += p50;
                agg.p95 += p95;
                agg.p99 += p99;
                agg.max = agg.max.max(max);
            }
        }
        let events = rollout_records(batch);
        if !events.is_empty() {
            index.rollouts.extend(events);
            if index.rollouts.len() > MAX_ROLLOUT_EVENTS {
                let extra = index.rollouts.len() - MAX_ROLLOUT_EVENTS;
                index.rollouts.drain(..extra);
            }
        }
        true
    }

    fn status_of(&self, d: &DeploymentEntry, now: i64) -> DeploymentStatus {
        deployment_status(
            &d.deployment_id,
            &d.task_id,
            d.last_seen_ms,
            d.heartbeat.as_ref(),
            d.batch_version,
            now,
            self.silent_after,
        )
    }

    fn read_escalations(&self) -> std::result::Result<Vec<Value>, QueryError> {
        let path = self.dir.join("escalations.jsonl");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(QueryError::Storage(format!("{}: {e}", path.display()))),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect())
    }

    fn summary(
        &self,
        task: &str,
        index: &TaskIndex,
        state: &IndexState,
        escalations: usize,
    ) -> TaskSummary {
        let mut versions = BTreeSet::new();
        let (mut executions, mut validations, mut matches) = (0, 0, 0);
        for ((_, version), agg) in &index.days {
            versions.insert(*version);
            executions += agg.executions;
            validations += agg.validations;
            matches += agg.matches;
        }
        TaskSummary {
            task_id: task.to_owned(),
            versions: versions.into_iter().collect(),
            published_version: None,
            first_day: index.days.keys().next().map(|(d, _)| d.clone()),
            last_day: index.days.keys().next_back().map(|(d, _)| d.clone()),
            executions,
            validations,
            matches,
            match_rate: (validations > 0).then(|| matches as f64 / validations as f64),
            deployments: state.deployments.keys().filter(|(_, t)| t == task).count(),
            escalations,
        }
    }

    fn known(&self, task: &str) -> std::result::Result<(), QueryError> {
        if validate_task_id(task).is_err() {
            return Err(QueryError::NotFound(format!("task {task:?}: no such task")));
        }
        let state = self.state.read();
        if state.tasks.contains_key(task) || state.deployments.keys().any(|(_, t)| t == task) {
            Ok(())
        } else {
            Err(QueryError::NotFound(format!(
                "task {task:?}: no telemetry or heartbeat received for it"
            )))
        }
    }
}

impl FleetIngest for FleetIndex {
    fn ingest_batch(&self, batch: &Value) -> Result<()> {
        self.add_batch(batch)
    }

    fn ingest_heartbeat(&self, deployment: &str, task: &str, heartbeat: Value) -> Result<()> {
        self.add_heartbeat(deployment, task, heartbeat)
    }
}

fn escalation_task(e: &Value) -> Option<&str> {
    e.get("task_id").and_then(Value::as_str)
}

impl FleetQueries for FleetIndex {
    fn tasks(&self, page: PageRequest) -> std::result::Result<Page<TaskSummary>, QueryError> {
        let escalations = self.read_escalations()?;
        let state = self.state.read();
        let mut names: BTreeSet<&String> = state.tasks.keys().collect();
        names.extend(state.deployments.keys().map(|(_, t)| t));
        let empty = TaskIndex::default();
        let all: Vec<TaskSummary> = names
            .into_iter()
            .map(|name| {
                let n = escalations
                    .iter()
                    .filter(|e| escalation_task(e) == Some(name))
                    .count();
                self.summary(name, state.tasks.get(name).unwrap_or(&empty), &state, n)
            })
            .collect();
        Ok(page.slice(all))
    }

    fn task(&self, task: &str) -> std::result::Result<TaskSummary, QueryError> {
        self.known(task)?;
        let escalations = self.read_escalations()?;
        let n = escalations
            .iter()
            .filter(|e| escalation_task(e) == Some(task))
            .count();
        let state = self.state.read();
        let empty = TaskIndex::default();
        Ok(self.summary(task, state.tasks.get(task).unwrap_or(&empty), &state, n))
    }

    fn daily(
        &self,
        task: &str,
        filter: &DailyFilter,
        page: PageRequest,
    ) -> std::result::Result<Page<DailyVersionStats>, QueryError> {
        self.known(task)?;
        let state = self.state.read();
        let Some(index) = state.tasks.get(task) else {
            return Ok(page.slice(Vec::new()));
        };
        let rows: Vec<DailyVersionStats> = index
            .days
            .iter()
            .filter(|((day, version), _)| {
                filter.from.as_ref().is_none_or(|f| day >= f)
                    && filter.to.as_ref().is_none_or(|t| day <= t)
                    && filter.version.is_none_or(|v| v == *version)
            })
            .map(|((day, version), a)| {
                let w = a.latency_weight as f64;
                DailyVersionStats {
                    day: day.clone(),
                    version: *version,
                    executions: a.executions,
                    errors: a.errors,
                    abstains: a.abstains,
                    sampled: a.sampled,
                    validations: a.validations,
                    matches: a.matches,
                    match_rate: (a.validations > 0)
                        .then(|| a.matches as f64 / a.validations as f64),
                    latency_ms: (a.latency_weight > 0).then(|| DayLatency {
                        p50: a.p50 / w,
                        p95: a.p95 / w,
                        p99: a.p99 / w,
                        max: a.max,
                    }),
                    oracle_cost: a.oracle_cost,
                    batches: a.batches,
                }
            })
            .collect();
        Ok(page.slice(rows))
    }

    fn rollouts(
        &self,
        task: &str,
        page: PageRequest,
    ) -> std::result::Result<Page<RolloutRecord>, QueryError> {
        self.known(task)?;
        let state = self.state.read();
        let mut all: Vec<RolloutRecord> = state
            .tasks
            .get(task)
            .map(|t| t.rollouts.clone())
            .unwrap_or_default();
        // Newest first: by the event's own time, arrival order breaking ties.
        all.reverse();
        all.sort_by(|a, b| b.at.cmp(&a.at));
        Ok(page.slice(all))
    }

    fn improvements(
        &self,
        task: &str,
        page: PageRequest,
    ) -> std::result::Result<Page<Value>, QueryError> {
        self.known(task)?;
        let state = self
            .improvement
            .read_state(task)
            .map_err(|e| QueryError::Storage(e.to_string()))?;
        let attempts: Vec<Value> = state
            .attempts
            .iter()
            .rev()
            .filter_map(|a| serde_json::to_value(a).ok())
            .collect();
        Ok(page.slice(attempts))
    }

    fn escalations(
        &self,
        task: Option<&str>,
        page: PageRequest,
    ) -> std::result::Result<Page<Value>, QueryError> {
        if let Some(task) = task {
            self.known(task)?;
        }
        let all: Vec<Value> = self
            .read_escalations()?
            .into_iter()
            .rev()
            .filter(|e| task.is_none_or(|t| escalation_task(e) == Some(t)))
            .collect();
        Ok(page.slice(all))
    }

    fn deployments(
        &self,
        task: Option<&str>,
        page: PageRequest,
    ) -> std::result::Result<Page<DeploymentStatus>, QueryError> {
        if let Some(task) = task {
            self.known(task)?;
        }
        let now = self.clock.now_millis();
        let state = self.state.read();
        let all: Vec<DeploymentStatus> = state
            .deployments
            .values()
            .filter(|d| task.is_none_or(|t| d.task_id == t))
            .map(|d| self.status_of(d, now))
            .collect();
        Ok(page.slice(all))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use serde_json::json;

    use super::*;
    use loopai_core::Timestamp;

    #[derive(Debug)]
    struct FixedClock(AtomicI64);

    impl Clock for FixedClock {
        fn now_millis(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn files(dir: &Path) -> Arc<dyn ImprovementBackend> {
        Arc::new(crate::storage::file::FileImprovement::new(dir))
    }

    // 2026-11-25T00:00:00Z
    const T0: i64 = 1_795_564_800_000;

    fn batch(
        task: &str,
        version: u32,
        ts: i64,
        executions: u64,
        matches: u64,
        validations: u64,
    ) -> Value {
        json!({
            "batch_id": format!("{task}-{version}-{ts}-{executions}"),
            "deployment_id": "edge-1", "task_id": task, "program_version": version,
            "timestamp": Timestamp(ts).to_string(),
            "metrics": {"executions": executions,
                "by_status": {"success": executions - 1, "abstain": 1, "error": 0, "timeout": 0},
                "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "mean": 1.2, "max": 4.0},
                "sampled": validations, "validations": validations, "matches": matches},
            "sampled_validations": [{"oracle_cost": 0.25}, {"oracle_cost": 0.5}],
        })
    }

    #[test]
    fn daily_figures_sum_batches_per_day_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock(AtomicI64::new(T0)));
        let (index, _) = FleetIndex::open(dir.path(), clock, 3, files(dir.path())).unwrap();
        index
            .ingest_batch(&batch("spam", 1, T0 - 3_600_000, 10, 8, 10))
            .unwrap();
        index
            .ingest_batch(&batch("spam", 1, T0 - 1_800_000, 30, 9, 10))
            .unwrap();
        index
            .ingest_batch(&batch("spam", 2, T0 + 60_000, 5, 5, 5))
            .unwrap();
        let rows = index
            .daily("spam", &DailyFilter::default(), PageRequest::first(100))
            .unwrap()
            .items;
        assert_eq!(rows.len(), 2);
        let (d1, d2) = (&rows[0], &rows[1]);
        assert_eq!((d1.day.as_str(), d1.version), ("2026-11-24", 1));
        assert_eq!((d1.executions, d1.validations, d1.matches), (40, 20, 17));
        assert_eq!(d1.match_rate, Some(0.85));
        assert_eq!(d1.abstains, 2);
        assert_eq!(d1.oracle_cost, 1.5);
        assert_eq!(d1.latency_ms.as_ref().unwrap().p95, 2.0);
        assert_eq!((d2.day.as_str(), d2.version), ("2026-11-25", 2));
        let only_v2 = DailyFilter {
            version: Some(2),
            ..DailyFilter::default()
        };
        assert_eq!(
            index
                .daily("spam", &only_v2, PageRequest::first(9))
                .unwrap()
                .total,
            1
        );
        let summary = index.task("spam").unwrap();
        assert_eq!(
            (summary.versions.clone(), summary.executions),
            (vec![1, 2], 45)
        );
        assert!(matches!(index.task("ham"), Err(QueryError::NotFound(_))));
        assert!(matches!(index.task("../x"), Err(QueryError::NotFound(_))));
    }

    #[test]
    fn aggregates_and_deployments_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock(AtomicI64::new(T0)));
        let b = batch("spam", 3, T0, 10, 10, 10);
        // The store's layout: the batch line as the collector writes it.
        let task_dir = dir.path().join("telemetry").join("spam");
        fs::create_dir_all(&task_dir).unwrap();
        fs::write(
            task_dir.join("2026-11-25.jsonl"),
            format!("{b}\nnot json\n"),
        )
        .unwrap();
        let (index, report) =
            FleetIndex::open(dir.path(), clock.clone(), 3, files(dir.path())).unwrap();
        assert_eq!((report.batches, report.skipped_lines), (1, 1));
        index
            .ingest_heartbeat(
                "edge-9",
                "spam",
                json!({"interval_sec": 10, "status": "ok", "active_version": 3}),
            )
            .unwrap();
        drop(index);
        let (index, report) =
            FleetIndex::open(dir.path(), clock.clone(), 3, files(dir.path())).unwrap();
        assert_eq!(report.deployments, 1);
        assert_eq!(index.task("spam").unwrap().executions, 10);
        let d = &index
            .deployments(None, PageRequest::first(10))
            .unwrap()
            .items[0];
        assert_eq!(
            (d.deployment_id.as_str(), d.health, d.active_version),
            ("edge-9", "ok", Some(3))
        );
        // Three intervals of 10 s later it is still heard from; past them it is silent.
        clock.0.store(T0 + 30_000, Ordering::SeqCst);
        assert_eq!(
            index
                .deployments(None, PageRequest::first(10))
                .unwrap()
                .items[0]
                .health,
            "ok"
        );
        clock.0.store(T0 + 30_001, Ordering::SeqCst);
        assert_eq!(
            index
                .deployments(None, PageRequest::first(10))
                .unwrap()
                .items[0]
                .health,
            "silent"
        );
    }

    #[test]
    fn a_heartbeat_with_an_error_is_degraded() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock(AtomicI64::new(T0)));
        let (index, _) = FleetIndex::open(dir.path(), clock, 3, files(dir.path())).unwrap();
        index
            .ingest_heartbeat(
                "e",
                "spam",
                json!({"interval_sec": 10, "status": "ok", "last_error": "disk full"}),
            )
            .unwrap();
        let d = index
            .deployments(Some("spam"), PageRequest::first(1))
            .unwrap();
        assert_eq!(d.items[0].health, "degraded");
    }
}
