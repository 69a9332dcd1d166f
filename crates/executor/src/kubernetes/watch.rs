//! The failures the cluster shows before a worker could register, read from one watch on
//! the worker pods and one on the worker Jobs (kube-runtime's watcher: list, then watch,
//! re-listing after a broken watch with a back-off), not a poll per build:
//!
//! - a pod the scheduler cannot place (`PodScheduled` False, reason `Unschedulable`);
//! - a container that cannot start: waiting in `ErrImagePull`, `ImagePullBackOff` or
//!   `CreateContainerConfigError`;
//! - a Job that failed (`Failed` True: its pods failed past backoffLimit, or the deadline).
//!
//! Only this executor's own workers are reported (the Jobs it started and has not stopped),
//! again every few seconds while they stay failed and ours. The manager acts on a report
//! only while the worker's job still waits for it to register.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use buildman_core::BuildId;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use super::job::WORKER_SELECTOR;
use crate::WorkerFailure;

/// Container waiting reasons that will not resolve by themselves.
const STUCK_REASONS: [&str; 3] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
];

/// How often a failure is reported again while its worker is still ours: the manager
/// acts on a report only once it has recorded the worker, which may be just after the
/// cluster showed the failure; a report it no longer needs is ignored.
const RESEND: Duration = Duration::from_secs(2);

/// What the watch knows: the workers this executor started and has not stopped (Job name →
/// build), and the failures the cluster shows (Job name → reason, when last reported).
#[derive(Clone, Default)]
pub(super) struct Started(Arc<Mutex<Known>>);

#[derive(Default)]
struct Known {
    ours: HashMap<String, BuildId>,
    /// (Job name, `pod` or `job`) → reason and when last reported: a pod's and its Job's
    /// news are kept apart, so one's being fine does not hide the other's failure.
    failing: HashMap<(String, &'static str), (String, Option<Instant>)>,
}

impl Started {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn insert(&self, job: &str, build: BuildId) {
        self.known().ours.insert(job.to_string(), build);
    }

    pub(super) fn remove(&self, job: &str) {
        let mut known = self.known();
        known.ours.remove(job);
        known.failing.retain(|(name, _), _| name != job);
    }

    /// The cluster shows `job` failing (or, with `None`, fine or gone).
    fn saw(&self, job: String, source: &'static str, reason: Option<String>) {
        let mut known = self.known();
        let key = (job, source);
        match reason {
            Some(reason) => {
                let entry = known.failing.entry(key).or_insert((String::new(), None));
                if entry.0 != reason {
                    *entry = (reason, None);
                }
            }
            None => {
                known.failing.remove(&key);
            }
        }
    }

    /// The failures of our workers not reported within [`RESEND`], marked reported now.
    fn due(&self, now: Instant) -> Vec<WorkerFailure> {
        let mut known = self.known();
        let Known { ours, failing } = &mut *known;
        let mut due = Vec::new();
        for ((job, _), (reason, sent)) in failing.iter_mut() {
            let Some(build) = ours.get(job) else { continue };
            if sent.is_none_or(|at| now.duration_since(at) >= RESEND) {
                *sent = Some(now);
                due.push(WorkerFailure {
                    execution_id: job.clone(),
                    build_id: *build,
                    reason: reason.clone(),
                });
            }
        }
        due
    }
}

/// Why a pod will not run its worker, if it will not.
pub fn pod_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unschedulable = (status.conditions.iter().flatten()).find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unschedulable {
        return Some(format!(
            "pod unschedulable: {}",
            condition.message.as_deref().unwrap_or("no reason given")
        ));
    }
    let statuses = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses);
    statuses.flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        STUCK_REASONS.contains(&reason).then(|| {
            let message = waiting.message.as_deref().unwrap_or("no message");
            format!("container {} cannot start: {reason}: {message}", c.name)
        })
    })
}

/// Why a Job failed, if it did.
pub fn job_failure(job: &Job) -> Option<String> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let failed = conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    Some(format!(
        "job failed: {}: {}",
        failed.reason.as_deref().unwrap_or("no reason given"),
        failed.message.as_deref().unwrap_or("no message")
    ))
}

/// The Job a pod belongs to.
fn job_of(pod: &Pod) -> Option<&str> {
    let labels = pod.metadata.labels.as_ref();
    let label =
        labels.and_then(|l| (l.get("batch.kubernetes.io/job-name")).or_else(|| l.get("job-name")));
    label.map(String::as_str).or_else(|| {
        let owners = pod.metadata.owner_references.iter().flatten();
        owners
            .filter(|o| o.kind == "Job")
            .map(|o| o.name.as_str())
            .next()
    })
}

/// What a watch event says: (Job name, `pod` or `job`, its failure or `None`); a deleted
/// object counts as fine.
type News = (String, &'static str, Option<String>);

fn pod_event(event: watcher::Event<Pod>) -> Option<News> {
    match event {
        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
            Some((job_of(&p)?.to_string(), "pod", pod_failure(&p)))
        }
        watcher::Event::Delete(p) => Some((job_of(&p)?.to_string(), "pod", None)),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

fn job_event(event: watcher::Event<Job>) -> Option<News> {
    match event {
        watcher::Event::Apply(j) | watcher::Event::InitApply(j) => {
            Some((j.metadata.name.clone()?, "job", job_failure(&j)))
        }
        watcher::Event::Delete(j) => Some((j.metadata.name?, "job", None)),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Watches the executor's pods and Jobs until `report` is closed; reports the failures of
/// the workers in `started`.
pub(super) async fn watch(
    client: kube::Client,
    namespace: String,
    started: Started,
    report: mpsc::Sender<WorkerFailure>,
) {
    let config = watcher::Config::default().labels(WORKER_SELECTOR);
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), &namespace),
        config.clone(),
    )
    .default_backoff()
    .map(|e| e.map(pod_event));
    let jobs = watcher(Api::<Job>::namespaced(client, &namespace), config)
        .default_backoff()
        .map(|e| e.map(job_event));
    let mut events = std::pin::pin!(futures::stream::select(pods, jobs));
    let mut ticks = tokio::time::interval(RESEND / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = None;
    loop {
        tokio::select! {
            () = report.closed() => return,
            _ = ticks.tick() => {}
            event = events.next() => match event {
                None => return,
                Some(Ok(Some((job, source, reason)))) => {
                    last_error = None;
                    started.saw(job, source, reason);
                }
                Some(Ok(None)) => last_error = None,
                Some(Err(e)) => {
                    // The watcher retries with a back-off; say so once per kind of error.
                    let text = buildman_core::error_chain(&e);
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(namespace = %namespace, error = %text, "watching worker pods and Jobs failed; retrying");
                        last_error = Some(text);
                    }
                }
            },
        }
        for failure in started.due(Instant::now()) {
            tracing::warn!(build_id = %failure.build_id, job = %failure.execution_id, reason = %failure.reason, "worker failed in the cluster");
            if report.try_send(failure).is_err() {
                tracing::debug!("no room to report a worker failure; its deadline will tell");
            }
        }
    }
}
