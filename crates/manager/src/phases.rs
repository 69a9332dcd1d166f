//! Phase changes as every role makes them: asked of the transition table, settled by the
//! store's compare-and-set, and written to the build's log when the phase really changed.

use buildman_core::{Actor, BuildId, JobEnd, LogEntry, LogType, Phase};
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

/// How many entries at the end of a log are searched for a worker's error line.
const ERROR_SEARCH_ENTRIES: u32 = 64;
/// Most characters of a build's error text.
const MAX_ERROR_CHARS: usize = 2048;

/// Why a worker's build failed, as the build's error: the last error line it logged before
/// reporting ERROR (ours logs a one-line summary; quay-builder's `{"error": ...}` lines are
/// taken as they are), at most [`MAX_ERROR_CHARS`] characters. A worker reports a phase only
/// after its earlier lines were acknowledged, so the line is stored by then; without one,
/// the generic reason.
pub(crate) async fn worker_error(store: &dyn Store, build: BuildId) -> String {
    let last_error = async {
        let total = store.read_logs(build, 0, 0, 0).await?.total;
        let start = total.saturating_sub(u64::from(ERROR_SEARCH_ENTRIES));
        let page = store
            .read_logs(build, start, ERROR_SEARCH_ENTRIES, u64::MAX)
            .await?;
        Ok::<_, buildman_store::StoreError>(
            (page.entries.into_iter().rev())
                .find(|e| e.kind == Some(LogType::Error) && !e.message.trim().is_empty())
                .map(|e| e.message),
        )
    };
    match last_error.await {
        Ok(Some(message)) => clip(message.trim(), MAX_ERROR_CHARS),
        Ok(None) => JobEnd::Error.reason().to_string(),
        Err(e) => {
            tracing::warn!(build_id = %build, error = %e, "could not read the build log for its error");
            JobEnd::Error.reason().to_string()
        }
    }
}

/// At most `max` characters of `text`, marked when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
