//! Jobs: one attempt to run a build on a worker, as recorded in the orchestrator, and the
//! rules for what happens to the build's queue item when a job ends.

use std::time::Duration;

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

/// A job's record in the orchestrator, shared by every manager. Whoever takes the record
/// out of the orchestrator ends the job, so a job ends exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub build_id: BuildId,
    pub namespace: String,
    pub repository: String,
    /// The queue item claimed for this attempt.
    pub queue_item: ClaimedItem,
    /// The worker slot this job holds (ALLOWED_WORKER_COUNT), given back when it ends.
    /// (`slot_holder` in records written before the rename.)
    #[serde(alias = "slot_holder")]
    pub slot: String,
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
    /// Executors whose worker failed before registering in this attempt: the attempt fell
    /// back past them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried_executors: Vec<String>,
    /// Unix milliseconds when the executor started the worker: where the ack and build
    /// durations of the metrics count from, on whichever manager the job ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_started_ms: Option<i64>,
}

impl JobRecord {
    /// True once the worker registered.
    pub fn registered(&self) -> bool {
        self.last_heartbeat.is_some()
    }

    /// Why this job's deadline passed, judged from how far it got at `now` (unix seconds).
    pub fn deadline_end(&self, now: i64) -> JobEnd {
        if self.registered() {
            if now >= self.max_expiration {
                JobEnd::Overran
            } else {
                JobEnd::WorkerSilent
            }
        } else if self.execution_id.is_some() {
            JobEnd::NeverRegistered
        } else {
            JobEnd::NeverStarted
        }
    }
}

/// How a job ended. Each end decides, through [`JobEnd::queue_action`], what happens to
/// the build's queue item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// The worker reported complete.
    Complete,
    /// The worker reported an error in the build itself.
    Error,
    /// A user cancelled the build.
    Cancelled,
    /// No executor could, or was allowed to, start a worker.
    NoExecutor,
    /// No worker was started within JOB_REGISTRATION_TIMEOUT.
    NeverStarted,
    /// An executor started a worker that did not register within its SETUP_TIME.
    NeverRegistered,
    /// The worker registered, then stopped sending heartbeats.
    WorkerSilent,
    /// The build ran longer than MACHINE_MAX_TIME.
    Overran,
    /// The manager stopped while the build ran and no other manager can take the job over
    /// (a process-local orchestrator): its worker is stopped and the build runs again.
    ManagerStopped,
    /// The worker went silent and the manager that ran the job died with it (its liveness
    /// key is gone): another manager takes the build over.
    ManagerLost,
    /// The orchestrator lost the job's record (Redis flushed, or restarted without its
    /// data) while the store still held the claim: the build was not at fault and runs
    /// again at once.
    RecordLost,
}

/// What happens to a job's queue item when the job ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueAction {
    /// The build is done with the queue: the item is deleted.
    Remove,
    /// The item goes back to the queue.
    Requeue(Requeue),
    /// The last retry is spent: the item is deleted and the build ends for good in
    /// `internalerror` (shown as `expired`).
    GiveUp,
}

/// How an item goes back to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requeue {
    /// Claimable again this long from now.
    pub after: Duration,
    /// Whether the retry the claim took is given back.
    pub restore_retry: bool,
    /// The item's count of retries given back for silent workers, to store.
    pub silent_restores: u32,
}

/// The rules of retrying: how long an ended job's build waits (Quay's delays by default),
/// and how often a silent worker's retry is given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// After a failed or expired attempt (Quay: 30 s).
    pub after_failure: Duration,
    /// After no executor could start a worker (Quay: 20 s).
    pub after_no_executor: Duration,
    /// A build whose worker goes silent gets its retry back at most this many times; after
    /// that a silent worker spends it like any failure, so a build whose worker is killed
    /// every time (out of memory, say) still ends (BUILDMAN_MAX_SILENT_RETRIES, default 2).
    pub max_silent_retries: u32,
}

/// BUILDMAN_MAX_SILENT_RETRIES when unset.
pub const DEFAULT_MAX_SILENT_RETRIES: u32 = 2;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            after_failure: Duration::from_secs(30),
            after_no_executor: Duration::from_secs(20),
            max_silent_retries: DEFAULT_MAX_SILENT_RETRIES,
        }
    }
}

