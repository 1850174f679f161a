//! Set-ups shared by the crate's unit tests (compiled only for `cfg(test)`): a clock that
//! moves only when told to, installing a program for the task `spam`, and polling with a
//! deadline. Tests elsewhere import these by path (`use crate::testing::TestClock`).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::artifact::{ArtifactStore, NewArtifact};
use crate::clock::Clock;

/// 2025-11-25T00:00:00Z, the day the tests' clocks start on.
pub(crate) const DAY1: i64 = 1_764_028_800_000;

/// One day in milliseconds.
pub(crate) const DAY: i64 = 86_400_000;

/// A clock that moves only when told to.
#[derive(Debug)]
pub(crate) struct TestClock(AtomicI64);

impl TestClock {
    /// A clock standing at `millis` since the Unix epoch.
    pub(crate) fn at(millis: i64) -> Arc<TestClock> {
        Arc::new(TestClock(AtomicI64::new(millis)))
    }

    /// Moves the clock to `millis`.
    pub(crate) fn set(&self, millis: i64) {
        self.0.store(millis, Ordering::SeqCst);
    }

    /// Moves the clock forward by `millis`.
    pub(crate) fn advance(&self, millis: i64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Installs `program` as the next version of the task `spam` under `dir` (the active one
/// if `activate`) and returns its version.
pub(crate) fn install(dir: &Path, program: &[u8], activate: bool) -> u32 {
    install_with(dir, program, NewArtifact::default(), activate)
}

/// Like [`install`], with the artifact's metadata `meta`.
pub(crate) fn install_with(dir: &Path, program: &[u8], meta: NewArtifact, activate: bool) -> u32 {
    ArtifactStore::open(dir, "spam")
        .unwrap()
        .install(program, meta, activate)
        .unwrap()
        .version
}

/// Polls `done` every 5 ms until it holds; panics naming `what` after `timeout`.
pub(crate) fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
