//! A build trigger's successive-failure counters and auto-disable, as Quay's manager keeps
//! them (quay-integration.md section 14.1), updated when a triggered build reaches a result.

use buildman_core::Phase;

use crate::Result;

/// SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD and
/// SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD; 0 never disables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerThresholds {
    pub failures: u32,
    pub internal_errors: u32,
}

impl Default for TriggerThresholds {
    /// Quay's defaults.
    fn default() -> Self {
        Self {
            failures: 100,
            internal_errors: 5,
        }
    }
}

/// `disablereason` ids (fixed in Quay's schema).
const SUCCESSIVE_BUILD_FAILURES: i32 = 2;
const SUCCESSIVE_BUILD_INTERNAL_ERRORS: i32 = 3;

/// Counts a triggered build's result: `complete` resets both counters, `error` counts a
/// failure (and resets the internal errors), `internalerror` counts an internal error;
/// a count at its threshold disables the trigger. Other phases change nothing.
pub(super) async fn count_result(
    pool: &sqlx::PgPool,
    trigger: i32,
    result: Phase,
    thresholds: TriggerThresholds,
) -> Result<()> {
    if !matches!(
        result,
        Phase::Complete | Phase::Error | Phase::InternalError
    ) {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let counts: Option<(i32, i32)> = sqlx::query_as(
        "SELECT successive_failure_count, successive_internal_error_count \
         FROM repositorybuildtrigger WHERE id = $1 FOR UPDATE",
    )
    .bind(trigger)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((failures, internal)) = counts else {
        return Ok(());
    };
    let (failures, internal) = match result {
        Phase::Complete => (0, 0),
        Phase::Error => (failures.saturating_add(1), 0),
        _ => (failures, internal.saturating_add(1)),
    };
    let reached =
        |count: i32, threshold: u32| threshold > 0 && i64::from(count) >= i64::from(threshold);
    let disable = match result {
        Phase::Complete => None,
        _ if reached(failures, thresholds.failures) => Some(SUCCESSIVE_BUILD_FAILURES),
        _ if reached(internal, thresholds.internal_errors) => {
            Some(SUCCESSIVE_BUILD_INTERNAL_ERRORS)
        }
        _ => None,
    };
    sqlx::query(
        "UPDATE repositorybuildtrigger SET successive_failure_count = $1, \
         successive_internal_error_count = $2, \
         enabled = CASE WHEN $3::integer IS NULL THEN enabled ELSE FALSE END, \
         disabled_reason_id = COALESCE($3, disabled_reason_id), \
         disabled_datetime = CASE WHEN $3::integer IS NULL THEN disabled_datetime \
                             ELSE now() AT TIME ZONE 'utc' END \
         WHERE id = $4",
    )
    .bind(failures)
    .bind(internal)
    .bind(disable)
    .bind(trigger)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if disable.is_some() {
        tracing::warn!(trigger, phase = %result, "trigger disabled after successive failed builds, as Quay does");
    }
    Ok(())
}
