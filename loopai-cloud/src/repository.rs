//! The artifact repository on the filesystem, laid out so that the directory can also be
//! served as static files (see `docs/repository.md`):
//!
//! ```text
//! <dir>/artifacts/<task>/versions             the versions list (loopai.versions/1 JSON)
//! <dir>/artifacts/<task>/v<N>/download        the archive (tar.gz of the two files below)
//! <dir>/artifacts/<task>/v<N>/program.json
//! <dir>/artifacts/<task>/v<N>/metadata.json
//! ```
//!
//! Versions are immutable. A version directory is created atomically by
//! [`ArtifactStore::import`]; its archive and the versions list are derived from it and
//! written atomically (temporary file, fsync, rename) afterwards, so a crash between the
//! steps leaves a version that [`Repository::open`] completes at the next start.
//! Publishing is serialized by one lock.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use loopai_core::{
    validate_task_id, ArtifactArchive, ArtifactMetadata, ArtifactSigner, ArtifactStore, Executor,
    JsonSchema, Program, VersionInfo, VersionList,
};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::http::ApiError;
use crate::storage::ArtifactBackend;

/// The versions list's file name in a task directory.
pub(crate) const VERSIONS_FILE: &str = "versions";
/// The archive's file name in a version directory.
pub(crate) const DOWNLOAD_FILE: &str = "download";

/// Metadata fields the repository assigns; an uploaded `metadata.json` may carry them (a
/// version directory copied from a runtime) but they are replaced.
const ASSIGNED_FIELDS: [&str; 8] = [
    "id",
    "task_id",
    "version",
    "language",
    "status",
    "created_at",
    "sha256",
    "program_bytes",
];

/// What [`Repository::open`] found.
#[derive(Debug, Default)]
pub(crate) struct OpenReport {
    pub(crate) tasks: usize,
    pub(crate) versions: usize,
    /// Versions whose archive was missing (an interrupted publish) and was rebuilt.
    pub(crate) completed: usize,
}

