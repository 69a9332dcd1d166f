//! The build manager: takes builds from the queue, starts a worker for each through the
//! executors, follows the worker through registration, heartbeats, phases and logs, and
//! cleans up when the job ends. Servers call into [`Manager`]; it talks to the store, the
//! orchestrator and the executors only through their traits.

pub mod files;
pub mod tokens;

use std::sync::Arc;

use buildman_core::{Build, BuildId, NewBuild};
use buildman_store::Store;

pub use files::FileStore;

/// What went wrong in a manager operation, in terms a server can map to a status.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The caller asked for something malformed; the text says what and how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// No such build.
    #[error("build {0} not found")]
    NotFound(BuildId),
    /// The build is in a phase that does not allow the request.
    #[error("{0}")]
    Conflict(String),
    /// The namespace's queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// The token was missing, malformed, forged, expired or of the wrong kind.
    #[error("{0}")]
    Unauthenticated(String),
    /// Something inside the manager failed (store, orchestrator).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The build manager. Cheap to clone: all state is shared.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    files: FileStore,
}

impl Manager {
    /// The store, for read-only views (lists, logs, queue state).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Where uploaded build contexts live.
    pub fn files(&self) -> &FileStore {
        &self.inner.files
    }

    /// Queues a build and wakes the scheduler.
    pub async fn submit(&self, _new: NewBuild) -> Result<Build, ManagerError> {
        todo!()
    }

    /// Cancels a build unless it is pushing or final; stops its worker if it has one.
    pub async fn cancel(&self, _id: BuildId) -> Result<(), ManagerError> {
        todo!()
    }

    /// True when the build is `internalerror` with no retry left: the status view shows
    /// it as `expired`.
    pub async fn is_expired(&self, _build: &Build) -> Result<bool, ManagerError> {
        todo!()
    }
}
