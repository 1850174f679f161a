//! The dataset store: every execution logged as JSONL under
//! `<data_dir>/datasets/<task>/`, validations beside it, daily analytics, retention.

mod record;

pub use record::{
    day_string, parse_day, Clock, DatasetLayout, ExecutionRecord, SystemClock, Timestamp,
    ValidationRecord,
};
