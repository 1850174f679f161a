//! The registry of gateway tasks: registering a task from its specification, listing the
//! tasks of a data directory, and their figures read from the files.

use std::path::Path;

use loopai_core::{
    ArtifactStore, DeploymentConfig, Error, ErrorKind, InputMapping, KeyRing, Result,
};
use loopai_synth::TaskSpec;

use crate::gateway::{
    gateway_tasks, task_stats, Gateway, TaskState, TaskStats, DEFAULT_MAX_DISAGREEMENT,
};
use crate::learn::Stored;

/// Every gateway task's figures, read from the data directory (specs, call logs, active
/// versions, stored thresholds) without starting anything: for `loopai tasks list` and
/// `loopai stats`. `config`'s `gateway` section gives the budgets (without one the
/// defaults apply), its `storage.encryption` the keys of encrypted call logs and
/// `gateway.json` files (without it an encrypted file is an [`ErrorKind::Config`] error
/// naming it).
pub fn summarize(data_dir: &Path, config: Option<&DeploymentConfig>) -> Result<Vec<TaskStats>> {
    let keys = match config {
        Some(c) => KeyRing::from_config(c)?,
        None => None,
    };
    let keys = keys.as_ref();
    let mut out = Vec::new();
    for (index, name) in gateway_tasks(data_dir)?.iter().enumerate() {
        let (budget, input) = match config.and_then(|c| c.gateway.as_ref()) {
            Some(g) => (g.max_disagreement_of(name), g.input_of(name)),
            None => (DEFAULT_MAX_DISAGREEMENT, InputMapping::default()),
        };
        let task = Gateway::load_task(data_dir, None, keys, budget, input, index, name)?;
        let mut stats = task_stats(&task);
        let active = ArtifactStore::open(data_dir, name)?.active_version()?;
        let stored = Stored::load(data_dir, name, keys)?;
        stats.active_version = active;
        stats.threshold = active.and(stored.threshold);
        stats.state = match (active, stats.threshold) {
            (None, _) => TaskState::Shadow,
            (Some(_), None) => TaskState::Learning,
            (Some(_), Some(_)) => TaskState::Serving,
        };
        out.push(stats);
    }
    Ok(out)
}

/// Registers (or updates) a task from its specification: checks it (as `loopai synth`
/// does, examples optional) and stores it as `artifacts/<task>/spec.json`. No program is
/// needed. A classification task (a string output with `enum` labels) or an extraction
/// task (an object output of fields). Errors name the spec path (`spec.output_schema:
/// ...`).
///
/// An extraction task's local answers list its fields in the order of
/// `output_schema.properties`; a parsed [`TaskSpec`] no longer knows that order (it is
/// stored by name): register from the spec file's text with [`add_task_json`] to keep it.
pub fn add_task(data_dir: &Path, spec: &TaskSpec) -> Result<()> {
    check_spec(spec)?;
    loopai_synth::save_spec(data_dir, spec)
}

/// [`add_task`] from the specification's JSON text, stored as it is (so that an
/// extraction task keeps the order of its fields). Returns the parsed specification.
pub fn add_task_json(data_dir: &Path, spec_json: &[u8]) -> Result<TaskSpec> {
    let spec = TaskSpec::from_json(spec_json)?;
    check_spec(&spec)?;
    let path = loopai_synth::spec_path(data_dir, &spec.name)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        loopai_synth::SPEC_FILE,
        std::process::id()
    ));
    std::fs::write(&tmp, spec_json)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })?;
    Ok(spec)
}

fn check_spec(spec: &TaskSpec) -> Result<()> {
    loopai_core::validate_task_id(&spec.name)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("spec.name: {e}")))?;
    spec.validate_without_examples()
}
