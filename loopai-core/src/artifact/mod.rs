//! The on-disk artifact cache: versioned, immutable program artifacts per task.
//!
//! Layout (relied on by users and tools):
//!
//! ```text
//! <data_dir>/artifacts/<task>/v<N>/program.json     opaque program bytes
//! <data_dir>/artifacts/<task>/v<N>/metadata.json    ArtifactMetadata
//! <data_dir>/artifacts/<task>/active -> v<N>        relative symlink, target exactly "v<N>"
//! <data_dir>/artifacts/<task>/active.version        "v<N>\n", only where symlinks are unavailable
//! <data_dir>/artifacts/<task>/v<N>/artifact.tar.gz  the signed archive, for downloaded versions
//! <data_dir>/artifacts/<task>/v<N>/artifact.sig     its ed25519 signature (base64)
//! ```
//!
//! Every load checks that the version directory and its files are real entries inside the
//! task's directory (no symlink escapes), the program's size and SHA-256, and that the
//! program's `task` is the store's task; with [trusted keys](ArtifactStore::with_trusted_keys)
//! it also verifies the signature of the stored archive and that `program.json` is the
//! archive's program, so a program rewritten together with its metadata is refused.
//!
//! Every change becomes visible through a single `rename`, after the data it points at has been
//! fsynced, so a crash leaves either the old or the new state, never a half-written version.
//! The `active` pointer is the source of truth for which version runs; the `status` field in
//! `metadata.json` mirrors it on a best-effort basis. See `docs/artifacts.md`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fsutil::{create_dir_all_durable, sync_dir, write_atomic, write_new_file};

use crate::digest::{abbreviate, sha256_hex};
use crate::error::{Error, ErrorKind, Result};
use crate::program::Program;

mod load;
mod pointer;

/// The value of [`ArtifactMetadata::language`] for programs written by this runtime.
pub const PROGRAM_LANGUAGE: &str = crate::program::FORMAT;

const PROGRAM_FILE: &str = "program.json";
const METADATA_FILE: &str = "metadata.json";
const ACTIVE_LINK: &str = "active";
const ACTIVE_MARKER: &str = "active.version";
const ARCHIVE_FILE: &str = "artifact.tar.gz";
const SIGNATURE_FILE: &str = "artifact.sig";
const TMP_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";
const ACTIVE_LINK_TMP_PREFIX: &str = "active.tmp-";
const ACTIVE_MARKER_TMP_PREFIX: &str = "active.version.tmp-";
const DEFAULT_KEEP_VERSIONS: usize = 10;
const MAX_TASK_ID_BYTES: usize = 128;
/// How many times `install` moves on to the next version number when another writer took it.
const MAX_INSTALL_ATTEMPTS: u32 = 64;
/// Temporary entries younger than this may belong to an install in progress in another
/// process, so [`ArtifactStore::open`] leaves them alone.
const STALE_TMP_AGE: Duration = Duration::from_secs(10 * 60);

/// Field names of [`ArtifactMetadata`] that [`NewArtifact::extra`] must not reuse.
const RESERVED_FIELDS: [&str; 15] = [
    "id",
    "task_id",
    "version",
    "language",
    "synthesis_strategy",
    "confidence_score",
    "complexity_metrics",
    "llm_provider",
    "llm_model",
    "generation_cost",
    "generation_time_sec",
    "status",
    "created_at",
    "sha256",
    "program_bytes",
];

/// Serializes changes to `active` pointers and pruning within this process. Other processes
/// are handled by the re-checks in [`ArtifactStore::activate`] and [`ArtifactStore::prune`].
static POINTER_LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The lifecycle state recorded in `metadata.json`.
///
/// The `active` pointer is authoritative; `status` mirrors it and is updated by
/// [`ArtifactStore::activate`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactStatus {
    /// Generated but not yet validated.
    Draft,
    /// Validated by the caller and installed, not (yet) active.
    Validated,
    /// The version the `active` pointer names.
    Active,
    /// Was active, has since been replaced.
    Deprecated,
}

/// The contents of `v<N>/metadata.json`: the design's ProgramArtifact fields minus the code.
///
/// Unknown fields are kept in [`extra`](ArtifactMetadata::extra), so a file written by a newer
/// version survives being read and rewritten by this one.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactMetadata {
    /// A random UUID (v4) identifying this artifact.
    pub id: String,
    /// The task this artifact belongs to (equals the task directory name).
    pub task_id: String,
    /// The version number (equals the `v<N>` directory name).
    pub version: u32,
    /// The program language, [`PROGRAM_LANGUAGE`] by default.
    #[serde(default = "default_language")]
    pub language: String,
    /// How the program was made: `rule`, `ml`, `hybrid`, `manual`, ...
    #[serde(default = "default_strategy")]
    pub synthesis_strategy: String,
    /// The generator's confidence in the program, if it reported one.
    #[serde(default)]
    pub confidence_score: Option<f64>,
    /// Free-form size/complexity measures reported by the generator.
    #[serde(default)]
    pub complexity_metrics: Map<String, Value>,
    /// The LLM provider used to synthesize the program, if any.
    #[serde(default)]
    pub llm_provider: Option<String>,
    /// The LLM model used to synthesize the program, if any.
    #[serde(default)]
    pub llm_model: Option<String>,
    /// What generating the program cost (in the generator's currency unit).
    #[serde(default)]
    pub generation_cost: f64,
    /// How long generating the program took, in seconds.
    #[serde(default)]
    pub generation_time_sec: f64,
    /// The lifecycle state; see [`ArtifactStatus`].
    pub status: ArtifactStatus,
    /// When the artifact was installed: RFC 3339, UTC, millisecond precision
    /// (`2025-10-26T08:15:30.123Z`).
    pub created_at: String,
    /// Lowercase hex SHA-256 of the `program.json` bytes.
    pub sha256: String,
    /// The length of `program.json` in bytes.
    pub program_bytes: u64,
    /// Fields this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_language() -> String {
    PROGRAM_LANGUAGE.to_owned()
}

fn default_strategy() -> String {
    "manual".to_owned()
}

/// What the caller supplies to [`ArtifactStore::install`]; the store fills in the rest
/// (id, version, status, timestamps, hash and size).
#[derive(Debug, Clone, PartialEq)]
pub struct NewArtifact {
    /// How the program was made: `rule`, `ml`, `hybrid`, `manual`, ... (default `manual`).
    pub synthesis_strategy: String,
    /// The generator's confidence in the program; must be finite.
    pub confidence_score: Option<f64>,
    /// Free-form size/complexity measures.
    pub complexity_metrics: Map<String, Value>,
    /// The LLM provider used, if any.
    pub llm_provider: Option<String>,
    /// The LLM model used, if any.
    pub llm_model: Option<String>,
    /// What generating the program cost; must be finite.
    pub generation_cost: f64,
    /// How long generating the program took, in seconds; must be finite.
    pub generation_time_sec: f64,
    /// Additional top-level metadata fields; keys must not collide with the known fields.
    pub extra: Map<String, Value>,
}

