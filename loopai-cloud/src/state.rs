//! What every request handler shares: authentication, the telemetry storage, the artifact
//! repository with its notification hub, and the body limits. The server (`server.rs`)
//! builds it; the handlers (`telemetry.rs`, `artifacts.rs`) read it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use loopai_http::ConnectionStats;

use crate::auth::Auth;
use crate::http::BodyLimits;
use crate::publish::Hub;
use crate::query::{FleetIngest, FleetQueries};
use crate::storage::{ArtifactBackend, TelemetryBackend};

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) auth: Auth,
    /// The telemetry batches (files, or the database).
    pub(crate) telemetry: Arc<dyn TelemetryBackend>,
    /// The artifact repository (files, or the database).
    pub(crate) repository: Arc<dyn ArtifactBackend>,
    pub(crate) hub: Hub,
    pub(crate) limits: BodyLimits,
    /// What the fleet learns at ingest (batches, heartbeats).
    pub(crate) fleet: Arc<dyn FleetIngest>,
    /// What the query API and the dashboard read.
    pub(crate) queries: Arc<dyn FleetQueries>,
    /// The connection counters, shared with the accept loop (loopai-http).
    pub(crate) connections: Arc<ConnectionStats>,
    /// `"files"` or `"postgres"`, for `/health`.
    pub(crate) storage: &'static str,
    /// The improvement thread's passes, for `/health`.
    pub(crate) improvement: ImprovementCounters,
}

/// What the improvement thread did, for `/health`.
#[derive(Debug, Default)]
pub(crate) struct ImprovementCounters {
    /// Passes run on this instance.
    pub(crate) passes: AtomicU64,
    /// Passes skipped because another instance's pass was running.
    pub(crate) skipped: AtomicU64,
}
