//! The build queue in Quay's own `queueitem` table (quay-integration.md sections 3.1 and
//! 13).
//!
//! What is Quay's and kept as Quay does it: the claimable items (`dockerfilebuild/%`, due,
//! available or lease run out, retries left, no running item of the same queue name,
//! oldest id first), the claim as a compare-and-set on `state_id` that takes a retry and a
//! lease, a new `state_id` on every other write, `processing_expires` left as it was when
//! an item is returned, naive UTC times. What is buildman's: a claimer takes a
//! transaction-level advisory lock on the queue name before its compare-and-set, so two
//! buildman managers cannot start two builds of one repository (Quay's Python claimers can
//! race there; they are turned off in Quay mode); completing, returning and extending
//! check the claim's `state_id`, so a manager that lost its claim changes nothing; and an
//! extension keeps the `state_id` (the claim's holder keeps proving it with the one it
//! got). Quay's schema has no column for an attempt count or silent restores: the claim's
//! attempt is derived from the retries, and silent restores are not stored.

use std::time::Duration;

use buildman_core::{BuildId, ClaimedItem, Requeue};
use buildman_quay::rows::QueueBody;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{Result, StoreError};

/// The Alembic revisions of Quay's schema this backend is written for.
pub const SUPPORTED_REVISIONS: &[&str] = &["9fa37f66a9b6"];

/// Retries Quay's web tier gives a build (section 4.4): the first claim is attempt 1.
const QUAY_RETRIES: i32 = 3;
/// How long an item whose body does not parse waits before it is claimable again (Quay:
/// `incomplete(300, restore=false)`).
const BAD_BODY_DELAY: Duration = Duration::from_secs(300);
/// Advisory-lock class of Quay queue names: "qy" and 1 (distinct from the other backends').
const QUEUE_NAME_LOCK: i32 = 0x7179_0001;

/// Quay's claimable items (section 13), oldest first, of queue names not in `$2`; `$3`
/// keeps one queue name (NULL: any).
const CLAIMABLE: &str = "SELECT id, queue_name, body, state_id FROM queueitem \
     WHERE queue_name ILIKE 'dockerfilebuild/%' AND available_after <= $1::timestamp \
       AND (available OR processing_expires <= $1::timestamp) AND retries_remaining > 0 \
       AND queue_name NOT IN (SELECT queue_name FROM queueitem \
           WHERE queue_name ILIKE 'dockerfilebuild/%' AND NOT available \
             AND processing_expires > $1::timestamp) \
       AND NOT (queue_name = ANY($2)) AND ($3::varchar IS NULL OR queue_name = $3) \
     ORDER BY id LIMIT 1";

/// A claimable (or claimed) item as read.
#[derive(sqlx::FromRow)]
pub(super) struct Claimable {
    id: i32,
    queue_name: String,
    body: String,
    state_id: String,
}

/// The build queue in Quay's `queueitem` table.
#[derive(Clone, Debug)]
pub struct QuayQueue {
    pub(super) pool: PgPool,
}

impl QuayQueue {
    /// The queue of the Quay database behind `pool`, once its schema revision is one this
    /// backend knows: buildman never migrates Quay's schema (Quay's migrations own it).
    pub async fn open(pool: PgPool) -> Result<Self> {
        let revision: Option<String> =
            sqlx::query_scalar("SELECT version_num FROM alembic_version")
                .fetch_optional(&pool)
                .await?;
        match revision {
            Some(r) if SUPPORTED_REVISIONS.contains(&r.as_str()) => Ok(Self { pool }),
            found => Err(StoreError::UnsupportedSchema(format!(
                "Quay's database is at schema revision {}; this buildman supports {}. \
                 Run the buildman release made for this Quay version",
                found.as_deref().unwrap_or("(none)"),
                SUPPORTED_REVISIONS.join(", ")
            ))),
        }
    }

    /// Claims the oldest claimable build item with a lease of `lease`, taking one retry;
    /// `None` when nothing is claimable.
    pub async fn claim(&self, now: DateTime<Utc>, lease: Duration) -> Result<Option<ClaimedItem>> {
        let mut skip: Vec<String> = Vec::new();
        loop {
            let mut tx = self.pool.begin().await?;
            let Some(candidate) = pick(&mut tx, now, &skip, None).await? else {
                tx.rollback().await?;
                return Ok(None);
            };
            let name = candidate.queue_name;
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
                    .bind(QUEUE_NAME_LOCK)
                    .bind(&name)
                    .fetch_one(&mut *tx)
                    .await?;
            // A new statement, so a new snapshot: it sees every claim on this queue name
            // committed before the lock was free.
            let item = match locked {
                true => pick(&mut tx, now, &[], Some(&name)).await?,
                false => None,
            };
            skip.push(name);
            let Some(item) = item else {
                tx.rollback().await?;
                continue;
            };
            if let Some(claimed) = take(&mut tx, item, now, lease).await? {
                tx.commit().await?;
                return Ok(Some(claimed));
            }
            tx.commit().await?;
        }
    }

