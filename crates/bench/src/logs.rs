//! The *logs* scenario: S workers at `building`, each sending log lines as fast as their
//! acks come back (one line in flight per stream, as quay-builder does). Measures acked
//! lines per second and ack latency; afterwards checks through the REST API that every
//! acked line is stored exactly once, in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman_core::LogEntry;
use serde::Serialize;
use tokio::sync::watch;

use crate::callback::StartCall;
use crate::scenario::{Progress, Submitted, check_logs, cpu_between, cpu_text, submit_many};
use crate::stats::{Recorder, Summary, lock, micros};
use crate::worker::{Channels, Failure, Shared, Worker};
use crate::{Check, Env, Report, Verification};

/// The logs scenario's parameters.
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct LogsOptions {
    /// Log streams (workers, each with its own build), all sending at once.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// How long the streams send, seconds (ignored with --lines).
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Send exactly this many lines per stream instead of sending for --duration-s.
    #[arg(long)]
    pub lines: Option<u64>,
    /// Size of each line's text, bytes.
    #[arg(long, default_value_t = 80)]
    pub line_bytes: usize,
    /// Give up on registering every worker after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
}

/// The logs scenario's measurements.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogsResults {
    /// Streams that sent lines.
    pub streams: usize,
    /// Lines acknowledged over all streams.
    pub lines_acked: u64,
    /// From the start signal to the last stream's last ack, seconds.
    pub elapsed_s: f64,
    /// Acked lines per second over all streams.
    pub lines_per_s: f64,
    /// Ack latency of every line.
    pub ack: Summary,
    /// The manager's CPU while the streams sent, % of one core.
    pub manager_cpu_percent: Option<f64>,
    /// Lines found in the build logs through the API (worker lines only).
    pub lines_stored: u64,
}

/// What each stream did.
#[derive(Clone)]
struct Sent {
    /// Lines acknowledged.
    acked: u64,
    /// When its last line was acked (`None` if it never got to send).
    ended: Option<Instant>,
}

/// Runs the logs scenario: every stream's worker at `building`, then all of them sending
/// at once until the deadline (or the count), then every line checked through the API.
pub async fn run(env: &Env, options: &LogsOptions) -> anyhow::Result<Report> {
    // The start signal carries the deadline (None: send `lines` lines).
    let (go, go_rx) = watch::channel::<Option<Option<Instant>>>(None);
    let ctx = StreamContext::new(env, options, go_rx);
    {
        let ctx = ctx.clone();
        env.callbacks.set_handler(Arc::new(move |call: StartCall| {
            tokio::spawn(log_stream(call, ctx.clone()));
        }));
    }
    let run_id = env.run_id.clone();
    let builds = submit_many(env, &ctx.shared, options.streams, 16, move |k| {
        format!("logs-{run_id}-{k}")
    })
    .await;
    let timeout = Duration::from_secs(options.timeout_s);
    if !ctx.progress.wait_ready(builds.len(), timeout).await {
        ctx.shared
            .errors
            .add("ramp", "not every stream's worker registered in time");
    }

    let cpu_before = env.manager_sample();
    let start = Instant::now();
    let deadline = match options.lines {
        Some(_) => None,
        None => Some(start + Duration::from_secs(options.duration_s)),
    };
    go.send_replace(Some(deadline));
    let limit = Duration::from_secs(options.timeout_s + options.duration_s);
    ctx.progress.wait_ended(limit).await;
    let cpu_after = env.manager_sample();
    env.callbacks.clear_handler();

    let sent = lock(&ctx.sent).clone();
    let (verification, lines_stored) = verify(env, &builds, &sent, options.lines).await;
    let manager_cpu = cpu_between(cpu_before.as_ref(), cpu_after.as_ref());
    let results = results(&sent, start, ctx.acks.summary(), manager_cpu, lines_stored);
    let cpu = cpu_text(cpu_before.as_ref(), cpu_after.as_ref());
    Ok(report(options, results, &ctx.shared, verification, cpu))
}

