//! The build manager: takes builds from the queue, starts a worker for each through the
//! executors, follows the worker through registration, heartbeats, phases and logs, and
//! cleans up when the job ends. It talks to the store, the orchestrator and the executors
//! only through their traits, and knows no wire format.
//!
//! Three roles share the work, each holding only what it uses:
//! - the [scheduler](scheduler) claims queue items and starts workers;
//! - the [reaper](reaper) ends jobs — completion, passed deadlines, cancels, stops handed
//!   over between managers — settling the queue item, stopping the worker, freeing its slot;
//! - the [worker sessions](WorkerSessions) answer workers: register, heartbeat, phase, log.
//!
//! [`Builds`] is the user-facing side (submit, read, cancel, uploads). [`Manager`] wires the
//! roles together and owns their background tasks (`tasks`), which a shutdown stops and
//! waits for: besides the roles' loops, the [`metrics`] refresher and the retention passes.
//! A stopping manager drains first ([`Manager::stop_claiming`], [`Manager::hand_back_jobs`]).

mod builds;
mod error;
mod executors;
pub mod feed;
mod leases;
mod liveness;
mod logwriter;
pub mod metrics;
mod phases;
mod reaper;
mod records;
mod retention;
mod scheduler;
pub mod sealing;
pub mod sessions;
mod settings;
mod tasks;
pub mod tokens;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman_contexts::ContextStore;
use buildman_core::JobEnd;
use buildman_orchestrator::Orchestrator;
use buildman_store::Store;

pub use builds::Builds;
pub use error::ManagerError;
pub use executors::ExecutorEntry;
pub use feed::follow::{Followed, Follower};
pub use metrics::Metrics;
pub use sealing::SealingKey;
pub use sessions::WorkerSessions;
pub use settings::{Settings, Timings};
pub use tokens::{KeyPair, TokenService, TokenType};

use crate::executors::Executors;
use crate::metrics::refresh::Refresher;
use crate::reaper::Reaper;
use crate::records::JobRecords;
use crate::retention::Retention;
use crate::scheduler::{Scheduler, Wake};
use crate::tasks::Tasks;

/// The build manager. Cheap to clone: all state is shared.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    /// This manager among those sharing the orchestrator: job records name the manager
    /// that started their worker, the only one that can stop it.
    id: Arc<str>,
    scheduler: Arc<Scheduler>,
    reaper: Arc<Reaper>,
    sessions: Arc<WorkerSessions>,
    builds: Builds,
    tasks: Tasks,
    records: JobRecords,
    executors: Executors,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
}

impl Manager {
    /// A manager over the given parts; call [`Manager::start`] to run its loops. Needs a
    /// Tokio runtime (the log writer starts here).
    pub fn new(
        store: Arc<dyn Store>,
        orchestrator: Arc<dyn Orchestrator>,
        executors: Vec<ExecutorEntry>,
        tokens: TokenService,
        files: Arc<dyn ContextStore>,
        settings: Settings,
    ) -> Self {
        Self::with_build_packs(
            store,
            orchestrator,
            executors,
            tokens,
            files,
            settings,
            None,
        )
    }

