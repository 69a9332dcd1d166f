//! The durable state of buildman: builds, the queue and build logs.
//!
//! [`Store`] is what the manager and the servers use; each backend is one module
//! ([`sqlite`] embedded, [`postgres`] for several managers sharing a database, [`quay`] on
//! Quay's own database and build-log Redis, in place of Quay's build manager). The store is
//! the source of truth for what happened: the orchestrator may forget, the store may not.

use std::time::Duration;

use async_trait::async_trait;
use buildman_core::{Build, BuildId, ClaimedItem, LogEntry, NewBuild, Phase, Requeue};
use chrono::{DateTime, Utc};

mod common;
pub mod postgres;
pub mod quay;
pub mod sqlite;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The namespace already has its maximum of queued builds.
    #[error("namespace {namespace} already has {limit} queued builds; wait for some to finish")]
    QueueFull { namespace: String, limit: u32 },
    /// No such build.
    #[error("build {0} not found")]
    NotFound(BuildId),
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// A row held something this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A worker's line for an attempt that is over (the build reached a final phase, or a
    /// later attempt runs): refused, nothing of the batch written.
    #[error("build {0}: the attempt this line belongs to is over")]
    AttemptOver(BuildId),
    /// A database whose schema this version does not know (Quay's, whose migrations are
    /// Quay's own): the message names the version found and the ones supported.
    #[error("{0}")]
    UnsupportedSchema(String),
    /// What this backend does not do, with what to use instead (in Quay mode, Quay's web
    /// tier creates builds).
    #[error("{0}")]
    Unsupported(String),
    /// A backend other than the database failed or is unreachable (the quay backend's
    /// build-log Redis); the message names it.
    #[error("{0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    /// A column whose value does not decode makes the row corrupt; anything else is the
    /// database's failure.
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::ColumnDecode { index, source } => {
                StoreError::Corrupt(format!("column {index}: {source}"))
            }
            e => StoreError::Database(e),
        }
    }
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The queue state of a build, as shown to users and used by the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Retries left.
    pub retries_remaining: u32,
    /// False while a manager holds a claim on the item.
    pub available: bool,
    /// When the item may next be claimed.
    pub available_after: DateTime<Utc>,
    /// When the current claim's lease runs out, if claimed.
    pub processing_expires: Option<DateTime<Utc>>,
}

/// One log line a worker sent, with the sequence number it carried and the attempt (the
/// claim's `state_id`) its token names; `None` for a token that names none (issued before
/// tokens named attempts).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerLine {
    pub build: BuildId,
    pub attempt: Option<String>,
    pub sequence: i32,
    pub entry: LogEntry,
}

/// Which builds [`Store::find_builds`] answers; every field left `None` matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildFilter {
    /// Only builds of this namespace.
    pub namespace: Option<String>,
    /// Only builds of repositories of this name (in any namespace, unless `namespace` is
    /// set too).
    pub repository: Option<String>,
    /// Only builds in this phase.
    pub phase: Option<Phase>,
    /// Only builds that still have (`true`) or no longer have (`false`) a queue item: with
    /// phase `internalerror`, those that will be retried or those that expired.
    pub queued: Option<bool>,
}

/// A page of a build's log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogPage {
    /// Index of the first entry in `entries`.
    pub start: u64,
    /// Number of entries in the whole log.
    pub total: u64,
    pub entries: Vec<LogEntry>,
}

/// The queue and the live builds as the metrics show them, counted over every manager.
/// The three queue counts are Quay's (`WorkQueue.get_metrics`): queue names (one per
/// repository), not items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Queue names with an item claimed under a lease still running.
    pub locked: u64,
    /// Queue names with an item claimable now (due, retries left, unclaimed or its lease
    /// run out).
    pub available: u64,
    /// Of those, the names with no claimed item: what could start at once.
    pub available_unlocked: u64,
    /// When the oldest build still waiting in the queue (unclaimed) was submitted.
    pub oldest_waiting: Option<DateTime<Utc>>,
    /// How many builds are in each phase that is not final (phases with none are left out).
    pub live_phases: Vec<(Phase, u64)>,
}

