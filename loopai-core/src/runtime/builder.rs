//! [`RuntimeBuilder`]: validates every setting, then opens the artifact cache, the dataset
//! and the configuration and starts the runtime's background threads.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Inner, Runtime};
use crate::artifact::ArtifactStore;
use crate::clock::{Clock, SystemClock};
use crate::config::{
    DeploymentConfig, Durability, Fallback, OnFull, SamplingConfig, SamplingStrategies,
};
use crate::dataset::{
    AnalyticsKeeper, DatasetLayout, DatasetWriter, Maintenance, RecordObserver, RetentionPolicy,
    WriterOptions,
};
use crate::error::{Error, ErrorKind, Result};
use crate::executor::Executor;
use crate::oracle::{HttpOracle, Oracle};
use crate::program::ProgramLimits;
use crate::refresh::{Checker, HttpRepo, Refresh, RefreshTarget};
use crate::rollout::{RolloutChecker, RolloutContext, RolloutController, RolloutOutbox};
use crate::sampler::Sampler;
use crate::schema::JsonSchema;
use crate::telemetry::{HeartbeatSource, RuntimeState, Telemetry};
use crate::validator::{TaskInfo, Validator, ValidatorSettings};

/// Builds a [`Runtime`]; every setting is validated in [`build`](RuntimeBuilder::build).
#[derive(Debug, Default)]
#[must_use]
pub struct RuntimeBuilder {
    data_dir: Option<PathBuf>,
    task: Option<String>,
    config: Option<DeploymentConfig>,
    config_file: Option<PathBuf>,
    clock: Option<Arc<dyn Clock>>,
    oracle: Option<Arc<dyn Oracle>>,
    follow_interval: Option<Duration>,
}

