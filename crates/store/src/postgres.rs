//! The PostgreSQL store, for several managers sharing one database: PostgreSQL's SQL and
//! locking; the rules are shared ([`common`](crate::common)).
//!
//! Same tables, columns and semantics as the [SQLite store](crate::sqlite): times are unix
//! milliseconds (`BIGINT`), build ids hyphenated UUIDs (`TEXT`), and the JSON columns
//! (`source`, `tags`, log entries) `JSONB`, read back as their text.
//! Every query is a runtime query on a pool; the schema is `migrations/postgres`, embedded
//! and applied by [`PostgresStore::connect`] (sqlx holds an advisory lock while migrating,
//! so managers starting together migrate once). PostgreSQL 13 or later (`gen_random_uuid`).
//!
//! # Locking
//!
//! SQLite serialises every deciding write with `BEGIN IMMEDIATE`. PostgreSQL runs them
//! concurrently in `READ COMMITTED`, where each statement sees what was committed when it
//! started, so each decision is guarded by the narrowest lock that makes it atomic:
//!
//! - **Claims** take an item with `SELECT … FOR UPDATE SKIP LOCKED`, so racing managers
//!   each pick a different candidate instead of queueing on the same row. Row locks alone
//!   cannot enforce *one running item per queue name*, though: manager A locks a
//!   repository's first item while manager B, skipping that locked row, still sees no
//!   running item (A has not committed) and would take the repository's second one. So a
//!   claim also takes a transaction-level advisory lock on the queue name,
//!   `pg_try_advisory_xact_lock(class, hashtext(queue_name))`, and only then, in a new
//!   statement (a fresh snapshot that shows every claim committed before the lock was
//!   free), picks the oldest claimable item of that queue name with a plain
//!   `FOR UPDATE` and compare-and-sets its `state_id`. Whoever finds the queue name's lock
//!   taken rolls back, releasing its row lock at once, and tries the next queue name:
//!   someone else is claiming there right now. The lock is released by the commit, after
//!   the claim is visible. The picking statement waits only for holders that do not wait
//!   in turn: another claimer between its `SKIP LOCKED` pick and its *try*-lock (which
//!   fails, so it rolls back), or a one-row update of the item (complete, return, extend,
//!   delete). So claims do not deadlock one another; the one multi-row writer,
//!   `release_all_claims`, is a lone manager's start-up step, and PostgreSQL's deadlock
//!   detector would break the contrived cycle it could form. Every failed attempt adds a
//!   queue name to the ones skipped, so the loop ends. Claims are rare (one per build
//!   started): the few round trips do not matter.
//!
//!   Rejected: a partial unique index on `queue_name WHERE NOT available` would also forbid
//!   a second claim while the first item's lease is *expired*, which must be allowed (an
//!   item whose retries ran out keeps `available = false` for good); `SERIALIZABLE` would
//!   be correct too but turns every race into an aborted transaction to retry.
//! - **The per-namespace queue limit** (`create_build` with `max_queued`) counts and
//!   inserts under a blocking `pg_advisory_xact_lock(class, hashtext(namespace))`, so two
//!   submissions cannot both see room for one. Builds created without a limit do not take
//!   it: their insert is ordered after any limited one that did not count it.
//! - **Logs** (`append_logs`, `append_worker_lines`) lock their builds' rows first
//!   (`SELECT … FOR NO KEY UPDATE`, in build id order so that batches over several builds
//!   cannot deadlock), then read the next index and `last_worker_sequence` in a new
//!   statement, so concurrent appends to one build take turns and indices stay dense. All
//!   of a batch's rows go in with one `INSERT … SELECT FROM UNNEST(…)` of arrays: one
//!   statement whatever the batch size, in the same transaction (group commit), and the
//!   builds' new `last_worker_sequence` with one `UPDATE … FROM UNNEST(…)`.
//!   `NO KEY UPDATE` is the row lock an `UPDATE` of non-key columns takes: it excludes other
//!   appends, claims and phase changes of that build, but not the foreign-key checks of
//!   rows that reference it.
//! - **Phase changes** read and write the phase under the same row lock.
//! - Everything done with a claim (complete, return, extend) is a single statement that
//!   compare-and-sets `state_id`, as on SQLite.
//!
//! The advisory locks use the two-key form `(class, hash)`, whose keys never collide with
//! the single-`bigint` keys other software (sqlx's migrator among them) uses. Two names
//! whose 32-bit hashes collide merely share a lock: a claimer may skip the other name for
//! one call, and the next call finds it.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Pool, Postgres, Transaction};

use crate::common::Backend;
use crate::common::logs::{LastSequences, LogRows};
use crate::common::rows::{
    CLAIMABLE, CLAIMABLE_COLUMNS, ClaimableRow, LOG_HEAD_COLUMNS, LogHead, millis,
};
use crate::{Result, StoreError};

