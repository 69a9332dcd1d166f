//! The build manager: takes builds from the queue, starts a worker for each through the
//! executors, follows the worker through registration, heartbeats, phases and logs, and
//! cleans up when the job ends. Servers call into [`Manager`]; it talks to the store, the
//! orchestrator and the executors only through their traits.
//!
//! - [`scheduler`]: the event-driven loop that claims queue items and starts workers;
//! - [`jobs`]: the end of a job (completion, expiry, cancel) and what it does to the queue;
//! - [`worker`]: what a worker's calls (register, heartbeat, phase, log) do;
//! - [`tokens`]: the JWTs workers present;
//! - `logwriter`: group commit of worker log lines.

pub mod files;
pub mod jobs;
mod logwriter;
pub mod scheduler;
pub mod tokens;
pub mod worker;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use buildman_core::config::ExecutorConfig;
use buildman_core::{Build, BuildId, LogEntry, NewBuild, Phase, QueueRules};
use buildman_executor::Executor;
use buildman_orchestrator::{Orchestrator, OrchestratorError};
use buildman_store::{Store, StoreError};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub use files::FileStore;
pub use tokens::{KeyPair, TokenService, TokenType};

/// What went wrong in a manager operation, in terms a server can map to a status.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The caller asked for something malformed; the text says what and how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// No such build.
    #[error("build {0} not found")]
    NotFound(BuildId),
    /// The build is in a phase that does not allow the request.
    #[error("{0}")]
    Conflict(String),
    /// The namespace's queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// The token was missing, malformed, forged, expired or of the wrong kind.
    #[error("{0}")]
    Unauthenticated(String),
    /// Something inside the manager failed (store, orchestrator).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ManagerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull { .. } => ManagerError::QueueFull(e.to_string()),
            StoreError::NotFound(id) => ManagerError::NotFound(id),
            other => ManagerError::Internal(other.to_string()),
        }
    }
}

impl From<OrchestratorError> for ManagerError {
    fn from(e: OrchestratorError) -> Self {
        ManagerError::Internal(e.to_string())
    }
}

/// An executor with the policy that decides when to use it (its config's common keys).
#[derive(Clone)]
pub struct ExecutorEntry {
    pub config: ExecutorConfig,
    pub executor: Arc<dyn Executor>,
}

/// The delays of the manager's life cycle. Quay's values are the defaults; tests shorten them.
#[derive(Clone, Debug)]
pub struct Timings {
    /// How often the scheduler looks at the queue when nothing woke it (a backstop only).
    pub backstop_poll: Duration,
    /// A heartbeat (or log line) keeps a job alive this long (Quay: 60 s).
    pub heartbeat_ttl: Duration,
    /// The queue lease a heartbeat extends to (Quay: 300 s).
    pub heartbeat_lease: Duration,
    /// When no executor could start a worker, the item returns after this (Quay: 20 s).
    pub no_executor_retry: Duration,
    /// A failed or expired job's item returns after this (Quay: 30 s).
    pub requeue_delay: Duration,
    /// How long a worker may take to stop before the executor gives up waiting.
    pub stop_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            backstop_poll: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(60),
            heartbeat_lease: Duration::from_secs(300),
            no_executor_retry: Duration::from_secs(20),
            requeue_delay: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
        }
    }
}

/// What the manager is told at start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Workers that may run at once over all executors and managers.
    pub allowed_worker_count: u32,
    /// How long a created job may wait for an executor to start its worker.
    pub job_registration_timeout: Duration,
    /// How long a build may run in total.
    pub machine_max_time: Duration,
    /// `host:port` workers dial.
    pub worker_server: String,
    /// Whether workers dial without TLS.
    pub worker_insecure: bool,
    /// The registry host to push to; "" writes results locally.
    pub registry: String,
    /// Where local workers write OCI layouts when `registry` is "" (one per repository).
    pub result_dir: Option<std::path::PathBuf>,
    /// Credentials handed to workers for pulling and pushing (Quay's `$token` login).
    pub pull_token: String,
    pub push_token: String,
    /// Base URL of the REST API as workers reach it, for uploaded contexts.
    pub public_url: String,
    /// A namespace's maximum of queued builds.
    pub max_queued_per_namespace: Option<u32>,
    pub queue_rules: QueueRules,
    pub timings: Timings,
}

