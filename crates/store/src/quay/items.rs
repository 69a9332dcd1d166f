//! The rest of the queue as the manager uses it on Quay's `queueitem`: a build's item by
//! the build's `queue_id` (cancel, queue state), the next due time, the start-up release of
//! a lone manager's claims, and Quay's queue gauges (section 16).

use std::time::Duration;

use buildman_core::BuildId;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queue::{QuayQueue, timestamp};
use crate::{QueueState, QueueStats, Result, StoreError};

/// `repositorybuild.queue_id` (a decimal string) as the `queueitem.id` it names; NULL when
/// it names none. The newest build of a uuid, as the build query (section 6.1) takes it.
const BUILD_ITEM_ID: &str = "(SELECT CASE WHEN queue_id ~ '^[0-9]{1,9}$' THEN queue_id::integer END \
     FROM repositorybuild WHERE uuid = $1 ORDER BY started DESC, id DESC LIMIT 1)";

/// Milliseconds since the epoch of a naive UTC column.
fn millis_of(column: &str) -> String {
    format!("(EXTRACT(EPOCH FROM {column}) * 1000)::bigint")
}

/// A time from milliseconds since the epoch.
pub(super) fn from_millis(ms: i64, what: &str) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("{what}: {ms} ms is no time")))
}

/// Quay's claimable items at `$1` (section 13's pick, without the running-name exclusion).
const AVAILABLE: &str = "queue_name ILIKE 'dockerfilebuild/%' AND available_after <= $1::timestamp \
     AND (available OR processing_expires <= $1::timestamp) AND retries_remaining > 0";
/// Items claimed under a lease still running at `$1`.
const LOCKED: &str = "queue_name ILIKE 'dockerfilebuild/%' AND NOT available \
     AND processing_expires > $1::timestamp";

impl QuayQueue {
    /// Deletes a build's queue item whatever its claim, as Quay's web tier does on cancel.
    pub async fn delete_build_item(&self, build: BuildId) -> Result<()> {
        sqlx::query(&format!("DELETE FROM queueitem WHERE id = {BUILD_ITEM_ID}"))
            .bind(build.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The queue state of a build's item, `None` once it left the queue.
    pub async fn build_item_state(&self, build: BuildId) -> Result<Option<QueueState>> {
        let sql = format!(
            "SELECT retries_remaining, available, {}, {} FROM queueitem WHERE id = {BUILD_ITEM_ID}",
            millis_of("available_after"),
            millis_of("processing_expires"),
        );
        let row: Option<(i32, bool, i64, Option<i64>)> = sqlx::query_as(&sql)
            .bind(build.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some((retries, available, after, expires)) = row else {
            return Ok(None);
        };
        Ok(Some(QueueState {
            retries_remaining: u32::try_from(retries).unwrap_or(0),
            available,
            available_after: from_millis(after, "queueitem.available_after")?,
            processing_expires: expires
                .map(|ms| from_millis(ms, "queueitem.processing_expires"))
                .transpose()?,
        }))
    }

    /// The earliest `available_after` after `now` among build items with retries left.
    pub async fn next_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let sql = format!(
            "SELECT MIN({}) FROM queueitem WHERE queue_name ILIKE 'dockerfilebuild/%' \
             AND available_after > $1::timestamp AND retries_remaining > 0",
            millis_of("available_after")
        );
        let (ms,): (Option<i64>,) = sqlx::query_as(&sql)
            .bind(timestamp(now, Duration::ZERO))
            .fetch_one(&self.pool)
            .await?;
        ms.map(|ms| from_millis(ms, "queueitem.available_after"))
            .transpose()
    }

    /// Returns every claimed build item at once, available now with its retry restored
    /// (Quay's `incomplete(restore=true)`); how many. Only for a lone manager.
    pub async fn release_all(&self, now: DateTime<Utc>) -> Result<u64> {
        let ids: Vec<i32> = sqlx::query_scalar(
            "SELECT id FROM queueitem WHERE queue_name ILIKE 'dockerfilebuild/%' AND NOT available",
        )
        .fetch_all(&self.pool)
        .await?;
        for id in &ids {
            sqlx::query(
                "UPDATE queueitem SET available = TRUE, available_after = $1::timestamp, \
                 retries_remaining = retries_remaining + 1, state_id = $2 WHERE id = $3",
            )
            .bind(timestamp(now, Duration::ZERO))
            .bind(Uuid::new_v4().to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        }
        Ok(ids.len() as u64)
    }

    /// Quay's three queue gauges (distinct queue names locked, available, available and not
    /// locked), the oldest waiting build, and the phases of the builds still in the queue.
    pub async fn stats(&self, now: DateTime<Utc>) -> Result<QueueStats> {
        let names = "SELECT COUNT(DISTINCT queue_name) FROM queueitem WHERE";
        let queries = [
            format!("{names} {LOCKED}"),
            format!("{names} {AVAILABLE}"),
            format!(
                "{names} {AVAILABLE} AND queue_name NOT IN (SELECT queue_name FROM queueitem WHERE {LOCKED})"
            ),
        ];
        let at = timestamp(now, Duration::ZERO);
        let mut counts = [0u64; 3];
        for (count, sql) in counts.iter_mut().zip(&queries) {
            let (n,): (i64,) = sqlx::query_as(sql).bind(&at).fetch_one(&self.pool).await?;
            *count = u64::try_from(n).unwrap_or(0);
        }
        let [locked, available, available_unlocked] = counts;
        // Builds of the queue only: `repositorybuild` holds every build Quay ever ran,
        // and has no index on the phase alone.
        let queued = "FROM queueitem q JOIN repositorybuild b ON b.queue_id = q.id::text \
                      WHERE q.queue_name ILIKE 'dockerfilebuild/%'";
        let (oldest,): (Option<i64>,) = sqlx::query_as(&format!(
            "SELECT MIN({}) {queued} AND q.available AND q.retries_remaining > 0",
            millis_of("b.started")
        ))
        .fetch_one(&self.pool)
        .await?;
        let live: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT b.phase, COUNT(*) {queued} AND b.phase IN ('waiting', 'build-scheduled', \
             'unpacking', 'pulling', 'building', 'pushing') GROUP BY b.phase"
        ))
        .fetch_all(&self.pool)
        .await?;
        let live_phases = crate::common::rows::live_phases(live)?;
        Ok(QueueStats {
            locked,
            available,
            available_unlocked,
            oldest_waiting: oldest
                .map(|ms| from_millis(ms, "repositorybuild.started"))
                .transpose()?,
            live_phases,
        })
    }
}