/// The measurements: what the streams `sent` from `start`, their `ack` latencies, the
/// manager's CPU meanwhile, and the lines the API showed.
fn results(
    sent: &HashMap<String, Sent>,
    start: Instant,
    ack: Summary,
    manager_cpu_percent: Option<f64>,
    lines_stored: u64,
) -> LogsResults {
    let lines_acked: u64 = sent.values().map(|s| s.acked).sum();
    let last = sent.values().filter_map(|s| s.ended).max().unwrap_or(start);
    let elapsed_s = (last - start).as_secs_f64();
    LogsResults {
        streams: sent.values().filter(|s| s.acked > 0).count(),
        lines_acked,
        elapsed_s,
        lines_per_s: if elapsed_s > 0.0 {
            lines_acked as f64 / elapsed_s
        } else {
            0.0
        },
        ack,
        manager_cpu_percent,
        lines_stored,
    }
}

/// What the scenario and each of its streams share.
#[derive(Clone)]
struct StreamContext {
    channels: Arc<Channels>,
    shared: Arc<Shared>,
    acks: Arc<Recorder>,
    progress: Arc<Progress>,
    sent: Arc<Mutex<HashMap<String, Sent>>>,
    go: watch::Receiver<Option<Option<Instant>>>,
    lines: Option<u64>,
    line_bytes: usize,
}

impl StreamContext {
    /// Nothing sent yet; the streams start sending on `go`.
    fn new(
        env: &Env,
        options: &LogsOptions,
        go: watch::Receiver<Option<Option<Instant>>>,
    ) -> StreamContext {
        let shared = Shared::default();
        shared.heartbeats.set_recording(true);
        StreamContext {
            channels: env.channels(),
            shared: Arc::new(shared),
            acks: Arc::new(Recorder::recording()),
            progress: Arc::default(),
            sent: Arc::default(),
            go,
            lines: options.lines,
            line_bytes: options.line_bytes,
        }
    }
}

/// The text of line `n`: `bench line <n> ` padded with `x` to `bytes`, newline-terminated.
fn line_text(n: u64, bytes: usize) -> String {
    let mut text = format!("bench line {n} ");
    while text.len() + 1 < bytes {
        text.push('x');
    }
    text.push('\n');
    text
}

/// One stream: register, reach `building`, wait for the start, send lines back to back
/// until the deadline (or the count), complete.
async fn log_stream(call: StartCall, mut ctx: StreamContext) {
    ctx.progress.start();
    let mut acked = 0u64;
    let mut ended = None;
    let result = async {
        let mut worker = Worker::start(&ctx.channels, &call, ctx.shared.clone()).await?;
        worker.to_building().await?;
        ctx.progress.ready();
        // The watch guard is not Send: take the value out in the same statement.
        let go = ctx
            .go
            .wait_for(Option::is_some)
            .await
            .map(|g| (*g).flatten());
        let Ok(deadline) = go else {
            return worker.complete().await;
        };
        send_lines(&mut worker, &ctx, deadline, &mut acked).await?;
        ended = Some(Instant::now());
        worker.complete().await
    }
    .await;
    if let Err(f) = result {
        f.count(&ctx.shared.errors);
    }
    lock(&ctx.sent).insert(call.build_id.clone(), Sent { acked, ended });
    ctx.progress.end();
}

