//! A build's phases and the one table that says which phase may follow which, and who may
//! make the change. Every phase write in the manager asks this table for the phases it may
//! come from and hands them to the store's compare-and-set, so a race (a cancel against a
//! worker's report, an expiry against a registration) is settled by the store and never by
//! the order in which tasks happen to run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a build stands, with the names Quay stores and shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Queued; no worker yet.
    Waiting,
    /// A worker was started and has not yet reported.
    BuildScheduled,
    /// The worker fetches and unpacks the build context.
    Unpacking,
    /// The worker pulls base images.
    Pulling,
    /// The worker runs the Dockerfile.
    Building,
    /// The worker pushes the tags; a build cannot be cancelled from here on.
    Pushing,
    /// Final: every tag was pushed.
    Complete,
    /// Final: the build itself failed (bad Dockerfile, push refused, ...).
    Error,
    /// The build manager or the worker failed; final once no retry is left.
    #[serde(rename = "internalerror")]
    InternalError,
    /// Final: a user cancelled the build.
    Cancelled,
}

/// Who changes a build's phase. The same target phase may be allowed from different
/// phases depending on who asks: a worker may not move a build it no longer owns, a user
/// may not cancel a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The scheduler, once an executor started a worker; or the worker's registration, when
    /// it wins the race against the scheduler (registration is the latest point at which a
    /// build is scheduled).
    Scheduler,
    /// The build's registered worker, through SetPhase.
    Worker,
    /// A user cancelling the build.
    User,
    /// A user cancelling a build whose worker has not been heard from within the heartbeat
    /// TTL (or has no live job): allowed from `pushing` too, so no stuck build holds its
    /// slot until MACHINE_MAX_TIME.
    UserWorkerGone,
    /// The reaper, ending a job the worker did not end itself (a deadline passed).
    Reaper,
}

use Phase::*;

/// The phases a live worker reports from.
const WORKER_LIVE: &[Phase] = &[BuildScheduled, Unpacking, Pulling, Building, Pushing];
/// Every phase that is not final.
const NOT_FINAL: &[Phase] = &[
    Waiting,
    BuildScheduled,
    Unpacking,
    Pulling,
    Building,
    Pushing,
];

/// The transition table: `(who, to, from)`. A change not listed is refused. `BuildScheduled`
/// lists itself so marking a build scheduled twice (scheduler and registration racing) is a
/// harmless repeat; an internal error may be scheduled again because it is retried.
const TRANSITIONS: &[(Actor, Phase, &[Phase])] = &[
    (
        Actor::Scheduler,
        BuildScheduled,
        &[Waiting, InternalError, BuildScheduled],
    ),
    (Actor::Worker, Unpacking, WORKER_LIVE),
    (Actor::Worker, Pulling, WORKER_LIVE),
    (Actor::Worker, Building, WORKER_LIVE),
    (Actor::Worker, Pushing, WORKER_LIVE),
    (Actor::Worker, Complete, WORKER_LIVE),
    (Actor::Worker, Error, WORKER_LIVE),
    (
        Actor::User,
        Cancelled,
        &[Waiting, BuildScheduled, Unpacking, Pulling, Building],
    ),
    (Actor::UserWorkerGone, Cancelled, NOT_FINAL),
    (Actor::Reaper, InternalError, NOT_FINAL),
];

impl Phase {
    /// Every phase, in the order a successful build walks them (final ones last).
    pub const ALL: [Phase; 10] = [
        Waiting,
        BuildScheduled,
        Unpacking,
        Pulling,
        Building,
        Pushing,
        Complete,
        Error,
        InternalError,
        Cancelled,
    ];

    /// The stored and displayed name (`build-scheduled`, `internalerror`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Waiting => "waiting",
            BuildScheduled => "build-scheduled",
            Unpacking => "unpacking",
            Pulling => "pulling",
            Building => "building",
            Pushing => "pushing",
            Complete => "complete",
            Error => "error",
            InternalError => "internalerror",
            Cancelled => "cancelled",
        }
    }

    /// True for the phases that end a job: complete, error, internalerror, cancelled.
    pub fn is_final(self) -> bool {
        matches!(self, Complete | Error | InternalError | Cancelled)
    }

    /// True when the build is over for good: complete, error, cancelled. An internal error
    /// is not, because the build may be retried.
    pub fn is_over(self) -> bool {
        matches!(self, Complete | Error | Cancelled)
    }

    /// The phases `by` may move a build from into `self`; empty when `by` may never cause
    /// `self`. Hand it to the store's compare-and-set.
    pub fn sources(self, by: Actor) -> &'static [Phase] {
        TRANSITIONS
            .iter()
            .find(|(who, to, _)| *who == by && *to == self)
            .map_or(&[], |(_, _, from)| from)
    }

    /// True when `by` may move a build from `from` into `self`.
    pub fn may_follow(self, from: Phase, by: Actor) -> bool {
        self.sources(by).contains(&from)
    }

    /// True when a user may cancel a build in this phase (all but pushing and the final ones).
    pub fn can_cancel(self) -> bool {
        Cancelled.may_follow(self, Actor::User)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not the name of a phase.
#[derive(Debug, thiserror::Error)]
#[error("unknown build phase {0:?}")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert!("expired".parse::<Phase>().is_err());
    }

    #[test]
    fn cancel_is_refused_while_pushing_and_when_final() {
        let cancellable: Vec<_> = Phase::ALL.into_iter().filter(|p| p.can_cancel()).collect();
        assert_eq!(
            cancellable,
            [Waiting, BuildScheduled, Unpacking, Pulling, Building]
        );
    }

    #[test]
    fn a_worker_moves_only_a_live_build_and_never_back_to_waiting() {
        for to in Phase::ALL {
            let allowed = !to.sources(Actor::Worker).is_empty();
            let worker_phase = matches!(
                to,
                Unpacking | Pulling | Building | Pushing | Complete | Error
            );
            assert_eq!(allowed, worker_phase, "worker to {to}");
        }
        assert!(!Waiting.may_follow(Building, Actor::Worker));
        for from in [Waiting, Complete, Error, Cancelled, InternalError] {
            assert!(!Building.may_follow(from, Actor::Worker), "from {from}");
        }
        assert!(Pulling.may_follow(Building, Actor::Worker));
    }

    #[test]
    fn final_phases_are_left_only_by_a_retry_of_an_internal_error() {
        for by in [
            Actor::Scheduler,
            Actor::Worker,
            Actor::User,
            Actor::UserWorkerGone,
            Actor::Reaper,
        ] {
            for to in Phase::ALL {
                for from in [Complete, Error, Cancelled] {
                    assert!(!to.may_follow(from, by), "{by:?}: {from} -> {to}");
                }
            }
        }
        assert!(BuildScheduled.may_follow(InternalError, Actor::Scheduler));
        assert!(!BuildScheduled.may_follow(InternalError, Actor::Worker));
    }

    #[test]
    fn a_push_is_cancelled_only_when_its_worker_is_gone() {
        assert!(!Cancelled.may_follow(Pushing, Actor::User));
        assert!(Cancelled.may_follow(Pushing, Actor::UserWorkerGone));
        assert!(!Cancelled.may_follow(Complete, Actor::UserWorkerGone));
    }

    #[test]
    fn the_reaper_ends_any_live_build_and_nothing_else() {
        let sources = InternalError.sources(Actor::Reaper);
        for p in Phase::ALL {
            assert_eq!(sources.contains(&p), !p.is_final(), "{p}");
        }
        assert!(Complete.sources(Actor::Reaper).is_empty());
    }
}
