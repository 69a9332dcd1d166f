//! Quay's sample config.yaml, parsed whole.

use std::time::Duration;

use super::load;
use crate::config::{
    ExecutorKind, ExecutorSpecific, KubernetesDistribution, Lifecycle, OrchestratorConfig,
};

const SAMPLE: &str = include_str!("../../../tests/fixtures/quay-sample.yaml");

#[test]
fn quay_sample_config_parses() {
    let loaded = load(SAMPLE);
    assert_eq!(loaded.warnings, vec![]);
    let config = loaded.config;
    assert!(config.feature_build_support);
    assert_eq!(config.server_hostname, "quay.example.com");
    assert_eq!(config.buildman_hostname, None);
    assert_eq!(config.controller_port, None);
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
    assert_eq!(
        kc.k8s_api_server.as_deref(),
        Some("api.openshift.somehost.org:6443")
    );
    assert_eq!(kc.k8s_kubeconfig, None);
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
