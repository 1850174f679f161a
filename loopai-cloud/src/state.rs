//! What every request handler shares: authentication, the telemetry store, the artifact
//! repository with its notification hub, and the body limits. The server (`server.rs`)
//! builds it; the handlers (`telemetry.rs`, `artifacts.rs`) read it.

use std::sync::Arc;

use loopai_http::ConnectionStats;

use crate::auth::Auth;
use crate::http::BodyLimits;
use crate::publish::Hub;
use crate::repository::Repository;
use crate::telemetry_store::TelemetryStore;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) auth: Auth,
    pub(crate) telemetry: TelemetryStore,
    pub(crate) repository: Repository,
    pub(crate) hub: Hub,
    pub(crate) limits: BodyLimits,
    /// The connection counters, shared with the accept loop (loopai-http).
    pub(crate) connections: Arc<ConnectionStats>,
}
