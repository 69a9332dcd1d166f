//! The embedded SQLite store.
//!
//! One database file in WAL mode, shared safely by several processes. Every write that
//! decides something (a claim, a phase compare-and-set, the per-namespace queue limit, the
//! next log index) runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock
//! up front: concurrent writers queue on the busy timeout instead of failing on a lock
//! upgrade. Claims, and everything done with a claim, also compare-and-set `state_id`, as a
//! PostgreSQL backend will have to.
//!
//! Times are stored as unix milliseconds, so they come back truncated to the millisecond.
//! Parameters are written `$N`, which sqlx's SQLite driver and PostgreSQL both understand.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use buildman_core::queue::queue_name;
use buildman_core::{Build, BuildId, ClaimedItem, LogEntry, NewBuild, Phase};
use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use uuid::Uuid;

use crate::common::{
    after, build_id, column, corrupt, duration_millis, log_total, millis, now_stored, retries,
    time, unserialisable,
};
use crate::{LogPage, QueueState, Result, Store, StoreError, WorkerLine};

/// The schema, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another connection's (or process's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of a file database's pool: WAL lets readers run beside the one writer.
const MAX_CONNECTIONS: u32 = 8;
/// Log rows per INSERT: 1 + 2 * 256 parameters stays under SQLite's oldest limit of 999.
const LOG_CHUNK: usize = 256;
/// Multi-row INSERTs of at most this many rows keep their prepared statement cached, as do
/// full chunks; other sizes are prepared once and dropped, so they cannot evict the rest.
const LOG_CACHED_ROWS: usize = 8;
/// A claim whose compare-and-set found its row changed is retried this many times. Inside
/// `BEGIN IMMEDIATE` that cannot happen; the loop keeps the logic correct regardless.
const CLAIM_ATTEMPTS: usize = 3;

/// The columns of `builds`, in the order [`build_from_row`] reads them.
const BUILD_COLUMNS: &str = "id, namespace, repository, phase, source, tags, context, \
     dockerfile_path, display_name, manual_user, pull_robot, created_at, updated_at, error, \
     result_location";

/// The length of a build's log, in a form that costs one index probe (indices are dense).
const LOG_TOTAL: &str = "SELECT COALESCE(MAX(idx) + 1, 0) FROM build_logs WHERE build_id = $1";

/// The oldest claimable item: due, available or with an expired lease, with retries left,
/// and no other item of its queue name under an unexpired lease.
const CLAIMABLE: &str = "SELECT q.id, q.state_id, q.build_id, q.queue_name, q.retries_remaining \
     FROM queue_items q \
     WHERE q.available_after <= $1 \
       AND (q.available OR q.processing_expires <= $1) \
       AND q.retries_remaining > 0 \
       AND NOT EXISTS ( \
         SELECT 1 FROM queue_items r \
         WHERE r.queue_name = q.queue_name AND r.id <> q.id \
           AND NOT r.available AND r.processing_expires > $1) \
     ORDER BY q.id \
     LIMIT 1";

/// The [`Store`] on an SQLite database file (or an in-memory database, for tests).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database file at `path`, in WAL
    /// mode, and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
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
                .connect_with(options)
                .await?
        } else {
            SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await?
        };
        if let Err(first) = MIGRATOR.run(&pool).await {
            // Two processes opening a new file at once can both see it unmigrated; the loser
            // fails creating a table the winner created. Running again finds it all applied
            // (and still reports any real problem).
            tracing::debug!(error = %first, "migrating the store failed; trying once more");
            MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| StoreError::Database(sqlx::Error::Migrate(Box::new(e))))?;
        }
        Ok(SqliteStore { pool })
    }
}

/// A row of `builds` (selected as [`BUILD_COLUMNS`]) as a [`Build`].
fn build_from_row(row: &SqliteRow) -> Result<Build> {
    let id = build_id(&column::<String, _>(row, "id")?)?;
    let phase: String = column(row, "phase")?;
    let phase = Phase::from_str(&phase).map_err(|e| corrupt(format!("build {id}: {e}")))?;
    let source: String = column(row, "source")?;
    let source = serde_json::from_str(&source)
        .map_err(|e| corrupt(format!("build {id}: source {source:?}: {e}")))?;
    let tags: String = column(row, "tags")?;
    let tags = serde_json::from_str(&tags)
        .map_err(|e| corrupt(format!("build {id}: tags {tags:?}: {e}")))?;
    Ok(Build {
        id,
        namespace: column(row, "namespace")?,
        repository: column(row, "repository")?,
        phase,
        source,
        tags,
        context: column(row, "context")?,
        dockerfile_path: column(row, "dockerfile_path")?,
        display_name: column(row, "display_name")?,
        manual_user: column(row, "manual_user")?,
        pull_robot: column(row, "pull_robot")?,
        created_at: time(column(row, "created_at")?, "created_at")?,
        updated_at: time(column(row, "updated_at")?, "updated_at")?,
        error: column(row, "error")?,
        result_location: column(row, "result_location")?,
    })
}

