//! Quay's `config.yaml`, as far as the build manager reads it, plus buildman's own keys.
//!
//! The YAML is parsed into a [`serde_yaml_ng::Value`] and walked by hand so that every problem
//! is reported at once, each prefixed with its path in the file
//! (`BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got "abc"`). Unknown keys
//! inside the build manager's sections are warnings; unknown top-level keys are silently
//! ignored, since Quay's file holds far more than the build keys.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};
use sha2::{Digest, Sha256};

/// Quay's metrics/controller port when BUILDMAN_CONTROLLER_PORT is unset.
const DEFAULT_CONTROLLER_PORT: u16 = 8686;
/// The TLS port in front of the gRPC server that workers dial when manager and registry share a host.
const WORKER_TLS_PORT: u16 = 55443;

/// The whole configuration the build manager runs with.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// FEATURE_BUILD_SUPPORT: whether builds run at all.
    pub feature_build_support: bool,
    /// SERVER_HOSTNAME: the registry host (default `localhost:8080`).
    pub server_hostname: String,
    /// BUILDMAN_HOSTNAME: the host (and port) workers dial, if it differs from the registry's.
    pub buildman_hostname: Option<String>,
    /// BUILD_MANAGER: lifecycle, orchestrator and executors.
    pub build_manager: BuildManagerConfig,
    /// BUILDMAN_DATA_DIR: where buildman keeps its local state.
    pub data_dir: Option<PathBuf>,
    /// BUILDMAN_HTTP_LISTEN: the REST API's listen address.
    pub http_listen: Option<SocketAddr>,
    /// BUILDMAN_GRPC_LISTEN: the worker gRPC server's listen address.
    pub grpc_listen: Option<SocketAddr>,
    /// BUILDMAN_PUBLIC_URL: http(s) base URL workers fetch uploaded build contexts from (as given).
    pub public_url: Option<String>,
    /// BUILDMAN_GRPC_TLS: certificate and key of the gRPC server.
    pub grpc_tls: Option<TlsConfig>,
    /// BUILDMAN_DATABASE_URL: `sqlite:...`, `postgres://...` or `postgresql://...` (redacted in Debug).
    pub database_url: Option<String>,
    /// BUILDMAN_JWT_SIGNING_KEY: the key build tokens are signed with.
    pub signing_key: Option<SigningKeyConfig>,
    /// BUILDMAN_JWT_TRUSTED_KEYS: further public keys accepted when verifying tokens (rotation).
    pub trusted_keys: Vec<TrustedKeyConfig>,
    /// BUILDMAN_API_TOKENS: bearer tokens accepted by the REST API (redacted in Debug).
    pub api_tokens: Vec<String>,
    /// BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: cap on queued builds per namespace (>= 1).
    pub max_queued_builds_per_namespace: Option<u32>,
    /// BUILDMAN_REGISTRY: registry host workers push to; `None` means write OCI layouts locally.
    pub registry: Option<String>,
    /// BUILDMAN_REGISTRY_PUSH_TOKEN: the password workers log in to the registry with as
    /// user `$token`, Quay's scheme (redacted in Debug).
    pub registry_push_token: Option<String>,
    /// BUILDMAN_REGISTRY_PULL_TOKEN: likewise for pulling the cache image; defaults to the
    /// push token (redacted in Debug).
    pub registry_pull_token: Option<String>,
    /// BUILDMAN_CONTROLLER_PORT (environment only): Quay's metrics/controller port, default 8686.
    pub controller_port: u16,
}

/// Certificate and private key files of a TLS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// CERT: PEM certificate chain.
    pub cert: PathBuf,
    /// KEY: PEM private key.
    pub key: PathBuf,
}

/// The private key build tokens are signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKeyConfig {
    /// KID: key id written into the token header.
    pub kid: String,
    /// PRIVATE_KEY_PATH: PEM private key file.
    pub private_key_path: PathBuf,
}

/// A further public key accepted when verifying build tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKeyConfig {
    /// KID: key id tokens signed with it carry.
    pub kid: String,
    /// PUBLIC_KEY_PATH: PEM public key file.
    pub public_key_path: PathBuf,
}

/// The first element of BUILD_MANAGER.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lifecycle {
    /// `ephemeral`: the manager starts a worker per build.
    #[default]
    Ephemeral,
    /// `external`: builds run elsewhere; executors are not required.
    External,
}

/// The second element of BUILD_MANAGER.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildManagerConfig {
    /// The list's first element.
    pub lifecycle: Lifecycle,
    /// ALLOWED_WORKER_COUNT: running workers allowed over all executors (default 1, >= 1).
    pub allowed_worker_count: u32,
    /// ORCHESTRATOR_PREFIX: prefix of every orchestrator key; ends with `/` unless empty.
    pub orchestrator_prefix: String,
    /// ORCHESTRATOR: where jobs are tracked.
    pub orchestrator: OrchestratorConfig,
    /// JOB_REGISTRATION_TIMEOUT: how long a created job may wait to be scheduled (default 30 s).
    pub job_registration_timeout: Duration,
    /// MACHINE_MAX_TIME: how long a build may run in total (default 7200 s).
    pub machine_max_time: Duration,
    /// EXECUTORS (or EXECUTOR + EXECUTOR_CONFIG), in the order they are tried.
    pub executors: Vec<ExecutorConfig>,
}

impl Default for BuildManagerConfig {
    fn default() -> Self {
        BuildManagerConfig {
            lifecycle: Lifecycle::Ephemeral,
            allowed_worker_count: 1,
            orchestrator_prefix: String::new(),
            orchestrator: OrchestratorConfig::Memory,
            job_registration_timeout: Duration::from_secs(30),
            machine_max_time: Duration::from_secs(7200),
            executors: vec![ExecutorConfig::default()],
        }
    }
}

/// The orchestrator, chosen by the prefix of the keys under ORCHESTRATOR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrchestratorConfig {
    /// No keys, or `MEM_*` keys: in-process memory.
    Memory,
    /// `REDIS_*` keys.
    Redis(RedisConfig),
}

/// The `REDIS_*` keys of ORCHESTRATOR.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// REDIS_HOST (required).
    pub host: String,
    /// REDIS_PORT (default 6379).
    pub port: u16,
    /// REDIS_PASSWORD (redacted in Debug; empty means none).
    pub password: Option<String>,
    /// REDIS_SSL (default false).
    pub ssl: bool,
    /// REDIS_DB (default 0).
    pub db: u32,
    /// REDIS_SKIP_KEYSPACE_EVENT_SETUP: do not run `CONFIG SET notify-keyspace-events`.
    pub skip_keyspace_event_setup: bool,
    /// Every other `REDIS_*` key, lower-cased after the prefix (`REDIS_CA_CERT` -> `ca_cert`).
    pub extra: BTreeMap<String, String>,
}

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
    /// The kind's own keys.
    pub specific: ExecutorSpecific,
}

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

/// The popen executor's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PopenConfig {
    /// BUILDER_BINARY_LOCATION; `None` runs this very binary's `worker` subcommand.
    pub builder_binary_location: Option<PathBuf>,
    /// BUILDAH_ISOLATION (default `chroot`).
    pub buildah_isolation: String,
    /// INSECURE: push over plain http.
    pub insecure: bool,
}

impl Default for PopenConfig {
    fn default() -> Self {
        PopenConfig {
            builder_binary_location: None,
            buildah_isolation: "chroot".to_owned(),
            insecure: false,
        }
    }
}

/// The bench executor's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BenchConfig {
    /// BENCH_CALLBACK_URL (required): where the load generator takes start requests.
    pub callback_url: String,
}

/// KUBERNETES_DISTRIBUTION.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KubernetesDistribution {
    /// `basic` (the default).
    #[default]
    Basic,
    /// `openshift`.
    Openshift,
}

/// The kubernetes and kubernetesPodman executors' keys.
#[derive(Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// K8S_API_SERVER: `host:port` of the API (default `localhost:8080`).
    pub k8s_api_server: String,
    /// BUILDER_NAMESPACE (default `builder`).
    pub builder_namespace: String,
    /// SERVICE_ACCOUNT_TOKEN: bearer token, implies https (redacted in Debug).
    pub service_account_token: Option<String>,
    /// K8S_API_TLS_CERT: client certificate, implies https (needs K8S_API_TLS_KEY).
    pub k8s_api_tls_cert: Option<PathBuf>,
    /// K8S_API_TLS_KEY: client key (needs K8S_API_TLS_CERT).
    pub k8s_api_tls_key: Option<PathBuf>,
    /// K8S_API_TLS_CA: CA bundle the API's certificate is checked against.
    pub k8s_api_tls_ca: Option<PathBuf>,
    /// VERIFY_TLS (default true).
    pub verify_tls: bool,
    /// K8S_API_TIMEOUT (default 20 s).
    pub k8s_api_timeout: Duration,
    /// BUILDER_VM_CONTAINER_IMAGE: the VM image (kubernetes).
    pub builder_vm_container_image: Option<String>,
    /// BUILDER_CONTAINER_IMAGE: the worker image (kubernetesPodman).
    pub builder_container_image: Option<String>,
    /// KUBERNETES_DISTRIBUTION (case-insensitive, default basic).
    pub kubernetes_distribution: KubernetesDistribution,
    /// CONTAINER_MEMORY_REQUEST (default `3968Mi`).
    pub container_memory_request: String,
    /// CONTAINER_MEMORY_LIMITS (default `5120Mi`).
    pub container_memory_limits: String,
    /// CONTAINER_CPU_LIMITS (default `1000m`).
    pub container_cpu_limits: String,
    /// CONTAINER_CPU_REQUEST (default `500m`).
    pub container_cpu_request: String,
    /// NODE_SELECTOR_LABEL_KEY.
    pub node_selector_label_key: Option<String>,
    /// NODE_SELECTOR_LABEL_VALUE.
    pub node_selector_label_value: Option<String>,
    /// SERVICE_ACCOUNT_NAME the Job's pod runs as.
    pub service_account_name: Option<String>,
    /// IMAGE_PULL_SECRET_NAME (default `builder`).
    pub image_pull_secret_name: String,
    /// IMAGE_PULL_POLICY: `Always` (default), `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// DNS_POLICY: `Default` (default), `ClusterFirst`, `ClusterFirstWithHostNet` or `None`.
    pub dns_policy: String,
    /// VM_MEMORY_LIMIT (default `4G`).
    pub vm_memory_limit: String,
    /// MAXIMUM_JOB_TIME: the Job's activeDeadlineSeconds (default 7200 s).
    pub maximum_job_time: Duration,
    /// RETENTION_AFTER_FINISHED: the Job's ttlSecondsAfterFinished (default 120 s).
    pub retention_after_finished: Duration,
    /// EXTRA_CA_CERTS: PEM texts the worker trusts in addition.
    pub extra_ca_certs: Vec<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            k8s_api_server: "localhost:8080".to_owned(),
            builder_namespace: "builder".to_owned(),
            service_account_token: None,
            k8s_api_tls_cert: None,
            k8s_api_tls_key: None,
            k8s_api_tls_ca: None,
            verify_tls: true,
            k8s_api_timeout: Duration::from_secs(20),
            builder_vm_container_image: None,
            builder_container_image: None,
            kubernetes_distribution: KubernetesDistribution::Basic,
            container_memory_request: "3968Mi".to_owned(),
            container_memory_limits: "5120Mi".to_owned(),
            container_cpu_limits: "1000m".to_owned(),
            container_cpu_request: "500m".to_owned(),
            node_selector_label_key: None,
            node_selector_label_value: None,
            service_account_name: None,
            image_pull_secret_name: "builder".to_owned(),
            image_pull_policy: "Always".to_owned(),
            dns_policy: "Default".to_owned(),
            vm_memory_limit: "4G".to_owned(),
            maximum_job_time: Duration::from_secs(7200),
            retention_after_finished: Duration::from_secs(120),
            extra_ca_certs: Vec::new(),
        }
    }
}

