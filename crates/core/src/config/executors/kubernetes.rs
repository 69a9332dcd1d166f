//! The kubernetes and kubernetesPodman executors: a Job that boots a VM running the worker
//! (kubernetes) or runs the worker container directly (kubernetesPodman).

use std::path::PathBuf;
use std::time::Duration;

use super::require_together;
use crate::config::diagnostics::Section;
use crate::config::redact::debug_redacting;

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
    /// K8S_API_SERVER: `host:port` of the API (a URL with a scheme is taken as given). Unset:
    /// the in-cluster configuration when the manager runs in a pod and no other connection
    /// key is set, else Quay's default `localhost:8080`.
    pub k8s_api_server: Option<String>,
    /// K8S_KUBECONFIG: a kubeconfig file (its current context) instead of the K8S_API_* keys
    /// (buildman's key).
    pub k8s_kubeconfig: Option<PathBuf>,
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
    /// EXTRA_CA_CERTS: files (relative ones from the config file's directory, as Quay reads
    /// them from its config directory) whose certificates the worker trusts in addition.
    pub extra_ca_certs: Vec<String>,
}

debug_redacting!(KubernetesConfig {
    k8s_api_server, k8s_kubeconfig, builder_namespace, k8s_api_tls_cert, k8s_api_tls_key, k8s_api_tls_ca,
    verify_tls, k8s_api_timeout, builder_vm_container_image, builder_container_image,
    kubernetes_distribution, container_memory_request, container_memory_limits,
    container_cpu_limits, container_cpu_request, node_selector_label_key,
    node_selector_label_value, service_account_name, image_pull_secret_name, image_pull_policy,
    dns_policy, vm_memory_limit, maximum_job_time, retention_after_finished, extra_ca_certs,
} secret { service_account_token });

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            k8s_api_server: None,
            k8s_kubeconfig: None,
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

pub(super) fn parse_kubernetes(s: &mut Section, d: KubernetesConfig) -> KubernetesConfig {
    let config = KubernetesConfig {
        k8s_api_server: s.string("K8S_API_SERVER").or(d.k8s_api_server),
        k8s_kubeconfig: s.path("K8S_KUBECONFIG"),
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
    if config.k8s_kubeconfig.is_some() {
        let connection = [
            ("K8S_API_SERVER", config.k8s_api_server.is_some()),
            (
                "SERVICE_ACCOUNT_TOKEN",
                config.service_account_token.is_some(),
            ),
            ("K8S_API_TLS_CERT", cert),
            ("K8S_API_TLS_KEY", key),
            ("K8S_API_TLS_CA", config.k8s_api_tls_ca.is_some()),
        ];
        for (other, set) in connection {
            if set {
                s.r.error(
                    &s.path,
                    format!(
                        "K8S_KUBECONFIG cannot be combined with {other}: the kubeconfig names the \
                         API server and the credentials; remove one of them"
                    ),
                );
            }
        }
    }
    config
}
