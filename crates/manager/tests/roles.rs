//! The manager's roles through its public API, without gRPC or HTTP: an in-memory SQLite
//! store, the in-memory orchestrator and a scripted executor. The end-to-end behaviour is
//! tested in crates/buildman/tests; these pin the seams (scheduler, reaper, sessions,
//! shutdown) where a broken rule shows up first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use buildman_contexts::LocalStore;
use buildman_core::config::{ExecutorConfig, ExecutorKind};
use buildman_core::{BuildId, BuildSource, NewBuild, Phase};
use buildman_executor::{Executor, ExecutorError, StartRequest};
use buildman_manager::sessions::PhaseReport;
use buildman_manager::{ExecutorEntry, KeyPair, Manager, Settings, Timings, TokenService};
use buildman_orchestrator::memory::MemoryOrchestrator;
use buildman_store::sqlite::SqliteStore;

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
    let mut config = ExecutorConfig::with_defaults(ExecutorKind::Popen);
    config.name = "scripted".into();
    let keys = KeyPair::generate().unwrap();
    let tokens = TokenService::new("test", &keys, &[]).unwrap();
    let files = Arc::new(LocalStore::new(
        std::env::temp_dir().join("buildman-roles-unused"),
        Arc::new(|id: &str| format!("http://files/{id}")),
    ));
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
        Arc::new(MemoryOrchestrator::new()),
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
    let end = &messages[messages.len() - 3..];
    assert_eq!(
        end,
        [
            "internalerror",
            "no executor could start a worker",
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
