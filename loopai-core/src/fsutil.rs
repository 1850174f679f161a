//! Durable filesystem helpers shared by the artifact cache and the dataset store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// The prefix of [`write_atomic`]'s temporaries.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Creates (or truncates) `path`, writes `bytes` and fsyncs the file.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for fsync through `std` here; rename durability is up to the OS.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates `dir` and any missing parents, fsyncing each new directory and its parent.
pub(crate) fn create_dir_all_durable(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::io(
                dir.display(),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists but is not a directory",
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir.display(), e)),
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_all_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(Error::io(dir.display(), e)),
    }
    sync_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
    let parent = parent.unwrap_or(Path::new("."));
    sync_dir(parent).map_err(|e| Error::io(parent.display(), e))
}

pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Replaces `path` atomically with `bytes`: writes a temporary sibling, fsyncs it,
/// renames it over `path` and fsyncs the directory. Readers see the old or the new
/// content, never a mix, even across a crash. The temporary is named `.tmp-*`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{name}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = write_new_file(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        let _ = remove_if_exists(&tmp);
    }
    result
}

/// Whether `meta` (of a file named [`TMP_PREFIX`]`*`) is at least `min_age` old: a
/// temporary a crash left behind, not one another process is writing now.
pub(crate) fn is_stale(meta: &fs::Metadata, min_age: Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age >= min_age)
}

/// Removes the [`write_atomic`] temporaries of `dir` at least `min_age` old (left by a
/// process killed while writing; younger ones may be another process's write in
/// progress). Best effort: a file that cannot be removed is left; a missing `dir` is
/// nothing to do.
pub(crate) fn remove_stale_temporaries(dir: &Path, min_age: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TMP_PREFIX)
            && entry
                .metadata()
                .is_ok_and(|m| m.is_file() && is_stale(&m, min_age));
        if stale {
            let _ = remove_if_exists(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_are_removed_and_fresh_ones_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".tmp-abc-daily-stats-2026-01-01.json");
        let fresh = dir.path().join(".tmp-def-daily-stats-2026-01-01.json");
        let kept = dir.path().join("daily-stats-2026-01-01.json");
        for p in [&old, &fresh, &kept] {
            std::fs::write(p, b"x").unwrap();
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        File::options()
            .write(true)
            .open(&kept)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        remove_stale_temporaries(dir.path(), Duration::from_secs(600));
        assert!(
            !old.exists(),
            "a temporary an hour old is a crash's leftover"
        );
        assert!(
            fresh.exists(),
            "a fresh temporary may be a write in progress"
        );
        assert!(kept.exists());
        remove_stale_temporaries(&dir.path().join("missing"), Duration::ZERO);
    }

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/stats.json");
        create_dir_all_durable(path.parent().unwrap()).unwrap();
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
