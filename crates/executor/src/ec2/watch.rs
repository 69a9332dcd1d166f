//! Fast failure: the instances this executor started are watched, all in one
//! DescribeInstances call per interval, and one that stops or terminates (no capacity after
//! all, a spot interruption, a machine that failed to boot) is reported at once with EC2's
//! reason, so a job waiting for its worker to register falls back to the next executor
//! instead of waiting out SETUP_TIME. An instance is watched from its start until it is
//! stopped or seen ending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Instance;
use buildman_core::BuildId;
use tokio::sync::mpsc;

use super::{describe, filter};
use crate::WorkerFailure;

/// The instances being watched: instance id → build.
#[derive(Clone, Default)]
pub struct Watched(Arc<Mutex<HashMap<String, BuildId>>>);

/// The states of an instance that will never run a worker.
const ENDED: [&str; 4] = ["shutting-down", "terminated", "stopping", "stopped"];
/// How many instance ids one call names (EC2's limit on a filter's values).
const IDS_PER_CALL: usize = 200;

impl Watched {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, BuildId>> {
        // Every critical section is one map operation: a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches a started instance.
    pub fn add(&self, instance_id: &str, build_id: BuildId) {
        self.map().insert(instance_id.to_owned(), build_id);
    }

    /// Stops watching an instance; its build, when it was watched.
    pub fn remove(&self, instance_id: &str) -> Option<BuildId> {
        self.map().remove(instance_id)
    }

    /// Watches in a task of its own every `every` until the executor is dropped or the
    /// receiver of `report` is.
    pub fn spawn(&self, client: Client, report: mpsc::Sender<WorkerFailure>, every: Duration) {
        let watched = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(map) = Weak::upgrade(&watched) else {
                    return;
                };
                if report.is_closed() {
                    return;
                }
                Watched(map).check(&client, &report).await;
            }
        });
    }

    /// One look at every watched instance.
    async fn check(&self, client: &Client, report: &mpsc::Sender<WorkerFailure>) {
        let ids: Vec<String> = self.map().keys().cloned().collect();
        for ids in ids.chunks(IDS_PER_CALL) {
            let filters = vec![
                filter("instance-id", ids.iter().map(String::as_str)),
                filter("instance-state-name", ENDED),
            ];
            // A failed look is logged (with its AWS code) and tried again next time.
            let Ok(ended) = describe(client, filters).await else {
                continue;
            };
            for instance in ended {
                let Some(id) = instance.instance_id() else {
                    continue;
                };
                let Some(build_id) = self.remove(id) else {
                    continue;
                };
                let failure = WorkerFailure {
                    execution_id: id.to_owned(),
                    build_id,
                    reason: reason(&instance),
                };
                tracing::warn!(build_id = %build_id, execution_id = id, "{}", failure.reason);
                if report.try_send(failure).is_err() {
                    tracing::debug!(build_id = %build_id, "no room to report an ended instance; its deadline will tell");
                }
            }
        }
    }
}

/// `instance i-… is terminated: Server.InsufficientInstanceCapacity: …`, from the state
/// and EC2's reason for it.
fn reason(instance: &Instance) -> String {
    let id = instance.instance_id().unwrap_or_default();
    let state = (instance.state().and_then(|s| s.name())).map_or("ending", |s| s.as_str());
    let why = (instance.state_reason().and_then(|r| r.message()))
        .or(instance.state_transition_reason())
        .filter(|why| !why.is_empty());
    match why {
        Some(why) => format!("EC2 instance {id} is {state}: {why}"),
        None => format!("EC2 instance {id} is {state}"),
    }
}
