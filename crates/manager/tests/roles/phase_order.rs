//! Phase changes whose store call is slow to return: the order of phase entries in a
//! build's log when registration races the scheduler, and a final phase whose worker goes
//! away mid-call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use buildman_core::{Build, BuildId, ClaimedItem, LogEntry, NewBuild, Phase, Requeue};
use buildman_orchestrator::memory::MemoryOrchestrator;
use buildman_store::sqlite::SqliteStore;
use buildman_store::{BuildFilter, LogPage, QueueState, QueueStats, Store, WorkerLine};
use chrono::{DateTime, Utc};

use crate::harness::*;

/// A store whose phase changes to `slow` return `delay` after they were made, as on a
/// loaded database.
struct SlowToReturn {
    inner: SqliteStore,
    slow: Phase,
    delay: Duration,
}

#[async_trait]
impl Store for SlowToReturn {
    async fn create_build(
        &self,
        new: NewBuild,
        retries: u32,
        max_queued: Option<u32>,
    ) -> buildman_store::Result<Build> {
        self.inner.create_build(new, retries, max_queued).await
    }
    async fn get_build(&self, id: BuildId) -> buildman_store::Result<Option<Build>> {
        self.inner.get_build(id).await
    }
    async fn list_builds(
        &self,
        namespace: &str,
        repository: &str,
        limit: u32,
        since: Option<DateTime<Utc>>,
    ) -> buildman_store::Result<Vec<Build>> {
        self.inner
            .list_builds(namespace, repository, limit, since)
            .await
    }
    async fn set_phase(
        &self,
        id: BuildId,
        to: Phase,
        from: &[Phase],
        error: Option<&str>,
        entry: Option<&LogEntry>,
    ) -> buildman_store::Result<Option<Phase>> {
        let before = self.inner.set_phase(id, to, from, error, entry).await;
        if to == self.slow {
            tokio::time::sleep(self.delay).await;
        }
        before
    }
    async fn set_result_location(&self, id: BuildId, location: &str) -> buildman_store::Result<()> {
        self.inner.set_result_location(id, location).await
    }
    async fn pushed_tag(
        &self,
        namespace: &str,
        repository: &str,
        tags: &[String],
    ) -> buildman_store::Result<Option<String>> {
        self.inner.pushed_tag(namespace, repository, tags).await
    }
    async fn set_executor(&self, id: BuildId, executor: &str) -> buildman_store::Result<()> {
        self.inner.set_executor(id, executor).await
    }
    async fn find_builds(
        &self,
        filter: &BuildFilter,
        limit: u32,
    ) -> buildman_store::Result<Vec<Build>> {
        self.inner.find_builds(filter, limit).await
    }
    async fn claim(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> buildman_store::Result<Option<ClaimedItem>> {
        self.inner.claim(now, lease).await
    }
    async fn complete_item(&self, item: &ClaimedItem) -> buildman_store::Result<bool> {
        self.inner.complete_item(item).await
    }
    async fn give_up_item(&self, item: &ClaimedItem) -> buildman_store::Result<bool> {
        self.inner.give_up_item(item).await
    }
    async fn return_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        requeue: &Requeue,
    ) -> buildman_store::Result<bool> {
        self.inner.return_item(item, now, requeue).await
    }
    async fn extend_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        lease: Duration,
        minimum: Duration,
    ) -> buildman_store::Result<bool> {
        self.inner.extend_item(item, now, lease, minimum).await
    }
    async fn release_all_claims(&self, now: DateTime<Utc>) -> buildman_store::Result<u64> {
        self.inner.release_all_claims(now).await
    }
    async fn claimed_items(&self, limit: u32) -> buildman_store::Result<Vec<ClaimedItem>> {
        self.inner.claimed_items(limit).await
    }
    async fn delete_item(&self, build: BuildId) -> buildman_store::Result<()> {
        self.inner.delete_item(build).await
    }
    async fn queue_state(&self, build: BuildId) -> buildman_store::Result<Option<QueueState>> {
        self.inner.queue_state(build).await
    }
    async fn next_available_after(
        &self,
        now: DateTime<Utc>,
    ) -> buildman_store::Result<Option<DateTime<Utc>>> {
        self.inner.next_available_after(now).await
    }
    async fn append_logs(&self, id: BuildId, entries: &[LogEntry]) -> buildman_store::Result<u64> {
        self.inner.append_logs(id, entries).await
    }
    async fn append_worker_lines(
        &self,
        lines: &[WorkerLine],
    ) -> buildman_store::Result<Vec<Option<u64>>> {
        self.inner.append_worker_lines(lines).await
    }
    async fn read_logs(
        &self,
        id: BuildId,
        start: u64,
        limit: u32,
        max_bytes: u64,
    ) -> buildman_store::Result<LogPage> {
        self.inner.read_logs(id, start, limit, max_bytes).await
    }
    async fn ping(&self) -> buildman_store::Result<()> {
        self.inner.ping().await
    }
    async fn queue_stats(&self, now: DateTime<Utc>) -> buildman_store::Result<QueueStats> {
        self.inner.queue_stats(now).await
    }
    async fn ended_with_context(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> buildman_store::Result<Vec<Build>> {
        self.inner.ended_with_context(ended_before, limit).await
    }
    async fn mark_contexts_pruned(&self, builds: &[BuildId]) -> buildman_store::Result<()> {
        self.inner.mark_contexts_pruned(builds).await
    }
    async fn delete_ended_builds(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> buildman_store::Result<u64> {
        self.inner.delete_ended_builds(ended_before, limit).await
    }
}

/// The race of the issue "Nothing lost": a worker that registers before the scheduler's
/// "build scheduled" comes back reports unpacking, pulling and building; the build's log
/// still shows `build-scheduled` first, because a phase and its entry are one store call.
#[tokio::test]
async fn phase_entries_follow_the_phase_changes_when_registration_races_the_scheduler() {
    // The window in which a worker that registered quickly reports its own phases before
    // the scheduler's call comes back.
    let store = SlowToReturn {
        inner: sqlite().await,
        slow: Phase::BuildScheduled,
        delay: Duration::from_secs(2),
    };
    let executor = scripted();
    let manager = manager_with(
        Arc::new(store),
        MemoryOrchestrator::new(),
        vec![Exec::of(&executor)],
        1,
    );
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("the build is marked scheduled", || async {
        phase(&manager, build.id).await == Phase::BuildScheduled
    })
    .await;
    // The scheduler's call has not returned yet: the worker is faster.
    let sessions = manager.sessions();
    let ctx = register(sessions, &executor.token(0)).await;
    for to in [Phase::Unpacking, Phase::Pulling, Phase::Building] {
        assert!(sessions.set_phase(&ctx, report(to)).await.unwrap());
    }
    let log = manager
        .builds()
        .logs(build.id, 0, 100, u64::MAX)
        .await
        .unwrap();
    let phases: Vec<&str> = log
        .entries
        .iter()
        .filter(|e| e.kind == Some(buildman_core::LogType::Phase))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(
        phases,
        ["build-scheduled", "unpacking", "pulling", "building"]
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

/// A worker that goes away while its `complete` is being written (tonic drops the call's
/// future when the connection closes): the change still has all its consequences, so the
/// job ends and its queue item is done at once, not after the lost-worker reaper's wait.
#[tokio::test]
async fn a_final_phase_ends_its_job_when_the_worker_goes_away_mid_call() {
    let store = SlowToReturn {
        inner: sqlite().await,
        slow: Phase::Complete,
        delay: Duration::from_secs(1),
    };
    let executor = scripted();
    let manager = manager_with(
        Arc::new(store),
        MemoryOrchestrator::new(),
        vec![Exec::of(&executor)],
        1,
    );
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async { executor.started() == 1 }).await;
    let sessions = manager.sessions();
    let ctx = register(sessions, &executor.token(0)).await;
    assert!(
        sessions
            .set_phase(&ctx, report(Phase::Building))
            .await
            .unwrap()
    );
    tokio::select! {
        _ = sessions.set_phase(&ctx, report(Phase::Complete)) => {
            panic!("the call returned before the store did")
        }
        () = eventually("complete is written", || async {
            phase(&manager, build.id).await == Phase::Complete
        }) => {}
    }
    // The call's future is dropped here, as the worker's connection closed.
    eventually("the job ended: its queue item is done", || async {
        (manager.builds().queue_state(build.id).await.unwrap()).is_none()
    })
    .await;
    eventually("and its worker stopped", || async {
        executor.stopped().len() == 1
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}

/// The same for a user whose cancel request goes away mid-call: the worker is stopped.
#[tokio::test]
async fn a_cancel_stops_the_worker_when_the_user_goes_away_mid_call() {
    let store = SlowToReturn {
        inner: sqlite().await,
        slow: Phase::Cancelled,
        delay: Duration::from_secs(1),
    };
    let executor = scripted();
    let manager = manager_with(
        Arc::new(store),
        MemoryOrchestrator::new(),
        vec![Exec::of(&executor)],
        1,
    );
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async { executor.started() == 1 }).await;
    tokio::select! {
        _ = manager.builds().cancel(build.id) => panic!("the call returned before the store did"),
        () = eventually("cancelled is written", || async {
            phase(&manager, build.id).await == Phase::Cancelled
        }) => {}
    }
    eventually("the job ended: its queue item is gone", || async {
        (manager.builds().queue_state(build.id).await.unwrap()).is_none()
    })
    .await;
    eventually("and its worker stopped", || async {
        executor.stopped().len() == 1
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}
