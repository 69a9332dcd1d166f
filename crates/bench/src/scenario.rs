//! The steps the scenarios share: submitting builds many at once, following the simulated
//! workers from start callback to end, sampling the manager's and this generator's CPU,
//! and reading each build's log back through the REST API.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use buildman_core::LogEntry;

use crate::Env;
use crate::api::Api;
use crate::procfs::{self, ProcSample};
use crate::worker::Shared;

/// Runs `n` jobs on spawned tasks with at most `parallel` at once; job `i` gets `i`. The
/// results come back in job order (a job that panics takes its task's results with it).
pub(crate) async fn map_parallel<R, F, Fut>(n: usize, parallel: usize, f: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let tasks: Vec<_> = (0..parallel.max(1).min(n.max(1)))
        .map(|_| {
            let (next, f) = (next.clone(), f.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return done;
                    }
                    done.push((i, f(i).await));
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.extend(task.await.unwrap_or_default());
    }
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
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

/// A build the API accepted.
#[derive(Clone, Debug)]
pub(crate) struct Submitted {
    /// Its repository (in the `bench` namespace).
    pub repo: String,
    /// Its id.
    pub id: String,
    /// When the submit request was sent.
    pub sent: Instant,
}

/// Submits one build of `bench/<repo>`; a refusal is counted as a `submit` error.
pub(crate) async fn submit(api: &Api, shared: &Shared, repo: String) -> Option<Submitted> {
    match api.submit("bench", &repo).await {
        Ok((id, sent)) => Some(Submitted { repo, id, sent }),
        Err(e) => {
            shared.errors.add("submit", format!("{e:#}"));
            None
        }
    }
}

/// Submits `n` builds, `parallel` at once, build `k` to `bench/<repo(k)>`; the accepted
/// ones in submission order.
pub(crate) async fn submit_many(
    env: &Env,
    shared: &Arc<Shared>,
    n: usize,
    parallel: usize,
    repo: impl Fn(usize) -> String + Send + Sync + 'static,
) -> Vec<Submitted> {
    let (api, shared) = (env.api.clone(), shared.clone());
    map_parallel(n, parallel, move |k| {
        let (api, shared, repo) = (api.clone(), shared.clone(), repo(k));
        async move { submit(&api, &shared, repo).await }
    })
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// Reads the log of each `(repository, build id)` through the API, `parallel` at once,
/// and hands it to `check` with the build id; a log that cannot be read is an error
/// naming the build.
pub(crate) async fn check_logs<R, F>(
    env: &Env,
    builds: Vec<(String, String)>,
    parallel: usize,
    check: F,
) -> Vec<Result<R, String>>
where
    R: Send + 'static,
    F: Fn(&str, &[LogEntry]) -> R + Send + Sync + 'static,
{
    let (api, builds, check) = (env.api.clone(), Arc::new(builds), Arc::new(check));
    map_parallel(builds.len(), parallel, move |i| {
        let (api, builds, check) = (api.clone(), builds.clone(), check.clone());
        async move {
            let (repo, id) = &builds[i];
            match api.logs("bench", repo, id).await {
                Ok(entries) => Ok(check(id, &entries)),
                Err(e) => Err(format!("{id}: {e:#}")),
            }
        }
    })
    .await
}

/// How far a scenario's simulated workers got. A worker that fails before `building`
/// still ends, so waiting for "ready or ended" never waits on a dead one.
#[derive(Default)]
pub(crate) struct Progress {
    started: AtomicUsize,
    ready: AtomicUsize,
    ended: AtomicUsize,
}

impl Progress {
    /// Counts a worker started by a start callback; returns how many started before it.
    pub fn start(&self) -> usize {
        self.started.fetch_add(1, Ordering::SeqCst)
    }

    /// Counts a worker that reached `building`.
    pub fn ready(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a worker that ended, whether or not it succeeded.
    pub fn end(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    /// Workers that reached `building`.
    pub fn ready_count(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }

    /// Waits until each of `workers` reached `building` or ended; false on timeout.
    pub async fn wait_ready(&self, workers: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.ready.load(Ordering::SeqCst) + self.ended.load(Ordering::SeqCst) >= workers
        })
        .await
    }

    /// Waits until every started worker ended; false on timeout.
    pub async fn wait_ended(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.ended.load(Ordering::SeqCst) >= self.started.load(Ordering::SeqCst)
        })
        .await
    }
}

/// The manager's and this generator's CPU time and memory at one moment.
pub(crate) struct Usage {
    /// The manager's, when its pid is known.
    pub manager: Option<ProcSample>,
    /// This process's.
    pub generator: Option<ProcSample>,
}

impl Usage {
    /// Both samples, now.
    pub fn now(env: &Env) -> Usage {
        Usage {
            manager: env.manager_sample(),
            generator: procfs::sample("self").ok(),
        }
    }
}

/// CPU used between two samples, % of one core, when both were taken.
pub(crate) fn cpu_between(from: Option<&ProcSample>, to: Option<&ProcSample>) -> Option<f64> {
    Some(procfs::cpu_percent(from?, to?))
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
