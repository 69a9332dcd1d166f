//! The end of a job. Whoever takes a job's record out of the orchestrator (a final phase,
//! an expiry, a cancel) finishes it, so each job is finished exactly once, by any manager:
//! the worker is stopped, the queue item completed or returned per Quay's rules, and the
//! worker slot given back. Only the manager that started a worker can stop it (a local
//! worker is its child): another manager hands the stop over through the job's cancel key.

use std::time::Duration;

use buildman_core::job::{cancel_key, job_key};
use buildman_core::{BuildId, JobRecord, LogEntry, Phase};
use buildman_orchestrator::KeyEvent;

pub use buildman_core::job::JobOutcome;

use crate::{Manager, ManagerError, now};

/// What a change to a job record decided.
pub(crate) type Change = Option<(JobRecord, Option<Duration>)>;

impl Manager {
    /// Reads a job record, lets `f` decide its new value and TTL, and writes it back with a
    /// compare-and-set, retrying when another call changed it in between. Returns the
    /// record written, or `None` when there is no job (or `f` chose to write nothing).
    pub(crate) async fn modify_job(
        &self,
        key: &str,
        mut f: impl FnMut(&JobRecord) -> Result<Change, ManagerError>,
    ) -> Result<Option<JobRecord>, ManagerError> {
        let orchestrator = &self.inner.orchestrator;
        loop {
            let Some(raw) = orchestrator.get(key).await? else {
                return Ok(None);
            };
            let current = parse_record(&raw)?;
            let Some((next, ttl)) = f(&current)? else {
                return Ok(None);
            };
            let value =
                serde_json::to_string(&next).map_err(|e| ManagerError::Internal(e.to_string()))?;
            if orchestrator.compare_and_set(key, &raw, &value, ttl).await? {
                return Ok(Some(next));
            }
        }
    }

    /// Takes a build's job record out of the orchestrator; the caller must finish it.
    pub(crate) async fn take_job(&self, build: BuildId) -> Result<Option<JobRecord>, ManagerError> {
        match self.inner.orchestrator.take(&job_key(build)).await? {
            Some(raw) => parse_record(&raw).map(Some),
            None => Ok(None),
        }
    }

    /// Finishes a job whose record this caller took: settles its queue item, stops its
    /// worker and then frees its slot.
    pub(crate) async fn finish_job(
        &self,
        record: JobRecord,
        outcome: JobOutcome,
    ) -> Result<(), ManagerError> {
        let inner = &self.inner;
        let build = record.build_id;
        tracing::info!(build_id = %build, outcome = outcome.as_str(), "job finished");
        self.forget_lease(build);
        let item = &record.queue_item;
        match outcome.requeue() {
            Some(restore) if restore || item.retries_remaining > 0 => {
                let delay = inner.settings.timings.requeue_delay;
                inner.store.return_item(item, now(), delay, restore).await?;
                self.wake_after(delay);
            }
            Some(_) => {
                // No retry left: the build ends here and shows as expired.
                inner.store.complete_item(item).await?;
                self.log(
                    build,
                    &[LogEntry::error(
                        "no retries left; the build will not run again",
                    )],
                )
                .await;
            }
            None => {
                inner.store.complete_item(item).await?;
            }
        }
        // The slot is given back only once the worker is gone, so ALLOWED_WORKER_COUNT
        // bounds running workers, not just live jobs. Stopping may take a grace period:
        // the caller need not wait for it.
        let manager = self.clone();
        tokio::spawn(async move {
            if record.execution_id.is_some() && !manager.started(&record) {
                manager.hand_over_stop(record).await;
            } else {
                manager.stop_and_release(&record).await;
            }
        });
        Ok(())
    }

    /// Whether this manager started the job's worker (a record without a manager id counts
    /// as this manager's, as before managers had ids).
    fn started(&self, record: &JobRecord) -> bool {
        record
            .manager_id
            .as_deref()
            .is_none_or(|id| id == self.inner.id)
    }

