//! The one [`Store`] implementation, over any [`Backend`]: the statements both databases
//! run as they are, and the queue's rules around them.

use std::time::Duration;

use async_trait::async_trait;
use buildman_core::queue::queue_name;
use buildman_core::{Build, BuildId, BuildSource, ClaimedItem, LogEntry, NewBuild, Phase, Requeue};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use super::logs::{LogBatch, encode};
use super::maintenance::Maintenance;
use super::rows::{
    BUILD_COLUMNS, BuildRow, CLAIMABLE_COLUMNS, ClaimableRow, LOG_PAGE, LOG_TOTAL, LogPageRow,
    QueueRow, after, duration_millis, json, log_total, millis, now_stored, phase, time,
};
use super::{Backend, RowsAffected};
use crate::{BuildFilter, LogPage, QueueState, QueueStats, Result, Store, StoreError, WorkerLine};

// The bounds say that `B::Db` runs queries on its connections and pool, and binds and reads
// the types used here: both sqlx drivers do.
#[async_trait]
impl<B> Store for B
where
    B: Backend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'n> &'n str: ColumnIndex<<B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> bool: Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db>,
    for<'q> Json<&'q BuildSource>: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Json<&'q [String]>: Encode<'q, B::Db> + Type<B::Db>,
{
    async fn create_build(
        &self,
        new: NewBuild,
        retries: u32,
        max_queued: Option<u32>,
    ) -> Result<Build> {
        let now = now_stored();
        let id = BuildId::new();
        let key = id.to_string();
        let mut tx = self.begin_deciding().await?;
        if let Some(limit) = max_queued {
            B::lock_namespace(&mut tx, &new.namespace).await?;
            let (queued,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM queue_items WHERE namespace = $1")
                    .bind(new.namespace.as_str())
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
             dockerfile_path, display_name, manual_user, pull_robot, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        )
        .bind(key.as_str())
        .bind(new.namespace.as_str())
        .bind(new.repository.as_str())
        .bind(Phase::Waiting.as_str())
        .bind(Json(&new.source))
        .bind(Json(new.tags.as_slice()))
        .bind(new.context.as_str())
        .bind(new.dockerfile_path.as_str())
        .bind(new.display_name.as_str())
        .bind(new.manual_user.as_deref())
        .bind(new.pull_robot.as_deref())
        .bind(millis(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO queue_items (queue_name, build_id, namespace, available_after, \
             available, retries_remaining, state_id) VALUES ($1, $2, $3, $4, TRUE, $5, $6)",
        )
        .bind(queue_name(&new.namespace, &new.repository))
        .bind(key.as_str())
        .bind(new.namespace.as_str())
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
        let row: Option<BuildRow> = sqlx::query_as(&sql)
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.map(Build::try_from).transpose()
    }

    async fn list_builds(
        &self,
        namespace: &str,
        repository: &str,
        limit: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Build>> {
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds \
             WHERE namespace = $1 AND repository = $2 AND created_at >= $3 \
             ORDER BY {} LIMIT $4",
            B::NEWEST_FIRST
        );
        let rows: Vec<BuildRow> = sqlx::query_as(&sql)
            .bind(namespace)
            .bind(repository)
            .bind(since.map_or(i64::MIN, millis))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(Build::try_from).collect()
    }

    async fn find_builds(&self, filter: &BuildFilter, limit: u32) -> Result<Vec<Build>> {
        // Only the conditions asked for, so each query shape gets a plan for its index.
        let mut conditions = Vec::new();
        let mut texts = Vec::new();
        for (column, value) in [
            ("namespace", filter.namespace.as_deref()),
            ("repository", filter.repository.as_deref()),
            ("phase", filter.phase.map(Phase::as_str)),
        ] {
            if let Some(value) = value {
                texts.push(value);
                conditions.push(format!("{column} = ${}", texts.len()));
            }
        }
        if let Some(queued) = filter.queued {
            let exists = "EXISTS (SELECT 1 FROM queue_items q WHERE q.build_id = builds.id)";
            conditions.push(if queued {
                exists.to_string()
            } else {
                format!("NOT {exists}")
            });
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds {filter_sql} ORDER BY {} LIMIT ${}",
            B::NEWEST_FIRST,
            texts.len() + 1
        );
        let mut query = sqlx::query_as::<_, BuildRow>(&sql);
        for text in texts {
            query = query.bind(text);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.into_iter().map(Build::try_from).collect()
    }

    async fn set_phase(
        &self,
        id: BuildId,
        to: Phase,
        from: &[Phase],
        error: Option<&str>,
        entry: Option<&LogEntry>,
    ) -> Result<Option<Phase>> {
        let key = id.to_string();
        let sql = format!(
            "SELECT phase, namespace, repository, CAST(tags AS TEXT) FROM builds WHERE id = $1{}",
            B::LOCK_BUILD
        );
        let mut tx = self.begin_deciding().await?;
        let row: Option<(String, String, String, String)> = sqlx::query_as(&sql)
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let (current, namespace, repository, tags) = row.ok_or(StoreError::NotFound(id))?;
        let current = phase(&current, id)?;
        if !from.is_empty() && !from.contains(&current) {
            tx.rollback().await?;
            return Ok(None);
        }
        let now = millis(Utc::now());
        let (scheduled, finished) = match to {
            Phase::BuildScheduled => (Some(now), None),
            to if to.is_final() => (None, Some(now)),
            _ => (None, None),
        };
        sqlx::query(
            // A build that completes keeps no error of an earlier attempt. A repeat of the
            // current phase (SET reads the row as it was) keeps its times.
            "UPDATE builds SET phase = $1, updated_at = $2, \
             error = CASE WHEN $1 = 'complete' THEN NULL ELSE COALESCE($3, error) END, \
             scheduled_at = COALESCE(scheduled_at, $5), \
             finished_at = CASE WHEN phase = $1 THEN finished_at ELSE $6 END \
             WHERE id = $4",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(error)
        .bind(key.as_str())
        .bind(scheduled)
        .bind(finished)
        .execute(&mut *tx)
        .await?;
        if to == Phase::Complete && current != to {
            let tags: Vec<String> = json(&tags, "tags", id)?;
            super::tags::record::<B>(&mut tx, id, &namespace, &repository, &tags, now).await?;
        }
        if let Some(entry) = entry.filter(|_| current != to) {
            // In the same transaction as the change, so the log's phase entries are in the
            // order of the changes whoever makes them.
            let encoded = encode(std::iter::once(entry))?;
            let mut batch = LogBatch::new(B::lock_log_heads(&mut tx, &[&key]).await?);
            batch.push(id, &key, None, &encoded[0])?;
            B::insert_logs(&mut tx, &batch.rows).await?;
        }
        tx.commit().await?;
        Ok(Some(current))
    }

    async fn pushed_tag(
        &self,
        namespace: &str,
        repository: &str,
        tags: &[String],
    ) -> Result<Option<String>> {
        super::tags::first_pushed::<B, _>(self.pool(), namespace, repository, tags).await
    }

    async fn set_executor(&self, id: BuildId, executor: &str) -> Result<()> {
        let done = sqlx::query("UPDATE builds SET executor = $1 WHERE id = $2")
            .bind(executor)
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        if done.count() == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    async fn set_result_location(&self, id: BuildId, location: &str) -> Result<()> {
        let done = sqlx::query("UPDATE builds SET result_location = $1 WHERE id = $2")
            .bind(location)
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        if done.count() == 0 {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    async fn claim(&self, now: DateTime<Utc>, lease: Duration) -> Result<Option<ClaimedItem>> {
        // Queue names another claimer was busy with, or whose item had nothing to claim
        // after all. Each failed attempt adds one that was not skipped yet, so the loop ends.
        let mut skip = Vec::new();
        while let Some((mut tx, item)) = self.lock_claimable(now, &mut skip).await? {
            let claimed = item.claimed(Uuid::new_v4().to_string())?;
            let done = sqlx::query(
                "UPDATE queue_items SET available = FALSE, processing_expires = $1, \
                 retries_remaining = retries_remaining - 1, attempts = attempts + 1, \
                 state_id = $2 WHERE id = $3 AND state_id = $4",
            )
            .bind(after(now, lease))
            .bind(claimed.state_id.as_str())
            .bind(item.id)
            .bind(item.state_id.as_str())
            .execute(&mut *tx)
            .await?;
            if done.count() != 1 {
                // Cannot happen under the backend's locks; kept correct regardless.
                tx.rollback().await?;
                skip.push(item.queue_name);
                continue;
            }
            // A new attempt means a new worker, whose sequence numbers start afresh, and
            // whose lines alone are taken from now on.
            sqlx::query(
                "UPDATE builds SET last_worker_sequence = NULL, attempt = $2, \
                 attempts = attempts + 1 WHERE id = $1",
            )
            .bind(claimed.build_id.to_string())
            .bind(claimed.state_id.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Some(claimed));
        }
        Ok(None)
    }

    async fn complete_item(&self, item: &ClaimedItem) -> Result<bool> {
        let done = sqlx::query("DELETE FROM queue_items WHERE id = $1 AND state_id = $2")
            .bind(item.item_id)
            .bind(item.state_id.as_str())
            .execute(self.pool())
            .await?;
        Ok(done.count() == 1)
    }

    /// The build's failure is in its phase and error already: nothing more to say.
    async fn give_up_item(&self, item: &ClaimedItem) -> Result<bool> {
        self.complete_item(item).await
    }

    async fn return_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        requeue: &Requeue,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE queue_items SET available = TRUE, processing_expires = NULL, \
             available_after = $1, retries_remaining = retries_remaining + $2, \
             silent_restores = $3, state_id = $4 WHERE id = $5 AND state_id = $6",
        )
        .bind(after(now, requeue.after))
        .bind(i64::from(requeue.restore_retry))
        .bind(i64::from(requeue.silent_restores))
        .bind(Uuid::new_v4().to_string())
        .bind(item.item_id)
        .bind(item.state_id.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.count() == 1)
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
        let current: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT processing_expires FROM queue_items WHERE id = $1 AND state_id = $2",
        )
        .bind(item.item_id)
        .bind(item.state_id.as_str())
        .fetch_optional(self.pool())
        .await?;
        let Some((current,)) = current else {
            return Ok(false);
        };
        let expires = after(now, lease);
        if current.is_some_and(|c| expires.saturating_sub(c) <= duration_millis(minimum)) {
            return Ok(true);
        }
        let done = sqlx::query(
            "UPDATE queue_items SET processing_expires = $1 WHERE id = $2 AND state_id = $3",
        )
        .bind(expires)
        .bind(item.item_id)
        .bind(item.state_id.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.count() == 1)
    }

    async fn release_all_claims(&self, now: DateTime<Utc>) -> Result<u64> {
        let sql = format!(
            "UPDATE queue_items SET available = TRUE, processing_expires = NULL, \
             available_after = $1, retries_remaining = retries_remaining + 1, \
             state_id = {} WHERE NOT available",
            B::RANDOM_STATE_ID
        );
        let done = sqlx::query(&sql)
            .bind(millis(now))
            .execute(self.pool())
            .await?;
        Ok(done.count())
    }

    async fn claimed_items(&self, limit: u32) -> Result<Vec<ClaimedItem>> {
        let sql =
            format!("SELECT {CLAIMABLE_COLUMNS} FROM queue_items q WHERE NOT q.available LIMIT $1");
        let rows: Vec<ClaimableRow> = sqlx::query_as(&sql)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(ClaimableRow::held).collect()
    }

    async fn delete_item(&self, build: BuildId) -> Result<()> {
        sqlx::query("DELETE FROM queue_items WHERE build_id = $1")
            .bind(build.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn queue_state(&self, build: BuildId) -> Result<Option<QueueState>> {
        let row: Option<QueueRow> = sqlx::query_as(
            "SELECT id, retries_remaining, available, available_after, processing_expires \
             FROM queue_items WHERE build_id = $1",
        )
        .bind(build.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.map(QueueState::try_from).transpose()
    }

    async fn next_available_after(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let (next,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(available_after) FROM queue_items \
             WHERE available AND retries_remaining > 0 AND available_after > $1",
        )
        .bind(millis(now))
        .fetch_one(self.pool())
        .await?;
        next.map(|ms| time(ms, "available_after")).transpose()
    }

    async fn append_logs(&self, id: BuildId, entries: &[LogEntry]) -> Result<u64> {
        let key = id.to_string();
        if entries.is_empty() {
            let (total,): (i64,) = sqlx::query_as(LOG_TOTAL)
                .bind(key.as_str())
                .fetch_one(self.pool())
                .await?;
            return log_total(total, id);
        }
        let encoded = encode(entries.iter())?;
        let mut tx = self.begin_deciding().await?;
        let mut batch = LogBatch::new(B::lock_log_heads(&mut tx, &[&key]).await?);
        for entry in &encoded {
            batch.push(id, &key, None, entry)?;
        }
        B::insert_logs(&mut tx, &batch.rows).await?;
        tx.commit().await?;
        log_total(batch.total(&key).ok_or(StoreError::NotFound(id))?, id)
    }

    async fn append_worker_lines(&self, lines: &[WorkerLine]) -> Result<Vec<Option<u64>>> {
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(appender) = self.line_appender() {
            return appender.append(lines).await;
        }
        let encoded = encode(lines.iter().map(|l| &l.entry))?;
        let keys: Vec<String> = lines.iter().map(|l| l.build.to_string()).collect();
        let mut builds: Vec<&str> = keys.iter().map(String::as_str).collect();
        builds.sort_unstable();
        builds.dedup();
        let mut tx = self.begin_deciding().await?;
        let mut batch = LogBatch::new(B::lock_log_heads(&mut tx, &builds).await?);
        batch.place_worker_lines(lines.iter().zip(&keys).zip(&encoded).map(
            |((line, key), entry)| {
                let attempt = line.attempt.as_deref();
                (
                    line.build,
                    key.as_str(),
                    attempt,
                    line.sequence,
                    entry.as_str(),
                )
            },
        ))?;
        if !batch.rows.builds.is_empty() {
            B::insert_logs(&mut tx, &batch.rows).await?;
            B::set_last_sequences(&mut tx, &batch.last_sequences()).await?;
        }
        tx.commit().await?;
        Ok(batch.stored)
    }

    async fn read_logs(
        &self,
        id: BuildId,
        start: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<LogPage> {
        let rows: Vec<LogPageRow> = sqlx::query_as(LOG_PAGE)
            .bind(id.to_string())
            .bind(i64::try_from(start).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let total = rows.first().map_or(0, |row| row.total);
        let entries = rows
            .iter()
            .filter_map(|row| row.entry(id).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(LogPage {
            start,
            total: log_total(total, id)?,
            entries,
        })
    }

    async fn ping(&self) -> Result<()> {
        self.ping_database().await
    }

    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats> {
        self.count_queue(now).await
    }

    async fn ended_with_context(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Build>> {
        self.select_ended(ended_before, limit).await
    }

    async fn mark_contexts_pruned(&self, builds: &[BuildId]) -> Result<()> {
        self.set_pruned(builds).await
    }

    async fn delete_ended_builds(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64> {
        self.delete_ended(ended_before, limit).await
    }
}
