//! What the manager is told at start: its limits, what workers are handed, and the delays
//! of a job's life (Quay's values by default; tests shorten them).

use std::path::PathBuf;
use std::time::Duration;

use buildman_core::{QueueRules, RetryPolicy};

/// The delays of the manager's life cycle. Quay's values are the defaults; tests shorten them.
#[derive(Clone, Debug)]
pub struct Timings {
    /// How often the scheduler looks at the queue when nothing woke it (a backstop only).
    pub backstop_poll: Duration,
    /// A heartbeat (or log line) keeps a job alive this long (Quay: 60 s).
    pub heartbeat_ttl: Duration,
    /// The queue lease a heartbeat extends to (Quay: 300 s).
    pub heartbeat_lease: Duration,
    /// When no executor could start a worker, the item returns after this (Quay: 20 s).
    pub no_executor_retry: Duration,
    /// A failed or expired job's item returns after this (Quay: 30 s).
    pub requeue_delay: Duration,
    /// How long a worker may take to stop before the executor gives up waiting.
    pub stop_timeout: Duration,
    /// How often the gauges read from the store and the orchestrator are refreshed.
    pub metrics_refresh: Duration,
    /// How often the retention pass runs (contexts of ended builds, old builds).
    pub retention_every: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        let delays = RetryPolicy::default();
        Timings {
            backstop_poll: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(60),
            heartbeat_lease: Duration::from_secs(300),
            no_executor_retry: delays.after_no_executor,
            requeue_delay: delays.after_failure,
            stop_timeout: Duration::from_secs(30),
            metrics_refresh: Duration::from_secs(15),
            retention_every: Duration::from_secs(60),
        }
    }
}

/// What the manager is told at start.
#[derive(Clone)]
pub struct Settings {
    /// Workers that may run at once over all executors and managers.
    pub allowed_worker_count: u32,
    /// How long a created job may wait for an executor to start its worker.
    pub job_registration_timeout: Duration,
    /// How long a build may run in total.
    pub machine_max_time: Duration,
    /// `host:port` workers dial.
    pub worker_server: String,
    /// Whether workers dial without TLS.
    pub worker_insecure: bool,
    /// The registry host to push to; "" writes results locally.
    pub registry: String,
    /// Where local workers write OCI layouts when `registry` is "" (one per repository).
    pub result_dir: Option<PathBuf>,
    /// Password for pulling, handed to workers (Quay's `$token` login). Secret.
    pub pull_token: String,
    /// Password for pushing, handed to workers. Secret.
    pub push_token: String,
    /// A namespace's maximum of queued builds.
    pub max_queued_per_namespace: Option<u32>,
    pub queue_rules: QueueRules,
    /// A build whose worker goes silent gets its retry back at most this often
    /// (BUILDMAN_MAX_SILENT_RETRIES).
    pub max_silent_retries: u32,
    /// How often every executor's workers are compared with the live jobs
    /// (BUILDMAN_ORPHAN_REAP_INTERVAL).
    pub orphan_reap_interval: Duration,
    /// The data dir, whose size the metrics report (none: not measured).
    pub data_dir: Option<PathBuf>,
    /// How long an uploaded context is kept after its build ended for good
    /// (BUILDMAN_CONTEXT_RETENTION).
    pub context_retention: Duration,
    /// How long a build that ended for good is kept, with its log; `None`: forever
    /// (BUILDMAN_BUILD_RETENTION).
    pub build_retention: Option<Duration>,
    pub timings: Timings,
}

impl Settings {
    /// The rules of retrying an ended job's build.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            after_failure: self.timings.requeue_delay,
            after_no_executor: self.timings.no_executor_retry,
            max_silent_retries: self.max_silent_retries,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("allowed_worker_count", &self.allowed_worker_count)
            .field("worker_server", &self.worker_server)
            .field("registry", &self.registry)
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}