impl RuntimeBuilder {
    /// The data directory (`<data_dir>/artifacts`, `<data_dir>/datasets`, ...). Required.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The task id. Required.
    pub fn task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }

    /// Uses this configuration instead of `<data_dir>/config/deployment.yaml`.
    pub fn config(mut self, config: DeploymentConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Reads the configuration from this YAML file instead of
    /// `<data_dir>/config/deployment.yaml`.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Uses this clock for timestamps and day boundaries instead of the system clock
    /// (for tests of day rollover and retention).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Uses this in-process oracle (a closure: [`FnOracle`](crate::FnOracle); or a foreign
    /// callback) for validation and the oracle fallback. It wins over the configuration's
    /// `oracle` section. Without either, executions are sampled only when telemetry
    /// uploads them to the cloud (and counted locally in
    /// [`ValidationMetrics::skipped_no_oracle`](crate::ValidationMetrics::skipped_no_oracle));
    /// without telemetry either, the sampler is off.
    pub fn oracle(mut self, oracle: Arc<dyn Oracle>) -> Self {
        self.oracle = Some(oracle);
        self
    }

    /// How often the runtime follows the artifact cache: re-reads the task's `active`
    /// pointer and `rollout.json`, so that `loopai artifacts activate|rollback|promote`
    /// and `loopai rollout start|promote|abort` run in another process take effect within
    /// that time, without a restart; a rollout started elsewhere that nobody drives is
    /// taken over (see `docs/rollout.md`). Overrides `rollout.follow_interval_ms`
    /// (default 2 s); [`Duration::ZERO`]: never (then only [`Runtime::reload`] does it).
    pub fn follow_interval(mut self, interval: Duration) -> Self {
        self.follow_interval = Some(interval);
        self
    }

    /// Loads the configuration and the task's active program and starts the dataset
    /// writer thread, the rollout thread (see `docs/rollout.md`), the telemetry uploader
    /// when `telemetry.enabled` and `cloud.api_url` is set (see `docs/telemetry.md`), and
    /// the validation workers when there is an oracle (see `docs/oracle.md`).
    ///
    /// Without `cloud.api_url` (nothing to download a first version from), nothing is
    /// created for a data dir or task that does not exist.
    ///
    /// Errors: [`ErrorKind::Config`] for a missing data dir, task id or data dir that does
    /// not exist, or a bad configuration; [`ErrorKind::Artifact`] when the task does not
    /// exist (the message lists the tasks that do and suggests the closest) or has no
    /// active program, or its files are corrupt or tampered with; [`ErrorKind::Program`] when the program does not
    /// compile; [`ErrorKind::Schema`] for a bad schema in the artifact metadata;
    /// [`ErrorKind::Config`] for `execution.fallback: oracle` without an oracle, or an
    /// `oracle.api_key_env` that is not set.
    pub fn build(self) -> Result<Runtime> {
        let data_dir = self
            .data_dir
            .ok_or_else(|| Error::new(ErrorKind::Config, "runtime: data_dir is required"))?;
        let task = self
            .task
            .ok_or_else(|| Error::new(ErrorKind::Config, "runtime: task is required"))?;
        let config = match (self.config, self.config_file) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "runtime: give either config or config_file, not both",
                ))
            }
            (Some(c), None) => {
                c.validate()?;
                c
            }
            (None, Some(path)) => DeploymentConfig::from_file(&path)?,
            (None, None) => DeploymentConfig::load_for_data_dir(&data_dir)?,
        };
        let keep = usize::try_from(config.retention.artifacts.keep_versions).unwrap_or(usize::MAX);
        // Without an artifact repository to download the first version from, the task
        // must exist already: a mistyped data dir or task fails, creating nothing.
        let store = match config.cloud.api_url {
            Some(_) => ArtifactStore::open(&data_dir, &task)?,
            None => ArtifactStore::open_existing(&data_dir, &task)?,
        }
        .with_keep_versions(keep)?
        .with_trusted_keys(&config.cloud.trusted_keys)?;
        let limits =
            ProgramLimits::default().with_max_input_bytes(config.execution.max_input_bytes);
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let cloud_tls = match config.cloud.api_url.as_deref() {
            Some(api_url) => Some(crate::net::Tls::for_url(
                "cloud.ca_file",
                api_url,
                config.cloud.ca_file.as_deref(),
            )?),
            None => None,
        };
        let mut checker = config
            .cloud
            .api_url
            .as_deref()
            .zip(cloud_tls)
            .map(|(api_url, tls)| {
                let repo = Arc::new(HttpRepo::new(config.cloud.api_key.as_deref(), tls.clone()));
                let checker = Checker::new(
                    api_url,
                    &config,
                    store.clone(),
                    limits.clone(),
                    clock.clone(),
                    repo,
                );
                (api_url, checker, tls)
            });
        let loaded = match (store.load_active()?, checker.as_mut()) {
            (Some(loaded), _) => loaded,
            (None, Some((_, checker, _))) => {
                // No cached program: wait (bounded) for the repository's latest version.
                let wait = Duration::from_secs(config.cloud.startup_wait_sec);
                let version = crate::refresh::first_download(checker, wait, &std::thread::sleep)?;
                store.activate(version)?;
                store.load(version)?
            }
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Artifact,
                    format!(
                        "task {task:?} has no active program in {} (install one with `loopai artifacts install` or `loopai synth`)",
                        store.task_dir().display()
                    ),
                ))
            }
        };
        let executor = Arc::new(Executor::from_artifact(&loaded, &limits)?);
        let oracle: Option<(Arc<dyn Oracle>, String, Duration)> =
            match (self.oracle, &config.oracle) {
                (Some(o), section) => {
                    let budget =
                        Duration::from_millis(section.as_ref().map_or(10_000, |s| s.timeout_ms));
                    Some((o, "in-process".to_owned(), budget))
                }
                (None, Some(section)) => {
                    let http = HttpOracle::from_config(section)?;
                    let name = format!("http {} at {}", http.model(), http.endpoint());
                    let budget = http.worst_case();
                    Some((Arc::new(http), name, budget))
                }
                (None, None) => None,
            };
        let fallback = config.execution.fallback == Fallback::Oracle;
        if fallback && oracle.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "execution.fallback: \"oracle\" requires an oracle: an `oracle` section or one given to the runtime",
            ));
        }
        let output_schema = match loaded.metadata.extra.get("output_schema") {
            Some(raw) if !raw.is_null() => Some((raw.clone(), JsonSchema::compile(raw)?)),
            _ => None,
        };
        let task_info = Arc::new(TaskInfo {
            task: task.clone(),
            description: arc_swap::ArcSwap::from_pointee(
                loaded.description(executor.current().program()),
            ),
            output_schema,
        });
        let keys = match &config.storage.encryption {
            Some(enc) => Some(Arc::new(crate::crypt::key_ring(enc)?)),
            None => None,
        };
        let options = WriterOptions {
            encryption: keys.clone(),
            durable: config.storage.durability == Durability::Durable,
            drop_when_full: config.storage.on_full == OnFull::Drop,
            queue_capacity: config.storage.queue_capacity,
        };
        let layout = DatasetLayout::new(&data_dir, &task);
        let mut observers: Vec<Box<dyn RecordObserver>> = vec![Box::new(AnalyticsKeeper::new(
            layout.clone(),
            &task,
            keys.clone(),
        ))];
        let outbox = Arc::new(RolloutOutbox::default());
        // A sample is validated by the oracle, or by the cloud it is uploaded to. With
        // neither, nothing would ever validate it: the sampler is off (`sampled` false).
        let uploads = config.telemetry.enabled && config.cloud.api_url.is_some();
        let sampler = Arc::new(if oracle.is_some() || uploads {
            Sampler::new(&config.sampling, clock.now_millis())
        } else {
            let off = SamplingConfig {
                strategy: SamplingStrategies::empty(),
                ..config.sampling.clone()
            };
            Sampler::new(&off, clock.now_millis())
        });
        let follow = self
            .follow_interval
            .unwrap_or(Duration::from_millis(config.rollout.follow_interval_ms));
        let rollout = Arc::new(RolloutController::start(RolloutContext {
            executor: executor.clone(),
            store: store.clone(),
            limits: limits.clone(),
            task: task_info.clone(),
            config: config.rollout.clone(),
            // Only random samples count in a rollout's comparison.
            with_validations: oracle.is_some() && sampler.samples_at_random(),
            clock: clock.clone(),
            outbox: outbox.clone(),
            sampler: sampler.clone(),
            driver_id: crate::rollout::driver::new_id(),
            follow: (!follow.is_zero()).then_some(follow),
        })?);
        let telemetry = match Telemetry::start(
            &data_dir,
            &task,
            &config,
            keys.clone(),
            clock.clone(),
            outbox,
        )? {
            Some((telemetry, observer)) => {
                observers.push(Box::new(observer));
                Some(telemetry)
            }
            None => None,
        };
        let dataset = Arc::new(DatasetWriter::start(
            layout.clone(),
            &task,
            options,
            clock.clone(),
            observers,
        )?);
        let maintenance =
            Maintenance::start(layout, RetentionPolicy::from_config(&config), clock.clone())?;
        let request_timeout = oracle.as_ref().map_or(Duration::ZERO, |(_, _, t)| *t);
        let settings = ValidatorSettings {
            comparison: config.validation.comparison,
            fuzzy_threshold: config.validation.fuzzy_threshold,
            workers: config.validation.workers,
            queue_capacity: config.validation.queue_capacity,
            request_timeout,
            fallback,
        };
        let counted = executor.clone();
        let validator = Validator::start(
            oracle.map(|(o, name, _)| (o, name)),
            task_info,
            settings,
            dataset.clone(),
            clock.clone(),
            Some(Arc::new(move |version, reason, matched| {
                counted.record_validation(version, reason, matched);
            })),
        )?;
        let privacy = if config.privacy.hash_inputs {
            let hasher = crate::privacy::KeyedHasher::load_or_create(&data_dir)?;
            Some(crate::privacy::PrivacyPolicy::new(
                config.telemetry.privacy_mode,
                &config.privacy,
                hasher,
            ))
        } else {
            None
        };
        let refresh =
            checker.map(|(api_url, checker, tls)| Refresh::new(checker, api_url, &config, tls));
        let rollout_thread = RolloutChecker::start(rollout.clone())?;
        let inner = Arc::new(Inner {
            data_dir,
            task,
            config,
            store,
            executor,
            rollout,
            rollout_thread,
            dataset,
            maintenance,
            telemetry,
            sampler,
            validator,
            privacy,
            clock,
            refresh,
            keys,
            fork_generation: crate::fork::generation(),
        });
        if let Some(refresh) = &inner.refresh {
            refresh.start(Box::new(WeakRuntime(Arc::downgrade(&inner))))?;
        }
        if let Some(telemetry) = &inner.telemetry {
            telemetry.set_heartbeat_source(Box::new(WeakRuntime(Arc::downgrade(&inner))));
        }
        Ok(Runtime { inner })
    }
}

/// The refresh thread's handle on its runtime: weak, so that the thread does not keep the
/// runtime alive.
struct WeakRuntime(Weak<Inner>);

impl HeartbeatSource for WeakRuntime {
    fn runtime_state(&self) -> Option<RuntimeState> {
        let runtime = Runtime::from_inner(self.0.upgrade()?);
        Some(runtime.heartbeat_state())
    }
}

impl RefreshTarget for WeakRuntime {
    fn active_version(&self) -> Option<u32> {
        self.0.upgrade().map(|inner| inner.executor.version())
    }

    fn hand_over(&self, version: u32) -> Option<Result<()>> {
        let runtime = Runtime::from_inner(self.0.upgrade()?);
        Some(runtime.begin_rollout(version))
    }
}
