//! The executors of BUILD_MANAGER: EXECUTORS (a list), or Quay's older EXECUTOR + EXECUTOR_CONFIG
//! pair. This module reads the keys every kind shares; each kind's own keys live in its file.

use std::fmt;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};
use sha2::{Digest, Sha256};

use super::diagnostics::{Report, Section, check_unique, index, join, to_list, to_string};
use super::manager::Lifecycle;
use super::redact::debug_redacting;

mod bench;
mod ec2;
mod kubernetes;
mod popen;

pub use bench::BenchConfig;
pub use ec2::Ec2Config;
pub use kubernetes::{KubernetesConfig, KubernetesDistribution};
pub use popen::PopenConfig;

/// The EXECUTOR kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    /// `popen`: a local worker process.
    Popen,
    /// `kubernetes`: a Job booting a VM that runs the worker.
    Kubernetes,
    /// `kubernetesPodman`: a Job running the worker container directly.
    KubernetesPodman,
    /// `ec2`: an EC2 instance running the worker.
    Ec2,
    /// `bench`: no worker at all; the registration token goes to a load generator
    /// (buildman's own, benchmarks only; `serve` refuses it without `--allow-bench-executor`).
    Bench,
}

impl ExecutorKind {
    /// Every kind, in the order of their config names.
    pub const ALL: [ExecutorKind; 5] = [
        ExecutorKind::Popen,
        ExecutorKind::Kubernetes,
        ExecutorKind::KubernetesPodman,
        ExecutorKind::Ec2,
        ExecutorKind::Bench,
    ];

    /// The kind's name in the EXECUTOR key.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Popen => "popen",
            ExecutorKind::Kubernetes => "kubernetes",
            ExecutorKind::KubernetesPodman => "kubernetesPodman",
            ExecutorKind::Ec2 => "ec2",
            ExecutorKind::Bench => "bench",
        }
    }

    /// The kind named `name` (exact, as in Quay).
    pub fn from_name(name: &str) -> Option<ExecutorKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One executor: the keys every kind shares plus the kind's own.
#[derive(Clone, PartialEq)]
pub struct ExecutorConfig {
    /// EXECUTOR.
    pub kind: ExecutorKind,
    /// NAME: unique among executors (default: the kind's name).
    pub name: String,
    /// SETUP_TIME: how long a started worker has to register (default 500 s).
    pub setup_time: Duration,
    /// MINIMUM_RETRY_THRESHOLD: used only for builds with at least this many retries left.
    pub minimum_retry_threshold: u32,
    /// NAMESPACE_WHITELIST: namespaces always allowed on this executor.
    pub namespace_whitelist: Option<Vec<String>>,
    /// STAGED_ROLLOUT: share (0..=1) of namespaces allowed, by hash.
    pub staged_rollout: Option<f64>,
    /// DEBUG: keep workers after the build.
    pub debug: bool,
    /// MAX_LIFETIME_S: a worker machine powers off after this many seconds (default 10800).
    pub max_lifetime_s: u64,
    /// CONTAINER_RUNTIME: `docker`, `podman` or `buildah`.
    pub container_runtime: Option<String>,
    /// HTTP_PROXY for the worker.
    pub http_proxy: Option<String>,
    /// HTTPS_PROXY for the worker.
    pub https_proxy: Option<String>,
    /// NO_PROXY for the worker.
    pub no_proxy: Option<String>,
    /// CA_CERT: PEM text the worker trusts in addition.
    pub ca_cert: Option<String>,
    /// WORKER_IMAGE: the worker's container image.
    pub worker_image: Option<String>,
    /// WORKER_TAG: the worker image's tag.
    pub worker_tag: Option<String>,
    /// QUAY_USERNAME: pulls the worker image.
    pub quay_username: Option<String>,
    /// QUAY_PASSWORD: pulls the worker image (redacted in Debug).
    pub quay_password: Option<String>,
    /// SSH_AUTHORIZED_KEYS of worker machines.
    pub ssh_authorized_keys: Vec<String>,
    /// VOLUME_SIZE of the worker's disk, e.g. `8G`.
    pub volume_size: Option<String>,
    /// CIRCUIT_BREAKER_THRESHOLD: after this many failed worker starts in a row the
    /// executor is skipped for a cool-down (default 3; buildman's key).
    pub breaker_threshold: u32,
    /// CIRCUIT_BREAKER_COOLDOWN: how long an executor whose breaker opened is skipped, in
    /// seconds (default 60; buildman's key).
    pub breaker_cooldown: Duration,
    /// The kind's own keys.
    pub specific: ExecutorSpecific,
}

