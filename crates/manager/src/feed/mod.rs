//! The log feed: every build-log entry this manager stores, handed to the followers of its
//! build as it is committed, and a signal that some build changed for the build lists.
//!
//! The feed is fed by [`FeedStore`], the store every role writes through, so no write path
//! can forget to publish: the log writer's group commits, phase changes with their entries
//! and the manager's own log entries. Publishing never waits: each followed build has a
//! bounded broadcast channel, and a follower that falls more than [`CHANNEL`] messages
//! behind is told so ([`follow::Followed::Lagged`]) instead of holding the writer back.
//!
//! A feed sees only this manager's writes. A follower fills whatever it did not see (a
//! gap in the indices, another manager's writes) from the store; see [`follow`].

pub mod follow;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use buildman_core::{BuildId, LogEntry};
use tokio::sync::{broadcast, watch};

pub(crate) use store::FeedStore;

/// Messages a follower may fall behind its build's channel before it is dropped. A
/// message is one commit's entries of the build (up to the log writer's batch), so this is
/// at least 256 entries and usually many more.
pub const CHANNEL: usize = 256;

/// What the feed tells a build's followers.
#[derive(Clone, Debug)]
pub(crate) enum Fed {
    /// Entries stored at indices `first`, `first + 1`, ...
    Entries {
        first: u64,
        entries: Arc<[LogEntry]>,
    },
    /// The build changed without a known index (a phase and its entry, its queue item
    /// settled): read the store.
    Changed,
}

/// Per followed build, a broadcast of what is stored; and a counter of build changes.
pub(crate) struct Feed {
    builds: Mutex<HashMap<BuildId, broadcast::Sender<Fed>>>,
    changes: watch::Sender<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            builds: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl Feed {
    /// Each critical section is one map operation, so a poisoned map is still consistent.
    fn builds(&self) -> MutexGuard<'_, HashMap<BuildId, broadcast::Sender<Fed>>> {
        self.builds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of what is stored for `build` from now on. Forgets the channels of builds
    /// nobody follows any more.
    pub(crate) fn subscribe(&self, build: BuildId) -> broadcast::Receiver<Fed> {
        let mut builds = self.builds();
        builds.retain(|_, tx| tx.receiver_count() > 0);
        builds
            .entry(build)
            .or_insert_with(|| broadcast::channel(CHANNEL).0)
            .subscribe()
    }

    /// Whether anyone follows `build` (so the caller need not prepare a message).
    pub(crate) fn is_followed(&self, build: BuildId) -> bool {
        self.builds().contains_key(&build)
    }

    /// Hands `fed` to the followers of `build`, if any; never waits.
    pub(crate) fn publish(&self, build: BuildId, fed: Fed) {
        let mut builds = self.builds();
        if let Some(tx) = builds.get(&build)
            && tx.send(fed).is_err()
        {
            builds.remove(&build);
        }
    }

    /// Says that some build was created or changed (for build lists).
    pub(crate) fn touch(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees [`Feed::touch`].
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
