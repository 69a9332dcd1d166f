//! The Job a worker runs in, as Quay's executors write it, built from k8s-openapi's types:
//! `kubernetes` runs BUILDER_VM_CONTAINER_IMAGE (a VM booted from the Ignition document in
//! USERDATA), `kubernetesPodman` runs BUILDER_CONTAINER_IMAGE with the worker's environment.
//!
//! The Job holds secrets (the registration token; USERDATA also the registry password):
//! never log it or put it in an error.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{KubernetesSettings, Variant};
use crate::StartRequest;
use crate::ignition::WorkerMachine;
use buildman_core::config::KubernetesDistribution;

/// The labels every worker Job carries; a Job with all four is a worker (Quay's selector).
pub const WORKER_SELECTOR: &str = "build,time,manager,quay-sha";
/// The `quay-sha` label: Quay writes its git commit; this is buildman's version.
pub const RELEASE_LABEL: &str = concat!("buildman-", env!("CARGO_PKG_VERSION"));
/// Where kubernetesPodman's worker finds the CA bundle (Quay's path; the worker writes it).
pub const CA_BUNDLE_PATH: &str = "/certs/cacert.crt";
/// The podman socket quay-builder's image starts (Quay passes it as DOCKER_HOST).
pub const PODMAN_SOCKET: &str = "unix:///tmp/podman-run-1000/podman/podman.sock";
/// BUILDER_VM_CONTAINER_IMAGE when unset (Quay's).
pub const DEFAULT_VM_IMAGE: &str = "quay.io/quay/quay-builder-qemu-fedoracoreos:stable";
/// BUILDER_CONTAINER_IMAGE when unset (Quay's).
pub const DEFAULT_PODMAN_IMAGE: &str = "quay.io/projectquay/quay-builder:latest";
/// WORKER_IMAGE / WORKER_TAG in the VM when unset.
pub const DEFAULT_WORKER_IMAGE: &str = "quay.io/projectquay/quay-builder";
pub const DEFAULT_WORKER_TAG: &str = "latest";
/// SERVICE_ACCOUNT_NAME when unset (Quay's; openshift only).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "quay-builder-sa";
/// NODE_SELECTOR_LABEL_KEY when unset (Quay's; openshift only).
pub const DEFAULT_NODE_SELECTOR_KEY: &str = "beta.kubernetes.io/instance-type";
/// The service-account token directory every pod gets, masked on basic distributions.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const SECRETS_MASK: &str = "secrets-mask";

/// The Job for `request`; `time` is the `time` label (`%Y-%m-%d-%H`, local time, as Quay's).
pub fn worker_job(settings: &KubernetesSettings, request: &StartRequest, time: &str) -> Job {
    let k = &settings.kubernetes;
    let labels = labels(request, time);
    let spec = JobSpec {
        active_deadline_seconds: Some(seconds(k.maximum_job_time)),
        backoff_limit: Some(1),
        // With DEBUG a finished Job stays for inspection (Quay's rule).
        ttl_seconds_after_finished: (!settings.executor.debug)
            .then(|| i32::try_from(seconds(k.retention_after_finished)).unwrap_or(i32::MAX)),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            }),
            spec: Some(pod_spec(settings, request)),
        },
        ..JobSpec::default()
    };
    Job {
        metadata: ObjectMeta {
            namespace: Some(k.builder_namespace.clone()),
            generate_name: Some(format!("{}-", request.build_id)),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn labels(request: &StartRequest, time: &str) -> BTreeMap<String, String> {
    [
        ("build", request.build_id.to_string()),
        ("time", time.to_string()),
        ("manager", request.manager_id.clone()),
        ("quay-sha", RELEASE_LABEL.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn pod_spec(settings: &KubernetesSettings, request: &StartRequest) -> PodSpec {
    let k = &settings.kubernetes;
    let mut spec = PodSpec {
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: k.image_pull_secret_name.clone(),
        }]),
        restart_policy: Some("Never".into()),
        dns_policy: Some(k.dns_policy.clone()),
        containers: vec![container(settings, request)],
        ..PodSpec::default()
    };
    match k.kubernetes_distribution {
        KubernetesDistribution::Openshift => {
            spec.automount_service_account_token = Some(false);
            // Quay sets the older field name; the API fills serviceAccountName from it.
            spec.service_account = Some(
                (k.service_account_name.as_deref())
                    .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
                    .to_string(),
            );
            spec.enable_service_links = Some(false);
            if let Some(value) = k.node_selector_label_value.as_deref()
                && !value.trim().is_empty()
            {
                let key =
                    (k.node_selector_label_key.as_deref()).unwrap_or(DEFAULT_NODE_SELECTOR_KEY);
                spec.node_selector = Some(BTreeMap::from([(key.to_string(), value.to_string())]));
            }
        }
        KubernetesDistribution::Basic => {
            // No pod-level switch hides the namespace's service-account token everywhere,
            // so an in-memory volume is mounted over it.
            spec.volumes = Some(vec![Volume {
                name: SECRETS_MASK.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: None,
                }),
                ..Volume::default()
            }]);
        }
    }
    spec
}

