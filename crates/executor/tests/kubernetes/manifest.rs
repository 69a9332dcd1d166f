//! The Jobs both executors write: valid for Kubernetes (kubernetes-validate, strict), and
//! with every value Quay's executors write.

use std::collections::BTreeMap;
use std::process::Command;

use buildman_executor::kubernetes::job::{
    CA_BUNDLE_PATH, PODMAN_SOCKET, RELEASE_LABEL, worker_job,
};
use k8s_openapi::api::batch::v1::Job;
use serde_json::Value;

use crate::{TOKEN, request, settings};

/// The Kubernetes version the Jobs are checked against (kubernetes-validate's newest when
/// `.ci/run` installed it) and the oldest the executor's types target.
const VERSIONS: [&str; 2] = ["1.37.0", "1.33.0"];

/// Runs kubernetes-validate in strict mode (unknown fields refused) on `jobs`, each named as
/// the API would name it.
fn validate(jobs: &[(String, Job)]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for (label, job) in jobs {
        let mut job = job.clone();
        // kubernetes-validate needs a name; the API makes it from generateName.
        job.metadata.name = job
            .metadata
            .generate_name
            .as_ref()
            .map(|p| format!("{p}x7k2q"));
        let path = dir.path().join(format!("{label}.json"));
        std::fs::write(&path, serde_json::to_vec(&job).expect("json")).expect("write");
        files.push(path);
    }
    for version in VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect(
                "kubernetes-validate runs (`pip install kubernetes-validate`, as .ci/run does)",
            );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || text.contains("ERROR") {
            return Err(text);
        }
    }
    Ok(())
}

#[test]
fn every_job_is_valid_for_kubernetes() {
    let mut jobs = Vec::new();
    for kind in ["kubernetes", "kubernetesPodman"] {
        for distribution in ["basic", "openshift"] {
            for debug in [false, true] {
                let s = settings(&format!(
                    "EXECUTOR: {kind}\nKUBERNETES_DISTRIBUTION: {distribution}\nDEBUG: {debug}\n\
                     NODE_SELECTOR_LABEL_VALUE: n1-standard-4\nCA_CERT: pem\nHTTP_PROXY: http://proxy:3128\n\
                     QUAY_USERNAME: robot\nQUAY_PASSWORD: pw"
                ));
                let label = format!("{kind}-{distribution}-debug-{debug}");
                jobs.push((label, worker_job(&s, &request(), "2026-01-31-23")));
            }
        }
    }
    validate(&jobs).unwrap_or_else(|e| panic!("a generated Job is not valid: {e}"));
}

#[test]
fn the_validator_refuses_a_job_kubernetes_would_refuse() {
    let s = settings("EXECUTOR: kubernetesPodman");
    let mut job = worker_job(&s, &request(), "2026-01-31-23");
    let spec = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.containers[0].resources.as_mut().unwrap().requests = None;
    let mut value = serde_json::to_value(&job).unwrap();
    value["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always".into();
    let job: Value = value;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    let mut job = job;
    job["metadata"]["name"] = "bad-1".into();
    std::fs::write(&path, job.to_string()).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", VERSIONS[0]])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field must be refused");
}

fn env(job: &Job) -> BTreeMap<String, String> {
    let container = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    (container.env.iter().flatten())
        .map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
        .collect()
}