impl Default for NewArtifact {
    fn default() -> Self {
        NewArtifact {
            synthesis_strategy: default_strategy(),
            confidence_score: None,
            complexity_metrics: Map::new(),
            llm_provider: None,
            llm_model: None,
            generation_cost: 0.0,
            generation_time_sec: 0.0,
            extra: Map::new(),
        }
    }
}

/// A verified artifact: its metadata, the program bytes and the directory it was read from.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedArtifact {
    /// The parsed `metadata.json`.
    pub metadata: ArtifactMetadata,
    /// The `program.json` bytes, verified against `metadata.sha256` and `metadata.program_bytes`.
    pub program: Vec<u8>,
    /// The `v<N>` directory.
    pub dir: PathBuf,
}

impl LoadedArtifact {
    /// The task description sent to the oracle: the metadata's `description`, else the
    /// description of `program` (this artifact's program, compiled).
    pub(crate) fn description(&self, program: &Program) -> String {
        self.metadata
            .extra
            .get("description")
            .and_then(Value::as_str)
            .or_else(|| program.description())
            .unwrap_or_default()
            .to_owned()
    }
}

/// The artifact cache of one task: `<data_dir>/artifacts/<task>/`.
///
/// Safe to share between threads, and several processes may use the same directory: every
/// change is published by an atomic `rename`. Nothing here touches the network.
///
/// ```
/// use loopai_core::{ArtifactStore, NewArtifact};
///
/// let data_dir = tempfile::tempdir()?;
/// let store = ArtifactStore::open(data_dir.path(), "spam")?.with_keep_versions(5)?;
///
/// let v1 = store.install(br#"{"rules":[]}"#, NewArtifact::default(), true)?;
/// let v2 = store.install(br#"{"rules":[1]}"#, NewArtifact::default(), true)?;
/// assert_eq!((v1.version, v2.version), (1, 2));
/// assert_eq!(store.active_version()?, Some(2));
///
/// let active = store.load_active()?.expect("v2 is active");
/// assert_eq!(active.program, br#"{"rules":[1]}"#);
///
/// assert_eq!(store.rollback()?, 1);
/// assert_eq!(store.active_version()?, Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    task: String,
    task_dir: PathBuf,
    keep_versions: usize,
    trusted_keys: Vec<String>,
}

impl ArtifactStore {
    /// Opens (creating if needed) the cache of `task` under `data_dir`.
    ///
    /// `task` must be 1 to 128 bytes of `[A-Za-z0-9._-]` and must not start with `.`
    /// ([`ErrorKind::Config`] otherwise). New directories and their parents are fsynced.
    /// Temporary entries left by a crashed install or activation are removed once they are
    /// older than ten minutes (younger ones may belong to another process at work).
    pub fn open(data_dir: &Path, task: &str) -> Result<Self> {
        validate_task_id(task)?;
        let task_dir = data_dir.join("artifacts").join(task);
        create_dir_all_durable(&task_dir)?;
        let store = ArtifactStore {
            task: task.to_owned(),
            task_dir,
            keep_versions: DEFAULT_KEEP_VERSIONS,
            trusted_keys: Vec::new(),
        };
        store.remove_leftovers()?;
        Ok(store)
    }

