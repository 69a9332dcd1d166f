//! Every background task of the manager belongs to one [`Tasks`]: a tracker that knows
//! what still runs, and two cancellation tokens for the two steps of a shutdown.
//!
//! - *Stop*: loops (the scheduler, the watchers) end, so no new work starts.
//! - *Abort*: work in flight (starting a worker, ending a job, stopping a worker) is given
//!   up; it gets until the shutdown deadline to finish first, so a stop that can finish
//!   does.
//!
//! Nothing in the manager calls `tokio::spawn` directly but the log writer, which must
//! outlive these tasks (it is stopped last, see `LogWriter::shutdown`).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The manager's task tracker and shutdown tokens. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    /// Cancelled by a drain: no new claims, everything else runs on.
    claims: CancellationToken,
    stop: CancellationToken,
    abort: CancellationToken,
}

impl Tasks {
    /// Runs a loop; it is dropped at the first shutdown step.
    pub(crate) fn spawn_loop<Fut>(&self, run: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker
            .spawn(async move { stop.run_until_cancelled(run).await });
    }

    /// Runs one piece of work that should finish even while the manager stops, until the
    /// shutdown deadline.
    pub(crate) fn spawn<Fut>(&self, work: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let abort = self.abort.clone();
        self.tracker
            .spawn(async move { abort.run_until_cancelled(work).await });
    }

    /// Runs a caller's work on a task of its own and returns its result. The work goes on
    /// when the caller stops waiting (a worker or user that disconnects mid-call drops the
    /// call's future), so a change it began has all its consequences: a phase written is
    /// also notified, and a final one also ends its job. `None` when a shutdown gave it up.
    pub(crate) async fn finish<T, Fut>(&self, work: Fut) -> Option<T>
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let abort = self.abort.clone();
        let handle = self
            .tracker
            .spawn(async move { abort.run_until_cancelled(work).await });
        match handle.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }

    /// True once the shutdown began.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The first step of a drain: no new claims from now on.
    pub(crate) fn stop_claiming(&self) {
        self.claims.cancel();
    }

    /// True once claims stopped: a drain or a shutdown began.
    pub(crate) fn claiming_stopped(&self) -> bool {
        self.claims.is_cancelled() || self.stopping()
    }

    /// Stops the loops, waits up to `deadline` for work in flight, then abandons the rest.
    /// Returns how many tasks were abandoned.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> usize {
        self.stop.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        let left = if finished { 0 } else { self.tracker.len() };
        self.abort.cancel();
        self.tracker.wait().await;
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_loops_lets_work_finish_and_abandons_it_at_the_deadline() {
        let tasks = Tasks::default();
        // A loop that would never end on its own.
        tasks.spawn_loop(std::future::pending());
        let quick_done = Arc::new(AtomicBool::new(false));
        let flag = quick_done.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let slow_done = Arc::new(AtomicBool::new(false));
        let flag = slow_done.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let abandoned = tokio::time::timeout(
            Duration::from_secs(3600),
            tasks.shutdown(Duration::from_secs(5)),
        )
        .await
        .expect("shutdown ends although a loop never would");
        assert!(tasks.stopping());
        assert_eq!(abandoned, 1, "only the slow task was abandoned");
        assert!(
            quick_done.load(Ordering::SeqCst),
            "work within the deadline finished"
        );
        assert!(
            !slow_done.load(Ordering::SeqCst),
            "work past the deadline was given up"
        );
    }
}
