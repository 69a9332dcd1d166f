//! Retention: what a build leaves behind once it ended for good is deleted, in passes the
//! manager runs on a timer. An uploaded context goes BUILDMAN_CONTEXT_RETENTION after its
//! build ended (at the next pass by default); the build itself, with its log, after
//! BUILDMAN_BUILD_RETENTION (never by default). The store says which builds are over (no
//! queue item left: an internal error with a retry left is not), so a running build's
//! context is never touched, and a pass on several managers at once does no harm.

use std::sync::Arc;
use std::time::Duration;

use buildman_contexts::ContextStore;
use buildman_core::BuildSource;
use buildman_store::Store;

use crate::ManagerError;

/// Builds handled per statement, so a pass over a long backlog holds no long transaction.
const BATCH: u32 = 100;

/// What a pass reads and deletes.
pub(crate) struct Retention {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) files: Arc<dyn ContextStore>,
    pub(crate) context_retention: Duration,
    pub(crate) build_retention: Option<Duration>,
}

/// `d` before now (the beginning of time for a `d` too long to subtract).
fn ago(d: Duration) -> chrono::DateTime<chrono::Utc> {
    let d = chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
    (chrono::Utc::now().checked_sub_signed(d)).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// What one pass deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub(crate) contexts: u64,
    pub(crate) builds: u64,
}

impl Retention {
    /// A pass every `every`, until the manager stops.
    pub(crate) async fn run(self, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.pass().await {
                Ok(p) if p != Pruned::default() => {
                    tracing::info!(contexts = p.contexts, builds = p.builds, "retention pass");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; retried at the next"),
            }
        }
    }

    /// Deletes the contexts of builds over for longer than the context retention, then the
    /// builds over for longer than the build retention.
    pub(crate) async fn pass(&self) -> Result<Pruned, ManagerError> {
        let mut pruned = Pruned::default();
        let before = ago(self.context_retention);
        loop {
            let ended = self.store.ended_with_context(before, BATCH).await?;
            let mut done = Vec::with_capacity(ended.len());
            for build in &ended {
                if let BuildSource::Uploaded { file_id } = &build.source {
                    // A storage that fails stops the pass: the rest waits for the next.
                    self.files.delete(file_id).await?;
                    pruned.contexts += 1;
                    tracing::debug!(build_id = %build.id, "deleted the uploaded context of an ended build");
                }
                done.push(build.id);
            }
            self.store.mark_contexts_pruned(&done).await?;
            if ended.len() < BATCH as usize {
                break;
            }
        }
        let Some(keep) = self.build_retention else {
            return Ok(pruned);
        };
        let before = ago(keep);
        loop {
            let deleted = self.store.delete_ended_builds(before, BATCH).await?;
            pruned.builds += deleted;
            if deleted < u64::from(BATCH) {
                return Ok(pruned);
            }
        }
    }
}
