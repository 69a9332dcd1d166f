//! The manager's error: each kind keeps its source, so an adapter can map it to the right
//! status and a log line can show the whole chain.

use buildman_contexts::ContextError;
use buildman_core::{BuildId, InvalidBuild};
use buildman_executor::ExecutorError;
use buildman_orchestrator::OrchestratorError;
use buildman_store::StoreError;

use crate::tokens::TokenError;

/// What went wrong in a manager operation.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The caller asked for something malformed; the text says what and how to fix it.
    #[error(transparent)]
    Invalid(#[from] InvalidBuild),
    /// No such build.
    #[error("build {0} not found")]
    NotFound(BuildId),
    /// The build is in a phase that does not allow the request.
    #[error("{0}")]
    Conflict(String),
    /// A worker's token was refused, or a key is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A registration for a job that is not waiting for a worker (already registered,
    /// expired, ended or cancelled): a refusal, not a failure of the manager.
    #[error("cannot start job for build {build}: {why}")]
    JobNotWaiting { build: BuildId, why: &'static str },
    /// An upload was refused, or the context storage failed.
    #[error(transparent)]
    Upload(#[from] ContextError),
    /// The store failed, or refused (a full namespace queue, an unknown build).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The orchestrator failed.
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// An executor could not start or stop a worker.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// A job record in the orchestrator could not be read or written.
    #[error("unreadable job record: {0}")]
    JobRecord(#[source] serde_json::Error),
    /// The manager is stopping and no longer takes this kind of work.
    #[error("the build manager is shutting down")]
    ShuttingDown,
    /// A build secret could not be sealed or opened (see [`crate::sealing`]).
    #[error(transparent)]
    Seal(#[from] crate::sealing::SealError),
}

impl ManagerError {
    /// True for errors that are the caller's doing (bad input, refusals), as opposed to
    /// failures of the manager or its backends: the former are answered, the latter logged.
    pub fn is_refusal(&self) -> bool {
        match self {
            ManagerError::Invalid(_)
            | ManagerError::NotFound(_)
            | ManagerError::Conflict(_)
            | ManagerError::JobNotWaiting { .. } => true,
            ManagerError::Token(e) => matches!(e, TokenError::Refused(_)),
            ManagerError::Upload(e) => e.is_refusal(),
            ManagerError::Store(e) => {
                matches!(
                    e,
                    StoreError::QueueFull { .. }
                        | StoreError::NotFound(_)
                        | StoreError::AttemptOver(_)
                        | StoreError::Unsupported(_)
                )
            }
            ManagerError::Orchestrator(_)
            | ManagerError::Executor(_)
            | ManagerError::JobRecord(_)
            | ManagerError::Seal(_)
            | ManagerError::ShuttingDown => false,
        }
    }
}
