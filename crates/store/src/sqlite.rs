//! The embedded SQLite store: SQLite's SQL and locking; the rules are shared
//! ([`common`](crate::common)).
//!
//! One database file in WAL mode, shared safely by several processes. Every write that
//! decides something (a claim, a phase compare-and-set, the per-namespace queue limit, the
//! next log index) runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock
//! up front: concurrent writers queue on the busy timeout instead of failing on a lock
//! upgrade. So no row or advisory locks are needed here. SQLite binds no arrays: a batch of
//! ids or log rows goes in as one JSON array, unpacked by `json_each`, so a batch costs the
//! same few statements whatever its size. Worker lines, the hottest write, go another way:
//! on a connection and a thread of their own (`sqlite/appender.rs`), one message per batch.
//!
//! Times are stored as unix milliseconds, so they come back truncated to the millisecond.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Pool, Sqlite, Transaction};

use crate::common::logs::{LastSequences, LogRows};
use crate::common::rows::{
    CLAIMABLE, CLAIMABLE_COLUMNS, ClaimableRow, LOG_HEAD_COLUMNS, LogHead, millis, unserialisable,
};
use crate::common::{Backend, LineAppender};
use crate::{Result, StoreError};

mod appender;
use appender::Appender;

/// The schema, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// How many times opening runs the migrations before it reports their failure: more than
/// there are migrations, so a racing opener can follow another one migration behind.
const MIGRATE_TRIES: usize = 16;

/// How long a statement waits for another connection's (or process's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of a file database's pool: WAL lets readers run beside the one writer.
const MAX_CONNECTIONS: u32 = 8;

/// The oldest claimable item whose queue name is not in the JSON array `$2`.
static CLAIMABLE_ITEM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMABLE_COLUMNS} FROM queue_items q \
         WHERE {CLAIMABLE} AND q.queue_name NOT IN (SELECT value FROM json_each($2)) \
         ORDER BY q.id LIMIT 1"
    )
});

/// The log heads of the builds in the JSON array `$1`.
static LOG_HEADS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {LOG_HEAD_COLUMNS} FROM builds b \
         WHERE b.id IN (SELECT value FROM json_each($1))"
    )
});

/// The [`Store`](crate::Store) on an SQLite database file (or an in-memory database, for
/// tests).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Worker lines' own connection and thread (none for an in-memory database, which a
    /// second connection would not see).
    appender: Option<Arc<Appender>>,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database file at `path`, in WAL
    /// mode, and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let io = |e| StoreError::Database(sqlx::Error::Io(e));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        // The database holds deploy keys and the build history: only its owner reads it
        // (SQLite gives its -wal and -shm files the database file's mode).
        private_file(path).map_err(io)?;
        let options = SqliteConnectOptions::new().filename(path);
        Self::connect(options, false).await
    }

    /// Opens a database by sqlx URL (`sqlite:///var/lib/buildman/db`, `sqlite::memory:`),
    /// creating it if missing, and brings its schema up to date.
    pub async fn open_url(url: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::connect(options, in_memory).await
    }

    /// Closes every connection; calls made afterwards fail.
    pub async fn close(&self) {
        if let Some(appender) = &self.appender {
            appender.close().await;
        }
        self.pool.close().await;
    }

    /// Applies the connection settings, opens the pool and migrates.
    async fn connect(options: SqliteConnectOptions, in_memory: bool) -> Result<SqliteStore> {
        let options = options
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal);
        let pool = if in_memory {
            // Each connection to `:memory:` could be a database of its own, and the database
            // dies with its last connection: one connection, kept for the pool's life.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options.clone())
                .await?
        } else {
            SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                // A connection to a local file does not go stale the way a network one
                // does; the check before each use was a round trip to its thread per call.
                .test_before_acquire(false)
                .after_release(|conn, _| Box::pin(discard_if_in_transaction(conn)))
                .connect_with(options.clone().journal_mode(SqliteJournalMode::Wal))
                .await?
        };
        // Two processes opening a new file at once can both see a migration unapplied; the
        // loser fails applying what the winner applied, and may do so at each migration
        // while the winner is one ahead. Running again picks up after the winner (and still
        // reports a real problem, on the last try).
        let mut tries = 1;
        while let Err(e) = MIGRATOR.run(&pool).await {
            if tries == MIGRATE_TRIES {
                return Err(StoreError::Database(sqlx::Error::Migrate(Box::new(e))));
            }
            tracing::debug!(error = %e, "migrating the store failed; trying again");
            tries += 1;
        }
        let appender = match in_memory {
            true => None,
            false => Some(Arc::new(Appender::open(options.get_filename())?)),
        };
        Ok(SqliteStore { pool, appender })
    }
}