/// The ec2 executor's keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Ec2Config {
    /// EC2_REGION (required).
    pub ec2_region: String,
    /// COREOS_AMI; when absent, looked up from the Fedora CoreOS stream.
    pub coreos_ami: Option<String>,
    /// COREOS_CHANNEL (default `stable`).
    pub coreos_channel: String,
    /// AWS_ACCESS_KEY.
    pub aws_access_key: Option<String>,
    /// AWS_SECRET_KEY (redacted in Debug).
    pub aws_secret_key: Option<String>,
    /// EC2_INSTANCE_TYPE; `None` lets the executor choose.
    pub ec2_instance_type: Option<String>,
    /// EC2_VPC_SUBNET_ID (needs EC2_SECURITY_GROUP_IDS).
    pub ec2_vpc_subnet_id: Option<String>,
    /// EC2_SECURITY_GROUP_IDS.
    pub ec2_security_group_ids: Vec<String>,
    /// EC2_KEY_NAME.
    pub ec2_key_name: Option<String>,
    /// BLOCK_DEVICE_SIZE in GiB (default 48).
    pub block_device_size: u32,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            ec2_region: String::new(),
            coreos_ami: None,
            coreos_channel: "stable".to_owned(),
            aws_access_key: None,
            aws_secret_key: None,
            ec2_instance_type: None,
            ec2_vpc_subnet_id: None,
            ec2_security_group_ids: Vec::new(),
            ec2_key_name: None,
            block_device_size: 48,
        }
    }
}

/// A problem found in the configuration, with its path in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where, e.g. `BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME`; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Diagnostic {}

/// A parsed configuration and the warnings found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Problems that did not stop parsing (unknown keys, skipped executors, ...).
    pub warnings: Vec<Diagnostic>,
}

/// A configuration that does not validate: every error, and the warnings found alongside.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    /// Problems that stop the configuration from being used (never empty).
    pub errors: Vec<Diagnostic>,
    /// Problems that alone would not have.
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// The embedded defaults used when `buildman serve` runs with no config file: build support on, one popen executor, memory orchestrator.
    pub fn embedded() -> Config {
        Config {
            feature_build_support: true,
            server_hostname: "localhost:8080".to_owned(),
            buildman_hostname: None,
            build_manager: BuildManagerConfig::default(),
            data_dir: None,
            http_listen: None,
            grpc_listen: None,
            public_url: None,
            grpc_tls: None,
            database_url: None,
            signing_key: None,
            trusted_keys: Vec::new(),
            api_tokens: Vec::new(),
            registry_push_token: None,
            registry_pull_token: None,
            max_queued_builds_per_namespace: None,
            registry: None,
            controller_port: DEFAULT_CONTROLLER_PORT,
        }
    }

    /// Parses and validates; `Err` holds every error found (never empty) and the warnings.
    pub fn parse(yaml: &str) -> Result<Loaded, Invalid> {
        let fail = |message: String| {
            Err(Invalid {
                errors: vec![Diagnostic {
                    path: String::new(),
                    message,
                }],
                warnings: Vec::new(),
            })
        };
        let mut root: Value = match serde_yaml_ng::from_str(yaml) {
            Ok(root) => root,
            Err(err) => return fail(err.to_string()),
        };
        if let Err(err) = root.apply_merge() {
            return fail(err.to_string());
        }
        let Value::Mapping(map) = &root else {
            return fail(format!(
                "expected a mapping at the top level, got {}",
                describe(&root)
            ));
        };
        let report = Report::default();
        let config = parse_config(&mut Section::new(&report, String::new(), map));
        let (errors, warnings) = (report.errors.into_inner(), report.warnings.into_inner());
        if errors.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(Invalid { errors, warnings })
        }
    }

    /// Applies Quay's environment overrides: BUILDMAN_HOSTNAME (sets buildman_hostname). Takes a lookup fn so tests need not touch the real environment.
    ///
    /// Also BUILDMAN_CONTROLLER_PORT; an invalid value is ignored (see [`Config::try_apply_env`]).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        // Invalid values leave the field untouched; callers wanting to know use try_apply_env.
        let _ignored = self.try_apply_env(lookup);
    }

    /// Like [`Config::apply_env`], but reports invalid values (which are left unapplied).
    pub fn try_apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), Vec<Diagnostic>> {
        let mut errors = Vec::new();
        if let Some(host) = lookup("BUILDMAN_HOSTNAME").filter(|h| !h.trim().is_empty()) {
            self.buildman_hostname = Some(host.trim().to_owned());
        }
        if let Some(port) = lookup("BUILDMAN_CONTROLLER_PORT") {
            match port.trim().parse::<u16>() {
                Ok(port) => self.controller_port = port,
                Err(_) => errors.push(Diagnostic {
                    path: "BUILDMAN_CONTROLLER_PORT".to_owned(),
                    message: format!("expected a port number, got {port:?}"),
                }),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The `host:port` workers dial (Quay's rule): if buildman_hostname is set: if its host part (strip any :port) equals server_hostname's host part -> "<host>:55443"; else buildman_hostname as given. If unset -> None (the caller then uses the gRPC listen address).
    pub fn worker_server_address(&self) -> Option<String> {
        let manager = self.buildman_hostname.as_deref()?;
        let host = host_part(manager);
        if host.eq_ignore_ascii_case(host_part(&self.server_hostname)) {
            Some(format!("{host}:{WORKER_TLS_PORT}"))
        } else {
            Some(manager.to_owned())
        }
    }

    /// The token audience: buildman_hostname else server_hostname.
    pub fn token_audience(&self) -> String {
        self.buildman_hostname
            .clone()
            .unwrap_or_else(|| self.server_hostname.clone())
    }
}

/// `host` of `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_part(address: &str) -> &str {
    if address.starts_with('[') {
        return address.find(']').map_or(address, |end| &address[..=end]);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

// ---------------------------------------------------------------------------------------------
// Debug without secrets.

/// Debug of a secret field: shows whether it is set, never its value.
struct Redacted<'a, T>(&'a T);

impl fmt::Debug for Redacted<'_, Option<String>> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<redacted>)"
        } else {
            "None"
        })
    }
}

impl fmt::Debug for Redacted<'_, Vec<String>> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[<redacted>; {}]", self.0.len())
    }
}

/// Implements Debug printing `secret` fields as `<redacted>`; the destructuring makes a field
/// missing from the lists a compile error.
macro_rules! debug_redacting {
    ($ty:ident { $($field:ident),* $(,)? } secret { $($secret:ident),* $(,)? }) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let $ty { $($field,)* $($secret,)* } = self;
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), $field))*
                    $(.field(stringify!($secret), &Redacted($secret)))*
                    .finish()
            }
        }
    };
}

debug_redacting!(Config {
    feature_build_support, server_hostname, buildman_hostname, build_manager, data_dir,
    http_listen, grpc_listen, public_url, grpc_tls, signing_key, trusted_keys,
    max_queued_builds_per_namespace, registry, controller_port,
} secret { database_url, api_tokens, registry_push_token, registry_pull_token });
debug_redacting!(RedisConfig {
    host, port, ssl, db, skip_keyspace_event_setup, extra,
} secret { password });
debug_redacting!(ExecutorConfig {
    kind, name, setup_time, minimum_retry_threshold, namespace_whitelist, staged_rollout, debug,
    max_lifetime_s, container_runtime, http_proxy, https_proxy, no_proxy, ca_cert, worker_image,
    worker_tag, quay_username, ssh_authorized_keys, volume_size, specific,
} secret { quay_password });
debug_redacting!(KubernetesConfig {
    k8s_api_server, builder_namespace, k8s_api_tls_cert, k8s_api_tls_key, k8s_api_tls_ca,
    verify_tls, k8s_api_timeout, builder_vm_container_image, builder_container_image,
    kubernetes_distribution, container_memory_request, container_memory_limits,
    container_cpu_limits, container_cpu_request, node_selector_label_key,
    node_selector_label_value, service_account_name, image_pull_secret_name, image_pull_policy,
    dns_policy, vm_memory_limit, maximum_job_time, retention_after_finished, extra_ca_certs,
} secret { service_account_token });
debug_redacting!(Ec2Config {
    ec2_region, coreos_ami, coreos_channel, aws_access_key, ec2_instance_type, ec2_vpc_subnet_id,
    ec2_security_group_ids, ec2_key_name, block_device_size,
} secret { aws_secret_key });

// ---------------------------------------------------------------------------------------------
// The walker.

/// Diagnostics collected while walking.
#[derive(Default)]
struct Report {
    errors: RefCell<Vec<Diagnostic>>,
    warnings: RefCell<Vec<Diagnostic>>,
}

impl Report {
    fn error(&self, path: &str, message: impl Into<String>) {
        self.errors.borrow_mut().push(diagnostic(path, message));
    }

    fn warn(&self, path: &str, message: impl Into<String>) {
        self.warnings.borrow_mut().push(diagnostic(path, message));
    }

    fn expected(&self, path: &str, what: &str, got: &Value) {
        self.error(path, format!("expected {what}, got {}", describe(got)));
    }
}

fn diagnostic(path: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A value as error messages show it: strings quoted, collections by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(s) if s.is_empty() => "an empty list".to_owned(),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(m) if m.is_empty() => "an empty mapping".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// The text of a scalar (string, number or boolean).
fn plain(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `"a" or "b"`, `"a", "b" or "c"`.
fn alternatives(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

fn to_string(r: &Report, path: &str, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => {
            r.expected(path, "a string", value);
            None
        }
    }
}

/// An http(s) URL, as given.
fn http_url(r: &Report, path: &str, value: &Value) -> Option<String> {
    let url = plain(value).filter(|u| u.starts_with("http://") || u.starts_with("https://"));
    if url.is_none() {
        r.expected(path, "a URL starting with http:// or https://", value);
    }
    url
}

fn to_path(r: &Report, path: &str, value: &Value) -> Option<PathBuf> {
    to_string(r, path, value).map(PathBuf::from)
}

fn to_bool(r: &Report, path: &str, value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => {
            r.expected(path, "a boolean", value);
            None
        }
    }
}

/// A non-negative integer, also from a quoted numeric string.
fn to_u64(r: &Report, path: &str, value: &Value) -> Option<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().map(Ok).or_else(|| n.as_i64().map(Err)),
        Value::String(s) => {
            let s = s.trim();
            (s.parse().ok().map(Ok)).or_else(|| s.parse().ok().map(Err))
        }
        _ => None,
    };
    match parsed {
        Some(Ok(n)) => Some(n),
        Some(Err(negative)) => {
            let negative: i64 = negative;
            r.error(path, format!("must not be negative, got {negative}"));
            None
        }
        None => {
            r.expected(path, "an integer", value);
            None
        }
    }
}

