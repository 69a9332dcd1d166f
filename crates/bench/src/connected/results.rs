//! The connected scenario's measurements: what the window saw, the manager's memory per
//! worker, and the report they make.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{ConnectedOptions, Ramp, WorkerContext};
use crate::procfs::ProcSample;
use crate::scenario::{Usage, cpu_between};
use crate::stats::Summary;
use crate::worker::Shared;
use crate::{Check, Report, Verification};

/// The connected scenario's measurements.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectedResults {
    /// Workers that registered and reached `building`.
    pub workers_connected: usize,
    /// Submit of the first build → the last worker at `building`, seconds.
    pub ramp_s: f64,
    /// The measurement window, seconds.
    pub window_s: f64,
    /// The manager's CPU over the window, % of one core.
    pub manager_cpu_percent: Option<f64>,
    /// The manager's RSS before any worker, MiB.
    pub manager_rss_baseline_mb: Option<f64>,
    /// The manager's largest RSS sampled in the window, MiB.
    pub manager_rss_mb: Option<f64>,
    /// (RSS in the window − RSS before) / workers, KiB.
    pub rss_per_worker_kb: Option<f64>,
    /// This generator's CPU over the window, % of one core (it shares the machine).
    pub generator_cpu_percent: Option<f64>,
    /// Heartbeat reply latencies in the window.
    pub heartbeat: Summary,
    /// Heartbeats answered per second in the window.
    pub heartbeats_per_s: f64,
    /// Log line ack latencies in the window.
    pub log_ack: Summary,
    /// Log lines acked per second in the window.
    pub lines_per_s: f64,
    /// Errors counted inside the window.
    pub errors_in_window: u64,
    /// Log lines acked over the whole run.
    pub lines_acked: u64,
    /// Simulated worker connections.
    pub connections: usize,
}

/// What the measurement window saw.
pub(super) struct Window {
    /// Its length, seconds.
    pub seconds: f64,
    /// CPU and memory at its start.
    pub start: Usage,
    /// CPU and memory at its end.
    pub end: Usage,
    /// The manager's largest RSS sampled in it, KiB.
    pub rss_max_kb: Option<u64>,
    /// Heartbeats answered in it.
    pub heartbeats: u64,
    /// Their reply latencies.
    pub heartbeat: Summary,
    /// Log ack latencies in it.
    pub log_ack: Summary,
    /// Log lines acked in it.
    pub lines: u64,
    /// Errors counted in it.
    pub errors: u64,
}

/// The scenario's measurements, from the manager's RSS before any worker, the ramp-up
/// and the window.
pub(super) fn results(
    ctx: &WorkerContext,
    baseline: Option<ProcSample>,
    ramp: &Ramp,
    w: Window,
) -> ConnectedResults {
    let baseline_kb = baseline.map(|s| s.rss_kb);
    let connected = ramp.connected;
    ConnectedResults {
        workers_connected: connected,
        ramp_s: ramp.seconds,
        window_s: w.seconds,
        manager_cpu_percent: cpu_between(w.start.manager.as_ref(), w.end.manager.as_ref()),
        manager_rss_baseline_mb: baseline_kb.map(|kb| kb as f64 / 1024.0),
        manager_rss_mb: w.rss_max_kb.map(|kb| kb as f64 / 1024.0),
        rss_per_worker_kb: match (baseline_kb, w.rss_max_kb) {
            (Some(a), Some(b)) if connected > 0 => Some((b as f64 - a as f64) / connected as f64),
            _ => None,
        },
        generator_cpu_percent: cpu_between(w.start.generator.as_ref(), w.end.generator.as_ref()),
        heartbeats_per_s: w.heartbeats as f64 / w.seconds,
        heartbeat: w.heartbeat,
        log_ack: w.log_ack,
        lines_per_s: w.lines as f64 / w.seconds,
        errors_in_window: w.errors,
        lines_acked: ctx.lines_acked.load(Ordering::SeqCst),
        connections: ctx.channels.connections(),
    }
}

/// The report of a run with these measurements.
pub(super) fn report(
    options: &ConnectedOptions,
    r: ConnectedResults,
    shared: &Shared,
    verification: Verification,
) -> Report {
    let text = text(&r);
    let targets = targets(&r, shared.errors.total());
    let errors = shared.errors.report();
    Report::new(
        "connected",
        options,
        &r,
        text,
        targets,
        errors,
        verification,
    )
}

/// `12.3%` or `unknown`.
fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("unknown".to_string(), |v| format!("{v:.1}{unit}"))
}

/// The measurements as lines of text.
fn text(r: &ConnectedResults) -> Vec<String> {
    vec![
        format!(
            "{} workers registered and at building in {:.1} s over {} connections",
            r.workers_connected, r.ramp_s, r.connections
        ),
        format!(
            "window {:.1} s: manager CPU {} of one core, RSS {} (before: {}), {} per worker",
            r.window_s,
            opt(r.manager_cpu_percent, "%"),
            opt(r.manager_rss_mb, " MiB"),
            opt(r.manager_rss_baseline_mb, " MiB"),
            opt(r.rss_per_worker_kb, " KiB"),
        ),
        format!(
            "heartbeat replies ({:.0}/s): {}",
            r.heartbeats_per_s,
            r.heartbeat.text()
        ),
        format!(
            "log acks ({:.0} lines/s): {}",
            r.lines_per_s,
            r.log_ack.text()
        ),
        format!(
            "generator CPU {} of one core; errors in the window: {}",
            opt(r.generator_cpu_percent, "%"),
            r.errors_in_window
        ),
    ]
}

/// Issue 4's connected-worker targets against the measurements and the `errors` counted.
fn targets(r: &ConnectedResults, errors: u64) -> Vec<Check> {
    let n = r.workers_connected;
    vec![
        Check::new(
            "manager under 50 % of one core (10,000 workers)",
            format!("{} with {n} workers", opt(r.manager_cpu_percent, "%")),
            r.manager_cpu_percent.map(|c| c < 50.0),
        ),
        Check::new(
            "manager under 300 MB RSS (10,000 workers)",
            format!("{} with {n} workers", opt(r.manager_rss_mb, " MiB")),
            r.manager_rss_mb.map(|m| m * 1.048_576 < 300.0),
        ),
        Check::new(
            "heartbeat reply p99 ≤ 20 ms",
            format!("p99 {:.2} ms", r.heartbeat.p99_ms),
            (r.heartbeat.count > 0).then_some(r.heartbeat.p99_ms <= 20.0),
        ),
        Check::new("zero errors", format!("{errors}"), Some(errors == 0)),
        Check::new(
            "RSS grows ≤ 20 KB per connected worker",
            opt(r.rss_per_worker_kb, " KiB per worker"),
            r.rss_per_worker_kb.map(|kb| kb * 1.024 <= 20.0),
        ),
    ]
}
