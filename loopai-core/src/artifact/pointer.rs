//! The `active` pointer of a task (the `active` link and the `active.version` marker):
//! reading it, switching it, rolling it back.

use std::fs;
use std::io;
use std::path::Path;

use crate::artifact::{
    parse_version_name, ArtifactStatus, ArtifactStore, ACTIVE_LINK, ACTIVE_LINK_TMP_PREFIX,
    ACTIVE_MARKER, ACTIVE_MARKER_TMP_PREFIX, POINTER_LOCK,
};
use crate::error::{Error, Result};
use crate::fsutil::{remove_if_exists, sync_dir, write_new_file};

impl ArtifactStore {
    /// The version the `active` pointer names, or `None` if no version was ever activated.
    ///
    /// A pointer that is malformed or names a version that is not installed is an
    /// [`ErrorKind::Artifact`](crate::error::ErrorKind::Artifact) error.
    pub fn active_version(&self) -> Result<Option<u32>> {
        let Some((version, source)) = self.read_pointer()? else {
            return Ok(None);
        };
        match fs::metadata(self.version_dir(version)) {
            Ok(m) if m.is_dir() => Ok(Some(version)),
            Ok(_) => Err(self.artifact_error(
                source,
                format!("points to v{version}, which is not a directory"),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.artifact_error(
                source,
                format!("points to v{version}, which is not installed (dangling pointer)"),
            )),
            Err(e) => Err(Error::io(self.rel(format!("v{version}")), e)),
        }
    }

    /// Makes `version` the active one.
    ///
    /// The version must be installed and pass [`verify`](Self::verify). The pointer is
    /// replaced atomically (a new symlink `active.tmp-<uuid> -> v<N>` renamed over `active`,
    /// or the `active.version` marker where symlinks are unavailable) and the directory is
    /// fsynced. Then `status` becomes `active` in this version's metadata and `deprecated` in
    /// any other version still marked active.
    pub fn activate(&self, version: u32) -> Result<()> {
        let _lock = POINTER_LOCK.lock();
        self.activate_locked(version)
    }

    /// Activates the highest installed version below the active one and returns it.
    ///
    /// Fails if nothing is active or no lower version is installed.
    pub fn rollback(&self) -> Result<u32> {
        let _lock = POINTER_LOCK.lock();
        let Some(active) = self.active_version()? else {
            return Err(self.artifact_error(
                ACTIVE_LINK,
                "cannot roll back: no version is active".to_owned(),
            ));
        };
        let Some(&target) = self.versions()?.iter().rev().find(|&&v| v < active) else {
            return Err(self.artifact_error(
                format!("v{active}"),
                format!("cannot roll back from v{active}: no lower version is installed"),
            ));
        };
        self.activate_locked(target)?;
        Ok(target)
    }

    fn activate_locked(&self, version: u32) -> Result<()> {
        let previous = self.read_pointer().ok().flatten().map(|(v, _)| v);
        self.verify(version)?;
        self.write_pointer(version)?;

        // A process that pruned this version between our verify and our pointer swap would
        // have seen the old pointer; detect it and restore the previous pointer.
        if fs::symlink_metadata(self.version_dir(version)).is_err() {
            if let Some(prev) = previous.filter(|&p| self.version_dir(p).is_dir()) {
                let _ = self.write_pointer(prev);
            }
            return Err(self.artifact_error(
                format!("v{version}"),
                "was removed while being activated".to_owned(),
            ));
        }

        self.set_status(version, ArtifactStatus::Active)?;
        // Mirror the pointer in the other versions' status. Versions whose metadata cannot be
        // read are left alone here; `list` and `verify` report them.
        for other in self.versions()? {
            if other == version {
                continue;
            }
            if let Ok(meta) = self.read_metadata(other) {
                if meta.status == ArtifactStatus::Active {
                    self.set_status(other, ArtifactStatus::Deprecated)?;
                }
            }
        }
        Ok(())
    }

    /// Points `active` at `version`: a symlink if possible, otherwise the marker file.
    fn write_pointer(&self, version: u32) -> Result<()> {
        let target = format!("v{version}");
        let link = self.task_dir.join(ACTIVE_LINK);
        let marker = self.task_dir.join(ACTIVE_MARKER);
        let tmp_link = self
            .task_dir
            .join(format!("{ACTIVE_LINK_TMP_PREFIX}{}", uuid::Uuid::new_v4()));

        if make_dir_symlink(&target, &tmp_link).is_ok() {
            if let Err(e) = fs::rename(&tmp_link, &link) {
                let _ = fs::remove_file(&tmp_link);
                return Err(Error::io(self.rel(ACTIVE_LINK), e));
            }
            sync_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;
            // A marker from an earlier fallback would be shadowed by the link; drop it.
            remove_if_exists(&marker).map_err(|e| Error::io(self.rel(ACTIVE_MARKER), e))?;
            return Ok(());
        }

        // Symlinks unavailable: write the marker with the same temp + rename.
        let tmp_marker = self.task_dir.join(format!(
            "{ACTIVE_MARKER_TMP_PREFIX}{}",
            uuid::Uuid::new_v4()
        ));
        let written = write_new_file(&tmp_marker, format!("{target}\n").as_bytes())
            .and_then(|()| fs::rename(&tmp_marker, &marker));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp_marker);
            return Err(Error::io(self.rel(ACTIVE_MARKER), e));
        }
        sync_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;
        // Readers prefer the symlink, so a stale one must not shadow the marker.
        if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            remove_if_exists(&link).map_err(|e| Error::io(self.rel(ACTIVE_LINK), e))?;
            sync_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;
        }
        Ok(())
    }

    /// The version the pointer names (symlink first, then marker), without checking that it is
    /// installed, plus the name of the entry it came from.
    pub(super) fn read_pointer(&self) -> Result<Option<(u32, &'static str)>> {
        match fs::read_link(self.task_dir.join(ACTIVE_LINK)) {
            Ok(target) => {
                let text = target.to_string_lossy();
                let name = text.strip_suffix('/').unwrap_or(&text);
                return match parse_version_name(name) {
                    Some(v) => Ok(Some((v, ACTIVE_LINK))),
                    None => Err(self.artifact_error(
                        ACTIVE_LINK,
                        format!("points to `{text}`, expected a relative `v<N>`"),
                    )),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return match fs::symlink_metadata(self.task_dir.join(ACTIVE_LINK)) {
                    Ok(_) => {
                        Err(self
                            .artifact_error(ACTIVE_LINK, "exists but is not a symlink".to_owned()))
                    }
                    Err(_) => Err(Error::io(self.rel(ACTIVE_LINK), e)),
                };
            }
        }
        match fs::read(self.task_dir.join(ACTIVE_MARKER)) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                match parse_version_name(text.trim_end()) {
                    Some(v) => Ok(Some((v, ACTIVE_MARKER))),
                    None => Err(self.artifact_error(
                        ACTIVE_MARKER,
                        format!("contains `{}`, expected `v<N>`", text.trim_end()),
                    )),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.rel(ACTIVE_MARKER), e)),
        }
    }
}

#[cfg(unix)]
fn make_dir_symlink(target: &str, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn make_dir_symlink(target: &str, link: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

#[cfg(not(any(unix, windows)))]
fn make_dir_symlink(_target: &str, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks unavailable",
    ))
}