/// `INSERT INTO build_logs` of `rows` rows: `$1` is the build, then index and entry per row.
fn insert_logs_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(60 + rows * 20);
    sql.push_str("INSERT INTO build_logs (build_id, idx, entry) VALUES ");
    for i in 0..rows {
        let sep = if i == 0 { "" } else { ", " };
        let p = 2 + 2 * i;
        // Writing to a String cannot fail.
        let _ = write!(sql, "{sep}($1, ${p}, ${})", p + 1);
    }
    sql
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_build(
        &self,
        new: NewBuild,
        retries: u32,
        max_queued: Option<u32>,
    ) -> Result<Build> {
        let now = now_stored();
        let id = BuildId::new();
        let source = serde_json::to_string(&new.source).map_err(unserialisable("build source"))?;
        let tags = serde_json::to_string(&new.tags).map_err(unserialisable("tags"))?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(limit) = max_queued {
            let queued: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM queue_items WHERE namespace = $1")
                    .bind(&new.namespace)
                    .fetch_one(&mut *tx)
                    .await?;
            if queued >= i64::from(limit) {
                tx.rollback().await?;
                return Err(StoreError::QueueFull {
                    namespace: new.namespace,
                    limit,
                });
            }
        }
        sqlx::query(
            "INSERT INTO builds (id, namespace, repository, phase, source, tags, context, \
             dockerfile_path, display_name, manual_user, pull_robot, created_at, updated_at, \
             error, result_location) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, NULL, NULL)",
        )
        .bind(id.to_string())
        .bind(&new.namespace)
        .bind(&new.repository)
        .bind(Phase::Waiting.as_str())
        .bind(&source)
        .bind(&tags)
        .bind(&new.context)
        .bind(&new.dockerfile_path)
        .bind(&new.display_name)
        .bind(&new.manual_user)
        .bind(&new.pull_robot)
        .bind(millis(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO queue_items (queue_name, build_id, namespace, available_after, \
             available, processing_expires, retries_remaining, state_id) \
             VALUES ($1, $2, $3, $4, TRUE, NULL, $5, $6)",
        )
        .bind(queue_name(&new.namespace, &new.repository))
        .bind(id.to_string())
        .bind(&new.namespace)
        .bind(millis(now))
        .bind(i64::from(retries))
        .bind(Uuid::new_v4().to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(new.into_build(id, now))
    }

    async fn get_build(&self, id: BuildId) -> Result<Option<Build>> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(build_from_row).transpose()
    }

    async fn list_builds(
        &self,
        namespace: &str,
        repository: &str,
        limit: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Build>> {
        // rowid breaks ties between builds created in the same millisecond (insertion order).
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds \
             WHERE namespace = $1 AND repository = $2 AND created_at >= $3 \
             ORDER BY created_at DESC, rowid DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(namespace)
            .bind(repository)
            .bind(since.map_or(i64::MIN, millis))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(build_from_row).collect()
    }

    async fn set_phase(
        &self,
        id: BuildId,
        to: Phase,
        from: &[Phase],
        error: Option<&str>,
    ) -> Result<Option<Phase>> {
        let key = id.to_string();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<String> = sqlx::query_scalar("SELECT phase FROM builds WHERE id = $1")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(current) = current else {
            return Err(StoreError::NotFound(id));
        };
        let current = Phase::from_str(&current).map_err(|e| corrupt(format!("build {id}: {e}")))?;
        if !from.is_empty() && !from.contains(&current) {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query(
            "UPDATE builds SET phase = $1, updated_at = $2, error = COALESCE($3, error) \
             WHERE id = $4",
        )
        .bind(to.as_str())
        .bind(millis(Utc::now()))
        .bind(error)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(current))
    }

    async fn set_result_location(&self, id: BuildId, location: &str) -> Result<()> {
        let done = sqlx::query("UPDATE builds SET result_location = $1 WHERE id = $2")
            .bind(location)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    async fn claim(&self, now: DateTime<Utc>, lease: Duration) -> Result<Option<ClaimedItem>> {
        for _ in 0..CLAIM_ATTEMPTS {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let Some(row) = sqlx::query(CLAIMABLE)
                .bind(millis(now))
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.rollback().await?;
                return Ok(None);
            };
            let item_id: i64 = column(&row, "id")?;
            let old_state: String = column(&row, "state_id")?;
            let build = build_id(&column::<String, _>(&row, "build_id")?)?;
            let queue_name: String = column(&row, "queue_name")?;
            let left = retries(column(&row, "retries_remaining")?, item_id)?;
            let state_id = Uuid::new_v4().to_string();
            let done = sqlx::query(
                "UPDATE queue_items SET available = FALSE, processing_expires = $1, \
                 retries_remaining = retries_remaining - 1, state_id = $2 \
                 WHERE id = $3 AND state_id = $4",
            )
            .bind(after(now, lease))
            .bind(&state_id)
            .bind(item_id)
            .bind(&old_state)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                tx.rollback().await?;
                continue;
            }
            // A new attempt means a new worker, whose sequence numbers start afresh.
            sqlx::query("UPDATE builds SET last_worker_sequence = NULL WHERE id = $1")
                .bind(build.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Some(ClaimedItem {
                item_id,
                state_id,
                build_id: build,
                queue_name,
                // The query only picks items with retries left.
                retries_remaining: left.saturating_sub(1),
            }));
        }
        Ok(None)
    }

    async fn complete_item(&self, item: &ClaimedItem) -> Result<bool> {
        let done = sqlx::query("DELETE FROM queue_items WHERE id = $1 AND state_id = $2")
            .bind(item.item_id)
            .bind(&item.state_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn return_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        retry_after: Duration,
        restore_retry: bool,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE queue_items SET available = TRUE, processing_expires = NULL, \
             available_after = $1, retries_remaining = retries_remaining + $2, state_id = $3 \
             WHERE id = $4 AND state_id = $5",
        )
        .bind(after(now, retry_after))
        .bind(i64::from(restore_retry))
        .bind(Uuid::new_v4().to_string())
        .bind(item.item_id)
        .bind(&item.state_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn extend_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        lease: Duration,
        minimum: Duration,
    ) -> Result<bool> {
        // Read first: most heartbeats move the lease too little to write, and a read takes
        // no write lock.
        let current: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT processing_expires FROM queue_items WHERE id = $1 AND state_id = $2",
        )
        .bind(item.item_id)
        .bind(&item.state_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(current) = current else {
            return Ok(false);
        };
        let expires = after(now, lease);
        if let Some(current) = current
            && expires.saturating_sub(current) <= duration_millis(minimum)
        {
            return Ok(true);
        }
        let done = sqlx::query(
            "UPDATE queue_items SET processing_expires = $1 WHERE id = $2 AND state_id = $3",
        )
        .bind(expires)
        .bind(item.item_id)
        .bind(&item.state_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_all_claims(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE queue_items SET available = 1, processing_expires = NULL, \
             available_after = $1, retries_remaining = retries_remaining + 1, \
             state_id = lower(hex(randomblob(16))) WHERE available = 0",
        )
        .bind(millis(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn delete_item(&self, build: BuildId) -> Result<()> {
        sqlx::query("DELETE FROM queue_items WHERE build_id = $1")
            .bind(build.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn queue_state(&self, build: BuildId) -> Result<Option<QueueState>> {
        let row = sqlx::query(
            "SELECT id, retries_remaining, available, available_after, processing_expires \
             FROM queue_items WHERE build_id = $1",
        )
        .bind(build.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let item: i64 = column(&row, "id")?;
        let processing_expires: Option<i64> = column(&row, "processing_expires")?;
        Ok(Some(QueueState {
            retries_remaining: retries(column(&row, "retries_remaining")?, item)?,
            available: column(&row, "available")?,
            available_after: time(column(&row, "available_after")?, "available_after")?,
            processing_expires: processing_expires
                .map(|ms| time(ms, "processing_expires"))
                .transpose()?,
        }))
    }

    async fn next_available_after(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(available_after) FROM queue_items \
             WHERE available AND retries_remaining > 0 AND available_after > $1",
        )
        .bind(millis(now))
        .fetch_one(&self.pool)
        .await?;
        next.map(|ms| time(ms, "available_after")).transpose()
    }

    async fn append_logs(&self, id: BuildId, entries: &[LogEntry]) -> Result<u64> {
        let key = id.to_string();
        if entries.is_empty() {
            let total: i64 = sqlx::query_scalar(LOG_TOTAL)
                .bind(&key)
                .fetch_one(&self.pool)
                .await?;
            return log_total(total, id);
        }
        // Serialise before taking the write lock, to hold it as briefly as possible.
        let lines = entries
            .iter()
            .map(|e| serde_json::to_string(e).map_err(unserialisable("log entry")))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut next: i64 = sqlx::query_scalar(LOG_TOTAL)
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
        for chunk in lines.chunks(LOG_CHUNK) {
            let sql = insert_logs_sql(chunk.len());
            let mut insert = sqlx::query(&sql)
                .persistent(chunk.len() == LOG_CHUNK || chunk.len() <= LOG_CACHED_ROWS)
                .bind(&key);
            for line in chunk {
                insert = insert.bind(next).bind(line);
                next += 1;
            }
            insert.execute(&mut *tx).await.map_err(|e| {
                let missing_build = e
                    .as_database_error()
                    .is_some_and(|d| d.kind() == ErrorKind::ForeignKeyViolation);
                if missing_build {
                    StoreError::NotFound(id)
                } else {
                    StoreError::Database(e)
                }
            })?;
        }
        tx.commit().await?;
        log_total(next, id)
    }

    async fn append_worker_lines(&self, lines: &[WorkerLine]) -> Result<Vec<bool>> {
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = lines
            .iter()
            .map(|l| serde_json::to_string(&l.entry).map_err(unserialisable("log entry")))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Per build in the batch: the next log index and the last stored sequence number.
        let mut builds: HashMap<BuildId, (i64, Option<i32>)> = HashMap::new();
        let mut stored = Vec::with_capacity(lines.len());
        let mut rows: Vec<(String, i64, &str)> = Vec::with_capacity(lines.len());
        for (line, json) in lines.iter().zip(&encoded) {
            let state = match builds.entry(line.build) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let key = line.build.to_string();
                    let last: Option<Option<i32>> =
                        sqlx::query_scalar("SELECT last_worker_sequence FROM builds WHERE id = $1")
                            .bind(&key)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let last = last.ok_or(StoreError::NotFound(line.build))?;
                    let next: i64 = sqlx::query_scalar(LOG_TOTAL)
                        .bind(&key)
                        .fetch_one(&mut *tx)
                        .await?;
                    e.insert((next, last))
                }
            };
            if state.1.is_some_and(|last| line.sequence <= last) {
                stored.push(false);
                continue;
            }
            rows.push((line.build.to_string(), state.0, json));
            state.0 += 1;
            state.1 = Some(line.sequence);
            stored.push(true);
        }
        for chunk in rows.chunks(LOG_CHUNK) {
            let mut sql = String::from("INSERT INTO build_logs (build_id, idx, entry) VALUES ");
            for i in 0..chunk.len() {
                let p = 1 + 3 * i;
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(sql, "{sep}(${p}, ${}, ${})", p + 1, p + 2);
            }
            let mut insert = sqlx::query(&sql).persistent(false);
            for (build, idx, json) in chunk {
                insert = insert.bind(build).bind(*idx).bind(*json);
            }
            insert.execute(&mut *tx).await?;
        }
        for (build, (_, last)) in &builds {
            sqlx::query("UPDATE builds SET last_worker_sequence = $1 WHERE id = $2")
                .bind(*last)
                .bind(build.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn read_logs(&self, id: BuildId, start: u64, limit: u32) -> Result<LogPage> {
        let key = id.to_string();
        // One read transaction, so the total and the page agree.
        let mut tx = self.pool.begin().await?;
        let total: i64 = sqlx::query_scalar(LOG_TOTAL)
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT idx, entry FROM build_logs WHERE build_id = $1 AND idx >= $2 \
             ORDER BY idx LIMIT $3",
        )
        .bind(&key)
        .bind(i64::try_from(start).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let entries = rows
            .iter()
            .map(|row| {
                let idx: i64 = column(row, "idx")?;
                let entry: String = column(row, "entry")?;
                serde_json::from_str(&entry)
                    .map_err(|e| corrupt(format!("build {id}: log entry {idx}: {e}")))
            })
            .collect::<Result<Vec<LogEntry>>>()?;
        Ok(LogPage {
            start,
            total: log_total(total, id)?,
            entries,
        })
    }
}
