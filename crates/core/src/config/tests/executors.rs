//! The executors: the shared keys and each kind's own.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{assert_cases, errors, executor, load, manager, warnings};
use crate::config::{
    BenchConfig, Ec2Config, ExecutorConfig, ExecutorKind, ExecutorSpecific, KubernetesDistribution,
};

#[test]
fn every_error_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            manager(
                "EXECUTORS: [{EXECUTOR: kubernetes, NAME: k8s}, {EXECUTOR: ec2, EC2_REGION: r, COREOS_AMI: ami-1}, \
                 {EXECUTOR: kubernetesPodman, NAME: k8s}]",
            ),
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[2].NAME: duplicate executor name "k8s" (also used by EXECUTORS[0])"#,
            ],
        ),
        (
            manager("EXECUTORS: [{EXECUTOR: popen}, {EXECUTOR: popen}]"),
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[1].NAME: duplicate executor name "popen" (also used by EXECUTORS[0])"#,
            ],
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
            vec![
                "BUILD_MANAGER[1].EXECUTOR: cannot be combined with EXECUTORS; list every executor under EXECUTORS",
            ],
        ),
        (
            manager("EXECUTORS: [{EXECUTOR: popen}], EXECUTOR_CONFIG: {}"),
            vec![
                "BUILD_MANAGER[1].EXECUTOR_CONFIG: cannot be combined with EXECUTORS; move its keys into an EXECUTORS entry",
            ],
        ),
        (
            manager("EXECUTOR_CONFIG: {SETUP_TIME: 3}"),
            vec![
                "BUILD_MANAGER[1].EXECUTOR_CONFIG: needs EXECUTOR next to it to name the executor kind",
            ],
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
            vec![
                "BUILD_MANAGER[1].EXECUTORS[0].STAGED_ROLLOUT: must be between 0 and 1, got -0.25",
            ],
        ),
        (
            executor("EXECUTOR: popen, STAGED_ROLLOUT: half"),
            vec![r#"BUILD_MANAGER[1].EXECUTORS[0].STAGED_ROLLOUT: expected a number, got "half""#],
        ),
        (
            executor("EXECUTOR: popen, NAMESPACE_WHITELIST: acme"),
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[0].NAMESPACE_WHITELIST: expected a list, got "acme""#,
            ],
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
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[0].CONTAINER_RUNTIME: expected "docker", "podman" or "buildah", got "rkt""#,
            ],
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
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[0].KUBERNETES_DISTRIBUTION: expected "basic" or "openshift", got "eks""#,
            ],
        ),
        (
            executor("EXECUTOR: kubernetes, IMAGE_PULL_POLICY: always"),
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[0].IMAGE_PULL_POLICY: expected "Always", "IfNotPresent" or "Never", got "always""#,
            ],
        ),
        (
            executor("EXECUTOR: kubernetes, K8S_API_TLS_CERT: /c.pem"),
            vec![
                "BUILD_MANAGER[1].EXECUTORS[0]: missing required key K8S_API_TLS_KEY (needed with K8S_API_TLS_CERT)",
            ],
        ),
        (
            executor("EXECUTOR: kubernetes, K8S_API_TIMEOUT: -1"),
            vec!["BUILD_MANAGER[1].EXECUTORS[0].K8S_API_TIMEOUT: must not be negative, got -1"],
        ),
        (
            executor("EXECUTOR: ec2, COREOS_AMI: ami-1"),
            vec!["BUILD_MANAGER[1].EXECUTORS[0]: missing required key EC2_REGION"],
        ),
        (
            executor("EXECUTOR: ec2, EC2_REGION: r"),
            vec![
                "BUILD_MANAGER[1].EXECUTORS[0]: missing required key COREOS_AMI (the Fedora CoreOS AMI of EC2_REGION); or set COREOS_STREAM_URL to look it up from the Fedora CoreOS stream",
            ],
        ),
        (
            executor("EXECUTOR: ec2, EC2_REGION: r, COREOS_STREAM_URL: builds.example.com"),
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[0].COREOS_STREAM_URL: expected a URL starting with http:// or https://, got "builds.example.com""#,
                "BUILD_MANAGER[1].EXECUTORS[0]: missing required key COREOS_AMI (the Fedora CoreOS AMI of EC2_REGION); or set COREOS_STREAM_URL to look it up from the Fedora CoreOS stream",
            ],
        ),
        (
            executor("EXECUTOR: ec2, EC2_REGION: r, COREOS_AMI: ami-1, EC2_ENDPOINT_URL: 127.0.0.1:5000"),
            vec![
                r#"BUILD_MANAGER[1].EXECUTORS[0].EC2_ENDPOINT_URL: expected a URL starting with http:// or https://, got "127.0.0.1:5000""#,
            ],
        ),
        (
            executor("EXECUTOR: ec2, EC2_REGION: r, COREOS_AMI: ami-1, AWS_ACCESS_KEY: AKIA"),
            vec![
                "BUILD_MANAGER[1].EXECUTORS[0]: missing required key AWS_SECRET_KEY (needed with AWS_ACCESS_KEY)",
            ],
        ),
        (
            executor("EXECUTOR: ec2, EC2_REGION: r, COREOS_AMI: ami-1, AWS_SECRET_KEY: s"),
            vec![
                "BUILD_MANAGER[1].EXECUTORS[0]: missing required key AWS_ACCESS_KEY (needed with AWS_SECRET_KEY)",
            ],
        ),
        (
            executor("EXECUTOR: ec2, EC2_REGION: r, COREOS_AMI: ami-1, BLOCK_DEVICE_SIZE: 0"),
            vec!["BUILD_MANAGER[1].EXECUTORS[0].BLOCK_DEVICE_SIZE: must be at least 1, got 0"],
        ),
        (
            executor("EXECUTOR: ec2, EC2_REGION: r, COREOS_AMI: ami-1, EC2_VPC_SUBNET_ID: subnet-1"),
            vec![
                "BUILD_MANAGER[1].EXECUTORS[0]: missing required key EC2_SECURITY_GROUP_IDS (needed with EC2_VPC_SUBNET_ID)",
            ],
        ),
        (
            "BUILD_MANAGER: [ephemeral, {EXECUTOR: ec2, EXECUTOR_CONFIG: {EC2_REGION: [x], COREOS_AMI: a}}]"
                .into(),
            vec!["BUILD_MANAGER[1].EXECUTOR_CONFIG.EC2_REGION: expected a string, got a list"],
        ),
    ];
    assert_cases(&cases, errors);
}

