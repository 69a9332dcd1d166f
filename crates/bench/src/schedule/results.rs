//! The schedule scenario's measurements: when each step of each build happened, the
//! latencies and rates derived from that, and the report they make.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::ScheduleOptions;
use crate::procfs::ProcSample;
use crate::scenario::{Usage, cpu_between};
use crate::stats::{Summary, lock, micros};
use crate::worker::Shared;
use crate::{Check, Report, Verification};

/// When each step of a build happened.
#[derive(Clone, Copy, Default)]
pub(super) struct Times {
    /// When the submit request was sent.
    pub submitted: Option<Instant>,
    /// When the start callback arrived.
    pub started: Option<Instant>,
    /// When RegisterBuildJob was answered.
    pub registered: Option<Instant>,
    /// When SetPhase(COMPLETE) was answered.
    pub completed: Option<Instant>,
}

/// Every build's [`Times`], by build id.
#[derive(Default)]
pub(super) struct Timeline(Mutex<HashMap<String, Times>>);

impl Timeline {
    /// Changes build `id`'s times.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Times)) {
        f(lock(&self.0).entry(id.to_string()).or_default());
    }

    /// The times of `ids`, in order (unknown ones empty).
    pub fn get(&self, ids: &[String]) -> Vec<Times> {
        let map = lock(&self.0);
        ids.iter()
            .map(|id| map.get(id).copied().unwrap_or_default())
            .collect()
    }
}

/// Latencies of one set of builds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latencies {
    /// Submit (request sent) → the bench executor's start callback arrived.
    pub submit_to_start: Summary,
    /// Submit → RegisterBuildJob answered.
    pub submit_to_registered: Summary,
    /// Submit → SetPhase(COMPLETE) answered.
    pub submit_to_complete: Summary,
}

/// The latencies of builds with these times.
pub(super) fn latencies(times: &[Times]) -> Latencies {
    let between = |to: fn(&Times) -> Option<Instant>| {
        Summary::of(
            times
                .iter()
                .filter_map(|t| Some(micros(to(t)?.checked_duration_since(t.submitted?)?)))
                .collect(),
        )
    };
    Latencies {
        submit_to_start: between(|t| t.started),
        submit_to_registered: between(|t| t.registered),
        submit_to_complete: between(|t| t.completed),
    }
}

/// The schedule scenario's measurements.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScheduleResults {
    /// One build at a time.
    pub idle: Latencies,
    /// Builds the API accepted during the burst.
    pub burst_submitted: usize,
    /// How long submitting them took, seconds.
    pub burst_submit_s: f64,
    /// Builds accepted per second by the API during the burst.
    pub burst_submit_rate: f64,
    /// Burst builds whose worker completed.
    pub burst_completed: usize,
    /// First submit → last completion, seconds.
    pub burst_elapsed_s: f64,
    /// Completed builds per second over the whole burst.
    pub builds_per_s: f64,
    /// Completed builds per second between the 10th and the 90th percentile completion.
    pub builds_per_s_steady: f64,
    /// The burst's latencies (they include waiting behind the repository's running build).
    pub burst: Latencies,
    /// The manager's CPU over the burst, % of one core.
    pub manager_cpu_percent: Option<f64>,
    /// The manager's RSS at the end, MiB.
    pub manager_rss_mb: Option<f64>,
    /// Manager CPU time per completed burst build, ms (independent of other load on the
    /// machine, unlike builds/s).
    pub manager_cpu_ms_per_build: Option<f64>,
    /// This generator's CPU time per completed burst build, ms.
    pub generator_cpu_ms_per_build: Option<f64>,
    /// Stop callbacks received (the manager stops each worker once its build ended).
    pub stops: u64,
    /// Simulated worker connections opened.
    pub connections: usize,
    /// The manager's store calls during the burst per build ended, by call (background
    /// passes included), when its metrics said.
    pub store_calls_per_build: Option<BTreeMap<String, f64>>,
}