/// The artifact repository under `<dir>/artifacts/`.
#[derive(Debug)]
pub(crate) struct Repository {
    root: PathBuf,
    signer: Option<ArtifactSigner>,
    /// Per task, the published versions; the lock also serializes publishing.
    tasks: Mutex<HashMap<String, BTreeMap<u32, VersionInfo>>>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced,
/// renamed over `path`, then the directory fsynced.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{name}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        #[cfg(unix)]
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn core_error(e: loopai_core::Error) -> Error {
    Error::new(
        match e.kind() {
            loopai_core::ErrorKind::Io => ErrorKind::Io,
            loopai_core::ErrorKind::Config => ErrorKind::Config,
            _ => ErrorKind::Internal,
        },
        e.to_string(),
    )
}

/// The `ETag` of a versions list: a quoted prefix of its SHA-256.
pub(crate) fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", &hex_sha256(bytes)[..32])
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

impl Repository {
    /// Opens `<dir>/artifacts/`, completes versions left without an archive, and rewrites
    /// every versions list (so a new signing key signs every version).
    pub(crate) fn open(
        dir: &Path,
        signer: Option<ArtifactSigner>,
    ) -> Result<(Repository, OpenReport)> {
        let root = dir.join("artifacts");
        fs::create_dir_all(&root).map_err(|e| Error::io(root.display(), e))?;
        let repo = Repository {
            root,
            signer,
            tasks: Mutex::new(HashMap::new()),
        };
        let mut report = OpenReport::default();
        let entries = fs::read_dir(&repo.root).map_err(|e| Error::io(repo.root.display(), e))?;
        let mut tasks = repo.tasks.lock();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(repo.root.display(), e))?;
            let Some(task) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_task_id(&task).is_err() || !entry.path().is_dir() {
                continue;
            }
            let store = repo.store(&task)?;
            let mut versions = BTreeMap::new();
            for version in store.versions().map_err(core_error)? {
                match repo.describe(&store, version, &mut report) {
                    Ok(info) => {
                        versions.insert(version, info);
                    }
                    Err(e) => log::warn!("artifacts/{task}/v{version}: skipped: {e}"),
                }
            }
            report.tasks += 1;
            report.versions += versions.len();
            repo.write_list(&task, &versions)?;
            tasks.insert(task, versions);
        }
        drop(tasks);
        Ok((repo, report))
    }

    fn store(&self, task: &str) -> Result<ArtifactStore> {
        ArtifactStore::open(self.root.parent().unwrap_or(&self.root), task)
            .and_then(|s| s.with_keep_versions(usize::MAX))
            .map_err(core_error)
    }

    /// The list entry of an installed version, writing its archive if it is missing.
    fn describe(
        &self,
        store: &ArtifactStore,
        version: u32,
        report: &mut OpenReport,
    ) -> Result<VersionInfo> {
        let loaded = store.load(version).map_err(core_error)?;
        let path = loaded.dir.join(DOWNLOAD_FILE);
        let archive = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let bytes = self.pack(&loaded.dir, loaded.program)?;
                report.completed += 1;
                bytes
            }
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        Ok(self.entry(&loaded.metadata, &archive))
    }

    /// Packs the version directory `dir` into its `download` archive.
    fn pack(&self, dir: &Path, program: Vec<u8>) -> Result<Vec<u8>> {
        let meta_path = dir.join("metadata.json");
        let metadata = fs::read(&meta_path).map_err(|e| Error::io(meta_path.display(), e))?;
        let archive = ArtifactArchive::new(program, Some(metadata))
            .pack()
            .map_err(core_error)?;
        let path = dir.join(DOWNLOAD_FILE);
        write_atomic(&path, &archive).map_err(|e| Error::io(path.display(), e))?;
        Ok(archive)
    }

    fn entry(&self, metadata: &ArtifactMetadata, archive: &[u8]) -> VersionInfo {
        let info = VersionInfo::new(
            metadata.version,
            archive,
            &metadata.created_at,
            &metadata.sha256,
        );
        let signature = self.signer.as_ref().map(|s| s.sign(&info.sha256));
        info.with_signature(signature)
    }

    fn write_list(&self, task: &str, versions: &BTreeMap<u32, VersionInfo>) -> Result<()> {
        let list = VersionList::new(task, versions.values().cloned().collect());
        let path = self.root.join(task).join(VERSIONS_FILE);
        let bytes = list.to_json();
        if fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        write_atomic(&path, &bytes).map_err(|e| Error::io(path.display(), e))
    }

    /// The versions list file of `task` (it may not exist).
    pub(crate) fn versions_path(&self, task: &str) -> PathBuf {
        self.root.join(task).join(VERSIONS_FILE)
    }

    /// The archive of `task` `version` (it may not exist).
    pub(crate) fn download_path(&self, task: &str, version: u32) -> PathBuf {
        self.root
            .join(task)
            .join(format!("v{version}"))
            .join(DOWNLOAD_FILE)
    }

    /// The highest published version of `task`.
    pub(crate) fn latest(&self, task: &str) -> Option<u32> {
        self.tasks
            .lock()
            .get(task)
            .and_then(|v| v.keys().next_back().copied())
    }

    /// The number of tasks with at least one version.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.lock().values().filter(|v| !v.is_empty()).count()
    }

    /// The public key versions are signed with, if any.
    pub(crate) fn public_key(&self) -> Option<String> {
        self.signer.as_ref().map(ArtifactSigner::public_key_hex)
    }

    /// Validates and publishes an upload (see [`ArtifactBackend::publish`]). Blocking;
    /// publishing is serialized by the repository's lock.
    pub(crate) fn publish(
        &self,
        task: &str,
        body: &[u8],
        requested: Option<u32>,
    ) -> std::result::Result<VersionInfo, ApiError> {
        let upload = Upload::validate(task, body)?;
        let mut tasks = self.tasks.lock();
        let versions = tasks.entry(task.to_owned()).or_default();
        let store = self
            .store(task)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let installed = store
            .versions()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let version = choose_version(task, installed.last().copied(), requested, |v| {
            installed.contains(&v)
        })?;
        let metadata = upload.metadata(version)?;
        let imported = store.import(&metadata, &upload.program).map_err(|e| {
            log::error!("publishing {task} v{version}: {e}");
            ApiError::internal(format!("storing the version failed: {e}"))
        })?;
        let dir = store.task_dir().join(format!("v{version}"));
        let archive = self
            .pack(&dir, upload.program)
            .map_err(|e| ApiError::internal(format!("storing the archive failed: {e}")))?;
        let info = self.entry(&imported, &archive);
        versions.insert(version, info.clone());
        self.write_list(task, versions)
            .map_err(|e| ApiError::internal(format!("writing the versions list failed: {e}")))?;
        Ok(info)
    }
}

