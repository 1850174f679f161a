//! The dataset store: every execution logged as JSONL under
//! `<data_dir>/datasets/<task>/`, validations beside it, daily analytics, retention.

mod record;
mod writer;

pub use record::{
    day_string, parse_day, Clock, DatasetLayout, ExecutionRecord, SystemClock, Timestamp,
    ValidationRecord,
};
pub use writer::DatasetMetrics;
pub(crate) use writer::{DatasetWriter, WriterOptions};
