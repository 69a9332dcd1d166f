//! How a running manager stops. [`Running::drain_and_stop`] is what a signal does: claims
//! stop; workers, users and probes are answered (readiness says draining) while builds this
//! manager runs may finish, for up to BUILDMAN_DRAIN_SECONDS, until none is left or a
//! second signal cuts the drain short. Builds still running then are handed back to the
//! queue with their retry when no other manager can take them over (a process-local
//! orchestrator: their workers are stopped); with a shared orchestrator they go on, and
//! their workers reconnect to another manager. [`Running::stop`] stops at once (tests).

use std::future::Future;
use std::time::Duration;

use super::{Running, SHUTDOWN_GRACE};

/// How often a drain looks whether this manager still runs builds.
const IDLE_CHECK: Duration = Duration::from_millis(250);

impl Running {
    /// Stops the listeners, then the manager. Requests in flight get a grace period;
    /// then the listeners are dropped, because a connected worker's heartbeat stream never
    /// ends by itself. The manager's own work in flight (worker stops) gets the same grace.
    pub async fn stop(self) {
        self.stop_within(SHUTDOWN_GRACE).await;
    }

    /// Drains (see the module), then stops; `cut_short` resolving ends the drain at once.
    pub async fn drain_and_stop(self, cut_short: impl Future<Output = ()>) {
        let manager = &self.manager;
        manager.stop_claiming();
        let period = self.drain_period;
        tokio::select! {
            () = until_idle(manager) => {
                tracing::info!("drain: no build of this manager runs any more");
            }
            () = tokio::time::sleep(period) => {
                tracing::info!(drain_s = period.as_secs(), "drain: the drain period is over");
            }
            () = cut_short => tracing::warn!("drain: a second signal ends the drain now"),
        }
        if manager.is_process_local() {
            match manager.hand_back_jobs().await {
                Ok(0) => {}
                Ok(handed) => tracing::warn!(
                    handed,
                    "builds still running were returned to the queue with their retry; \
                     they run again when a manager starts on this data dir"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "could not return the running builds to the queue; they run again at the next start")
                }
            }
        } else if let Ok(left @ 1..) = manager.own_jobs().await {
            tracing::info!(
                left,
                "builds still running go on: their workers reconnect to another manager"
            );
        }
        // Handed-back builds' workers are being stopped: give that the time it may take.
        let grace = self.stop_timeout.max(SHUTDOWN_GRACE);
        self.stop_within(grace).await;
    }

    /// Stops the servers (each within `SHUTDOWN_GRACE`), then the manager (within `grace`).
    async fn stop_within(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.manager.shutdown(grace).await;
    }
}

/// Resolves once no live job runs a worker of this manager.
async fn until_idle(manager: &buildman_manager::Manager) {
    loop {
        match manager.own_jobs().await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "drain: could not count the running builds"),
        }
        tokio::time::sleep(IDLE_CHECK).await;
    }
}