    /// Stops the job's worker, then gives its slot back.
    async fn stop_and_release(&self, record: &JobRecord) {
        if let (Some(name), Some(id)) = (&record.executor_name, &record.execution_id) {
            self.stop_worker(name, id).await;
        }
        self.release_slot(record).await;
    }

    /// Gives a job's worker slot back and wakes the scheduler.
    async fn release_slot(&self, record: &JobRecord) {
        if let Err(e) = self
            .inner
            .orchestrator
            .release_slot(&record.slot_holder)
            .await
        {
            tracing::error!(build_id = %record.build_id, error = %e, "could not release the worker slot");
        }
        self.inner.wake.notify_one();
    }

    /// Asks the manager that started a job's worker to stop it, with the job's cancel key:
    /// that manager takes the key, stops the worker and gives the slot back. A key nobody
    /// takes within a heartbeat TTL (its manager is gone, and its workers with their
    /// connections) expires, and whoever claims the expiry gives the slot back.
    async fn hand_over_stop(&self, record: JobRecord) {
        let build = record.build_id;
        let ttl = self.inner.settings.timings.heartbeat_ttl;
        let created = match serde_json::to_string(&record) {
            Ok(value) => self
                .inner
                .orchestrator
                .create(&cancel_key(build), &value, Some(ttl))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match created {
            Ok(true) => {
                tracing::info!(build_id = %build, manager = ?record.manager_id, "asked the manager that started the worker to stop it");
            }
            Ok(false) => {
                tracing::error!(build_id = %build, manager = ?record.manager_id, "a stop of this build is already pending; giving the slot back, the worker may still run");
                self.release_slot(&record).await;
            }
            Err(e) => {
                tracing::error!(build_id = %build, manager = ?record.manager_id, error = %e, "could not ask for the worker to be stopped; giving the slot back, the worker may still run");
                self.release_slot(&record).await;
            }
        }
    }

    /// Stops a worker through the executor that started it; failures are logged.
    pub(crate) async fn stop_worker(&self, executor_name: &str, execution_id: &str) {
        let Some(entry) = self
            .inner
            .executors
            .iter()
            .find(|e| e.config.name == executor_name)
        else {
            tracing::error!(
                executor = executor_name,
                "cannot stop a worker of an unknown executor"
            );
            return;
        };
        let timeout = self.inner.settings.timings.stop_timeout;
        match tokio::time::timeout(timeout, entry.executor.stop(execution_id)).await {
            Ok(Ok(())) => tracing::info!(executor = executor_name, execution_id, "worker stopped"),
            Ok(Err(e)) => {
                tracing::error!(executor = executor_name, execution_id, error = %e, "could not stop worker")
            }
            Err(_) => tracing::error!(
                executor = executor_name,
                execution_id,
                "timed out stopping worker"
            ),
        }
    }

    /// Wakes the scheduler after `delay` (an item returned to the queue becomes due).
    pub(crate) fn wake_after(&self, delay: Duration) {
        let manager = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            manager.inner.wake.notify_one();
        });
    }

    /// Cancels a build unless it is pushing or final; stops its worker if it has one.
    pub async fn cancel(&self, id: BuildId) -> Result<(), ManagerError> {
        let store = &self.inner.store;
        let build = store
            .get_build(id)
            .await?
            .ok_or(ManagerError::NotFound(id))?;
        let cancellable: Vec<Phase> = Phase::ALL.into_iter().filter(|p| p.can_cancel()).collect();
        if store
            .set_phase(id, Phase::Cancelled, &cancellable, None)
            .await?
            .is_none()
        {
            let phase = store
                .get_build(id)
                .await?
                .map(|b| b.phase)
                .unwrap_or(build.phase);
            return Err(ManagerError::Conflict(format!(
                "build {id} is {phase} and can no longer be cancelled"
            )));
        }
        self.log_phase(id, Phase::Cancelled, Default::default())
            .await;
        match self.take_job(id).await? {
            Some(record) => self.finish_job(record, JobOutcome::Cancelled).await?,
            None => store.delete_item(id).await?,
        }
        tracing::info!(build_id = %id, "build cancelled");
        Ok(())
    }

    /// A job record's deadline passed: the build becomes `internalerror`. A worker that
    /// never registered, or a build past MACHINE_MAX_TIME, spends its retry (expired); a
    /// worker that stopped heartbeating gets it back (Quay's internal error).
    async fn job_expired(&self, record: JobRecord) -> Result<(), ManagerError> {
        let build = record.build_id;
        let (outcome, why) = if record.registered() {
            if crate::unix_now() >= record.max_expiration {
                // Retrying with the retry restored would loop forever on a build that
                // always overruns, so this one spends it.
                (
                    JobOutcome::Expired,
                    "the build ran longer than MACHINE_MAX_TIME".to_string(),
                )
            } else {
                (
                    JobOutcome::Incomplete,
                    "the worker stopped sending heartbeats".to_string(),
                )
            }
        } else if record.execution_id.is_some() {
            (
                JobOutcome::Expired,
                "the worker did not register within the executor's SETUP_TIME".to_string(),
            )
        } else {
            (
                JobOutcome::Expired,
                "no worker was started within JOB_REGISTRATION_TIMEOUT".to_string(),
            )
        };
        tracing::warn!(build_id = %build, reason = %why, "job expired");
        let live: Vec<Phase> = Phase::ALL.into_iter().filter(|p| !p.is_final()).collect();
        if self
            .inner
            .store
            .set_phase(build, Phase::InternalError, &live, Some(&why))
            .await?
            .is_some()
        {
            self.log_phase(build, Phase::InternalError, Default::default())
                .await;
            self.log(build, &[LogEntry::error(why)]).await;
        }
        self.finish_job(record, outcome).await
    }
}

