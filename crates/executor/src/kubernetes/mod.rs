//! Quay's `kubernetes` and `kubernetesPodman` executors: a worker is a Job in
//! BUILDER_NAMESPACE, labelled `build`, `time`, `manager` and `quay-sha`.
//!
//! - [`client`]: where the API is and how we authenticate (Quay's K8S_API_* rules, a
//!   kubeconfig, the in-cluster configuration);
//! - [`job`]: the Job, from k8s-openapi's types;
//! - [`watch`]: the pods' and Jobs' failures, as they happen;
//! - this module: the executor (create, count, list, delete).
//!
//! Secrets (the bearer token, the registration token, USERDATA) never reach a log line or
//! an error: errors carry the API's `Status`, with the job's own secrets masked.

pub mod client;
pub mod job;
mod watch;

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use buildman_core::config::{ExecutorConfig, ExecutorKind, ExecutorSpecific, KubernetesConfig};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use tokio::sync::mpsc;

use crate::{
    Executor, ExecutorError, FAILURE_QUEUE, OwnedWorker, Result, StartRequest, WorkerFailure,
};

pub use watch::{job_failure, pod_failure};

/// Which of the two executors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `kubernetes`: a VM image boots the Ignition document in USERDATA.
    Vm,
    /// `kubernetesPodman`: the worker container runs directly.
    Podman,
}

/// What a Kubernetes executor is configured with.
#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    pub variant: Variant,
    /// The executor's common keys (DEBUG, proxies, WORKER_IMAGE, ...).
    pub executor: ExecutorConfig,
    /// Its Kubernetes keys.
    pub kubernetes: KubernetesConfig,
    /// The PEM certificates the worker trusts: CA_CERT (or its default), then the files
    /// of EXTRA_CA_CERTS, joined by newlines as Quay joins them.
    pub ca_bundle: String,
}

impl KubernetesSettings {
    /// Settings for a `kubernetes` or `kubernetesPodman` executor; `config_dir` is where
    /// relative EXTRA_CA_CERTS are read from, `default_ca` the CA_CERT when unset (the
    /// manager's own certificate, as Quay's is its `ssl.cert`).
    pub fn new(
        executor: &ExecutorConfig,
        config_dir: &Path,
        default_ca: Option<String>,
    ) -> Result<Self, String> {
        let variant = match executor.kind {
            ExecutorKind::Kubernetes => Variant::Vm,
            ExecutorKind::KubernetesPodman => Variant::Podman,
            other => return Err(format!("{other} is not a Kubernetes executor")),
        };
        let ExecutorSpecific::Kubernetes(kubernetes) = &executor.specific else {
            return Err(format!(
                "executor {:?} has no Kubernetes keys",
                executor.name
            ));
        };
        let mut certs: Vec<String> = executor
            .ca_cert
            .clone()
            .or(default_ca)
            .into_iter()
            .collect();
        for file in &kubernetes.extra_ca_certs {
            let path = config_dir.join(file);
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| format!("EXTRA_CA_CERTS: {}: {e}", path.display()))?;
            certs.push(pem);
        }
        Ok(KubernetesSettings {
            variant,
            executor: executor.clone(),
            kubernetes: kubernetes.clone(),
            ca_bundle: certs.join("\n"),
        })
    }
}

/// Runs workers as Kubernetes Jobs.
pub struct KubernetesExecutor {
    settings: KubernetesSettings,
    jobs: Api<Job>,
    pods: Api<Pod>,
    /// A client for the watch (requests go through `jobs` and `pods`).
    watch_client: kube::Client,
    started: watch::Started,
    failures: Mutex<Option<mpsc::Receiver<WorkerFailure>>>,
    report: mpsc::Sender<WorkerFailure>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for KubernetesExecutor {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.watcher).take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KubernetesExecutor {
    /// An executor over the API `settings` name; reads the kubeconfig or certificates it
    /// names now (a bad file is an error here), contacts nothing yet.
    pub async fn new(settings: KubernetesSettings) -> Result<Self, String> {
        let (config, source) = client::configure(&settings.kubernetes).await?;
        tracing::info!(
            executor = %settings.executor.name,
            api = %config.cluster_url,
            namespace = %settings.kubernetes.builder_namespace,
            authentication = ?source,
            "Kubernetes executor configured"
        );
        let client = client::client(config)?;
        let namespace = &settings.kubernetes.builder_namespace;
        let (report, failures) = mpsc::channel(FAILURE_QUEUE);
        Ok(KubernetesExecutor {
            jobs: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client.clone(), namespace),
            watch_client: client,
            settings,
            started: watch::Started::default(),
            failures: Mutex::new(Some(failures)),
            report,
            watcher: Mutex::new(None),
        })
    }

    /// The Job `start` would create for `request` now.
    pub fn job_for(&self, request: &StartRequest) -> Job {
        job::worker_job(&self.settings, request, &time_label())
    }

    /// Runs one API call with K8S_API_TIMEOUT; `what` names it in errors.
    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T> {
        match self.call_or_gone(what, call).await? {
            Some(value) => Ok(value),
            None => Err(ExecutorError::Failed(format!(
                "{what}: the Kubernetes API answered 404: NotFound"
            ))),
        }
    }

