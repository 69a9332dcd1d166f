//! The PostgreSQL store, for several managers sharing one database.
//!
//! Same tables, columns and semantics as the [SQLite store](crate::sqlite): times are unix
//! milliseconds (`BIGINT`), build ids hyphenated UUIDs (`TEXT`), and the JSON columns
//! (`source`, `tags`, log entries) `JSONB`, written as serde_json text cast with `::jsonb`.
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
//!   statement whatever the batch size, in the same transaction (group commit).
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

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use buildman_core::queue::queue_name;
use buildman_core::{Build, BuildId, BuildSource, ClaimedItem, LogEntry, NewBuild, Phase};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use uuid::Uuid;

use crate::common::{
    after, build_id, column, corrupt, duration_millis, log_total, millis, now_stored, retries,
    time, unserialisable,
};
use crate::{LogPage, QueueState, Result, Store, StoreError, WorkerLine};

/// The schema, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections of the pool.
const MAX_CONNECTIONS: u32 = 10;
/// Advisory-lock class of queue names (claims): "bm" and 1.
const QUEUE_NAME_LOCK: i32 = 0x626d_0001;
/// Advisory-lock class of namespaces (the queue limit): "bm" and 2.
const NAMESPACE_LOCK: i32 = 0x626d_0002;

/// The columns of `builds`, in the order [`build_from_row`] reads them.
const BUILD_COLUMNS: &str = "id, namespace, repository, phase, source, tags, context, \
     dockerfile_path, display_name, manual_user, pull_robot, created_at, updated_at, error, \
     result_location";

/// The length of a build's log, in a form that costs one index probe (indices are dense).
const LOG_TOTAL: &str = "SELECT COALESCE(MAX(idx) + 1, 0) FROM build_logs WHERE build_id = $1";

/// The oldest claimable item (see [`buildman_core::queue`]) of a queue name not in `$2`,
/// skipping rows other transactions hold and locking the one it returns.
const CANDIDATE: &str = "SELECT q.queue_name FROM queue_items q \
     WHERE q.available_after <= $1 \
       AND (q.available OR q.processing_expires <= $1) \
       AND q.retries_remaining > 0 \
       AND q.queue_name <> ALL($2) \
       AND NOT EXISTS ( \
         SELECT 1 FROM queue_items r \
         WHERE r.queue_name = q.queue_name AND r.id <> q.id \
           AND NOT r.available AND r.processing_expires > $1) \
     ORDER BY q.id \
     LIMIT 1 \
     FOR UPDATE OF q SKIP LOCKED";

/// The oldest claimable item of queue name `$2`, locked: run while holding the queue
/// name's advisory lock, so no other claim on it is in flight.
const CLAIMABLE_IN_QUEUE: &str = "SELECT q.id, q.state_id, q.build_id, q.retries_remaining \
     FROM queue_items q \
     WHERE q.queue_name = $2 \
       AND q.available_after <= $1 \
       AND (q.available OR q.processing_expires <= $1) \
       AND q.retries_remaining > 0 \
       AND NOT EXISTS ( \
         SELECT 1 FROM queue_items r \
         WHERE r.queue_name = q.queue_name AND r.id <> q.id \
           AND NOT r.available AND r.processing_expires > $1) \
     ORDER BY q.id \
     LIMIT 1 \
     FOR UPDATE OF q";

/// The [`Store`] on a PostgreSQL database, safe to share between managers.
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

/// Reads a JSONB column of build `id`, reporting what does not decode as corrupt.
fn json_column<T: DeserializeOwned>(row: &PgRow, name: &str, id: BuildId) -> Result<T> {
    row.try_get::<Json<T>, _>(name)
        .map(|json| json.0)
        .map_err(|e| corrupt(format!("build {id}: {name}: {e}")))
}

