//! A minimal stderr logger for long-running commands (`loopai cloud serve`):
//! `2026-11-25T06:17:40.123Z INFO message`, level from `LOOPAI_LOG` (default `info`).

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug)]
struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_else(|_| "-".to_owned());
        // One write per line, so that lines from several threads do not interleave.
        let line = format!("{now} {:<5} {}\n", record.level(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger (once; later calls do nothing).
pub(crate) fn init() {
    let level = match std::env::var("LOOPAI_LOG") {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("warning: LOOPAI_LOG={v:?} is not a log level; using info");
            LevelFilter::Info
        }),
        Err(_) => LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
