//! What the manager counts, for Prometheus. Quay's series keep their names, labels and label
//! values, so dashboards made for Quay's build manager keep working; buildman's own are
//! under `buildman_`. Every label takes its values from a fixed vocabulary or from the
//! configuration (executor names): never a build id or a repository.
//!
//! Counters and histograms count what happened on this manager (sum them over managers);
//! the gauges read from the store and the orchestrator ([`refresh`]) describe the whole
//! deployment, the same on every manager. The roles record through the handle they share;
//! the server only encodes the registry ([`Metrics::encode`]) and times its requests.

mod labels;
pub(crate) mod refresh;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use buildman_core::{JobEnd, JobRecord, Phase};
use buildman_store::QueueStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use labels::*;

/// The `Content-Type` of [`Metrics::encode`]'s text (Prometheus' text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A family of histograms with the buckets `buckets` makes.
fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: fn() -> Histogram) -> Histograms<L> {
    Family::new_with_constructor(buckets)
}

/// From a tenth of a second to ten minutes: starting and registering a worker.
fn startup_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// From a second to three hours: a build (MACHINE_MAX_TIME is two hours by default).
fn build_buckets() -> Histogram {
    Histogram::new([
        1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 10800.0,
    ])
}

/// From ten milliseconds to an hour: waiting in the queue, scheduling.
fn wait_buckets() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

/// From a millisecond to an hour: a request (a worker's streams last as long as its build).
fn request_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 600.0, 3600.0,
    ])
}