    /// [`Manager::new`] whose workers' BuildPacks come from `packs` (Quay mode's, from
    /// Quay's rows); `None`: from this manager's own store ([`sessions::OwnBuildPacks`]).
    pub fn with_build_packs(
        store: Arc<dyn Store>,
        orchestrator: Arc<dyn Orchestrator>,
        executors: Vec<ExecutorEntry>,
        tokens: TokenService,
        files: Arc<dyn ContextStore>,
        settings: Settings,
        packs: Option<Arc<dyn sessions::BuildPacks>>,
    ) -> Self {
        let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        // Every role writes through the feed, so followers hear of every entry stored here.
        let feed = Arc::new(feed::Feed::default());
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> = Arc::new(feed::FeedStore {
            inner: store,
            feed: feed.clone(),
            metrics: metrics.clone(),
        });
        let settings = Arc::new(settings);
        let tokens = Arc::new(tokens);
        let records = JobRecords::new(orchestrator.clone());
        let executors = Executors::new(executors);
        let (wake, tasks) = (Wake::default(), Tasks::default());
        let reaper = Arc::new(Reaper {
            store: store.clone(),
            orchestrator: orchestrator.clone(),
            records: records.clone(),
            executors: executors.clone(),
            timings: settings.timings.clone(),
            retry: settings.retry_policy(),
            wake: wake.clone(),
            tasks: tasks.clone(),
            manager_id: id.clone(),
            metrics: metrics.clone(),
        });
        let scheduler = Arc::new(Scheduler {
            store: store.clone(),
            orchestrator,
            records: records.clone(),
            executors: executors.clone(),
            tokens: tokens.clone(),
            reaper: reaper.clone(),
            settings: settings.clone(),
            wake: wake.clone(),
            tasks: tasks.clone(),
            manager_id: id.clone(),
            metrics: metrics.clone(),
        });
        let sessions = Arc::new(WorkerSessions {
            store: store.clone(),
            executors: executors.clone(),
            records: records.clone(),
            tokens,
            reaper: reaper.clone(),
            packs: packs.unwrap_or_else(|| {
                Arc::new(sessions::OwnBuildPacks {
                    store: store.clone(),
                    files: files.clone(),
                    settings: settings.clone(),
                })
            }),
            settings: settings.clone(),
            log_writer: logwriter::LogWriter::spawn(store.clone()),
            leases: Mutex::default(),
            metrics: metrics.clone(),
            tasks: tasks.clone(),
        });
        let builds = Builds {
            store,
            feed,
            files,
            reaper: reaper.clone(),
            wake,
            settings: settings.clone(),
            metrics: metrics.clone(),
        };
        Manager {
            inner: Arc::new(Inner {
                id,
                scheduler,
                reaper,
                sessions,
                builds,
                tasks,
                records,
                executors,
                metrics,
                settings,
            }),
        }
    }

    /// Makes the store consistent with a fresh process-local orchestrator (see
    /// `Reaper::recover`); returns how many claims were given back.
    pub async fn recover(&self) -> Result<u64, ManagerError> {
        self.inner.reaper.recover().await
    }

    /// Starts the scheduler, the reaper's watchers, the metrics refresher and the
    /// retention passes.
    pub fn start(&self) {
        let (inner, s) = (&self.inner, &self.inner.settings);
        inner.reaper.start();
        inner.reaper.start_orphan_reaper(s.orphan_reap_interval);
        inner.scheduler.start();
        if !inner.reaper.orchestrator.is_process_local() {
            // As often as liveness is refreshed: a lost record is found within seconds.
            (inner.reaper).start_claim_check(liveness::ttl(s.timings.heartbeat_ttl));
            inner.tasks.spawn_loop(liveness::keep_alive(
                inner.reaper.orchestrator.clone(),
                inner.reaper.manager_id.clone(),
                liveness::ttl(s.timings.heartbeat_ttl),
            ));
        }
        let refresher = Refresher {
            metrics: inner.metrics.clone(),
            store: inner.reaper.store.clone(),
            records: inner.records.clone(),
            executors: inner.executors.clone(),
            data_dir: s.data_dir.clone(),
        };
        inner
            .tasks
            .spawn_loop(refresher.run(s.timings.metrics_refresh));
        let retention = Retention {
            store: inner.reaper.store.clone(),
            files: inner.builds.files.clone(),
            context_retention: s.context_retention,
            build_retention: s.build_retention,
        };
        inner
            .tasks
            .spawn_loop(retention.run(s.timings.retention_every));
    }

    /// The first step of a drain: no more builds are claimed; workers, users and the
    /// reaper are answered as before.
    pub fn stop_claiming(&self) {
        self.inner.tasks.stop_claiming();
        tracing::info!("draining: no new builds are claimed");
    }

    /// True once claims stopped (a drain or a shutdown began).
    pub fn draining(&self) -> bool {
        self.inner.tasks.claiming_stopped()
    }

    /// Whether the orchestrator lives in this process (the embedded default): then no
    /// other manager can take this one's jobs over.
    pub fn is_process_local(&self) -> bool {
        self.inner.reaper.orchestrator.is_process_local()
    }