/// Whether a connection given back to the pool may be used again: not when it is still
/// inside a transaction. A COMMIT that fails on a full disk has SQLite roll the transaction
/// back by itself; sqlx's ROLLBACK of the dropped transaction then fails ("no transaction is
/// active") and sqlx still counts the connection as in a transaction, so every later
/// `BEGIN IMMEDIATE` on it would fail with "begin_with at non-zero transaction depth" for
/// as long as the process lives. Such a connection is closed; the pool opens a new one.
async fn discard_if_in_transaction(conn: &mut SqliteConnection) -> sqlx::Result<bool> {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        // The common case, decided without a round trip to the connection's thread (a
        // ping here cost one per store call).
        return Ok(true);
    }
    // Runs after the dropped transaction's queued ROLLBACK, so its outcome counts.
    conn.ping().await?;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("closing a store connection left inside a failed transaction");
    }
    Ok(clean)
}

/// Creates `path` with mode 0600 if it does not exist, and takes group and other
/// permissions away if it does.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// A JSON array to bind where PostgreSQL would bind an array.
fn json_array<T: Serialize>(items: &[T]) -> Result<String> {
    serde_json::to_string(items).map_err(unserialisable("a batch"))
}

#[async_trait]
impl Backend for SqliteStore {
    type Db = Sqlite;

    const NEWEST_FIRST: &'static str = "created_at DESC, rowid DESC";
    const RANDOM_STATE_ID: &'static str = "lower(hex(randomblob(16)))";

    fn pool(&self) -> &Pool<Sqlite> {
        &self.pool
    }

    async fn begin_deciding(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A committed write: on a full disk (or a file size limit) SQLite still answers reads,
    /// so only a write tells whether the store can take work. The header's `user_version`
    /// (which nothing else uses) takes the time, so every probe changes a page.
    async fn probe(&self) -> Result<()> {
        let stamp = Utc::now().timestamp_millis() & i64::from(i32::MAX);
        sqlx::query(&format!("PRAGMA user_version = {stamp}"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lock_claimable(
        &self,
        now: DateTime<Utc>,
        skip: &mut Vec<String>,
    ) -> Result<Option<(Transaction<'static, Sqlite>, ClaimableRow)>> {
        let mut tx = self.begin_deciding().await?;
        let item = sqlx::query_as(&CLAIMABLE_ITEM)
            .bind(millis(now))
            .bind(json_array(skip)?)
            .fetch_optional(&mut *tx)
            .await?;
        match item {
            Some(item) => Ok(Some((tx, item))),
            None => {
                tx.rollback().await?;
                Ok(None)
            }
        }
    }

    async fn lock_log_heads(conn: &mut SqliteConnection, builds: &[&str]) -> Result<Vec<LogHead>> {
        Ok(sqlx::query_as(&LOG_HEADS)
            .bind(json_array(builds)?)
            .fetch_all(conn)
            .await?)
    }

    async fn insert_logs(conn: &mut SqliteConnection, rows: &LogRows<'_>) -> Result<()> {
        // `json_extract` of a JSON string is its text, verbatim: entries go in as they were
        // serialised.
        let rows: Vec<_> = rows.iter().collect();
        sqlx::query(
            "INSERT INTO build_logs (build_id, idx, entry) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                    json_extract(value, '$[2]') \
             FROM json_each($1)",
        )
        .bind(json_array(&rows)?)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn set_last_sequences(
        conn: &mut SqliteConnection,
        last: &LastSequences<'_>,
    ) -> Result<()> {
        let pairs: Vec<_> = last.iter().collect();
        sqlx::query(
            "UPDATE builds SET last_worker_sequence = json_extract(v.value, '$[1]') \
             FROM json_each($1) AS v WHERE builds.id = json_extract(v.value, '$[0]')",
        )
        .bind(json_array(&pairs)?)
        .execute(conn)
        .await?;
        Ok(())
    }

    // `BEGIN IMMEDIATE` holds the database's write lock already: no row or namespace locks.
    const LOCK_BUILD: &'static str = "";

    async fn lock_namespace(_: &mut SqliteConnection, _: &str) -> Result<()> {
        Ok(())
    }

    fn line_appender(&self) -> Option<&dyn LineAppender> {
        self.appender.as_deref().map(|a| a as &dyn LineAppender)
    }
}
