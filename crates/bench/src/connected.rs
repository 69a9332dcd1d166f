//! The *connected* scenario: W workers registered at once, each heartbeating every 2 s and
//! sending one log line per second, held for a measurement window. Measures the manager's
//! CPU (% of one core, from /proc/<pid>/stat), its RSS and RSS growth per worker (from
//! /proc/<pid>/status), heartbeat reply and log ack latencies, and errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman_core::LogType;
use serde::Serialize;
use tokio::sync::watch;

use crate::callback::StartCall;
use crate::procfs::{self, ProcSample};
use crate::stats::{Recorder, Summary, lock};
use crate::worker::{Channels, Failure, Shared, Worker};
use crate::{Check, Env, Report, Verification, for_each_parallel, wait_until};

/// The connected scenario's parameters.
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct ConnectedOptions {
    /// Workers held registered and heartbeating (one build, one repository each).
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// The measurement window, seconds, once every worker is registered and settled.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Seconds between a worker's log lines; 0 sends none (heartbeats only).
    #[arg(long, default_value_t = 1.0)]
    pub log_every_s: f64,
    /// Seconds to wait after the last worker registered before measuring.
    #[arg(long, default_value_t = 5)]
    pub settle_s: u64,
    /// Submissions in flight at once while the workers are being created.
    #[arg(long, default_value_t = 32)]
    pub submitters: usize,
    /// Give up on registering every worker after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

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

/// Runs the connected scenario.
pub async fn run(env: &Env, options: &ConnectedOptions) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared::default());
    let log_acks = Arc::new(Recorder::default());
    let channels = env.channels();
    let ready = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let lines_acked = Arc::new(AtomicU64::new(0));
    let acked_by_build = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let workers_started = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let log_every =
        (options.log_every_s > 0.0).then(|| Duration::from_secs_f64(options.log_every_s));
    {
        let ctx = WorkerContext {
            channels: channels.clone(),
            shared: shared.clone(),
            log_acks: log_acks.clone(),
            ready: ready.clone(),
            finished: finished.clone(),
            lines_acked: lines_acked.clone(),
            acked_by_build: acked_by_build.clone(),
            released,
            log_every,
            started: workers_started.clone(),
        };
        env.callbacks.set_handler(Arc::new(move |call: StartCall| {
            tokio::spawn(connected_worker(call, ctx.clone()));
        }));
    }

    let baseline = env.manager_sample();
    let started = Instant::now();
    let ids = Arc::new(Mutex::new(Vec::with_capacity(options.workers)));
    {
        let (api, run_id) = (env.api.clone(), env.run_id.clone());
        let (shared, ids) = (shared.clone(), ids.clone());
        for_each_parallel(options.workers, options.submitters, move |k| {
            let (api, run_id, shared, ids) =
                (api.clone(), run_id.clone(), shared.clone(), ids.clone());
            async move {
                let repo = format!("conn-{run_id}-{k}");
                match api.submit("bench", &repo).await {
                    Ok((id, _)) => lock(&ids).push((repo, id)),
                    Err(e) => shared.errors.add("submit", format!("{e:#}")),
                }
            }
        })
        .await;
    }
    let submitted = lock(&ids).len();
    {
        let (ready, finished) = (ready.clone(), finished.clone());
        if !wait_until(Duration::from_secs(options.timeout_s), || {
            ready.load(Ordering::SeqCst) + finished.load(Ordering::SeqCst) >= submitted
        })
        .await
        {
            shared.errors.add(
                "ramp",
                format!(
                    "only {} of {submitted} workers registered within {} s",
                    ready.load(Ordering::SeqCst),
                    options.timeout_s
                ),
            );
        }
    }
    let ramp_s = started.elapsed().as_secs_f64();
    let connected = ready.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(options.settle_s)).await;

    // The window.
    let errors_before = shared.errors.total();
    shared.heartbeats.set_recording(true);
    log_acks.set_recording(true);
    let (heartbeats_before, lines_before) = (
        shared.heartbeats.summary().count,
        lines_acked.load(Ordering::SeqCst),
    );
    let window_start = Instant::now();
    let manager_start = env.manager_sample();
    let me_start = procfs::sample("self").ok();
    let mut rss_max: Option<u64> = None;
    while window_start.elapsed() < Duration::from_secs(options.duration_s) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(s) = env.manager_sample() {
            rss_max = Some(rss_max.unwrap_or(0).max(s.rss_kb));
        }
    }
    let manager_end = env.manager_sample();
    let me_end = procfs::sample("self").ok();
    let window_s = window_start.elapsed().as_secs_f64();
    shared.heartbeats.set_recording(false);
    log_acks.set_recording(false);
    let lines_in_window = lines_acked.load(Ordering::SeqCst) - lines_before;
    let heartbeat = shared.heartbeats.summary();
    let errors_in_window = shared.errors.total() - errors_before;

    // Release every worker: pushing, complete.
    release.send_replace(true);
    {
        let (started, finished) = (workers_started.clone(), finished.clone());
        wait_until(Duration::from_secs(300), || {
            finished.load(Ordering::SeqCst) >= started.load(Ordering::SeqCst)
        })
        .await;
    }
    env.callbacks.clear_handler();

    let ids = lock(&ids).clone();
    let acked_by_build = lock(&acked_by_build).clone();
    let verification = verify(env, &ids, &acked_by_build).await;
    let cpu = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => Some(procfs::cpu_percent(a, b)),
        _ => None,
    };
    let baseline_kb = baseline.map(|s| s.rss_kb);
    let results = ConnectedResults {
        workers_connected: connected,
        ramp_s,
        window_s,
        manager_cpu_percent: cpu(&manager_start, &manager_end),
        manager_rss_baseline_mb: baseline_kb.map(|kb| kb as f64 / 1024.0),
        manager_rss_mb: rss_max.map(|kb| kb as f64 / 1024.0),
        rss_per_worker_kb: match (baseline_kb, rss_max) {
            (Some(a), Some(b)) if connected > 0 => Some((b as f64 - a as f64) / connected as f64),
            _ => None,
        },
        generator_cpu_percent: cpu(&me_start, &me_end),
        heartbeats_per_s: (heartbeat.count - heartbeats_before) as f64 / window_s,
        heartbeat,
        log_ack: log_acks.summary(),
        lines_per_s: lines_in_window as f64 / window_s,
        errors_in_window,
        lines_acked: lines_acked.load(Ordering::SeqCst),
        connections: channels.connections(),
    };
    Ok(report(options, results, &shared, verification))
}

