//! The in-memory orchestrator: one process, no persistence. Used by single-manager
//! deployments (`MEM_*` orchestrator keys) and by tests.
//!
//! All state sits behind one std mutex and every event is sent while it is held, so the
//! order watchers see matches the order of the changes, and expiry and `take` can never
//! both claim a key. Keys whose deadline has passed are expired on every access as well as
//! by the background timer, so results never depend on when that timer task gets to run.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{KeyChange, KeyEvent, Orchestrator, Result};

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
    watchers: Vec<Watcher>,
    expiry_task: Option<JoinHandle<()>>,
}

struct Entry {
    value: String,
    deadline: Option<Instant>,
}

struct Watcher {
    prefix: String,
    tx: UnboundedSender<KeyChange>,
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
    /// Removes every key whose deadline is at or before `now`, announcing each as expired.
    fn expire_due(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.deadlines.first() {
            if *deadline > now {
                break;
            }
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some(entry) = self.keys.remove(&key) {
                self.notify(KeyEvent::Expire, &key, entry.value);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    fn notify(&mut self, event: KeyEvent, key: &str, value: String) {
        self.watchers.retain(|w| {
            if !key.starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            let change = KeyChange {
                event,
                key: key.to_owned(),
                value: value.clone(),
            };
            w.tx.send(change).is_ok()
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

    async fn acquire_slot(&self, holder: &str, limit: u32) -> Result<bool> {
        let mut state = self.lock();
        if state.slots.contains(holder) {
            return Ok(true);
        }
        if state.slots.len() >= limit as usize {
            return Ok(false);
        }
        state.slots.insert(holder.to_owned());
        Ok(true)
    }

    async fn release_slot(&self, holder: &str) -> Result<()> {
        self.lock().slots.remove(holder);
        Ok(())
    }

    async fn slots_taken(&self) -> Result<u32> {
        let taken = self.lock().slots.len();
        Ok(u32::try_from(taken).unwrap_or(u32::MAX))
    }

    fn watch(&self, prefix: &str) -> UnboundedReceiver<KeyChange> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        state.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn change(event: KeyEvent, key: &str, value: &str) -> KeyChange {
        KeyChange {
            event,
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn key_expires_after_ttl_with_its_last_value() {
        let orch = MemoryOrchestrator::new();
        let mut rx = orch.watch("");
        let start = Instant::now();
        assert!(orch.create("building/a", "v1", Some(5 * S)).await.unwrap());
        assert_eq!(
            rx.recv().await,
            Some(change(KeyEvent::Create, "building/a", "v1"))
        );

        tokio::time::sleep(4 * S).await;
        assert_eq!(orch.get("building/a").await.unwrap().as_deref(), Some("v1"));
        assert!(rx.try_recv().is_err());

        // Nothing touches the orchestrator here: the background task must fire on its own.
        let expired = rx.recv().await.unwrap();
        assert_eq!(expired, change(KeyEvent::Expire, "building/a", "v1"));
        assert_eq!(start.elapsed(), 5 * S);
        assert_eq!(orch.get("building/a").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_swap_resets_the_ttl() {
        let orch = MemoryOrchestrator::new();
        let mut rx = orch.watch("building/");
        let start = Instant::now();
        orch.create("building/a", "v1", Some(5 * S)).await.unwrap();
        tokio::time::sleep(3 * S).await;
        assert!(
            orch.compare_and_set("building/a", "v1", "v2", Some(5 * S))
                .await
                .unwrap()
        );
        tokio::time::sleep(3 * S).await;
        assert_eq!(orch.get("building/a").await.unwrap().as_deref(), Some("v2"));

        assert_eq!(rx.recv().await.unwrap().event, KeyEvent::Create);
        assert_eq!(
            rx.recv().await,
            Some(change(KeyEvent::Set, "building/a", "v2"))
        );
        assert_eq!(
            rx.recv().await,
            Some(change(KeyEvent::Expire, "building/a", "v2"))
        );
        assert_eq!(start.elapsed(), 8 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_swap_without_ttl_removes_the_expiry() {
        let orch = MemoryOrchestrator::new();
        orch.create("k", "v1", Some(5 * S)).await.unwrap();
        assert!(orch.compare_and_set("k", "v1", "v2", None).await.unwrap());
        tokio::time::sleep(3600 * S).await;
        assert_eq!(orch.get("k").await.unwrap().as_deref(), Some("v2"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_wakes_the_expiry_task() {
        let orch = MemoryOrchestrator::new();
        let mut rx = orch.watch("");
        let start = Instant::now();
        orch.create("late", "l", Some(100 * S)).await.unwrap();
        // Let the task go to sleep towards the late deadline first.
        tokio::time::sleep(S).await;
        orch.create("early", "e", Some(2 * S)).await.unwrap();
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        assert_eq!(
            rx.recv().await,
            Some(change(KeyEvent::Expire, "early", "e"))
        );
        assert_eq!(start.elapsed(), 3 * S);
        assert_eq!(rx.recv().await, Some(change(KeyEvent::Expire, "late", "l")));
        assert_eq!(start.elapsed(), 100 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn take_before_the_deadline_wins_over_expiry() {
        let orch = MemoryOrchestrator::new();
        let mut rx = orch.watch("");
        orch.create("k", "v", Some(5 * S)).await.unwrap();
        tokio::time::sleep(5 * S - Duration::from_millis(1)).await;
        assert_eq!(orch.take("k").await.unwrap().as_deref(), Some("v"));
        tokio::time::sleep(60 * S).await;

        assert_eq!(rx.recv().await.unwrap().event, KeyEvent::Create);
        assert_eq!(rx.recv().await, Some(change(KeyEvent::Delete, "k", "v")));
        assert!(rx.try_recv().is_err());
        assert_eq!(orch.take("k").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn take_racing_expiry_claims_each_key_exactly_once() {
        let orch = MemoryOrchestrator::new();
        let mut rx = orch.watch("");
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            let ttl = Duration::from_millis(990 + 2 * i as u64);
            orch.create(key, "v", Some(ttl)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1040)).await;
        let mut taken = HashSet::new();
        for key in &keys {
            if orch.take(key).await.unwrap().is_some() {
                taken.insert(key.clone());
            }
        }
        tokio::time::sleep(10 * S).await;

        let mut deleted = HashSet::new();
        let mut expired = HashSet::new();
        while let Ok(c) = rx.try_recv() {
            match c.event {
                KeyEvent::Create => {}
                KeyEvent::Delete => assert!(deleted.insert(c.key)),
                KeyEvent::Expire => assert!(expired.insert(c.key)),
                KeyEvent::Set => panic!("unexpected set"),
            }
        }
        assert_eq!(deleted, taken);
        assert!(deleted.is_disjoint(&expired));
        assert_eq!(deleted.len() + expired.len(), keys.len());
        assert!(!taken.is_empty() && !expired.is_empty());
    }

    #[tokio::test]
    async fn create_on_an_existing_key_fails_and_a_swap_on_a_missing_or_changed_one_writes_nothing()
    {
        let orch = MemoryOrchestrator::new();
        let mut rx = orch.watch("");
        assert!(orch.create("k", "v1", None).await.unwrap());
        assert!(!orch.create("k", "v2", None).await.unwrap());
        assert_eq!(orch.get("k").await.unwrap().as_deref(), Some("v1"));
        assert!(
            !orch
                .compare_and_set("missing", "", "v", Some(S))
                .await
                .unwrap()
        );
        assert!(
            !orch
                .compare_and_set("k", "stale", "v3", None)
                .await
                .unwrap()
        );
        assert_eq!(orch.get("missing").await.unwrap(), None);

        assert_eq!(rx.recv().await, Some(change(KeyEvent::Create, "k", "v1")));
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn list_returns_only_keys_below_the_prefix() {
        let orch = MemoryOrchestrator::new();
        for key in ["a/2", "a/1", "ab/3", "b/1", "a"] {
            orch.create(key, &format!("v-{key}"), None).await.unwrap();
        }
        let listed = orch.list("a/").await.unwrap();
        let want = vec![
            ("a/1".to_owned(), "v-a/1".to_owned()),
            ("a/2".to_owned(), "v-a/2".to_owned()),
        ];
        assert_eq!(listed, want);
        assert_eq!(orch.list("").await.unwrap().len(), 5);
        assert!(orch.list("c").await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_hold_their_limit_under_concurrency() {
        let orch = MemoryOrchestrator::new();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let orch = orch.clone();
                tokio::spawn(async move { orch.acquire_slot(&format!("h{i}"), 3).await.unwrap() })
            })
            .collect();
        let mut winners = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            if task.await.unwrap() {
                winners.push(format!("h{i}"));
            }
        }
        assert_eq!(winners.len(), 3);
        assert_eq!(orch.slots_taken().await.unwrap(), 3);

        // Holding a slot already is not taking a second one.
        assert!(orch.acquire_slot(&winners[0], 3).await.unwrap());
        assert_eq!(orch.slots_taken().await.unwrap(), 3);
        assert!(!orch.acquire_slot("late", 3).await.unwrap());

        orch.release_slot(&winners[0]).await.unwrap();
        orch.release_slot("nobody").await.unwrap();
        assert_eq!(orch.slots_taken().await.unwrap(), 2);
        assert!(orch.acquire_slot("late", 3).await.unwrap());
        assert_eq!(orch.slots_taken().await.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn watchers_see_only_their_prefix_and_closed_ones_are_dropped() {
        let orch = MemoryOrchestrator::new();
        let mut building = orch.watch("building/");
        let mut cancel = orch.watch("cancel/");
        let dropped = orch.watch("building/");
        drop(dropped);

        orch.create("building/a", "1", Some(S)).await.unwrap();
        orch.create("cancel/a", "2", None).await.unwrap();
        orch.compare_and_set("cancel/a", "2", "3", None)
            .await
            .unwrap();
        orch.take("cancel/a").await.unwrap();
        tokio::time::sleep(2 * S).await;

        assert_eq!(
            building.recv().await,
            Some(change(KeyEvent::Create, "building/a", "1"))
        );
        assert_eq!(
            building.recv().await,
            Some(change(KeyEvent::Expire, "building/a", "1"))
        );
        assert!(building.try_recv().is_err());
        assert_eq!(
            cancel.recv().await,
            Some(change(KeyEvent::Create, "cancel/a", "2"))
        );
        assert_eq!(
            cancel.recv().await,
            Some(change(KeyEvent::Set, "cancel/a", "3"))
        );
        assert_eq!(
            cancel.recv().await,
            Some(change(KeyEvent::Delete, "cancel/a", "3"))
        );
        assert!(cancel.try_recv().is_err());
        assert_eq!(orch.lock().watchers.len(), 2);
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