/// Reads a file of the repository, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

impl ArtifactBackend for Repository {
    fn publish(
        &self,
        task: &str,
        body: &[u8],
        requested: Option<u32>,
    ) -> std::result::Result<VersionInfo, ApiError> {
        Repository::publish(self, task, body, requested)
    }

    fn versions_list(&self, task: &str) -> Result<Option<Vec<u8>>> {
        read_optional(&self.versions_path(task))
    }

    fn download(&self, task: &str, version: u32) -> Result<Option<Vec<u8>>> {
        read_optional(&self.download_path(task, version))
    }

    fn latest(&self, task: &str) -> Result<Option<u32>> {
        Ok(Repository::latest(self, task))
    }

    fn task_count(&self) -> Result<usize> {
        Ok(Repository::task_count(self))
    }

    fn public_key(&self) -> Option<String> {
        Repository::public_key(self)
    }

    fn delivers_notifications(&self) -> bool {
        false
    }
}

/// A validated upload: the program and the metadata fields it came with.
#[derive(Debug)]
pub(crate) struct Upload {
    task: String,
    pub(crate) program: Vec<u8>,
    fields: Map<String, Value>,
}

impl Upload {
    /// Checks an upload for `task`: `body` is a tar.gz archive (program.json and an
    /// optional metadata.json) or a bare program.json; the program must compile with the
    /// schemas its metadata gives.
    pub(crate) fn validate(task: &str, body: &[u8]) -> std::result::Result<Upload, ApiError> {
        validate_task_id(task)
            .map_err(|e| ApiError::bad_request(format!("task: {}", e.message())))?;
        let (program_bytes, metadata) = if body.starts_with(&[0x1f, 0x8b]) {
            let archive =
                ArtifactArchive::unpack(body).map_err(|e| ApiError::bad_request(e.message()))?;
            (archive.program, archive.metadata)
        } else {
            (body.to_vec(), None)
        };
        let program = Program::from_json(&program_bytes)
            .map_err(|e| ApiError::bad_request(format!("program.json: {}", e.message())))?;
        if program.task() != task {
            return Err(ApiError::bad_request(format!(
                "program.json: task: the program is for task {:?}, not {task:?}",
                program.task()
            )));
        }
        let fields = upload_metadata(metadata.as_deref(), task, &program_bytes)?;
        let schema = |key: &str| -> std::result::Result<Option<JsonSchema>, ApiError> {
            fields
                .get(key)
                .filter(|v| !v.is_null())
                .map(|v| {
                    JsonSchema::compile(v).map_err(|e| {
                        ApiError::bad_request(format!("metadata.json: {key}: {}", e.message()))
                    })
                })
                .transpose()
        };
        let (input, output) = (schema("input_schema")?, schema("output_schema")?);
        Executor::new(program, 0, input, output).map_err(|e| {
            ApiError::bad_request(format!("metadata.json: output_schema: {}", e.message()))
        })?;
        Ok(Upload {
            task: task.to_owned(),
            program: program_bytes,
            fields,
        })
    }

