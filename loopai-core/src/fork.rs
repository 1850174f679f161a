//! Fork detection. Background threads do not survive `fork()`: a runtime built before a
//! fork must not be used in the child, where its writer thread no longer exists and
//! records would silently pile up. A `pthread_atfork` child handler bumps a generation
//! counter; a runtime remembers the generation it was built in and refuses to execute in
//! another one (an atomic load on the hot path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

#[cfg(unix)]
extern "C" fn child_after_fork() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Installs the fork handler (once per process) and returns the current generation.
pub(crate) fn generation() -> u64 {
    REGISTER.call_once(|| {
        #[cfg(unix)]
        // SAFETY: registers a handler that only performs an atomic add, which is
        // async-signal-safe and valid in a freshly forked child.
        unsafe {
            libc::pthread_atfork(None, None, Some(child_after_fork));
        }
    });
    GENERATION.load(Ordering::SeqCst)
}

/// The current generation without registering (the hot-path check).
#[inline]
pub(crate) fn current() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Waits for a forked test child and asserts it exited with 0; kills it and fails the test
/// when it has not exited within a minute (`what` names what it would be stuck on).
#[cfg(all(test, unix))]
pub(crate) fn expect_child_success(pid: libc::pid_t, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut status = 0;
    // SAFETY: waits for our own child without blocking.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
        if std::time::Instant::now() > deadline {
            // SAFETY: kills our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child's checks failed"
    );
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_generation_changes_in_a_forked_child() {
        let parent = generation();
        // SAFETY: the child only reads an atomic and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if current() == parent + 1 { 0 } else { 1 };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(current(), parent, "the parent's generation is unchanged");
    }
}
