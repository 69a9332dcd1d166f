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
//! waits for.

mod builds;
mod error;
mod executors;
pub mod feed;
mod leases;
mod logwriter;
mod phases;
mod reaper;
mod records;
mod scheduler;
pub mod sessions;
mod settings;
mod tasks;
pub mod tokens;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman_contexts::ContextStore;
use buildman_orchestrator::Orchestrator;
use buildman_store::Store;

pub use builds::Builds;
pub use error::ManagerError;
pub use executors::ExecutorEntry;
pub use feed::follow::{Followed, Follower};
pub use sessions::WorkerSessions;
pub use settings::{Settings, Timings};
pub use tokens::{KeyPair, TokenService, TokenType};

use crate::executors::Executors;
use crate::reaper::Reaper;
use crate::records::JobRecords;
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
    orphan_reap_interval: Duration,
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
        let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        // Every role writes through the feed, so followers hear of every entry stored here.
        let feed = Arc::new(feed::Feed::default());
        let store: Arc<dyn Store> = Arc::new(feed::FeedStore {
            inner: store,
            feed: feed.clone(),
        });
        let orphan_reap_interval = settings.orphan_reap_interval;
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
            orphans_stopped: Default::default(),
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
        });
        let sessions = Arc::new(WorkerSessions {
            store: store.clone(),
            executors: executors.clone(),
            records,
            tokens,
            reaper: reaper.clone(),
            files: files.clone(),
            settings: settings.clone(),
            log_writer: logwriter::LogWriter::spawn(store.clone()),
            leases: Mutex::default(),
        });
        let builds = Builds {
            store,
            feed,
            files,
            reaper: reaper.clone(),
            wake,
            settings,
        };
        Manager {
            inner: Arc::new(Inner {
                id,
                scheduler,
                reaper,
                sessions,
                builds,
                tasks,
                orphan_reap_interval,
            }),
        }
    }

    /// Makes the store consistent with a fresh process-local orchestrator (see
    /// `Reaper::recover`); returns how many claims were given back.
    pub async fn recover(&self) -> Result<u64, ManagerError> {
        self.inner.reaper.recover().await
    }

    /// Starts the scheduler and the reaper's watchers.
    pub fn start(&self) {
        self.inner.reaper.start();
        self.inner
            .reaper
            .start_orphan_reaper(self.inner.orphan_reap_interval);
        self.inner.scheduler.start();
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
