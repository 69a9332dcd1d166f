//! The scheduler: claims queue items while a worker slot is free and starts a worker for
//! each on the first executor that may and can. It is woken by events (a build submitted,
//! a slot freed, an item returned); between them it sleeps until the store's next due
//! item, with a periodic poll only as a backstop (items returned by other managers).
//!
//! A slot is taken *before* an item is claimed, so a build waiting for capacity never
//! spends a retry; each claimed item is started in a task of its own, so a slow control
//! plane does not hold up the others. An attempt that cannot get a worker is ended through
//! the reaper like any other.

mod workers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use buildman_core::{Build, ClaimedItem, JobEnd, JobRecord, Requeue};
use buildman_orchestrator::Orchestrator;
use buildman_store::Store;
use tokio::sync::Notify;

use crate::ManagerError;
use crate::executors::Executors;
use crate::metrics::Metrics;
use crate::reaper::Reaper;
use crate::records::JobRecords;
use crate::settings::Settings;
use crate::tasks::Tasks;
use crate::tokens::TokenService;

/// Wakes the scheduler: a build was submitted, a slot was freed, an item came back.
#[derive(Clone, Default)]
pub(crate) struct Wake(Arc<Notify>);

impl Wake {
    /// Wakes the scheduler now (or at its next wait, if it is busy).
    pub(crate) fn notify(&self) {
        self.0.notify_one();
    }

    async fn notified(&self) {
        self.0.notified().await;
    }
}

