//! The manager's roles through its public API, without gRPC or HTTP: an in-memory SQLite
//! store, the in-memory orchestrator and a scripted executor. The end-to-end behaviour is
//! tested in crates/buildman/tests; these pin the seams (scheduler, reaper, sessions,
//! shutdown) where a broken rule shows up first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use buildman_core::config::{ExecutorConfig, ExecutorKind};
use buildman_core::{Build, ClaimedItem, LogEntry, Requeue};
use buildman_core::{BuildId, BuildSource, NewBuild, Phase};
use buildman_executor::{Executor, ExecutorError, StartRequest};
use buildman_manager::sessions::PhaseReport;
use buildman_manager::{
    ExecutorEntry, FileStore, KeyPair, Manager, Settings, Timings, TokenService,
};
use buildman_orchestrator::memory::MemoryOrchestrator;
use buildman_store::sqlite::SqliteStore;
use buildman_store::{LogPage, QueueState, Store, WorkerLine};
use chrono::{DateTime, Utc};

/// What the scripted executor did.
#[derive(Default)]
struct Calls {
    started: Vec<StartRequest>,
    stopped: Vec<(String, Instant)>,
}

/// An executor that starts nothing: it records the request (the test plays the worker
/// with the token), fails when told to, and takes `stop_takes` to stop.
struct Scripted {
    calls: Mutex<Calls>,
    fail: bool,
    stop_takes: Duration,
}

#[async_trait]
impl Executor for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn start(&self, request: &StartRequest) -> Result<String, ExecutorError> {
        if self.fail {
            return Err(ExecutorError::Failed("scripted failure".into()));
        }
        let mut calls = self.calls.lock().unwrap();
        calls.started.push(request.clone());
        Ok(format!("worker-{}", calls.started.len()))
    }

    async fn stop(&self, execution_id: &str) -> Result<(), ExecutorError> {
        tokio::time::sleep(self.stop_takes).await;
        let mut calls = self.calls.lock().unwrap();
        calls
            .stopped
            .push((execution_id.to_string(), Instant::now()));
        Ok(())
    }

    async fn running(&self) -> Result<usize, ExecutorError> {
        let calls = self.calls.lock().unwrap();
        Ok(calls.started.len() - calls.stopped.len())
    }
}

fn scripted(fail: bool, stop_takes: Duration) -> Arc<Scripted> {
    Arc::new(Scripted {
        calls: Mutex::default(),
        fail,
        stop_takes,
    })
}

async fn manager(executor: Arc<Scripted>, workers: u32) -> Manager {
    let store = Arc::new(SqliteStore::open_url("sqlite::memory:").await.unwrap());
    manager_on(store, MemoryOrchestrator::new(), executor, workers)
}

fn manager_on(
    store: Arc<dyn Store>,
    orchestrator: MemoryOrchestrator,
    executor: Arc<Scripted>,
    workers: u32,
) -> Manager {
    let mut config = ExecutorConfig::with_defaults(ExecutorKind::Popen);
    config.name = "scripted".into();
    let keys = KeyPair::generate().unwrap();
    let tokens = TokenService::new("test", &keys, &[]).unwrap();
    let files = FileStore::new(
        std::env::temp_dir().join("buildman-roles-unused"),
        Arc::new(|id: &str| format!("http://files/{id}")),
    );
    let settings = Settings {
        allowed_worker_count: workers,
        job_registration_timeout: Duration::from_secs(30),
        machine_max_time: Duration::from_secs(3600),
        worker_server: "127.0.0.1:1".into(),
        worker_insecure: true,
        registry: String::new(),
        result_dir: None,
        pull_token: String::new(),
        push_token: String::new(),
        max_queued_per_namespace: None,
        max_silent_retries: 2,
        queue_rules: Default::default(),
        timings: Timings {
            no_executor_retry: Duration::from_millis(50),
            requeue_delay: Duration::from_millis(50),
            ..Timings::default()
        },
    };
    let entry = ExecutorEntry { config, executor };
    let manager = Manager::new(
        store,
        Arc::new(orchestrator),
        vec![entry],
        tokens,
        files,
        settings,
    );
    manager.start();
    manager
}

fn request(repository: &str) -> NewBuild {
    NewBuild {
        namespace: "ns".into(),
        repository: repository.into(),
        source: BuildSource::ArchiveUrl {
            url: "https://example.com/context.tar".into(),
        },
        tags: vec![],
        context: String::new(),
        dockerfile_path: String::new(),
        display_name: String::new(),
        manual_user: None,
        pull_robot: None,
    }
}