fn to_bounded<T: TryFrom<u64> + Into<u64>>(
    max: T,
) -> impl FnOnce(&Report, &str, &Value) -> Option<T> {
    move |r, path, value| {
        let n = to_u64(r, path, value)?;
        let max: u64 = max.into();
        let fitted = T::try_from(n).ok();
        if fitted.is_none() {
            r.error(path, format!("must be at most {max}, got {n}"));
        }
        fitted
    }
}

fn to_f64(r: &Report, path: &str, value: &Value) -> Option<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    if parsed.is_none() {
        r.expected(path, "a number", value);
    }
    parsed
}

fn to_list<'a>(r: &Report, path: &str, value: &'a Value) -> Option<&'a [Value]> {
    match value {
        Value::Sequence(items) => Some(items),
        _ => {
            r.expected(path, "a list", value);
            None
        }
    }
}

/// A list of strings; bad elements are reported and left out.
fn to_strings(r: &Report, path: &str, value: &Value) -> Option<Vec<String>> {
    let items = to_list(r, path, value)?;
    Some(
        (items.iter().enumerate())
            .filter_map(|(i, item)| to_string(r, &index(path, i), item))
            .collect(),
    )
}

/// A mapping being read: typed getters record errors under the key's path, and the keys
/// never asked for become "unknown key" warnings in [`Section::finish`].
struct Section<'a> {
    r: &'a Report,
    path: String,
    map: &'a Mapping,
    used: BTreeSet<String>,
}

impl<'a> Section<'a> {
    fn new(r: &'a Report, path: String, map: &'a Mapping) -> Self {
        Section {
            r,
            path,
            map,
            used: BTreeSet::new(),
        }
    }

    /// `value` as a section, or an error if it is not a mapping.
    fn of(r: &'a Report, path: String, value: &'a Value) -> Option<Self> {
        match value {
            Value::Mapping(map) => Some(Section::new(r, path, map)),
            _ => {
                r.expected(&path, "a mapping", value);
                None
            }
        }
    }

    fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The key's value, `None` when absent or null; marks the key as known.
    fn raw(&mut self, key: &str) -> Option<&'a Value> {
        self.used.insert(key.to_owned());
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn get<T>(
        &mut self,
        key: &str,
        convert: impl FnOnce(&Report, &str, &'a Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.raw(key)?;
        convert(self.r, &self.child(key), value)
    }

    /// Like `get`, but a missing key is an error on this section.
    fn required<T>(
        &mut self,
        key: &str,
        convert: impl FnOnce(&Report, &str, &'a Value) -> Option<T>,
    ) -> Option<T> {
        if self.raw(key).is_none() {
            self.r
                .error(&self.path, format!("missing required key {key}"));
            return None;
        }
        self.get(key, convert)
    }

    fn string(&mut self, key: &str) -> Option<String> {
        self.get(key, to_string)
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        self.get(key, to_path)
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        self.get(key, to_bool)
    }

    fn u64(&mut self, key: &str) -> Option<u64> {
        self.get(key, to_u64)
    }

    fn u32(&mut self, key: &str) -> Option<u32> {
        self.get(key, to_bounded(u32::MAX))
    }

    /// A u32 that must be at least `min`.
    fn u32_at_least(&mut self, key: &str, min: u32) -> Option<u32> {
        let n = self.u32(key)?;
        if n < min {
            self.r
                .error(&self.child(key), format!("must be at least {min}, got {n}"));
            return None;
        }
        Some(n)
    }

    /// Whole seconds.
    fn duration(&mut self, key: &str) -> Option<Duration> {
        self.u64(key).map(Duration::from_secs)
    }

    /// A number in 0..=1.
    fn fraction(&mut self, key: &str) -> Option<f64> {
        let x = self.get(key, to_f64)?;
        if !(0.0..=1.0).contains(&x) {
            self.r.error(
                &self.child(key),
                format!("must be between 0 and 1, got {x}"),
            );
            return None;
        }
        Some(x)
    }

    fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        self.get(key, to_strings)
    }

    /// A scalar `parse` accepts; otherwise "expected {what}, got ...".
    fn parsed<T>(
        &mut self,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        self.get(key, |r, path, value| {
            let parsed = plain(value).and_then(|s| parse(&s));
            if parsed.is_none() {
                r.expected(path, what, value);
            }
            parsed
        })
    }

    /// One of `options`, exactly.
    fn one_of(&mut self, key: &str, options: &[&str]) -> Option<String> {
        let what = alternatives(options);
        self.parsed(key, &what, |s| {
            options.iter().find(|o| **o == s).map(|o| (*o).to_owned())
        })
    }

    fn section(&mut self, key: &str) -> Option<Section<'a>> {
        let value = self.raw(key)?;
        Section::of(self.r, self.child(key), value)
    }

    /// The keys nobody asked for yet (non-string keys shown as YAML).
    fn unused(&self) -> Vec<(String, &'a Value)> {
        (self.map.iter())
            .map(|(k, v)| (plain(k).unwrap_or_else(|| describe(k)), v))
            .filter(|(k, _)| !self.used.contains(k))
            .collect()
    }

    /// Warns about every key never asked for.
    fn finish(self) {
        for (key, _) in self.unused() {
            self.r.warn(&self.child(&key), "unknown key, ignored");
        }
    }
}

