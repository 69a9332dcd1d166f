//! A manager over an in-memory SQLite store, the in-memory orchestrator and scripted
//! executors the tests drive (the test plays the worker with the registration token the
//! executor was handed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use buildman_contexts::LocalStore;
use buildman_core::config::{ExecutorConfig, ExecutorKind};
use buildman_core::{BuildId, BuildSource, NewBuild, Phase};
use buildman_executor::{Executor, ExecutorError, OwnedWorker, StartRequest, WorkerFailure};
use buildman_manager::sessions::{PhaseReport, WorkerSessions};
use buildman_manager::tokens::TokenContext;
use buildman_manager::{ExecutorEntry, KeyPair, Manager, Settings, Timings, TokenService};
use buildman_orchestrator::memory::MemoryOrchestrator;
use buildman_store::Store;
use buildman_store::sqlite::SqliteStore;
use tokio::sync::mpsc;

/// What a scripted executor did.
#[derive(Default)]
pub struct Calls {
    pub started: Vec<StartRequest>,
    pub stopped: Vec<(String, Instant)>,
}

/// An executor that starts nothing: it records each request, fails when told to, reports
/// each worker failed right after its start when told to, lists what `owned` holds, and
/// takes `stop_takes` to stop.
pub struct Scripted {
    pub name: &'static str,
    pub calls: Mutex<Calls>,
    pub fail_start: bool,
    pub fail_after_start: Option<&'static str>,
    pub stop_takes: Duration,
    pub owned: Mutex<Vec<OwnedWorker>>,
    /// How often `owned` was asked (each orphan pass asks once).
    pub owned_calls: AtomicUsize,
    pub failures: mpsc::Sender<WorkerFailure>,
    pub failures_taken: Mutex<Option<mpsc::Receiver<WorkerFailure>>>,
}

impl Scripted {
    pub fn new(name: &'static str) -> Self {
        let (failures, taken) = mpsc::channel(16);
        Scripted {
            name,
            calls: Mutex::default(),
            fail_start: false,
            fail_after_start: None,
            stop_takes: Duration::ZERO,
            owned: Mutex::default(),
            owned_calls: AtomicUsize::new(0),
            failures,
            failures_taken: Mutex::new(Some(taken)),
        }
    }

    /// The registration token of the `n`th worker started (from 0).
    pub fn token(&self, n: usize) -> String {
        self.calls.lock().unwrap().started[n].token.clone()
    }

    pub fn started(&self) -> usize {
        self.calls.lock().unwrap().started.len()
    }

    pub fn stopped(&self) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls.stopped.iter().map(|(id, _)| id.clone()).collect()
    }
}

#[async_trait]
impl Executor for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn start(&self, request: &StartRequest) -> Result<String, ExecutorError> {
        if self.fail_start {
            return Err(ExecutorError::Failed("scripted failure".into()));
        }
        let id = {
            let mut calls = self.calls.lock().unwrap();
            calls.started.push(request.clone());
            format!("{}-{}", self.name, calls.started.len())
        };
        if let Some(reason) = self.fail_after_start {
            let failure = WorkerFailure {
                execution_id: id.clone(),
                build_id: request.build_id,
                reason: reason.into(),
            };
            let failures = self.failures.clone();
            // Reported a moment later, as a control plane's watch would.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = failures.send(failure).await;
            });
        }
        Ok(id)
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

    async fn owned(&self) -> Result<Vec<OwnedWorker>, ExecutorError> {
        self.owned_calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.owned.lock().unwrap().clone())
    }

    fn failures(&self) -> Option<mpsc::Receiver<WorkerFailure>> {
        self.failures_taken.lock().unwrap().take()
    }
}

/// One scripted executor with its config tweaks.
pub struct Exec {
    pub executor: Arc<Scripted>,
    pub setup_time: Duration,
    pub breaker_threshold: u32,
}

impl Exec {
    pub fn of(executor: &Arc<Scripted>) -> Exec {
        Exec {
            executor: executor.clone(),
            setup_time: Duration::from_secs(500),
            breaker_threshold: 3,
        }
    }
}

/// A store for one test.
pub async fn sqlite() -> SqliteStore {
    SqliteStore::open_url("sqlite::memory:").await.unwrap()
}

/// A started manager over `store` and `orchestrator` with the executors, in order, and
/// `workers` slots.
pub fn manager_with(
    store: Arc<dyn Store>,
    orchestrator: MemoryOrchestrator,
    executors: Vec<Exec>,
    workers: u32,
) -> Manager {
    let keys = KeyPair::generate().unwrap();
    let tokens = TokenService::new("test", &keys, &[]).unwrap();
    let files = Arc::new(LocalStore::new(
        std::env::temp_dir().join("buildman-roles-unused"),
        Arc::new(|id: &str| format!("http://files/{id}")),
    ));
    let entries = executors
        .into_iter()
        .map(|e| {
            let mut config = ExecutorConfig::with_defaults(ExecutorKind::Popen);
            config.name = e.executor.name.into();
            config.setup_time = e.setup_time;
            config.breaker_threshold = e.breaker_threshold;
            ExecutorEntry {
                config,
                executor: e.executor,
            }
        })
        .collect();
    let manager = Manager::new(
        store,
        Arc::new(orchestrator),
        entries,
        tokens,
        files,
        settings(workers),
    );
    manager.start();
    manager
}

fn settings(workers: u32) -> Settings {
    Settings {
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
        orphan_reap_interval: Duration::from_millis(200),
        data_dir: None,
        context_retention: Duration::ZERO,
        build_retention: None,
        queue_rules: Default::default(),
        sealing_key: None,
        timings: Timings {
            no_executor_retry: Duration::from_millis(50),
            requeue_delay: Duration::from_millis(50),
            ..Timings::default()
        },
    }
}

/// A started manager with one scripted executor, on a store of its own.
pub async fn manager(executor: &Arc<Scripted>, workers: u32) -> Manager {
    let store = Arc::new(sqlite().await);
    manager_with(
        store,
        MemoryOrchestrator::new(),
        vec![Exec::of(executor)],
        workers,
    )
}

pub fn scripted() -> Arc<Scripted> {
    Arc::new(Scripted::new("scripted"))
}

pub fn request(repository: &str) -> NewBuild {
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
pub async fn eventually<F, Fut>(what: &str, mut check: F)
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

pub async fn phase(manager: &Manager, id: BuildId) -> Phase {
    manager.builds().get(id).await.unwrap().unwrap().phase
}

/// The messages of a build's log.
pub async fn messages(manager: &Manager, id: BuildId) -> Vec<String> {
    let log = manager.builds().logs(id, 0, 1000, u64::MAX).await.unwrap();
    log.entries.into_iter().map(|e| e.message).collect()
}

/// Registers as the worker holding `token`; returns the job token's context.
pub async fn register(sessions: &WorkerSessions, token: &str) -> TokenContext {
    let assignment = sessions.register(token).await.unwrap();
    sessions.verify_job_token(&assignment.job_token).unwrap()
}

/// A worker's report of `phase`.
pub fn report(phase: Phase) -> PhaseReport {
    PhaseReport {
        phase: Some(phase),
        ..Default::default()
    }
}

/// A worker the control plane lists, started `age` ago.
pub fn owned(execution_id: &str, build: Option<BuildId>, age: Duration) -> OwnedWorker {
    OwnedWorker {
        execution_id: execution_id.into(),
        build_id: build,
        started_at: SystemTime::now() - age,
    }
}