/// Polls `check` until it holds; panics after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn phase(manager: &Manager, id: BuildId) -> Phase {
    manager.builds().get(id).await.unwrap().unwrap().phase
}

#[tokio::test]
async fn an_attempt_no_executor_takes_spends_its_retry_and_the_last_one_gives_up() {
    let manager = manager(scripted(true, Duration::ZERO), 1).await;
    let build = manager.builds().submit(request("r")).await.unwrap();
    // Three attempts, each spending a retry; then the build ends for good.
    eventually("the build gives up", || async {
        manager
            .builds()
            .queue_state(build.id)
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let build = manager.builds().get(build.id).await.unwrap().unwrap();
    assert_eq!(build.phase, Phase::InternalError);
    assert!(manager.builds().is_expired(&build).await.unwrap());
    let log = manager.builds().logs(build.id, 0, 100).await.unwrap();
    let messages: Vec<&str> = log.entries.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.starts_with("no executor could start a worker (scripted:"))
            .count(),
        3,
        "one attempt per retry: {messages:?}"
    );
    let end = &messages[messages.len() - 4..];
    assert_eq!(
        end,
        [
            "internalerror",
            "no executor could start a worker",
            "attempt 3 ended: no executor could start a worker",
            "no retries left; the build will not run again"
        ]
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn no_claim_without_a_slot() {
    let executor = scripted(false, Duration::ZERO);
    let manager = manager(executor.clone(), 1).await;
    let first = manager.builds().submit(request("a")).await.unwrap();
    let second = manager.builds().submit(request("b")).await.unwrap();
    eventually("the first build is scheduled", || async {
        phase(&manager, first.id).await == Phase::BuildScheduled
    })
    .await;
    let waiting = manager
        .builds()
        .queue_state(second.id)
        .await
        .unwrap()
        .unwrap();
    assert!(waiting.available, "the second build is not claimed");
    assert_eq!(waiting.retries_remaining, 3, "and has spent no retry");
    assert_eq!(executor.calls.lock().unwrap().started.len(), 1);
    // The first build ends: its slot goes to the second.
    manager.builds().cancel(first.id).await.unwrap();
    eventually("the second build is scheduled", || async {
        phase(&manager, second.id).await == Phase::BuildScheduled
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_worker_follows_the_transition_table() {
    let executor = scripted(false, Duration::ZERO);
    let manager = manager(executor.clone(), 1).await;
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async {
        !executor.calls.lock().unwrap().started.is_empty()
    })
    .await;
    let token = executor.calls.lock().unwrap().started[0].token.clone();
    let sessions = manager.sessions();
    let assignment = sessions.register(&token).await.unwrap();
    let ctx = sessions.verify_job_token(&assignment.job_token).unwrap();
    let report = |phase| PhaseReport {
        phase: Some(phase),
        ..Default::default()
    };
    assert!(
        sessions
            .set_phase(&ctx, report(Phase::Building))
            .await
            .unwrap()
    );
    assert!(
        !sessions
            .set_phase(&ctx, report(Phase::Waiting))
            .await
            .unwrap(),
        "a worker may not move a build back to waiting"
    );
    assert!(
        !sessions
            .set_phase(&ctx, report(Phase::Cancelled))
            .await
            .unwrap(),
        "nor cancel it"
    );
    assert_eq!(phase(&manager, build.id).await, Phase::Building);
    assert!(
        sessions
            .set_phase(&ctx, report(Phase::Complete))
            .await
            .unwrap()
    );
    assert!(
        !sessions
            .set_phase(&ctx, report(Phase::Building))
            .await
            .unwrap(),
        "nothing follows a final phase"
    );
    assert_eq!(phase(&manager, build.id).await, Phase::Complete);
    assert!(
        manager
            .builds()
            .queue_state(build.id)
            .await
            .unwrap()
            .is_none()
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_waits_for_a_worker_stop_in_flight() {
    let executor = scripted(false, Duration::from_millis(300));
    let manager = manager(executor.clone(), 1).await;
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async {
        !executor.calls.lock().unwrap().started.is_empty()
    })
    .await;
    manager.builds().cancel(build.id).await.unwrap();
    // The stop runs in the background; the shutdown waits for it.
    manager.shutdown(Duration::from_secs(5)).await;
    let stopped = executor.calls.lock().unwrap().stopped.len();
    assert_eq!(
        stopped, 1,
        "the worker was stopped before the shutdown returned"
    );
}

/// A store whose phase changes to `build-scheduled` return `delay` after they were made,
/// as on a loaded database: the window in which a worker that registered quickly reports
/// its own phases before the scheduler's call comes back.
struct SlowToReturn {
    inner: SqliteStore,
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
        if to == Phase::BuildScheduled {
            tokio::time::sleep(self.delay).await;
        }
        before
    }
    async fn set_result_location(&self, id: BuildId, location: &str) -> buildman_store::Result<()> {
        self.inner.set_result_location(id, location).await
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
    async fn append_worker_lines(&self, lines: &[WorkerLine]) -> buildman_store::Result<Vec<bool>> {
        self.inner.append_worker_lines(lines).await
    }
    async fn read_logs(
        &self,
        id: BuildId,
        start: u64,
        limit: u32,
    ) -> buildman_store::Result<LogPage> {
        self.inner.read_logs(id, start, limit).await
    }
}

/// The race of the issue "Nothing lost": a worker that registers before the scheduler's
/// "build scheduled" comes back reports unpacking, pulling and building; the build's log
/// still shows `build-scheduled` first, because a phase and its entry are one store call.
#[tokio::test]
async fn phase_entries_follow_the_phase_changes_when_registration_races_the_scheduler() {
    let store = SlowToReturn {
        inner: SqliteStore::open_url("sqlite::memory:").await.unwrap(),
        delay: Duration::from_secs(2),
    };
    let executor = scripted(false, Duration::ZERO);
    let manager = manager_on(
        Arc::new(store),
        MemoryOrchestrator::new(),
        executor.clone(),
        1,
    );
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("the build is marked scheduled", || async {
        phase(&manager, build.id).await == Phase::BuildScheduled
    })
    .await;
    // The scheduler's call has not returned yet: the worker is faster.
    let token = executor.calls.lock().unwrap().started[0].token.clone();
    let sessions = manager.sessions();
    let assignment = sessions.register(&token).await.unwrap();
    let ctx = sessions.verify_job_token(&assignment.job_token).unwrap();
    for to in [Phase::Unpacking, Phase::Pulling, Phase::Building] {
        let report = PhaseReport {
            phase: Some(to),
            ..Default::default()
        };
        assert!(sessions.set_phase(&ctx, report).await.unwrap());
    }
    let log = manager.builds().logs(build.id, 0, 100).await.unwrap();
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

/// A push is cancelled only when its worker is gone: refused while the worker is heard
/// from, accepted once its job is lost (a flushed orchestrator, say), so no build is stuck
/// in `pushing` holding its queue item.
#[tokio::test]
async fn a_push_can_be_cancelled_once_its_worker_is_gone() {
    let orchestrator = MemoryOrchestrator::new();
    let store = Arc::new(SqliteStore::open_url("sqlite::memory:").await.unwrap());
    let executor = scripted(false, Duration::ZERO);
    let manager = manager_on(store, orchestrator.clone(), executor.clone(), 1);
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async {
        !executor.calls.lock().unwrap().started.is_empty()
    })
    .await;
    let token = executor.calls.lock().unwrap().started[0].token.clone();
    let sessions = manager.sessions();
    let assignment = sessions.register(&token).await.unwrap();
    let ctx = sessions.verify_job_token(&assignment.job_token).unwrap();
    let pushing = PhaseReport {
        phase: Some(Phase::Pushing),
        ..Default::default()
    };
    assert!(sessions.set_phase(&ctx, pushing).await.unwrap());
    let refused = manager.builds().cancel(build.id).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is pushing and can no longer be cancelled"),
        "{refused}"
    );
    // The job is lost; the worker is heard from no more.
    use buildman_orchestrator::Orchestrator;
    let key = buildman_core::job::job_key(build.id);
    assert!(orchestrator.take(&key).await.unwrap().is_some());
    manager.builds().cancel(build.id).await.unwrap();
    assert_eq!(phase(&manager, build.id).await, Phase::Cancelled);
    assert!(
        manager
            .builds()
            .queue_state(build.id)
            .await
            .unwrap()
            .is_none()
    );
    manager.shutdown(Duration::from_secs(5)).await;
}