/// Reports every value used more than once; `entries` are (path, label, value).
fn check_unique<'v>(
    r: &Report,
    what: &str,
    entries: impl IntoIterator<Item = (String, String, &'v str)>,
) {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (path, label, value) in entries {
        match seen.get(value) {
            Some(first) => r.error(
                &path,
                format!("duplicate {what} {value:?} (also used by {first})"),
            ),
            None => {
                seen.insert(value, label);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file's structure.

fn parse_config(s: &mut Section) -> Config {
    let r = s.r;
    let base = Config::embedded();
    let config = Config {
        feature_build_support: s.bool("FEATURE_BUILD_SUPPORT").unwrap_or(false),
        server_hostname: s.string("SERVER_HOSTNAME").unwrap_or(base.server_hostname),
        buildman_hostname: s.string("BUILDMAN_HOSTNAME").filter(|h| !h.is_empty()),
        build_manager: (s.raw("BUILD_MANAGER"))
            .map(|v| parse_build_manager(r, v))
            .unwrap_or_default(),
        data_dir: s.path("BUILDMAN_DATA_DIR"),
        http_listen: s.parsed(
            "BUILDMAN_HTTP_LISTEN",
            "an address like 127.0.0.1:8080",
            |a| a.parse().ok(),
        ),
        grpc_listen: s.parsed(
            "BUILDMAN_GRPC_LISTEN",
            "an address like 127.0.0.1:50051",
            |a| a.parse().ok(),
        ),
        public_url: s.parsed(
            "BUILDMAN_PUBLIC_URL",
            "a URL starting with http:// or https://",
            |u| (u.starts_with("http://") || u.starts_with("https://")).then(|| u.to_owned()),
        ),
        grpc_tls: s.section("BUILDMAN_GRPC_TLS").and_then(|mut t| {
            let (cert, key) = (t.required("CERT", to_path), t.required("KEY", to_path));
            t.finish();
            Some(TlsConfig {
                cert: cert?,
                key: key?,
            })
        }),
        database_url: s.string("BUILDMAN_DATABASE_URL").filter(|url| {
            let ok = ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            if !ok {
                // The URL may hold a password: never echo it.
                r.error(
                    &s.child("BUILDMAN_DATABASE_URL"),
                    "expected a URL starting with sqlite:, postgres:// or postgresql://",
                );
            }
            ok
        }),
        signing_key: s.section("BUILDMAN_JWT_SIGNING_KEY").and_then(|mut k| {
            let kid = k.required("KID", to_string);
            let private_key_path = k.required("PRIVATE_KEY_PATH", to_path);
            k.finish();
            Some(SigningKeyConfig {
                kid: kid?,
                private_key_path: private_key_path?,
            })
        }),
        trusted_keys: (s.raw("BUILDMAN_JWT_TRUSTED_KEYS"))
            .map(|v| parse_trusted_keys(r, &s.child("BUILDMAN_JWT_TRUSTED_KEYS"), v))
            .unwrap_or_default(),
        api_tokens: s.strings("BUILDMAN_API_TOKENS").unwrap_or_default(),
        max_queued_builds_per_namespace: s
            .u32_at_least("BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE", 1),
        registry: s.string("BUILDMAN_REGISTRY").filter(|h| !h.is_empty()),
        registry_push_token: s
            .string("BUILDMAN_REGISTRY_PUSH_TOKEN")
            .filter(|t| !t.is_empty()),
        registry_pull_token: s
            .string("BUILDMAN_REGISTRY_PULL_TOKEN")
            .filter(|t| !t.is_empty()),
        controller_port: base.controller_port,
    };
    for (i, token) in config.api_tokens.iter().enumerate() {
        let length = token.chars().count();
        if length < 16 {
            r.error(
                &index("BUILDMAN_API_TOKENS", i),
                format!("a token must be at least 16 characters long, got {length}"),
            );
        }
    }
    let signing = (config.signing_key.iter()).map(|k| {
        (
            "BUILDMAN_JWT_SIGNING_KEY.KID".to_owned(),
            "BUILDMAN_JWT_SIGNING_KEY".to_owned(),
            k.kid.as_str(),
        )
    });
    let trusted = config.trusted_keys.iter().enumerate().map(|(i, k)| {
        let label = index("BUILDMAN_JWT_TRUSTED_KEYS", i);
        (join(&label, "KID"), label, k.kid.as_str())
    });
    check_unique(r, "key id", signing.chain(trusted));
    config
}

fn parse_trusted_keys(r: &Report, path: &str, value: &Value) -> Vec<TrustedKeyConfig> {
    let items = to_list(r, path, value).unwrap_or_default();
    (items.iter().enumerate())
        .filter_map(|(i, item)| {
            let mut k = Section::of(r, index(path, i), item)?;
            let kid = k.required("KID", to_string);
            let public_key_path = k.required("PUBLIC_KEY_PATH", to_path);
            k.finish();
            Some(TrustedKeyConfig {
                kid: kid?,
                public_key_path: public_key_path?,
            })
        })
        .collect()
}

fn parse_build_manager(r: &Report, value: &Value) -> BuildManagerConfig {
    const PATH: &str = "BUILD_MANAGER";
    let defaults = BuildManagerConfig::default();
    let items = match value {
        Value::Sequence(items) if !items.is_empty() => items,
        _ => {
            r.expected(PATH, "a list like [ephemeral, {...}]", value);
            return defaults;
        }
    };
    let lifecycle_path = index(PATH, 0);
    let lifecycle = match plain(&items[0]).as_deref() {
        Some("ephemeral") => Lifecycle::Ephemeral,
        Some("external") => Lifecycle::External,
        _ => {
            r.expected(&lifecycle_path, r#""ephemeral" or "external""#, &items[0]);
            Lifecycle::Ephemeral
        }
    };
    for i in 2..items.len() {
        r.warn(&index(PATH, i), "unexpected list element, ignored");
    }
    let empty = Mapping::new();
    let path = index(PATH, 1);
    let mut s = match items.get(1) {
        None | Some(Value::Null) => Section::new(r, path, &empty),
        Some(v) => match Section::of(r, path, v) {
            Some(s) => s,
            None => return defaults,
        },
    };
    let config = BuildManagerConfig {
        lifecycle,
        allowed_worker_count: (s.u32_at_least("ALLOWED_WORKER_COUNT", 1))
            .unwrap_or(defaults.allowed_worker_count),
        orchestrator_prefix: parse_prefix(&mut s),
        orchestrator: parse_orchestrator(&mut s),
        job_registration_timeout: (s.duration("JOB_REGISTRATION_TIMEOUT"))
            .unwrap_or(defaults.job_registration_timeout),
        machine_max_time: s
            .duration("MACHINE_MAX_TIME")
            .unwrap_or(defaults.machine_max_time),
        executors: parse_executors(&mut s, lifecycle),
    };
    s.finish();
    config
}

/// ORCHESTRATOR_PREFIX, given a trailing `/` (with a warning) like Quay's slash_join does.
fn parse_prefix(s: &mut Section) -> String {
    let prefix = s.string("ORCHESTRATOR_PREFIX").unwrap_or_default();
    if prefix.is_empty() || prefix.ends_with('/') {
        return prefix;
    }
    let fixed = format!("{prefix}/");
    s.r.warn(
        &s.child("ORCHESTRATOR_PREFIX"),
        format!("should end with \"/\"; using {fixed:?}"),
    );
    fixed
}

fn parse_orchestrator(s: &mut Section) -> OrchestratorConfig {
    let Some(mut o) = s.section("ORCHESTRATOR") else {
        return OrchestratorConfig::Memory;
    };
    let r = o.r;
    let (mut redis, mut memory) = (false, false);
    for (key, _) in o.unused() {
        if key.ends_with("_PREFIX") {
            r.error(
                &o.child(&key),
                "a key prefix does not belong in ORCHESTRATOR; set ORCHESTRATOR_PREFIX instead",
            );
            o.used.insert(key);
        } else if key.starts_with("REDIS_") {
            redis = true;
        } else if key.starts_with("MEM_") {
            // The memory orchestrator takes no options.
            memory = true;
            o.used.insert(key);
        }
    }
    if redis && memory {
        r.error(
            &o.path,
            "mixes REDIS_* and MEM_* keys; configure one orchestrator",
        );
    }
    if !redis {
        o.finish();
        return OrchestratorConfig::Memory;
    }
    let host = o.required("REDIS_HOST", to_string).unwrap_or_default();
    let mut config = RedisConfig {
        host,
        port: o.get("REDIS_PORT", to_bounded(u16::MAX)).unwrap_or(6379),
        password: o.string("REDIS_PASSWORD").filter(|p| !p.is_empty()),
        ssl: o.bool("REDIS_SSL").unwrap_or(false),
        db: o.u32("REDIS_DB").unwrap_or(0),
        skip_keyspace_event_setup: o.bool("REDIS_SKIP_KEYSPACE_EVENT_SETUP").unwrap_or(false),
        extra: BTreeMap::new(),
    };
    for (key, value) in o.unused() {
        let Some(option) = key.strip_prefix("REDIS_") else {
            continue;
        };
        match value {
            Value::Null => {}
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                let text = plain(value).unwrap_or_default();
                config.extra.insert(option.to_ascii_lowercase(), text);
            }
            _ => r.expected(&o.child(&key), "a string, number or boolean", value),
        }
        o.used.insert(key);
    }
    o.finish();
    OrchestratorConfig::Redis(config)
}

fn parse_executors(s: &mut Section, lifecycle: Lifecycle) -> Vec<ExecutorConfig> {
    let r = s.r;
    let list = s.raw("EXECUTORS");
    let single = s.raw("EXECUTOR");
    let legacy = s.raw("EXECUTOR_CONFIG");
    // (label for duplicate messages, path of NAME, executor)
    let mut found: Vec<(String, String, ExecutorConfig)> = Vec::new();
    let where_path;
    match (list, single) {
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
            where_path = s.child("EXECUTORS");
            if legacy.is_some() {
                r.error(
                    &s.child("EXECUTOR_CONFIG"),
                    "cannot be combined with EXECUTORS; move its keys into an EXECUTORS entry",
                );
            }
            let Some(entries) = to_list(r, &where_path, list) else {
                return Vec::new();
            };
            for (i, entry) in entries.iter().enumerate() {
                let Some(mut e) = Section::of(r, index(&where_path, i), entry) else {
                    continue;
                };
                let kind = e.required("EXECUTOR", parse_kind);
                if let Some(Some(kind)) = kind {
                    let executor = parse_executor(kind, &mut e);
                    e.finish();
                    let label = index("EXECUTORS", i);
                    found.push((label, index(&where_path, i), executor));
                }
            }
        }
        (None, Some(kind)) => {
            where_path = s.child("EXECUTOR");
            if let Some(Some(kind)) = parse_kind(r, &where_path, kind) {
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
        }
    }
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
        specific: match d.specific {
            ExecutorSpecific::Popen(d) => ExecutorSpecific::Popen(PopenConfig {
                builder_binary_location: s.path("BUILDER_BINARY_LOCATION"),
                buildah_isolation: s.string("BUILDAH_ISOLATION").unwrap_or(d.buildah_isolation),
                insecure: s.bool("INSECURE").unwrap_or(d.insecure),
            }),
            ExecutorSpecific::Kubernetes(d) => ExecutorSpecific::Kubernetes(parse_kubernetes(s, d)),
            ExecutorSpecific::Ec2(d) => ExecutorSpecific::Ec2(parse_ec2(s, d)),
            ExecutorSpecific::Bench(d) => ExecutorSpecific::Bench(BenchConfig {
                callback_url: s
                    .required("BENCH_CALLBACK_URL", http_url)
                    .unwrap_or(d.callback_url),
            }),
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

fn parse_kubernetes(s: &mut Section, d: KubernetesConfig) -> KubernetesConfig {
    let config = KubernetesConfig {
        k8s_api_server: s.string("K8S_API_SERVER").unwrap_or(d.k8s_api_server),
        builder_namespace: s.string("BUILDER_NAMESPACE").unwrap_or(d.builder_namespace),
        service_account_token: s.string("SERVICE_ACCOUNT_TOKEN"),
        k8s_api_tls_cert: s.path("K8S_API_TLS_CERT"),
        k8s_api_tls_key: s.path("K8S_API_TLS_KEY"),
        k8s_api_tls_ca: s.path("K8S_API_TLS_CA"),
        verify_tls: s.bool("VERIFY_TLS").unwrap_or(d.verify_tls),
        k8s_api_timeout: s.duration("K8S_API_TIMEOUT").unwrap_or(d.k8s_api_timeout),
        builder_vm_container_image: s.string("BUILDER_VM_CONTAINER_IMAGE"),
        builder_container_image: s.string("BUILDER_CONTAINER_IMAGE"),
        kubernetes_distribution: (s.parsed(
            "KUBERNETES_DISTRIBUTION",
            r#""basic" or "openshift""#,
            |v| match v.to_ascii_lowercase().as_str() {
                "basic" => Some(KubernetesDistribution::Basic),
                "openshift" => Some(KubernetesDistribution::Openshift),
                _ => None,
            },
        ))
        .unwrap_or(d.kubernetes_distribution),
        container_memory_request: (s.string("CONTAINER_MEMORY_REQUEST"))
            .unwrap_or(d.container_memory_request),
        container_memory_limits: (s.string("CONTAINER_MEMORY_LIMITS"))
            .unwrap_or(d.container_memory_limits),
        container_cpu_limits: s
            .string("CONTAINER_CPU_LIMITS")
            .unwrap_or(d.container_cpu_limits),
        container_cpu_request: s
            .string("CONTAINER_CPU_REQUEST")
            .unwrap_or(d.container_cpu_request),
        node_selector_label_key: s.string("NODE_SELECTOR_LABEL_KEY"),
        node_selector_label_value: s.string("NODE_SELECTOR_LABEL_VALUE"),
        service_account_name: s.string("SERVICE_ACCOUNT_NAME"),
        image_pull_secret_name: (s.string("IMAGE_PULL_SECRET_NAME"))
            .unwrap_or(d.image_pull_secret_name),
        image_pull_policy: (s.one_of("IMAGE_PULL_POLICY", &["Always", "IfNotPresent", "Never"]))
            .unwrap_or(d.image_pull_policy),
        dns_policy: (s.one_of(
            "DNS_POLICY",
            &["Default", "ClusterFirst", "ClusterFirstWithHostNet", "None"],
        ))
        .unwrap_or(d.dns_policy),
        vm_memory_limit: s.string("VM_MEMORY_LIMIT").unwrap_or(d.vm_memory_limit),
        maximum_job_time: s.duration("MAXIMUM_JOB_TIME").unwrap_or(d.maximum_job_time),
        retention_after_finished: (s.duration("RETENTION_AFTER_FINISHED"))
            .unwrap_or(d.retention_after_finished),
        extra_ca_certs: s.strings("EXTRA_CA_CERTS").unwrap_or_default(),
    };
    let (cert, key) = (
        config.k8s_api_tls_cert.is_some(),
        config.k8s_api_tls_key.is_some(),
    );
    require_together(s, "K8S_API_TLS_CERT", cert, "K8S_API_TLS_KEY", key);
    require_together(s, "K8S_API_TLS_KEY", key, "K8S_API_TLS_CERT", cert);
    config
}

fn parse_ec2(s: &mut Section, d: Ec2Config) -> Ec2Config {
    let config = Ec2Config {
        ec2_region: s.required("EC2_REGION", to_string).unwrap_or(d.ec2_region),
        coreos_ami: s.string("COREOS_AMI"),
        coreos_channel: s.string("COREOS_CHANNEL").unwrap_or(d.coreos_channel),
        aws_access_key: s.string("AWS_ACCESS_KEY"),
        aws_secret_key: s.string("AWS_SECRET_KEY"),
        ec2_instance_type: s.string("EC2_INSTANCE_TYPE"),
        ec2_vpc_subnet_id: s.string("EC2_VPC_SUBNET_ID"),
        ec2_security_group_ids: s.strings("EC2_SECURITY_GROUP_IDS").unwrap_or_default(),
        ec2_key_name: s.string("EC2_KEY_NAME"),
        block_device_size: (s.u32_at_least("BLOCK_DEVICE_SIZE", 1)).unwrap_or(d.block_device_size),
    };
    require_together(
        s,
        "EC2_VPC_SUBNET_ID",
        config.ec2_vpc_subnet_id.is_some(),
        "EC2_SECURITY_GROUP_IDS",
        !config.ec2_security_group_ids.is_empty(),
    );
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../tests/fixtures/quay-sample.yaml");

    fn load(yaml: &str) -> Loaded {
        match Config::parse(yaml) {
            Ok(loaded) => loaded,
            Err(errors) => panic!("unexpected errors for {yaml:?}: {errors:#?}"),
        }
    }

    fn errors(yaml: &str) -> Vec<String> {
        match Config::parse(yaml) {
            Ok(loaded) => panic!("expected errors for {yaml:?}, parsed {:#?}", loaded.config),
            Err(invalid) => invalid.errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn warnings(yaml: &str) -> Vec<String> {
        load(yaml)
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// A BUILD_MANAGER whose second element is `body` (flow-style YAML mapping content).
    fn manager(body: &str) -> String {
        format!("BUILD_MANAGER: [ephemeral, {{{body}}}]")
    }

    /// A BUILD_MANAGER with one executor whose mapping content is `body`.
    fn executor(body: &str) -> String {
        manager(&format!("EXECUTORS: [{{{body}}}]"))
    }

    #[test]
    fn every_error_message_is_exact() {
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                "a: [1, 2".into(),
                vec!["did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 4"],
            ),
            ("- a\n- b".into(), vec!["expected a mapping at the top level, got a list"]),
            ("just text".into(), vec![r#"expected a mapping at the top level, got "just text""#]),
            ("".into(), vec!["expected a mapping at the top level, got null"]),
            (
                "BUILD_MANAGER: {ALLOWED_WORKER_COUNT: 1}".into(),
                vec!["BUILD_MANAGER: expected a list like [ephemeral, {...}], got a mapping"],
            ),
            (
                "BUILD_MANAGER: []".into(),
                vec!["BUILD_MANAGER: expected a list like [ephemeral, {...}], got an empty list"],
            ),
            (
                "BUILD_MANAGER: [enterprise]".into(),
                vec![r#"BUILD_MANAGER[0]: expected "ephemeral" or "external", got "enterprise""#],
            ),
            (
                "BUILD_MANAGER: [ephemeral, [1]]".into(),
                vec!["BUILD_MANAGER[1]: expected a mapping, got a list"],
            ),
            (
                manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_PREFIX: x/}"),
                vec!["BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PREFIX: a key prefix does not belong in ORCHESTRATOR; set ORCHESTRATOR_PREFIX instead"],
            ),
            (
                manager("ORCHESTRATOR: {REDIS_HOST: h, MEM_CONFIG: x}"),
                vec!["BUILD_MANAGER[1].ORCHESTRATOR: mixes REDIS_* and MEM_* keys; configure one orchestrator"],
            ),
            (
                manager("ORCHESTRATOR: {REDIS_PORT: 6379}"),
                vec!["BUILD_MANAGER[1].ORCHESTRATOR: missing required key REDIS_HOST"],
            ),
            (
                manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_PORT: 70000}"),
                vec!["BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PORT: must be at most 65535, got 70000"],
            ),
            (
                manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_SSL: maybe}"),
                vec![r#"BUILD_MANAGER[1].ORCHESTRATOR.REDIS_SSL: expected a boolean, got "maybe""#],
            ),
            (
                manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_CERT_AND_KEY: [a, b]}"),
                vec!["BUILD_MANAGER[1].ORCHESTRATOR.REDIS_CERT_AND_KEY: expected a string, number or boolean, got a list"],
            ),
            (
                manager("ORCHESTRATOR: [REDIS_HOST]"),
                vec!["BUILD_MANAGER[1].ORCHESTRATOR: expected a mapping, got a list"],
            ),
            (
                manager(
                    "EXECUTORS: [{EXECUTOR: kubernetes, NAME: k8s}, {EXECUTOR: ec2, EC2_REGION: r}, \
                     {EXECUTOR: kubernetesPodman, NAME: k8s}]",
                ),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[2].NAME: duplicate executor name "k8s" (also used by EXECUTORS[0])"#],
            ),
            (
                manager("EXECUTORS: [{EXECUTOR: popen}, {EXECUTOR: popen}]"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[1].NAME: duplicate executor name "popen" (also used by EXECUTORS[0])"#],
            ),
            (
                manager("EXECUTORS: [{NAME: a}, {EXECUTOR: popen}]"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0]: missing required key EXECUTOR"],
            ),
            (
                manager("EXECUTORS: [popen]"),
                vec![
                    r#"BUILD_MANAGER[1].EXECUTORS[0]: expected a mapping, got "popen""#,
                    "BUILD_MANAGER[1].EXECUTORS: no usable executor",
                ],
            ),
            (
                manager("EXECUTORS: popen"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS: expected a list, got "popen""#],
            ),
            (
                manager("EXECUTORS: [{EXECUTOR: popen}], EXECUTOR: popen"),
                vec!["BUILD_MANAGER[1].EXECUTOR: cannot be combined with EXECUTORS; list every executor under EXECUTORS"],
            ),
            (
                manager("EXECUTORS: [{EXECUTOR: popen}], EXECUTOR_CONFIG: {}"),
                vec!["BUILD_MANAGER[1].EXECUTOR_CONFIG: cannot be combined with EXECUTORS; move its keys into an EXECUTORS entry"],
            ),
            (
                manager("EXECUTOR_CONFIG: {SETUP_TIME: 3}"),
                vec!["BUILD_MANAGER[1].EXECUTOR_CONFIG: needs EXECUTOR next to it to name the executor kind"],
            ),
            (
                manager("EXECUTORS: []"),
                vec!["BUILD_MANAGER[1].EXECUTORS: no usable executor"],
            ),
            (
                manager("EXECUTORS: [{EXECUTOR: nomad}]"),
                vec!["BUILD_MANAGER[1].EXECUTORS: no usable executor"],
            ),
            (
                manager("EXECUTOR: nomad"),
                vec!["BUILD_MANAGER[1].EXECUTOR: no usable executor"],
            ),
            (
                manager("EXECUTOR: popen, EXECUTOR_CONFIG: [1]"),
                vec![
                    "BUILD_MANAGER[1].EXECUTOR_CONFIG: expected a mapping, got a list",
                    "BUILD_MANAGER[1].EXECUTOR: no usable executor",
                ],
            ),
            (
                manager("ALLOWED_WORKER_COUNT: 0"),
                vec!["BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: must be at least 1, got 0"],
            ),
            (
                manager("ALLOWED_WORKER_COUNT: -2"),
                vec!["BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: must not be negative, got -2"],
            ),
            (
                manager("ALLOWED_WORKER_COUNT: ten"),
                vec![r#"BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: expected an integer, got "ten""#],
            ),
            (
                manager("JOB_REGISTRATION_TIMEOUT: -5"),
                vec!["BUILD_MANAGER[1].JOB_REGISTRATION_TIMEOUT: must not be negative, got -5"],
            ),
            (
                manager("MACHINE_MAX_TIME: '-60'"),
                vec!["BUILD_MANAGER[1].MACHINE_MAX_TIME: must not be negative, got -60"],
            ),
            (
                manager("ORCHESTRATOR_PREFIX: [a]"),
                vec!["BUILD_MANAGER[1].ORCHESTRATOR_PREFIX: expected a string, got a list"],
            ),
            (
                executor("EXECUTOR: popen, SETUP_TIME: abc"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got "abc""#],
            ),
            (
                executor("EXECUTOR: popen, SETUP_TIME: 1.5"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got 1.5"],
            ),
            (
                executor("EXECUTOR: popen, SETUP_TIME: true"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got true"],
            ),
            (
                executor("EXECUTOR: popen, MAX_LIFETIME_S: [1]"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].MAX_LIFETIME_S: expected an integer, got a list"],
            ),
            (
                executor("EXECUTOR: popen, STAGED_ROLLOUT: 1.5"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].STAGED_ROLLOUT: must be between 0 and 1, got 1.5"],
            ),
            (
                executor("EXECUTOR: popen, STAGED_ROLLOUT: -0.25"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].STAGED_ROLLOUT: must be between 0 and 1, got -0.25"],
            ),
            (
                executor("EXECUTOR: popen, STAGED_ROLLOUT: half"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[0].STAGED_ROLLOUT: expected a number, got "half""#],
            ),
            (
                executor("EXECUTOR: popen, NAMESPACE_WHITELIST: acme"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[0].NAMESPACE_WHITELIST: expected a list, got "acme""#],
            ),
            (
                executor("EXECUTOR: popen, SSH_AUTHORIZED_KEYS: [ssh-rsa k, [x], {a: b}]"),
                vec![
                    "BUILD_MANAGER[1].EXECUTORS[0].SSH_AUTHORIZED_KEYS[1]: expected a string, got a list",
                    "BUILD_MANAGER[1].EXECUTORS[0].SSH_AUTHORIZED_KEYS[2]: expected a string, got a mapping",
                ],
            ),
            (
                executor("EXECUTOR: popen, CONTAINER_RUNTIME: rkt"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[0].CONTAINER_RUNTIME: expected "docker", "podman" or "buildah", got "rkt""#],
            ),
            (
                executor("EXECUTOR: popen, DEBUG: 1"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].DEBUG: expected a boolean, got 1"],
            ),
            (
                executor("EXECUTOR: popen, QUAY_PASSWORD: {a: b}"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].QUAY_PASSWORD: expected a string, got a mapping"],
            ),
            (
                executor("EXECUTOR: kubernetes, KUBERNETES_DISTRIBUTION: eks"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[0].KUBERNETES_DISTRIBUTION: expected "basic" or "openshift", got "eks""#],
            ),
            (
                executor("EXECUTOR: kubernetes, IMAGE_PULL_POLICY: always"),
                vec![r#"BUILD_MANAGER[1].EXECUTORS[0].IMAGE_PULL_POLICY: expected "Always", "IfNotPresent" or "Never", got "always""#],
            ),
            (
                executor("EXECUTOR: kubernetes, K8S_API_TLS_CERT: /c.pem"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0]: missing required key K8S_API_TLS_KEY (needed with K8S_API_TLS_CERT)"],
            ),
            (
                executor("EXECUTOR: kubernetes, K8S_API_TIMEOUT: -1"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].K8S_API_TIMEOUT: must not be negative, got -1"],
            ),
            (
                executor("EXECUTOR: ec2"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0]: missing required key EC2_REGION"],
            ),
            (
                executor("EXECUTOR: ec2, EC2_REGION: r, BLOCK_DEVICE_SIZE: 0"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].BLOCK_DEVICE_SIZE: must be at least 1, got 0"],
            ),
            (
                executor("EXECUTOR: ec2, EC2_REGION: r, EC2_VPC_SUBNET_ID: subnet-1"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0]: missing required key EC2_SECURITY_GROUP_IDS (needed with EC2_VPC_SUBNET_ID)"],
            ),
            (
                "BUILD_MANAGER: [ephemeral, {EXECUTOR: ec2, EXECUTOR_CONFIG: {EC2_REGION: [x]}}]".into(),
                vec!["BUILD_MANAGER[1].EXECUTOR_CONFIG.EC2_REGION: expected a string, got a list"],
            ),
            (
                "FEATURE_BUILD_SUPPORT: yes".into(),
                vec![r#"FEATURE_BUILD_SUPPORT: expected a boolean, got "yes""#],
            ),
            (
                "FEATURE_BUILD_SUPPORT: [true]".into(),
                vec!["FEATURE_BUILD_SUPPORT: expected a boolean, got a list"],
            ),
            (
                "SERVER_HOSTNAME: {a: 1}".into(),
                vec!["SERVER_HOSTNAME: expected a string, got a mapping"],
            ),
            (
                "BUILDMAN_HTTP_LISTEN: nope".into(),
                vec![r#"BUILDMAN_HTTP_LISTEN: expected an address like 127.0.0.1:8080, got "nope""#],
            ),
            (
                "BUILDMAN_HTTP_LISTEN: 8080".into(),
                vec!["BUILDMAN_HTTP_LISTEN: expected an address like 127.0.0.1:8080, got 8080"],
            ),
            (
                "BUILDMAN_GRPC_LISTEN: 'localhost:50051'".into(),
                vec![r#"BUILDMAN_GRPC_LISTEN: expected an address like 127.0.0.1:50051, got "localhost:50051""#],
            ),
            (
                "BUILDMAN_PUBLIC_URL: ftp://files.example.com".into(),
                vec![r#"BUILDMAN_PUBLIC_URL: expected a URL starting with http:// or https://, got "ftp://files.example.com""#],
            ),
            (
                "BUILDMAN_DATABASE_URL: 'mysql://root:hunter2@db/quay'".into(),
                vec!["BUILDMAN_DATABASE_URL: expected a URL starting with sqlite:, postgres:// or postgresql://"],
            ),
            (
                "BUILDMAN_GRPC_TLS: {CERT: /c.pem, KEYS: /k.pem}".into(),
                vec!["BUILDMAN_GRPC_TLS: missing required key KEY"],
            ),
            (
                "BUILDMAN_GRPC_TLS: /c.pem".into(),
                vec![r#"BUILDMAN_GRPC_TLS: expected a mapping, got "/c.pem""#],
            ),
            (
                "BUILDMAN_JWT_SIGNING_KEY: {KID: k1}".into(),
                vec!["BUILDMAN_JWT_SIGNING_KEY: missing required key PRIVATE_KEY_PATH"],
            ),
            (
                "BUILDMAN_JWT_TRUSTED_KEYS: [{KID: k2, PUBLIC_KEY_PATH: /a}, {PUBLIC_KEY_PATH: /b}, x]".into(),
                vec![
                    "BUILDMAN_JWT_TRUSTED_KEYS[1]: missing required key KID",
                    r#"BUILDMAN_JWT_TRUSTED_KEYS[2]: expected a mapping, got "x""#,
                ],
            ),
            (
                "BUILDMAN_JWT_SIGNING_KEY: {KID: k1, PRIVATE_KEY_PATH: /p}\n\
                 BUILDMAN_JWT_TRUSTED_KEYS: [{KID: k2, PUBLIC_KEY_PATH: /a}, {KID: k1, PUBLIC_KEY_PATH: /b}, \
                 {KID: k2, PUBLIC_KEY_PATH: /c}]"
                    .into(),
                vec![
                    r#"BUILDMAN_JWT_TRUSTED_KEYS[1].KID: duplicate key id "k1" (also used by BUILDMAN_JWT_SIGNING_KEY)"#,
                    r#"BUILDMAN_JWT_TRUSTED_KEYS[2].KID: duplicate key id "k2" (also used by BUILDMAN_JWT_TRUSTED_KEYS[0])"#,
                ],
            ),
            (
                "BUILDMAN_API_TOKENS: [0123456789abcdef, short, [x]]".into(),
                vec![
                    "BUILDMAN_API_TOKENS[2]: expected a string, got a list",
                    "BUILDMAN_API_TOKENS[1]: a token must be at least 16 characters long, got 5",
                ],
            ),
            (
                "BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: 0".into(),
                vec!["BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: must be at least 1, got 0"],
            ),
            (
                "BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: 5000000000".into(),
                vec!["BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: must be at most 4294967295, got 5000000000"],
            ),
            (
                "a: &x {b: 1}\nc: {<<: 5}".into(),
                vec!["expected a mapping or list of mappings for merging, but found scalar"],
            ),
        ];
        let mut failures = Vec::new();
        for (yaml, expected) in &cases {
            let got = errors(yaml);
            if got != *expected {
                failures.push(format!(
                    "{yaml}\n  expected {expected:?}\n  got      {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let yaml = "FEATURE_BUILD_SUPPORT: maybe
BUILDMAN_HTTP_LISTEN: nope
BUILD_MANAGER:
- ephemeral
- ALLOWED_WORKER_COUNT: 0
  ORCHESTRATOR: {REDIS_HOST: h, MEM_X: 1}
  EXECUTORS:
  - {EXECUTOR: popen, SETUP_TIME: abc, FOO: 1}
  - {EXECUTOR: kubernetes, NAME: popen, STAGED_ROLLOUT: 2}
";
        assert_eq!(
            errors(yaml),
            vec![
                r#"FEATURE_BUILD_SUPPORT: expected a boolean, got "maybe""#,
                "BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: must be at least 1, got 0",
                "BUILD_MANAGER[1].ORCHESTRATOR: mixes REDIS_* and MEM_* keys; configure one orchestrator",
                r#"BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got "abc""#,
                "BUILD_MANAGER[1].EXECUTORS[1].STAGED_ROLLOUT: must be between 0 and 1, got 2",
                r#"BUILD_MANAGER[1].EXECUTORS[1].NAME: duplicate executor name "popen" (also used by EXECUTORS[0])"#,
                r#"BUILDMAN_HTTP_LISTEN: expected an address like 127.0.0.1:8080, got "nope""#,
            ]
        );
    }

    #[test]
    fn every_warning_message_is_exact() {
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                "DB_URI: postgresql://x\nPREFERRED_URL_SCHEME: https\nFOO: 1".into(),
                vec![],
            ),
            (
                executor("EXECUTOR: popen, FOO: 1"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].FOO: unknown key, ignored"],
            ),
            (
                executor("EXECUTOR: kubernetes, BUILDAH_ISOLATION: oci"),
                vec!["BUILD_MANAGER[1].EXECUTORS[0].BUILDAH_ISOLATION: unknown key, ignored"],
            ),
            (
                manager("EXECUTORS: [{EXECUTOR: popen}, {EXECUTOR: nomad, FOO: 1}]"),
                vec![
                    r#"BUILD_MANAGER[1].EXECUTORS[1].EXECUTOR: unknown executor kind "nomad", skipped"#,
                ],
            ),
            (
                manager("EXECUTOR: popen, EXECUTOR_CONFIG: {EXECUTOR: popen, BAR: 2}"),
                vec![
                    "BUILD_MANAGER[1].EXECUTOR_CONFIG.EXECUTOR: unknown key, ignored",
                    "BUILD_MANAGER[1].EXECUTOR_CONFIG.BAR: unknown key, ignored",
                ],
            ),
            (
                manager("ALLOWED_WORKER_COUNT: 2, POOL_SIZE: 3"),
                vec!["BUILD_MANAGER[1].POOL_SIZE: unknown key, ignored"],
            ),
            (
                manager("ORCHESTRATOR: {REDIS_HOST: h, ETCD_HOST: e, 5: x}"),
                vec![
                    "BUILD_MANAGER[1].ORCHESTRATOR.ETCD_HOST: unknown key, ignored",
                    "BUILD_MANAGER[1].ORCHESTRATOR.5: unknown key, ignored",
                ],
            ),
            (
                manager("ORCHESTRATOR: {MEM_CONFIG: x, MEM_OTHER: 1}"),
                vec![],
            ),
            (
                manager("ORCHESTRATOR_PREFIX: buildman"),
                vec![
                    r#"BUILD_MANAGER[1].ORCHESTRATOR_PREFIX: should end with "/"; using "buildman/""#,
                ],
            ),
            (
                "BUILD_MANAGER: [ephemeral, {}, extra]".into(),
                vec!["BUILD_MANAGER[2]: unexpected list element, ignored"],
            ),
            (
                "BUILDMAN_GRPC_TLS: {CERT: /c, KEY: /k, CA: /ca}".into(),
                vec!["BUILDMAN_GRPC_TLS.CA: unknown key, ignored"],
            ),
            (
                "BUILDMAN_JWT_SIGNING_KEY: {KID: a, PRIVATE_KEY_PATH: /p, ALG: RS256}".into(),
                vec!["BUILDMAN_JWT_SIGNING_KEY.ALG: unknown key, ignored"],
            ),
            (
                "BUILDMAN_JWT_TRUSTED_KEYS: [{KID: a, PUBLIC_KEY_PATH: /p, X: 1}]".into(),
                vec!["BUILDMAN_JWT_TRUSTED_KEYS[0].X: unknown key, ignored"],
            ),
        ];
        let mut failures = Vec::new();
        for (yaml, expected) in &cases {
            let got = warnings(yaml);
            if got != *expected {
                failures.push(format!(
                    "{yaml}\n  expected {expected:?}\n  got      {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn quay_sample_config_parses() {
        let loaded = load(SAMPLE);
        assert_eq!(loaded.warnings, vec![]);
        let config = loaded.config;
        assert!(config.feature_build_support);
        assert_eq!(config.server_hostname, "quay.example.com");
        assert_eq!(config.buildman_hostname, None);
        assert_eq!(config.controller_port, 8686);
        let bm = &config.build_manager;
        assert_eq!(bm.lifecycle, Lifecycle::Ephemeral);
        assert_eq!(bm.allowed_worker_count, 1);
        assert_eq!(bm.orchestrator_prefix, "buildman/production/");
        assert_eq!(bm.job_registration_timeout, Duration::from_secs(3600));
        assert_eq!(bm.machine_max_time, Duration::from_secs(7200));
        let OrchestratorConfig::Redis(redis) = &bm.orchestrator else {
            panic!("expected redis, got {:?}", bm.orchestrator);
        };
        assert_eq!(redis.host, "quay-redis-host");
        assert_eq!(redis.port, 6379);
        assert_eq!(redis.password.as_deref(), Some("quay-redis-password"));
        assert!(redis.ssl);
        assert!(!redis.skip_keyspace_event_setup);
        assert_eq!(redis.db, 0);
        assert!(redis.extra.is_empty());

        let [k8s, ec2] = bm.executors.as_slice() else {
            panic!("expected two executors: {:?}", bm.executors);
        };
        assert_eq!(
            (k8s.kind, k8s.name.as_str()),
            (ExecutorKind::Kubernetes, "kubernetes")
        );
        assert_eq!(k8s.setup_time, Duration::from_secs(180));
        assert_eq!(k8s.minimum_retry_threshold, 0);
        assert_eq!(k8s.container_runtime.as_deref(), Some("podman"));
        assert_eq!(k8s.volume_size.as_deref(), Some("8G"));
        assert_eq!(k8s.quay_username.as_deref(), Some("*****"));
        assert_eq!(k8s.quay_password.as_deref(), Some("*****"));
        assert_eq!(
            k8s.worker_image.as_deref(),
            Some("<registry>/quay-quay-builder")
        );
        assert_eq!(k8s.worker_tag.as_deref(), Some("some_tag"));
        assert_eq!(
            k8s.ssh_authorized_keys,
            [
                "ssh-rsa 12345 someuser@email.com",
                "ssh-rsa 67890 someuser2@email.com"
            ]
        );
        assert_eq!((k8s.max_lifetime_s, k8s.debug), (10800, false));
        assert_eq!(
            (k8s.namespace_whitelist.as_ref(), k8s.staged_rollout),
            (None, None)
        );
        assert_eq!(k8s.http_proxy, None);
        let ExecutorSpecific::Kubernetes(kc) = &k8s.specific else {
            panic!("expected kubernetes keys: {:?}", k8s.specific);
        };
        assert_eq!(kc.k8s_api_server, "api.openshift.somehost.org:6443");
        assert_eq!(kc.builder_namespace, "builder");
        assert_eq!(
            kc.k8s_api_tls_ca.as_deref(),
            Some(std::path::Path::new(
                "/conf/stack/extra_ca_certs/build_cluster.crt"
            ))
        );
        assert_eq!(
            kc.kubernetes_distribution,
            KubernetesDistribution::Openshift
        );
        assert_eq!(kc.container_memory_limits, "5120Mi");
        assert_eq!(kc.container_cpu_limits, "1000m");
        assert_eq!(kc.container_memory_request, "3968Mi");
        assert_eq!(kc.container_cpu_request, "500m");
        assert_eq!(
            kc.node_selector_label_key.as_deref(),
            Some("beta.kubernetes.io/instance-type")
        );
        assert_eq!(
            kc.node_selector_label_value.as_deref(),
            Some("n1-standard-4")
        );
        assert_eq!(kc.service_account_name.as_deref(), Some("*****"));
        assert_eq!(kc.service_account_token.as_deref(), Some("*****"));
        assert_eq!(
            kc.builder_vm_container_image.as_deref(),
            Some("<registry>/quay-quay-builder-qemu-rhcos:v3.4.0")
        );
        // Defaults for the keys the sample leaves out.
        assert_eq!(
            (kc.k8s_api_tls_cert.as_ref(), kc.k8s_api_tls_key.as_ref()),
            (None, None)
        );
        assert!(kc.verify_tls);
        assert_eq!(kc.k8s_api_timeout, Duration::from_secs(20));
        assert_eq!(kc.builder_container_image, None);
        assert_eq!(kc.image_pull_secret_name, "builder");
        assert_eq!(kc.image_pull_policy, "Always");
        assert_eq!(kc.dns_policy, "Default");
        assert_eq!(kc.vm_memory_limit, "4G");
        assert_eq!(kc.maximum_job_time, Duration::from_secs(7200));
        assert_eq!(kc.retention_after_finished, Duration::from_secs(120));
        assert!(kc.extra_ca_certs.is_empty());

        assert_eq!((ec2.kind, ec2.name.as_str()), (ExecutorKind::Ec2, "ec2"));
        assert_eq!(ec2.setup_time, Duration::from_secs(180));
        assert_eq!(ec2.minimum_retry_threshold, 1);
        assert_eq!(
            ec2.worker_image.as_deref(),
            Some("quay.io/quay/quay-builder")
        );
        assert_eq!(ec2.worker_tag.as_deref(), Some("latest"));
        assert_eq!(ec2.container_runtime, None);
        let ExecutorSpecific::Ec2(e) = &ec2.specific else {
            panic!("expected ec2 keys: {:?}", ec2.specific);
        };
        assert_eq!(e.ec2_region, "us-east-1");
        assert_eq!(e.coreos_ami.as_deref(), Some("ami-02545325b519192df"));
        assert_eq!(e.coreos_channel, "stable");
        assert_eq!(e.aws_access_key.as_deref(), Some("*****"));
        assert_eq!(e.aws_secret_key.as_deref(), Some("*****"));
        assert_eq!(e.ec2_instance_type.as_deref(), Some("t2.large"));
        assert_eq!(e.ec2_vpc_subnet_id.as_deref(), Some("subnet-xxxxx"));
        assert_eq!(e.ec2_security_group_ids, ["sg-xxxxx"]);
        assert_eq!(e.ec2_key_name.as_deref(), Some("key-name"));
        assert_eq!(e.block_device_size, 58);

        // None of buildman's own keys are set.
        assert_eq!(config.data_dir, None);
        assert_eq!((config.http_listen, config.grpc_listen), (None, None));
        assert_eq!((config.public_url, config.database_url), (None, None));
        assert_eq!((config.grpc_tls, config.signing_key), (None, None));
        assert!(config.trusted_keys.is_empty() && config.api_tokens.is_empty());
        assert_eq!(
            (config.max_queued_builds_per_namespace, config.registry),
            (None, None)
        );
    }

    #[test]
    fn quoted_numbers_and_booleans_are_accepted() {
        let yaml = format!(
            "FEATURE_BUILD_SUPPORT: 'true'\n{}",
            manager(
                "ALLOWED_WORKER_COUNT: '3', JOB_REGISTRATION_TIMEOUT: ' 45 ', \
                 ORCHESTRATOR: {REDIS_HOST: h, REDIS_PORT: '6380', REDIS_SSL: 'False', REDIS_DB: '2'}, \
                 EXECUTORS: [{EXECUTOR: popen, SETUP_TIME: '30', STAGED_ROLLOUT: '0.5', DEBUG: TRUE, \
                 INSECURE: 'true', VOLUME_SIZE: 8}]"
            )
        );
        let config = load(&yaml).config;
        assert!(config.feature_build_support);
        let bm = config.build_manager;
        assert_eq!(bm.allowed_worker_count, 3);
        assert_eq!(bm.job_registration_timeout, Duration::from_secs(45));
        let OrchestratorConfig::Redis(redis) = bm.orchestrator else {
            panic!("expected redis");
        };
        assert_eq!((redis.port, redis.ssl, redis.db), (6380, false, 2));
        let e = &bm.executors[0];
        assert_eq!(e.setup_time, Duration::from_secs(30));
        assert_eq!(e.staged_rollout, Some(0.5));
        assert!(e.debug);
        assert_eq!(e.volume_size.as_deref(), Some("8"));
        assert_eq!(
            e.specific,
            ExecutorSpecific::Popen(PopenConfig {
                insecure: true,
                ..PopenConfig::default()
            })
        );
    }

    #[test]
    fn defaults_without_build_manager_and_embedded() {
        let config = load("SERVER_HOSTNAME: quay.io").config;
        assert!(!config.feature_build_support, "Quay's default is off");
        assert_eq!(config.build_manager, BuildManagerConfig::default());
        let bm = &config.build_manager;
        assert_eq!(bm.lifecycle, Lifecycle::Ephemeral);
        assert_eq!(bm.allowed_worker_count, 1);
        assert_eq!(bm.orchestrator, OrchestratorConfig::Memory);
        assert_eq!(bm.job_registration_timeout, Duration::from_secs(30));
        let [popen] = bm.executors.as_slice() else {
            panic!("one default executor expected");
        };
        assert_eq!(
            (popen.kind, popen.name.as_str()),
            (ExecutorKind::Popen, "popen")
        );
        assert_eq!(popen.setup_time, Duration::from_secs(500));
        assert_eq!(
            popen.specific,
            ExecutorSpecific::Popen(PopenConfig {
                builder_binary_location: None,
                buildah_isolation: "chroot".into(),
                insecure: false,
            })
        );

        let embedded = Config::embedded();
        assert!(embedded.feature_build_support);
        assert_eq!(embedded.server_hostname, "localhost:8080");
        assert_eq!(embedded.controller_port, 8686);
        assert_eq!(embedded.build_manager, BuildManagerConfig::default());
        assert_eq!(
            Config {
                feature_build_support: true,
                ..load("{}").config
            },
            embedded
        );
        // An empty manager mapping, ORCHESTRATOR: {} and MEM_* keys all mean the defaults.
        for yaml in [
            "BUILD_MANAGER: [ephemeral]",
            "BUILD_MANAGER: [ephemeral, ]",
            "BUILD_MANAGER: [ephemeral, {ORCHESTRATOR: {}}]",
            "BUILD_MANAGER: [ephemeral, {ORCHESTRATOR: {MEM_CONFIG: 1}}]",
        ] {
            assert_eq!(
                load(yaml).config.build_manager,
                BuildManagerConfig::default(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn external_lifecycle_needs_no_executor() {
        let bm = load("BUILD_MANAGER: [external, {EXECUTORS: []}]")
            .config
            .build_manager;
        assert_eq!(bm.lifecycle, Lifecycle::External);
        assert!(bm.executors.is_empty());
    }

    #[test]
    fn old_executor_form() {
        let yaml = manager(
            "EXECUTOR: kubernetesPodman, EXECUTOR_CONFIG: {SETUP_TIME: 60, \
             BUILDER_CONTAINER_IMAGE: quay.io/quay/quay-builder:v1, KUBERNETES_DISTRIBUTION: OpenShift}",
        );
        let loaded = load(&yaml);
        assert_eq!(loaded.warnings, vec![]);
        let [e] = loaded.config.build_manager.executors.as_slice() else {
            panic!("one executor expected");
        };
        assert_eq!(
            (e.kind, e.name.as_str()),
            (ExecutorKind::KubernetesPodman, "kubernetesPodman")
        );
        assert_eq!(e.setup_time, Duration::from_secs(60));
        let ExecutorSpecific::Kubernetes(k) = &e.specific else {
            panic!("kubernetes keys expected");
        };
        assert_eq!(
            k.builder_container_image.as_deref(),
            Some("quay.io/quay/quay-builder:v1")
        );
        assert_eq!(k.kubernetes_distribution, KubernetesDistribution::Openshift);

        // EXECUTOR alone: every key at its default.
        let bm = load(&manager(
            "EXECUTOR: ec2, EXECUTOR_CONFIG: {EC2_REGION: eu-west-1}",
        ))
        .config
        .build_manager;
        let mut expected = ExecutorConfig::with_defaults(ExecutorKind::Ec2);
        expected.specific = ExecutorSpecific::Ec2(Ec2Config {
            ec2_region: "eu-west-1".into(),
            ..Ec2Config::default()
        });
        assert_eq!(bm.executors, vec![expected]);
        let bm = load(&manager("EXECUTOR: popen")).config.build_manager;
        assert_eq!(bm.executors, vec![ExecutorConfig::default()]);
    }

    #[test]
    fn unknown_executor_kind_is_skipped() {
        let loaded = load(&manager(
            "EXECUTORS: [{EXECUTOR: nomad, NAME: n}, {EXECUTOR: popen, NAME: local}]",
        ));
        let names: Vec<_> = (loaded.config.build_manager.executors.iter())
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["local"]);
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn redis_extra_keys_are_lower_cased() {
        let bm = load(&manager(
            "ORCHESTRATOR: {REDIS_HOST: r, REDIS_CA_CERT: /ca.pem, REDIS_CLIENT_THREADS: 4, \
             REDIS_CANCELLER_ONLY: true, REDIS_PASSWORD: ''}",
        ))
        .config
        .build_manager;
        let OrchestratorConfig::Redis(redis) = bm.orchestrator else {
            panic!("redis expected");
        };
        assert_eq!(redis.password, None);
        let extra: Vec<(&str, &str)> = (redis.extra.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            extra,
            [
                ("ca_cert", "/ca.pem"),
                ("canceller_only", "true"),
                ("client_threads", "4")
            ]
        );
    }

    #[test]
    fn buildman_keys_parse() {
        let yaml = "
BUILDMAN_DATA_DIR: /var/lib/buildman
BUILDMAN_HTTP_LISTEN: 127.0.0.1:8080
BUILDMAN_GRPC_LISTEN: '[::]:50051'
BUILDMAN_PUBLIC_URL: https://buildman.example.com/
BUILDMAN_GRPC_TLS: {CERT: /tls/cert.pem, KEY: /tls/key.pem}
BUILDMAN_DATABASE_URL: postgresql://buildman@db/buildman
BUILDMAN_JWT_SIGNING_KEY: {KID: k2, PRIVATE_KEY_PATH: /keys/k2.pem}
BUILDMAN_JWT_TRUSTED_KEYS:
- {KID: k1, PUBLIC_KEY_PATH: /keys/k1.pub}
BUILDMAN_API_TOKENS: [0123456789abcdef]
BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: 20
BUILDMAN_REGISTRY: registry.example.com:5000
BUILDMAN_HOSTNAME: buildman.example.com:443
";
        let config = load(yaml).config;
        assert_eq!(config.data_dir, Some(PathBuf::from("/var/lib/buildman")));
        assert_eq!(config.http_listen, "127.0.0.1:8080".parse().ok());
        assert_eq!(config.grpc_listen, "[::]:50051".parse().ok());
        assert_eq!(
            config.public_url.as_deref(),
            Some("https://buildman.example.com/")
        );
        assert_eq!(
            config.grpc_tls,
            Some(TlsConfig {
                cert: "/tls/cert.pem".into(),
                key: "/tls/key.pem".into()
            })
        );
        assert_eq!(
            config.database_url.as_deref(),
            Some("postgresql://buildman@db/buildman")
        );
        assert_eq!(
            config.signing_key,
            Some(SigningKeyConfig {
                kid: "k2".into(),
                private_key_path: "/keys/k2.pem".into()
            })
        );
        assert_eq!(
            config.trusted_keys,
            [TrustedKeyConfig {
                kid: "k1".into(),
                public_key_path: "/keys/k1.pub".into()
            }]
        );
        assert_eq!(config.api_tokens, ["0123456789abcdef"]);
        assert_eq!(config.max_queued_builds_per_namespace, Some(20));
        assert_eq!(
            config.registry.as_deref(),
            Some("registry.example.com:5000")
        );
        assert_eq!(
            config.buildman_hostname.as_deref(),
            Some("buildman.example.com:443")
        );
        assert_eq!(load("BUILDMAN_REGISTRY: ''").config.registry, None);
        assert_eq!(
            load("BUILDMAN_DATABASE_URL: 'sqlite:///tmp/b.db'")
                .config
                .database_url
                .as_deref(),
            Some("sqlite:///tmp/b.db")
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let yaml = format!(
            "BUILDMAN_DATABASE_URL: postgres://u:xyzzy-db@h/d\n\
             BUILDMAN_API_TOKENS: [xyzzy-token-0123456789]\n{}",
            manager(
                "ORCHESTRATOR: {REDIS_HOST: h, REDIS_PASSWORD: xyzzy-redis}, EXECUTORS: [\
                 {EXECUTOR: kubernetes, QUAY_PASSWORD: xyzzy-quay, SERVICE_ACCOUNT_TOKEN: xyzzy-sa}, \
                 {EXECUTOR: ec2, EC2_REGION: r, AWS_SECRET_KEY: xyzzy-aws}]"
            )
        );
        let config = load(&yaml).config;
        let debug = format!("{config:?}");
        assert!(!debug.contains("xyzzy"), "{debug}");
        assert!(debug.contains("password: Some(<redacted>)"), "{debug}");
        assert!(debug.contains("api_tokens: [<redacted>; 1]"), "{debug}");
        assert!(debug.contains("host: \"h\""), "{debug}");
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains("xyzzy"), "{pretty}");
    }

    #[test]
    fn allows_namespace_follows_quay() {
        let bucket = |ns: &str| Sha256::digest(ns.as_bytes())[31];
        let namespaces: Vec<String> = (0..64).map(|i| format!("org{i}")).collect();
        let executor = |whitelist: Option<&[&str]>, rollout: Option<f64>| ExecutorConfig {
            namespace_whitelist: whitelist.map(|w| w.iter().map(|s| s.to_string()).collect()),
            staged_rollout: rollout,
            ..ExecutorConfig::default()
        };

        // No restriction: everyone.
        let open = executor(None, None);
        assert!(namespaces.iter().all(|ns| open.allows_namespace(ns)));

        // Whitelist only: exactly its members.
        let listed = executor(Some(&["org1", "org2"]), None);
        assert!(listed.allows_namespace("org1") && listed.allows_namespace("org2"));
        assert!(!listed.allows_namespace("org3"));

        // Staged rollout: the hash bucket decides, computed here by hand.
        let half = executor(None, Some(0.5));
        let allowed: Vec<bool> = namespaces.iter().map(|ns| bucket(ns) < 128).collect();
        assert!(allowed.contains(&true) && allowed.contains(&false));
        for (ns, expected) in namespaces.iter().zip(&allowed) {
            assert_eq!(
                half.allows_namespace(ns),
                *expected,
                "{ns}: bucket {}",
                bucket(ns)
            );
        }
        assert!(
            namespaces
                .iter()
                .all(|ns| !executor(None, Some(0.0)).allows_namespace(ns))
        );
        assert!(
            namespaces
                .iter()
                .all(|ns| executor(None, Some(1.0)).allows_namespace(ns))
        );

        // Both: whitelisted namespaces always, the others by bucket (Quay's rule).
        let denied = (namespaces.iter())
            .find(|ns| bucket(ns) >= 128)
            .map(String::as_str)
            .unwrap_or_default();
        let both = executor(Some(&[denied]), Some(0.5));
        assert!(both.allows_namespace(denied));
        for (ns, expected) in namespaces.iter().zip(&allowed) {
            assert_eq!(both.allows_namespace(ns), *expected || ns == denied, "{ns}");
        }
    }

    #[test]
    fn worker_server_address_and_audience() {
        let with = |server: &str, manager: Option<&str>| Config {
            server_hostname: server.into(),
            buildman_hostname: manager.map(Into::into),
            ..Config::embedded()
        };
        let cases = [
            ("quay.example.com", None, None, "quay.example.com"),
            (
                "quay.example.com",
                Some("quay.example.com"),
                Some("quay.example.com:55443"),
                "quay.example.com",
            ),
            (
                "quay.example.com:8443",
                Some("QUAY.example.com:50051"),
                Some("QUAY.example.com:55443"),
                "QUAY.example.com:50051",
            ),
            (
                "quay.example.com",
                Some("buildman.example.com:8443"),
                Some("buildman.example.com:8443"),
                "buildman.example.com:8443",
            ),
            ("[::1]:8080", Some("[::1]"), Some("[::1]:55443"), "[::1]"),
        ];
        for (server, manager, address, audience) in cases {
            let config = with(server, manager);
            assert_eq!(
                config.worker_server_address().as_deref(),
                address,
                "{server} {manager:?}"
            );
            assert_eq!(config.token_audience(), audience);
        }
    }

    #[test]
    fn environment_overrides() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                (vars.iter())
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let mut config = Config::embedded();
        config.apply_env(env(&[]));
        assert_eq!(config, Config::embedded());

        config.apply_env(env(&[
            ("BUILDMAN_HOSTNAME", "bm.example.com"),
            ("BUILDMAN_CONTROLLER_PORT", "9090"),
        ]));
        assert_eq!(config.buildman_hostname.as_deref(), Some("bm.example.com"));
        assert_eq!(config.controller_port, 9090);

        let errors = config
            .try_apply_env(env(&[("BUILDMAN_CONTROLLER_PORT", "http")]))
            .err()
            .unwrap_or_default();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [r#"BUILDMAN_CONTROLLER_PORT: expected a port number, got "http""#]
        );
        assert_eq!(
            config.controller_port, 9090,
            "an invalid value is not applied"
        );
        config.apply_env(env(&[("BUILDMAN_HOSTNAME", "")]));
        assert_eq!(config.buildman_hostname.as_deref(), Some("bm.example.com"));
    }

    #[test]
    fn diagnostic_display() {
        let d = |path: &str| Diagnostic {
            path: path.into(),
            message: "broken".into(),
        };
        assert_eq!(d("").to_string(), "broken");
        assert_eq!(d("A.B").to_string(), "A.B: broken");
    }

    #[test]
    fn bench_executor() {
        let bm = load(&executor(
            "EXECUTOR: bench, BENCH_CALLBACK_URL: 'http://127.0.0.1:9000/start', SETUP_TIME: 60",
        ))
        .config
        .build_manager;
        let mut expected = ExecutorConfig::with_defaults(ExecutorKind::Bench);
        expected.setup_time = Duration::from_secs(60);
        expected.specific = ExecutorSpecific::Bench(BenchConfig {
            callback_url: "http://127.0.0.1:9000/start".into(),
        });
        assert_eq!(bm.executors, vec![expected]);
        assert_eq!(
            errors(&executor("EXECUTOR: bench")),
            ["BUILD_MANAGER[1].EXECUTORS[0]: missing required key BENCH_CALLBACK_URL"]
        );
        assert_eq!(
            errors(&executor("EXECUTOR: bench, BENCH_CALLBACK_URL: 'ftp://x'")),
            [
                r#"BUILD_MANAGER[1].EXECUTORS[0].BENCH_CALLBACK_URL: expected a URL starting with http:// or https://, got "ftp://x""#
            ]
        );
        // Another kind does not know the key.
        assert_eq!(
            warnings(&executor("EXECUTOR: popen, BENCH_CALLBACK_URL: 'http://x'")),
            ["BUILD_MANAGER[1].EXECUTORS[0].BENCH_CALLBACK_URL: unknown key, ignored"]
        );
    }

    #[test]
    fn executor_kinds_round_trip() {
        for kind in ExecutorKind::ALL {
            assert_eq!(ExecutorKind::from_name(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(ExecutorKind::from_name("Kubernetes"), None);
    }
}
