//! Jobs: one attempt to run a build on a worker, as recorded in the orchestrator.

use serde::{Deserialize, Serialize};

use crate::{BuildId, ClaimedItem};

/// The orchestrator key of a build's job, below the orchestrator prefix (Quay's layout).
pub fn job_key(build: BuildId) -> String {
    format!("building/{build}")
}

/// The key that asks the manager that started a job's worker to stop it (its value is the
/// job's record, see [`JobRecord::manager_id`]).
pub fn cancel_key(build: BuildId) -> String {
    format!("cancel/{build}")
}

/// A job's record in the orchestrator, shared by every manager. Whoever deletes the record
/// completes the job, so completion happens exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub build_id: BuildId,
    pub namespace: String,
    pub repository: String,
    /// The queue item claimed for this attempt.
    pub queue_item: ClaimedItem,
    /// The worker slot this job holds (ALLOWED_WORKER_COUNT), given back when it ends.
    pub slot_holder: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds after which the job may not run any longer (MACHINE_MAX_TIME).
    pub max_expiration: i64,
    /// Unix seconds of the last heartbeat; `None` until the worker registered.
    pub last_heartbeat: Option<i64>,
    /// The executor that started the worker, once scheduled.
    pub executor_name: Option<String>,
    /// The executor's id for the worker (process id, Job name, instance id).
    pub execution_id: Option<String>,
    /// The manager whose executor started the worker, the only one that can stop it (a
    /// local worker is its child process); `None` in records of managers without ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_id: Option<String>,
}

impl JobRecord {
    /// True once the worker registered.
    pub fn registered(&self) -> bool {
        self.last_heartbeat.is_some()
    }
}

/// How a job ended, which decides what happens to its queue item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// complete: the item is deleted.
    Complete,
    /// error: the item is deleted.
    Error,
    /// cancelled: the item is deleted.
    Cancelled,
    /// The manager or worker failed after registering: back in the queue with the retry restored.
    Incomplete,
    /// The job timed out before the worker registered: back in the queue, retry spent.
    Expired,
}

impl JobOutcome {
    /// Whether the queue item goes back to the queue, and with its retry restored.
    pub fn requeue(self) -> Option<bool> {
        match self {
            JobOutcome::Complete | JobOutcome::Error | JobOutcome::Cancelled => None,
            JobOutcome::Incomplete => Some(true),
            JobOutcome::Expired => Some(false),
        }
    }

    /// The label used in metrics (`job_status`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Complete => "complete",
            JobOutcome::Error => "error",
            JobOutcome::Cancelled => "cancelled",
            JobOutcome::Incomplete => "incomplete",
            JobOutcome::Expired => "expired",
        }
    }
}
