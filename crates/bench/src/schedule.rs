//! The *schedule* scenario: builds submitted through the REST API over a set of
//! repositories; each worker registers, walks the phases, sends a few log lines and
//! completes at once. Measures submit → executor start (the start callback arrived) and
//! submit → registered, first with the manager idle (one build at a time), then under a
//! burst submitted as fast as the API takes it, with the sustained completion rate.

mod results;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use self::results::{Burst, Timeline, calls_between, latencies, report};
pub use self::results::{Latencies, ScheduleResults};
use crate::callback::StartCall;
use crate::scenario::{Usage, cpu_text, map_parallel, submit, submit_many, wait_until};
use crate::worker::{Channels, Shared, Worker};
use crate::{Env, Report, Verification};

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

/// Runs the schedule scenario: the idle builds, the burst, then every worker's stop, and
/// the builds checked through the API.
pub async fn run(env: &Env, options: &ScheduleOptions) -> anyhow::Result<Report> {
    let mut schedule = Schedule::start(env, options);
    let idle_ids = schedule.idle_builds().await;
    let idle = latencies(&schedule.timeline.get(&idle_ids));
    let burst = schedule.burst().await;
    env.callbacks.clear_handler();

    // Every worker is stopped by the manager once its build ended.
    let all_ids: Vec<String> = idle_ids.into_iter().chain(burst.ids.clone()).collect();
    let stops = schedule
        .wait_for_stops(all_ids.len() as u64, Duration::from_secs(30))
        .await;
    let verification = verify(env, &all_ids, stops).await;
    let results = burst.results(idle, stops, schedule.channels.connections());
    let cpu = cpu_text(burst.before.manager.as_ref(), burst.after.manager.as_ref());
    Ok(report(
        options,
        results,
        &schedule.shared,
        verification,
        cpu,
    ))
}

/// How long an idle build may take from submit to its worker's end.
const IDLE_BUILD_TIMEOUT: Duration = Duration::from_secs(60);

/// What the schedule scenario's steps share.
struct Schedule<'a> {
    env: &'a Env,
    options: &'a ScheduleOptions,
    shared: Arc<Shared>,
    timeline: Arc<Timeline>,
    channels: Arc<Channels>,
    /// The build id of each worker that ended, successfully or not.
    done: mpsc::UnboundedReceiver<String>,
    /// Stop callbacks that arrived before this run.
    stops_before: u64,
}

impl<'a> Schedule<'a> {
    /// Sets up: from now on each start callback gets a [`build_worker`].
    fn start(env: &'a Env, options: &'a ScheduleOptions) -> Schedule<'a> {
        let shared = Arc::new(Shared::default());
        shared.heartbeats.set_recording(true);
        let timeline = Arc::new(Timeline::default());
        let channels = env.channels();
        let (done_tx, done) = mpsc::unbounded_channel::<String>();
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
        Schedule {
            env,
            options,
            shared,
            timeline,
            channels,
            done,
            stops_before: env.callbacks.stops().count(),
        }
    }

    /// Idle: one build at a time, the next once the previous one's worker was stopped.
    /// Returns the accepted builds' ids.
    async fn idle_builds(&mut self) -> Vec<String> {
        let repos = self.options.repositories.max(1);
        let mut ids = Vec::new();
        for i in 0..self.options.idle_builds {
            let repo = format!("sched-{}-i{}", self.env.run_id, i % repos);
            let Some(build) = submit(&self.env.api, &self.shared, repo).await else {
                continue;
            };
            self.timeline
                .update(&build.id, |t| t.submitted = Some(build.sent));
            if !self.wait_done(&build.id).await {
                self.shared.errors.add(
                    "idle build",
                    format!("build {} did not finish in 60 s", build.id),
                );
            }
            self.wait_for_stops(ids.len() as u64 + 1, Duration::from_secs(5))
                .await;
            ids.push(build.id);
        }
        ids
    }

    /// Waits for build `id`'s worker to end; false after [`IDLE_BUILD_TIMEOUT`].
    async fn wait_done(&mut self, id: &str) -> bool {
        let done = &mut self.done;
        let waited = tokio::time::timeout(IDLE_BUILD_TIMEOUT, async {
            while let Some(ended) = done.recv().await {
                if ended == id {
                    return true;
                }
            }
            false
        })
        .await;
        matches!(waited, Ok(true))
    }

    /// The burst: builds submitted as fast as the API takes them, then their workers
    /// awaited.
    async fn burst(&mut self) -> Burst {
        let calls_before = self.env.api.store_calls().await.ok();
        let before = Usage::now(self.env);
        let started = Instant::now();
        let (run_id, repos) = (self.env.run_id.clone(), self.options.repositories.max(1));
        let builds = submit_many(
            self.env,
            &self.shared,
            self.options.builds,
            self.options.submitters,
            move |k| format!("sched-{run_id}-b{}", k % repos),
        )
        .await;
        let submit_s = started.elapsed().as_secs_f64();
        for build in &builds {
            self.timeline
                .update(&build.id, |t| t.submitted = Some(build.sent));
        }
        let ids: Vec<String> = builds.into_iter().map(|b| b.id).collect();
        let workers_ended = self.wait_burst_done(ids.len()).await;
        let ended = Instant::now();
        let after = Usage::now(self.env);
        let calls_after = self.env.api.store_calls().await.ok();
        Burst {
            store_calls: calls_before
                .zip(calls_after)
                .map(|(b, a)| calls_between(&b, a)),
            times: self.timeline.get(&ids),
            ids,
            started,
            submit_s,
            ended,
            workers_ended,
            before,
            after,
        }
    }

    /// Waits for `builds` workers to end, up to `--timeout-s`; how many did.
    async fn wait_burst_done(&mut self, builds: usize) -> usize {
        let mut ended = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.options.timeout_s);
        while ended < builds {
            match tokio::time::timeout_at(deadline, self.done.recv()).await {
                Ok(Some(_)) => ended += 1,
                _ => break,
            }
        }
        if ended < builds {
            self.shared.errors.add(
                "burst",
                format!(
                    "{} of {builds} builds did not finish within {} s",
                    builds - ended,
                    self.options.timeout_s
                ),
            );
        }
        ended
    }

    /// Stop callbacks since the run began.
    fn stops(&self) -> u64 {
        self.env.callbacks.stops().count() - self.stops_before
    }

    /// Waits up to `timeout` for `workers` stop callbacks since the run began; how many
    /// arrived.
    async fn wait_for_stops(&self, workers: u64, timeout: Duration) -> u64 {
        wait_until(timeout, || self.stops() >= workers).await;
        self.stops()
    }
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
        let mut worker = Worker::start(&channels, &call, shared.clone()).await?;
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
    let (api, all) = (env.api.clone(), Arc::new(ids.to_vec()));
    let seen = map_parallel(ids.len(), 16, move |i| {
        let (api, ids) = (api.clone(), all.clone());
        async move {
            match api.build(&ids[i]).await {
                Ok(view) => view.phase.to_string(),
                Err(e) => format!("unreadable ({e:#})"),
            }
        }
    })
    .await;
    let mut phases = HashMap::<String, usize>::new();
    for phase in seen {
        *phases.entry(phase).or_default() += 1;
    }
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