impl JobEnd {
    /// Quay's rules, with a bound: complete, error and cancelled leave the queue; a worker
    /// that went silent gets its retry back (at most `max_silent_retries` times per build);
    /// a worker that never came, a build over MACHINE_MAX_TIME (retrying it with the retry
    /// restored would loop forever on a build that always overruns) and an attempt no
    /// executor took spend it. A spent retry with none left gives up.
    pub fn queue_action(self, item: &ClaimedItem, policy: RetryPolicy) -> QueueAction {
        let mut silent_restores = item.silent_restores;
        let (after, restore_retry) = match self {
            JobEnd::Complete | JobEnd::Error | JobEnd::Cancelled => return QueueAction::Remove,
            JobEnd::WorkerSilent if silent_restores < policy.max_silent_retries => {
                silent_restores += 1;
                (policy.after_failure, true)
            }
            // Not the build's fault: it runs again at once, its retry given back within the
            // same bound as a silent worker's (a build that kills its manager every time,
            // out of memory say, still ends).
            JobEnd::ManagerLost | JobEnd::RecordLost
                if silent_restores < policy.max_silent_retries =>
            {
                silent_restores += 1;
                (Duration::ZERO, true)
            }
            JobEnd::ManagerLost | JobEnd::RecordLost => (Duration::ZERO, false),
            JobEnd::WorkerSilent
            | JobEnd::NeverStarted
            | JobEnd::NeverRegistered
            | JobEnd::Overran => (policy.after_failure, false),
            JobEnd::NoExecutor => (policy.after_no_executor, false),
            // Not the build's fault, and not a silent worker: runs again at once, for free.
            JobEnd::ManagerStopped => (Duration::ZERO, true),
        };
        if restore_retry || item.retries_remaining > 0 {
            QueueAction::Requeue(Requeue {
                after,
                restore_retry,
                silent_restores,
            })
        } else {
            QueueAction::GiveUp
        }
    }

