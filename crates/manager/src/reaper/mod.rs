//! The reaper: every end of a job goes through here. Whoever takes a job's record out of
//! the orchestrator (a worker's final phase, a passed deadline, a cancel, an attempt no
//! executor took) hands it to [`Reaper::end`], so each job ends exactly once, on any
//! manager: the build is marked failed when the worker did not end it, the queue item is
//! settled by the rule of [`JobEnd::queue_action`], the worker is stopped and only then
//! its slot given back.
//!
//! Only the manager that started a worker can stop it (a local worker is its child): any
//! other hands the stop over through the job's cancel key, which the starting manager
//! takes, stops the worker and frees the slot. A key nobody takes within a heartbeat TTL
//! (its manager died, and its workers with their connections) lapses, and whoever sees it
//! lapse frees the slot.
//!
//! The reaper also stops workers no job accounts for ([`orphans`]) and ends attempts whose
//! job records the orchestrator lost ([`lost`]).

mod lost;
mod orphans;

use std::sync::Arc;

use buildman_core::job::cancel_key;
use buildman_core::{
    Actor, BuildId, ClaimedItem, JobEnd, JobRecord, LogEntry, Phase, QueueAction, RetryPolicy,
};
use buildman_orchestrator::{KeyChange, KeyEvent, Orchestrator};
use buildman_store::Store;

use crate::executors::Executors;
use crate::metrics::Metrics;
use crate::records::{self, JobRecords};
use crate::scheduler::Wake;
use crate::settings::Timings;
use crate::tasks::Tasks;
use crate::{ManagerError, phases};

