//! The *connected* scenario: W workers registered at once, each heartbeating every 2 s and
//! sending one log line per second, held for a measurement window. Measures the manager's
//! CPU (% of one core, from /proc/<pid>/stat), its RSS and RSS growth per worker (from
//! /proc/<pid>/status), heartbeat reply and log ack latencies, and errors.

mod results;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman_core::{LogEntry, LogType};
use serde::Serialize;
use tokio::sync::watch;

pub use self::results::ConnectedResults;
use self::results::{Window, report, results};
use crate::callback::StartCall;
use crate::scenario::{Progress, Submitted, Usage, check_logs, submit_many};
use crate::stats::{Recorder, lock};
use crate::worker::{Channels, Failure, Shared, Worker};
use crate::{Env, Report, Verification};

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

/// Runs the connected scenario: ramp up, settle, measure the window, release the workers,
/// and check their builds through the API.
pub async fn run(env: &Env, options: &ConnectedOptions) -> anyhow::Result<Report> {
    let (release, released) = watch::channel(false);
    let ctx = WorkerContext::new(env, options, released);
    {
        let ctx = ctx.clone();
        env.callbacks.set_handler(Arc::new(move |call: StartCall| {
            tokio::spawn(connected_worker(call, ctx.clone()));
        }));
    }
    let baseline = env.manager_sample();
    let ramp = ramp_up(env, options, &ctx).await;
    tokio::time::sleep(Duration::from_secs(options.settle_s)).await;
    let window = measure(env, options, &ctx).await;

    // Release every worker: pushing, complete.
    release.send_replace(true);
    ctx.progress.wait_ended(Duration::from_secs(300)).await;
    env.callbacks.clear_handler();

    let acked_by_build = lock(&ctx.acked_by_build).clone();
    let verification = verify(env, &ramp.builds, acked_by_build).await;
    let results = results(&ctx, baseline, &ramp, window);
    Ok(report(options, results, &ctx.shared, verification))
}

/// What the ramp-up did.
struct Ramp {
    /// The builds the API accepted, one per worker.
    builds: Vec<Submitted>,
    /// First submit → the last worker at `building` (or the timeout), seconds.
    seconds: f64,
    /// Workers that reached `building`.
    connected: usize,
}

/// Submits one build per worker and waits until each worker is at `building`.
async fn ramp_up(env: &Env, options: &ConnectedOptions, ctx: &WorkerContext) -> Ramp {
    let started = Instant::now();
    let run_id = env.run_id.clone();
    let builds = submit_many(
        env,
        &ctx.shared,
        options.workers,
        options.submitters,
        move |k| format!("conn-{run_id}-{k}"),
    )
    .await;
    let timeout = Duration::from_secs(options.timeout_s);
    if !ctx.progress.wait_ready(builds.len(), timeout).await {
        ctx.shared.errors.add(
            "ramp",
            format!(
                "only {} of {} workers registered within {} s",
                ctx.progress.ready_count(),
                builds.len(),
                options.timeout_s
            ),
        );
    }
    Ramp {
        builds,
        seconds: started.elapsed().as_secs_f64(),
        connected: ctx.progress.ready_count(),
    }
}

/// The measurement window: latencies recorded, the manager's RSS sampled every second.
async fn measure(env: &Env, options: &ConnectedOptions, ctx: &WorkerContext) -> Window {
    let errors_before = ctx.shared.errors.total();
    ctx.shared.heartbeats.set_recording(true);
    ctx.log_acks.set_recording(true);
    let (heartbeats_before, lines_before) = (
        ctx.shared.heartbeats.summary().count,
        ctx.lines_acked.load(Ordering::SeqCst),
    );
    let began = Instant::now();
    let start = Usage::now(env);
    let mut rss_max_kb: Option<u64> = None;
    while began.elapsed() < Duration::from_secs(options.duration_s) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(s) = env.manager_sample() {
            rss_max_kb = Some(rss_max_kb.unwrap_or(0).max(s.rss_kb));
        }
    }
    let end = Usage::now(env);
    let seconds = began.elapsed().as_secs_f64();
    ctx.shared.heartbeats.set_recording(false);
    ctx.log_acks.set_recording(false);
    let heartbeat = ctx.shared.heartbeats.summary();
    Window {
        seconds,
        start,
        end,
        rss_max_kb,
        heartbeats: heartbeat.count - heartbeats_before,
        heartbeat,
        log_ack: ctx.log_acks.summary(),
        lines: ctx.lines_acked.load(Ordering::SeqCst) - lines_before,
        errors: ctx.shared.errors.total() - errors_before,
    }
}

