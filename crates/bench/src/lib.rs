//! buildman's load generator: plays many quay-builder workers against a manager over real
//! gRPC on 127.0.0.1, with quay-builder's exact call pattern, and measures the manager.
//!
//! The manager runs a bench executor (`EXECUTOR: bench`), which instead of starting a
//! worker process calls back this generator ([`callback`]) with the job's registration
//! token; the generator then plays that worker ([`worker`]). Three scenarios, one command
//! each: [`schedule`] (submit → start → complete), [`connected`] (many idle workers
//! heartbeating) and [`logs`] (log-line ingestion). Each reports as text or JSON and checks
//! what it sent against what the REST API shows afterwards.

pub mod api;
pub mod callback;
pub mod connected;
pub mod logs;
pub mod procfs;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::Api;
use crate::callback::Callbacks;
use crate::procfs::{Machine, ProcSample};
use crate::stats::ErrorReport;
use crate::worker::Channels;

/// What a scenario runs against.
pub struct Env {
    /// The manager's REST API.
    pub api: Api,
    /// The manager's process id, when known (for CPU and memory).
    pub manager_pid: Option<u32>,
    /// The bench executor's callbacks.
    pub callbacks: Callbacks,
    /// Simulated workers per HTTP/2 connection.
    pub workers_per_connection: usize,
    /// Distinguishes this run's repositories from earlier runs' on the same manager.
    pub run_id: String,
}

impl Env {
    /// An environment over a manager's API and this generator's callback server.
    pub fn new(
        api: Api,
        manager_pid: Option<u32>,
        callbacks: Callbacks,
        workers_per_connection: usize,
    ) -> Env {
        Env {
            api,
            manager_pid,
            callbacks,
            workers_per_connection,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..6].to_string(),
        }
    }

    /// A fresh connection pool for a scenario's workers.
    pub fn channels(&self) -> Arc<Channels> {
        Arc::new(Channels::new(self.workers_per_connection))
    }

    /// The manager's CPU time and memory now, if its pid is known.
    pub fn manager_sample(&self) -> Option<ProcSample> {
        let pid = self.manager_pid?;
        procfs::sample(&pid.to_string()).ok()
    }
}

/// A target of issue 4 and how this run did against it.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The target, as the issue states it.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was met (`None` when this run could not tell).
    pub met: Option<bool>,
}

impl Check {
    /// A target met when `ok`.
    pub fn new(target: &str, measured: String, met: Option<bool>) -> Check {
        Check {
            target: target.to_string(),
            measured,
            met,
        }
    }
}

/// What the REST API showed afterwards, against what the generator did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    /// True when everything matched.
    pub ok: bool,
    /// What was compared, and any mismatch.
    pub details: Vec<String>,
}

/// A scenario's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `schedule`, `connected` or `logs`.
    pub scenario: &'static str,
    /// The machine.
    pub machine: Machine,
    /// The store and orchestrator the manager ran on.
    pub backends: String,
    /// The scenario's parameters.
    pub parameters: serde_json::Value,
    /// The measurements.
    pub results: serde_json::Value,
    /// The targets against the measurements.
    pub targets: Vec<Check>,
    /// Every error the simulated workers and submitters saw.
    pub errors: ErrorReport,
    /// What the API showed afterwards.
    pub verification: Verification,
    /// The measurements as lines of text.
    #[serde(skip)]
    pub text: Vec<String>,
}

impl Report {
    /// The whole report as text.
    pub fn render(&self) -> String {
        let mut out = vec![
            format!("scenario: {}", self.scenario),
            format!("machine: {}", self.machine.text()),
            format!("manager: {}", self.backends),
            format!("parameters: {}", self.parameters),
        ];
        out.extend(self.text.iter().map(|l| format!("  {l}")));
        out.push("targets:".to_string());
        for c in &self.targets {
            let verdict = match c.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "n/a",
            };
            out.push(format!("  [{verdict}] {}: {}", c.target, c.measured));
        }
        out.push(format!("errors: {}", self.errors.text()));
        out.push(format!(
            "verification: {}",
            if self.verification.ok { "ok" } else { "FAILED" }
        ));
        out.extend(self.verification.details.iter().map(|l| format!("  {l}")));
        out.join("\n")
    }

    /// True when no error was seen and the API agreed with the generator.
    pub fn passed(&self) -> bool {
        self.errors.total == 0 && self.verification.ok
    }
}

/// Runs `n` jobs with at most `parallel` at once; job `i` gets `i`.
pub(crate) async fn for_each_parallel<F, Fut>(n: usize, parallel: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for _ in 0..parallel.max(1).min(n.max(1)) {
        let (next, f) = (next.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                f(i).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Waits until `done` holds or `timeout` passes; true when it held.
pub(crate) async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The manager's CPU between two samples, and its memory at the second, as text.
pub(crate) fn cpu_text(from: Option<&ProcSample>, to: Option<&ProcSample>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => format!(
            "{:.1}% of one core, RSS {:.1} MiB",
            procfs::cpu_percent(a, b),
            b.rss_kb as f64 / 1024.0
        ),
        _ => "unknown (no manager pid)".to_string(),
    }
}
