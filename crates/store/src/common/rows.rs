//! Rows as the databases return them, and how they become domain values: times are unix
//! milliseconds, counts integers, build ids hyphenated UUIDs, JSON columns read as text.
//! A value the store cannot read is [`StoreError::Corrupt`], naming the build and column.

use std::str::FromStr;
use std::time::Duration;

use buildman_core::{Build, BuildId, ClaimedItem, LogEntry, Phase};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::{QueueState, Result, StoreError};

/// A [`StoreError::Corrupt`] saying what was wrong.
pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// A time as stored: unix milliseconds.
pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A duration in milliseconds, saturating.
pub(crate) fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `t + d` as stored, clamped to the last time chrono can represent so it reads back.
pub(crate) fn after(t: DateTime<Utc>, d: Duration) -> i64 {
    millis(t)
        .saturating_add(duration_millis(d))
        .min(DateTime::<Utc>::MAX_UTC.timestamp_millis())
}

/// A stored time back as a `DateTime`.
pub(crate) fn time(ms: i64, what: &str) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| corrupt(format!("{what}: {ms} is not a time in milliseconds")))
}

/// The current time, truncated to what the database keeps.
pub(crate) fn now_stored() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// A stored retry count back as a `u32`.
fn retries(n: i64, item: i64) -> Result<u32> {
    u32::try_from(n).map_err(|_| corrupt(format!("queue item {item}: retries_remaining {n}")))
}

/// A stored build id back as a [`BuildId`].
pub(crate) fn build_id(text: &str) -> Result<BuildId> {
    BuildId::from_str(text).map_err(|e| corrupt(format!("build id {text:?}: {e}")))
}

/// A stored phase of build `id` back as a [`Phase`].
pub(crate) fn phase(text: &str, id: BuildId) -> Result<Phase> {
    Phase::from_str(text).map_err(|e| corrupt(format!("build {id}: {e}")))
}

/// The error for a value that would not serialise into a JSON column.
pub(crate) fn unserialisable(what: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| corrupt(format!("cannot serialise {what}: {e}"))
}

/// A stored log length back as a `u64`.
pub(crate) fn log_total(n: i64, id: BuildId) -> Result<u64> {
    u64::try_from(n).map_err(|_| corrupt(format!("build {id}: log index {n}")))
}

/// A JSON column of build `id`, read as text.
pub(crate) fn json<T: DeserializeOwned>(text: &str, column: &str, id: BuildId) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(format!("build {id}: {column} {text:?}: {e}")))
}

/// The columns of `builds` a [`BuildRow`] reads. `CAST(… AS TEXT)` gives the JSON columns'
/// text on both databases (PostgreSQL stores them as JSONB).
pub(crate) const BUILD_COLUMNS: &str = "id, namespace, repository, phase, \
     CAST(source AS TEXT) AS source, CAST(tags AS TEXT) AS tags, context, dockerfile_path, \
     display_name, manual_user, pull_robot, created_at, updated_at, error, result_location, \
     attempts, executor, scheduled_at, finished_at";

/// A row of `builds`, selected as [`BUILD_COLUMNS`].
#[derive(sqlx::FromRow)]
pub(crate) struct BuildRow {
    id: String,
    namespace: String,
    repository: String,
    phase: String,
    source: String,
    tags: String,
    context: String,
    dockerfile_path: String,
    display_name: String,
    manual_user: Option<String>,
    pull_robot: Option<String>,
    created_at: i64,
    updated_at: i64,
    error: Option<String>,
    result_location: Option<String>,
    attempts: i64,
    executor: Option<String>,
    scheduled_at: Option<i64>,
    finished_at: Option<i64>,
}

impl TryFrom<BuildRow> for Build {
    type Error = StoreError;

    fn try_from(row: BuildRow) -> Result<Build> {
        let id = build_id(&row.id)?;
        Ok(Build {
            id,
            namespace: row.namespace,
            repository: row.repository,
            phase: phase(&row.phase, id)?,
            source: json(&row.source, "source", id)?,
            tags: json(&row.tags, "tags", id)?,
            context: row.context,
            dockerfile_path: row.dockerfile_path,
            display_name: row.display_name,
            manual_user: row.manual_user,
            pull_robot: row.pull_robot,
            created_at: time(row.created_at, "created_at")?,
            updated_at: time(row.updated_at, "updated_at")?,
            error: row.error,
            result_location: row.result_location,
            attempts: u32::try_from(row.attempts)
                .map_err(|_| corrupt(format!("build {id}: attempts {}", row.attempts)))?,
            executor: row.executor,
            scheduled_at: row
                .scheduled_at
                .map(|ms| time(ms, "scheduled_at"))
                .transpose()?,
            finished_at: row
                .finished_at
                .map(|ms| time(ms, "finished_at"))
                .transpose()?,
        })
    }
}

/// A queue item's state, as `queue_state` selects it.
#[derive(sqlx::FromRow)]
pub(crate) struct QueueRow {
    id: i64,
    retries_remaining: i64,
    available: bool,
    available_after: i64,
    processing_expires: Option<i64>,
}

impl TryFrom<QueueRow> for QueueState {
    type Error = StoreError;

    fn try_from(row: QueueRow) -> Result<QueueState> {
        Ok(QueueState {
            retries_remaining: retries(row.retries_remaining, row.id)?,
            available: row.available,
            available_after: time(row.available_after, "available_after")?,
            processing_expires: row
                .processing_expires
                .map(|ms| time(ms, "processing_expires"))
                .transpose()?,
        })
    }
}

/// The columns of `queue_items q` a [`ClaimableRow`] reads.
pub(crate) const CLAIMABLE_COLUMNS: &str = "q.id, q.state_id, q.build_id, q.queue_name, \
     q.retries_remaining, q.attempts, q.silent_restores";

