//! The publish service: every new version goes through here, whether uploaded over HTTP
//! (`artifacts.rs`) or learnt by the improvement engine (`server.rs` runs it), so the
//! archive, the versions list, the signature and the notification are never skipped. It
//! sits below both: it knows the repository and the notification hub, not the handlers.
//! With a database the repository delivers the notification itself (to every instance).

use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::error::{Error, ErrorKind, Result};
use crate::http::ApiError;
use crate::storage::{ArtifactBackend, Published};

/// The notification hub: one broadcast channel for every task (streams filter by task),
/// the heartbeat period, and the server's stop signal (ends every stream at shutdown).
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) tx: broadcast::Sender<Published>,
    pub(crate) heartbeat: Duration,
    pub(crate) stopping: watch::Sender<bool>,
}

impl Hub {
    pub(crate) fn new(heartbeat: Duration) -> Hub {
        Hub {
            tx: broadcast::channel(256).0,
            heartbeat,
            stopping: watch::channel(false).0,
        }
    }
}

/// Validates and publishes a version (`body`: a tar.gz archive or a bare program.json,
/// see `Repository::publish`) and notifies the task's listeners. Blocking. Every
/// publication goes through here (uploads, and publishers inside the server), so the
/// archive, the versions list, the signature and the notification are never skipped.
pub(crate) fn publish(
    repository: &dyn ArtifactBackend,
    hub: &Hub,
    task: &str,
    body: &[u8],
    requested: Option<u32>,
) -> std::result::Result<loopai_core::VersionInfo, ApiError> {
    let info = repository.publish(task, body, requested)?;
    if !repository.delivers_notifications() {
        // No receiver is fine: nobody listens.
        let _ = hub.tx.send(Published {
            task: task.to_owned(),
            version: info.version,
        });
    }
    Ok(info)
}

/// Publishes a learnt program through the repository (archive + versions list + signature
/// + notification).
pub(crate) fn publish_program(
    repository: &dyn ArtifactBackend,
    hub: &Hub,
    task: &str,
    program: &[u8],
    meta: loopai_core::NewArtifact,
) -> Result<u32> {
    let mut fields = meta.extra.clone();
    fields.insert("synthesis_strategy".into(), meta.synthesis_strategy.into());
    if let Some(score) = meta.confidence_score {
        fields.insert("confidence_score".into(), score.into());
    }
    fields.insert(
        "complexity_metrics".into(),
        serde_json::Value::Object(meta.complexity_metrics.clone()),
    );
    if let Some(provider) = &meta.llm_provider {
        fields.insert("llm_provider".into(), provider.clone().into());
    }
    if let Some(model) = &meta.llm_model {
        fields.insert("llm_model".into(), model.clone().into());
    }
    fields.insert("generation_cost".into(), meta.generation_cost.into());
    fields.insert(
        "generation_time_sec".into(),
        meta.generation_time_sec.into(),
    );
    let metadata = serde_json::to_vec(&serde_json::Value::Object(fields))
        .map_err(|e| Error::new(ErrorKind::Internal, format!("metadata: {e}")))?;
    let archive = loopai_core::ArtifactArchive::new(program.to_vec(), Some(metadata))
        .pack()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("packing the archive: {e}")))?;
    publish(repository, hub, task, &archive, None)
        .map(|info| info.version)
        .map_err(|e| Error::new(ErrorKind::Io, format!("publishing {task}: {}", e.message())))
}