/// Sends lines back to back, each awaiting its ack, until `deadline` (or until `acked`
/// reaches `--lines`); records the ack latencies in batches.
async fn send_lines(
    worker: &mut Worker,
    ctx: &StreamContext,
    deadline: Option<Instant>,
    acked: &mut u64,
) -> Result<(), Failure> {
    let mut local = Vec::with_capacity(4096);
    loop {
        if let Some(n) = ctx.lines
            && *acked >= n
        {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let took = worker.log(&line_text(*acked + 1, ctx.line_bytes)).await?;
        *acked += 1;
        local.push(micros(took));
        if local.len() == local.capacity() {
            ctx.acks.extend(&local);
            local.clear();
        }
    }
    ctx.acks.extend(&local);
    Ok(())
}

/// Every acked line is in its build's log once, in order (`bench line 1`, `2`, ...), and
/// nothing else claiming to be one is. Also returns the lines stored.
async fn verify(
    env: &Env,
    builds: &[Submitted],
    sent: &HashMap<String, Sent>,
    lines: Option<u64>,
) -> (Verification, u64) {
    let repos: HashMap<&str, &str> = builds
        .iter()
        .map(|b| (b.id.as_str(), b.repo.as_str()))
        .collect();
    let logs = sent
        .keys()
        .map(|id| {
            (
                repos.get(id.as_str()).unwrap_or(&"").to_string(),
                id.clone(),
            )
        })
        .collect();
    let by_id = Arc::new(sent.clone());
    let checked = check_logs(env, logs, 8, move |id, entries| {
        check_order(id, entries, by_id.get(id).map_or(0, |s| s.acked))
    })
    .await;
    let (mut stored, mut problems) = (0, Vec::new());
    for outcome in checked {
        match outcome {
            Ok((lines, problem)) => {
                stored += lines;
                problems.extend(problem);
            }
            Err(e) => problems.push(e),
        }
    }
    (summarise(sent, lines, stored, problems), stored)
}

/// The worker lines in build `id`'s log, and what differs, if anything, from
/// `bench line 1` … `bench line <acked>`.
fn check_order(id: &str, entries: &[LogEntry], acked: u64) -> (u64, Option<String>) {
    let numbers: Vec<Option<u64>> = entries
        .iter()
        .filter_map(|e| e.message.strip_prefix("bench line "))
        .map(|rest| rest.split(' ').next().and_then(|n| n.parse().ok()))
        .collect();
    let expected: Vec<Option<u64>> = (1..=acked).map(Some).collect();
    let problem = (numbers != expected).then(|| {
        let first_bad = numbers
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(numbers.len().min(expected.len()));
        format!(
            "{id}: {} lines stored, {acked} acked; first difference at line {}",
            numbers.len(),
            first_bad + 1
        )
    });
    (numbers.len() as u64, problem)
}

/// The verification from what the streams `sent`, the `stored` lines and the
/// `problems` found; with `--lines`, every stream must have sent them all.
fn summarise(
    sent: &HashMap<String, Sent>,
    lines: Option<u64>,
    stored: u64,
    problems: Vec<String>,
) -> Verification {
    let acked: u64 = sent.values().map(|s| s.acked).sum();
    let mut details = vec![format!(
        "{stored} lines stored through the API, {acked} acked, over {} builds: {}",
        sent.len(),
        if problems.is_empty() {
            "each once, in order"
        } else {
            "MISMATCH"
        }
    )];
    let mut ok = problems.is_empty() && !sent.is_empty();
    if let Some(n) = lines {
        let short = sent.values().filter(|s| s.acked != n).count();
        if short > 0 {
            ok = false;
            details.push(format!("{short} streams did not send all {n} lines"));
        }
    }
    details.extend(problems.into_iter().take(10));
    Verification { ok, details }
}

fn report(
    options: &LogsOptions,
    r: LogsResults,
    shared: &Shared,
    verification: Verification,
    cpu: String,
) -> Report {
    let text = vec![
        format!(
            "{} streams: {} lines acked in {:.2} s = {:.0} lines/s",
            r.streams, r.lines_acked, r.elapsed_s, r.lines_per_s
        ),
        format!("ack latency {}", r.ack.text()),
        format!("manager while sending: {cpu}"),
        format!("heartbeat replies {}", shared.heartbeats.summary().text()),
    ];
    let targets = targets(options, &r, verification.ok);
    let errors = shared.errors.report();
    Report::new("logs", options, &r, text, targets, errors, verification)
}

/// Issue 4's log-ingestion targets that apply to this many streams, against the
/// measurements and whether the verification passed.
fn targets(options: &LogsOptions, r: &LogsResults, verified: bool) -> Vec<Check> {
    let mut targets = Vec::new();
    if options.streams == 1 {
        targets.push(Check::new(
            "≥ 5,000 acked lines/s on one stream",
            format!("{:.0} lines/s", r.lines_per_s),
            Some(r.lines_per_s >= 5000.0),
        ));
    }
    if options.streams >= 100 {
        targets.push(Check::new(
            "≥ 50,000 lines/s over 100 streams (embedded store)",
            format!("{:.0} lines/s over {} streams", r.lines_per_s, r.streams),
            Some(r.lines_per_s >= 50_000.0),
        ));
    }
    targets.push(Check::new(
        "every line stored once, in order per build",
        format!("{} stored, {} acked", r.lines_stored, r.lines_acked),
        Some(verified),
    ));
    targets
}