#[derive(Clone)]
struct WorkerContext {
    channels: Arc<Channels>,
    shared: Arc<Shared>,
    log_acks: Arc<Recorder>,
    ready: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    lines_acked: Arc<AtomicU64>,
    acked_by_build: Arc<Mutex<HashMap<String, u64>>>,
    released: watch::Receiver<bool>,
    log_every: Option<Duration>,
    /// Spreads the workers' log ticks over the period.
    started: Arc<AtomicUsize>,
}

/// One worker: register, reach `building`, log once per period until released, complete.
async fn connected_worker(call: StartCall, mut ctx: WorkerContext) {
    let n = ctx.started.fetch_add(1, Ordering::Relaxed);
    let mut acked = 0u64;
    let result = async {
        let channel = ctx.channels.next(&call.server).map_err(|m| Failure {
            call: "connect",
            message: m,
        })?;
        let mut worker = Worker::register(channel, &call.token, ctx.shared.clone()).await?;
        worker.to_building().await?;
        ctx.ready.fetch_add(1, Ordering::SeqCst);
        match ctx.log_every {
            Some(every) => {
                // Spread the ticks so the manager sees a steady stream, not bursts.
                let offset = every.mul_f64((n % 1000) as f64 / 1000.0);
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = ctx.released.wait_for(|r| *r) => break,
                    }
                    let took = worker.log(&format!("bench line {}\n", acked + 1)).await?;
                    acked += 1;
                    ctx.lines_acked.fetch_add(1, Ordering::Relaxed);
                    ctx.log_acks.record(took);
                }
            }
            None => {
                let _ = ctx.released.wait_for(|r| *r).await;
            }
        }
        worker.complete().await
    }
    .await;
    if let Err(f) = result {
        f.count(&ctx.shared.errors);
    }
    lock(&ctx.acked_by_build).insert(call.build_id.clone(), acked);
    // A worker that failed before `building` counts as finished, so the ramp does not
    // wait for it.
    ctx.finished.fetch_add(1, Ordering::SeqCst);
}

/// Each build's log holds exactly the lines its worker had acknowledged, and the build is
/// complete.
async fn verify(env: &Env, ids: &[(String, String)], acked: &HashMap<String, u64>) -> Verification {
    let mismatches = Arc::new(Mutex::new(Vec::<String>::new()));
    let stored_total = Arc::new(AtomicU64::new(0));
    let complete = Arc::new(AtomicUsize::new(0));
    {
        let ids = Arc::new(ids.to_vec());
        let acked = Arc::new(acked.clone());
        let (api, mismatches, stored_total, complete) = (
            env.api.clone(),
            mismatches.clone(),
            stored_total.clone(),
            complete.clone(),
        );
        for_each_parallel(ids.len(), 16, move |i| {
            let (api, ids, acked) = (api.clone(), ids.clone(), acked.clone());
            let (mismatches, stored_total, complete) =
                (mismatches.clone(), stored_total.clone(), complete.clone());
            async move {
                let (repo, id) = &ids[i];
                let entries = match api.logs("bench", repo, id).await {
                    Ok(e) => e,
                    Err(e) => {
                        lock(&mismatches).push(format!("{id}: {e:#}"));
                        return;
                    }
                };
                let lines = entries
                    .iter()
                    .filter(|e| e.message.starts_with("bench line "))
                    .count() as u64;
                stored_total.fetch_add(lines, Ordering::Relaxed);
                let last_phase = entries
                    .iter()
                    .rev()
                    .find(|e| e.kind == Some(LogType::Phase))
                    .map_or("none", |e| e.message.as_str());
                if last_phase == "complete" {
                    complete.fetch_add(1, Ordering::Relaxed);
                }
                let expected = acked.get(id).copied().unwrap_or(0);
                if lines != expected || last_phase != "complete" {
                    lock(&mismatches).push(format!(
                        "{id}: {lines} lines stored, {expected} acked; last phase {last_phase}"
                    ));
                }
            }
        })
        .await;
    }
    let mismatches = lock(&mismatches).clone();
    let acked_total: u64 = acked.values().sum();
    let mut details = vec![
        format!(
            "{} lines stored through the API, {acked_total} acked",
            stored_total.load(Ordering::Relaxed)
        ),
        format!(
            "{} of {} builds complete",
            complete.load(Ordering::Relaxed),
            ids.len()
        ),
    ];
    details.extend(mismatches.iter().take(10).cloned());
    Verification {
        ok: mismatches.is_empty() && !ids.is_empty(),
        details,
    }
}

fn report(
    options: &ConnectedOptions,
    r: ConnectedResults,
    shared: &Shared,
    verification: Verification,
) -> Report {
    let opt =
        |v: Option<f64>, unit: &str| v.map_or("unknown".to_string(), |v| format!("{v:.1}{unit}"));
    let text = vec![
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
    ];
    let n = r.workers_connected;
    let errors = shared.errors.total();
    let targets = vec![
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
    ];
    Report {
        scenario: "connected",
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
