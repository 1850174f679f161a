//! The retention thread: applies the retention policy at start-up and again whenever the
//! UTC day changes (checked every few minutes), until shut down.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::record::DatasetLayout;
use super::retention::{apply_retention, RetentionPolicy, RetentionReport};
use crate::clock::{Clock, Timestamp};
use crate::error::{Error, ErrorKind, Result};

/// How often the thread checks whether the day changed.
const CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// Owns the retention thread of one task.
#[derive(Debug)]
pub(crate) struct Maintenance {
    stop: Sender<()>,
    exited: Receiver<()>,
    handle: Mutex<Option<JoinHandle<()>>>,
    last: Arc<Mutex<Option<std::result::Result<RetentionReport, String>>>>,
}

impl Maintenance {
    pub(crate) fn start(
        layout: DatasetLayout,
        policy: RetentionPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Maintenance> {
        let (stop, stop_rx) = bounded::<()>(1);
        let (exited_tx, exited) = bounded::<()>(1);
        let last = Arc::new(Mutex::new(None));
        let last_thread = last.clone();
        let handle = std::thread::Builder::new()
            .name("loopai-retention".into())
            .spawn(move || {
                let mut done_for = None;
                loop {
                    let today = Timestamp(clock.now_millis()).day();
                    if done_for != Some(today) {
                        let result = apply_retention(&layout, &policy, today);
                        if let Err(e) = &result {
                            log::error!("loopai: retention failed: {e}");
                        }
                        *last_thread.lock() = Some(result.map_err(|e| e.to_string()));
                        done_for = Some(today);
                    }
                    match stop_rx.recv_timeout(CHECK_INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
                let _ = exited_tx.send(());
            })
            .map_err(|e| Error::io("starting the retention thread", e))?;
        Ok(Maintenance {
            stop,
            exited,
            handle: Mutex::new(Some(handle)),
            last,
        })
    }

    /// The outcome of the last retention run, if one finished.
    pub(crate) fn last_report(&self) -> Option<std::result::Result<RetentionReport, String>> {
        self.last.lock().clone()
    }

    /// Stops the thread, waiting at most `timeout` (a retention run in progress finishes
    /// its current file first).
    pub(crate) fn shutdown(&self, timeout: Duration) -> Result<()> {
        let Some(handle) = self.handle.lock().take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        let _ = self.stop.try_send(());
        if self
            .exited
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
        {
            let _ = handle.join();
            Ok(())
        } else {
            *self.handle.lock() = Some(handle);
            Err(Error::new(
                ErrorKind::Timeout,
                format!("the retention thread did not stop within {timeout:?}"),
            ))
        }
    }
}