/// A row of `builds` (selected as [`BUILD_COLUMNS`]) as a [`Build`].
fn build_from_row(row: &PgRow) -> Result<Build> {
    let id = build_id(&column::<String, _>(row, "id")?)?;
    let phase: String = column(row, "phase")?;
    let phase = Phase::from_str(&phase).map_err(|e| corrupt(format!("build {id}: {e}")))?;
    let source: BuildSource = json_column(row, "source", id)?;
    let tags: Vec<String> = json_column(row, "tags", id)?;
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

/// A log entry as it goes into a JSONB column.
fn encode_entry(entry: &LogEntry) -> Result<String> {
    serde_json::to_string(entry).map_err(unserialisable("log entry"))
}

/// Per build of a worker-line batch: the next log index and the last stored sequence.
struct LineState {
    next: i64,
    last: Option<i32>,
    /// Whether this batch stored a line of the build (so its sequence must be written).
    stored: bool,
}

#[async_trait]
impl Store for PostgresStore {
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
        let mut tx = self.pool.begin().await?;
        if let Some(limit) = max_queued {
            // Held to the commit: the next limited submission to this namespace counts
            // after this one's item is visible.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(NAMESPACE_LOCK)
                .bind(&new.namespace)
                .execute(&mut *tx)
                .await?;
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
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10, $11, $12, $12, \
             NULL, NULL)",
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
        // seq breaks ties between builds created in the same millisecond (insertion order).
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds \
             WHERE namespace = $1 AND repository = $2 AND created_at >= $3 \
             ORDER BY created_at DESC, seq DESC LIMIT $4"
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
        let mut tx = self.pool.begin().await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT phase FROM builds WHERE id = $1 FOR NO KEY UPDATE")
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
        // Queue names another claimer was busy with, or that had nothing to claim after all.
        // Each failed attempt adds one the candidate query did not exclude yet, so the loop
        // ends.
        let mut skip: Vec<String> = Vec::new();
        loop {
            // One transaction per attempt: a failed one rolls back and keeps no row lock.
            let mut tx = self.pool.begin().await?;
            let Some(name) = sqlx::query_scalar::<_, String>(CANDIDATE)
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
            if !locked {
                tx.rollback().await?;
                skip.push(name);
                continue;
            }
            // A new statement, so a new snapshot: it sees every claim on this queue name
            // committed before the lock was free. The oldest claimable item may be an
            // older one than the candidate, which another claimer had locked a moment ago.
            let Some(row) = sqlx::query(CLAIMABLE_IN_QUEUE)
                .bind(millis(now))
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.rollback().await?;
                skip.push(name);
                continue;
            };
            let item_id: i64 = column(&row, "id")?;
            let old_state: String = column(&row, "state_id")?;
            let build = build_id(&column::<String, _>(&row, "build_id")?)?;
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
                // Cannot happen under the row lock; kept correct regardless.
                tx.rollback().await?;
                skip.push(name);
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
                queue_name: name,
                // The query only picks items with retries left.
                retries_remaining: left.saturating_sub(1),
            }));
        }
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
        // Read first: most heartbeats move the lease too little to write.
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
            "UPDATE queue_items SET available = TRUE, processing_expires = NULL, \
             available_after = $1, retries_remaining = retries_remaining + 1, \
             state_id = gen_random_uuid()::text WHERE NOT available",
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
        // Serialise before taking the lock, to hold it as briefly as possible.
        let lines = entries
            .iter()
            .map(encode_entry)
            .collect::<Result<Vec<_>>>()?;
        let count = i64::try_from(lines.len()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        // Concurrent appends to this build wait here; the total is read after, in a new
        // snapshot that includes the rows of whoever held the lock before.
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM builds WHERE id = $1 FOR NO KEY UPDATE")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            tx.rollback().await?;
            return Err(StoreError::NotFound(id));
        }
        let next: i64 = sqlx::query_scalar(LOG_TOTAL)
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO build_logs (build_id, idx, entry) \
             SELECT $1, $2 + t.n - 1, t.entry::jsonb \
             FROM UNNEST($3::text[]) WITH ORDINALITY AS t(entry, n)",
        )
        .bind(&key)
        .bind(next)
        .bind(lines.as_slice())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        log_total(next.saturating_add(count), id)
    }

    async fn append_worker_lines(&self, lines: &[WorkerLine]) -> Result<Vec<bool>> {
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = lines
            .iter()
            .map(|l| encode_entry(&l.entry))
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<String> = lines.iter().map(|l| l.build.to_string()).collect();
        // The batch's builds, sorted: rows are locked in this order, so two batches over
        // the same builds cannot deadlock.
        let mut builds: Vec<&str> = keys.iter().map(String::as_str).collect();
        builds.sort_unstable();
        builds.dedup();

        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, last_worker_sequence FROM builds WHERE id = ANY($1) \
             ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(builds.as_slice())
        .fetch_all(&mut *tx)
        .await?;
        let mut state: HashMap<String, LineState> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = column(row, "id")?;
            let last: Option<i32> = column(row, "last_worker_sequence")?;
            state.insert(
                id,
                LineState {
                    next: 0,
                    last,
                    stored: false,
                },
            );
        }
        if let Some(missing) = lines
            .iter()
            .zip(&keys)
            .find(|(_, k)| !state.contains_key(*k))
        {
            tx.rollback().await?;
            return Err(StoreError::NotFound(missing.0.build));
        }
        // Log lengths, read after the locks (see append_logs): one index probe per build.
        let totals = sqlx::query(
            "SELECT b.id, (SELECT COALESCE(MAX(l.idx) + 1, 0) FROM build_logs l \
             WHERE l.build_id = b.id) AS total FROM UNNEST($1::text[]) AS b(id)",
        )
        .bind(builds.as_slice())
        .fetch_all(&mut *tx)
        .await?;
        for row in &totals {
            let id: String = column(row, "id")?;
            let total: i64 = column(row, "total")?;
            if let Some(s) = state.get_mut(&id) {
                s.next = total;
            }
        }

        let mut stored = Vec::with_capacity(lines.len());
        let mut row_builds: Vec<&str> = Vec::with_capacity(lines.len());
        let mut row_indices: Vec<i64> = Vec::with_capacity(lines.len());
        let mut row_entries: Vec<&str> = Vec::with_capacity(lines.len());
        for ((line, key), json) in lines.iter().zip(&keys).zip(&encoded) {
            let Some(s) = state.get_mut(key) else {
                // Every build was found above.
                return Err(StoreError::NotFound(line.build));
            };
            if s.last.is_some_and(|last| line.sequence <= last) {
                stored.push(false);
                continue;
            }
            row_builds.push(key);
            row_indices.push(s.next);
            row_entries.push(json);
            s.next += 1;
            s.last = Some(line.sequence);
            s.stored = true;
            stored.push(true);
        }
        if !row_builds.is_empty() {
            sqlx::query(
                "INSERT INTO build_logs (build_id, idx, entry) \
                 SELECT t.build_id, t.idx, t.entry::jsonb \
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS t(build_id, idx, entry)",
            )
            .bind(row_builds.as_slice())
            .bind(row_indices.as_slice())
            .bind(row_entries.as_slice())
            .execute(&mut *tx)
            .await?;
            let (ids, sequences): (Vec<&str>, Vec<i32>) = state
                .iter()
                .filter(|(_, s)| s.stored)
                .filter_map(|(id, s)| s.last.map(|last| (id.as_str(), last)))
                .unzip();
            sqlx::query(
                "UPDATE builds SET last_worker_sequence = v.sequence \
                 FROM UNNEST($1::text[], $2::integer[]) AS v(id, sequence) \
                 WHERE builds.id = v.id",
            )
            .bind(ids.as_slice())
            .bind(sequences.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn read_logs(&self, id: BuildId, start: u64, limit: u32) -> Result<LogPage> {
        // One statement, so the total and the page come from the same snapshot. The page
        // is joined to the total, so an empty page still brings one row with the total.
        let rows = sqlx::query(
            "SELECT t.total, l.idx, l.entry \
             FROM (SELECT COALESCE(MAX(idx) + 1, 0) AS total FROM build_logs \
                   WHERE build_id = $1) t \
             LEFT JOIN LATERAL (SELECT idx, entry FROM build_logs \
                   WHERE build_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3) l ON TRUE \
             ORDER BY l.idx",
        )
        .bind(id.to_string())
        .bind(i64::try_from(start).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = match rows.first() {
            Some(row) => column(row, "total")?,
            None => 0,
        };
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(idx) = column::<Option<i64>, _>(row, "idx")? else {
                continue;
            };
            let entry = row
                .try_get::<Json<LogEntry>, _>("entry")
                .map_err(|e| corrupt(format!("build {id}: log entry {idx}: {e}")))?;
            entries.push(entry.0);
        }
        Ok(LogPage {
            start,
            total: log_total(total, id)?,
            entries,
        })
    }
}
