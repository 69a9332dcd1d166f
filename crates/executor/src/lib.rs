//! Executors: the control planes that start a worker for a job and stop it afterwards
//! (a local process; Kubernetes and EC2 later; a load generator's callback for
//! benchmarks). Each is one module implementing [`Executor`].
//!
//! An executor knows how to run a worker and nothing about queues, phases or tokens beyond
//! the values handed to it in a [`StartRequest`].

use async_trait::async_trait;
use buildman_core::BuildId;

pub mod bench;
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
}

impl std::fmt::Debug for StartRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartRequest")
            .field("build_id", &self.build_id)
            .field("token", &"<redacted>")
            .field("server", &self.server)
            .field("registry_hostname", &self.registry_hostname)
            .finish()
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
}