/// What the burst did.
pub(super) struct Burst {
    /// The builds the API accepted.
    pub ids: Vec<String>,
    /// Their timelines when the wait ended.
    pub times: Vec<Times>,
    /// When submitting began.
    pub started: Instant,
    /// How long submitting took, seconds.
    pub submit_s: f64,
    /// When the last worker ended or the wait gave up.
    pub ended: Instant,
    /// Workers that ended, successfully or not.
    pub workers_ended: usize,
    /// CPU and memory when submitting began.
    pub before: Usage,
    /// CPU and memory at `ended`.
    pub after: Usage,
    /// The manager's store calls from `started` to `ended`, by call, when its metrics said.
    pub store_calls: Option<BTreeMap<String, f64>>,
}

/// The calls made between two readings of the manager's store-call counters.
pub(super) fn calls_between(
    before: &BTreeMap<String, f64>,
    after: BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    (after.into_iter())
        .map(|(call, n)| {
            let made = n - before.get(&call).copied().unwrap_or(0.0);
            (call, made)
        })
        .filter(|(_, made)| *made > 0.0)
        .collect()
}

impl Burst {
    /// The scenario's measurements, from the idle latencies and this burst.
    pub fn results(&self, idle: Latencies, stops: u64, connections: usize) -> ScheduleResults {
        let mut completions: Vec<Instant> = self.times.iter().filter_map(|t| t.completed).collect();
        completions.sort();
        let builds_per_s = completions.len() as f64 / (self.ended - self.started).as_secs_f64();
        let (before, after) = (&self.before, &self.after);
        ScheduleResults {
            idle,
            burst_submitted: self.ids.len(),
            burst_submit_s: self.submit_s,
            burst_submit_rate: self.ids.len() as f64 / self.submit_s.max(1e-9),
            burst_completed: completions.len(),
            burst_elapsed_s: completions
                .last()
                .map_or(0.0, |l| (*l - self.started).as_secs_f64()),
            builds_per_s,
            builds_per_s_steady: steady_rate(&completions, builds_per_s),
            burst: latencies(&self.times),
            manager_cpu_percent: cpu_between(before.manager.as_ref(), after.manager.as_ref()),
            manager_rss_mb: after.manager.map(|s| s.rss_kb as f64 / 1024.0),
            manager_cpu_ms_per_build: per_build(
                before.manager.as_ref(),
                after.manager.as_ref(),
                self.workers_ended,
            ),
            generator_cpu_ms_per_build: per_build(
                before.generator.as_ref(),
                after.generator.as_ref(),
                self.workers_ended,
            ),
            stops,
            connections,
            store_calls_per_build: self.store_calls.as_ref().map(|calls| {
                let builds = self.workers_ended.max(1) as f64;
                (calls.iter())
                    .map(|(call, n)| (call.clone(), n / builds))
                    .collect()
            }),
        }
    }
}

/// Completions per second between the 10th and the 90th percentile of the sorted
/// `completions` (`overall` when there are fewer than 10).
fn steady_rate(completions: &[Instant], overall: f64) -> f64 {
    if completions.len() < 10 {
        return overall;
    }
    let (a, b) = (completions.len() / 10, completions.len() * 9 / 10);
    let secs = (completions[b] - completions[a]).as_secs_f64();
    if secs > 0.0 {
        (b - a) as f64 / secs
    } else {
        0.0
    }
}

/// CPU time between two samples divided by `builds`, ms.
fn per_build(from: Option<&ProcSample>, to: Option<&ProcSample>, builds: usize) -> Option<f64> {
    let (from, to) = (from?, to?);
    (builds > 0).then(|| {
        let cpu_s = crate::procfs::cpu_percent(from, to) / 100.0
            * to.at.duration_since(from.at).as_secs_f64();
        1000.0 * cpu_s / builds as f64
    })
}

