//! Phase changes as every role makes them: asked of the transition table, settled by the
//! store's compare-and-set, and written to the build's log when the phase really changed.

use buildman_core::{Actor, BuildId, LogEntry, Phase};
use buildman_store::Store;
use serde_json::{Map, Value};

use crate::ManagerError;

/// Moves a build to `to` when `by` may from its current phase (see
/// [`buildman_core::phase`]), and appends the phase entry (with `data`, such as pull
/// metadata) in the same store transaction when the phase changed, so the log's phase
/// entries follow the order of the changes whoever races. `error` replaces the build's error text. Returns the
/// phase the build had, or `None` when the table refused the change.
pub(crate) async fn change(
    store: &dyn Store,
    build: BuildId,
    to: Phase,
    by: Actor,
    error: Option<&str>,
    data: Map<String, Value>,
) -> Result<Option<Phase>, ManagerError> {
    let from = to.sources(by);
    if from.is_empty() {
        // The store reads an empty list as "from anywhere": never hand it one.
        return Ok(None);
    }
    let entry = LogEntry::phase(to, data, &chrono::Utc::now().to_rfc3339());
    Ok(store
        .set_phase(build, to, from, error, Some(&entry))
        .await?)
}

/// Appends entries to a build's log; failures are logged, not returned, because a log
/// entry must never decide a job's fate.
pub(crate) async fn log(store: &dyn Store, build: BuildId, entries: &[LogEntry]) {
    if let Err(e) = store.append_logs(build, entries).await {
        tracing::warn!(build_id = %build, error = %e, "could not append to the build log");
    }
}
