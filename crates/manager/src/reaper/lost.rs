//! Claims whose job records the orchestrator lost (Redis flushed, or restarted without its
//! data): the store still holds the claim and the build shows `building`, but no job
//! record exists, so no deadline will ever end the attempt and nothing extends its lease.
//! Every check compares the store's claims with the live job records; a claim no record
//! names in two checks in a row (a claim is recorded within moments, and a record taken is
//! settled within moments) ends as [`JobEnd::RecordLost`]: its build runs again at once with
//! its retry given back. Its worker, refused as its job is gone, gives up; the orphan
//! reaper stops any an executor still runs. Slots need no healing: the lost slots went with
//! the records, and the new attempts take new ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use buildman_core::{ClaimedItem, JobEnd};

use super::Reaper;
use crate::ManagerError;

/// How many claims one check looks at; more than any deployment runs at once.
const CLAIMS_PER_CHECK: u32 = 10_000;

/// How long a claim on releasing a lost claim stands (one manager acts on each).
const CLAIM_TTL: Duration = Duration::from_secs(600);

impl Reaper {
    /// Compares the store's claims with the live job records every `every`.
    pub(crate) fn start_claim_check(self: &Arc<Self>, every: Duration) {
        let reaper = self.clone();
        self.tasks.spawn_loop(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut suspects = HashSet::new();
            loop {
                ticks.tick().await;
                match reaper.check_claims(&suspects).await {
                    Ok(next) => suspects = next,
                    // Nothing is concluded from a check that could not see both sides.
                    Err(e) => {
                        tracing::warn!(error = %e, "could not compare claims with job records")
                    }
                }
            }
        });
    }

    /// One check: releases the claims among `suspects` (unrecorded at the last check) that
    /// are still unrecorded, and returns the claims unrecorded for the first time.
    async fn check_claims(
        &self,
        suspects: &HashSet<String>,
    ) -> Result<HashSet<String>, ManagerError> {
        // Claims first: a claim made after this read is not judged by this check.
        let claims = self.store.claimed_items(CLAIMS_PER_CHECK).await?;
        let recorded: HashSet<String> = (self.records.all().await?)
            .into_iter()
            .map(|r| r.queue_item.state_id)
            .collect();
        let mut next = HashSet::new();
        for item in claims {
            if recorded.contains(&item.state_id) {
                continue;
            }
            if !suspects.contains(&item.state_id) {
                next.insert(item.state_id);
                continue;
            }
            let build = item.build_id;
            if let Err(e) = self.release_lost(item).await {
                tracing::error!(build_id = %build, error = %e, "could not release a claim whose job record was lost");
            }
        }
        Ok(next)
    }

    /// Ends the attempt of a claim whose job record is gone: the build runs again (or, if
    /// it reached a final phase meanwhile, leaves the queue). One manager acts on each.
    async fn release_lost(&self, item: ClaimedItem) -> Result<(), ManagerError> {
        let claim = format!("lost/{}", item.state_id);
        if !self
            .orchestrator
            .create(&claim, "", Some(CLAIM_TTL))
            .await?
        {
            return Ok(());
        }
        let build = item.build_id;
        let over = (self.store.get_build(build).await?).is_none_or(|b| b.phase.is_over());
        if over {
            self.store.complete_item(&item).await?;
            return Ok(());
        }
        let end = JobEnd::RecordLost;
        tracing::warn!(build_id = %build, attempt = item.attempt, "the job record of a running build was lost; it runs again");
        let action = end.queue_action(&item, self.retry);
        self.mark_failed(build, end).await?;
        self.settle(&item, end, action).await
    }
}
