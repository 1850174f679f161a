//! The rollout thread (`loopai-rollout`): checks a rollout in progress every
//! `rollout.check_interval_ms`, follows the artifact cache every
//! `rollout.follow_interval_ms`, and does their `rollout.json` I/O.

use crate::error::{Error, ErrorKind, Result};
use crate::rollout::controller::RolloutController;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// The rollout thread

/// The rollout thread (`loopai-rollout`) of one runtime: checks the rollout every
/// `rollout.check_interval_ms` of the runtime's clock. A check reads and writes
/// `rollout.json` (fsync'd) and may swap programs; on a thread of its own that I/O delays
/// neither `execute` nor the execution log.
///
/// The thread sleeps until the next check is due on the runtime's clock, at most
/// `check_interval_ms` of real time at a time: with an injected clock that does not move
/// it wakes and finds nothing due (tests then decide through `flush`). It stops at once
/// when asked, or after the check it is in. After `fork()` it does not exist in the child:
/// nothing there waits for it.
pub(crate) struct RolloutChecker {
    /// Dropped to stop the thread (wakes it at once).
    pub(crate) stop: Mutex<Option<Sender<()>>>,
    pub(crate) exited: Receiver<()>,
    pub(crate) handle: Mutex<Option<JoinHandle<()>>>,
    pub(crate) fork_generation: u64,
}

impl std::fmt::Debug for RolloutChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutChecker")
            .field("running", &self.handle.lock().is_some())
            .finish_non_exhaustive()
    }
}

/// Signals `exited` when the rollout thread ends, however it ends.
struct CheckerExit(Sender<()>);

impl Drop for CheckerExit {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

impl RolloutChecker {
    /// Starts the rollout thread for `controller`.
    pub(crate) fn start(controller: Arc<RolloutController>) -> Result<RolloutChecker> {
        let (stop, stop_rx) = bounded::<()>(0);
        let (exited_tx, exited) = bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("loopai-rollout".into())
            .spawn(move || {
                let _exit = CheckerExit(exited_tx);
                let follow = controller.ctx.follow;
                let mut next_follow = follow.map(|f| Instant::now() + f);
                loop {
                    let mut wait = controller.until_next_check();
                    if let Some(at) = next_follow {
                        wait = wait.min(at.saturating_duration_since(Instant::now()));
                    }
                    // Woken early only by the stop (the sender dropped).
                    if !matches!(stop_rx.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
                        break;
                    }
                    // A bug in a check must not end the background checks.
                    if catch_unwind(AssertUnwindSafe(|| controller.tick())).is_err() {
                        log::error!(
                            "loopai: task {:?}: a rollout check panicked (a bug in loopai)",
                            controller.ctx.task.task
                        );
                    }
                    if let (Some(at), Some(every)) = (next_follow, follow) {
                        if Instant::now() >= at {
                            if catch_unwind(AssertUnwindSafe(|| controller.follow_tick())).is_err()
                            {
                                log::error!(
                                    "loopai: task {:?}: following the artifact cache panicked (a bug in loopai)",
                                    controller.ctx.task.task
                                );
                            }
                            next_follow = Some(Instant::now() + every);
                        }
                    }
                }
            })
            .map_err(|e| Error::io("starting the rollout thread", e))?;
        Ok(RolloutChecker {
            stop: Mutex::new(Some(stop)),
            exited,
            handle: Mutex::new(Some(handle)),
            fork_generation: crate::fork::generation(),
        })
    }

    /// Tells the thread to stop, without waiting: it makes no further check.
    pub(crate) fn stop(&self) {
        drop(self.stop.lock().take());
    }

    /// Stops the thread and waits for it until `deadline`. A check in progress (in I/O on
    /// `rollout.json`) is finished first: when it is still running at the deadline the
    /// thread is left to stop on its own after it ([`ErrorKind::Timeout`]); calling this
    /// again waits for it again.
    pub(crate) fn shutdown(&self, deadline: Instant) -> Result<()> {
        self.stop();
        if crate::fork::current() != self.fork_generation {
            // The thread belongs to the parent process.
            return Ok(());
        }
        let Some(handle) = self.handle.lock().take() else {
            return Ok(());
        };
        if self.exited.recv_deadline(deadline).is_ok() {
            let _ = handle.join();
            return Ok(());
        }
        *self.handle.lock() = Some(handle);
        Err(Error::new(
            ErrorKind::Timeout,
            "the rollout thread was still inside a check (rollout.json I/O) at the shutdown deadline; it stops after it",
        ))
    }
}

impl Drop for RolloutChecker {
    fn drop(&mut self) {
        // Only reached without a runtime shutdown (a failed build): stop, never wait.
        self.stop();
    }
}