    /// Opens the cache of a task that already exists, creating nothing: for read-only use
    /// (`loopai exec`, `eval`, `artifacts list`, a [`Runtime`](crate::Runtime) without an
    /// artifact repository), where a mistyped data dir or task must fail, not leave an
    /// empty task behind.
    ///
    /// Errors: [`ErrorKind::Config`] when `data_dir` does not exist or is not a directory,
    /// or for an invalid task id; [`ErrorKind::Artifact`] when there is no such task,
    /// naming the directory, listing the tasks that exist and suggesting the closest
    /// (`task "spamm" has no active program: there is no task "spamm" in /data/artifacts
    /// (tasks there: `ham`, `spam`); did you mean `spam`?`).
    pub fn open_existing(data_dir: &Path, task: &str) -> Result<Self> {
        validate_task_id(task)?;
        match fs::metadata(data_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("data dir {}: not a directory", data_dir.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "data dir {}: no such directory (task {task:?} cannot be there)",
                        data_dir.display()
                    ),
                ))
            }
            Err(e) => return Err(Error::io(data_dir.display(), e)),
        }
        let artifacts = data_dir.join("artifacts");
        if !artifacts.join(task).is_dir() {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "task {task:?} has no active program: there is no task {task:?} in {}{}",
                    artifacts.display(),
                    existing_tasks_hint(&artifacts, task)
                ),
            ));
        }
        ArtifactStore::open(data_dir, task)
    }

    /// Sets how many versions [`prune`](Self::prune) keeps (default 10, at least 1). The active
    /// version is always kept and counts towards the limit.
    pub fn with_keep_versions(mut self, keep_versions: usize) -> Result<Self> {
        if keep_versions == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "artifacts.keep_versions for task `{}`: must be at least 1, got 0",
                    self.task
                ),
            ));
        }
        self.keep_versions = keep_versions;
        Ok(self)
    }

    /// Makes every [`load`](Self::load) (and so [`load_active`](Self::load_active),
    /// [`verify`](Self::verify) and the runtime's loads) require a version signed by one of
    /// `keys` (`cloud.trusted_keys`: 32-byte ed25519 public keys, hex or base64): the
    /// stored archive's signature must verify and `program.json` must be the archive's
    /// program, for this task and version. Versions installed locally (unsigned) then no
    /// longer load. An empty list checks no signature (the default).
    ///
    /// [`ErrorKind::Config`] naming the key when one does not decode.
    pub fn with_trusted_keys(mut self, keys: &[String]) -> Result<Self> {
        for (i, key) in keys.iter().enumerate() {
            if crate::repository::decode_ed25519_public_key(key).is_none() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "cloud.trusted_keys[{i}]: expected a 32-byte ed25519 public key in hex \
                         (64 digits) or base64"
                    ),
                ));
            }
        }
        self.trusted_keys = keys.to_vec();
        Ok(self)
    }

    /// The keys every load requires a signature by (empty: none required).
    pub fn trusted_keys(&self) -> &[String] {
        &self.trusted_keys
    }

    /// How many versions [`prune`](Self::prune) keeps.
    pub fn keep_versions(&self) -> usize {
        self.keep_versions
    }

    /// The task id.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// `<data_dir>/artifacts/<task>`.
    pub fn task_dir(&self) -> &Path {
        &self.task_dir
    }

    /// Installs `program` as the next version (the highest existing plus one; `v1` first),
    /// activates it if `activate`, then [prunes](Self::prune) old versions.
    ///
    /// The program bytes are stored as they are; validate them first. Both files are written
    /// and fsynced in a temporary directory that is then renamed to `v<N>`, so a version is
    /// either complete or absent. If another writer takes `v<N>` first, the install moves on
    /// to the next number. If activation or pruning fails, the error says so and the new
    /// version stays installed.
    pub fn install(
        &self,
        program: &[u8],
        meta: NewArtifact,
        activate: bool,
    ) -> Result<ArtifactMetadata> {
        let mut metadata = self.new_metadata(program, meta)?;

        let (tmp, guard, tmp_rel) = self.stage_version(program, &metadata, None)?;

        let mut attempts = 0;
        loop {
            let target = self.version_dir(metadata.version);
            match fs::rename(&tmp, &target) {
                Ok(()) => break,
                Err(err) => {
                    attempts += 1;
                    let taken = fs::symlink_metadata(&target).is_ok();
                    if !taken || attempts >= MAX_INSTALL_ATTEMPTS {
                        return Err(Error::io(
                            format!(
                                "installing {tmp_rel} as {}",
                                self.rel(format!("v{}", metadata.version))
                            ),
                            err,
                        ));
                    }
                    // Another writer installed this version first: take the next free one.
                    let next = self
                        .next_version()?
                        .max(next_after(metadata.version, self)?);
                    metadata.version = next;
                    write_new_file(&tmp.join(METADATA_FILE), &metadata_json(&metadata)?)
                        .map_err(|e| Error::io(format!("{tmp_rel}/{METADATA_FILE}"), e))?;
                }
            }
        }
        guard.disarm();
        sync_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;

        let version = metadata.version;
        if activate {
            self.activate(version)
                .map_err(|e| e.context(format!("v{version} was installed but not activated")))?;
            metadata.status = ArtifactStatus::Active;
        }
        self.prune()
            .map_err(|e| e.context(format!("v{version} was installed but pruning failed")))?;
        Ok(metadata)
    }

    /// Installs a version made elsewhere — downloaded from an artifact repository — under
    /// its own number `metadata.version`, **not** activated, then [prunes](Self::prune).
    ///
    /// `metadata` is written as given (its `id`, `created_at` and unknown fields are kept)
    /// except `status`, which becomes `validated`. It must describe `program`: its
    /// `task_id` must be this task, its `sha256` and `program_bytes` must match, and its
    /// numbers must be finite ([`ErrorKind::Artifact`] naming the field otherwise). The
    /// program bytes are not parsed: compile them first.
    ///
    /// Atomic like [`install`](Self::install). Importing a version that is already
    /// installed with the same program (another process got there first) returns the
    /// installed metadata; with a different program it is an [`ErrorKind::Artifact`]
    /// error, and nothing changes.
    pub fn import(&self, metadata: &ArtifactMetadata, program: &[u8]) -> Result<ArtifactMetadata> {
        self.import_inner(metadata, program, None)
    }

    /// [`import`](Self::import) of a version downloaded as the signed `archive`
    /// (`signature`: base64 ed25519 over the archive's SHA-256, see `docs/repository.md`):
    /// both are kept in the version's directory, so that a store
    /// [with trusted keys](Self::with_trusted_keys) verifies them at every load. The
    /// signature is not checked here (the download was).
    pub fn import_signed(
        &self,
        metadata: &ArtifactMetadata,
        program: &[u8],
        archive: &[u8],
        signature: &str,
    ) -> Result<ArtifactMetadata> {
        self.import_inner(metadata, program, Some((archive, signature)))
    }

    fn import_inner(
        &self,
        metadata: &ArtifactMetadata,
        program: &[u8],
        signed: Option<(&[u8], &str)>,
    ) -> Result<ArtifactMetadata> {
        let version = metadata.version;
        let rel = self.rel(format!("v{version}"));
        let refuse = |message: String| Error::new(ErrorKind::Artifact, format!("{rel}: {message}"));
        if version == 0 {
            return Err(refuse("version: must be at least 1".to_owned()));
        }
        if metadata.task_id != self.task {
            return Err(refuse(format!(
                "task_id: the artifact is for task `{}`, not `{}`",
                metadata.task_id, self.task
            )));
        }
        if metadata.program_bytes != program.len() as u64 {
            return Err(refuse(format!(
                "program_bytes: metadata records {} bytes, the program has {}",
                metadata.program_bytes,
                program.len()
            )));
        }
        let actual = sha256_hex(program);
        if actual != metadata.sha256 {
            return Err(refuse(format!(
                "sha256: metadata records {}, the program has {}",
                abbreviate(&metadata.sha256),
                abbreviate(&actual)
            )));
        }
        let finite = [
            ("confidence_score", metadata.confidence_score.unwrap_or(0.0)),
            ("generation_cost", metadata.generation_cost),
            ("generation_time_sec", metadata.generation_time_sec),
        ];
        if let Some((field, value)) = finite.iter().find(|(_, v)| !v.is_finite()) {
            return Err(refuse(format!("{field}: must be finite, got {value}")));
        }
        let mut metadata = metadata.clone();
        metadata.status = ArtifactStatus::Validated;
        let target = self.version_dir(version);
        if fs::symlink_metadata(&target).is_ok() {
            return self.same_as_installed(version, &metadata.sha256);
        }

        let (tmp, guard, tmp_rel) = self.stage_version(program, &metadata, signed)?;
        if let Err(err) = fs::rename(&tmp, &target) {
            if fs::symlink_metadata(&target).is_ok() {
                // Imported concurrently by another writer.
                return self.same_as_installed(version, &metadata.sha256);
            }
            return Err(Error::io(format!("installing {tmp_rel} as {rel}"), err));
        }
        guard.disarm();
        sync_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;
        self.prune()
            .map_err(|e| e.context(format!("v{version} was imported but pruning failed")))?;
        Ok(metadata)
    }

    /// The metadata of installed `version` when its program hashes to `sha256`.
    fn same_as_installed(&self, version: u32, sha256: &str) -> Result<ArtifactMetadata> {
        let installed = self.verify(version)?;
        if installed.sha256 == sha256 {
            return Ok(installed);
        }
        Err(self.artifact_error(
            format!("v{version}"),
            format!(
                "already installed with a different program (sha256 {}, new {})",
                abbreviate(&installed.sha256),
                abbreviate(sha256)
            ),
        ))
    }

    /// The metadata of every installed version, sorted by version.
    ///
    /// Reads only `metadata.json` (use [`verify`](Self::verify) to check the program bytes).
    /// A version whose metadata cannot be read is an error naming it.
    pub fn list(&self) -> Result<Vec<ArtifactMetadata>> {
        self.versions()?
            .into_iter()
            .map(|v| self.read_metadata(v))
            .collect()
    }

    /// The metadata of installed `version`, read and checked against its directory (version
    /// and task) but without verifying the program: see [`verify`](Self::verify).
    pub fn metadata(&self, version: u32) -> Result<ArtifactMetadata> {
        self.read_metadata(version)
    }

    /// The installed version numbers, ascending.
    pub fn versions(&self) -> Result<Vec<u32>> {
        let entries = fs::read_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(self.rel(""), e))?;
            let Some(version) = entry.file_name().to_str().and_then(parse_version_name) else {
                continue;
            };
            let file_type = entry
                .file_type()
                .map_err(|e| Error::io(self.rel(format!("v{version}")), e))?;
            if file_type.is_dir() {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// Removes the oldest versions so that at most [`keep_versions`](Self::keep_versions)
    /// remain, and returns the removed versions (ascending). Called by
    /// [`install`](Self::install).
    ///
    /// Never removes the active version, nor the newest one (so version numbers are never
    /// reused, and an install that does not activate is not undone). Both count towards the
    /// limit, so with `keep_versions = 1` and an older version active, two versions remain.
    /// Each version is first renamed out of the way (so it disappears atomically), then
    /// deleted.
    pub fn prune(&self) -> Result<Vec<u32>> {
        let _lock = POINTER_LOCK.lock();
        let versions = self.versions()?;
        if versions.len() <= self.keep_versions {
            return Ok(Vec::new());
        }
        let active = self.active_version()?;
        let excess = versions.len() - self.keep_versions;
        let newest = versions.last().copied();
        let candidates: Vec<u32> = versions
            .into_iter()
            .filter(|&v| Some(v) != active && Some(v) != newest)
            .take(excess)
            .collect();

        let mut removed = Vec::new();
        for version in candidates {
            let dir = self.version_dir(version);
            let trash = self
                .task_dir
                .join(format!("{TRASH_PREFIX}{}", uuid::Uuid::new_v4()));
            match fs::rename(&dir, &trash) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // pruned elsewhere
                Err(e) => return Err(Error::io(self.rel(format!("v{version}")), e)),
            }
            // Another process may have activated this version meanwhile: if so, put it back.
            if matches!(self.read_pointer(), Ok(Some((v, _))) if v == version) {
                fs::rename(&trash, &dir)
                    .map_err(|e| Error::io(self.rel(format!("v{version}")), e))?;
                continue;
            }
            sync_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;
            remove_entry(&trash).map_err(|e| Error::io(self.rel(file_name(&trash)), e))?;
            removed.push(version);
        }
        Ok(removed)
    }

    // ---- internals -------------------------------------------------------------------------

    fn read_metadata(&self, version: u32) -> Result<ArtifactMetadata> {
        let dir = self.version_dir(version);
        let rel = self.rel(format!("v{version}/{METADATA_FILE}"));
        let bytes = match fs::read(dir.join(METADATA_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let what = if dir.is_dir() {
                    format!("{rel}: missing")
                } else {
                    format!("{}: no such version", self.rel(format!("v{version}")))
                };
                return Err(Error::new(ErrorKind::Artifact, what));
            }
            Err(e) => return Err(Error::io(rel, e)),
        };
        let invalid = |path: String, err: serde_json::Error| {
            let message = if path.is_empty() || path == "." {
                format!("{rel}: invalid metadata: {err}")
            } else {
                format!("{rel}: invalid metadata at `{path}`: {err}")
            };
            Error::new(ErrorKind::Artifact, message).with_source(err)
        };
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let metadata: ArtifactMetadata =
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                invalid(path, e.into_inner())
            })?;
        de.end().map_err(|e| invalid(String::new(), e))?;
        if metadata.version != version {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{rel}: records version {}, but lives in v{version}",
                    metadata.version
                ),
            ));
        }
        if metadata.task_id != self.task {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "{rel}: records task_id `{}`, but lives under task `{}`",
                    metadata.task_id, self.task
                ),
            ));
        }
        Ok(metadata)
    }

    /// Records in `v<version>/metadata.json` (extra field `rolled_back_at`) that a
    /// rollout of this version was rolled back; `status` is left alone.
    pub(crate) fn mark_rolled_back(&self, version: u32, at: crate::clock::Timestamp) -> Result<()> {
        let _lock = POINTER_LOCK.lock();
        let mut metadata = self.read_metadata(version)?;
        let at = serde_json::to_value(at).unwrap_or(Value::Null);
        metadata.extra.insert("rolled_back_at".to_owned(), at);
        let rel = self.rel(format!("v{version}/{METADATA_FILE}"));
        write_atomic(
            &self.version_dir(version).join(METADATA_FILE),
            &metadata_json(&metadata)?,
        )
        .map_err(|e| Error::io(rel, e))
    }

    /// Rewrites `status` in `v<version>/metadata.json` atomically (temp file, fsync, rename).
    fn set_status(&self, version: u32, status: ArtifactStatus) -> Result<()> {
        let mut metadata = self.read_metadata(version)?;
        if metadata.status == status {
            return Ok(());
        }
        metadata.status = status;
        let rel = self.rel(format!("v{version}/{METADATA_FILE}"));
        write_atomic(
            &self.version_dir(version).join(METADATA_FILE),
            &metadata_json(&metadata)?,
        )
        .map_err(|e| Error::io(rel, e))
    }

    /// Writes `program.json` and `metadata.json` into a fresh temporary directory of the
    /// task and syncs it: the directory (removed on drop unless the guard is disarmed) and
    /// its name relative to the data directory, for messages.
    fn stage_version(
        &self,
        program: &[u8],
        metadata: &ArtifactMetadata,
        signed: Option<(&[u8], &str)>,
    ) -> Result<(PathBuf, RemoveOnDrop, String)> {
        let tmp = self
            .task_dir
            .join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
        fs::create_dir(&tmp).map_err(|e| Error::io(self.rel(file_name(&tmp)), e))?;
        let guard = RemoveOnDrop(Some(tmp.clone()));
        let tmp_rel = self.rel(file_name(&tmp));
        write_new_file(&tmp.join(PROGRAM_FILE), program)
            .map_err(|e| Error::io(format!("{tmp_rel}/{PROGRAM_FILE}"), e))?;
        write_new_file(&tmp.join(METADATA_FILE), &metadata_json(metadata)?)
            .map_err(|e| Error::io(format!("{tmp_rel}/{METADATA_FILE}"), e))?;
        if let Some((archive, signature)) = signed {
            write_new_file(&tmp.join(ARCHIVE_FILE), archive)
                .map_err(|e| Error::io(format!("{tmp_rel}/{ARCHIVE_FILE}"), e))?;
            write_new_file(
                &tmp.join(SIGNATURE_FILE),
                format!("{signature}\n").as_bytes(),
            )
            .map_err(|e| Error::io(format!("{tmp_rel}/{SIGNATURE_FILE}"), e))?;
        }
        sync_dir(&tmp).map_err(|e| Error::io(&tmp_rel, e))?;
        Ok((tmp, guard, tmp_rel))
    }

    fn new_metadata(&self, program: &[u8], meta: NewArtifact) -> Result<ArtifactMetadata> {
        let finite = [
            ("confidence_score", meta.confidence_score.unwrap_or(0.0)),
            ("generation_cost", meta.generation_cost),
            ("generation_time_sec", meta.generation_time_sec),
        ];
        for (field, value) in finite {
            if !value.is_finite() {
                return Err(Error::new(
                    ErrorKind::Artifact,
                    format!(
                        "new artifact for task `{}`: {field} must be finite, got {value}",
                        self.task
                    ),
                ));
            }
        }
        if let Some(key) = meta
            .extra
            .keys()
            .find(|k| RESERVED_FIELDS.contains(&k.as_str()))
        {
            return Err(Error::new(
                ErrorKind::Artifact,
                format!(
                    "new artifact for task `{}`: extra.{key}: reserved metadata field",
                    self.task
                ),
            ));
        }
        Ok(ArtifactMetadata {
            id: uuid::Uuid::new_v4().to_string(),
            task_id: self.task.clone(),
            version: self.next_version()?,
            language: default_language(),
            synthesis_strategy: meta.synthesis_strategy,
            confidence_score: meta.confidence_score,
            complexity_metrics: meta.complexity_metrics,
            llm_provider: meta.llm_provider,
            llm_model: meta.llm_model,
            generation_cost: meta.generation_cost,
            generation_time_sec: meta.generation_time_sec,
            status: ArtifactStatus::Validated,
            created_at: now_rfc3339()?,
            sha256: sha256_hex(program),
            program_bytes: program.len() as u64,
            extra: meta.extra,
        })
    }

    fn next_version(&self) -> Result<u32> {
        let last = self.versions()?.last().copied().unwrap_or(0);
        next_after(last, self)
    }

    /// Removes temporary entries left by crashed installs, activations and prunes.
    fn remove_leftovers(&self) -> Result<()> {
        let entries = fs::read_dir(&self.task_dir).map_err(|e| Error::io(self.rel(""), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(self.rel(""), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            // Trash is removed at once: its mtime is the old version's, not the prune's, and a
            // version activated while being pruned is caught by `activate`'s own re-check.
            let remove = if name.starts_with(TRASH_PREFIX) {
                true
            } else if name.starts_with(TMP_PREFIX)
                || name.starts_with(ACTIVE_LINK_TMP_PREFIX)
                || name.starts_with(ACTIVE_MARKER_TMP_PREFIX)
            {
                is_stale(&path)
            } else if let Some(version) = parse_version_name(name) {
                self.remove_stale_in(version)?;
                false
            } else {
                false
            };
            if remove {
                remove_entry(&path).map_err(|e| Error::io(self.rel(name), e))?;
            }
        }
        Ok(())
    }

    /// Removes stale metadata rewrite temp files inside `v<version>`.
    fn remove_stale_in(&self, version: u32) -> Result<()> {
        let dir = self.version_dir(version);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
            Err(e) => return Err(Error::io(self.rel(format!("v{version}")), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(self.rel(format!("v{version}")), e))?;
            let path = entry.path();
            let is_tmp = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TMP_PREFIX));
            if is_tmp && is_stale(&path) {
                remove_entry(&path).map_err(|e| {
                    Error::io(self.rel(format!("v{version}/{}", file_name(&path))), e)
                })?;
            }
        }
        Ok(())
    }

    fn version_dir(&self, version: u32) -> PathBuf {
        self.task_dir.join(format!("v{version}"))
    }

    /// `artifacts/<task>/<tail>`: how messages name files.
    fn rel(&self, tail: impl fmt::Display) -> String {
        let tail = tail.to_string();
        if tail.is_empty() {
            format!("artifacts/{}", self.task)
        } else {
            format!("artifacts/{}/{tail}", self.task)
        }
    }

    fn artifact_error(&self, entry: impl fmt::Display, message: String) -> Error {
        Error::new(
            ErrorKind::Artifact,
            format!("{}: {message}", self.rel(entry)),
        )
    }
}

