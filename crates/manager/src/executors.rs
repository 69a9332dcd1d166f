//! The configured executors, in order, each with the policy that decides when to use it and
//! a circuit breaker: an executor whose workers failed to start (or failed before
//! registering) several times in a row is skipped for a cool-down, so builds fall through
//! to the next executor at once instead of each waiting out a timeout.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use buildman_core::config::ExecutorConfig;
use buildman_executor::Executor;

/// An executor with the policy that decides when to use it (its config's common keys).
#[derive(Clone)]
pub struct ExecutorEntry {
    pub config: ExecutorConfig,
    pub executor: Arc<dyn Executor>,
}

/// Counts an executor's failures in a row; past its threshold the executor is skipped
/// until the cool-down ends, then tried again (one failure more opens it again).
pub(crate) struct Breaker {
    name: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    fn new(config: &ExecutorConfig) -> Self {
        Breaker {
            name: config.name.clone(),
            threshold: config.breaker_threshold.max(1),
            cooldown: config.breaker_cooldown,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// False while the breaker is open.
    pub(crate) fn allows(&self, now: Instant) -> bool {
        self.state().open_until.is_none_or(|until| now >= until)
    }

    /// True while the breaker is open: the executor is skipped until the cool-down ends.
    pub(crate) fn is_open(&self, now: Instant) -> bool {
        !self.allows(now)
    }

    /// A worker failed to start, or failed before registering.
    pub(crate) fn failed(&self, now: Instant) {
        let mut s = self.state();
        s.failures = s.failures.saturating_add(1);
        let closed = s.open_until.is_none_or(|until| now >= until);
        if s.failures >= self.threshold && closed {
            s.open_until = Some(now + self.cooldown);
            tracing::warn!(
                executor = %self.name,
                failures = s.failures,
                cooldown_s = self.cooldown.as_secs(),
                "circuit breaker opened: the executor is skipped for the cool-down"
            );
        }
    }

    /// A worker of this executor registered: the control plane works.
    pub(crate) fn succeeded(&self) {
        let mut s = self.state();
        if s.open_until.is_some() {
            tracing::info!(executor = %self.name, "circuit breaker closed: the executor works again");
        }
        *s = BreakerState::default();
    }
}

/// One configured executor and its breaker.
pub(crate) struct Configured {
    pub(crate) entry: ExecutorEntry,
    pub(crate) breaker: Breaker,
}

/// The executors in configured order; shared by the scheduler (which starts workers), the
/// worker sessions (a registration closes a breaker) and the reaper (which stops workers).
#[derive(Clone)]
pub(crate) struct Executors(Arc<[Configured]>);

impl Executors {
    pub(crate) fn new(entries: Vec<ExecutorEntry>) -> Self {
        Executors(
            entries
                .into_iter()
                .map(|entry| Configured {
                    breaker: Breaker::new(&entry.config),
                    entry,
                })
                .collect(),
        )
    }

    /// The executors in the order they are tried.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Configured> {
        self.0.iter()
    }

    /// The executor named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Configured> {
        self.0.iter().find(|c| c.entry.config.name == name)
    }

    /// The longest SETUP_TIME of any executor.
    pub(crate) fn longest_setup(&self) -> Duration {
        self.0
            .iter()
            .map(|c| c.entry.config.setup_time)
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildman_core::config::ExecutorKind;

    fn breaker(threshold: u32, cooldown: Duration) -> Breaker {
        let mut config = ExecutorConfig::with_defaults(ExecutorKind::Popen);
        config.breaker_threshold = threshold;
        config.breaker_cooldown = cooldown;
        Breaker::new(&config)
    }

    #[test]
    fn opens_after_failures_in_a_row_and_closes_on_success() {
        let b = breaker(3, Duration::from_secs(60));
        let t = Instant::now();
        b.failed(t);
        b.failed(t);
        assert!(b.allows(t), "two failures leave it closed");
        b.succeeded();
        b.failed(t);
        b.failed(t);
        assert!(b.allows(t), "a success in between starts the count again");
        b.failed(t);
        assert!(!b.allows(t), "the third in a row opens it");
        assert!(b.is_open(t));
        assert!(
            b.allows(t + Duration::from_secs(60)),
            "tried again after the cool-down"
        );
        // One more failure after the cool-down opens it again at once.
        b.failed(t + Duration::from_secs(60));
        assert!(!b.allows(t + Duration::from_secs(61)));
        b.succeeded();
        assert!(b.allows(t + Duration::from_secs(61)));
    }
}