/// Field by field: the Job for the sample config's executor (Quay's `openshift` sample in
/// the reference behaviour), as JSON the API receives.
#[test]
fn the_sample_openshift_executor_writes_quays_job() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../core/tests/fixtures/quay-sample.yaml"
    ))
    .unwrap();
    let config = buildman_core::config::Config::parse(&yaml).unwrap().config;
    let executor = &config.build_manager.executors[0];
    let s = buildman_executor::kubernetes::KubernetesSettings::new(
        executor,
        std::path::Path::new("."),
        None,
    )
    .unwrap();
    let r = request();
    let job = worker_job(&s, &r, "2026-01-31-23");
    let v = serde_json::to_value(&job).unwrap();
    let labels = serde_json::json!({
        "build": r.build_id.to_string(), "time": "2026-01-31-23",
        "manager": r.manager_id, "quay-sha": RELEASE_LABEL,
    });
    assert_eq!(v["apiVersion"], "batch/v1");
    assert_eq!(v["kind"], "Job");
    assert_eq!(v["metadata"]["namespace"], "builder");
    assert_eq!(v["metadata"]["generateName"], format!("{}-", r.build_id));
    assert_eq!(v["metadata"]["labels"], labels);
    let spec = &v["spec"];
    assert_eq!(spec["backoffLimit"], 1);
    assert_eq!(spec["activeDeadlineSeconds"], 7200);
    assert_eq!(spec["ttlSecondsAfterFinished"], 120);
    assert_eq!(spec["template"]["metadata"]["labels"], labels);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["dnsPolicy"], "Default");
    assert_eq!(
        pod["imagePullSecrets"],
        serde_json::json!([{"name": "builder"}])
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccount"], "*****");
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(
        pod["nodeSelector"],
        serde_json::json!({"beta.kubernetes.io/instance-type": "n1-standard-4"})
    );
    assert!(
        pod.get("volumes").is_none(),
        "no service-account mask on openshift"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "builder");
    assert_eq!(c["image"], "<registry>/quay-quay-builder-qemu-rhcos:v3.4.0");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        c["securityContext"],
        serde_json::json!({"privileged": true})
    );
    assert_eq!(
        c["resources"],
        serde_json::json!({
            "requests": {"memory": "3968Mi", "cpu": "500m"},
            "limits": {"memory": "5120Mi", "cpu": "1000m"},
        })
    );
    assert!(c.get("volumeMounts").is_none());
    let env = env(&job);
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        ["USERDATA", "VM_MEMORY", "VM_VOLUME_SIZE"]
    );
    assert_eq!(env["VM_MEMORY"], "4G");
    assert_eq!(env["VM_VOLUME_SIZE"], "8G");
    // USERDATA: the Ignition document running WORKER_IMAGE:WORKER_TAG with podman, the
    // registry login, the token, and the sample's SSH keys.
    let ignition: Value = serde_json::from_str(&env["USERDATA"]).unwrap();
    assert_eq!(ignition["ignition"]["version"], "3.4.0");
    assert_eq!(
        ignition["passwd"]["users"][0]["sshAuthorizedKeys"],
        serde_json::json!([
            "ssh-rsa 12345 someuser@email.com",
            "ssh-rsa 67890 someuser2@email.com"
        ])
    );
    let unit = ignition["systemd"]["units"][0]["contents"]
        .as_str()
        .unwrap();
    assert!(unit.contains("/usr/bin/podman run"), "{unit}");
    assert!(
        unit.contains("<registry>/quay-quay-builder:some_tag"),
        "{unit}"
    );
    assert!(unit.contains("login --username"), "{unit}");
    let files = ignition["storage"]["files"].to_string();
    assert!(
        files.contains(TOKEN),
        "the worker's environment file carries the token"
    );
}