/// Ends jobs: settles their queue items, stops their workers, frees their slots.
pub(crate) struct Reaper {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) orchestrator: Arc<dyn Orchestrator>,
    pub(crate) records: JobRecords,
    pub(crate) executors: Executors,
    pub(crate) timings: Timings,
    pub(crate) retry: RetryPolicy,
    pub(crate) wake: Wake,
    pub(crate) tasks: Tasks,
    /// This manager's id (see [`JobRecord::manager_id`]).
    pub(crate) manager_id: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Reaper {
    /// Ends a job whose record the caller took out of the orchestrator.
    pub(crate) async fn end(
        self: &Arc<Self>,
        record: JobRecord,
        end: JobEnd,
    ) -> Result<(), ManagerError> {
        let build = record.build_id;
        let item = &record.queue_item;
        tracing::info!(build_id = %build, end = end.as_str(), "job ended");
        let action = end.queue_action(item, self.retry);
        self.metrics
            .job_ended(&record, end, action == QueueAction::GiveUp);
        if end.is_failure() || action == QueueAction::GiveUp {
            self.mark_failed(build, end).await?;
        }
        self.settle(item, end, action).await?;
        if end == JobEnd::ManagerLost {
            // The manager that could stop the worker is dead: no stop is handed over (it
            // would hold the slot until its key expired); the orphan reaper deals with
            // workers an executor still runs.
            self.release_slot(&record).await;
        } else {
            self.release_worker(record);
        }
        Ok(())
    }

    /// The build becomes `internalerror` with the reason in its error and its log, unless
    /// it already reached a final phase.
    async fn mark_failed(&self, build: BuildId, end: JobEnd) -> Result<(), ManagerError> {
        let why = end.reason();
        let changed = phases::change(
            self.store.as_ref(),
            build,
            Phase::InternalError,
            Actor::Reaper,
            Some(why),
            Default::default(),
        )
        .await?;
        if changed.is_some_and(|p| p != Phase::InternalError) {
            phases::log(self.store.as_ref(), build, &[LogEntry::error(why)]).await;
        }
        Ok(())
    }

    /// Carries out what a job's end decided for its queue item, and says in the build's
    /// log which attempt ended, why, and what happens next: before the item changes, so
    /// that the log is complete once the build is seen to be over for good (followers end
    /// on that).
    async fn settle(
        &self,
        item: &ClaimedItem,
        end: JobEnd,
        action: QueueAction,
    ) -> Result<(), ManagerError> {
        let ended = format!("attempt {} ended: {}", item.attempt, end.reason());
        match action {
            QueueAction::Remove => {
                self.store.complete_item(item).await?;
            }
            QueueAction::Requeue(requeue) => {
                let left = item.retries_remaining + u32::from(requeue.restore_retry);
                let given_back = if requeue.restore_retry {
                    "its retry given back"
                } else {
                    "a retry spent"
                };
                let next = format!(
                    "attempt {} runs in {} s ({given_back}; {left} left)",
                    item.attempt + 1,
                    requeue.after.as_secs_f64()
                );
                let entry = LogEntry::output(format!("{ended}; {next}"));
                phases::log(self.store.as_ref(), item.build_id, &[entry]).await;
                self.store
                    .return_item(item, chrono::Utc::now(), &requeue)
                    .await?;
                // The scheduler sleeps until the store's next due item, this one included.
                self.wake.notify();
            }
            QueueAction::GiveUp => {
                let entries = [
                    LogEntry::output(ended),
                    LogEntry::error("no retries left; the build will not run again"),
                ];
                phases::log(self.store.as_ref(), item.build_id, &entries).await;
                self.store.give_up_item(item).await?;
            }
        }
        Ok(())
    }

    /// Stops the job's worker and then frees its slot, in the background: stopping may take
    /// a grace period the caller need not wait for.
    fn release_worker(self: &Arc<Self>, record: JobRecord) {
        let reaper = self.clone();
        self.tasks.spawn(async move {
            if record.execution_id.is_some() && !reaper.started(&record) {
                reaper.hand_over_stop(record).await;
            } else {
                reaper.stop_and_release(&record).await;
            }
        });
    }

    /// Cancels a build unless it is final, or pushing with its worker still heard from;
    /// stops its worker if it has one. Runs to its end when the user disconnects mid-call
    /// (see [`Tasks::finish`]).
    pub(crate) async fn cancel(self: &Arc<Self>, id: BuildId) -> Result<(), ManagerError> {
        let reaper = Arc::clone(self);
        let cancel = async move { reaper.cancel_now(id).await };
        (self.tasks.finish(cancel).await).unwrap_or(Err(ManagerError::ShuttingDown))
    }

    async fn cancel_now(self: &Arc<Self>, id: BuildId) -> Result<(), ManagerError> {
        let store = self.store.as_ref();
        let build = store
            .get_build(id)
            .await?
            .ok_or(ManagerError::NotFound(id))?;
        let by = if build.phase == Phase::Pushing && self.worker_gone(id).await? {
            Actor::UserWorkerGone
        } else {
            Actor::User
        };
        let before =
            phases::change(store, id, Phase::Cancelled, by, None, Default::default()).await?;
        if before.is_none() {
            let phase = store.get_build(id).await?.map_or(build.phase, |b| b.phase);
            return Err(ManagerError::Conflict(format!(
                "build {id} is {phase} and can no longer be cancelled"
            )));
        }
        match self.records.take(id).await? {
            Some(record) => self.end(record, JobEnd::Cancelled).await?,
            None => store.delete_item(id).await?,
        }
        tracing::info!(build_id = %id, "build cancelled");
        Ok(())
    }

    /// True when the build has no live job, or its worker has not been heard from within
    /// the heartbeat TTL.
    async fn worker_gone(&self, id: BuildId) -> Result<bool, ManagerError> {
        let ttl = i64::try_from(self.timings.heartbeat_ttl.as_secs()).unwrap_or(i64::MAX);
        let now = chrono::Utc::now().timestamp();
        Ok(match self.records.get(id).await? {
            None => true,
            Some(record) => record
                .last_heartbeat
                .is_none_or(|at| now.saturating_sub(at) > ttl),
        })
    }

    /// A job record's deadline passed: the job ends for the reason its state gives.
    async fn deadline_passed(self: &Arc<Self>, record: JobRecord) -> Result<(), ManagerError> {
        let end = record.deadline_end(chrono::Utc::now().timestamp());
        let end = crate::liveness::expired_end(
            self.orchestrator.as_ref(),
            &self.manager_id,
            &record,
            end,
        )
        .await;
        self.metrics.expired(end);
        tracing::warn!(build_id = %record.build_id, reason = end.reason(), "job deadline passed");
        self.end(record, end).await
    }

    /// Makes the store consistent with a fresh orchestrator: with a process-local one, the
    /// claims an earlier process left behind are returned to the queue (retry restored),
    /// so their builds run again now rather than when their leases run out.
    pub(crate) async fn recover(&self) -> Result<u64, ManagerError> {
        if !self.orchestrator.is_process_local() {
            return Ok(0);
        }
        let released = self.store.release_all_claims(chrono::Utc::now()).await?;
        if released > 0 {
            tracing::warn!(
                released,
                "returned builds claimed by an earlier run to the queue"
            );
        }
        Ok(released)
    }

    /// Starts watching for passed job deadlines and for stops handed over by other
    /// managers.
    pub(crate) fn start(self: &Arc<Self>) {
        let mut deadlines = self.orchestrator.watch("building/", &[KeyEvent::Expire]);
        let reaper = self.clone();
        self.tasks.spawn_loop(async move {
            while let Some(change) = deadlines.recv().await {
                let task = reaper.clone();
                reaper.tasks.spawn(async move {
                    let result = match records::parse(&change.value) {
                        Ok(record) => task.deadline_passed(record).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
                        tracing::error!(key = %change.key, error = %e, "could not end a job whose deadline passed");
                    }
                });
            }
        });
        let mut stops = self
            .orchestrator
            .watch("cancel/", &[KeyEvent::Create, KeyEvent::Expire]);
        let reaper = self.clone();
        self.tasks.spawn_loop(async move {
            while let Some(change) = stops.recv().await {
                reaper.handed_over(change);
            }
        });
    }

    /// Carries out a stop handed to this manager, or frees the slot of a stop whose
    /// manager did not take it in time.
    fn handed_over(self: &Arc<Self>, change: KeyChange) {
        let record = match records::parse(&change.value) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(key = %change.key, error = %e, "ignoring a cancel key");
                return;
            }
        };
        let reaper = self.clone();
        match change.event {
            KeyEvent::Create if self.started(&record) => self.tasks.spawn(async move {
                // Taking it makes this call the one to act (its lapse may have been seen
                // first).
                match reaper.orchestrator.take(&change.key).await {
                    Ok(Some(_)) => reaper.stop_and_release(&record).await,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(key = %change.key, error = %e, "could not take a stop handed over")
                    }
                }
            }),
            KeyEvent::Expire => self.tasks.spawn(async move {
                if reaper.started(&record) {
                    reaper.stop_and_release(&record).await;
                } else {
                    tracing::warn!(build_id = %record.build_id, manager = ?record.manager_id, "the manager that started the worker did not stop it in time; freeing its slot");
                    reaper.release_slot(&record).await;
                }
            }),
            _ => {}
        }
    }

    /// Whether this manager started the job's worker (a record without a manager id counts
    /// as this manager's, as before managers had ids).
    pub(crate) fn started(&self, record: &JobRecord) -> bool {
        record
            .manager_id
            .as_deref()
            .is_none_or(|id| id == &*self.manager_id)
    }

    /// Stops the job's worker, then frees its slot.
    async fn stop_and_release(&self, record: &JobRecord) {
        if let (Some(name), Some(id)) = (&record.executor_name, &record.execution_id) {
            self.stop_worker(name, id).await;
        }
        self.release_slot(record).await;
    }

    /// Frees a job's worker slot and wakes the scheduler.
    async fn release_slot(&self, record: &JobRecord) {
        if let Err(e) = self.orchestrator.release_slot(&record.slot).await {
            tracing::error!(build_id = %record.build_id, error = %e, "could not free the worker slot");
        }
        self.wake.notify();
    }

    /// Asks the manager that started a job's worker to stop it, with the job's cancel key.
    async fn hand_over_stop(&self, record: JobRecord) {
        let build = record.build_id;
        let ttl = self.timings.heartbeat_ttl;
        let created = match serde_json::to_string(&record) {
            Ok(value) => self
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
                tracing::error!(build_id = %build, manager = ?record.manager_id, "a stop of this build is already pending; freeing the slot, the worker may still run");
                self.release_slot(&record).await;
            }
            Err(e) => {
                tracing::error!(build_id = %build, manager = ?record.manager_id, error = %e, "could not ask for the worker to be stopped; freeing the slot, the worker may still run");
                self.release_slot(&record).await;
            }
        }
    }

    /// Stops a worker through the executor that started it; failures are logged.
    pub(crate) async fn stop_worker(&self, executor_name: &str, execution_id: &str) {
        let Some(entry) = self.executors.get(executor_name) else {
            tracing::error!(
                executor = executor_name,
                "cannot stop a worker of an unknown executor"
            );
            return;
        };
        let timeout = self.timings.stop_timeout;
        match tokio::time::timeout(timeout, entry.entry.executor.stop(execution_id)).await {
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
}
