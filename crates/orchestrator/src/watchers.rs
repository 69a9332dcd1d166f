//! The watchers of one orchestrator: which changes each wants, and the bounded channels
//! that carry them (see [`Orchestrator::watch`](crate::Orchestrator::watch)).

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{self, OwnedPermit, Receiver, Sender};

use crate::{KeyChange, KeyEvent, WATCH_CAPACITY};

/// Every watcher of an orchestrator; closed ones are pruned as they are noticed.
#[derive(Default)]
pub(crate) struct Watchers {
    list: Vec<Watcher>,
}

struct Watcher {
    prefix: String,
    events: Vec<KeyEvent>,
    tx: Sender<KeyChange>,
}

impl Watcher {
    fn wants(&self, event: KeyEvent, key: &str) -> bool {
        self.events.contains(&event) && key.starts_with(&self.prefix) && !self.tx.is_closed()
    }
}

impl Watchers {
    /// Adds a watcher of `events` below `prefix`.
    pub fn add(&mut self, prefix: &str, events: &[KeyEvent]) -> Receiver<KeyChange> {
        let (tx, rx) = mpsc::channel(WATCH_CAPACITY);
        self.prune();
        self.list.push(Watcher {
            prefix: prefix.to_owned(),
            events: events.to_vec(),
            tx,
        });
        rx
    }

    /// How many watchers are kept, closed ones not yet pruned included.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.list.len()
    }

    fn prune(&mut self) {
        self.list.retain(|w| !w.tx.is_closed());
    }

    /// Whether a live watcher wants `event` of `key`.
    pub fn wants(&self, event: KeyEvent, key: &str) -> bool {
        self.list.iter().any(|w| w.wants(event, key))
    }

    /// The prefixes live watchers of `event` follow, sorted, without duplicates.
    pub fn prefixes(&self, event: KeyEvent) -> Vec<String> {
        let mut prefixes: Vec<String> = self
            .list
            .iter()
            .filter(|w| w.events.contains(&event) && !w.tx.is_closed())
            .map(|w| w.prefix.clone())
            .collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes
    }

    /// The channels of the watchers that want `event` of `key`, to send on without holding
    /// the lock around the watchers.
    pub fn senders(&mut self, event: KeyEvent, key: &str) -> Vec<Sender<KeyChange>> {
        self.prune();
        self.list
            .iter()
            .filter(|w| w.wants(event, key))
            .map(|w| w.tx.clone())
            .collect()
    }

    /// Hands a change to the watchers that want it, without waiting: a watcher whose
    /// channel is full misses it, with a warning.
    pub fn offer(&mut self, change: &KeyChange) {
        self.list.retain(|w| {
            if !w.wants(change.event, &change.key) {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(change.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        key = %change.key, event = ?change.event, prefix = %w.prefix,
                        "a watcher's channel is full; it misses this change"
                    );
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    /// A place in the channel of every watcher that wants `event` of `key`, or `None` when
    /// one of them is full: then nothing is reserved, and the caller tries again later.
    pub fn reserve(&self, event: KeyEvent, key: &str) -> Option<Vec<OwnedPermit<KeyChange>>> {
        let mut permits = Vec::new();
        for w in self.list.iter().filter(|w| w.wants(event, key)) {
            match w.tx.clone().try_reserve_owned() {
                Ok(permit) => permits.push(permit),
                Err(TrySendError::Full(_)) => return None,
                // Closed since `wants` looked: it wants nothing any more.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        Some(permits)
    }
}
