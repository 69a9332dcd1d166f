//! The queue's rules, as Quay defines them; the stores implement them atomically.
//!
//! One queue item per queued build. An item is *claimable* when `available_after <= now`,
//! it is available or its processing lease has expired, it has retries left, and no other
//! item of the same queue name (repository) is being processed. A claim is a compare-and-set
//! on `state_id`, so among racing managers exactly one wins; it takes a lease and one retry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BuildId;

/// The numbers that govern the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRules {
    /// Retries a new build gets (Quay: 3).
    pub retries: u32,
    /// A lease extension is written only when it moves the expiry by more than this
    /// (Quay: 1 minute for builds), to spare the database a write per heartbeat.
    pub minimum_extension: Duration,
}

impl Default for QueueRules {
    fn default() -> Self {
        QueueRules {
            retries: 3,
            minimum_extension: Duration::from_secs(60),
        }
    }
}

/// The queue name of a repository's builds: `dockerfilebuild/<namespace>/<repository>/`.
pub fn queue_name(namespace: &str, repository: &str) -> String {
    format!("dockerfilebuild/{namespace}/{repository}/")
}

/// A queue item this manager holds a claim on. `state_id` proves the claim: completing,
/// returning or extending the item succeeds only while it is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedItem {
    pub item_id: i64,
    pub state_id: String,
    pub build_id: BuildId,
    pub queue_name: String,
    /// Retries left after this claim took one.
    pub retries_remaining: u32,
    /// Which attempt of the build this claim is (1 for the first).
    #[serde(default)]
    pub attempt: u32,
    /// How many times the build got its retry back because its worker went silent (see
    /// [`crate::job::RetryPolicy::max_silent_retries`]).
    #[serde(default)]
    pub silent_restores: u32,
}
