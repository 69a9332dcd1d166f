//! The orphan reaper: workers no live job accounts for (a manager that crashed between
//! starting a worker and recording it, a stop that failed, a Job left behind by a Quay
//! manager) are found by asking each executor what it runs, and stopped — exactly once
//! across managers, through a claim key in the orchestrator.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use buildman_executor::OwnedWorker;

use super::Reaper;
use crate::ManagerError;

/// How long a claim on stopping an orphan stands: another pass (on any manager) tries
/// again after it, should the stop have failed.
const CLAIM_TTL: Duration = Duration::from_secs(600);

impl Reaper {
    /// Runs an orphan pass every `every`.
    pub(crate) fn start_orphan_reaper(self: &Arc<Self>, every: Duration) {
        let reaper = self.clone();
        self.tasks.spawn_loop(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let stopped = reaper.reap_orphans().await;
                if stopped > 0 {
                    tracing::warn!(stopped, "stopped orphaned workers");
                }
            }
        });
    }

    /// One pass over every executor: stops each worker older than its executor's
    /// SETUP_TIME that is not the worker of its build's live job. Returns how many this
    /// manager stopped. Executors with DEBUG keep their workers, as Quay's do.
    pub(crate) async fn reap_orphans(&self) -> usize {
        let mut stopped = 0;
        for configured in self.executors.iter() {
            let (config, executor) = (&configured.entry.config, &configured.entry.executor);
            if config.debug {
                continue;
            }
            let workers = match executor.owned().await {
                Ok(workers) => workers,
                Err(e) => {
                    tracing::warn!(executor = %config.name, error = %e, "could not list the executor's workers");
                    continue;
                }
            };
            for worker in workers {
                let young = SystemTime::now()
                    .duration_since(worker.started_at)
                    .is_ok_and(|age| age < config.setup_time);
                if young {
                    continue;
                }
                match self.stop_if_orphaned(&config.name, &worker).await {
                    Ok(true) => stopped += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(executor = %config.name, execution_id = %worker.execution_id, error = %e, "could not check a worker")
                    }
                }
            }
        }
        self.metrics.orphans_stopped(stopped as u64);
        stopped
    }

    /// Stops `worker` unless a live job accounts for it or another manager claimed it.
    async fn stop_if_orphaned(
        &self,
        executor: &str,
        worker: &OwnedWorker,
    ) -> Result<bool, ManagerError> {
        if let Some(build) = worker.build_id
            && let Some(record) = self.records.get(build).await?
            && record.execution_id.as_deref() == Some(&worker.execution_id)
        {
            return Ok(false);
        }
        let claim = format!("orphan/{executor}/{}", worker.execution_id);
        if !self
            .orchestrator
            .create(&claim, "", Some(CLAIM_TTL))
            .await?
        {
            return Ok(false);
        }
        tracing::warn!(
            executor,
            execution_id = %worker.execution_id,
            build_id = ?worker.build_id,
            "stopping a worker no live job accounts for"
        );
        self.stop_worker(executor, &worker.execution_id).await;
        Ok(true)
    }
}