/// The condition that makes item `q` claimable at `$1` (see [`buildman_core::queue`]): due,
/// available or with an expired lease, with retries left, and no other item of its queue
/// name under an unexpired lease.
pub(crate) const CLAIMABLE: &str = "q.available_after <= $1 \
     AND (q.available OR q.processing_expires <= $1) \
     AND q.retries_remaining > 0 \
     AND NOT EXISTS ( \
       SELECT 1 FROM queue_items r \
       WHERE r.queue_name = q.queue_name AND r.id <> q.id \
         AND NOT r.available AND r.processing_expires > $1)";

/// A claimable queue item, selected as [`CLAIMABLE_COLUMNS`].
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimableRow {
    pub id: i64,
    pub state_id: String,
    build_id: String,
    pub queue_name: String,
    retries_remaining: i64,
    attempts: i64,
    silent_restores: i64,
}

impl ClaimableRow {
    /// The claim on this item once its `state_id` became `state_id`, which took one retry
    /// and counted one more attempt.
    pub fn claimed(&self, state_id: String) -> Result<ClaimedItem> {
        let left = retries(self.retries_remaining, self.id)?;
        let count = |n: i64, what: &str| {
            u32::try_from(n).map_err(|_| corrupt(format!("queue item {}: {what} {n}", self.id)))
        };
        Ok(ClaimedItem {
            item_id: self.id,
            state_id,
            build_id: build_id(&self.build_id)?,
            queue_name: self.queue_name.clone(),
            // Only items with retries left are claimable.
            retries_remaining: left.saturating_sub(1),
            attempt: count(self.attempts, "attempts")?.saturating_add(1),
            silent_restores: count(self.silent_restores, "silent_restores")?,
        })
    }

    /// The claim this item is under now (it is claimed: its retry and attempt are counted
    /// already).
    pub fn held(&self) -> Result<ClaimedItem> {
        let mut item = self.claimed(self.state_id.clone())?;
        item.retries_remaining = retries(self.retries_remaining, self.id)?;
        item.attempt = item.attempt.saturating_sub(1);
        Ok(item)
    }
}

/// The columns of `builds b` a [`LogHead`] reads. A log's length costs one index probe
/// (indices are dense).
pub(crate) const LOG_HEAD_COLUMNS: &str = "b.id, b.last_worker_sequence, b.attempt, b.phase, \
     (SELECT COALESCE(MAX(l.idx) + 1, 0) FROM build_logs l WHERE l.build_id = b.id) AS total";

/// Where a build's log stands: its length and the last sequence number stored from the
/// current attempt's worker.
#[derive(sqlx::FromRow)]
pub(crate) struct LogHead {
    pub id: String,
    pub last_worker_sequence: Option<i32>,
    /// The claim of the build's current attempt.
    pub attempt: Option<String>,
    pub phase: String,
    pub total: i64,
}

/// The length of a build's log, in a form that costs one index probe (indices are dense).
pub(crate) const LOG_TOTAL: &str =
    "SELECT COALESCE(MAX(idx) + 1, 0) AS total FROM build_logs WHERE build_id = $1";

/// A page of a build's log with the log's length, in one statement so both come from the
/// same snapshot. The page is joined to the length, so an empty page still brings one row.
///
/// The page is cut by the entries' sizes first (at most `$4` bytes, though always the first
/// entry; a running sum over the sizes alone), and only the entries kept are read: a page
/// of huge lines never brings more than `$4` bytes (or one entry) into the manager.
pub(crate) const LOG_PAGE: &str = "SELECT t.total, l.idx, CAST(l.entry AS TEXT) AS entry \
     FROM (SELECT COALESCE(MAX(idx) + 1, 0) AS total FROM build_logs WHERE build_id = $1) t \
     LEFT JOIN (SELECT b.idx, b.entry FROM build_logs b JOIN \
                (SELECT idx FROM \
                  (SELECT idx, SUM(size) OVER (ORDER BY idx) AS upto, \
                          ROW_NUMBER() OVER (ORDER BY idx) AS n FROM \
                    (SELECT idx, OCTET_LENGTH(CAST(entry AS TEXT)) AS size FROM build_logs \
                     WHERE build_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3) sized) summed \
                 WHERE upto <= $4 OR n = 1) kept \
                ON b.build_id = $1 AND b.idx = kept.idx) l ON TRUE \
     ORDER BY l.idx";

/// One row of a log page: the log's length, and an entry unless the page is empty.
#[derive(sqlx::FromRow)]
pub(crate) struct LogPageRow {
    pub total: i64,
    idx: Option<i64>,
    entry: Option<String>,
}

impl LogPageRow {
    /// The entry of this row of build `id`'s log, if the row has one.
    pub fn entry(&self, id: BuildId) -> Result<Option<LogEntry>> {
        let (Some(idx), Some(entry)) = (self.idx, &self.entry) else {
            return Ok(None);
        };
        serde_json::from_str(entry)
            .map(Some)
            .map_err(|e| corrupt(format!("build {id}: log entry {idx}: {e}")))
    }
}

/// Counts of builds per phase name as the database gives them, as phases in the order of
/// [`Phase::ALL`].
pub(crate) fn live_phases(counts: Vec<(String, i64)>) -> Result<Vec<(Phase, u64)>> {
    let mut live = Vec::with_capacity(counts.len());
    for (name, n) in counts {
        let p: Phase = name
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("phase {name:?}: {e}")))?;
        live.push((p, u64::try_from(n).unwrap_or(0)));
    }
    live.sort_by_key(|(p, _)| Phase::ALL.iter().position(|q| q == p));
    Ok(live)
}
