//! buildman's load generator: plays many quay-builder workers against a manager over real
//! gRPC on 127.0.0.1, with quay-builder's exact call pattern, and measures the manager.
//!
//! The manager runs a bench executor (`EXECUTOR: bench`), which instead of starting a
//! worker process calls back this generator ([`callback`]) with the job's registration
//! token; the generator then plays that worker ([`worker`]). Three scenarios, one command
//! each: [`schedule`] (submit → start → complete), [`connected`] (many idle workers
//! heartbeating) and [`logs`] (log-line ingestion). Each reports as text or JSON and checks
//! what it sent against what the REST API shows afterwards. The steps they share
//! (submitting builds, following the workers, sampling CPU, reading logs back) are in the
//! crate-private `scenario` module.

pub mod api;
pub mod callback;
pub mod connected;
pub mod logs;
pub mod procfs;
mod scenario;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod worker;

use std::sync::Arc;

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
    /// A scenario's report. The machine is read now; the caller, which knows what the
    /// manager runs on, fills in `backends`.
    pub(crate) fn new(
        scenario: &'static str,
        parameters: &impl Serialize,
        results: &impl Serialize,
        text: Vec<String>,
        targets: Vec<Check>,
        errors: ErrorReport,
        verification: Verification,
    ) -> Report {
        Report {
            scenario,
            machine: Machine::read(),
            backends: String::new(),
            parameters: serde_json::to_value(parameters).unwrap_or_default(),
            results: serde_json::to_value(results).unwrap_or_default(),
            targets,
            errors,
            verification,
            text,
        }
    }

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
