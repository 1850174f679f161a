//! Following the artifact cache: every `follow_interval` each task's runtime re-reads the
//! `active` pointer and the rollout state ([`Runtime::reload`](loopai_core::Runtime::reload)),
//! so that `loopai artifacts activate|rollback|promote` run in another process take effect
//! without a restart. The swap is atomic: requests in flight finish on the version they
//! started with, and none fails.

use std::sync::Arc;
use std::time::Duration;

use crate::state::{AppState, Phase};
use crate::tasks::TaskEntry;

/// Reloads every task every `interval` while the server is ready; returns once it drains
/// or fails.
pub(crate) async fn run(state: Arc<AppState>, interval: Duration) {
    let mut phase = state.phase_tx.subscribe();
    // Wait for the tasks.
    loop {
        match *phase.borrow_and_update() {
            Phase::Ready => break,
            Phase::Starting => {}
            Phase::Draining | Phase::Failed => return,
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
    let entries: Vec<Arc<TaskEntry>> = state
        .tasks
        .get()
        .map(|set| set.entries.clone())
        .unwrap_or_default();
    // The last error per task, logged once rather than at every round.
    let mut last_errors: Vec<Option<String>> = vec![None; entries.len()];
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if state.phase() != Phase::Ready {
            return;
        }
        let round = entries.clone();
        // Loading verifies (and with trusted keys, checks the signature of) the program:
        // blocking work, off the async workers.
        let results = tokio::task::spawn_blocking(move || {
            round
                .iter()
                .map(|e| {
                    let before = e.runtime.active_version();
                    e.runtime.reload().map(|now| (before, now))
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(results) = results else {
            continue;
        };
        for ((entry, result), last) in entries.iter().zip(results).zip(&mut last_errors) {
            match result {
                Ok((before, now)) => {
                    if before != now {
                        log::info!("{}: now serving v{now} (was v{before})", entry.name());
                    }
                    if last.take().is_some() {
                        log::info!("{}: following the artifact cache again", entry.name());
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    if last.as_deref() != Some(message.as_str()) {
                        log::error!(
                            "{}: cannot follow the artifact cache (keeps serving v{}): {message}",
                            entry.name(),
                            entry.runtime.active_version()
                        );
                    }
                    *last = Some(message);
                }
            }
        }
    }
}
