//! The writer thread's analytics: per-day aggregates kept in memory and persisted to
//! `analytics/daily-stats-YYYY-MM-DD.json` every minute, at day rollover, on flush and at
//! shutdown. A day's aggregate starts from what is already on disk for that day, so a
//! restart in the middle of a day does not undercount.

use std::collections::BTreeMap;

use time::Date;

use super::analytics::{write_stats_with, DailyAggregate};
use super::record::{DatasetLayout, ExecutionRecord, ValidationRecord};
use super::writer::RecordObserver;
use crate::clock::Timestamp;

/// How often dirty aggregates are written.
const WRITE_INTERVAL_MS: i64 = 60_000;

#[derive(Debug)]
struct Day {
    aggregate: DailyAggregate,
    dirty: bool,
}

/// Implements [`RecordObserver`] for the dataset writer.
#[derive(Debug)]
pub(crate) struct AnalyticsKeeper {
    layout: DatasetLayout,
    task: String,
    /// Reads what is on disk for a day (with the keys of encrypted files).
    reader: super::reader::DatasetReader,
    days: BTreeMap<Date, Day>,
    current: Option<Date>,
    last_write_ms: Option<i64>,
}

impl AnalyticsKeeper {
    pub(crate) fn new(
        layout: DatasetLayout,
        task: &str,
        keys: Option<std::sync::Arc<crate::crypt::KeyRing>>,
    ) -> AnalyticsKeeper {
        AnalyticsKeeper {
            reader: super::reader::DatasetReader::with_layout(layout.clone(), task).with_keys(keys),
            layout,
            task: task.to_string(),
            days: BTreeMap::new(),
            current: None,
            last_write_ms: None,
        }
    }

    fn day(&mut self, day: Date) -> &mut Day {
        let (reader, task) = (&self.reader, &self.task);
        self.days.entry(day).or_insert_with(|| {
            let aggregate = DailyAggregate::load_from(reader, task, day).unwrap_or_else(|e| {
                log::error!("loopai: daily analytics for {task} start empty: {e}");
                DailyAggregate::new(task, day)
            });
            Day {
                aggregate,
                dirty: true,
            }
        })
    }

    fn write_dirty(&mut self, now: Timestamp) {
        for day in self.days.values_mut().filter(|d| d.dirty) {
            // Sealed with the current key under `storage.encryption`.
            let stats = day.aggregate.to_stats(now);
            match write_stats_with(&self.layout, &stats, self.reader.keys()) {
                Ok(()) => day.dirty = false,
                Err(e) => log::error!("loopai: writing daily analytics failed: {e}"),
            }
        }
        self.last_write_ms = Some(now.millis());
    }
}

impl RecordObserver for AnalyticsKeeper {
    fn prepare_day(&mut self, day: Date) {
        // Loads what is on disk before the writer appends more.
        self.day(day);
    }

    fn execution(&mut self, record: &ExecutionRecord) {
        let day = self.day(record.timestamp.day());
        day.aggregate.observe_execution(record);
        day.dirty = true;
    }

    fn validation(&mut self, record: &ValidationRecord) {
        let day = self.day(record.validated_at.day());
        day.aggregate.observe_validation(record);
        day.dirty = true;
    }

    fn tick(&mut self, now: Timestamp) {
        let today = now.day();
        if self.current != Some(today) {
            // Day rollover: persist the closed day, keep only today and yesterday in memory.
            if self.current.is_some() {
                self.write_dirty(now);
            }
            self.current = Some(today);
            if let Some(yesterday) = today.previous_day() {
                self.days.retain(|d, day| *d >= yesterday || day.dirty);
            }
        }
        let due = self
            .last_write_ms
            .is_none_or(|last| now.millis() - last >= WRITE_INTERVAL_MS);
        if due && self.days.values().any(|d| d.dirty) {
            self.write_dirty(now);
        }
    }

    fn persist(&mut self, now: Timestamp) {
        self.write_dirty(now);
    }

    fn finish(&mut self, now: Timestamp) {
        self.write_dirty(now);
    }
}
