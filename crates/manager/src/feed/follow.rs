//! Following one build: its log entries from an index on, each exactly once and in order,
//! the phase changes among them, the retries of an internal error, and the end once the
//! build is over for good.
//!
//! Entries come from this manager's [`Feed`] as they are committed. The store fills in
//! everything else: the entries before the follower subscribed, a gap in the indices (an
//! entry another manager wrote, or a message the feed could not place), and, every
//! [`BACKSTOP`] the feed has nothing for the build, whatever other managers stored (the
//! build's worker may talk to another manager). A follower that falls [`super::CHANNEL`]
//! messages behind is not caught up from the store: it ends with
//! [`Followed::Lagged`], saying where to resume, so a client that stops reading costs the
//! writer nothing and the manager no memory.

use std::sync::Arc;
use std::time::Duration;

use buildman_core::{Build, BuildId, LogEntry, LogType, Phase};
use buildman_store::Store;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Fed, Feed};
use crate::ManagerError;

/// How long a follower waits for the feed before it reads the store itself.
pub const BACKSTOP: Duration = Duration::from_secs(1);
/// Entries read from the store at once.
const PAGE: u32 = 1000;
/// At most this much of a log is read from the store at once (though always one entry).
const PAGE_BYTES: u64 = 4 * 1024 * 1024;

/// What a follower sees, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Followed {
    /// The log entry at `index`.
    Entry { index: u64, entry: LogEntry },
    /// The build entered `phase` (after the phase's own entry).
    Phase(Phase),
    /// An internal error is retried: attempt `attempt` runs (at `at`, when known).
    Retry {
        attempt: u32,
        at: Option<DateTime<Utc>>,
    },
    /// The build is over for good, and every entry of its log was followed: `expired` is
    /// an internal error with no retry left. Nothing follows.
    End { build: Box<Build>, expired: bool },
    /// The follower fell too far behind and was dropped; follow again from `next`.
    /// Nothing follows.
    Lagged { next: u64 },
}

/// One build followed from an index on; see the module doc.
pub struct Follower {
    store: Arc<dyn Store>,
    id: BuildId,
    rx: broadcast::Receiver<Fed>,
    /// The index of the next entry to hand out.
    next: u64,
    /// The store may hold entries from `next` on the feed did not bring.
    stale: bool,
    /// The build's state may have changed: see whether it ended or is retried.
    check: bool,
    /// The highest attempt the follower knows of (announced or seen at the start).
    attempt: u32,
    /// Set once `End` or `Lagged` was handed out.
    done: bool,
}

impl Follower {
    /// Follows `build` from entry `from` (0 is the whole log). Subscribes before the first
    /// store read, so no entry falls between the two.
    pub(crate) fn new(store: Arc<dyn Store>, feed: &Feed, build: &Build, from: u64) -> Self {
        Follower {
            rx: feed.subscribe(build.id),
            store,
            id: build.id,
            next: from,
            stale: true,
            check: true,
            attempt: build.attempts.max(1),
            done: false,
        }
    }

    /// The next events, in order; `None` once the build ended or the follower was dropped.
    /// Waits until there is something to say.
    pub async fn next(&mut self) -> Result<Option<Vec<Followed>>, ManagerError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let mut events = Vec::new();
            if self.check {
                // Before reading the store, so that every entry written before the state
                // that ends the build is read after it.
                self.check = false;
                if let Some(end) = self.settle(&mut events).await? {
                    self.drain(&mut events).await?;
                    events.push(end);
                    self.done = true;
                    return Ok(Some(events));
                }
            }
            if self.stale {
                self.read_page(&mut events).await?;
            }
            if !events.is_empty() {
                return Ok(Some(events));
            }
            if self.stale {
                continue;
            }
            if let Some(lagged) = self.wait(&mut events).await {
                self.done = true;
                return Ok(Some(vec![lagged]));
            }
            if !events.is_empty() {
                return Ok(Some(events));
            }
        }
    }

    /// Waits for the feed or the backstop; hands out the entries the feed brought, or marks
    /// the store to be read. Returns `Lagged` when the follower fell behind.
    async fn wait(&mut self, events: &mut Vec<Followed>) -> Option<Followed> {
        let received = tokio::time::timeout(BACKSTOP, self.rx.recv()).await;
        match received {
            Ok(Ok(Fed::Entries { first, entries })) if first <= self.next => {
                let skip = usize::try_from(self.next - first).unwrap_or(usize::MAX);
                let fresh = entries.get(skip..).unwrap_or_default();
                self.hand_out(events, self.next, fresh);
            }
            Ok(Ok(Fed::Entries { .. })) => self.stale = true,
            Ok(Ok(Fed::Changed)) | Err(_) => {
                self.stale = true;
                self.check = true;
            }
            Ok(Err(RecvError::Lagged(_))) => return Some(Followed::Lagged { next: self.next }),
            // The feed lives as long as the manager; without it, the store still answers.
            Ok(Err(RecvError::Closed)) => {
                self.stale = true;
                self.check = true;
                tokio::time::sleep(BACKSTOP).await;
            }
        }
        None
    }

    /// Reads one page of the store from `next`; the store stays stale while there is more.
    async fn read_page(&mut self, events: &mut Vec<Followed>) -> Result<(), ManagerError> {
        let page = self
            .store
            .read_logs(self.id, self.next, PAGE, PAGE_BYTES)
            .await?;
        self.hand_out(events, page.start, &page.entries);
        self.stale = self.next < page.total && !page.entries.is_empty();
        Ok(())
    }

    /// Reads the store to the end of the log.
    async fn drain(&mut self, events: &mut Vec<Followed>) -> Result<(), ManagerError> {
        self.stale = true;
        while self.stale {
            self.read_page(events).await?;
        }
        Ok(())
    }

    /// Hands out entries stored from index `first` on, those from `next` on only; a phase
    /// entry is followed by its phase, and makes the follower look at the build's state.
    fn hand_out(&mut self, events: &mut Vec<Followed>, first: u64, entries: &[LogEntry]) {
        for (index, entry) in (first..).zip(entries) {
            if index < self.next {
                continue;
            }
            self.next = index + 1;
            events.push(Followed::Entry {
                index,
                entry: entry.clone(),
            });
            if entry.kind == Some(LogType::Phase)
                && let Ok(phase) = entry.message.parse::<Phase>()
            {
                events.push(Followed::Phase(phase));
                self.check = true;
            }
        }
    }

    /// Looks at the build's state: `End` when it is over for good; announces a retry of an
    /// internal error (once per attempt).
    async fn settle(
        &mut self,
        events: &mut Vec<Followed>,
    ) -> Result<Option<Followed>, ManagerError> {
        let build = self
            .store
            .get_build(self.id)
            .await?
            .ok_or(ManagerError::NotFound(self.id))?;
        if build.phase.is_over() {
            return Ok(Some(Followed::End {
                build: Box::new(build),
                expired: false,
            }));
        }
        let retry = match build.phase {
            Phase::InternalError => match self.store.queue_state(self.id).await? {
                None => {
                    return Ok(Some(Followed::End {
                        build: Box::new(build),
                        expired: true,
                    }));
                }
                Some(q) if q.available => Some((build.attempts + 1, Some(q.available_after))),
                // Still claimed: the job's end is being settled, or the next attempt starts.
                Some(_) => None,
            },
            // A later attempt was claimed before the follower saw it returned to the queue.
            _ => Some((build.attempts, None)),
        };
        if let Some((attempt, at)) = retry
            && attempt > self.attempt
        {
            self.attempt = attempt;
            events.push(Followed::Retry { attempt, at });
        }
        Ok(None)
    }
}