/// Builds, the queue and logs, behind one interface so backends can be swapped.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new build in phase `waiting` with its queue item (available now, with
    /// `retries` retries), in one transaction. With `max_queued` set, refuses with
    /// [`StoreError::QueueFull`] when the namespace already has that many queue items.
    async fn create_build(
        &self,
        new: NewBuild,
        retries: u32,
        max_queued: Option<u32>,
    ) -> Result<Build>;

    /// One build.
    async fn get_build(&self, id: BuildId) -> Result<Option<Build>>;

    /// A repository's builds, newest first; `since` keeps those created at or after it.
    async fn list_builds(
        &self,
        namespace: &str,
        repository: &str,
        limit: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Build>>;

    /// Builds of every repository matching `filter`, newest first, at most `limit`.
    async fn find_builds(&self, filter: &BuildFilter, limit: u32) -> Result<Vec<Build>>;

    /// Sets the phase when the current phase is one of `from` (all phases when `from` is
    /// empty); returns the phase the build had before, or `None` when nothing changed
    /// because the current phase was not allowed. `error` replaces the stored error; a
    /// build that reaches `complete` keeps none (of an earlier attempt).
    /// This compare-and-set is what settles races between a cancel and a worker. When the
    /// phase changed (it was not `to` already), `entry` is appended to the build's log in
    /// the same transaction, so phase entries are logged in the order of the changes; and
    /// the build's `scheduled_at` (first `build-scheduled`) and `finished_at` (a final
    /// phase; cleared by any other) follow.
    async fn set_phase(
        &self,
        id: BuildId,
        to: Phase,
        from: &[Phase],
        error: Option<&str>,
        entry: Option<&LogEntry>,
    ) -> Result<Option<Phase>>;

    /// DetermineCachedTag: the first of `tags` that a complete build of
    /// `namespace/repository` pushed (a later build's push of a tag counts, whatever became
    /// of the build's record since).
    async fn pushed_tag(
        &self,
        namespace: &str,
        repository: &str,
        tags: &[String],
    ) -> Result<Option<String>>;

    /// Records which executor started the current attempt's worker.
    async fn set_executor(&self, id: BuildId, executor: &str) -> Result<()>;

    /// Records where an unpushed result was written.
    async fn set_result_location(&self, id: BuildId, location: &str) -> Result<()>;

    /// Claims the oldest claimable item (see [`buildman_core::queue`]) with a lease of
    /// `lease`, taking one retry. `None` when nothing is claimable.
    async fn claim(&self, now: DateTime<Utc>, lease: Duration) -> Result<Option<ClaimedItem>>;

    /// Deletes a claimed item (the build is done with the queue). False if the claim was lost.
    async fn complete_item(&self, item: &ClaimedItem) -> Result<bool>;

    /// Deletes a claimed item whose build failed with no retry left: it will not run again.
    /// Like [`Store::complete_item`]; a store that notifies build failures (Quay's
    /// `build_failure` for a build that expired on its last retry) does so here. False if
    /// the claim was lost.
    async fn give_up_item(&self, item: &ClaimedItem) -> Result<bool>;

    /// Returns a claimed item to the queue as `requeue` says: available after its delay,
    /// its retry given back or not, its count of silent restores stored. False if the claim
    /// was lost.
    async fn return_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        requeue: &Requeue,
    ) -> Result<bool>;

    /// Pushes a claimed item's lease out to `now + lease`, writing only when that moves it
    /// by more than `minimum`. False if the claim was lost.
    async fn extend_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        lease: Duration,
        minimum: Duration,
    ) -> Result<bool>;

    /// Returns every claimed item to the queue at once, retry restored; returns how many.
    /// Only for a manager that knows no other holds claims (a process-local
    /// orchestrator): the claims of a process that died are nobody's.
    async fn release_all_claims(&self, now: DateTime<Utc>) -> Result<u64>;

    /// Every queue item under a claim (its lease run out or not), as that claim, at most
    /// `limit`, in no particular order. The manager compares them with the
    /// orchestrator's live jobs: a claim no job record names for a while was lost with the
    /// orchestrator's data (see `JobEnd::RecordLost`). One query:
    /// `SELECT ... FROM queue_items WHERE NOT available LIMIT $1`.
    async fn claimed_items(&self, limit: u32) -> Result<Vec<ClaimedItem>>;

    /// Deletes a build's queue item whatever its claim (used by cancel).
    async fn delete_item(&self, build: BuildId) -> Result<()>;

    /// The queue state of a build, `None` once it left the queue.
    async fn queue_state(&self, build: BuildId) -> Result<Option<QueueState>>;

    /// The earliest `available_after` in the future among waiting items, so the scheduler
    /// can sleep exactly until then.
    async fn next_available_after(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>>;

    /// Appends entries to a build's log in one transaction; returns the new total.
    async fn append_logs(&self, id: BuildId, entries: &[LogEntry]) -> Result<u64>;

    /// Appends lines workers sent, in one transaction (group commit over many builds),
    /// skipping each line whose sequence number is not above the last one stored for its
    /// build in this attempt: a line re-sent after a reconnect is stored once. Returns,
    /// per line, the index in its build's log it was stored at, or `None` when it was
    /// stored already. A line of an attempt that is over (its build is in
    /// a final phase, or its `attempt` is not the build's current one) fails the batch with
    /// [`StoreError::AttemptOver`].
    async fn append_worker_lines(&self, lines: &[WorkerLine]) -> Result<Vec<Option<u64>>>;

    /// Entries from index `start` (at most `limit`, and no more than `max_bytes` of them as
    /// stored, though always the first one), with the log's total length.
    async fn read_logs(
        &self,
        id: BuildId,
        start: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<LogPage>;

    /// Answers when the database does (the readiness check).
    async fn ping(&self) -> Result<()>;

    /// The queue's and the live builds' counts at `now` (see [`QueueStats`]).
    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats>;

    /// Up to `limit` builds that ended for good (complete, error, cancelled, or
    /// internalerror with no retry left: no queue item) at or before `ended_before`, whose
    /// uploaded context was not yet deleted (see [`Store::mark_contexts_pruned`]), oldest
    /// first.
    async fn ended_with_context(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Build>>;

    /// Records that the uploaded contexts of these builds are deleted (or that they had none).
    async fn mark_contexts_pruned(&self, builds: &[BuildId]) -> Result<()>;

    /// Deletes up to `limit` builds that ended for good at or before `ended_before` and whose
    /// context is pruned, with their logs; returns how many.
    async fn delete_ended_builds(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64>;
}