fn next_after(version: u32, store: &ArtifactStore) -> Result<u32> {
    version.checked_add(1).ok_or_else(|| {
        store.artifact_error(
            format!("v{version}"),
            "no version number left after this one".to_owned(),
        )
    })
}

/// Checks that `task` is a valid task id: 1-128 bytes of Unicode letters and digits
/// (`char::is_alphanumeric`), combining marks after the first character, `.`, `_` and
/// `-`, in Unicode normalization form C, not starting with `.` — so that it is always a
/// single, safe path component (no separator, no `..`, no control or space character) and
/// has one spelling on every file system (`退款分类`, `tâche`, `स्पैम` are valid).
pub fn validate_task_id(task: &str) -> Result<()> {
    let allowed = |(i, c): (usize, char)| {
        c.is_alphanumeric()
            || matches!(c, '.' | '_' | '-')
            || (i > 0 && unicode_normalization::char::is_combining_mark(c))
    };
    let problem = if task.is_empty() {
        Some("must not be empty")
    } else if task.len() > MAX_TASK_ID_BYTES {
        Some("must be at most 128 bytes")
    } else if task.starts_with('.') {
        Some("must not start with `.`")
    } else if !task.chars().enumerate().all(allowed) {
        Some("may only contain letters, digits, combining marks, `.`, `_` and `-`")
    } else if !unicode_normalization::is_nfc(task) {
        Some("must be in Unicode normalization form C (NFC)")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::new(
            ErrorKind::Config,
            format!("task id {task:?}: {problem}"),
        )),
        None => Ok(()),
    }
}

