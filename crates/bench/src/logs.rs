//! The *logs* scenario: S workers at `building`, each sending log lines as fast as their
//! acks come back (one line in flight per stream, as quay-builder does). Measures acked
//! lines per second and ack latency; afterwards checks through the REST API that every
//! acked line is stored exactly once, in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::callback::StartCall;
use crate::stats::{Recorder, Summary, lock};
use crate::worker::{Channels, Failure, Shared, Worker};
use crate::{Check, Env, Report, Verification, cpu_text, for_each_parallel, wait_until};

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

/// What each stream did: its build, repository and lines acked.
#[derive(Clone, Default)]
struct Sent {
    repo: String,
    acked: u64,
    ended: Option<Instant>,
}

/// Runs the logs scenario.
pub async fn run(env: &Env, options: &LogsOptions) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared::default());
    shared.heartbeats.set_recording(true);
    let acks = Arc::new(Recorder::recording());
    let channels = env.channels();
    let ready = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(Mutex::new(HashMap::<String, Sent>::new()));
    let repos = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    // The start signal carries the deadline (None: send `lines` lines).
    let (go, go_rx) = watch::channel::<Option<Option<Instant>>>(None);
    {
        let ctx = StreamContext {
            channels: channels.clone(),
            shared: shared.clone(),
            acks: acks.clone(),
            ready: ready.clone(),
            finished: finished.clone(),
            started: started.clone(),
            sent: sent.clone(),
            go: go_rx,
            lines: options.lines,
            line_bytes: options.line_bytes,
        };
        env.callbacks.set_handler(Arc::new(move |call: StartCall| {
            tokio::spawn(log_stream(call, ctx.clone()));
        }));
    }

    let ids = Arc::new(Mutex::new(Vec::new()));
    {
        let (api, run_id) = (env.api.clone(), env.run_id.clone());
        let (shared, ids, repos) = (shared.clone(), ids.clone(), repos.clone());
        for_each_parallel(options.streams, 16, move |k| {
            let (api, run_id) = (api.clone(), run_id.clone());
            let (shared, ids, repos) = (shared.clone(), ids.clone(), repos.clone());
            async move {
                let repo = format!("logs-{run_id}-{k}");
                match api.submit("bench", &repo).await {
                    Ok((id, _)) => {
                        lock(&repos).insert(id.clone(), repo);
                        lock(&ids).push(id);
                    }
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
            shared
                .errors
                .add("ramp", "not every stream's worker registered in time");
        }
    }

    let cpu_before = env.manager_sample();
    let start = Instant::now();
    let deadline = match options.lines {
        Some(_) => None,
        None => Some(start + Duration::from_secs(options.duration_s)),
    };
    go.send_replace(Some(deadline));
    {
        let (started, finished) = (started.clone(), finished.clone());
        let limit = options.timeout_s + options.duration_s;
        wait_until(Duration::from_secs(limit), || {
            finished.load(Ordering::SeqCst) >= started.load(Ordering::SeqCst)
        })
        .await;
    }
    let cpu_after = env.manager_sample();
    env.callbacks.clear_handler();

    let mut sent = lock(&sent).clone();
    for (id, s) in sent.iter_mut() {
        s.repo = lock(&repos).get(id).cloned().unwrap_or_default();
    }
    let lines_acked: u64 = sent.values().map(|s| s.acked).sum();
    let last = sent.values().filter_map(|s| s.ended).max().unwrap_or(start);
    let elapsed_s = (last - start).as_secs_f64();
    let (verification, lines_stored) = verify(env, &sent, options.lines).await;
    let results = LogsResults {
        streams: sent.values().filter(|s| s.acked > 0).count(),
        lines_acked,
        elapsed_s,
        lines_per_s: if elapsed_s > 0.0 {
            lines_acked as f64 / elapsed_s
        } else {
            0.0
        },
        ack: acks.summary(),
        manager_cpu_percent: match (&cpu_before, &cpu_after) {
            (Some(a), Some(b)) => Some(crate::procfs::cpu_percent(a, b)),
            _ => None,
        },
        lines_stored,
    };
    let cpu = cpu_text(cpu_before.as_ref(), cpu_after.as_ref());
    Ok(report(options, results, &shared, verification, cpu))
}

#[derive(Clone)]
struct StreamContext {
    channels: Arc<Channels>,
    shared: Arc<Shared>,
    acks: Arc<Recorder>,
    ready: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    sent: Arc<Mutex<HashMap<String, Sent>>>,
    go: watch::Receiver<Option<Option<Instant>>>,
    lines: Option<u64>,
    line_bytes: usize,
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
    ctx.started.fetch_add(1, Ordering::SeqCst);
    let mut acked = 0u64;
    let mut ended = None;
    let result = async {
        let channel = ctx.channels.next(&call.server).map_err(|m| Failure {
            call: "connect",
            message: m,
        })?;
        let mut worker = Worker::register(channel, &call.token, ctx.shared.clone()).await?;
        worker.to_building().await?;
        ctx.ready.fetch_add(1, Ordering::SeqCst);
        // The watch guard is not Send: take the value out in the same statement.
        let go = ctx
            .go
            .wait_for(Option::is_some)
            .await
            .map(|g| (*g).flatten());
        let Ok(deadline) = go else {
            return worker.complete().await;
        };
        let mut local = Vec::with_capacity(4096);
        loop {
            if let Some(n) = ctx.lines
                && acked >= n
            {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let took = worker.log(&line_text(acked + 1, ctx.line_bytes)).await?;
            acked += 1;
            local.push(crate::stats::micros(took));
            if local.len() == local.capacity() {
                ctx.acks.extend(&local);
                local.clear();
            }
        }
        ctx.acks.extend(&local);
        ended = Some(Instant::now());
        worker.complete().await
    }
    .await;
    if let Err(f) = result {
        f.count(&ctx.shared.errors);
    }
    lock(&ctx.sent).insert(
        call.build_id.clone(),
        Sent {
            repo: String::new(),
            acked,
            ended,
        },
    );
    ctx.finished.fetch_add(1, Ordering::SeqCst);
}

/// Every acked line is in its build's log once, in order (`bench line 1`, `2`, ...), and
/// nothing else claiming to be one is.
async fn verify(
    env: &Env,
    sent: &HashMap<String, Sent>,
    lines: Option<u64>,
) -> (Verification, u64) {
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let stored = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let entries: Arc<Vec<(String, Sent)>> =
            Arc::new(sent.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let (api, problems, stored) = (env.api.clone(), problems.clone(), stored.clone());
        for_each_parallel(entries.len(), 8, move |i| {
            let (api, entries, problems, stored) = (
                api.clone(),
                entries.clone(),
                problems.clone(),
                stored.clone(),
            );
            async move {
                let (id, s) = &entries[i];
                let log = match api.logs("bench", &s.repo, id).await {
                    Ok(l) => l,
                    Err(e) => {
                        lock(&problems).push(format!("{id}: {e:#}"));
                        return;
                    }
                };
                let numbers: Vec<Option<u64>> = log
                    .iter()
                    .filter_map(|e| e.message.strip_prefix("bench line "))
                    .map(|rest| rest.split(' ').next().and_then(|n| n.parse().ok()))
                    .collect();
                stored.fetch_add(numbers.len() as u64, Ordering::Relaxed);
                let expected: Vec<Option<u64>> = (1..=s.acked).map(Some).collect();
                if numbers != expected {
                    let first_bad = numbers
                        .iter()
                        .zip(&expected)
                        .position(|(a, b)| a != b)
                        .unwrap_or(numbers.len().min(expected.len()));
                    lock(&problems).push(format!(
                        "{id}: {} lines stored, {} acked; first difference at line {}",
                        numbers.len(),
                        s.acked,
                        first_bad + 1
                    ));
                }
            }
        })
        .await;
    }
    let problems = lock(&problems).clone();
    let acked: u64 = sent.values().map(|s| s.acked).sum();
    let stored = stored.load(Ordering::Relaxed);
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
    details.extend(problems.iter().take(10).cloned());
    (Verification { ok, details }, stored)
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
        Some(verification.ok),
    ));
    Report {
        scenario: "logs",
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