    /// How many live jobs run a worker this manager started (or is starting).
    pub async fn own_jobs(&self) -> Result<usize, ManagerError> {
        let records = self.inner.records.all().await?;
        Ok(records
            .iter()
            .filter(|r| self.inner.reaper.started(r))
            .count())
    }

    /// Ends the jobs of this manager whose build someone else cancelled in the store
    /// (Quay's web tier in Quay mode: phase `cancelled` and the queue item deleted, with no
    /// signal to a manager): their workers are stopped and their slots freed. Returns how
    /// many.
    pub async fn end_cancelled_elsewhere(&self) -> Result<usize, ManagerError> {
        let inner = &self.inner;
        let mut ended = 0;
        for record in inner.records.all().await? {
            if !inner.reaper.started(&record) {
                continue;
            }
            let build = inner.reaper.store.get_build(record.build_id).await?;
            if build.is_none_or(|b| b.phase != buildman_core::Phase::Cancelled) {
                continue;
            }
            if let Some(record) = inner.records.take(record.build_id).await? {
                tracing::info!(build_id = %record.build_id, "build cancelled elsewhere: stopping its worker");
                inner.reaper.end(record, JobEnd::Cancelled).await?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// The last step of a drain when no other manager can take the jobs over: every job
    /// of this manager ends as [`JobEnd::ManagerStopped`] (its build goes back to the
    /// queue with its retry, its worker is stopped in the background, which
    /// [`Manager::shutdown`] waits for). Returns how many.
    pub async fn hand_back_jobs(&self) -> Result<usize, ManagerError> {
        let mut handed = 0;
        for record in self.inner.records.all().await? {
            if !self.inner.reaper.started(&record) {
                continue;
            }
            if let Some(record) = self.inner.records.take(record.build_id).await? {
                tracing::warn!(build_id = %record.build_id, execution_id = ?record.execution_id, "the manager stops: returning the build to the queue");
                self.inner
                    .reaper
                    .end(record, JobEnd::ManagerStopped)
                    .await?;
                handed += 1;
            }
        }
        Ok(handed)
    }

    /// Ready to take work: not draining, and the store and the orchestrator answer within
    /// `timeout` each. `Err` says what is not.
    pub async fn readiness(&self, timeout: Duration) -> Result<(), String> {
        if self.draining() {
            return Err("draining: the manager is stopping".into());
        }
        let reaper = &self.inner.reaper;
        match tokio::time::timeout(timeout, reaper.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("store: {e}")),
            Err(_) => return Err(format!("store: no answer within {timeout:?}")),
        }
        match tokio::time::timeout(timeout, reaper.orchestrator.slots_taken()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("orchestrator: {e}")),
            Err(_) => Err(format!("orchestrator: no answer within {timeout:?}")),
        }
    }

    /// The metrics in Prometheus' text format ([`metrics::CONTENT_TYPE`]), the breakers'
    /// state read now.
    pub fn metrics_text(&self) -> String {
        let now = std::time::Instant::now();
        for configured in self.inner.executors.iter() {
            let name = &configured.entry.config.name;
            (self.inner.metrics).set_breaker(name, configured.breaker.is_open(now));
        }
        self.inner.metrics.encode()
    }

    /// The metrics handle, for the servers' request timings.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Stops claiming and watching, lets work in flight (worker stops, job ends) finish for
    /// up to `deadline`, then writes the log lines already received and stops. Call it
    /// after the servers stopped taking requests.
    pub async fn shutdown(&self, deadline: Duration) {
        let abandoned = self.inner.tasks.shutdown(deadline).await;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "gave up on background work still running at the shutdown deadline"
            );
        }
        self.inner.sessions.log_writer.shutdown().await;
    }

    /// This manager's id (see [`buildman_core::JobRecord::manager_id`]).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The user-facing side: submit, read, cancel, upload.
    pub fn builds(&self) -> &Builds {
        &self.inner.builds
    }

    /// The worker-facing side: what the worker protocol's calls do.
    pub fn sessions(&self) -> &Arc<WorkerSessions> {
        &self.inner.sessions
    }
}