fn container(settings: &KubernetesSettings, request: &StartRequest) -> Container {
    let k = &settings.kubernetes;
    let (image, env, security_context) = match settings.variant {
        Variant::Vm => (
            k.builder_vm_container_image
                .as_deref()
                .unwrap_or(DEFAULT_VM_IMAGE),
            vm_env(settings, request),
            // The VM needs /dev/kvm.
            Some(SecurityContext {
                privileged: Some(true),
                ..SecurityContext::default()
            }),
        ),
        // Quay runs the worker container unprivileged; the image runs podman rootless.
        Variant::Podman => (
            k.builder_container_image
                .as_deref()
                .unwrap_or(DEFAULT_PODMAN_IMAGE),
            podman_env(settings, request),
            None,
        ),
    };
    let volume_mounts = (k.kubernetes_distribution == KubernetesDistribution::Basic).then(|| {
        vec![VolumeMount {
            name: SECRETS_MASK.into(),
            mount_path: SERVICE_ACCOUNT_DIR.into(),
            ..VolumeMount::default()
        }]
    });
    Container {
        name: "builder".into(),
        image: Some(image.to_string()),
        image_pull_policy: Some(k.image_pull_policy.clone()),
        security_context,
        env: Some(env),
        resources: Some(resources(settings)),
        volume_mounts,
        ..Container::default()
    }
}

/// Memory request always; the CPU request and the limits only on openshift (Quay's rule:
/// limits elsewhere would fight the cluster's own defaults).
fn resources(settings: &KubernetesSettings) -> ResourceRequirements {
    let k = &settings.kubernetes;
    let quantity = |v: &str| Quantity(v.to_string());
    let mut requests = BTreeMap::from([("memory".into(), quantity(&k.container_memory_request))]);
    let mut limits = None;
    if k.kubernetes_distribution == KubernetesDistribution::Openshift {
        requests.insert("cpu".into(), quantity(&k.container_cpu_request));
        limits = Some(BTreeMap::from([
            ("memory".into(), quantity(&k.container_memory_limits)),
            ("cpu".into(), quantity(&k.container_cpu_limits)),
        ]));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits,
        ..ResourceRequirements::default()
    }
}

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// kubernetes: the VM image boots the Ignition document in USERDATA.
fn vm_env(settings: &KubernetesSettings, request: &StartRequest) -> Vec<EnvVar> {
    let k = &settings.kubernetes;
    vec![
        var("USERDATA", worker_machine(settings, request).to_json()),
        var("VM_MEMORY", &k.vm_memory_limit),
        var(
            "VM_VOLUME_SIZE",
            settings.executor.volume_size.as_deref().unwrap_or("32G"),
        ),
    ]
}

/// The machine the VM boots: the worker container with TOKEN, SERVER and the proxies.
pub fn worker_machine(settings: &KubernetesSettings, request: &StartRequest) -> WorkerMachine {
    let e = &settings.executor;
    let mut env = vec![
        ("TOKEN".to_string(), request.token.clone()),
        ("BUILD_UUID".to_string(), request.build_id.to_string()),
        ("SERVER".to_string(), request.server.clone()),
        (
            "REGISTRY_HOSTNAME".to_string(),
            request.registry_hostname.clone(),
        ),
    ];
    for (name, value) in [
        ("HTTP_PROXY", &e.http_proxy),
        ("HTTPS_PROXY", &e.https_proxy),
        ("NO_PROXY", &e.no_proxy),
    ] {
        if let Some(value) = value {
            env.push((name.to_string(), value.clone()));
        }
    }
    if e.debug {
        env.push(("DEBUG".to_string(), "true".to_string()));
    }
    if request.insecure {
        env.push(("INSECURE".to_string(), "true".to_string()));
    }
    WorkerMachine {
        image: (e.worker_image.as_deref())
            .unwrap_or(DEFAULT_WORKER_IMAGE)
            .to_string(),
        tag: e
            .worker_tag
            .as_deref()
            .unwrap_or(DEFAULT_WORKER_TAG)
            .to_string(),
        runtime: e
            .container_runtime
            .as_deref()
            .unwrap_or("podman")
            .to_string(),
        image_login: e.quay_username.clone().zip(e.quay_password.clone()),
        env,
        registry: request.registry_hostname.clone(),
        ca_bundle: settings.ca_bundle.clone(),
        ssh_authorized_keys: e.ssh_authorized_keys.clone(),
        max_lifetime_s: request.max_lifetime_s,
    }
}

/// kubernetesPodman: the worker's environment, in Quay's order and with Quay's values.
fn podman_env(settings: &KubernetesSettings, request: &StartRequest) -> Vec<EnvVar> {
    let e = &settings.executor;
    let proxy = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut env = vec![
        var("TOKEN", &request.token),
        var("BUILD_UUID", request.build_id.to_string()),
        var("SERVER", &request.server),
        var("REGISTRY_HOSTNAME", &request.registry_hostname),
        var("CONTAINER_RUNTIME", "podman"),
        var("BUILDAH_ISOLATION", "chroot"),
        var("CA_CERT", &settings.ca_bundle),
        var("GIT_SSL_CAINFO", CA_BUNDLE_PATH),
        var("TLS_CERT_PATH", CA_BUNDLE_PATH),
        var("SSL_CERT_FILE", CA_BUNDLE_PATH),
        var("DEBUG", if e.debug { "true" } else { "false" }),
        var("HTTP_PROXY", proxy(&e.http_proxy)),
        var("HTTPS_PROXY", proxy(&e.https_proxy)),
        var("NO_PROXY", proxy(&e.no_proxy)),
        var("DOCKER_HOST", PODMAN_SOCKET),
        var("EXECUTOR", e.kind.as_str()),
    ];
    // Only a manager without gRPC TLS (never Quay's setup) tells its workers to dial plain.
    if request.insecure {
        env.push(var("INSECURE", "true"));
    }
    env
}