/// `1.23 ms` or `unknown`.
fn ms(v: Option<f64>) -> String {
    v.map_or("unknown".to_string(), |v| format!("{v:.2} ms"))
}

/// The report of a run with these measurements.
pub(super) fn report(
    options: &ScheduleOptions,
    r: ScheduleResults,
    shared: &Shared,
    verification: Verification,
    cpu: String,
) -> Report {
    let text = text(options, &r, shared, &cpu);
    let targets = targets(&r);
    let errors = shared.errors.report();
    Report::new("schedule", options, &r, text, targets, errors, verification)
}

/// The measurements as lines of text.
fn text(options: &ScheduleOptions, r: &ScheduleResults, shared: &Shared, cpu: &str) -> Vec<String> {
    vec![
        format!(
            "idle ({} builds, one at a time): submit→executor start {}",
            r.idle.submit_to_start.count,
            r.idle.submit_to_start.text()
        ),
        format!("  submit→registered {}", r.idle.submit_to_registered.text()),
        format!("  submit→complete {}", r.idle.submit_to_complete.text()),
        format!(
            "burst: {} builds over {} repositories accepted in {:.2} s ({:.0}/s)",
            r.burst_submitted, options.repositories, r.burst_submit_s, r.burst_submit_rate
        ),
        format!(
            "  {} complete in {:.2} s: {:.1} builds/s overall, {:.1} builds/s steady (10th-90th percentile completion)",
            r.burst_completed, r.burst_elapsed_s, r.builds_per_s, r.builds_per_s_steady
        ),
        format!(
            "  submit→executor start {} (includes waiting for the repository's running build)",
            r.burst.submit_to_start.text()
        ),
        format!(
            "  submit→registered {}",
            r.burst.submit_to_registered.text()
        ),
        format!("  submit→complete {}", r.burst.submit_to_complete.text()),
        format!("  manager during the burst: {cpu}"),
        format!(
            "  CPU per build: manager {}, generator {}",
            ms(r.manager_cpu_ms_per_build),
            ms(r.generator_cpu_ms_per_build)
        ),
        format!(
            "  store calls per build: {}",
            calls_text(r.store_calls_per_build.as_ref())
        ),
        format!("  heartbeat replies {}", shared.heartbeats.summary().text()),
        format!(
            "  {} worker connections; {} stop callbacks",
            r.connections, r.stops
        ),
    ]
}

/// Store calls per build as text: the total, then each call's share, most first.
fn calls_text(calls: Option<&BTreeMap<String, f64>>) -> String {
    let Some(calls) = calls else {
        return "unknown (the manager's metrics did not say)".to_string();
    };
    let mut by_count: Vec<_> = calls.iter().collect();
    by_count.sort_by(|a, b| b.1.total_cmp(a.1));
    let each: Vec<String> = (by_count.iter())
        .map(|(call, n)| format!("{call} {n:.2}"))
        .collect();
    let total: f64 = calls.values().sum();
    format!("{total:.1} ({})", each.join(", "))
}

/// Issue 4's scheduling targets against the measurements.
fn targets(r: &ScheduleResults) -> Vec<Check> {
    let idle_p99 = r.idle.submit_to_start.p99_ms;
    vec![
        Check::new(
            "submit → executor start p99 ≤ 50 ms when idle",
            format!(
                "p99 {idle_p99:.2} ms over {} builds",
                r.idle.submit_to_start.count
            ),
            (r.idle.submit_to_start.count > 0).then_some(idle_p99 <= 50.0),
        ),
        Check::new(
            "≥ 200 builds/s sustained through to complete",
            format!(
                "{:.1} builds/s overall, {:.1} steady, over {} builds",
                r.builds_per_s, r.builds_per_s_steady, r.burst_completed
            ),
            (r.burst_completed > 0).then_some(r.builds_per_s >= 200.0),
        ),
    ]
}
