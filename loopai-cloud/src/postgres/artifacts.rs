//! Artifact versions in PostgreSQL, bodies included. A publication runs in one transaction
//! holding a per-task advisory lock (`pg_advisory_xact_lock`), so two instances publishing
//! the same task take turns and never pick the same number (the primary key would refuse
//! it anyway), and sends `NOTIFY loopai_artifacts` on commit.

use loopai_core::{ArtifactArchive, VersionInfo, VersionList};
use serde_json::json;

use super::{PgStorage, ARTIFACT_CHANNEL};
use crate::error::{Error, ErrorKind, Result};
use crate::http::ApiError;
use crate::repository::{choose_version, hex_sha256, Upload};
use crate::storage::ArtifactBackend;

/// The advisory lock key of a task's publications.
const PUBLISH_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('loopai.publish:' || $1, 0))";

fn version_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl PgStorage {
    fn sign(&self, info: VersionInfo) -> VersionInfo {
        let signature = self.signer.as_ref().map(|s| s.sign(&info.sha256));
        info.with_signature(signature)
    }

    fn publish_upload(
        &self,
        task: &str,
        upload: Upload,
        requested: Option<u32>,
    ) -> std::result::Result<VersionInfo, ApiError> {
        let internal = |e: Error| {
            log::error!("publishing {task}: {e}");
            ApiError::internal(format!("storing the version failed: {e}"))
        };
        let outcome: Result<std::result::Result<VersionInfo, ApiError>> = self.run(async {
            let mut client = self.client().await?;
            let what = format!("publishing {task}");
            let err = |e: tokio_postgres::Error| self.db_error(&what, &e);
            let tx = client.transaction().await.map_err(err)?;
            tx.execute(PUBLISH_LOCK, &[&task]).await.map_err(err)?;
            let highest: Option<i64> = tx
                .query_one(
                    "SELECT max(version) FROM artifact_versions WHERE task_id = $1",
                    &[&task],
                )
                .await
                .map_err(err)?
                .get(0);
            let exists = match requested {
                Some(v) => tx
                    .query_opt(
                        "SELECT 1 FROM artifact_versions WHERE task_id = $1 AND version = $2",
                        &[&task, &i64::from(v)],
                    )
                    .await
                    .map_err(err)?
                    .is_some(),
                None => false,
            };
            let version =
                match choose_version(task, highest.map(version_u32), requested, |_| exists) {
                    Ok(v) => v,
                    Err(refused) => return Ok(Err(refused)),
                };
            let metadata = match upload.metadata(version) {
                Ok(m) => m,
                Err(refused) => return Ok(Err(refused)),
            };
            let metadata_json = serde_json::to_vec_pretty(&metadata)
                .map_err(|e| Error::new(ErrorKind::Internal, format!("metadata: {e}")))?;
            let archive = ArtifactArchive::new(upload.program.clone(), Some(metadata_json))
                .pack()
                .map_err(|e| Error::new(ErrorKind::Internal, format!("packing: {e}")))?;
            let info = VersionInfo::new(version, &archive, &metadata.created_at, &metadata.sha256);
            let info_json = serde_json::to_value(&info)
                .map_err(|e| Error::new(ErrorKind::Internal, format!("entry: {e}")))?;
            let metadata_value = serde_json::to_value(&metadata)
                .map_err(|e| Error::new(ErrorKind::Internal, format!("metadata: {e}")))?;
            tx.execute(
                "INSERT INTO artifact_versions
                     (task_id, version, created_at, program_sha256, archive_sha256,
                      archive_bytes, info, metadata, program, archive)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &task,
                    &i64::from(version),
                    &metadata.created_at,
                    &metadata.sha256,
                    &hex_sha256(&archive),
                    &(archive.len() as i64),
                    &info_json,
                    &metadata_value,
                    &upload.program,
                    &archive,
                ],
            )
            .await
            .map_err(err)?;
            let payload = json!({"task": task, "version": version}).to_string();
            tx.execute("SELECT pg_notify($1, $2)", &[&ARTIFACT_CHANNEL, &payload])
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(Ok(info))
        });
        Ok(self.sign(outcome.map_err(internal)??))
    }
}

impl ArtifactBackend for PgStorage {
    fn publish(
        &self,
        task: &str,
        body: &[u8],
        requested: Option<u32>,
    ) -> std::result::Result<VersionInfo, ApiError> {
        let upload = Upload::validate(task, body)?;
        self.publish_upload(task, upload, requested)
    }

    fn versions_list(&self, task: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.run(async {
            let client = self.client().await?;
            client
                .query(
                    "SELECT info FROM artifact_versions WHERE task_id = $1 ORDER BY version",
                    &[&task],
                )
                .await
                .map_err(|e| self.db_error(&format!("reading the versions of {task}"), &e))
        })?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut versions = Vec::with_capacity(rows.len());
        for row in rows {
            let info: VersionInfo =
                serde_json::from_value(row.get::<_, serde_json::Value>(0)).map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!(
                            "database {}: artifact_versions of {task}: not a versions-list entry: {e}",
                            self.place
                        ),
                    )
                })?;
            versions.push(self.sign(info));
        }
        Ok(Some(VersionList::new(task, versions).to_json()))
    }

    fn download(&self, task: &str, version: u32) -> Result<Option<Vec<u8>>> {
        self.run(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT archive FROM artifact_versions WHERE task_id = $1 AND version = $2",
                    &[&task, &i64::from(version)],
                )
                .await
                .map_err(|e| self.db_error(&format!("reading {task} v{version}"), &e))?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn latest(&self, task: &str) -> Result<Option<u32>> {
        self.run(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT max(version) FROM artifact_versions WHERE task_id = $1",
                    &[&task],
                )
                .await
                .map_err(|e| self.db_error(&format!("reading the latest {task}"), &e))?;
            Ok(row.get::<_, Option<i64>>(0).map(version_u32))
        })
    }

    fn task_count(&self) -> Result<usize> {
        self.run(async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT count(DISTINCT task_id) FROM artifact_versions", &[])
                .await
                .map_err(|e| self.db_error("counting artifact tasks", &e))?;
            Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    fn public_key(&self) -> Option<String> {
        self.signer
            .as_ref()
            .map(loopai_core::ArtifactSigner::public_key_hex)
    }

    fn delivers_notifications(&self) -> bool {
        true
    }
}