    /// Like [`Self::call`], `None` when the API answered 404 (the object is gone).
    async fn call_or_gone<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<Option<T>> {
        let limit = client::timeout(&self.settings.kubernetes);
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(None),
            Ok(Err(e)) => Err(api_error(what, &e)),
            Err(_) => Err(ExecutorError::Unreachable(format!(
                "{what}: the Kubernetes API did not answer within {}s (K8S_API_TIMEOUT)",
                limit.as_secs()
            ))),
        }
    }

    fn selector() -> ListParams {
        ListParams::default().labels(job::WORKER_SELECTOR)
    }
}

/// The `time` label: the hour the Job was created, local time (Quay's `%Y-%m-%d-%H`).
fn time_label() -> String {
    chrono::Local::now().format("%Y-%m-%d-%H").to_string()
}

/// An API error as an executor error: the API's answer (its `Status`), or why it could not
/// be reached.
fn api_error(what: &str, error: &kube::Error) -> ExecutorError {
    match error {
        kube::Error::Api(status) => {
            let mut text = format!("{what}: the Kubernetes API answered {}", status.code);
            for part in [&status.reason, &status.message] {
                if !part.is_empty() {
                    text.push_str(": ");
                    text.push_str(part);
                }
            }
            ExecutorError::Failed(text)
        }
        other => {
            let text = buildman_core::error_chain(other);
            let hint = if text.contains("certificate") || text.contains("Certificate") {
                " (check K8S_API_TLS_CA, or VERIFY_TLS: false for a test cluster)"
            } else {
                ""
            };
            ExecutorError::Unreachable(format!(
                "{what}: cannot reach the Kubernetes API: {text}{hint}"
            ))
        }
    }
}

/// `error` with every occurrence of the job's secrets replaced: an API may quote a refused
/// field's value.
fn masked(error: ExecutorError, secrets: &[&str]) -> ExecutorError {
    let mask = |mut text: String| {
        for secret in secrets.iter().filter(|s| s.len() >= 4) {
            text = text.replace(secret, "<redacted>");
        }
        text
    };
    match error {
        ExecutorError::Failed(t) => ExecutorError::Failed(mask(t)),
        ExecutorError::Unreachable(t) => ExecutorError::Unreachable(mask(t)),
    }
}

/// Whether a Job has finished: its first condition is Complete or Failed and True (Quay's
/// test, which a running count then leaves out).
pub fn finished(job: &Job) -> bool {
    let first = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref()?.first());
    first.is_some_and(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

#[async_trait]
impl Executor for KubernetesExecutor {
    fn kind(&self) -> &'static str {
        self.settings.executor.kind.as_str()
    }

    async fn start(&self, request: &StartRequest) -> Result<String> {
        let job = self.job_for(request);
        let what = format!("creating the Job for build {}", request.build_id);
        let password = self
            .settings
            .executor
            .quay_password
            .as_deref()
            .unwrap_or("");
        let created = (self
            .call(&what, self.jobs.create(&PostParams::default(), &job))
            .await)
            .map_err(|e| masked(e, &[&request.token, password]))?;
        let Some(name) = created.metadata.name else {
            return Err(ExecutorError::Failed(format!(
                "{what}: the Kubernetes API created a Job without a name"
            )));
        };
        self.started.insert(&name, request.build_id);
        tracing::info!(build_id = %request.build_id, job = %name, namespace = %self.settings.kubernetes.builder_namespace, "created worker Job");
        Ok(name)
    }

    /// Deletes the Job (its pods in the background) and its pods by `job-name`; with DEBUG
    /// the Job stays, as Quay keeps it.
    async fn stop(&self, execution_id: &str) -> Result<()> {
        self.started.remove(execution_id);
        if self.settings.executor.debug {
            tracing::info!(job = %execution_id, "DEBUG: the worker Job is kept");
            return Ok(());
        }
        let background = DeleteParams::background();
        let what = format!("deleting Job {execution_id}");
        let job = self.jobs.delete(execution_id, &background);
        self.call_or_gone(&what, job).await?;
        let pods = ListParams::default().labels(&format!("job-name={execution_id}"));
        let what = format!("deleting the pods of Job {execution_id}");
        let pods = self.pods.delete_collection(&background, &pods);
        self.call_or_gone(&what, pods).await?;
        Ok(())
    }

    async fn running(&self) -> Result<usize> {
        let list = self
            .call("listing worker Jobs", self.jobs.list(&Self::selector()))
            .await?;
        Ok(list.items.iter().filter(|j| !finished(j)).count())
    }

    /// Every worker Job in BUILDER_NAMESPACE, whichever manager created it.
    async fn owned(&self) -> Result<Vec<OwnedWorker>> {
        let list = self
            .call("listing worker Jobs", self.jobs.list(&Self::selector()))
            .await?;
        Ok(list.items.into_iter().filter_map(owned_worker).collect())
    }

    fn failures(&self) -> Option<mpsc::Receiver<WorkerFailure>> {
        let failures = lock(&self.failures).take()?;
        let task = tokio::spawn(watch::watch(
            self.watch_client.clone(),
            self.settings.kubernetes.builder_namespace.clone(),
            self.started.clone(),
            self.report.clone(),
        ));
        *lock(&self.watcher) = Some(task);
        Some(failures)
    }
}

fn owned_worker(job: Job) -> Option<OwnedWorker> {
    let name = job.metadata.name?;
    let build_id = (job.metadata.labels.as_ref())
        .and_then(|l| l.get("build"))
        .and_then(|b| b.parse().ok());
    let started_at =
        (job.metadata.creation_timestamp).map_or_else(SystemTime::now, |t| SystemTime::from(t.0));
    Some(OwnedWorker {
        execution_id: name,
        build_id,
        started_at,
    })
}