debug_redacting!(ExecutorConfig {
    kind, name, setup_time, minimum_retry_threshold, namespace_whitelist, staged_rollout, debug,
    max_lifetime_s, container_runtime, http_proxy, https_proxy, no_proxy, ca_cert, worker_image,
    worker_tag, quay_username, ssh_authorized_keys, volume_size, breaker_threshold,
    breaker_cooldown, specific,
} secret { quay_password });

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig::with_defaults(ExecutorKind::Popen)
    }
}

impl ExecutorConfig {
    /// An executor of `kind` with every key at its default (an ec2 one has an empty EC2_REGION).
    pub fn with_defaults(kind: ExecutorKind) -> ExecutorConfig {
        ExecutorConfig {
            kind,
            name: kind.as_str().to_owned(),
            setup_time: Duration::from_secs(500),
            minimum_retry_threshold: 0,
            namespace_whitelist: None,
            staged_rollout: None,
            debug: false,
            max_lifetime_s: 10800,
            container_runtime: None,
            http_proxy: None,
            https_proxy: None,
            no_proxy: None,
            ca_cert: None,
            worker_image: None,
            worker_tag: None,
            quay_username: None,
            quay_password: None,
            ssh_authorized_keys: Vec::new(),
            volume_size: None,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(60),
            specific: match kind {
                ExecutorKind::Popen => ExecutorSpecific::Popen(PopenConfig::default()),
                ExecutorKind::Kubernetes | ExecutorKind::KubernetesPodman => {
                    ExecutorSpecific::Kubernetes(KubernetesConfig::default())
                }
                ExecutorKind::Ec2 => ExecutorSpecific::Ec2(Ec2Config::default()),
                ExecutorKind::Bench => ExecutorSpecific::Bench(BenchConfig::default()),
            },
        }
    }

    /// Quay's rule: a whitelisted namespace is allowed; otherwise, with STAGED_ROLLOUT set, a
    /// namespace is allowed when the last byte of sha256(namespace) < 256 x STAGED_ROLLOUT;
    /// with neither key set every namespace is allowed.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        if let Some(list) = &self.namespace_whitelist
            && list.iter().any(|allowed| allowed == namespace)
        {
            return true;
        }
        match self.staged_rollout {
            Some(share) => {
                let digest = Sha256::digest(namespace.as_bytes());
                let bucket = digest.last().copied().unwrap_or_default();
                f64::from(bucket) < 256.0 * share
            }
            None => self.namespace_whitelist.is_none(),
        }
    }
}

/// The keys only one kind of executor reads.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once per configured executor; unboxed keeps matching simple"
)]
pub enum ExecutorSpecific {
    /// popen.
    Popen(PopenConfig),
    /// kubernetes and kubernetesPodman.
    Kubernetes(KubernetesConfig),
    /// ec2.
    Ec2(Ec2Config),
    /// bench.
    Bench(BenchConfig),
}

/// Executors found so far: (label for duplicate messages, path of the entry, executor).
type Found = Vec<(String, String, ExecutorConfig)>;

pub(super) fn parse_executors(s: &mut Section, lifecycle: Lifecycle) -> Vec<ExecutorConfig> {
    let r = s.r;
    let list = s.raw("EXECUTORS");
    let single = s.raw("EXECUTOR");
    let legacy = s.raw("EXECUTOR_CONFIG");
    let (where_path, found) = match (list, single) {
        (Some(_), Some(_)) => {
            r.error(
                &s.child("EXECUTOR"),
                "cannot be combined with EXECUTORS; list every executor under EXECUTORS",
            );
            return Vec::new();
        }
        (None, None) => {
            if legacy.is_some() {
                r.error(
                    &s.child("EXECUTOR_CONFIG"),
                    "needs EXECUTOR next to it to name the executor kind",
                );
            }
            return vec![ExecutorConfig::default()];
        }
        (Some(list), None) => {
            let where_path = s.child("EXECUTORS");
            if legacy.is_some() {
                r.error(
                    &s.child("EXECUTOR_CONFIG"),
                    "cannot be combined with EXECUTORS; move its keys into an EXECUTORS entry",
                );
            }
            let Some(found) = parse_executor_list(r, &where_path, list) else {
                return Vec::new();
            };
            (where_path, found)
        }
        (None, Some(kind)) => (s.child("EXECUTOR"), parse_single_executor(s, kind, legacy)),
    };
    check_unique(
        r,
        "executor name",
        (found.iter()).map(|(label, path, e)| (join(path, "NAME"), label.clone(), e.name.as_str())),
    );
    if found.is_empty() && lifecycle == Lifecycle::Ephemeral {
        r.error(&where_path, "no usable executor");
    }
    found.into_iter().map(|(_, _, e)| e).collect()
}