/// What the scenario and each of its workers share.
#[derive(Clone)]
struct WorkerContext {
    channels: Arc<Channels>,
    shared: Arc<Shared>,
    log_acks: Arc<Recorder>,
    progress: Arc<Progress>,
    lines_acked: Arc<AtomicU64>,
    acked_by_build: Arc<Mutex<HashMap<String, u64>>>,
    released: watch::Receiver<bool>,
    log_every: Option<Duration>,
}

impl WorkerContext {
    /// Nothing counted yet; the workers hold until `released` turns true.
    fn new(env: &Env, options: &ConnectedOptions, released: watch::Receiver<bool>) -> Self {
        WorkerContext {
            channels: env.channels(),
            shared: Arc::default(),
            log_acks: Arc::default(),
            progress: Arc::default(),
            lines_acked: Arc::default(),
            acked_by_build: Arc::default(),
            released,
            log_every: (options.log_every_s > 0.0)
                .then(|| Duration::from_secs_f64(options.log_every_s)),
        }
    }
}

/// One worker: register, reach `building`, log once per period until released, complete.
async fn connected_worker(call: StartCall, mut ctx: WorkerContext) {
    let n = ctx.progress.start();
    let mut acked = 0u64;
    let result = async {
        let mut worker = Worker::start(&ctx.channels, &call, ctx.shared.clone()).await?;
        worker.to_building().await?;
        ctx.progress.ready();
        match ctx.log_every {
            Some(every) => log_until_released(&mut worker, &mut ctx, every, n, &mut acked).await?,
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
    ctx.progress.end();
}

/// Worker `n` logs a line every `every` until the workers are released, counting its
/// acked lines in `acked`.
async fn log_until_released(
    worker: &mut Worker,
    ctx: &mut WorkerContext,
    every: Duration,
    n: usize,
    acked: &mut u64,
) -> Result<(), Failure> {
    // Spread the ticks so the manager sees a steady stream, not bursts.
    let offset = every.mul_f64((n % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.released.wait_for(|r| *r) => return Ok(()),
        }
        let took = worker.log(&format!("bench line {}\n", *acked + 1)).await?;
        *acked += 1;
        ctx.lines_acked.fetch_add(1, Ordering::Relaxed);
        ctx.log_acks.record(took);
    }
}

/// Each build's log holds exactly the lines its worker had acknowledged, and the build is
/// complete.
async fn verify(env: &Env, builds: &[Submitted], acked: HashMap<String, u64>) -> Verification {
    let acked = Arc::new(acked);
    let logs = builds
        .iter()
        .map(|b| (b.repo.clone(), b.id.clone()))
        .collect();
    let checked = {
        let acked = acked.clone();
        check_logs(env, logs, 16, move |id, entries| {
            check_log(id, entries, acked.get(id).copied().unwrap_or(0))
        })
        .await
    };
    let (mut stored, mut complete, mut mismatches) = (0, 0, Vec::new());
    for outcome in checked {
        match outcome {
            Ok(c) => {
                stored += c.lines;
                complete += usize::from(c.complete);
                mismatches.extend(c.mismatch);
            }
            Err(e) => mismatches.push(e),
        }
    }
    let acked_total: u64 = acked.values().sum();
    let mut details = vec![
        format!("{stored} lines stored through the API, {acked_total} acked"),
        format!("{complete} of {} builds complete", builds.len()),
    ];
    details.extend(mismatches.iter().take(10).cloned());
    Verification {
        ok: mismatches.is_empty() && !builds.is_empty(),
        details,
    }
}

/// What one build's log showed.
struct LogCheck {
    /// Worker lines stored.
    lines: u64,
    /// Whether the last phase logged is `complete`.
    complete: bool,
    /// What differs from what the worker had acknowledged, if anything.
    mismatch: Option<String>,
}

/// Build `id`'s log against the `acked` lines its worker had acknowledged.
fn check_log(id: &str, entries: &[LogEntry], acked: u64) -> LogCheck {
    let lines = entries
        .iter()
        .filter(|e| e.message.starts_with("bench line "))
        .count() as u64;
    let last_phase = entries
        .iter()
        .rev()
        .find(|e| e.kind == Some(LogType::Phase))
        .map_or("none", |e| e.message.as_str());
    let complete = last_phase == "complete";
    LogCheck {
        lines,
        complete,
        mismatch: (lines != acked || !complete)
            .then(|| format!("{id}: {lines} lines stored, {acked} acked; last phase {last_phase}")),
    }
}
