//! The orchestrator holds what is alive right now: job records with deadlines, the worker
//! slots that enforce ALLOWED_WORKER_COUNT, and the events that tell managers a job key was
//! created, changed, deleted or expired.
//!
//! Keys follow Quay's layout below a prefix (`<prefix>building/<uuid>`, `.../cancel/<uuid>`),
//! so the Redis backend can share a Redis with Quay's own tooling. Losing the orchestrator
//! must never lose a build: the store is the source of truth and can expire what the
//! orchestrator forgot.

use std::time::Duration;

use async_trait::async_trait;

pub mod memory;
pub mod redis;
mod watchers;

/// How many changes a watcher's channel holds before the orchestrator stops delivering to
/// it (see [`Orchestrator::watch`]).
pub const WATCH_CAPACITY: usize = 1024;

/// What went wrong in the orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The backend cannot be reached.
    #[error("orchestrator unavailable: {0}")]
    Unavailable(String),
}

/// Shorthand for orchestrator results.
pub type Result<T, E = OrchestratorError> = std::result::Result<T, E>;

/// What happened to a key (the numbers are Quay's, as its event channel carries them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// The key was created.
    Create = 1,
    /// Its value was replaced (a compare-and-set).
    Set = 2,
    /// It was taken.
    Delete = 3,
    /// Its TTL ran out; exactly one manager sees this.
    Expire = 4,
}

/// A change to a key, with the value it had (for expiry and delete: its last value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// What happened.
    pub event: KeyEvent,
    /// The key without the orchestrator prefix.
    pub key: String,
    /// The value written, or the last value of a deleted or expired key.
    pub value: String,
}

/// Job records with time-to-live, worker slots and key events.
#[async_trait]
pub trait Orchestrator: Send + Sync + 'static {
    /// True when the orchestrator lives and dies with this process (the in-memory one):
    /// then no other manager holds jobs, and claims left in the store by an earlier
    /// process can be returned at start.
    fn is_process_local(&self) -> bool;

    /// Creates a key that must not exist; false when it does. `ttl` makes it expire.
    async fn create(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<bool>;

    /// Sets a key's value and TTL when its current value is `expected`; false when the key
    /// is gone (expired, deleted) or was changed meanwhile, in which case nothing is
    /// written. Read-modify-write of a job record across managers rests on this.
    async fn compare_and_set(
        &self,
        key: &str,
        expected: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool>;

    /// A key's value.
    async fn get(&self, key: &str) -> Result<Option<String>>;

    /// Deletes a key and returns its value; `None` when it did not exist. Exactly one of
    /// several racing callers gets the value, which makes it the one to act on it.
    async fn take(&self, key: &str) -> Result<Option<String>>;

    /// Every key below a prefix, with its value.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>>;

    /// Takes one of `limit` worker slots as `slot` (an id the caller chose); false when all
    /// are taken. Taking a slot that is taken already succeeds without taking another.
    async fn acquire_slot(&self, slot: &str, limit: u32) -> Result<bool>;

    /// Gives a slot back (no-op when it is not taken).
    async fn release_slot(&self, slot: &str) -> Result<()>;

    /// How many slots are taken.
    async fn slots_taken(&self) -> Result<u32>;

    /// Subscribes to the changes of the kinds in `events` to keys below `prefix`, through a
    /// channel of [`WATCH_CAPACITY`] changes. A dropped receiver ends the subscription.
    ///
    /// When the channel is full, a [`KeyEvent::Expire`] is never lost: the in-memory
    /// orchestrator leaves the key unexpired and tries again shortly after
    /// ([`memory::EXPIRY_RETRY`]), so the expiry waits for the watcher; the Redis one has
    /// claimed the key already, so whatever claimed it (a call, the sweep, the event
    /// subscription) waits for room, and its sweep still finds what a held-back subscription
    /// delays. Other kinds are not relied on within one process: the in-memory orchestrator
    /// drops them with a warning; the Redis one waits for room as for expiries.
    fn watch(&self, prefix: &str, events: &[KeyEvent]) -> tokio::sync::mpsc::Receiver<KeyChange>;
}
