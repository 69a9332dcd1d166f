//! A fake Kubernetes API server for the Kubernetes executors' tests (no real cluster runs
//! on these machines): the calls the executor makes — create a Job with generateName, get,
//! list and watch Jobs and pods by labelSelector, delete a Job, delete a collection of
//! pods — with the API's status codes, `Status` bodies and object shapes (k8s-openapi's
//! types), over http or https, checking the bearer token or client certificate it was
//! told to expect.
//!
//! It plays the Job controller too: each Job gets one pod (labels of the template plus
//! `job-name`), and a test-provided [`Kubelet`] decides what becomes of it: stay pending,
//! take a status (Unschedulable, ImagePullBackOff), or run as a local process whose exit
//! completes or fails the Job. Tests can also insert Jobs (as a crashed manager leaves
//! them), make the next requests fail with a status, or stop answering.

mod server;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use k8s_openapi;
pub use server::Peer;
use store::Store;
pub use store::{ago, now};

/// Which credentials requests must carry; others are answered 401 Unauthorized.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Anyone (plain http, as Quay's executor talks without credentials).
    Anyone,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// A client certificate signed by the CA given in [`TlsFiles::client_ca`].
    ClientCertificate,
}

/// The server's certificate and key (PEM files) and, for client certificates, the CA
/// that signs them.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What becomes of a pod the fake Job controller created.
pub enum PodOutcome {
    /// Stays Pending with no status details.
    Pending,
    /// Takes this status (e.g. unschedulable, or a container waiting in ImagePullBackOff).
    Status(Box<PodStatus>),
    /// Runs as this local process (put in a process group of its own): Running while it
    /// runs, then Succeeded (the Job Complete) or Failed (the Job Failed); deleting the pod
    /// kills its group.
    Run(tokio::process::Child),
}

/// Decides each new pod's fate (the fake kubelet).
pub type Kubelet = Arc<dyn Fn(&Pod) -> PodOutcome + Send + Sync>;

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The Authorization header as sent.
    pub authorization: Option<String>,
    /// Whether the connection presented a client certificate the server accepted.
    pub client_certificate: bool,
}

/// A running fake API server; stops when dropped.
pub struct FakeKube {
    /// The address, `127.0.0.1:PORT` (K8S_API_SERVER).
    pub addr: SocketAddr,
    pub(crate) shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) changed: tokio::sync::broadcast::Sender<u64>,
    pub(crate) auth: Auth,
    pub(crate) kubelet: Mutex<Kubelet>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.store().kill_all();
    }
}

impl Shared {
    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl FakeKube {
    /// Starts a server on 127.0.0.1 (https when `tls` is given) expecting `auth`.
    pub async fn start(auth: Auth, tls: Option<TlsFiles>) -> FakeKube {
        crate::tls_provider();
        let (changed, _) = tokio::sync::broadcast::channel(1024);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed,
            auth,
            kubelet: Mutex::new(Arc::new(|_: &Pod| PodOutcome::Pending)),
        });
        let (addr, task) = server::serve(shared.clone(), tls).await;
        FakeKube { addr, shared, task }
    }

    /// Sets what becomes of pods created from now on.
    pub fn set_kubelet(&self, kubelet: Kubelet) {
        *self
            .shared
            .kubelet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = kubelet;
    }

    /// The Jobs that exist now.
    pub fn jobs(&self) -> Vec<Job> {
        self.shared.store().jobs.values().cloned().collect()
    }

    /// The pods that exist now.
    pub fn pods(&self) -> Vec<Pod> {
        self.shared.store().pods.values().cloned().collect()
    }

    /// Adds a Job as if someone had created it (keeps its metadata, fills in what the API
    /// would); no pod is made for it.
    pub fn insert_job(&self, job: Job) -> String {
        let mut store = self.shared.store();
        let name = store.put_job(job);
        drop(store);
        let _ = self.shared.changed.send(0);
        name
    }

    /// Gives the pods of Job `job` this status (as the scheduler or kubelet would).
    pub fn set_pod_status(&self, job: &str, status: PodStatus) {
        self.shared.store().set_pod_status(job, status);
        let _ = self.shared.changed.send(0);
    }

    /// Finishes Job `job`: Complete, or Failed with (reason, message).
    pub fn finish_job(&self, job: &str, failed: Option<(&str, &str)>) {
        self.shared.store().finish_job(job, failed);
        let _ = self.shared.changed.send(0);
    }

    /// Answers the next `times` requests with method `method` (`POST`, `GET`, `DELETE`)
    /// with `code` and a `Status` body of `reason` and `message`.
    pub fn fail_next(&self, method: &str, times: usize, code: u16, reason: &str, message: &str) {
        self.shared.store().failures.push(store::Injected {
            method: method.to_string(),
            times,
            code,
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }

    /// Stops answering (requests hang) until called with false.
    pub fn hang(&self, hang: bool) {
        self.shared.store().hang = hang;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.store().seen.clone()
    }

    /// How many DELETE requests named Job `name`.
    pub fn job_deletes(&self, name: &str) -> usize {
        let suffix = format!("/jobs/{name}");
        let seen = self.requests();
        (seen.iter())
            .filter(|r| r.method == "DELETE" && r.path.ends_with(&suffix))
            .count()
    }
}

/// A worker Job in `namespace` as a crashed manager left it: the four worker labels, for
/// `build`, created `age` ago; named `<build>-left`.
pub fn abandoned_job(namespace: &str, build: &str, age: std::time::Duration) -> Job {
    let labels = [
        ("build", build),
        ("time", "2026-01-01-00"),
        ("manager", "crashed"),
        ("quay-sha", "x"),
    ];
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{build}-left")),
            namespace: Some(namespace.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            creation_timestamp: Some(ago(age)),
            ..ObjectMeta::default()
        },
        ..Job::default()
    }
}

/// The environment of a pod's first container, as a process would get it.
pub fn container_env(pod: &Pod) -> Vec<(String, String)> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter()).take(1);
    let vars = containers.flat_map(|c| c.env.iter().flatten());
    vars.map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
        .collect()
}

/// A pod the scheduler cannot place (as a full cluster shows it).
pub fn unschedulable() -> PodStatus {
    PodStatus {
        phase: Some("Pending".into()),
        conditions: Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available: 3 Insufficient memory.".into()),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    }
}

/// A pod whose container cannot pull its image.
pub fn image_pull_back_off() -> PodStatus {
    PodStatus {
        phase: Some("Pending".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "builder".into(),
            image: "quay.io/projectquay/quay-builder:nope".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some(
                        "Back-off pulling image \"quay.io/projectquay/quay-builder:nope\"".into(),
                    ),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    }
}
