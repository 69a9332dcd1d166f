//! Starting a job's worker: the executors tried in order (policy, breaker), the worker
//! recorded in the job, the build marked scheduled; and the fallback when an executor
//! reports that a worker failed before registering.

use std::time::{Duration, Instant};

use buildman_core::job::job_key;
use buildman_core::{Actor, Build, ClaimedItem, JobEnd, LogEntry, Phase};
use buildman_executor::{StartRequest, WorkerFailure};

use super::Scheduler;
use crate::executors::Configured;
use crate::tokens::TokenType;
use crate::{ManagerError, phases};

impl Scheduler {
    /// Tries the executors in order, but those in `skip` (they failed this attempt
    /// already) and those whose circuit breaker is open; returns the one that started a
    /// worker and its id.
    pub(super) async fn start_worker(
        &self,
        build: &Build,
        item: &ClaimedItem,
        skip: &[String],
    ) -> Result<Option<(String, String)>, ManagerError> {
        let mut failures = Vec::new();
        for configured in self.executors.iter() {
            let c = &configured.entry.config;
            if skip.contains(&c.name) || !c.allows_namespace(&build.namespace) {
                tracing::debug!(build_id = %build.id, executor = %c.name, "executor not for this build (namespace, or failed already)");
                continue;
            }
            if c.minimum_retry_threshold > item.retries_remaining {
                // Quay counts this one as a fallback.
                self.metrics.fallback(&c.name);
                tracing::debug!(build_id = %build.id, executor = %c.name, "executor not for this build (retry threshold)");
                continue;
            }
            if configured.breaker.is_open(Instant::now()) {
                self.metrics.fallback(&c.name);
                failures.push(format!("{}: skipped, its circuit breaker is open", c.name));
                continue;
            }
            let starting = Instant::now();
            match self.try_executor(configured, build, item).await {
                Ok(execution_id) => {
                    let kind = configured.entry.executor.kind();
                    self.metrics.worker_start(kind, starting.elapsed());
                    return Ok(Some((c.name.clone(), execution_id)));
                }
                Err(e) => {
                    self.metrics.fallback(&c.name);
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
        item: &ClaimedItem,
    ) -> Result<String, ManagerError> {
        let (s, c) = (&self.settings, &configured.entry.config);
        let token = self.tokens.issue(
            TokenType::Registration,
            build.id,
            &job_key(build.id),
            &item.state_id,
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
    pub(super) async fn worker_failed(
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
        self.metrics.fallback(executor);
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
    pub(super) async fn record_worker(
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
        let started_ms = chrono::Utc::now().timestamp_millis();
        let scheduled = self
            .records
            .modify(&job_key(build.id), |current| {
                // The worker may already have registered: keep what it wrote.
                let mut record = current.clone();
                record.executor_name = Some(executor.clone());
                record.execution_id = Some(execution_id.clone());
                record.worker_started_ms = Some(started_ms);
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
        // For build lists only: a failure must not fail the started attempt.
        if let Err(e) = self.store.set_executor(build.id, &executor).await {
            tracing::warn!(build_id = %build.id, error = %e, "could not record the executor");
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
