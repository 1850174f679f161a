//! The improvement engine's file storage, under the server directory `D`: the stored
//! telemetry `D/telemetry/<task>/*.jsonl` (read), the state `D/improvement/<task>.json`
//! (atomically rewritten) and `D/escalations.jsonl` (appended). One process owns `D`, so
//! the pass lock holds nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use loopai_core::TelemetryBatch;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::storage::{ImprovementBackend, PassLock, StoredSpec, TaskState, VersionStats};

/// The improvement engine's storage in a server directory.
#[derive(Debug, Clone)]
pub(crate) struct FileImprovement {
    dir: PathBuf,
}

impl FileImprovement {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> FileImprovement {
        FileImprovement { dir: dir.into() }
    }

    fn state_path(&self, task: &str) -> PathBuf {
        self.dir.join("improvement").join(format!("{task}.json"))
    }
}

impl ImprovementBackend for FileImprovement {
    fn lock_pass(&self) -> Result<Option<PassLock>> {
        Ok(Some(PassLock::local()))
    }

    fn import_specs(&self, _dir: &Path) -> Result<usize> {
        // The specifications are read in place, from `spec`.
        Ok(0)
    }

    fn spec(&self, task: &str) -> Result<Option<StoredSpec>> {
        let path = self.dir.join("specs").join(format!("{task}.json"));
        match std::fs::read(&path) {
            Ok(body) => Ok(Some(StoredSpec {
                body,
                place: path.display().to_string(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }

    fn tasks(&self) -> Result<Vec<String>> {
        let root = self.dir.join("telemetry");
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(root.display(), e)),
        };
        let mut tasks: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        tasks.sort();
        Ok(tasks)
    }

    fn version_stats(
        &self,
        task: &str,
        allowed: Option<&[Value]>,
    ) -> Result<BTreeMap<u32, VersionStats>> {
        let dir = self.dir.join("telemetry").join(task);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(dir.display(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        let mut stats: BTreeMap<u32, VersionStats> = BTreeMap::new();
        let mut inputs: HashMap<uuid::Uuid, Value> = HashMap::new();
        let mut answers: Vec<(u32, uuid::Uuid, Value, bool)> = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let batch: TelemetryBatch = match serde_json::from_str(line) {
                    Ok(b) => b,
                    Err(e) => {
                        log::warn!(
                            "improvement: {}:{}: not a telemetry batch, skipped: {e}",
                            path.display(),
                            n + 1
                        );
                        continue;
                    }
                };
                for summary in batch.execution_summaries {
                    if let Some(input) = summary.input.filter(Value::is_object) {
                        inputs.insert(summary.execution_id, input);
                    }
                }
                for v in batch.sampled_validations {
                    let s = stats.entry(v.program_version).or_default();
                    s.validations += 1;
                    s.mismatches += u64::from(!v.matched);
                    if let Some(answer) = v.oracle_output {
                        if allowed.is_none_or(|a| a.contains(&answer)) {
                            answers.push((v.program_version, v.execution_id, answer, v.matched));
                        }
                    }
                }
            }
        }
        for (version, id, answer, matched) in answers {
            if let Some(input) = inputs.get(&id) {
                if let Some(s) = stats.get_mut(&version) {
                    let example = serde_json::json!({"input": input, "output": answer});
                    if !matched {
                        s.failing.push((id, example.clone()));
                    }
                    s.labelled.push(example);
                }
            }
        }
        Ok(stats)
    }

    fn read_state(&self, task: &str) -> Result<TaskState> {
        let path = self.state_path(task);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("{}: not a valid improvement state: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TaskState::default()),
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }

    fn write_state(&self, task: &str, state: &TaskState) -> Result<()> {
        let path = self.state_path(task);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("serializing state: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(path.display(), e))
    }

    fn escalate(&self, _task: &str, record: &Value) -> Result<String> {
        use std::io::Write;
        let path = self.dir.join("escalations.jsonl");
        let mut line = serde_json::to_vec(record)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("serializing: {e}")))?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(path.display(), e))?;
        file.write_all(&line)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path.display(), e))?;
        Ok(path.display().to_string())
    }
}
