//! The fake API server's objects, their resource versions and the event log watches read.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::Seen;

/// A request failure a test asked for.
pub(crate) struct Injected {
    pub(crate) method: String,
    pub(crate) times: usize,
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) message: String,
}

/// One change, as a watch sends it.
pub(crate) struct Event {
    pub(crate) version: u64,
    pub(crate) kind: &'static str,
    pub(crate) kind_of_change: &'static str,
    pub(crate) object: Value,
    pub(crate) labels: BTreeMap<String, String>,
}

#[derive(Default)]
pub(crate) struct Store {
    version: u64,
    pub(crate) jobs: BTreeMap<String, Job>,
    pub(crate) pods: BTreeMap<String, Pod>,
    pub(crate) events: Vec<Event>,
    /// Pod name → what kills its process group.
    pub(crate) running: HashMap<String, tokio::sync::oneshot::Sender<()>>,
    pub(crate) seen: Vec<Seen>,
    pub(crate) failures: Vec<Injected>,
    pub(crate) hang: bool,
}

/// The present as an API timestamp.
pub fn now() -> Time {
    ago(std::time::Duration::ZERO)
}

/// The time `age` ago as an API timestamp (whole seconds, as the API keeps it).
pub fn ago(age: std::time::Duration) -> Time {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let seconds = now.unwrap_or_default().saturating_sub(age).as_secs();
    let seconds = i64::try_from(seconds).unwrap_or_default();
    Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Five characters as the API appends to a generateName.
fn suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..5].to_string()
}

impl Store {
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    fn bump(&mut self, meta: &mut ObjectMeta) -> u64 {
        self.version += 1;
        meta.resource_version = Some(self.version.to_string());
        self.version
    }

    fn log(&mut self, kind: &'static str, change: &'static str, meta: &ObjectMeta, object: Value) {
        self.events.push(Event {
            version: self.version,
            kind,
            kind_of_change: change,
            object,
            labels: meta.labels.clone().unwrap_or_default(),
        });
    }

    fn log_job(&mut self, change: &'static str, name: &str) {
        if let Some(job) = self.jobs.get(name).cloned() {
            let value = serde_json::to_value(&job).unwrap_or_default();
            self.log("Job", change, &job.metadata, value);
        }
    }

    fn log_pod(&mut self, change: &'static str, name: &str) {
        if let Some(pod) = self.pods.get(name).cloned() {
            let value = serde_json::to_value(&pod).unwrap_or_default();
            self.log("Pod", change, &pod.metadata, value);
        }
    }

    /// Stores a new Job: names it from generateName, fills uid, time and version.
    pub(crate) fn put_job(&mut self, mut job: Job) -> String {
        let meta = &mut job.metadata;
        let name = match (&meta.name, &meta.generate_name) {
            (Some(name), _) => name.clone(),
            (None, Some(prefix)) => format!("{prefix}{}", suffix()),
            (None, None) => format!("job-{}", suffix()),
        };
        meta.name = Some(name.clone());
        meta.uid = Some(uuid::Uuid::new_v4().to_string());
        if meta.creation_timestamp.is_none() {
            meta.creation_timestamp = Some(now());
        }
        let mut meta = std::mem::take(&mut job.metadata);
        self.bump(&mut meta);
        job.metadata = meta;
        self.jobs.insert(name.clone(), job);
        self.log_job("ADDED", &name);
        name
    }

    /// The Job controller's part: one pod for Job `name`.
    pub(crate) fn make_pod(&mut self, name: &str) -> Option<Pod> {
        let job = self.jobs.get(name)?.clone();
        let template = job.spec.as_ref()?.template.clone();
        let mut labels = (template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert("job-name".into(), name.to_string());
        labels.insert("batch.kubernetes.io/job-name".into(), name.to_string());
        let mut meta = ObjectMeta {
            name: Some(format!("{name}-{}", suffix())),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            uid: Some(uuid::Uuid::new_v4().to_string()),
            creation_timestamp: Some(now()),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: name.to_string(),
                uid: job.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        };
        self.bump(&mut meta);
        let pod = Pod {
            metadata: meta,
            spec: template.spec,
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..PodStatus::default()
            }),
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        self.pods.insert(pod_name.clone(), pod.clone());
        self.log_pod("ADDED", &pod_name);
        Some(pod)
    }

    fn pods_of(&self, job: &str) -> Vec<String> {
        let owned = |p: &&Pod| {
            let labels = p.metadata.labels.as_ref();
            labels.and_then(|l| l.get("job-name")).map(String::as_str) == Some(job)
        };
        (self.pods.values().filter(owned))
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    }

    pub(crate) fn set_pod_status(&mut self, job: &str, status: PodStatus) {
        for name in self.pods_of(job) {
            self.update_pod(&name, status.clone());
        }
    }

    pub(crate) fn update_pod(&mut self, name: &str, status: PodStatus) {
        let Some(mut pod) = self.pods.remove(name) else {
            return;
        };
        pod.status = Some(status);
        self.bump(&mut pod.metadata);
        self.pods.insert(name.to_string(), pod);
        self.log_pod("MODIFIED", name);
    }

    /// Marks Job `name` finished: Complete, or Failed with (reason, message).
    pub(crate) fn finish_job(&mut self, name: &str, failed: Option<(&str, &str)>) {
        let Some(mut job) = self.jobs.remove(name) else {
            return;
        };
        let (kind, reason, message) = match failed {
            None => ("Complete", None, None),
            Some((reason, message)) => ("Failed", Some(reason.into()), Some(message.into())),
        };
        job.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: kind.into(),
                status: "True".into(),
                reason,
                message,
                ..JobCondition::default()
            }]),
            succeeded: failed.is_none().then_some(1),
            failed: failed.is_some().then_some(1),
            ..JobStatus::default()
        });
        self.bump(&mut job.metadata);
        self.jobs.insert(name.to_string(), job);
        self.log_job("MODIFIED", name);
    }

    /// Deletes Job `name` and (as the garbage collector would) its pods.
    pub(crate) fn delete_job(&mut self, name: &str) -> Option<Job> {
        let mut job = self.jobs.remove(name)?;
        self.bump(&mut job.metadata);
        let value = serde_json::to_value(&job).unwrap_or_default();
        self.log("Job", "DELETED", &job.metadata, value);
        for pod in self.pods_of(name) {
            self.delete_pod(&pod);
        }
        Some(job)
    }

    pub(crate) fn delete_pod(&mut self, name: &str) -> Option<Pod> {
        if let Some(kill) = self.running.remove(name) {
            let _ = kill.send(());
        }
        let mut pod = self.pods.remove(name)?;
        self.bump(&mut pod.metadata);
        let value = serde_json::to_value(&pod).unwrap_or_default();
        self.log("Pod", "DELETED", &pod.metadata, value);
        Some(pod)
    }

    pub(crate) fn kill_all(&mut self) {
        for (_, kill) in self.running.drain() {
            let _ = kill.send(());
        }
    }
}

/// Whether `labels` satisfy a label selector (`a`, `!a`, `a=b`, `a==b`, `a!=b`, joined by
/// commas).
pub(crate) fn matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).map(String::as_str) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                let v = v.trim_start_matches('=');
                labels.get(k.trim()).map(String::as_str) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                !labels.contains_key(k)
            } else {
                labels.contains_key(term)
            }
        })
}