    /// The metadata of the upload published as `version`, with the fields the repository
    /// assigns (id, version, status, created_at now, sha256, ...).
    pub(crate) fn metadata(&self, version: u32) -> std::result::Result<ArtifactMetadata, ApiError> {
        let mut fields = self.fields.clone();
        fields.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
        fields.insert("task_id".into(), json!(self.task));
        fields.insert("version".into(), json!(version));
        fields.insert("language".into(), json!(loopai_core::PROGRAM_LANGUAGE));
        fields.insert("status".into(), json!("validated"));
        fields.insert("created_at".into(), json!(now_rfc3339()));
        fields.insert("sha256".into(), json!(hex_sha256(&self.program)));
        fields.insert("program_bytes".into(), json!(self.program.len()));
        serde_json::from_value(Value::Object(fields))
            .map_err(|e| ApiError::bad_request(format!("metadata.json: {e}")))
    }
}

/// The version a publication gets: `requested` (409 when `exists` says it is taken, 400
/// for 0) or the one after `highest`.
pub(crate) fn choose_version(
    task: &str,
    highest: Option<u32>,
    requested: Option<u32>,
    exists: impl Fn(u32) -> bool,
) -> std::result::Result<u32, ApiError> {
    match requested {
        Some(0) => Err(ApiError::bad_request("version: must be at least 1")),
        Some(v) if exists(v) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            format!("version: v{v} of task {task:?} already exists (versions are immutable)"),
        )),
        Some(v) => Ok(v),
        None => highest.unwrap_or(0).checked_add(1).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                "no version number left",
            )
        }),
    }
}

/// The uploaded `metadata.json` as metadata fields: an object whose known fields have the
/// right types; repository-assigned fields are dropped after checking that `task_id` and
/// `sha256`, when given, agree with the upload.
fn upload_metadata(
    bytes: Option<&[u8]>,
    task: &str,
    program: &[u8],
) -> std::result::Result<Map<String, Value>, ApiError> {
    let Some(bytes) = bytes else {
        return Ok(Map::new());
    };
    let bad = |m: String| ApiError::bad_request(format!("metadata.json: {m}"));
    let mut fields = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(bad("expected a JSON object".to_owned())),
        Err(e) => return Err(bad(format!("not valid JSON: {e}"))),
    };
    if let Some(t) = fields.get("task_id") {
        if t.as_str() != Some(task) {
            return Err(bad(format!(
                "task_id: {t} does not match the task {task:?}"
            )));
        }
    }
    if let Some(sha) = fields.get("sha256") {
        if sha.as_str() != Some(hex_sha256(program).as_str()) {
            return Err(bad(
                "sha256: does not match the uploaded program.json".to_owned()
            ));
        }
    }
    for key in ASSIGNED_FIELDS {
        fields.remove(key);
    }
    // Check the types of the remaining known fields now, naming the field.
    let mut probe = fields.clone();
    for (key, value) in [
        ("id", json!("x")),
        ("task_id", json!(task)),
        ("version", json!(1)),
        ("status", json!("validated")),
        ("created_at", json!("x")),
        ("sha256", json!("x")),
        ("program_bytes", json!(0)),
    ] {
        probe.insert(key.into(), value);
    }
    serde_path_to_error::deserialize::<_, ArtifactMetadata>(Value::Object(probe)).map_err(|e| {
        let path = e.path().to_string();
        bad(format!("{path}: {}", e.into_inner()))
    })?;
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_the_next_one_or_the_free_one_requested() {
        let none = |_| false;
        assert_eq!(choose_version("t", None, None, none).unwrap(), 1);
        assert_eq!(choose_version("t", Some(4), None, none).unwrap(), 5);
        assert_eq!(choose_version("t", Some(4), Some(9), none).unwrap(), 9);
        let taken = choose_version("t", Some(4), Some(2), |v| v == 2).unwrap_err();
        assert_eq!(taken.status(), axum::http::StatusCode::CONFLICT);
        assert_eq!(
            taken.message(),
            "version: v2 of task \"t\" already exists (versions are immutable)"
        );
        let zero = choose_version("t", None, Some(0), none).unwrap_err();
        assert_eq!(zero.message(), "version: must be at least 1");
        let full = choose_version("t", Some(u32::MAX), None, none).unwrap_err();
        assert_eq!(full.status(), axum::http::StatusCode::CONFLICT);
    }
}
