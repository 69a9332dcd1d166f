//! The store's rules, written once for both backends.
//!
//! A backend ([`Backend`]) brings only what differs between the databases: how a deciding
//! transaction begins and what it locks, how a claim finds its item among other managers,
//! and how a batch of log rows goes in. Everything else is here, once: the statements both
//! databases understand, the queue's compare-and-set on `state_id` ([`store`]), how rows
//! become builds, queue states and claims ([`rows`]), and which lines of a batch are stored
//! at which index ([`logs`]). Every [`Backend`] is a [`Store`](crate::Store) through the
//! one implementation in [`store`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgQueryResult;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Database, Pool, Transaction};

use crate::Result;

pub(crate) mod logs;
mod maintenance;
pub(crate) mod rows;
mod store;
mod tags;

use logs::{LastSequences, LogRows};
use rows::{ClaimableRow, LogHead};

/// How many rows a statement changed: each driver's result says, under no common trait.
pub(crate) trait RowsAffected {
    fn count(&self) -> u64;
}

impl RowsAffected for SqliteQueryResult {
    fn count(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for PgQueryResult {
    fn count(&self) -> u64 {
        self.rows_affected()
    }
}

/// A connection of a backend's database (a [`Transaction`] dereferences to one).
pub(crate) type Conn<B> = <<B as Backend>::Db as Database>::Connection;

/// What a backend brings to the shared store: its SQL where the databases differ, and its
/// locking. Parameters are written `$N`, which both drivers understand.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// The sqlx driver.
    type Db: Database<QueryResult: RowsAffected>;

    /// The `ORDER BY` of a repository's builds, newest first: creation time, then insertion
    /// order between builds created in the same millisecond.
    const NEWEST_FIRST: &'static str;
    /// Appended to the `SELECT` of a build row whose values decide a write, to lock the row
    /// until the commit (empty where the transaction holds the write lock already).
    const LOCK_BUILD: &'static str;
    /// An SQL expression for a fresh, random `state_id`, different for every row.
    const RANDOM_STATE_ID: &'static str;

    /// The pool every call runs on.
    fn pool(&self) -> &Pool<Self::Db>;

    /// Begins a transaction whose reads decide its writes.
    async fn begin_deciding(&self) -> Result<Transaction<'static, Self::Db>>;

    /// Answers when the database does; where the database can refuse writes while still
    /// answering reads (SQLite on a full disk), when it takes a write.
    async fn probe(&self) -> Result<()>;

    /// Makes counting a namespace's queue items and adding one atomic, until the commit.
    async fn lock_namespace(conn: &mut Conn<Self>, namespace: &str) -> Result<()>;

    /// Begins a claim's transaction, holding the oldest claimable item whose queue name is
    /// not in `skip` safe from other claimers until the commit; `None` when there is none.
    /// May add queue names to `skip`; the caller adds the one whose claim failed.
    async fn lock_claimable(
        &self,
        now: DateTime<Utc>,
        skip: &mut Vec<String>,
    ) -> Result<Option<(Transaction<'static, Self::Db>, ClaimableRow)>>;

    /// The log heads of those of `builds` (sorted, without duplicates) that exist, safe
    /// from other appends until the commit.
    async fn lock_log_heads(conn: &mut Conn<Self>, builds: &[&str]) -> Result<Vec<LogHead>>;

    /// Inserts rows into `build_logs`.
    async fn insert_logs(conn: &mut Conn<Self>, rows: &LogRows<'_>) -> Result<()>;

    /// Writes builds' `last_worker_sequence`.
    async fn set_last_sequences(conn: &mut Conn<Self>, last: &LastSequences<'_>) -> Result<()>;

    /// What appends worker lines instead of the shared transaction, where the backend has
    /// a cheaper way for its database; `None` (the default) runs the shared one.
    fn line_appender(&self) -> Option<&dyn LineAppender> {
        None
    }
}

/// Appends a batch of worker lines as [`Store::append_worker_lines`](crate::Store) says,
/// with the rules of [`logs::LogBatch`], in a backend's own way.
#[async_trait]
pub(crate) trait LineAppender: Send + Sync {
    /// Appends `lines` (not empty): per line, the index it was stored at.
    async fn append(&self, lines: &[crate::WorkerLine]) -> Result<Vec<Option<u64>>>;
}