/// The schema, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections of the pool.
const MAX_CONNECTIONS: u32 = 10;
/// Advisory-lock class of queue names (claims): "bm" and 1.
const QUEUE_NAME_LOCK: i32 = 0x626d_0001;
/// Advisory-lock class of namespaces (the queue limit): "bm" and 2.
const NAMESPACE_LOCK: i32 = 0x626d_0002;

/// The queue name of the oldest claimable item whose queue name is not in `$2`, skipping
/// rows other transactions hold and locking the one it returns.
static CANDIDATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT q.queue_name FROM queue_items q \
         WHERE {CLAIMABLE} AND q.queue_name <> ALL($2) \
         ORDER BY q.id LIMIT 1 FOR UPDATE OF q SKIP LOCKED"
    )
});

/// The oldest claimable item of queue name `$2`, locked: run while holding the queue
/// name's advisory lock, so no other claim on it is in flight.
static CLAIMABLE_IN_QUEUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMABLE_COLUMNS} FROM queue_items q \
         WHERE q.queue_name = $2 AND {CLAIMABLE} \
         ORDER BY q.id LIMIT 1 FOR UPDATE OF q"
    )
});

/// The log heads of the builds in `$1`.
static LOG_HEADS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {LOG_HEAD_COLUMNS} FROM builds b WHERE b.id = ANY($1)"));

/// The [`Store`](crate::Store) on a PostgreSQL database, safe to share between managers.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`)
    /// and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect(url)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Migrate(Box::new(e))))?;
        Ok(PostgresStore { pool })
    }

    /// Closes every connection; calls made afterwards fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Backend for PostgresStore {
    type Db = Postgres;

    // seq is the insertion order (SQLite's rowid).
    const NEWEST_FIRST: &'static str = "created_at DESC, seq DESC";
    const LOCK_BUILD: &'static str = " FOR NO KEY UPDATE";
    const RANDOM_STATE_ID: &'static str = "gen_random_uuid()::text";

    fn pool(&self) -> &Pool<Postgres> {
        &self.pool
    }

    async fn begin_deciding(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn probe(&self) -> Result<()> {
        let _: (i64,) = sqlx::query_as("SELECT CAST(1 AS BIGINT)")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    async fn lock_namespace(conn: &mut PgConnection, namespace: &str) -> Result<()> {
        // Held to the commit: the next limited submission to this namespace counts after
        // this one's item is visible.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(NAMESPACE_LOCK)
            .bind(namespace)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn lock_claimable(
        &self,
        now: DateTime<Utc>,
        skip: &mut Vec<String>,
    ) -> Result<Option<(Transaction<'static, Postgres>, ClaimableRow)>> {
        loop {
            // One transaction per attempt: a failed one rolls back and keeps no row lock.
            let mut tx = self.pool.begin().await?;
            let Some(name) = sqlx::query_scalar::<_, String>(&CANDIDATE)
                .bind(millis(now))
                .bind(skip.as_slice())
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.rollback().await?;
                return Ok(None);
            };
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
                    .bind(QUEUE_NAME_LOCK)
                    .bind(&name)
                    .fetch_one(&mut *tx)
                    .await?;
            // A new statement, so a new snapshot: it sees every claim on this queue name
            // committed before the lock was free. The oldest claimable item may be an
            // older one than the candidate, which another claimer had locked a moment ago.
            let item = match locked {
                true => {
                    sqlx::query_as(&CLAIMABLE_IN_QUEUE)
                        .bind(millis(now))
                        .bind(&name)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                false => None,
            };
            match item {
                Some(item) => return Ok(Some((tx, item))),
                None => {
                    tx.rollback().await?;
                    skip.push(name);
                }
            }
        }
    }

    async fn lock_log_heads(conn: &mut PgConnection, builds: &[&str]) -> Result<Vec<LogHead>> {
        // Concurrent appends to these builds wait here, in build id order so that batches
        // over several builds cannot deadlock; the heads are read after, in a new snapshot
        // that includes the rows of whoever held the locks before.
        sqlx::query("SELECT 1 FROM builds WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(builds)
            .execute(&mut *conn)
            .await?;
        Ok(sqlx::query_as(&LOG_HEADS)
            .bind(builds)
            .fetch_all(conn)
            .await?)
    }

    async fn insert_logs(conn: &mut PgConnection, rows: &LogRows<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO build_logs (build_id, idx, entry) \
             SELECT t.build_id, t.idx, t.entry::jsonb \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS t(build_id, idx, entry)",
        )
        .bind(rows.builds.as_slice())
        .bind(rows.indices.as_slice())
        .bind(rows.entries.as_slice())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn set_last_sequences(conn: &mut PgConnection, last: &LastSequences<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET last_worker_sequence = v.sequence \
             FROM UNNEST($1::text[], $2::integer[]) AS v(id, sequence) \
             WHERE builds.id = v.id",
        )
        .bind(last.builds.as_slice())
        .bind(last.sequences.as_slice())
        .execute(conn)
        .await?;
        Ok(())
    }
}