/// The manager's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    fallback: Family<ExecutorLabel, Counter>,
    ack_duration: Histograms<ExecutorLabel>,
    queue_duration: Histograms<ScheduleLabel>,
    build_duration: Histograms<JobStatusLabels>,
    build_jobs: Family<SuccessLabel, Counter>,
    start_duration: Histograms<ExecutorLabel>,
    queue_puts: Family<QueueLabel, Counter>,
    queue_gets: Family<QueueGetLabels, Counter>,
    queue_locked: Family<QueueLabel, Gauge>,
    queue_available: Family<QueueLabel, Gauge>,
    queue_available_unlocked: Family<QueueLabel, Gauge>,
    oldest_waiting: Gauge<f64, AtomicU64>,
    queue_wait: Histogram,
    builds: Family<PhaseLabel, Gauge>,
    workers: Family<ExecutorLabel, Gauge>,
    expiries: Family<KindLabel, Counter>,
    breaker_open: Family<ExecutorLabel, Gauge>,
    orphans_stopped: Counter,
    log_lines: Family<OutcomeLabel, Counter>,
    store_calls: Family<CallLabel, Counter>,
    grpc_requests: Histograms<GrpcLabels>,
    http_requests: Histograms<HttpLabels>,
    data_dir_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series, registered once.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            fallback: Family::default(),
            ack_duration: histograms(startup_buckets),
            queue_duration: histograms(wait_buckets),
            build_duration: histograms(build_buckets),
            build_jobs: Family::default(),
            start_duration: histograms(startup_buckets),
            queue_puts: Family::default(),
            queue_gets: Family::default(),
            queue_locked: Family::default(),
            queue_available: Family::default(),
            queue_available_unlocked: Family::default(),
            oldest_waiting: Gauge::default(),
            queue_wait: wait_buckets(),
            builds: Family::default(),
            workers: Family::default(),
            expiries: Family::default(),
            breaker_open: Family::default(),
            orphans_stopped: Counter::default(),
            log_lines: Family::default(),
            store_calls: Family::default(),
            grpc_requests: histograms(request_buckets),
            http_requests: histograms(request_buckets),
            data_dir_bytes: Gauge::default(),
        };
        m.register_quays();
        m.register_own();
        m
    }

    /// Quay's series (counter names lose `_total` here: the encoder adds it).
    fn register_quays(&mut self) {
        let r = &mut self.registry;
        r.register(
            "quay_build_fallback",
            "number of times a build has been retried",
            self.fallback.clone(),
        );
        r.register(
            "quay_build_ack_duration_seconds",
            "seconds taken for the builder to acknowledge a queued build",
            self.ack_duration.clone(),
        );
        r.register(
            "quay_build_queue_duration_seconds",
            "seconds taken for a build job to be scheduled from the queue",
            self.queue_duration.clone(),
        );
        r.register(
            "quay_build_duration_seconds",
            "seconds taken for a build's execution",
            self.build_duration.clone(),
        );
        r.register(
            "quay_build_jobs",
            "total number of build requests",
            self.build_jobs.clone(),
        );
        r.register(
            "quay_build_start_duration_seconds",
            "seconds taken for a executor to start executing a queued build",
            self.start_duration.clone(),
        );
        r.register(
            "quay_queue_item_puts",
            "number of items that have been added to the queue",
            self.queue_puts.clone(),
        );
        r.register(
            "quay_queue_item_gets",
            "number of times get() has been called on queue",
            self.queue_gets.clone(),
        );
        r.register(
            "quay_queue_items_locked",
            "number of queue items that have been acquired",
            self.queue_locked.clone(),
        );
        r.register(
            "quay_queue_items_available",
            "number of queue items that have not expired",
            self.queue_available.clone(),
        );
        r.register(
            "quay_queue_items_available_unlocked",
            "number of queue items that have not expired and are not locked",
            self.queue_available_unlocked.clone(),
        );
    }

    /// buildman's own series.
    fn register_own(&mut self) {
        let r = &mut self.registry;
        r.register(
            "buildman_queue_oldest_waiting_seconds",
            "age of the oldest build waiting in the queue (0 when none waits)",
            self.oldest_waiting.clone(),
        );
        r.register(
            "buildman_queue_wait_seconds",
            "seconds from a build's submission to its first claim by a manager",
            self.queue_wait.clone(),
        );
        r.register(
            "buildman_builds",
            "builds in each phase that is not final",
            self.builds.clone(),
        );
        r.register(
            "buildman_workers",
            "live jobs with a worker started, by executor",
            self.workers.clone(),
        );
        r.register(
            "buildman_job_expiries",
            "jobs whose deadline passed, by kind: never_started, never_registered, heartbeat_lost, max_time",
            self.expiries.clone(),
        );
        r.register(
            "buildman_executor_breaker_open",
            "1 while the executor's circuit breaker is open (it is skipped), else 0",
            self.breaker_open.clone(),
        );
        r.register(
            "buildman_orphans_stopped",
            "workers no live job accounted for, stopped by this manager",
            self.orphans_stopped.clone(),
        );
        r.register(
            "buildman_log_lines",
            "build log lines from workers, by outcome: stored, duplicate (re-sent, acknowledged, not stored again), refused",
            self.log_lines.clone(),
        );
        r.register(
            "buildman_store_calls",
            "calls this manager made to the store (its database, or Quay's), by call",
            self.store_calls.clone(),
        );
        r.register(
            "buildman_grpc_request_duration_seconds",
            "worker protocol calls until their answer's head (a stream: until it opened), by method and status code",
            self.grpc_requests.clone(),
        );
        r.register(
            "buildman_http_request_duration_seconds",
            "REST API requests until the answer's head, by method, route and status",
            self.http_requests.clone(),
        );
        r.register(
            "buildman_data_dir_bytes",
            "disk space the data dir takes",
            self.data_dir_bytes.clone(),
        );
    }

    /// Every series in Prometheus' text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// A build was submitted (put in the queue).
    pub(crate) fn queue_put(&self) {
        self.queue_puts.get_or_create(&queue()).inc();
    }

    /// The scheduler asked the queue for an item: one was claimed, or none was there.
    pub(crate) fn queue_get(&self, claimed: bool) {
        let availability = if claimed { "acquired" } else { "nonexistant" };
        let labels = QueueGetLabels {
            queue_name: QUEUE,
            availability,
        };
        self.queue_gets.get_or_create(&labels).inc();
    }

    /// A claimed build's first claim came this long after its submission.
    pub(crate) fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// An attempt fell back past `executor` (its retry threshold, its breaker, a worker that
    /// failed to start or to register).
    pub(crate) fn fallback(&self, executor: &str) {
        self.fallback.get_or_create(&executor_label(executor)).inc();
    }

    /// An executor of `kind` took `took` to start a worker (labelled with Quay's kind names:
    /// `popen`, `k8s`, `ec2`).
    pub(crate) fn worker_start(&self, kind: &str, took: Duration) {
        let kind = match kind {
            "kubernetes" | "kubernetesPodman" => "k8s",
            other => other,
        };
        (self.start_duration.get_or_create(&executor_label(kind))).observe(took.as_secs_f64());
    }

    /// Scheduling a claimed build took `took`, and started a worker or did not (then the
    /// build counts as a failed request, as in Quay).
    pub(crate) fn scheduled(&self, success: bool, took: Duration) {
        let schedule_success = if success { "True" } else { "False" };
        (self
            .queue_duration
            .get_or_create(&ScheduleLabel { schedule_success }))
        .observe(took.as_secs_f64());
        if !success {
            self.build_jobs.get_or_create(&success_label(false)).inc();
        }
    }

    /// A worker registered: the time since its executor started it.
    pub(crate) fn registered(&self, record: &JobRecord) {
        if let (Some(executor), Some(took)) = (&record.executor_name, since_start(record)) {
            (self.ack_duration.get_or_create(&executor_label(executor))).observe(took);
        }
    }

    /// A job ended; `gave_up` when it was its build's last retry.
    pub(crate) fn job_ended(&self, record: &JobRecord, end: JobEnd, gave_up: bool) {
        if let (Some(executor), Some(took)) = (&record.executor_name, since_start(record))
            && let Some(job_status) = quay_job_status(end)
        {
            let labels = JobStatusLabels {
                executor: executor.clone(),
                job_status,
            };
            self.build_duration.get_or_create(&labels).observe(took);
        }
        match end {
            JobEnd::Complete => self.build_jobs.get_or_create(&success_label(true)).inc(),
            JobEnd::Error => self.build_jobs.get_or_create(&success_label(false)).inc(),
            _ if gave_up => self.build_jobs.get_or_create(&success_label(false)).inc(),
            _ => 0,
        };
    }

    /// A job's deadline passed, ending it as `end`.
    pub(crate) fn expired(&self, end: JobEnd) {
        let kind = match end {
            JobEnd::NeverStarted => "never_started",
            JobEnd::NeverRegistered => "never_registered",
            JobEnd::WorkerSilent | JobEnd::ManagerLost => "heartbeat_lost",
            JobEnd::Overran => "max_time",
            _ => return,
        };
        self.expiries.get_or_create(&KindLabel { kind }).inc();
    }

    /// This manager stopped `n` orphaned workers.
    pub(crate) fn orphans_stopped(&self, n: u64) {
        self.orphans_stopped.inc_by(n);
    }

    /// A call to the store, by its name.
    pub(crate) fn store_call(&self, call: &'static str) {
        self.store_calls.get_or_create(&CallLabel { call }).inc();
    }

    /// Log lines of a batch: stored, re-sent ones acknowledged without storing, refused.
    pub(crate) fn log_lines(&self, stored: u64, duplicate: u64, refused: u64) {
        for (outcome, n) in [
            ("stored", stored),
            ("duplicate", duplicate),
            ("refused", refused),
        ] {
            if n > 0 {
                self.log_lines
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(n);
            }
        }
    }

    /// A worker protocol call (`method` from the protocol's list) ended with `code`.
    pub fn grpc_request(&self, method: &'static str, code: &'static str, took: Duration) {
        (self
            .grpc_requests
            .get_or_create(&GrpcLabels { method, code }))
        .observe(took.as_secs_f64());
    }

    /// A REST request to the route template `route` was answered with `code`.
    pub fn http_request(&self, method: &'static str, route: &str, code: u16, took: Duration) {
        let labels = HttpLabels {
            method,
            route: route.to_owned(),
            code,
        };
        self.http_requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The queue's counts and the live builds' phases, read from the store at `now`.
    pub(crate) fn set_queue(&self, stats: &QueueStats, now: chrono::DateTime<chrono::Utc>) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_locked
            .get_or_create(&queue())
            .set(gauge(stats.locked));
        (self.queue_available.get_or_create(&queue())).set(gauge(stats.available));
        (self.queue_available_unlocked.get_or_create(&queue()))
            .set(gauge(stats.available_unlocked));
        let age = stats.oldest_waiting.map_or(0.0, |at| {
            (now - at).num_milliseconds().max(0) as f64 / 1000.0
        });
        self.oldest_waiting.set(age);
        for phase in Phase::ALL.into_iter().filter(|p| !p.is_final()) {
            let n = (stats.live_phases.iter())
                .find(|(p, _)| *p == phase)
                .map_or(0, |(_, n)| *n);
            let labels = PhaseLabel {
                phase: phase.as_str(),
            };
            self.builds.get_or_create(&labels).set(gauge(n));
        }
    }

    /// The live jobs with a worker on `executor`.
    pub(crate) fn set_workers(&self, executor: &str, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.workers.get_or_create(&executor_label(executor)).set(n);
    }

    /// Whether `executor`'s circuit breaker is open.
    pub(crate) fn set_breaker(&self, executor: &str, open: bool) {
        (self.breaker_open.get_or_create(&executor_label(executor))).set(i64::from(open));
    }

    /// The data dir's size on disk.
    pub(crate) fn set_data_dir_bytes(&self, bytes: u64) {
        (self.data_dir_bytes).set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Seconds since the record's worker was started, if it was.
fn since_start(record: &JobRecord) -> Option<f64> {
    let started = record.worker_started_ms?;
    let now = chrono::Utc::now().timestamp_millis();
    Some(now.saturating_sub(started).max(0) as f64 / 1000.0)
}

/// Quay's `BuildJobResult` for a job's end: every deadline is `expired` (Quay's key
/// expiry), a job handed back by a stopping manager `incomplete` (retried, retry restored);
/// an attempt no executor took had no worker to time.
fn quay_job_status(end: JobEnd) -> Option<&'static str> {
    Some(match end {
        JobEnd::Complete => "complete",
        JobEnd::Error => "error",
        JobEnd::Cancelled => "cancelled",
        JobEnd::NeverStarted | JobEnd::NeverRegistered | JobEnd::WorkerSilent | JobEnd::Overran => {
            "expired"
        }
        JobEnd::ManagerStopped | JobEnd::ManagerLost | JobEnd::RecordLost => "incomplete",
        JobEnd::NoExecutor => return None,
    })
}
