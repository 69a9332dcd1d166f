//! The scheduler: claims queue items while a worker slot is free and starts a worker for
//! each on the first executor that may and can. It is woken by events (a build submitted,
//! a slot freed, an item returned); between them it sleeps until the store's next due
//! item, with a periodic poll only as a backstop (items returned by other managers).
//!
//! A slot is taken *before* an item is claimed, so a build waiting for capacity never
//! spends a retry; each claimed item is started in a task of its own, so a slow control
//! plane does not hold up the others. An attempt that cannot get a worker is ended through
//! the reaper like any other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use buildman_core::job::job_key;
use buildman_core::{Actor, Build, ClaimedItem, JobEnd, JobRecord, LogEntry, Phase, Requeue};
use buildman_executor::{StartRequest, WorkerFailure};
use buildman_orchestrator::Orchestrator;
use buildman_store::Store;
use tokio::sync::Notify;

use crate::executors::{Configured, Executors};
use crate::reaper::Reaper;
use crate::records::JobRecords;
use crate::settings::Settings;
use crate::tasks::Tasks;
use crate::tokens::{TokenService, TokenType};
use crate::{ManagerError, phases};

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
        if self.tasks.stopping() {
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
        let Some(build) = self.runnable_build(&item, &slot).await? else {
            return Ok(());
        };
        if !self.create_record(&build, &item, &slot).await? {
            return Ok(());
        }
        match self.start_worker(&build, &item, &[]).await? {
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

    /// Tries the executors in order, but those in `skip` (they failed this attempt
    /// already) and those whose circuit breaker is open; returns the one that started a
    /// worker and its id.
    async fn start_worker(
        &self,
        build: &Build,
        item: &ClaimedItem,
        skip: &[String],
    ) -> Result<Option<(String, String)>, ManagerError> {
        let mut failures = Vec::new();
        for configured in self.executors.iter() {
            let c = &configured.entry.config;
            if skip.contains(&c.name)
                || !c.allows_namespace(&build.namespace)
                || c.minimum_retry_threshold > item.retries_remaining
            {
                tracing::debug!(build_id = %build.id, executor = %c.name, "executor not for this build (policy or failed already)");
                continue;
            }
            if !configured.breaker.allows(Instant::now()) {
                failures.push(format!("{}: skipped, its circuit breaker is open", c.name));
                continue;
            }
            match self.try_executor(configured, build).await {
                Ok(execution_id) => return Ok(Some((c.name.clone(), execution_id))),
                Err(e) => {
                    configured.breaker.failed(Instant::now());
                    tracing::warn!(build_id = %build.id, executor = %c.name, error = %e, "executor could not start a worker; trying the next");
                    failures.push(format!("{}: {e}", c.name));
                }
            }
        }
        let why = if failures.is_empty() {
            "no executor is allowed to run this build (namespace or retry policy)".to_string()
        } else {
            format!("no executor could start a worker ({})", failures.join("; "))
        };
        tracing::error!(build_id = %build.id, "{why}");
        phases::log(self.store.as_ref(), build.id, &[LogEntry::error(why)]).await;
        Ok(None)
    }

    /// Starts a worker on one executor, with a registration token for it.
    async fn try_executor(
        &self,
        configured: &Configured,
        build: &Build,
    ) -> Result<String, ManagerError> {
        let (s, c) = (&self.settings, &configured.entry.config);
        let token = self.tokens.issue(
            TokenType::Registration,
            build.id,
            &job_key(build.id),
            s.job_registration_timeout + c.setup_time + Duration::from_secs(30),
        )?;
        let request = StartRequest {
            build_id: build.id,
            token,
            server: s.worker_server.clone(),
            registry_hostname: s.registry.clone(),
            insecure: s.worker_insecure,
            max_lifetime_s: c.max_lifetime_s,
            manager_id: self.manager_id.to_string(),
        };
        Ok(configured.entry.executor.start(&request).await?)
    }

    /// A worker failed (the control plane said so) while its job waited for it to register:
    /// the attempt falls back to the next executor now instead of waiting out SETUP_TIME.
    /// Anything else (a worker that registered, a job that ended, another worker of the
    /// job) is not this attempt's concern.
    async fn worker_failed(
        &self,
        executor: &str,
        failure: WorkerFailure,
    ) -> Result<(), ManagerError> {
        let registration = self.settings.job_registration_timeout;
        let key = job_key(failure.build_id);
        let record = self
            .records
            .modify(&key, |r| {
                if r.registered() || r.execution_id.as_deref() != Some(&failure.execution_id) {
                    return Ok(None);
                }
                let mut next = r.clone();
                next.executor_name = None;
                next.execution_id = None;
                next.tried_executors.push(executor.to_string());
                Ok(Some((next, Some(registration))))
            })
            .await?;
        let Some(record) = record else {
            return Ok(());
        };
        if let Some(configured) = self.executors.get(executor) {
            configured.breaker.failed(Instant::now());
        }
        let why = format!(
            "the worker on executor {executor} failed before registering: {}",
            failure.reason
        );
        tracing::warn!(build_id = %record.build_id, "{why}");
        phases::log(
            self.store.as_ref(),
            record.build_id,
            &[LogEntry::error(why)],
        )
        .await;
        self.reaper
            .stop_worker(executor, &failure.execution_id)
            .await;
        let Some(build) = self.store.get_build(record.build_id).await? else {
            return Ok(());
        };
        let item = &record.queue_item;
        match self
            .start_worker(&build, item, &record.tried_executors)
            .await?
        {
            Some((name, id)) => self.record_worker(&build, item, name, id).await,
            None => {
                if let Some(record) = self.records.take(build.id).await? {
                    self.reaper.end(record, JobEnd::NoExecutor).await?;
                }
                Ok(())
            }
        }
    }

    /// Records which worker runs the job and gives it the executor's SETUP_TIME to
    /// register; then marks the build scheduled.
    async fn record_worker(
        &self,
        build: &Build,
        item: &ClaimedItem,
        executor: String,
        execution_id: String,
    ) -> Result<(), ManagerError> {
        let s = &self.settings;
        let setup_time = self
            .executors
            .get(&executor)
            .map_or(s.job_registration_timeout, |e| e.entry.config.setup_time);
        let heartbeat_ttl = s.timings.heartbeat_ttl;
        let scheduled = self
            .records
            .modify(&job_key(build.id), |current| {
                // The worker may already have registered: keep what it wrote.
                let mut record = current.clone();
                record.executor_name = Some(executor.clone());
                record.execution_id = Some(execution_id.clone());
                let ttl = if record.registered() {
                    heartbeat_ttl
                } else {
                    setup_time
                };
                Ok(Some((record, Some(ttl))))
            })
            .await?;
        if scheduled.is_none() {
            // The job ended (deadline or cancel) while the executor was starting the
            // worker, before anyone knew its execution id: stop it here.
            tracing::warn!(build_id = %build.id, "job ended while its worker was starting; stopping the worker");
            self.reaper.stop_worker(&executor, &execution_id).await;
            return Ok(());
        }
        if !self.mark_scheduled(build).await? {
            return Ok(());
        }
        let lease = setup_time + Duration::from_secs(60);
        self.store
            .extend_item(item, chrono::Utc::now(), lease, Duration::ZERO)
            .await?;
        tracing::info!(build_id = %build.id, executor = %executor, execution_id = %execution_id, "worker started");
        Ok(())
    }

    /// Marks the build `build-scheduled`; false when it ended meanwhile (the job is then
    /// ended as cancelled).
    async fn mark_scheduled(&self, build: &Build) -> Result<bool, ManagerError> {
        let store = self.store.as_ref();
        let before = phases::change(
            store,
            build.id,
            Phase::BuildScheduled,
            Actor::Scheduler,
            None,
            Default::default(),
        )
        .await?;
        if before.is_some() {
            return Ok(true);
        }
        // Either the worker registered (which marks the build scheduled) and already
        // reported a later phase, or the build was cancelled or ended meanwhile.
        let current = store.get_build(build.id).await?.map(|b| b.phase);
        if current.is_none_or(Phase::is_final) {
            if let Some(record) = self.records.take(build.id).await? {
                self.reaper.end(record, JobEnd::Cancelled).await?;
            }
            return Ok(false);
        }
        Ok(true)
    }
}