    /// Deletes a claimed item (its build is done with the queue). False if the claim was lost.
    pub async fn complete_item(&self, item: &ClaimedItem) -> Result<bool> {
        let done = sqlx::query("DELETE FROM queueitem WHERE id = $1 AND state_id = $2")
            .bind(item_id(item)?)
            .bind(&item.state_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Returns a claimed item to the queue as Quay's `incomplete` does: available after
    /// `requeue.after`, its retry given back or not, a new `state_id`. False if the claim
    /// was lost.
    pub async fn return_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        requeue: &Requeue,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE queueitem SET available = TRUE, available_after = $1::timestamp, \
             retries_remaining = retries_remaining + $2, state_id = $3 WHERE id = $4 AND state_id = $5",
        )
        .bind(timestamp(now, requeue.after))
        .bind(i32::from(requeue.restore_retry))
        .bind(Uuid::new_v4().to_string())
        .bind(item_id(item)?)
        .bind(&item.state_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Pushes a claimed item's lease out to `now + lease`, writing only when that moves it
    /// by more than `minimum`. False if the claim was lost.
    pub async fn extend_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        lease: Duration,
        minimum: Duration,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE queueitem SET processing_expires = $1::timestamp WHERE id = $2 AND state_id = $3 \
             AND (processing_expires IS NULL OR $1::timestamp - processing_expires > make_interval(secs => $4))",
        )
        .bind(timestamp(now, lease))
        .bind(item_id(item)?)
        .bind(&item.state_id)
        .bind(minimum.as_secs_f64())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        // Not moved far enough, or the claim is gone.
        let held: Option<i32> =
            sqlx::query_scalar("SELECT id FROM queueitem WHERE id = $1 AND state_id = $2")
                .bind(item_id(item)?)
                .bind(&item.state_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(held.is_some())
    }
}

/// The oldest claimable item (see [`CLAIMABLE`]), locked against other claimers' writes.
async fn pick(
    tx: &mut Transaction<'static, Postgres>,
    now: DateTime<Utc>,
    skip: &[String],
    only: Option<&str>,
) -> Result<Option<Claimable>> {
    let query = format!("{CLAIMABLE} FOR UPDATE SKIP LOCKED");
    Ok(sqlx::query_as(&query)
        .bind(timestamp(now, Duration::ZERO))
        .bind(skip)
        .bind(only)
        .fetch_optional(&mut **tx)
        .await?)
}

/// Quay's compare-and-set claim of `item`; an item whose body names no build is returned
/// as Quay returns it (claimable again in 5 minutes, its retry spent) and `None` given.
async fn take(
    tx: &mut Transaction<'static, Postgres>,
    item: Claimable,
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<Option<ClaimedItem>> {
    let state_id = Uuid::new_v4().to_string();
    let retries: Option<i32> = sqlx::query_scalar(
        "UPDATE queueitem SET available = FALSE, processing_expires = $1::timestamp, \
         retries_remaining = retries_remaining - 1, state_id = $2 \
         WHERE id = $3 AND state_id = $4 RETURNING retries_remaining",
    )
    .bind(timestamp(now, lease))
    .bind(&state_id)
    .bind(item.id)
    .bind(&item.state_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(retries) = retries else {
        return Ok(None);
    };
    let build = QueueBody::parse(&item.body)
        .ok()
        .and_then(|body| Uuid::parse_str(&body.build_uuid).ok());
    let Some(build) = build else {
        tracing::warn!(item = item.id, queue = %item.queue_name, "a build queue item's body names no build; returned for 5 minutes, its retry spent");
        sqlx::query(
            "UPDATE queueitem SET available = TRUE, available_after = $1::timestamp, state_id = $2 WHERE id = $3",
        )
        .bind(timestamp(now, BAD_BODY_DELAY))
        .bind(Uuid::new_v4().to_string())
        .bind(item.id)
        .execute(&mut **tx)
        .await?;
        return Ok(None);
    };
    Ok(Some(ClaimedItem {
        item_id: i64::from(item.id),
        state_id,
        build_id: BuildId(build),
        queue_name: item.queue_name,
        retries_remaining: u32::try_from(retries).unwrap_or(0),
        attempt: u32::try_from(QUAY_RETRIES - retries).unwrap_or(0).max(1),
        silent_restores: 0,
    }))
}

impl QuayQueue {
    /// The claims held now (items taken and not returned), each as its claimer holds it;
    /// items whose body names no build are left out (no job can be running for them).
    pub async fn claimed(&self, limit: u32) -> Result<Vec<ClaimedItem>> {
        let rows: Vec<(i32, String, String, String, i32)> = sqlx::query_as(
            "SELECT id, queue_name, body, state_id, retries_remaining FROM queueitem \
             WHERE queue_name ILIKE 'dockerfilebuild/%' AND NOT available ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok((rows.into_iter())
            .filter_map(|(id, queue_name, body, state_id, retries)| {
                let build = QueueBody::parse(&body).ok()?.build_uuid;
                Some(ClaimedItem {
                    item_id: i64::from(id),
                    state_id,
                    build_id: BuildId(Uuid::parse_str(&build).ok()?),
                    queue_name,
                    retries_remaining: u32::try_from(retries).unwrap_or(0),
                    attempt: u32::try_from(QUAY_RETRIES - retries).unwrap_or(0).max(1),
                    silent_restores: 0,
                })
            })
            .collect())
    }
}

/// `queueitem.id` is an `integer`.
fn item_id(item: &ClaimedItem) -> Result<i32> {
    i32::try_from(item.item_id).map_err(|_| {
        StoreError::Corrupt(format!("queue item id {} is not a Quay id", item.item_id))
    })
}

/// `t + d` as the naive UTC text Quay's `timestamp without time zone` columns hold.
pub(super) fn timestamp(t: DateTime<Utc>, d: Duration) -> String {
    let at = chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    at.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}