/// EXECUTORS: `None` when it is not a list.
fn parse_executor_list(r: &Report, where_path: &str, list: &Value) -> Option<Found> {
    let entries = to_list(r, where_path, list)?;
    let mut found = Found::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(mut e) = Section::of(r, index(where_path, i), entry) else {
            continue;
        };
        let kind = e.required("EXECUTOR", parse_kind);
        if let Some(Some(kind)) = kind {
            let executor = parse_executor(kind, &mut e);
            e.finish();
            let label = index("EXECUTORS", i);
            found.push((label, index(where_path, i), executor));
        }
    }
    Some(found)
}

/// EXECUTOR with its keys under EXECUTOR_CONFIG (Quay's older form).
fn parse_single_executor(s: &Section, kind: &Value, legacy: Option<&Value>) -> Found {
    let r = s.r;
    let mut found = Found::new();
    if let Some(Some(kind)) = parse_kind(r, &s.child("EXECUTOR"), kind) {
        let empty = Mapping::new();
        let path = s.child("EXECUTOR_CONFIG");
        let section = match legacy {
            None => Some(Section::new(r, path.clone(), &empty)),
            Some(v) => Section::of(r, path.clone(), v),
        };
        if let Some(mut e) = section {
            let executor = parse_executor(kind, &mut e);
            e.finish();
            found.push(("EXECUTOR_CONFIG".to_owned(), path, executor));
        }
    }
    found
}

/// The EXECUTOR kind: `Some(None)` for an unknown kind (a warning: Quay skips it).
fn parse_kind(r: &Report, path: &str, value: &Value) -> Option<Option<ExecutorKind>> {
    let name = to_string(r, path, value)?;
    let kind = ExecutorKind::from_name(&name);
    if kind.is_none() {
        r.warn(path, format!("unknown executor kind {name:?}, skipped"));
    }
    Some(kind)
}

fn parse_executor(kind: ExecutorKind, s: &mut Section) -> ExecutorConfig {
    let d = ExecutorConfig::with_defaults(kind);
    ExecutorConfig {
        kind,
        name: s.string("NAME").filter(|n| !n.is_empty()).unwrap_or(d.name),
        setup_time: s.duration("SETUP_TIME").unwrap_or(d.setup_time),
        minimum_retry_threshold: (s.u32("MINIMUM_RETRY_THRESHOLD"))
            .unwrap_or(d.minimum_retry_threshold),
        namespace_whitelist: s.strings("NAMESPACE_WHITELIST"),
        staged_rollout: s.fraction("STAGED_ROLLOUT"),
        debug: s.bool("DEBUG").unwrap_or(d.debug),
        max_lifetime_s: s.u64("MAX_LIFETIME_S").unwrap_or(d.max_lifetime_s),
        container_runtime: s.one_of("CONTAINER_RUNTIME", &["docker", "podman", "buildah"]),
        http_proxy: s.string("HTTP_PROXY"),
        https_proxy: s.string("HTTPS_PROXY"),
        no_proxy: s.string("NO_PROXY"),
        ca_cert: s.string("CA_CERT"),
        worker_image: s.string("WORKER_IMAGE"),
        worker_tag: s.string("WORKER_TAG"),
        quay_username: s.string("QUAY_USERNAME"),
        quay_password: s.string("QUAY_PASSWORD"),
        ssh_authorized_keys: s.strings("SSH_AUTHORIZED_KEYS").unwrap_or_default(),
        volume_size: s.string("VOLUME_SIZE"),
        breaker_threshold: (s.u32_at_least("CIRCUIT_BREAKER_THRESHOLD", 1))
            .unwrap_or(d.breaker_threshold),
        breaker_cooldown: s
            .duration("CIRCUIT_BREAKER_COOLDOWN")
            .unwrap_or(d.breaker_cooldown),
        specific: match d.specific {
            ExecutorSpecific::Popen(d) => ExecutorSpecific::Popen(popen::parse_popen(s, d)),
            ExecutorSpecific::Kubernetes(d) => {
                ExecutorSpecific::Kubernetes(kubernetes::parse_kubernetes(s, d))
            }
            ExecutorSpecific::Ec2(d) => ExecutorSpecific::Ec2(ec2::parse_ec2(s, d)),
            ExecutorSpecific::Bench(d) => ExecutorSpecific::Bench(bench::parse_bench(s, d)),
        },
    }
}

/// `needs` must be set whenever `key` is.
fn require_together(s: &Section, key: &str, set: bool, needs: &str, needed_set: bool) {
    if set && !needed_set {
        s.r.error(
            &s.path,
            format!("missing required key {needs} (needed with {key})"),
        );
    }
}