/// What to say after "there is no task X in DIR": the tasks that are there and the one
/// closest to `task`, or how to create one.
fn existing_tasks_hint(artifacts: &Path, task: &str) -> String {
    let mut tasks: Vec<String> = fs::read_dir(artifacts)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| validate_task_id(name).is_ok())
        .collect();
    tasks.sort();
    if tasks.is_empty() {
        return " (no task is installed there yet: create one with `loopai synth` or \
                `loopai artifacts install`)"
            .to_owned();
    }
    const LISTED: usize = 20;
    let mut listed: Vec<String> = tasks
        .iter()
        .take(LISTED)
        .map(|t| format!("`{t}`"))
        .collect();
    if tasks.len() > LISTED {
        listed.push(format!("and {} more", tasks.len() - LISTED));
    }
    let mut hint = format!(" (tasks there: {})", listed.join(", "));
    let closest = tasks
        .iter()
        .map(|t| (strsim::normalized_damerau_levenshtein(task, t), t))
        .filter(|(similarity, _)| *similarity >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, t)) = closest {
        hint.push_str(&format!("; did you mean `{t}`?"));
    }
    hint
}

/// Parses `v<N>` (N ≥ 1, decimal, no leading zeros).
fn parse_version_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn metadata_json(metadata: &ArtifactMetadata) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(metadata).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("serializing metadata of v{}: {e}", metadata.version),
        )
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn now_rfc3339() -> Result<String> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(format)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("formatting created_at: {e}")))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn remove_entry(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Whether a temporary entry is old enough that no live writer can still own it.
fn is_stale(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= STALE_TMP_AGE)
}