/// Watches job records for expiry and finishes the jobs they belonged to.
pub(crate) fn spawn_expiry_watcher(manager: Manager) -> tokio::task::JoinHandle<()> {
    let mut events = manager
        .inner
        .orchestrator
        .watch("building/", &[KeyEvent::Expire]);
    tokio::spawn(async move {
        while let Some(change) = events.recv().await {
            if change.event != KeyEvent::Expire {
                continue;
            }
            let manager = manager.clone();
            tokio::spawn(async move {
                let result = match parse_record(&change.value) {
                    Ok(record) => manager.job_expired(record).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::error!(key = %change.key, error = %e, "could not clean up an expired job");
                }
            });
        }
    })
}

/// Carries out the stops other managers hand to this one (see `Manager::hand_over_stop`),
/// and gives back the slot of a stop whose manager did not take it in time.
pub(crate) fn spawn_stop_watcher(manager: Manager) -> tokio::task::JoinHandle<()> {
    let mut events = manager
        .inner
        .orchestrator
        .watch("cancel/", &[KeyEvent::Create, KeyEvent::Expire]);
    tokio::spawn(async move {
        while let Some(change) = events.recv().await {
            let record = match parse_record(&change.value) {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(key = %change.key, error = %e, "ignoring a cancel key");
                    continue;
                }
            };
            let manager = manager.clone();
            match change.event {
                KeyEvent::Create if manager.started(&record) => {
                    tokio::spawn(async move {
                        // Taking it makes this call the one to act (an expiry racing it may
                        // have taken it already).
                        match manager.inner.orchestrator.take(&change.key).await {
                            Ok(Some(_)) => manager.stop_and_release(&record).await,
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!(key = %change.key, error = %e, "could not take a stop handed over")
                            }
                        }
                    });
                }
                KeyEvent::Expire => {
                    tokio::spawn(async move {
                        if manager.started(&record) {
                            manager.stop_and_release(&record).await;
                        } else {
                            tracing::warn!(build_id = %record.build_id, manager = ?record.manager_id, "the manager that started the worker did not stop it in time; giving its slot back");
                            manager.release_slot(&record).await;
                        }
                    });
                }
                _ => {}
            }
        }
    })
}

fn parse_record(raw: &str) -> Result<JobRecord, ManagerError> {
    serde_json::from_str(raw)
        .map_err(|e| ManagerError::Internal(format!("unreadable job record: {e}")))
}
