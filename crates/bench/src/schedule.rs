//! The *schedule* scenario: builds submitted through the REST API over a set of
//! repositories; each worker registers, walks the phases, sends a few log lines and
//! completes at once. Measures submit → executor start (the start callback arrived) and
//! submit → registered, first with the manager idle (one build at a time), then under a
//! burst submitted as fast as the API takes it, with the sustained completion rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::callback::StartCall;
use crate::procfs::ProcSample;
use crate::stats::{Summary, lock, micros};
use crate::worker::{Channels, Failure, Shared, Worker};
use crate::{Check, Env, Report, Verification, cpu_text, for_each_parallel, wait_until};

/// The schedule scenario's parameters.
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct ScheduleOptions {
    /// Builds submitted as fast as the API takes them (the burst).
    #[arg(long, default_value_t = 2000)]
    pub builds: usize,
    /// Builds submitted first one at a time, each once the previous one completed and its
    /// worker was stopped (the idle latency).
    #[arg(long, default_value_t = 100)]
    pub idle_builds: usize,
    /// Repositories the builds are spread over (Quay's rule: one running build each).
    #[arg(long, default_value_t = 50)]
    pub repositories: usize,
    /// Submissions in flight at once during the burst.
    #[arg(long, default_value_t = 32)]
    pub submitters: usize,
    /// Log lines each worker sends before it completes.
    #[arg(long, default_value_t = 2)]
    pub lines_per_build: usize,
    /// Give up waiting for the burst's completions after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

/// When each step of a build happened.
#[derive(Clone, Copy, Default)]
struct Times {
    submitted: Option<Instant>,
    started: Option<Instant>,
    registered: Option<Instant>,
    completed: Option<Instant>,
}

#[derive(Default)]
struct Timeline(Mutex<HashMap<String, Times>>);

impl Timeline {
    fn update(&self, id: &str, f: impl FnOnce(&mut Times)) {
        f(lock(&self.0).entry(id.to_string()).or_default());
    }

    fn get(&self, ids: &[String]) -> Vec<Times> {
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

fn latencies(times: &[Times]) -> Latencies {
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
}

/// Runs the schedule scenario.
pub async fn run(env: &Env, options: &ScheduleOptions) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared::default());
    shared.heartbeats.set_recording(true);
    let timeline = Arc::new(Timeline::default());
    let channels = env.channels();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    {
        let (shared, timeline, channels) = (shared.clone(), timeline.clone(), channels.clone());
        let lines = options.lines_per_build;
        env.callbacks.set_handler(Arc::new(move |call: StartCall| {
            timeline.update(&call.build_id, |t| t.started = Some(call.at));
            tokio::spawn(build_worker(
                call,
                lines,
                channels.clone(),
                shared.clone(),
                timeline.clone(),
                done_tx.clone(),
            ));
        }));
    }
    let stops_before = env.callbacks.stops().count();
    let repos = options.repositories.max(1);
    let mut all_ids = Vec::new();

    // Idle: one build at a time, the next once the previous one's worker was stopped.
    let mut idle_ids = Vec::new();
    for i in 0..options.idle_builds {
        let repo = format!("sched-{}-i{}", env.run_id, i % repos);
        let (id, sent) = match env.api.submit("bench", &repo).await {
            Ok(x) => x,
            Err(e) => {
                shared.errors.add("submit", format!("{e:#}"));
                continue;
            }
        };
        timeline.update(&id, |t| t.submitted = Some(sent));
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(done) = done_rx.recv().await {
                if done == id {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(waited, Ok(true)) {
            shared
                .errors
                .add("idle build", format!("build {id} did not finish in 60 s"));
        }
        let stopped = idle_ids.len() as u64 + 1;
        let stops = env.callbacks.stops().clone();
        wait_until(Duration::from_secs(5), || {
            stops.count() - stops_before >= stopped
        })
        .await;
        idle_ids.push(id);
    }
    let idle = latencies(&timeline.get(&idle_ids));
    all_ids.extend(idle_ids.iter().cloned());

    // Burst: as fast as the API takes them.
    let cpu_before = env.manager_sample();
    let me_before = crate::procfs::sample("self").ok();
    let burst_ids = Arc::new(Mutex::new(Vec::with_capacity(options.builds)));
    let started = Instant::now();
    {
        let (api, run_id) = (env.api.clone(), env.run_id.clone());
        let (timeline, shared, ids) = (timeline.clone(), shared.clone(), burst_ids.clone());
        for_each_parallel(options.builds, options.submitters, move |k| {
            let (api, run_id) = (api.clone(), run_id.clone());
            let (timeline, shared, ids) = (timeline.clone(), shared.clone(), ids.clone());
            async move {
                let repo = format!("sched-{run_id}-b{}", k % repos);
                match api.submit("bench", &repo).await {
                    Ok((id, sent)) => {
                        timeline.update(&id, |t| t.submitted = Some(sent));
                        lock(&ids).push(id);
                    }
                    Err(e) => shared.errors.add("submit", format!("{e:#}")),
                }
            }
        })
        .await;
    }
    let burst_submit_s = started.elapsed().as_secs_f64();
    let burst_ids = lock(&burst_ids).clone();
    let mut completed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(options.timeout_s);
    while completed < burst_ids.len() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(_)) => completed += 1,
            _ => break,
        }
    }
    let burst_end = Instant::now();
    let cpu_after = env.manager_sample();
    let me_after = crate::procfs::sample("self").ok();
    if completed < burst_ids.len() {
        shared.errors.add(
            "burst",
            format!(
                "{} of {} builds did not finish within {} s",
                burst_ids.len() - completed,
                burst_ids.len(),
                options.timeout_s
            ),
        );
    }
    let burst_times = timeline.get(&burst_ids);
    let mut completions: Vec<Instant> = burst_times.iter().filter_map(|t| t.completed).collect();
    completions.sort();
    let builds_per_s = completions.len() as f64 / (burst_end - started).as_secs_f64();
    let steady = if completions.len() >= 10 {
        let (a, b) = (completions.len() / 10, completions.len() * 9 / 10);
        let secs = (completions[b] - completions[a]).as_secs_f64();
        if secs > 0.0 {
            (b - a) as f64 / secs
        } else {
            0.0
        }
    } else {
        builds_per_s
    };
    all_ids.extend(burst_ids.iter().cloned());
    env.callbacks.clear_handler();

    // Every worker is stopped by the manager once its build ended.
    let stops = env.callbacks.stops().clone();
    let expected_stops = all_ids.len() as u64;
    wait_until(Duration::from_secs(30), || {
        stops.count() - stops_before >= expected_stops
    })
    .await;
    let stops = env.callbacks.stops().count() - stops_before;

    let verification = verify(env, &all_ids, stops).await;
    let results = ScheduleResults {
        idle,
        burst_submitted: burst_ids.len(),
        burst_submit_s,
        burst_submit_rate: burst_ids.len() as f64 / burst_submit_s.max(1e-9),
        burst_completed: completions.len(),
        burst_elapsed_s: completions
            .last()
            .map_or(0.0, |l| (*l - started).as_secs_f64()),
        builds_per_s,
        builds_per_s_steady: steady,
        burst: latencies(&burst_times),
        manager_cpu_percent: match (&cpu_before, &cpu_after) {
            (Some(a), Some(b)) => Some(crate::procfs::cpu_percent(a, b)),
            _ => None,
        },
        manager_rss_mb: cpu_after.map(|s| s.rss_kb as f64 / 1024.0),
        manager_cpu_ms_per_build: per_build(cpu_before.as_ref(), cpu_after.as_ref(), completed),
        generator_cpu_ms_per_build: per_build(me_before.as_ref(), me_after.as_ref(), completed),
        stops,
        connections: channels.connections(),
    };
    Ok(report(
        options,
        results,
        &shared,
        verification,
        cpu_text(cpu_before.as_ref(), cpu_after.as_ref()),
    ))
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

/// One simulated worker for one build: register, walk the phases, log, complete.
async fn build_worker(
    call: StartCall,
    lines: usize,
    channels: Arc<Channels>,
    shared: Arc<Shared>,
    timeline: Arc<Timeline>,
    done: mpsc::UnboundedSender<String>,
) {
    let id = call.build_id.clone();
    let result = async {
        let channel = channels.next(&call.server).map_err(|m| Failure {
            call: "connect",
            message: m,
        })?;
        let mut worker = Worker::register(channel, &call.token, shared.clone()).await?;
        timeline.update(&id, |t| t.registered = Some(Instant::now()));
        worker.to_building().await?;
        for i in 1..=lines {
            worker
                .log(&format!("Step {i}/{lines} : RUN bench\n"))
                .await?;
        }
        worker.complete().await
    }
    .await;
    match result {
        Ok(()) => timeline.update(&id, |t| t.completed = Some(Instant::now())),
        Err(f) => f.count(&shared.errors),
    }
    let _ = done.send(id);
}

/// Every build is `complete` through the API, and every worker was stopped.
async fn verify(env: &Env, ids: &[String], stops: u64) -> Verification {
    let phases = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    {
        let (api, ids, phases) = (env.api.clone(), Arc::new(ids.to_vec()), phases.clone());
        for_each_parallel(ids.len(), 16, move |i| {
            let (api, ids, phases) = (api.clone(), ids.clone(), phases.clone());
            async move {
                let phase = match api.build(&ids[i]).await {
                    Ok(view) => view.phase.to_string(),
                    Err(e) => format!("unreadable ({e:#})"),
                };
                *lock(&phases).entry(phase).or_default() += 1;
            }
        })
        .await;
    }
    let phases = lock(&phases).clone();
    let complete = phases.get("complete").copied().unwrap_or(0);
    let mut details = vec![
        format!(
            "{complete} of {} builds are complete through the API (phases: {phases:?})",
            ids.len()
        ),
        format!("{stops} of {} workers stopped by the manager", ids.len()),
    ];
    let ok = complete == ids.len() && stops == ids.len() as u64;
    if env.callbacks.unhandled() > 0 {
        details.push(format!(
            "{} start callbacks arrived with no scenario running",
            env.callbacks.unhandled()
        ));
    }
    Verification { ok, details }
}

/// `1.23 ms` or `unknown`.
fn ms(v: Option<f64>) -> String {
    v.map_or("unknown".to_string(), |v| format!("{v:.2} ms"))
}

fn report(
    options: &ScheduleOptions,
    r: ScheduleResults,
    shared: &Shared,
    verification: Verification,
    cpu: String,
) -> Report {
    let text = vec![
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
        format!("  heartbeat replies {}", shared.heartbeats.summary().text()),
        format!(
            "  {} worker connections; {} stop callbacks",
            r.connections, r.stops
        ),
    ];
    let idle_p99 = r.idle.submit_to_start.p99_ms;
    let targets = vec![
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
    ];
    Report {
        scenario: "schedule",
        machine: crate::procfs::Machine::read(),
        // The caller knows what the manager runs on.
        backends: String::new(),
        parameters: serde_json::to_value(options).unwrap_or_default(),
        results: serde_json::to_value(&r).unwrap_or_default(),
        targets,
        errors: shared.errors.report(),
        verification,
        text,
    }
}