    /// True when the reaper must mark the build `internalerror`: the job ended without the
    /// worker reporting a final phase. (A build no executor took stays `waiting` while it
    /// has retries left.)
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            JobEnd::NeverStarted
                | JobEnd::NeverRegistered
                | JobEnd::WorkerSilent
                | JobEnd::Overran
                | JobEnd::ManagerStopped
                | JobEnd::ManagerLost
                | JobEnd::RecordLost
        )
    }

    /// Why the job ended, for the build log and the build's error.
    pub fn reason(self) -> &'static str {
        match self {
            JobEnd::Complete => "the build completed",
            JobEnd::Error => "the worker reported an error; see the build log",
            JobEnd::Cancelled => "the build was cancelled",
            JobEnd::NoExecutor => "no executor could start a worker",
            JobEnd::NeverStarted => "no worker was started within JOB_REGISTRATION_TIMEOUT",
            JobEnd::NeverRegistered => {
                "the worker did not register within the executor's SETUP_TIME"
            }
            JobEnd::WorkerSilent => "the worker stopped sending heartbeats",
            JobEnd::Overran => "the build ran longer than MACHINE_MAX_TIME",
            JobEnd::ManagerStopped => {
                "the manager stopped while the build ran; its worker was stopped"
            }
            JobEnd::ManagerLost => {
                "the manager running the build died and its worker went silent; another manager took the build over"
            }
            JobEnd::RecordLost => {
                "the orchestrator lost the job's record (its data was flushed or lost); the build runs again"
            }
        }
    }

    /// The label used in metrics and logs (`job_status`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobEnd::Complete => "complete",
            JobEnd::Error => "error",
            JobEnd::Cancelled => "cancelled",
            JobEnd::NoExecutor => "no_executor",
            JobEnd::NeverStarted => "never_started",
            JobEnd::NeverRegistered => "never_registered",
            JobEnd::WorkerSilent => "worker_silent",
            JobEnd::Overran => "overran",
            JobEnd::ManagerStopped => "manager_stopped",
            JobEnd::ManagerLost => "manager_lost",
            JobEnd::RecordLost => "record_lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        after_failure: Duration::from_secs(30),
        after_no_executor: Duration::from_secs(20),
        max_silent_retries: 2,
    };

    fn item(retries_remaining: u32, silent_restores: u32) -> ClaimedItem {
        ClaimedItem {
            item_id: 1,
            state_id: "s".into(),
            build_id: BuildId::new(),
            queue_name: "q".into(),
            retries_remaining,
            attempt: 1,
            silent_restores,
        }
    }

    fn requeue(after: Duration, restore_retry: bool, silent_restores: u32) -> QueueAction {
        QueueAction::Requeue(Requeue {
            after,
            restore_retry,
            silent_restores,
        })
    }

    #[test]
    fn quays_requeue_rules() {
        for end in [JobEnd::Complete, JobEnd::Error, JobEnd::Cancelled] {
            assert_eq!(end.queue_action(&item(2, 0), P), QueueAction::Remove);
            assert_eq!(end.queue_action(&item(0, 0), P), QueueAction::Remove);
        }
        assert_eq!(
            JobEnd::WorkerSilent.queue_action(&item(0, 0), P),
            requeue(P.after_failure, true, 1)
        );
        assert_eq!(
            JobEnd::WorkerSilent.queue_action(&item(2, 1), P),
            requeue(P.after_failure, true, 2)
        );
        for end in [
            JobEnd::NeverStarted,
            JobEnd::NeverRegistered,
            JobEnd::Overran,
        ] {
            assert_eq!(
                end.queue_action(&item(1, 0), P),
                requeue(P.after_failure, false, 0)
            );
            assert_eq!(end.queue_action(&item(0, 0), P), QueueAction::GiveUp);
        }
        assert_eq!(
            JobEnd::NoExecutor.queue_action(&item(1, 0), P),
            requeue(P.after_no_executor, false, 0)
        );
        assert_eq!(
            JobEnd::NoExecutor.queue_action(&item(0, 0), P),
            QueueAction::GiveUp
        );
    }

    #[test]
    fn a_build_its_stopping_manager_hands_back_runs_again_at_once_for_free() {
        // Neither a retry nor the silent budget is spent, even on the last retry.
        assert_eq!(
            JobEnd::ManagerStopped.queue_action(&item(0, 2), P),
            requeue(Duration::ZERO, true, 2)
        );
        assert!(JobEnd::ManagerStopped.is_failure());
    }

    #[test]
    fn a_build_whose_manager_died_runs_again_at_once_within_the_silent_budget() {
        assert_eq!(
            JobEnd::ManagerLost.queue_action(&item(1, 0), P),
            requeue(Duration::ZERO, true, 1)
        );
        // Past the budget it spends its retry (still at once), so a build that kills its
        // manager every time ends.
        assert_eq!(
            JobEnd::ManagerLost.queue_action(&item(1, 2), P),
            requeue(Duration::ZERO, false, 2)
        );
        assert_eq!(
            JobEnd::ManagerLost.queue_action(&item(0, 2), P),
            QueueAction::GiveUp
        );
        assert!(JobEnd::ManagerLost.is_failure());
        // A lost record follows the same rule: not the build's fault.
        assert_eq!(
            JobEnd::RecordLost.queue_action(&item(1, 0), P),
            requeue(Duration::ZERO, true, 1)
        );
        assert!(JobEnd::RecordLost.is_failure());
    }

    #[test]
    fn a_silent_worker_gets_its_retry_back_only_so_often() {
        // Past the budget a silent worker spends its retry, so the build ends.
        assert_eq!(
            JobEnd::WorkerSilent.queue_action(&item(2, 2), P),
            requeue(P.after_failure, false, 2)
        );
        assert_eq!(
            JobEnd::WorkerSilent.queue_action(&item(0, 2), P),
            QueueAction::GiveUp
        );
        let none = RetryPolicy {
            max_silent_retries: 0,
            ..P
        };
        assert_eq!(
            JobEnd::WorkerSilent.queue_action(&item(1, 0), none),
            requeue(P.after_failure, false, 0)
        );
    }

    fn record() -> JobRecord {
        JobRecord {
            build_id: BuildId::new(),
            namespace: "ns".into(),
            repository: "r".into(),
            queue_item: ClaimedItem {
                item_id: 1,
                state_id: "s".into(),
                build_id: BuildId::new(),
                queue_name: "q".into(),
                retries_remaining: 2,
                attempt: 1,
                silent_restores: 0,
            },
            slot: "slot".into(),
            created_at: 0,
            max_expiration: 100,
            last_heartbeat: None,
            executor_name: None,
            execution_id: None,
            manager_id: None,
            tried_executors: Vec::new(),
            worker_started_ms: None,
        }
    }

    #[test]
    fn a_deadline_end_is_judged_from_how_far_the_job_got() {
        let mut r = record();
        assert_eq!(r.deadline_end(10), JobEnd::NeverStarted);
        r.execution_id = Some("pid".into());
        assert_eq!(r.deadline_end(10), JobEnd::NeverRegistered);
        r.last_heartbeat = Some(5);
        assert_eq!(r.deadline_end(10), JobEnd::WorkerSilent);
        assert_eq!(r.deadline_end(100), JobEnd::Overran);
    }

    #[test]
    fn records_of_the_old_layout_still_read() {
        let mut value = serde_json::to_value(record()).unwrap();
        let slot = value.as_object_mut().unwrap().remove("slot").unwrap();
        value["slot_holder"] = slot;
        let back: JobRecord = serde_json::from_value(value).unwrap();
        assert_eq!(back.slot, "slot");
    }
}