/// Claims queue items and starts workers.
pub(crate) struct Scheduler {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) orchestrator: Arc<dyn Orchestrator>,
    pub(crate) records: JobRecords,
    pub(crate) executors: Executors,
    pub(crate) tokens: Arc<TokenService>,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) wake: Wake,
    pub(crate) tasks: Tasks,
    pub(crate) manager_id: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Scheduler {
    /// Starts the scheduling loop, and a watch on each executor's reported failures.
    pub(crate) fn start(self: &Arc<Self>) {
        let scheduler = self.clone();
        self.tasks.spawn_loop(scheduler.run());
        for configured in self.executors.iter() {
            let Some(mut failures) = configured.entry.executor.failures() else {
                continue;
            };
            let name = configured.entry.config.name.clone();
            let scheduler = self.clone();
            self.tasks.spawn_loop(async move {
                while let Some(failure) = failures.recv().await {
                    let (scheduler, name) = (scheduler.clone(), name.clone());
                    scheduler.tasks.clone().spawn(async move {
                        let build = failure.build_id;
                        if let Err(e) = scheduler.worker_failed(&name, failure).await {
                            tracing::error!(build_id = %build, error = %e, "could not fall back after a worker failed");
                        }
                    });
                }
            });
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            loop {
                match self.schedule_next().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "scheduler: could not take the next build");
                        break;
                    }
                }
            }
            let wait = self.until_next_due().await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until the store's next returned item is due, at most the backstop poll.
    async fn until_next_due(&self) -> Duration {
        let backstop = self.settings.timings.backstop_poll;
        let now = chrono::Utc::now();
        match self.store.next_available_after(now).await {
            Ok(Some(at)) => (at - now).to_std().unwrap_or_default().min(backstop),
            _ => backstop,
        }
    }

    /// Takes a slot and claims one item; `false` when there is no capacity or no work.
    async fn schedule_next(self: &Arc<Self>) -> Result<bool, ManagerError> {
        if self.tasks.claiming_stopped() {
            return Ok(false);
        }
        let slot = uuid::Uuid::new_v4().to_string();
        let limit = self.settings.allowed_worker_count;
        if !self.orchestrator.acquire_slot(&slot, limit).await? {
            return Ok(false);
        }
        let claimed = self
            .store
            .claim(chrono::Utc::now(), self.claim_lease())
            .await;
        if let Ok(found) = &claimed {
            self.metrics.queue_get(found.is_some());
        }
        let item = match claimed {
            Ok(Some(item)) => item,
            other => {
                self.orchestrator.release_slot(&slot).await?;
                return other.map(|_| false).map_err(Into::into);
            }
        };
        let scheduler = self.clone();
        self.tasks.spawn(async move {
            let build = item.build_id;
            if let Err(e) = scheduler.start_job(item, slot).await {
                tracing::error!(build_id = %build, error = %e, "could not schedule the build");
            }
        });
        Ok(true)
    }

    /// The first lease covers waiting for an executor and the slowest executor's setup.
    fn claim_lease(&self) -> Duration {
        self.settings.job_registration_timeout
            + self.executors.longest_setup()
            + Duration::from_secs(60)
    }

    /// Creates the job record, starts a worker on the first executor that takes it, and
    /// marks the build scheduled.
    async fn start_job(&self, item: ClaimedItem, slot: String) -> Result<(), ManagerError> {
        let claimed = Instant::now();
        let Some(build) = self.runnable_build(&item, &slot).await? else {
            return Ok(());
        };
        if item.attempt == 1 {
            let waited = chrono::Utc::now() - build.created_at;
            self.metrics.queue_wait(waited.to_std().unwrap_or_default());
        }
        if !self.create_record(&build, &item, &slot).await? {
            return Ok(());
        }
        let started = self.start_worker(&build, &item, &[]).await?;
        self.metrics.scheduled(started.is_some(), claimed.elapsed());
        match started {
            Some((executor, execution_id)) => {
                self.record_worker(&build, &item, executor, execution_id)
                    .await
            }
            None => {
                // The record goes (unless its deadline took it first) and the attempt ends.
                if let Some(record) = self.records.take(build.id).await? {
                    self.reaper.end(record, JobEnd::NoExecutor).await?;
                }
                Ok(())
            }
        }
    }

    /// The claimed item's build, unless it is gone or over (cancelled after it was queued):
    /// then the item and the slot are given up and there is nothing to run.
    async fn runnable_build(
        &self,
        item: &ClaimedItem,
        slot: &str,
    ) -> Result<Option<Build>, ManagerError> {
        match self.store.get_build(item.build_id).await? {
            Some(build) if !build.phase.is_over() => Ok(Some(build)),
            _ => {
                self.store.complete_item(item).await?;
                self.orchestrator.release_slot(slot).await?;
                self.wake.notify();
                Ok(None)
            }
        }
    }

    /// Writes the job's record, with JOB_REGISTRATION_TIMEOUT to get a worker started.
    /// False when a record for this build is still there (a previous attempt not yet cleaned
    /// up): the item goes back with its retry and the old record's deadline cleans it up.
    async fn create_record(
        &self,
        build: &Build,
        item: &ClaimedItem,
        slot: &str,
    ) -> Result<bool, ManagerError> {
        let s = &self.settings;
        let created = chrono::Utc::now().timestamp();
        let record = JobRecord {
            build_id: build.id,
            namespace: build.namespace.clone(),
            repository: build.repository.clone(),
            queue_item: item.clone(),
            slot: slot.to_string(),
            created_at: created,
            max_expiration: created + s.machine_max_time.as_secs() as i64,
            last_heartbeat: None,
            executor_name: None,
            execution_id: None,
            manager_id: Some(self.manager_id.to_string()),
            tried_executors: Vec::new(),
            worker_started_ms: None,
        };
        if self
            .records
            .create(&record, s.job_registration_timeout)
            .await?
        {
            return Ok(true);
        }
        tracing::warn!(build_id = %build.id, "a job for this build already exists; requeueing");
        let requeue = Requeue {
            after: s.timings.no_executor_retry,
            restore_retry: true,
            silent_restores: item.silent_restores,
        };
        self.store
            .return_item(item, chrono::Utc::now(), &requeue)
            .await?;
        self.orchestrator.release_slot(slot).await?;
        Ok(false)
    }
}
