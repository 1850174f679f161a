//! The fleet's read side: what the query API (`/api/v1/query/...`, `query_api.rs`) and the
//! dashboard read — tasks, per-day figures per task and version, rollouts, improvement
//! attempts, escalations and deployments.
//!
//! [`FleetIngest`] and [`FleetQueries`] are the interfaces both storage backends answer
//! (PostgreSQL: `postgres/fleet.rs`, tables kept at ingest); [`index::FleetIndex`] answers
//! them over the file store: aggregates kept in memory, updated at ingest (each accepted
//! batch and heartbeat) and rebuilt from the stored batches at start. Either way no
//! request reads the batches again. The records returned are the API's JSON as they are.

pub(crate) mod figures;
pub(crate) mod index;
pub(crate) mod params;

use serde::Serialize;
use serde_json::Value;

/// The default number of items per page.
pub(crate) const DEFAULT_PAGE_LIMIT: usize = 50;
/// The largest number of items per page.
pub(crate) const MAX_PAGE_LIMIT: usize = 1000;

/// Which page of a list: items `offset..offset + limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRequest {
    pub(crate) offset: usize,
    pub(crate) limit: usize,
}

impl PageRequest {
    /// The first `limit` items.
    pub(crate) fn first(limit: usize) -> PageRequest {
        PageRequest { offset: 0, limit }
    }

    /// Cuts this page out of the whole list.
    pub(crate) fn slice<T>(self, all: Vec<T>) -> Page<T> {
        let total = all.len();
        let end = self.offset.saturating_add(self.limit).min(total);
        let items: Vec<T> = all
            .into_iter()
            .skip(self.offset)
            .take(end.saturating_sub(self.offset))
            .collect();
        Page {
            items,
            next_cursor: (end < total).then(|| end.to_string()),
            total,
        }
    }
}

/// One page of a list: `{"items": [...], "next_cursor": "50" | null, "total": N}`. Pass
/// `next_cursor` back as `?cursor=` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
    pub(crate) total: usize,
}

/// A task seen in telemetry or published in the repository.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TaskSummary {
    pub(crate) task_id: String,
    /// Program versions with telemetry, ascending.
    pub(crate) versions: Vec<u32>,
    /// The newest version published in the artifact repository.
    pub(crate) published_version: Option<u32>,
    /// The first and last day with telemetry (`YYYY-MM-DD`).
    pub(crate) first_day: Option<String>,
    pub(crate) last_day: Option<String>,
    /// Totals over every day and version.
    pub(crate) executions: u64,
    pub(crate) validations: u64,
    pub(crate) matches: u64,
    pub(crate) match_rate: Option<f64>,
    /// Deployments that reported for the task.
    pub(crate) deployments: usize,
    /// Escalations to a human so far.
    pub(crate) escalations: usize,
}

/// Latency percentiles of a day, in milliseconds: the execution-weighted means of its
/// batches' percentiles (exact for a day of one batch), and the largest `max`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DayLatency {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// The figures of one task's version on one UTC day (the day of each batch's
/// `timestamp`, when the batch was cut).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DailyVersionStats {
    pub(crate) day: String,
    pub(crate) version: u32,
    pub(crate) executions: u64,
    pub(crate) errors: u64,
    pub(crate) abstains: u64,
    pub(crate) sampled: u64,
    pub(crate) validations: u64,
    pub(crate) matches: u64,
    pub(crate) match_rate: Option<f64>,
    pub(crate) latency_ms: Option<DayLatency>,
    /// The summed `oracle_cost` of the day's validations.
    pub(crate) oracle_cost: f64,
    pub(crate) batches: u64,
}

/// Which daily rows: an inclusive day range and optionally one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DailyFilter {
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) version: Option<u32>,
}

/// A rollout event a deployment reported, with the decision's reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RolloutRecord {
    pub(crate) deployment_id: Option<String>,
    pub(crate) at: String,
    pub(crate) kind: String,
    pub(crate) stable_version: u64,
    pub(crate) canary_version: u64,
    pub(crate) stage: u64,
    pub(crate) fraction: f64,
    pub(crate) reason: String,
}

/// A deployment's last state and health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeploymentStatus {
    pub(crate) deployment_id: String,
    pub(crate) task_id: String,
    /// `ok`, `degraded` (the runtime says so, or reports an error), or `silent` (nothing
    /// heard for the configured number of intervals).
    pub(crate) health: &'static str,
    /// When the cloud last heard from it (heartbeat or batch), RFC 3339, and how long ago.
    pub(crate) last_seen: String,
    pub(crate) seconds_since_seen: f64,
    /// The latest heartbeat (`null` when only batches without one arrived).
    pub(crate) heartbeat: Option<Value>,
    /// The version of its latest batch, when no heartbeat says better.
    pub(crate) active_version: Option<u32>,
}

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// The task (or other named thing) is not known: 404.
    NotFound(String),
    /// Reading the store failed: 500.
    Storage(String),
}

/// What the fleet learns at ingest, fed by the collector and the heartbeat endpoint; each
/// storage backend keeps it its own way. Both methods block (the server calls them on the
/// blocking pool).
pub(crate) trait FleetIngest: Send + Sync + std::fmt::Debug {
    /// An accepted (not duplicate) batch, as received.
    fn ingest_batch(&self, batch: &Value) -> crate::error::Result<()>;
    /// A heartbeat of `deployment` for `task`, checked, as received.
    fn ingest_heartbeat(
        &self,
        deployment: &str,
        task: &str,
        heartbeat: Value,
    ) -> crate::error::Result<()>;
}

/// The read interface of the fleet, answered by each storage backend. Lists are newest
/// first unless said otherwise.
pub(crate) trait FleetQueries: Send + Sync + std::fmt::Debug {
    /// Every task, by name.
    fn tasks(&self, page: PageRequest) -> Result<Page<TaskSummary>, QueryError>;
    /// One task's summary.
    fn task(&self, task: &str) -> Result<TaskSummary, QueryError>;
    /// Per day and version, oldest day first (versions ascending within a day).
    fn daily(
        &self,
        task: &str,
        filter: &DailyFilter,
        page: PageRequest,
    ) -> Result<Page<DailyVersionStats>, QueryError>;
    /// Rollout events of the task.
    fn rollouts(&self, task: &str, page: PageRequest) -> Result<Page<RolloutRecord>, QueryError>;
    /// Improvement attempts of the task (the engine's records as they are).
    fn improvements(&self, task: &str, page: PageRequest) -> Result<Page<Value>, QueryError>;
    /// Escalations to a human (records of `escalations.jsonl`), of one task or all.
    fn escalations(&self, task: Option<&str>, page: PageRequest)
        -> Result<Page<Value>, QueryError>;
    /// Deployments, of one task or all, by id.
    fn deployments(
        &self,
        task: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<DeploymentStatus>, QueryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_the_list_and_point_to_the_next_one() {
        let all: Vec<u32> = (0..7).collect();
        let p = PageRequest {
            offset: 0,
            limit: 3,
        }
        .slice(all.clone());
        assert_eq!(
            (p.items, p.next_cursor.as_deref(), p.total),
            (vec![0, 1, 2], Some("3"), 7)
        );
        let p = PageRequest {
            offset: 6,
            limit: 3,
        }
        .slice(all.clone());
        assert_eq!((p.items, p.next_cursor), (vec![6], None));
        let p = PageRequest {
            offset: 99,
            limit: 3,
        }
        .slice(all);
        assert!(p.items.is_empty() && p.next_cursor.is_none());
    }
}
