//! What every handler shares: the mode, the phase, the loaded tasks, the keys, the limits
//! and the server's metrics. The server (`server.rs`) builds it; the handlers (`api.rs`)
//! read it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use loopai_core::ErrorKind;
use loopai_http::{BodyLimits, ConnectionStats};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::auth::ApiKeys;
use crate::http::ApiError;
use crate::metrics::ServerMetrics;
use crate::tasks::TaskSet;

/// Which routes the server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One task (the edge runtime): `POST /execute` and `POST /execute/batch`, and the
    /// central routes for that task.
    Single,
    /// Several tasks (central execution): `POST /v1/execute/{task}` and
    /// `POST /v1/execute/{task}/batch`, with API keys.
    Central,
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Failed = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Failed,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Failed => "failed",
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) mode: Mode,
    pub(crate) task_names: Vec<String>,
    pub(crate) tasks: OnceLock<TaskSet>,
    phase: AtomicU8,
    pub(crate) phase_tx: watch::Sender<Phase>,
    pub(crate) load_error: Mutex<Option<(ErrorKind, String)>>,
    pub(crate) auth: Option<ApiKeys>,
    pub(crate) server: ServerMetrics,
    /// The connection counters, shared with the accept loop (loopai-http).
    pub(crate) connections: Arc<ConnectionStats>,
    pub(crate) max_batch: usize,
    pub(crate) batch_body_limit: usize,
    pub(crate) body_limit: Option<usize>,
    body_timeout: Duration,
    /// `GET /ready` is 503 while an execution log cannot be written.
    pub(crate) ready_requires_log: bool,
    /// The OpenAI-compatible gateway (`gateway:` in the configuration), once loaded.
    pub(crate) gateway: OnceLock<crate::gateway_state::GatewayState>,
    /// Whether the configuration has a `gateway:` section.
    pub(crate) gateway_enabled: bool,
}

impl AppState {
    /// The state of a server that is starting: no tasks loaded yet.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mode: Mode,
        task_names: Vec<String>,
        auth: Option<ApiKeys>,
        max_batch: usize,
        batch_body_limit: usize,
        body_limit: Option<usize>,
        body_timeout: Duration,
    ) -> AppState {
        let (phase_tx, _) = watch::channel(Phase::Starting);
        AppState {
            mode,
            task_names,
            tasks: OnceLock::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            phase_tx,
            load_error: Mutex::new(None),
            auth,
            server: ServerMetrics::default(),
            connections: Arc::default(),
            max_batch,
            batch_body_limit,
            body_limit,
            body_timeout,
            ready_requires_log: true,
            gateway: OnceLock::new(),
            gateway_enabled: false,
        }
    }

    /// The same state, serving `POST /v1/chat/completions` when `enabled`.
    pub(crate) fn with_gateway(mut self, enabled: bool) -> AppState {
        self.gateway_enabled = enabled;
        self
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        self.phase_tx.send_replace(phase);
    }

    /// Moves to `to` only from `from`; returns whether it did.
    pub(crate) fn advance(&self, from: Phase, to: Phase) -> bool {
        let moved = self
            .phase
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.phase_tx.send_replace(to);
        }
        moved
    }

    /// Reads a request body within the size limit and the body timeout.
    pub(crate) async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> std::result::Result<Bytes, ApiError> {
        let limits = BodyLimits {
            max_bytes: limit,
            read_timeout: self.body_timeout,
        };
        loopai_http::read_body(headers, body, limits).await
    }
}