#[test]
fn every_warning_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
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
    ];
    assert_cases(&cases, warnings);
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
        "EXECUTOR: ec2, EXECUTOR_CONFIG: {EC2_REGION: eu-west-1, COREOS_AMI: ami-1}",
    ))
    .config
    .build_manager;
    let mut expected = ExecutorConfig::with_defaults(ExecutorKind::Ec2);
    expected.specific = ExecutorSpecific::Ec2(Ec2Config {
        ec2_region: "eu-west-1".into(),
        coreos_ami: Some("ami-1".into()),
        ..Ec2Config::default()
    });
    assert_eq!(bm.executors, vec![expected]);
    let bm = load(&manager("EXECUTOR: popen")).config.build_manager;
    assert_eq!(bm.executors, vec![ExecutorConfig::default()]);
}

#[test]
fn ec2_keys() {
    let bm = load(&executor(
        "EXECUTOR: ec2, EC2_REGION: eu-west-1, EC2_ENDPOINT_URL: 'http://127.0.0.1:5000', \
         COREOS_STREAM_URL: 'https://builds.coreos.fedoraproject.org/streams', \
         COREOS_CHANNEL: next",
    ))
    .config
    .build_manager;
    let ExecutorSpecific::Ec2(e) = &bm.executors[0].specific else {
        panic!("ec2 keys expected");
    };
    assert_eq!(e.ec2_endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(
        e.coreos_stream_url.as_deref(),
        Some("https://builds.coreos.fedoraproject.org/streams")
    );
    assert_eq!(e.coreos_channel, "next");
    assert_eq!(e.coreos_ami, None);
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
