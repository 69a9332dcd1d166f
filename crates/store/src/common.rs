//! What the backends share: how times, counts and ids are stored and read back, and how a
//! value the store cannot read becomes [`StoreError::Corrupt`].

use std::str::FromStr;
use std::time::Duration;

use buildman_core::BuildId;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{Result, StoreError};

/// A [`StoreError::Corrupt`] saying what was wrong.
pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// Reads one column, reporting a value of the wrong type as corrupt.
pub(crate) fn column<'r, T, R>(row: &'r R, name: &str) -> Result<T>
where
    R: Row,
    T: Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    row.try_get(name)
        .map_err(|e| corrupt(format!("column {name}: {e}")))
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
pub(crate) fn retries(n: i64, item: i64) -> Result<u32> {
    u32::try_from(n).map_err(|_| corrupt(format!("queue item {item}: retries_remaining {n}")))
}

/// A stored build id back as a [`BuildId`].
pub(crate) fn build_id(text: &str) -> Result<BuildId> {
    BuildId::from_str(text).map_err(|e| corrupt(format!("build id {text:?}: {e}")))
}

/// The error for a value that would not serialise into a JSON column.
pub(crate) fn unserialisable(what: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| corrupt(format!("cannot serialise {what}: {e}"))
}

/// A stored log length back as a `u64`.
pub(crate) fn log_total(n: i64, id: BuildId) -> Result<u64> {
    u64::try_from(n).map_err(|_| corrupt(format!("build {id}: log index {n}")))
}
