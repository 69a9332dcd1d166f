//! The store's reads for the metrics and its retention passes, written once for both
//! databases: a trait implemented for every [`Backend`], which the one [`Store`](crate::Store)
//! implementation calls (so the statements live here, not among the queue's).

use async_trait::async_trait;
use buildman_core::{Build, BuildId};
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::rows::{BUILD_COLUMNS, BuildRow, millis, time};
use super::{Backend, RowsAffected};
use crate::{QueueStats, Result};

/// A build over for good, as SQL on a row of `builds`: a final phase, and no queue item
/// (an internal error with a queue item is retried).
const ENDED: &str = "phase IN ('complete', 'error', 'cancelled', 'internalerror') \
     AND updated_at <= $1 \
     AND NOT EXISTS (SELECT 1 FROM queue_items q WHERE q.build_id = builds.id)";

/// Queue items claimed under a running lease (Quay's `_running_jobs`).
const LOCKED: &str = "NOT available AND processing_expires > $1";

/// Queue items claimable now (Quay's `_available_jobs`).
const AVAILABLE: &str = "available_after <= $1 \
     AND (available OR processing_expires <= $1) AND retries_remaining > 0";

/// Reads and deletes that are not the queue's or the logs' business.
#[async_trait]
pub(crate) trait Maintenance {
    async fn ping_database(&self) -> Result<()>;
    async fn count_queue(&self, now: DateTime<Utc>) -> Result<QueueStats>;
    async fn select_ended(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<Build>>;
    async fn set_pruned(&self, builds: &[BuildId]) -> Result<()>;
    async fn delete_ended(&self, before: DateTime<Utc>, limit: u32) -> Result<u64>;
}

#[async_trait]
impl<B> Maintenance for B
where
    B: Backend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'n> &'n str: ColumnIndex<<B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
{
    async fn ping_database(&self) -> Result<()> {
        self.probe().await
    }

    async fn count_queue(&self, now: DateTime<Utc>) -> Result<QueueStats> {
        let names = "SELECT COUNT(DISTINCT queue_name) FROM queue_items WHERE";
        let queries = [
            format!("{names} {LOCKED}"),
            format!("{names} {AVAILABLE}"),
            format!(
                "{names} {AVAILABLE} AND queue_name NOT IN \
                 (SELECT queue_name FROM queue_items WHERE {LOCKED})"
            ),
        ];
        let mut counts = [0u64; 3];
        for (count, sql) in counts.iter_mut().zip(&queries) {
            let (n,): (i64,) = sqlx::query_as(sql)
                .bind(millis(now))
                .fetch_one(self.pool())
                .await?;
            *count = u64::try_from(n).unwrap_or(0);
        }
        let [locked, available, available_unlocked] = counts;
        let (oldest,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(b.created_at) FROM queue_items q JOIN builds b ON b.id = q.build_id \
             WHERE q.available AND q.retries_remaining > 0",
        )
        .fetch_one(self.pool())
        .await?;
        let live: Vec<(String, i64)> = sqlx::query_as(
            "SELECT phase, COUNT(*) FROM builds WHERE phase IN ('waiting', 'build-scheduled', \
             'unpacking', 'pulling', 'building', 'pushing') GROUP BY phase",
        )
        .fetch_all(self.pool())
        .await?;
        let live_phases = super::rows::live_phases(live)?;
        Ok(QueueStats {
            locked,
            available,
            available_unlocked,
            oldest_waiting: oldest.map(|ms| time(ms, "created_at")).transpose()?,
            live_phases,
        })
    }

    async fn select_ended(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<Build>> {
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds WHERE NOT context_pruned AND {ENDED} \
             ORDER BY updated_at LIMIT $2"
        );
        let rows: Vec<BuildRow> = sqlx::query_as(&sql)
            .bind(millis(before))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(Build::try_from).collect()
    }

    async fn set_pruned(&self, builds: &[BuildId]) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for id in builds {
            sqlx::query("UPDATE builds SET context_pruned = TRUE WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_ended(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        // The logs go with their builds (ON DELETE CASCADE).
        let sql = format!(
            "DELETE FROM builds WHERE id IN \
             (SELECT id FROM builds WHERE context_pruned AND {ENDED} LIMIT $2)"
        );
        let done = sqlx::query(&sql)
            .bind(millis(before))
            .bind(i64::from(limit))
            .execute(self.pool())
            .await?;
        Ok(done.count())
    }
}
