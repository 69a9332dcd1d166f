//! Executors: the control planes that start a worker for a job and stop it afterwards
//! (a local process; a Kubernetes Job; EC2 instances; a load generator's callback for
//! benchmarks). Each is one module implementing [`Executor`].
//!
//! An executor knows how to run a worker and nothing about queues, phases or tokens beyond
//! the values handed to it in a [`StartRequest`].

use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use buildman_core::BuildId;
use tokio::sync::mpsc;

pub mod bench;
pub mod ec2;
pub mod ignition;
pub mod kubernetes;
pub mod local;

/// Why a worker could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The control plane refused or failed the request.
    #[error("{0}")]
    Failed(String),
    /// The control plane could not be reached.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
}

/// Shorthand for executor results.
pub type Result<T, E = ExecutorError> = std::result::Result<T, E>;

/// What a worker needs to be started with.
#[derive(Clone)]
pub struct StartRequest {
    pub build_id: BuildId,
    /// The registration token the worker presents to RegisterBuildJob. Secret.
    pub token: String,
    /// `host:port` of the manager's gRPC endpoint, as the worker should dial it.
    pub server: String,
    /// The registry host images are pushed to ("" when results are written locally).
    pub registry_hostname: String,
    /// Whether the worker should dial without TLS.
    pub insecure: bool,
    /// The job's maximum lifetime, so a worker can power itself off after it.
    pub max_lifetime_s: u64,
    /// The id of the manager starting the worker, for control planes that label workers
    /// with it (a Kubernetes Job's `manager` label).
    pub manager_id: String,
}

impl std::fmt::Debug for StartRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartRequest")
            .field("build_id", &self.build_id)
            .field("token", &"<redacted>")
            .field("server", &self.server)
            .field("registry_hostname", &self.registry_hostname)
            .field("manager_id", &self.manager_id)
            .finish_non_exhaustive()
    }
}

/// A worker as the control plane lists it (a labelled Job, a tagged instance, a child
/// process), for the orphan reaper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedWorker {
    /// The executor's id for it, as `start` returned it.
    pub execution_id: String,
    /// The build it was started for, when the control plane recorded it.
    pub build_id: Option<BuildId>,
    /// When it was started.
    pub started_at: SystemTime,
}

/// A worker the control plane saw fail or end (a pod that cannot be scheduled or pull its
/// image, an instance terminated, a process that exited). The manager acts on it only
/// while the worker's job waits for it to register: then the attempt falls back to the
/// next executor at once instead of waiting out SETUP_TIME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerFailure {
    pub execution_id: String,
    pub build_id: BuildId,
    /// What the control plane said, for the build log (no secrets).
    pub reason: String,
}

/// How many failures an executor keeps for the manager before it drops the oldest news:
/// the manager reads them as they come, so this is a bound, not a buffer size that matters.
pub const FAILURE_QUEUE: usize = 256;

/// The receiving end of an executor's failure reports, kept until the manager takes it
/// (see [`Executor::failures`]).
pub struct FailureReports(Mutex<Option<mpsc::Receiver<WorkerFailure>>>);

impl FailureReports {
    /// A channel of up to [`FAILURE_QUEUE`] reports; the executor keeps the sender.
    pub fn channel() -> (mpsc::Sender<WorkerFailure>, FailureReports) {
        let (sender, receiver) = mpsc::channel(FAILURE_QUEUE);
        (sender, FailureReports(Mutex::new(Some(receiver))))
    }

    /// The receiver, the first time it is asked for.
    pub fn take(&self) -> Option<mpsc::Receiver<WorkerFailure>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A control plane that starts and stops workers.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The executor kind (`popen`, `kubernetes`, `ec2`, ...).
    fn kind(&self) -> &'static str;

    /// Starts a worker; returns the executor's id for it (its execution id).
    async fn start(&self, request: &StartRequest) -> Result<String>;

    /// Stops a worker and everything it started; stopping one already gone succeeds.
    async fn stop(&self, execution_id: &str) -> Result<()>;

    /// How many workers of this executor are running now.
    async fn running(&self) -> Result<usize>;

    /// Every worker of this executor the control plane shows, whichever manager started it
    /// (where the control plane is shared), for the orphan reaper.
    async fn owned(&self) -> Result<Vec<OwnedWorker>>;

    /// The failures the control plane reports, as they happen; the manager takes the
    /// receiver once, at start. `None` for an executor that cannot tell.
    fn failures(&self) -> Option<mpsc::Receiver<WorkerFailure>> {
        None
    }
}