/// basic distribution and kubernetesPodman: the token mount is masked, no limits, and the
/// worker's environment is Quay's, value by value.
#[test]
fn the_podman_job_on_a_basic_cluster() {
    let s = settings(
        "EXECUTOR: kubernetesPodman\nBUILDER_CONTAINER_IMAGE: quay.io/projectquay/quay-builder:v3.15\n\
         CA_CERT: the-ca\nNO_PROXY: .cluster.local\nDEBUG: true\nIMAGE_PULL_POLICY: IfNotPresent\n\
         DNS_POLICY: ClusterFirst\nIMAGE_PULL_SECRET_NAME: pull\nMAXIMUM_JOB_TIME: 600",
    );
    let r = request();
    let job = worker_job(&s, &r, "2026-01-31-23");
    let v = serde_json::to_value(&job).unwrap();
    let spec = &v["spec"];
    assert!(
        spec.get("ttlSecondsAfterFinished").is_none(),
        "DEBUG keeps finished Jobs"
    );
    assert_eq!(spec["activeDeadlineSeconds"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(
        pod["imagePullSecrets"],
        serde_json::json!([{"name": "pull"}])
    );
    assert_eq!(
        pod["volumes"],
        serde_json::json!([{"name": "secrets-mask", "emptyDir": {"medium": "Memory"}}])
    );
    for key in [
        "automountServiceAccountToken",
        "serviceAccount",
        "enableServiceLinks",
        "nodeSelector",
    ] {
        assert!(pod.get(key).is_none(), "{key} is openshift's");
    }
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "quay.io/projectquay/quay-builder:v3.15");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert!(
        c.get("securityContext").is_none(),
        "Quay runs the podman worker unprivileged"
    );
    assert_eq!(
        c["resources"],
        serde_json::json!({"requests": {"memory": "3968Mi"}})
    );
    assert_eq!(
        c["volumeMounts"],
        serde_json::json!([{"name": "secrets-mask", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}])
    );
    let names: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "TOKEN",
            "BUILD_UUID",
            "SERVER",
            "REGISTRY_HOSTNAME",
            "CONTAINER_RUNTIME",
            "BUILDAH_ISOLATION",
            "CA_CERT",
            "GIT_SSL_CAINFO",
            "TLS_CERT_PATH",
            "SSL_CERT_FILE",
            "DEBUG",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "DOCKER_HOST",
            "EXECUTOR",
        ]
    );
    let env = env(&job);
    let expected: BTreeMap<String, String> = [
        ("TOKEN", TOKEN),
        ("BUILD_UUID", &r.build_id.to_string()),
        ("SERVER", "buildman.example.com:55443"),
        ("REGISTRY_HOSTNAME", "quay.example.com"),
        ("CONTAINER_RUNTIME", "podman"),
        ("BUILDAH_ISOLATION", "chroot"),
        ("CA_CERT", "the-ca"),
        ("GIT_SSL_CAINFO", CA_BUNDLE_PATH),
        ("TLS_CERT_PATH", CA_BUNDLE_PATH),
        ("SSL_CERT_FILE", CA_BUNDLE_PATH),
        ("DEBUG", "true"),
        ("HTTP_PROXY", ""),
        ("HTTPS_PROXY", ""),
        ("NO_PROXY", ".cluster.local"),
        ("DOCKER_HOST", PODMAN_SOCKET),
        ("EXECUTOR", "kubernetesPodman"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, expected);
}

/// CA_CERT and the files of EXTRA_CA_CERTS (relative to the config's directory) are one
/// bundle, joined by newlines as Quay joins them; a missing file is named.
#[test]
fn extra_ca_certs_join_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("extra.crt"), "EXTRA").unwrap();
    let config = crate::executor_config(
        "EXECUTOR: kubernetesPodman\nCA_CERT: FIRST\nEXTRA_CA_CERTS: [extra.crt]",
    );
    let s =
        buildman_executor::kubernetes::KubernetesSettings::new(&config, dir.path(), None).unwrap();
    assert_eq!(s.ca_bundle, "FIRST\nEXTRA");
    let config =
        crate::executor_config("EXECUTOR: kubernetesPodman\nEXTRA_CA_CERTS: [missing.crt]");
    let e = buildman_executor::kubernetes::KubernetesSettings::new(
        &config,
        dir.path(),
        Some("D".into()),
    )
    .unwrap_err();
    assert!(
        e.contains("EXTRA_CA_CERTS") && e.contains("missing.crt"),
        "{e}"
    );
    let config = crate::executor_config("EXECUTOR: kubernetesPodman");
    let s = buildman_executor::kubernetes::KubernetesSettings::new(
        &config,
        dir.path(),
        Some("DEFAULT".into()),
    )
    .unwrap();
    assert_eq!(
        s.ca_bundle, "DEFAULT",
        "without CA_CERT the manager's own certificate"
    );
}
