//! What this manager last wrote of each job's queue lease, so most heartbeats skip the
//! store (see `WorkerSessions::extend_lease`).

use std::collections::HashMap;

use buildman_core::BuildId;

/// The queue leases this manager last wrote, per build: the claim (`state_id`) and the
/// expiry (unix ms) it wrote. A mark of an earlier claim never matches a later one, so
/// marks of ended jobs are harmless and only pruned for memory.
#[derive(Default)]
pub(crate) struct LeaseMarks {
    marks: HashMap<BuildId, (String, i64)>,
    /// Marks are pruned of lapsed leases when the map reaches this size.
    prune_at: usize,
}

/// The fewest marks before pruning is considered.
const PRUNE_MIN: usize = 4096;

impl LeaseMarks {
    /// True when this claim's lease, as last written here, is already within `minimum`
    /// (ms) of `wanted` (unix ms).
    pub(crate) fn is_fresh(
        &self,
        build: BuildId,
        state_id: &str,
        wanted: i64,
        minimum: i64,
    ) -> bool {
        self.marks
            .get(&build)
            .is_some_and(|(claim, expires)| claim == state_id && wanted - expires <= minimum)
    }

    /// Remembers that this claim's lease now runs until `expires` (unix ms); `now` (unix
    /// ms) decides which marks have lapsed when the map is pruned.
    pub(crate) fn remember(&mut self, build: BuildId, state_id: &str, expires: i64, now: i64) {
        if self.marks.len() >= self.prune_at.max(PRUNE_MIN) {
            self.marks.retain(|_, (_, e)| *e > now);
            self.prune_at = 2 * self.marks.len();
        }
        self.marks.insert(build, (state_id.to_string(), expires));
    }

    /// Forgets a build's mark (its lease could not be extended: the claim is gone).
    pub(crate) fn forget(&mut self, build: BuildId) {
        self.marks.remove(&build);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_fresh_until_it_needs_moving_by_more_than_the_minimum() {
        let mut leases = LeaseMarks::default();
        let build = BuildId::new();
        assert!(!leases.is_fresh(build, "claim", 1_000_000, 60_000));
        leases.remember(build, "claim", 1_000_000, 0);
        assert!(leases.is_fresh(build, "claim", 1_000_000, 60_000));
        assert!(leases.is_fresh(build, "claim", 1_060_000, 60_000));
        assert!(!leases.is_fresh(build, "claim", 1_060_001, 60_000));
        // Another claim of the item (a later attempt) is not this lease.
        assert!(!leases.is_fresh(build, "other-claim", 1_000_000, 60_000));
        leases.forget(build);
        assert!(!leases.is_fresh(build, "claim", 1_000_000, 60_000));
    }

    #[test]
    fn lapsed_leases_are_pruned() {
        let mut leases = LeaseMarks::default();
        for _ in 0..PRUNE_MIN {
            leases.remember(BuildId::new(), "claim", 0, 0);
        }
        let live = BuildId::new();
        leases.remember(live, "claim", 60_000, 1);
        assert_eq!(leases.marks.len(), 1, "the lapsed marks went");
        assert!(leases.is_fresh(live, "claim", 60_000, 0));
    }
}
