//! Who drives a rollout: exactly one runtime makes a rollout's automatic decisions (stage
//! advances, promotion, rollback) and persists its counters. Its id is `driver` in
//! `rollout.json`; its saves (at least every third of the lease) are its heartbeat
//! (`updated_at`).
//!
//! * A runtime that starts a rollout drives it. At shutdown it releases it (`driver`
//!   cleared), so that a runtime still running — `loopai serve` — takes it over at once: a
//!   rollout started by `loopai rollout start` or `loopai synth` (short-lived processes) is
//!   driven by the server that serves it.
//! * A runtime that finds a rollout in progress (at start, or by following the artifact
//!   cache) takes it over when nobody drives it: no `driver`, a driver on this host whose
//!   process is gone, or a heartbeat older than the lease. Otherwise it follows it: it
//!   routes executions to the canary by the same sticky hash and moves with the stages the
//!   driver writes, but decides nothing and writes nothing.
//! * Taking over happens under an exclusive lock on `artifacts/<task>/rollout.lock`
//!   (`flock`, Unix), so two runtimes never both take over the same rollout.
//! * Operators' commands (`loopai rollout promote|abort`, `loopai artifacts activate|
//!   rollback|promote`, [`Runtime::promote`](crate::Runtime::promote) on any runtime) end a
//!   rollout whoever drives it; every runtime adopts the change at its next check.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// The least time without a heartbeat after which another runtime takes a rollout over.
pub(crate) const MIN_LEASE: Duration = Duration::from_secs(10);

/// How long a driver may stay silent before its rollout is taken over: ten rollout checks,
/// at least [`MIN_LEASE`].
pub(crate) fn lease_ms(check_interval_ms: u64) -> i64 {
    let ms = check_interval_ms
        .saturating_mul(10)
        .max(MIN_LEASE.as_millis() as u64);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A new driver id for one runtime: `<host>:<pid>:<random>`.
pub(crate) fn new_id() -> String {
    format!(
        "{}:{}:{:08x}",
        hostname(),
        std::process::id(),
        fastrand::u32(..)
    )
}

/// Whether the driver `id` certainly no longer runs: it ran on this host in a process that
/// is gone. (Another host, or this process, cannot be told: the lease decides.)
pub(crate) fn is_gone(id: &str) -> bool {
    let mut parts = id.rsplitn(3, ':');
    let (Some(_), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == hostname() && pid != std::process::id() && !process_exists(pid)
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    true
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; the result is NUL-terminated or
        // truncated, and read up to the first NUL.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            if let Ok(name) = std::str::from_utf8(&buf[..end]) {
                if !name.is_empty() {
                    return name.replace(':', "_");
                }
            }
        }
    }
    std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .map(|h| h.replace(':', "_"))
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// An exclusive lock on `rollout.lock` (Unix `flock`), held while a runtime takes a
/// rollout over; released when dropped.
pub(crate) struct TakeoverLock {
    _file: std::fs::File,
}

impl TakeoverLock {
    /// Waits for the lock on `path` (created if missing). `rel` names it in errors.
    pub(crate) fn acquire(path: &Path, rel: &str) -> Result<TakeoverLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(rel, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            loop {
                // SAFETY: the descriptor is open for the lifetime of `file`.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::io(rel, e));
                }
            }
        }
        Ok(TakeoverLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_this_host_and_process_and_are_not_gone() {
        let id = new_id();
        assert!(id.contains(&format!(":{}:", std::process::id())), "{id}");
        assert!(!is_gone(&id), "this process runs");
        assert_ne!(new_id(), id, "two runtimes of one process differ");
    }

    #[cfg(unix)]
    #[test]
    fn a_driver_whose_process_exited_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let id = format!("{}:{pid}:0000abcd", hostname());
        assert!(is_gone(&id), "{id}");
        // Another host cannot be told: not gone (the lease decides).
        assert!(!is_gone(&format!("elsewhere.example:{pid}:0000abcd")));
        assert!(!is_gone("garbage"));
    }

    #[test]
    fn the_lease_is_ten_checks_and_at_least_ten_seconds() {
        assert_eq!(lease_ms(1000), 10_000);
        assert_eq!(lease_ms(5000), 50_000);
        assert_eq!(lease_ms(u64::MAX), i64::MAX);
    }
}
