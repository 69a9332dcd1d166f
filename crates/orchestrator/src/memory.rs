//! The in-memory orchestrator: one process, no persistence. Used by single-manager
//! deployments (`MEM_*` orchestrator keys) and by tests.
//!
//! All state sits behind one std mutex and every event is sent while it is held, so the
//! order watchers see matches the order of the changes, and expiry and `take` can never
//! both claim a key. Keys whose deadline has passed are expired on every access as well as
//! by the background timer, so results never depend on when that timer task gets to run.
//!
//! Sending never waits. A key whose expiry a watcher has no room for stays unexpired, with
//! its deadline moved [`EXPIRY_RETRY`] on, until every watcher of it has room: an expiry is
//! acted on (the manager finishes the job), so it must not be lost. Other changes a full
//! watcher misses, with a warning.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::watchers::Watchers;
use crate::{KeyChange, KeyEvent, Orchestrator, Result};

/// How long an expiry waits when a watcher of its key has a full channel.
pub const EXPIRY_RETRY: Duration = Duration::from_millis(50);

/// An [`Orchestrator`] held in this process's memory; clones share the same state.
#[derive(Clone)]
pub struct MemoryOrchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the expiry task when a deadline earlier than the one it sleeps towards appears.
    /// Kept in its own Arc so the sleeping task can wait on it without keeping `Inner` alive.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, Entry>,
    deadlines: BTreeSet<(Instant, String)>,
    slots: HashSet<String>,
    watchers: Watchers,
    expiry_task: Option<JoinHandle<()>>,
}

struct Entry {
    value: String,
    deadline: Option<Instant>,
}

impl MemoryOrchestrator {
    /// An empty orchestrator. Needs no runtime; the expiry task starts with the first TTL.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                wake: Arc::new(Notify::new()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Sets a key's deadline (or clears it) and makes sure a timer will fire for it.
    fn set_deadline(&self, state: &mut State, key: &str, ttl: Option<Duration>) {
        let deadline = ttl.map(|ttl| Instant::now() + ttl);
        if let Some(entry) = state.keys.get_mut(key) {
            let old = std::mem::replace(&mut entry.deadline, deadline);
            if let Some(old) = old {
                state.deadlines.remove(&(old, key.to_owned()));
            }
        }
        let Some(deadline) = deadline else { return };
        let earliest = state.deadlines.first().is_none_or(|(d, _)| deadline < *d);
        state.deadlines.insert((deadline, key.to_owned()));
        self.ensure_expiry_task(state);
        if earliest {
            self.inner.wake.notify_one();
        }
    }

    /// Starts the expiry task, again if the runtime that ran the previous one has gone.
    fn ensure_expiry_task(&self, state: &mut State) {
        if state.expiry_task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let wake = Arc::clone(&self.inner.wake);
        state.expiry_task = Some(tokio::spawn(expiry_loop(weak, wake)));
    }
}

impl Default for MemoryOrchestrator {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path can leave the state half-changed on panic, so a poisoned lock is safe.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.expire_due(Instant::now());
        state
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = state.expiry_task.take() {
            task.abort();
        }
        // Covers a task that is not yet polled: it wakes, fails to upgrade and returns.
        self.wake.notify_one();
    }
}

