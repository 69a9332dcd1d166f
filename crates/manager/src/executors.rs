//! The configured executors, in order, each with the policy that decides when to use it.

use std::sync::Arc;
use std::time::Duration;

use buildman_core::config::ExecutorConfig;
use buildman_executor::Executor;

/// An executor with the policy that decides when to use it (its config's common keys).
#[derive(Clone)]
pub struct ExecutorEntry {
    pub config: ExecutorConfig,
    pub executor: Arc<dyn Executor>,
}

/// The executors in configured order; shared by the scheduler (which starts workers) and
/// the reaper (which stops them).
#[derive(Clone)]
pub(crate) struct Executors(Arc<[ExecutorEntry]>);

impl Executors {
    pub(crate) fn new(entries: Vec<ExecutorEntry>) -> Self {
        Executors(entries.into())
    }

    /// The executors in the order they are tried.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ExecutorEntry> {
        self.0.iter()
    }

    /// The executor named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&ExecutorEntry> {
        self.0.iter().find(|e| e.config.name == name)
    }

    /// The longest SETUP_TIME of any executor.
    pub(crate) fn longest_setup(&self) -> Duration {
        self.0
            .iter()
            .map(|e| e.config.setup_time)
            .max()
            .unwrap_or_default()
    }
}
