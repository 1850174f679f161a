//! Loading a version: checking its entries, hashes and signature before its program
//! is handed out.

use std::fs;
use std::io;

use serde::Deserialize;

use crate::artifact::{
    ArtifactMetadata, ArtifactStore, LoadedArtifact, ARCHIVE_FILE, METADATA_FILE, PROGRAM_FILE,
    SIGNATURE_FILE,
};
use crate::digest::{abbreviate, sha256_hex};
use crate::error::{Error, ErrorKind, Result};

impl ArtifactStore {
    /// Reads and verifies `version`: the version directory and its files must be real
    /// entries inside the task's directory (not symlinks), the program's length and SHA-256
    /// must match the metadata, the metadata's `version` and `task_id` must match the
    /// directory, and the program's `task` must be this task. With
    /// [trusted keys](Self::with_trusted_keys), the stored archive's signature must verify
    /// and `program.json` must be the signed program.
    pub fn load(&self, version: u32) -> Result<LoadedArtifact> {
        self.check_entries(version)?;
        let metadata = self.read_metadata(version)?;
        let dir = self.version_dir(version);
        let rel = self.rel(format!("v{version}/{PROGRAM_FILE}"));
        let program = match fs::read(dir.join(PROGRAM_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::new(ErrorKind::Artifact, format!("{rel}: missing")));
            }
            Err(e) => return Err(Error::io(rel, e)),
        };
        if program.len() as u64 != metadata.program_bytes {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{rel}: size mismatch: {METADATA_FILE} records {} bytes, file has {} bytes \
                     (the program was modified after install)",
                    metadata.program_bytes,
                    program.len()
                ),
            ));
        }
        let actual = sha256_hex(&program);
        if actual != metadata.sha256 {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{rel}: sha256 mismatch: {METADATA_FILE} records {}, file has {} \
                     (the program was modified after install)",
                    abbreviate(&metadata.sha256),
                    abbreviate(&actual)
                ),
            ));
        }
        #[derive(Deserialize)]
        struct ProgramTask {
            task: Option<String>,
        }
        // A program that does not parse is reported by the compiler, with its path.
        if let Ok(ProgramTask { task: Some(task) }) = serde_json::from_slice(&program) {
            if task != self.task {
                return Err(Error::new(
                    ErrorKind::Artifact,
                    format!(
                        "{rel}: the program is for task {task:?}, not {:?}",
                        self.task
                    ),
                ));
            }
        }
        if !self.trusted_keys.is_empty() {
            self.verify_signed(version, &program)?;
        }
        Ok(LoadedArtifact {
            metadata,
            program,
            dir,
        })
    }

    /// Refuses a version directory, or a file in it, that is a symlink or not what it should
    /// be: whatever it points at may lie outside the task's directory.
    fn check_entries(&self, version: u32) -> Result<()> {
        let dir = self.version_dir(version);
        let rel = self.rel(format!("v{version}"));
        let escape = |what: String| {
            Error::new(
                ErrorKind::Artifact,
                format!(
                    "{what}; versions must be real directories and files inside {}",
                    self.rel("")
                ),
            )
        };
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(escape(format!("{rel}: is a symlink")));
            }
            Ok(m) if !m.is_dir() => return Err(escape(format!("{rel}: is not a directory"))),
            Ok(_) => {}
            // Reported by read_metadata as "no such version".
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(rel, e)),
        }
        for name in [PROGRAM_FILE, METADATA_FILE, ARCHIVE_FILE, SIGNATURE_FILE] {
            match fs::symlink_metadata(dir.join(name)) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(escape(format!("{rel}/{name}: is a symlink")));
                }
                Ok(m) if !m.is_file() => {
                    return Err(escape(format!("{rel}/{name}: is not a regular file")));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks the stored signed archive of `version` against the trusted keys, and that
    /// `program` is its program, for this task and version.
    fn verify_signed(&self, version: u32, program: &[u8]) -> Result<()> {
        let dir = self.version_dir(version);
        let rel = |name: &str| self.rel(format!("v{version}/{name}"));
        let read = |name: &str| match fs::read(dir.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(rel(name), e)),
        };
        let (Some(archive), Some(signature)) = (read(ARCHIVE_FILE)?, read(SIGNATURE_FILE)?) else {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{}: unsigned (no {SIGNATURE_FILE} with its {ARCHIVE_FILE}), but \
                     cloud.trusted_keys requires a signature at every load",
                    self.rel(format!("v{version}"))
                ),
            ));
        };
        let signature = String::from_utf8_lossy(&signature);
        crate::repository::verify_artifact_signature(
            &self.trusted_keys,
            &sha256_hex(&archive),
            signature.trim(),
        )
        .map_err(|e| e.context(rel(SIGNATURE_FILE)))?;
        let unpacked = crate::repository::ArtifactArchive::unpack(&archive)
            .map_err(|e| e.context(rel(ARCHIVE_FILE)))?;
        if unpacked.program != program {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{}: differs from the program of the signed {ARCHIVE_FILE} (modified after \
                     download)",
                    rel(PROGRAM_FILE)
                ),
            ));
        }
        #[derive(Deserialize)]
        struct Signed {
            task_id: String,
            version: u32,
        }
        let signed: Signed = unpacked
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_slice(m).ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Artifact,
                    format!("{}: no readable metadata.json inside", rel(ARCHIVE_FILE)),
                )
            })?;
        if signed.task_id != self.task || signed.version != version {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{}: signed for task `{}` v{}, not `{}` v{version}",
                    rel(ARCHIVE_FILE),
                    signed.task_id,
                    signed.version,
                    self.task
                ),
            ));
        }
        Ok(())
    }

    /// Loads the active version, or returns `None` if no version was ever activated.
    pub fn load_active(&self) -> Result<Option<LoadedArtifact>> {
        match self.active_version()? {
            Some(version) => self.load(version).map(Some),
            None => Ok(None),
        }
    }

    /// Verifies `version` like [`load`](Self::load) and returns its metadata.
    pub fn verify(&self, version: u32) -> Result<ArtifactMetadata> {
        self.load(version).map(|loaded| loaded.metadata)
    }
}