impl State {
    /// Removes every key whose deadline is at or before `now`, announcing each as expired;
    /// a key a watcher has no room for gets its deadline moved [`EXPIRY_RETRY`] on.
    fn expire_due(&mut self, now: Instant) {
        let mut waiting = Vec::new();
        while let Some((deadline, _)) = self.deadlines.first() {
            if *deadline > now {
                break;
            }
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(permits) = self.watchers.reserve(KeyEvent::Expire, &key) else {
                waiting.push(key);
                continue;
            };
            if let Some(entry) = self.keys.remove(&key) {
                let change = KeyChange {
                    event: KeyEvent::Expire,
                    key,
                    value: entry.value,
                };
                for permit in permits {
                    permit.send(change.clone());
                }
            }
        }
        let retry = now + EXPIRY_RETRY;
        for key in waiting {
            tracing::debug!(
                key,
                "a watcher of an expired key is full; expiring it later"
            );
            if let Some(entry) = self.keys.get_mut(&key) {
                entry.deadline = Some(retry);
                self.deadlines.insert((retry, key));
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    fn notify(&mut self, event: KeyEvent, key: &str, value: String) {
        self.watchers.offer(&KeyChange {
            event,
            key: key.to_owned(),
            value,
        });
    }
}

/// Sleeps until the earliest deadline and expires what is due. Holds only a weak reference
/// while sleeping, so dropping the last orchestrator handle ends it.
async fn expiry_loop(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let state = inner.lock();
            state.next_deadline()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[async_trait]
impl Orchestrator for MemoryOrchestrator {
    fn is_process_local(&self) -> bool {
        true
    }

    async fn create(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<bool> {
        let mut state = self.lock();
        if state.keys.contains_key(key) {
            return Ok(false);
        }
        state.keys.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                deadline: None,
            },
        );
        self.set_deadline(&mut state, key, ttl);
        state.notify(KeyEvent::Create, key, value.to_owned());
        Ok(true)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let mut state = self.lock();
        let Some(entry) = state.keys.get_mut(key).filter(|e| e.value == expected) else {
            return Ok(false);
        };
        value.clone_into(&mut entry.value);
        self.set_deadline(&mut state, key, ttl);
        state.notify(KeyEvent::Set, key, value.to_owned());
        Ok(true)
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().keys.get(key).map(|e| e.value.clone()))
    }

    async fn take(&self, key: &str) -> Result<Option<String>> {
        let mut state = self.lock();
        let Some(entry) = state.keys.remove(key) else {
            return Ok(None);
        };
        if let Some(deadline) = entry.deadline {
            state.deadlines.remove(&(deadline, key.to_owned()));
        }
        state.notify(KeyEvent::Delete, key, entry.value.clone());
        Ok(Some(entry.value))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let state = self.lock();
        Ok(state
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect())
    }

    async fn acquire_slot(&self, slot: &str, limit: u32) -> Result<bool> {
        let mut state = self.lock();
        if state.slots.contains(slot) {
            return Ok(true);
        }
        if state.slots.len() >= limit as usize {
            return Ok(false);
        }
        state.slots.insert(slot.to_owned());
        Ok(true)
    }

    async fn release_slot(&self, slot: &str) -> Result<()> {
        self.lock().slots.remove(slot);
        Ok(())
    }

    async fn slots_taken(&self) -> Result<u32> {
        let taken = self.lock().slots.len();
        Ok(u32::try_from(taken).unwrap_or(u32::MAX))
    }

    fn watch(&self, prefix: &str, events: &[KeyEvent]) -> Receiver<KeyChange> {
        self.lock().watchers.add(prefix, events)
    }
}

#[cfg(test)]
mod tests {
    //! Internals only; the behaviour is tested through the trait in
    //! `tests/orchestrator` (the shared suite and `memory.rs`).
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn closed_watchers_are_pruned() {
        let orch = MemoryOrchestrator::new();
        let _building = orch.watch("building/", &[KeyEvent::Expire]);
        let _cancel = orch.watch("cancel/", &[KeyEvent::Create]);
        let dropped = orch.watch("building/", &[KeyEvent::Expire]);
        drop(dropped);
        orch.create("building/a", "1", Some(S)).await.unwrap();
        tokio::time::sleep(2 * S).await;
        assert_eq!(orch.lock().watchers.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_handle_ends_the_expiry_task() {
        let orch = MemoryOrchestrator::new();
        let wake = Arc::clone(&orch.inner.wake);
        orch.create("k", "v", Some(3600 * S)).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&wake), 3);

        let clone = orch.clone();
        drop(orch);
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&wake), 3);
        drop(clone);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&wake), 1);
    }
}
