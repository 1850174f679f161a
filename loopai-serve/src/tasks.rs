//! The served tasks: which ones, loading their runtimes, and per-task limits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loopai_core::{
    validate_task_id, Durability, Error, ErrorKind, Result, Runtime, MAX_INPUT_DOCUMENT_BYTES,
};

use crate::metrics::TaskMetrics;

/// Bytes allowed beside the input text in a `POST /execute` body: the envelope
/// `{"input": ...}`, other input fields, JSON escapes (64 KiB).
pub const BODY_ENVELOPE_BYTES: usize = 64 << 10;

/// The default body limit of `POST /execute` for a task: twice
/// `execution.max_input_bytes` (JSON escaping can double a text) plus
/// [`BODY_ENVELOPE_BYTES`], at most [`MAX_INPUT_DOCUMENT_BYTES`]. With the default
/// `max_input_bytes` (64 KiB) that is 192 KiB.
pub fn default_body_limit(max_input_bytes: usize) -> usize {
    max_input_bytes
        .saturating_mul(2)
        .saturating_add(BODY_ENVELOPE_BYTES)
        .min(MAX_INPUT_DOCUMENT_BYTES)
}

/// One served task.
#[derive(Debug)]
pub(crate) struct TaskEntry {
    pub(crate) runtime: Runtime,
    pub(crate) metrics: TaskMetrics,
    /// Body limit of single executions.
    pub(crate) body_limit: usize,
    /// `storage.durability: durable`: `execute` waits for fsync, so it runs on the
    /// blocking pool instead of an async worker.
    pub(crate) blocking: bool,
}

impl TaskEntry {
    pub(crate) fn new(runtime: Runtime, body_limit: Option<usize>) -> TaskEntry {
        let config = runtime.config();
        TaskEntry {
            body_limit: body_limit
                .unwrap_or_else(|| default_body_limit(config.execution.max_input_bytes)),
            blocking: config.storage.durability == Durability::Durable,
            metrics: TaskMetrics::default(),
            runtime,
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.runtime.task()
    }
}

/// The loaded tasks, in the order given.
#[derive(Debug)]
pub(crate) struct TaskSet {
    pub(crate) entries: Vec<Arc<TaskEntry>>,
    by_name: HashMap<String, usize>,
}

impl TaskSet {
    pub(crate) fn new(runtimes: Vec<Runtime>, body_limit: Option<usize>) -> TaskSet {
        let entries: Vec<Arc<TaskEntry>> = runtimes
            .into_iter()
            .map(|rt| Arc::new(TaskEntry::new(rt, body_limit)))
            .collect();
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name().to_string(), i))
            .collect();
        TaskSet { entries, by_name }
    }

    pub(crate) fn get(&self, task: &str) -> Option<&Arc<TaskEntry>> {
        self.by_name.get(task).map(|&i| &self.entries[i])
    }
}

/// Where the runtimes come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Built by the caller.
    Built(Vec<Runtime>),
    /// Built by the server after it starts listening (`/ready` is 503 meanwhile).
    Load {
        data_dir: PathBuf,
        tasks: Vec<String>,
        config_file: Option<PathBuf>,
        /// Each runtime's [`follow_interval`](loopai_core::RuntimeBuilder::follow_interval).
        follow_interval: std::time::Duration,
    },
}

impl Source {
    pub(crate) fn task_names(&self) -> Vec<String> {
        match self {
            Source::Built(runtimes) => runtimes.iter().map(|r| r.task().to_string()).collect(),
            Source::Load { tasks, .. } => tasks.clone(),
        }
    }

    /// Builds the runtimes (loads, verifies and compiles each task's active program and
    /// starts its background threads). On error, runtimes already built are shut down by
    /// dropping them.
    pub(crate) fn load(self) -> Result<Vec<Runtime>> {
        match self {
            Source::Built(runtimes) => Ok(runtimes),
            Source::Load {
                data_dir,
                tasks,
                config_file,
                follow_interval,
            } => tasks
                .iter()
                .map(|task| {
                    let mut builder = Runtime::builder()
                        .data_dir(&data_dir)
                        .task(task)
                        .follow_interval(follow_interval);
                    if let Some(file) = &config_file {
                        builder = builder.config_file(file);
                    }
                    builder
                        .build()
                        .map_err(|e| e.context(format!("task {task:?}")))
                })
                .collect(),
        }
    }
}

/// Checks a list of task ids: valid, not repeated, not empty.
pub(crate) fn check_task_list(tasks: &[String]) -> Result<()> {
    if tasks.is_empty() {
        return Err(Error::new(ErrorKind::Config, "tasks: no task to serve"));
    }
    for (i, task) in tasks.iter().enumerate() {
        validate_task_id(task).map_err(|e| e.context(format!("tasks[{i}]")))?;
        if tasks[..i].contains(task) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("tasks[{i}]: task {task:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The tasks of `data_dir` that have an `active` pointer, sorted.
pub fn active_tasks(data_dir: &Path) -> Result<Vec<String>> {
    let artifacts = data_dir.join("artifacts");
    let entries = std::fs::read_dir(&artifacts).map_err(|e| Error::io(artifacts.display(), e))?;
    let mut tasks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(artifacts.display(), e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if validate_task_id(&name).is_err() {
            continue;
        }
        if std::fs::symlink_metadata(entry.path().join("active")).is_ok() {
            tasks.push(name);
        }
    }
    tasks.sort();
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_limit_follows_max_input_bytes_within_the_document_cap() {
        assert_eq!(default_body_limit(65536), 192 << 10);
        assert_eq!(default_body_limit(1), 1 + 2 - 1 + BODY_ENVELOPE_BYTES);
        assert_eq!(default_body_limit(64 << 20), MAX_INPUT_DOCUMENT_BYTES);
    }

    #[test]
    fn task_lists_are_checked() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_task_list(&list(&["spam", "intent"])).is_ok());
        let e = check_task_list(&list(&["spam", "spam"])).unwrap_err();
        assert_eq!(e.to_string(), "tasks[1]: task \"spam\" is listed twice");
        assert!(check_task_list(&list(&["../etc"]))
            .unwrap_err()
            .to_string()
            .starts_with("tasks[0]: "));
        assert!(check_task_list(&[]).is_err());
    }

    #[test]
    fn active_tasks_lists_only_tasks_with_an_active_pointer() {
        let dir = tempfile::tempdir().unwrap();
        // Each program names its task (a program for another task is refused at load).
        let program = |task: &str| {
            format!(
                r#"{{"format": "loopai.program/1", "task": "{task}",
          "inputs": [{{"name": "text", "path": "/text", "type": "text"}}],
          "decide": {{"op": "rules", "rules": [{{"when": {{"always": true}}, "then": "x", "confidence": 1}}]}},
          "output": {{"kind": "label", "labels": ["x"]}}}}"#
            )
        };
        for (task, activate) in [("b", true), ("a", true), ("c", false)] {
            loopai_core::ArtifactStore::open(dir.path(), task)
                .unwrap()
                .install(
                    program(task).as_bytes(),
                    loopai_core::NewArtifact::default(),
                    activate,
                )
                .unwrap();
        }
        assert_eq!(active_tasks(dir.path()).unwrap(), vec!["a", "b"]);
        assert_eq!(
            active_tasks(&dir.path().join("nope")).unwrap_err().kind(),
            ErrorKind::Io
        );
    }
}