/// Removes a temporary directory on drop unless disarmed (an install that failed midway).
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn store(dir: &Path) -> ArtifactStore {
        ArtifactStore::open(dir, "spam").unwrap()
    }

    fn program(n: u32) -> Vec<u8> {
        format!("{{\"program\":{n}}}").into_bytes()
    }

    fn backdate(path: &Path) {
        let old = SystemTime::now() - STALE_TMP_AGE - Duration::from_secs(60);
        fs::File::open(path).unwrap().set_modified(old).unwrap();
    }

    #[test]
    fn install_assigns_v1_then_consecutive_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        for n in 1..=3 {
            let meta = store
                .install(&program(n), NewArtifact::default(), false)
                .unwrap();
            assert_eq!(meta.version, n);
            assert_eq!(meta.status, ArtifactStatus::Validated);
        }
        assert_eq!(store.versions().unwrap(), vec![1, 2, 3]);
        assert_eq!(store.active_version().unwrap(), None);
        let dir = tmp.path().join("artifacts/spam/v2");
        assert_eq!(fs::read(dir.join("program.json")).unwrap(), program(2));
        assert!(dir.join("metadata.json").is_file());
    }

    #[test]
    fn install_records_metadata_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let mut extra = Map::new();
        extra.insert("rollout".into(), Value::from("canary"));
        let new = NewArtifact {
            synthesis_strategy: "rule".into(),
            confidence_score: Some(0.95),
            llm_model: Some("m".into()),
            generation_cost: 0.15,
            generation_time_sec: 8.5,
            extra,
            ..NewArtifact::default()
        };
        let meta = store.install(b"{}", new, true).unwrap();
        assert_eq!(meta.task_id, "spam");
        assert_eq!(meta.language, PROGRAM_LANGUAGE);
        assert_eq!(meta.synthesis_strategy, "rule");
        assert_eq!(meta.status, ArtifactStatus::Active);
        assert_eq!(meta.sha256, sha256_hex(b"{}"));
        assert_eq!(meta.program_bytes, 2);
        assert!(uuid::Uuid::parse_str(&meta.id).is_ok());
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        assert!(time::PrimitiveDateTime::parse(&meta.created_at, format).is_ok());
        assert_eq!(store.list().unwrap(), vec![meta]);
    }

    #[test]
    fn install_rejects_reserved_extra_keys_and_non_finite_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let mut extra = Map::new();
        extra.insert("version".into(), Value::from(7));
        let err = store
            .install(
                b"{}",
                NewArtifact {
                    extra,
                    ..NewArtifact::default()
                },
                false,
            )
            .unwrap_err();
        assert!(err.message().contains("extra.version"), "{err}");
        let new = NewArtifact {
            generation_cost: f64::NAN,
            ..NewArtifact::default()
        };
        let err = store.install(b"{}", new, false).unwrap_err();
        assert!(err.message().contains("generation_cost"), "{err}");
        assert!(store.versions().unwrap().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn active_symlink_target_is_exactly_relative_vn() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        store
            .install(&program(2), NewArtifact::default(), true)
            .unwrap();
        let link = tmp.path().join("artifacts/spam/active");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("v2"));
        assert!(!tmp.path().join("artifacts/spam/active.version").exists());
        let names: Vec<_> = fs::read_dir(store.task_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn activate_moves_pointer_and_updates_status() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        store
            .install(&program(2), NewArtifact::default(), false)
            .unwrap();
        assert_eq!(store.active_version().unwrap(), Some(1));
        store.activate(2).unwrap();
        assert_eq!(store.active_version().unwrap(), Some(2));
        let statuses: Vec<_> = store.list().unwrap().iter().map(|m| m.status).collect();
        assert_eq!(
            statuses,
            [ArtifactStatus::Deprecated, ArtifactStatus::Active]
        );
        assert_eq!(store.load_active().unwrap().unwrap().program, program(2));
    }

    #[test]
    fn activate_unknown_version_fails_and_keeps_pointer() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        let err = store.activate(9).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert_eq!(err.message(), "artifacts/spam/v9: no such version");
        assert_eq!(store.active_version().unwrap(), Some(1));
    }

    #[test]
    fn rollback_activates_the_next_lower_version() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        for n in 1..=3 {
            store
                .install(&program(n), NewArtifact::default(), true)
                .unwrap();
        }
        assert_eq!(store.rollback().unwrap(), 2);
        assert_eq!(store.rollback().unwrap(), 1);
        assert_eq!(store.active_version().unwrap(), Some(1));
        let err = store.rollback().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(
            err.message().contains("no lower version is installed"),
            "{err}"
        );
        assert_eq!(store.list().unwrap()[0].status, ArtifactStatus::Active);
        assert_eq!(store.list().unwrap()[2].status, ArtifactStatus::Deprecated);
    }

    #[test]
    fn rollback_without_active_version_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        let err = store.rollback().unwrap_err();
        assert!(err.message().contains("no version is active"), "{err}");
    }

    #[test]
    fn tampered_program_is_refused_with_sha256_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let meta = store
            .install(b"{\"a\":1}", NewArtifact::default(), false)
            .unwrap();
        let path = tmp.path().join("artifacts/spam/v1/program.json");
        fs::write(&path, b"{\"a\":2}").unwrap(); // same length, different bytes
        let err = store.load(1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        let expected = format!(
            "artifacts/spam/v1/program.json: sha256 mismatch: metadata.json records {}…, \
             file has {}… (the program was modified after install)",
            &meta.sha256[..12],
            &sha256_hex(b"{\"a\":2}")[..12]
        );
        assert_eq!(err.message(), expected);
        // Activation verifies too.
        assert_eq!(store.activate(1).unwrap_err().message(), expected);
        assert_eq!(store.active_version().unwrap(), None);
    }

    #[test]
    fn truncated_program_is_refused_with_size_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        fs::write(tmp.path().join("artifacts/spam/v1/program.json"), b"{").unwrap();
        let err = store.verify(1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(
            err.message()
                .starts_with("artifacts/spam/v1/program.json: size mismatch"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_metadata_error_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        store
            .install(&program(2), NewArtifact::default(), false)
            .unwrap();
        let path = tmp.path().join("artifacts/spam/v2/metadata.json");
        let full = fs::read(&path).unwrap();
        for bad in [&full[..full.len() / 2], b"\xff\x00garbage", b"[]", b"{}"] {
            fs::write(&path, bad).unwrap();
            for err in [store.list().unwrap_err(), store.load(2).unwrap_err()] {
                assert_eq!(err.kind(), ErrorKind::Artifact);
                assert!(
                    err.message()
                        .starts_with("artifacts/spam/v2/metadata.json: invalid metadata"),
                    "{err}"
                );
            }
        }
        fs::remove_file(&path).unwrap();
        assert_eq!(
            store.list().unwrap_err().message(),
            "artifacts/spam/v2/metadata.json: missing"
        );
        assert!(store.load(1).is_ok());
    }

    #[test]
    fn metadata_must_match_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        let task = store.task_dir();
        fs::create_dir(task.join("v5")).unwrap();
        for file in ["program.json", "metadata.json"] {
            fs::copy(task.join("v1").join(file), task.join("v5").join(file)).unwrap();
        }
        let err = store.load(5).unwrap_err();
        assert_eq!(
            err.message(),
            "artifacts/spam/v5/metadata.json: records version 1, but lives in v5"
        );
        let other = ArtifactStore::open(tmp.path(), "ham").unwrap();
        fs::rename(task.join("v1"), other.task_dir().join("v1")).unwrap();
        let err = other.load(1).unwrap_err();
        assert!(err.message().contains("records task_id `spam`"), "{err}");
    }

    #[test]
    fn unknown_metadata_fields_load_and_survive_status_rewrite() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        let path = tmp.path().join("artifacts/spam/v1/metadata.json");
        let mut json: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        json["future_field"] = serde_json::json!({"nested": [1, 2]});
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        store.activate(1).unwrap();
        let meta = store.verify(1).unwrap();
        assert_eq!(meta.status, ArtifactStatus::Active);
        assert_eq!(
            meta.extra["future_field"],
            serde_json::json!({"nested": [1, 2]})
        );
    }

    #[test]
    fn prune_keeps_last_n_and_never_the_active_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path()).with_keep_versions(3).unwrap();
        store
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        for n in 2..=5 {
            store
                .install(&program(n), NewArtifact::default(), false)
                .unwrap();
        }
        assert_eq!(store.versions().unwrap(), vec![1, 4, 5]);
        assert_eq!(store.active_version().unwrap(), Some(1));
        store.activate(5).unwrap();
        store
            .install(&program(6), NewArtifact::default(), false)
            .unwrap();
        assert_eq!(store.versions().unwrap(), vec![4, 5, 6]);
        assert_eq!(store.prune().unwrap(), Vec::<u32>::new());

        // With one to keep, the active v5 and the newest v6 both stay.
        let store = store.with_keep_versions(1).unwrap();
        assert_eq!(store.prune().unwrap(), vec![4]);
        assert_eq!(store.versions().unwrap(), vec![5, 6]);
        let new = store
            .install(&program(7), NewArtifact::default(), false)
            .unwrap();
        assert_eq!(new.version, 7);
        assert_eq!(store.versions().unwrap(), vec![5, 7]);
        store.activate(7).unwrap();
        assert_eq!(store.prune().unwrap(), vec![5]);
        assert_eq!(store.versions().unwrap(), vec![7]);
        assert!(store.load_active().unwrap().is_some());
        assert!(ArtifactStore::open(tmp.path(), "spam")
            .unwrap()
            .with_keep_versions(0)
            .is_err());
    }

    #[test]
    fn concurrent_installs_get_distinct_versions_and_all_load() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = std::sync::Arc::new(store(tmp.path()));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let shared = shared.clone();
                let data_dir = tmp.path().to_owned();
                std::thread::spawn(move || {
                    // Half the threads use their own store, like separate processes would.
                    let own = ArtifactStore::open(&data_dir, "spam").unwrap();
                    let store = if t % 2 == 0 { &*shared } else { &own };
                    (0..2)
                        .map(|i| {
                            let bytes = program(t * 10 + i);
                            let meta = store.install(&bytes, NewArtifact::default(), false);
                            (meta.unwrap().version, bytes)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut installed: Vec<(u32, Vec<u8>)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        installed.sort();
        let versions: Vec<u32> = installed.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (1..=8).collect::<Vec<_>>());
        for (version, bytes) in installed {
            assert_eq!(shared.load(version).unwrap().program, bytes);
        }
    }

    #[test]
    fn stale_leftovers_are_removed_on_open_and_fresh_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        let task = store.task_dir().to_owned();
        let stale = task.join(".tmp-crashed");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("program.json"), b"{").unwrap();
        backdate(&stale);
        let stale_meta = task.join("v1/.tmp-metadata");
        fs::write(&stale_meta, b"{").unwrap();
        backdate(&stale_meta);
        let trash = task.join(".trash-pruned");
        fs::create_dir(&trash).unwrap();
        let fresh = task.join(".tmp-in-progress");
        fs::create_dir(&fresh).unwrap();

        let store = ArtifactStore::open(tmp.path(), "spam").unwrap();
        assert!(!stale.exists());
        assert!(!stale_meta.exists());
        assert!(!trash.exists());
        assert!(fresh.exists(), "may belong to a live install elsewhere");
        assert_eq!(store.versions().unwrap(), vec![1]);
        assert!(store.load_active().unwrap().is_some());
    }

    #[test]
    fn marker_file_is_read_when_there_is_no_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        store
            .install(&program(2), NewArtifact::default(), false)
            .unwrap();
        fs::write(store.task_dir().join("active.version"), "v1\n").unwrap();
        assert_eq!(store.active_version().unwrap(), Some(1));
        assert_eq!(store.load_active().unwrap().unwrap().program, program(1));
        assert_eq!(store.rollback().unwrap_err().kind(), ErrorKind::Artifact);

        fs::write(store.task_dir().join("active.version"), "latest\n").unwrap();
        let err = store.active_version().unwrap_err();
        assert_eq!(
            err.message(),
            "artifacts/spam/active.version: contains `latest`, expected `v<N>`"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlink_wins_over_marker_and_activation_removes_stale_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        store
            .install(&program(2), NewArtifact::default(), true)
            .unwrap();
        fs::write(store.task_dir().join("active.version"), "v1\n").unwrap();
        assert_eq!(store.active_version().unwrap(), Some(2));
        store.activate(2).unwrap();
        assert!(!store.task_dir().join("active.version").exists());
    }

    #[cfg(unix)]
    #[test]
    fn dangling_active_link_is_an_artifact_error() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        std::os::unix::fs::symlink("v7", store.task_dir().join("active")).unwrap();
        for err in [
            store.active_version().unwrap_err(),
            store.load_active().unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::Artifact);
            assert_eq!(
                err.message(),
                "artifacts/spam/active: points to v7, which is not installed (dangling pointer)"
            );
        }
        // Activating a good version repairs the pointer.
        store.activate(1).unwrap();
        assert_eq!(store.active_version().unwrap(), Some(1));

        fs::remove_file(store.task_dir().join("active")).unwrap();
        std::os::unix::fs::symlink("/etc", store.task_dir().join("active")).unwrap();
        let err = store.active_version().unwrap_err();
        assert!(
            err.message().contains("expected a relative `v<N>`"),
            "{err}"
        );
    }

    #[test]
    fn invalid_task_ids_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "a".repeat(129);
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "../etc",
            "spam ham",
            "a\\b",
            "a\u{0}b",
            "tab\tx",
            "line\nx",
            "\u{301}x",
            // "tâche" decomposed (NFD): one name, two spellings.
            "ta\u{302}che",
            "a\u{200b}b",
            long.as_str(),
        ] {
            let err = ArtifactStore::open(tmp.path(), bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}");
            assert!(
                err.message().starts_with(&format!("task id {bad:?}")),
                "{err}"
            );
        }
        assert!(!tmp.path().join("artifacts").exists());
        for good in [
            "spam",
            "task-abc",
            "a.b_c-9",
            &"a".repeat(128),
            "tâche",
            "退款分类",
            "問い合わせ_v2",
            "สวัสดี",
            "स्पैम",
            "تصنيف",
        ] {
            ArtifactStore::open(tmp.path(), good).unwrap();
        }
    }

    #[test]
    fn version_names_are_strict() {
        assert_eq!(parse_version_name("v1"), Some(1));
        assert_eq!(parse_version_name("v4294967295"), Some(u32::MAX));
        for bad in ["v0", "v01", "v", "1", "v1a", "v+1", "v4294967296", "V1"] {
            assert_eq!(parse_version_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn import_keeps_the_number_and_metadata_and_does_not_activate() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = ArtifactStore::open(&tmp.path().join("origin"), "spam").unwrap();
        for n in 1..=3 {
            origin
                .install(&program(n), NewArtifact::default(), true)
                .unwrap();
        }
        let v3 = origin.load(3).unwrap();

        let store = store(tmp.path());
        store
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        let imported = store.import(&v3.metadata, &v3.program).unwrap();
        assert_eq!(imported.version, 3);
        assert_eq!(imported.status, ArtifactStatus::Validated);
        assert_eq!(imported.id, v3.metadata.id);
        assert_eq!(imported.created_at, v3.metadata.created_at);
        assert_eq!(store.versions().unwrap(), vec![1, 3]);
        assert_eq!(store.active_version().unwrap(), Some(1));
        assert_eq!(store.load(3).unwrap().program, v3.program);
        // Idempotent for the same program; refused for another one.
        assert_eq!(store.import(&v3.metadata, &v3.program).unwrap().version, 3);
        let v2 = origin.load(2).unwrap();
        let mut other = v2.metadata.clone();
        other.version = 3;
        let err = store.import(&other, &v2.program).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(
            err.message()
                .starts_with("artifacts/spam/v3: already installed with a different program"),
            "{err}"
        );
        assert_eq!(store.load(3).unwrap().program, v3.program);
    }

    #[test]
    fn import_refuses_metadata_that_does_not_describe_the_program() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let meta = store
            .install(&program(1), NewArtifact::default(), false)
            .unwrap();
        let mut m = meta.clone();
        m.version = 2;
        let err = store.import(&m, &program(9)).unwrap_err();
        assert!(
            err.message()
                .starts_with("artifacts/spam/v2: program_bytes")
                || err.message().starts_with("artifacts/spam/v2: sha256"),
            "{err}"
        );
        let mut m = meta.clone();
        m.version = 2;
        m.task_id = "ham".into();
        let err = store.import(&m, &program(1)).unwrap_err();
        assert_eq!(
            err.message(),
            "artifacts/spam/v2: task_id: the artifact is for task `ham`, not `spam`"
        );
        let mut m = meta;
        m.version = 0;
        assert!(store.import(&m, &program(1)).is_err());
        assert_eq!(store.versions().unwrap(), vec![1]);
    }

    /// `origin`'s version `v`, packed and signed as the repository serves it, imported into
    /// `local` with its archive and signature.
    fn import_signed_copy(
        origin: &ArtifactStore,
        local: &ArtifactStore,
        v: u32,
        signer: &crate::repository::ArtifactSigner,
    ) {
        let loaded = origin.load(v).unwrap();
        let metadata = fs::read(origin.task_dir().join(format!("v{v}/metadata.json"))).unwrap();
        let archive =
            crate::repository::ArtifactArchive::new(loaded.program.clone(), Some(metadata))
                .pack()
                .unwrap();
        let signature = signer.sign(&sha256_hex(&archive));
        local
            .import_signed(&loaded.metadata, &loaded.program, &archive, &signature)
            .unwrap();
    }

    #[test]
    fn with_trusted_keys_every_load_verifies_the_signature_and_the_signed_program() {
        let dir = tempfile::tempdir().unwrap();
        let signer = crate::repository::ArtifactSigner::generate().unwrap();
        let other = crate::repository::ArtifactSigner::generate().unwrap();
        let origin = ArtifactStore::open(&dir.path().join("origin"), "spam").unwrap();
        for v in 1..=2 {
            let p = format!("{{\"task\":\"spam\",\"v\":{v}}}");
            origin
                .install(p.as_bytes(), NewArtifact::default(), false)
                .unwrap();
        }
        let local = store(&dir.path().join("local"));
        import_signed_copy(&origin, &local, 1, &signer);
        import_signed_copy(&origin, &local, 2, &signer);
        let trusting = local
            .clone()
            .with_trusted_keys(&[other.public_key_hex(), signer.public_key_hex()])
            .unwrap();
        trusting.load(1).unwrap();
        trusting.load(2).unwrap();
        // A key that did not sign: refused.
        let err = local
            .clone()
            .with_trusted_keys(&[other.public_key_hex()])
            .unwrap()
            .load(1)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(err.message().contains("v1/artifact.sig"), "{err}");

        // The audit's attack: program.json and metadata.json rewritten together, with a
        // matching sha256. Without trusted keys that is indistinguishable from an install.
        let evil = br#"{"task":"spam","evil":true}"#;
        let v1 = local.task_dir().join("v1");
        let mut meta = local.read_metadata(1).unwrap();
        meta.sha256 = sha256_hex(evil);
        meta.program_bytes = evil.len() as u64;
        fs::write(v1.join(PROGRAM_FILE), evil).unwrap();
        fs::write(v1.join(METADATA_FILE), metadata_json(&meta).unwrap()).unwrap();
        assert_eq!(local.load(1).unwrap().program, evil);
        let err = trusting.load(1).unwrap_err();
        assert_eq!(
            err.message(),
            "artifacts/spam/v1/program.json: differs from the program of the signed \
             artifact.tar.gz (modified after download)"
        );
        // A signed archive replayed as another version is refused too.
        for name in [PROGRAM_FILE, METADATA_FILE, ARCHIVE_FILE, SIGNATURE_FILE] {
            fs::copy(local.task_dir().join("v2").join(name), v1.join(name)).unwrap();
        }
        let err = trusting.load(1).unwrap_err();
        assert!(err.message().contains("records version 2"), "{err}");

        // A local, unsigned install does not load while keys are trusted.
        let v3 = local
            .install(br#"{"task":"spam"}"#, NewArtifact::default(), false)
            .unwrap()
            .version;
        local.load(v3).unwrap();
        let err = trusting.load(v3).unwrap_err();
        assert_eq!(
            err.message(),
            "artifacts/spam/v3: unsigned (no artifact.sig with its artifact.tar.gz), but \
             cloud.trusted_keys requires a signature at every load"
        );
        let err = store(dir.path())
            .with_trusted_keys(&["nope".to_owned()])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().starts_with("cloud.trusted_keys[0]:"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_version_directory_or_file_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store
            .install(&program(1), NewArtifact::default(), true)
            .unwrap();
        // A complete v2 outside the data directory, linked in.
        let outside = tempfile::tempdir().unwrap();
        let elsewhere = ArtifactStore::open(outside.path(), "spam").unwrap();
        for v in 1..=2 {
            elsewhere
                .install(&program(v), NewArtifact::default(), false)
                .unwrap();
        }
        std::os::unix::fs::symlink(elsewhere.task_dir().join("v2"), store.task_dir().join("v2"))
            .unwrap();
        let err = store.load(2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(
            err.message()
                .starts_with("artifacts/spam/v2: is a symlink; versions must be real"),
            "{err}"
        );
        // A file linked out of the version directory.
        let v1 = store.task_dir().join("v1");
        fs::remove_file(v1.join(PROGRAM_FILE)).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.task_dir().join("v1").join(PROGRAM_FILE),
            v1.join(PROGRAM_FILE),
        )
        .unwrap();
        let err = store.load_active().unwrap_err();
        assert!(
            err.message()
                .starts_with("artifacts/spam/v1/program.json: is a symlink"),
            "{err}"
        );
    }

    #[test]
    fn a_program_for_another_task_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store
            .install(
                br#"{"task":"ham","rules":[]}"#,
                NewArtifact::default(),
                false,
            )
            .unwrap();
        let err = store.load(1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert_eq!(
            err.message(),
            "artifacts/spam/v1/program.json: the program is for task \"ham\", not \"spam\""
        );
    }

    #[test]
    fn artifact_store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ArtifactStore>();
        assert_send_sync::<LoadedArtifact>();
    }
}