/// The build manager. Cheap to clone: all state is shared.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    orchestrator: Arc<dyn Orchestrator>,
    executors: Vec<ExecutorEntry>,
    tokens: TokenService,
    files: FileStore,
    settings: Settings,
    /// Wakes the scheduler: a build was submitted, a slot was freed, an item came back.
    wake: Notify,
    /// This manager among those sharing the orchestrator: job records name the manager
    /// that started their worker, the only one that can stop it.
    id: String,
    /// The group-commit writer of worker log lines, started on first use (it needs a
    /// runtime, which `new` may not have).
    log_writer: OnceLock<logwriter::LogWriter>,
    /// The queue leases this manager last wrote, per job (see `Manager::extend_lease`).
    leases: Mutex<worker::Leases>,
}

impl Manager {
    /// A manager over the given parts; call [`Manager::start`] to run its loops.
    pub fn new(
        store: Arc<dyn Store>,
        orchestrator: Arc<dyn Orchestrator>,
        executors: Vec<ExecutorEntry>,
        tokens: TokenService,
        files: FileStore,
        settings: Settings,
    ) -> Self {
        Manager {
            inner: Arc::new(Inner {
                store,
                orchestrator,
                executors,
                tokens,
                files,
                settings,
                wake: Notify::new(),
                id: uuid::Uuid::new_v4().to_string(),
                log_writer: OnceLock::new(),
                leases: Mutex::default(),
            }),
        }
    }

    /// The log writer, started on first use.
    fn log_writer(&self) -> &logwriter::LogWriter {
        self.inner
            .log_writer
            .get_or_init(|| logwriter::LogWriter::spawn(self.inner.store.clone()))
    }

    /// The lease marks; each critical section is one map operation, so a poisoned map is
    /// still consistent.
    fn leases(&self) -> MutexGuard<'_, worker::Leases> {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the store consistent with a fresh orchestrator: with a process-local one, the
    /// claims an earlier process left behind are returned to the queue (retry restored),
    /// so its builds run again now rather than when their leases run out.
    pub async fn recover(&self) -> Result<u64, ManagerError> {
        if !self.inner.orchestrator.is_process_local() {
            return Ok(0);
        }
        let released = self.inner.store.release_all_claims(now()).await?;
        if released > 0 {
            tracing::warn!(
                released,
                "returned builds claimed by an earlier run to the queue"
            );
        }
        Ok(released)
    }

    /// Starts the scheduler, the job-expiry watcher and the watcher of stops handed over by
    /// other managers; they stop when the handle is dropped.
    pub fn start(&self) -> Background {
        let watcher = jobs::spawn_expiry_watcher(self.clone());
        let stops = jobs::spawn_stop_watcher(self.clone());
        let scheduler = tokio::spawn(scheduler::run(self.clone()));
        Background(vec![watcher, stops, scheduler])
    }

    /// This manager's id (see [`buildman_core::JobRecord::manager_id`]).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The store, for read-only views (lists, logs, queue state).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Where uploaded build contexts live.
    pub fn files(&self) -> &FileStore {
        &self.inner.files
    }

    /// The settings the manager runs with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Queues a build and wakes the scheduler.
    pub async fn submit(&self, new: NewBuild) -> Result<Build, ManagerError> {
        let s = &self.inner.settings;
        let build = self
            .inner
            .store
            .create_build(new, s.queue_rules.retries, s.max_queued_per_namespace)
            .await?;
        tracing::info!(build_id = %build.id, repository = %build.full_repository(), "build queued");
        self.inner.wake.notify_one();
        Ok(build)
    }

    /// True when the build is `internalerror` with no retry left: the status view shows
    /// it as `expired`.
    pub async fn is_expired(&self, build: &Build) -> Result<bool, ManagerError> {
        Ok(build.phase == Phase::InternalError
            && self.inner.store.queue_state(build.id).await?.is_none())
    }

    /// Appends entries to a build's log; failures are logged, not returned, because a
    /// log entry must never decide a job's fate.
    async fn log(&self, build: BuildId, entries: &[LogEntry]) {
        if let Err(e) = self.inner.store.append_logs(build, entries).await {
            tracing::warn!(build_id = %build, error = %e, "could not append to the build log");
        }
    }

    /// Appends a phase entry to a build's log.
    async fn log_phase(
        &self,
        build: BuildId,
        phase: Phase,
        data: serde_json::Map<String, serde_json::Value>,
    ) {
        let entry = LogEntry::phase(phase, data, &now().to_rfc3339());
        self.log(build, &[entry]).await;
    }
}

/// The manager's background tasks; dropping this stops them.
pub struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn unix_now() -> i64 {
    now().timestamp()
}
