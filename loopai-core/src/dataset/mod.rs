//! The dataset store: every execution logged as JSONL under
//! `<data_dir>/datasets/<task>/`, validations beside it, daily analytics, retention.

mod analytics;
#[cfg(test)]
mod encryption_tests;
mod keeper;
mod maintenance;
mod reader;
mod record;
mod retention;
mod writer;

pub use analytics::{
    read_stats, rebuild_stats, write_stats, DailyAggregate, DailyStats, LatencyStats,
    ValidationStats, MAX_OUTPUT_KEYS,
};
pub(crate) use keeper::AnalyticsKeeper;
pub(crate) use maintenance::Maintenance;
pub use reader::DatasetReader;
pub use record::{
    DatasetLayout, ExecutionRecord, ExecutionSource, ExecutionStatus, ValidationRecord,
};
pub use retention::{apply_retention, RetentionPolicy, RetentionReport};
pub use writer::DatasetMetrics;
pub(crate) use writer::{DatasetWriter, RecordObserver, WriterOptions};
