//! The Kubernetes executors through the whole manager (`buildman serve` in-process, the
//! fake API server of buildman-testkit): a control plane that refuses or cannot be reached
//! sends builds to the next executor and opens its breaker; a pod that cannot start ends
//! its attempt at once; orphaned Jobs are deleted once across two managers; and the real
//! worker, started with kubernetesPodman's exact environment, builds over TLS.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use buildman_testkit::kube::k8s_openapi::api::core::v1::PodStatus;
use buildman_testkit::kube::{
    Auth, FakeKube, Kubelet, PodOutcome, abandoned_job, container_env, image_pull_back_off,
    unschedulable,
};
use common::*;

const T: Duration = Duration::from_secs(120);
const FINAL: [&str; 4] = ["complete", "error", "internalerror", "expired"];
/// The manager's credentials for the API; never to be logged.
const API_TOKEN: &str = "api-SECRET-token-5f2a";

/// Everything the test binary's tracing writes, to look for lines and for secrets.
fn captured() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
        Mutex::default()
    })
}

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        captured().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap()).into_owned()
}

/// A kubernetesPodman executor named `name` on `server`, with `extra` keys (each line
/// indented by 4).
fn kube_executor(name: &str, server: &str, extra: &str) -> String {
    format!(
        "  - EXECUTOR: kubernetesPodman\n    NAME: {name}\n    K8S_API_SERVER: {server}\n    BUILDER_NAMESPACE: builds\n{extra}"
    )
}

async fn submit(s: &TestServer, repo: &str) -> String {
    s.submit(repo, &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every way the API can fail a create, and an API that cannot be reached: builds fall
/// through to the local executor and complete; after CIRCUIT_BREAKER_THRESHOLD (2) failed
/// starts the breaker opens and the third build goes straight to the local executor; the
/// log says why, and holds neither the API credentials nor a worker token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_fall_back_and_open_the_breaker_without_logging_secrets() {
    captured();
    let cases: [(&str, u16, &str, &str); 7] = [
        ("unauthorized", 401, "", ""),
        (
            "forbidden",
            403,
            "Forbidden",
            "jobs.batch is forbidden: exceeded quota: builder-quota, requested: requests.memory=3968Mi",
        ),
        (
            "conflict",
            409,
            "AlreadyExists",
            "jobs.batch \"x\" already exists",
        ),
        (
            "invalid",
            422,
            "Invalid",
            "Job.batch \"x\" is invalid: spec.template.spec.containers[0].image: Required value",
        ),
        (
            "internal",
            500,
            "InternalError",
            "Internal error occurred: etcdserver: request timed out",
        ),
        ("refused", 0, "", ""),
        ("timeout", 0, "", ""),
    ];
    for (case, code, reason, message) in cases {
        let fake = FakeKube::start(
            Auth::Bearer(if case == "unauthorized" {
                "another-token".into()
            } else {
                API_TOKEN.into()
            }),
            None,
        )
        .await;
        let server = match case {
            "refused" => format!("http://127.0.0.1:{}", buildman_testkit::free_port()),
            _ => format!("http://{}", fake.addr),
        };
        if code >= 403 {
            fake.fail_next("POST", 100, code, reason, message);
        }
        if case == "timeout" {
            fake.hang(true);
        }
        let name = format!("kube-{case}");
        let extra = format!(
            "    SERVICE_ACCOUNT_TOKEN: {API_TOKEN}\n    K8S_API_TIMEOUT: 1\n    CIRCUIT_BREAKER_THRESHOLD: 2\n    CIRCUIT_BREAKER_COOLDOWN: 600\n"
        );
        let s = TestServer::start(
            |d| {
                let executors = kube_executor(&name, &server, &extra) + &popen(d, "local", "");
                config_yaml("ALLOWED_WORKER_COUNT: 1", &executors)
            },
            "happy",
            fast_timings(),
        )
        .await;
        for n in 0..3 {
            let id = submit(&s, &format!("ns/{case}{n}")).await;
            let view = s.wait_phase(&id, &FINAL, T).await;
            assert_eq!(
                view["phase"], "complete",
                "{case}: build {n} completes locally: {view}"
            );
        }
        if case != "refused" {
            let creates = fake
                .requests()
                .iter()
                .filter(|r| r.method == "POST")
                .count();
            assert_eq!(creates, 2, "{case}: tried twice, then skipped while open");
        }
        s.stop().await;
        let log = log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains(&format!("executor={name}"))
                    || l.contains(&format!("executor=\"{name}\""))
            })
            .collect();
        assert!(
            lines.iter().any(|l| l.contains("circuit breaker opened")),
            "{case}: the breaker opened:\n{}",
            lines.join("\n")
        );
        let why = match case {
            "unauthorized" => "answered 401: Unauthorized".to_string(),
            "refused" => "cannot reach the Kubernetes API".to_string(),
            "timeout" => "did not answer within 1s".to_string(),
            _ => format!("answered {code}: {reason}: {message}"),
        };
        assert!(
            lines.iter().any(|l| l.contains(&why)),
            "{case}: the log says why ({why}):\n{}",
            lines.join("\n")
        );
    }
    let log = log_text();
    assert!(!log.contains(API_TOKEN), "the API token was logged");
    assert!(!log.contains("eyJ"), "a worker token (a JWT) was logged");
}

/// The fake kubelet: every pod takes `status`.
fn stuck(status: PodStatus) -> Kubelet {
    Arc::new(move |_| PodOutcome::Status(Box::new(status.clone())))
}

/// A pod that cannot be scheduled, and one whose image cannot be pulled: the attempt ends
/// at once (SETUP_TIME is an hour) with the reason in the build log, the Job is deleted,
/// and the local executor runs the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_start_ends_the_attempt_and_the_next_executor_builds() {
    let cases = [
        (
            unschedulable(),
            "pod unschedulable: 0/3 nodes are available: 3 Insufficient memory.",
        ),
        (
            image_pull_back_off(),
            "container builder cannot start: ImagePullBackOff: Back-off pulling image \"quay.io/projectquay/quay-builder:nope\"",
        ),
    ];
    for (status, reason) in cases {
        let fake = FakeKube::start(Auth::Anyone, None).await;
        fake.set_kubelet(stuck(status));
        let server = fake.addr.to_string();
        let s = TestServer::start(
            |d| {
                let executors = kube_executor("cluster", &server, "    SETUP_TIME: 3600\n")
                    + &popen(d, "local", "");
                config_yaml("ALLOWED_WORKER_COUNT: 1", &executors)
            },
            "happy",
            fast_timings(),
        )
        .await;
        let id = submit(&s, "ns/stuck").await;
        let view = s.wait_phase(&id, &FINAL, T).await;
        assert_eq!(view["phase"], "complete", "{view}");
        let logs = s.logs("ns/stuck", &id).await;
        let expected =
            format!("the worker on executor cluster failed before registering: {reason}");
        assert!(
            logs.iter().any(|l| l["message"] == expected.as_str()),
            "{expected}\n{logs:#?}"
        );
        let created = fake
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count();
        assert_eq!(created, 1);
        assert!(fake.jobs().is_empty(), "the failed Job is deleted");
        assert!(fake.pods().is_empty(), "and its pod");
        assert!(
            s.reports().iter().any(|r| r["argv0"]
                .as_str()
                .is_some_and(|a| a.ends_with("worker-local"))),
            "the local executor ran the build"
        );
        s.stop().await;
    }
}

/// Runs each pod as the scripted test worker (a local process with the pod's
/// environment): the first pod completes its build, later ones hold in `building`.
fn test_worker_kubelet(dir: &Path) -> Kubelet {
    let report = dir.join("report.jsonl");
    let pods = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Arc::new(move |pod| {
        let n = pods.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let scenario = if n == 0 { "happy" } else { "hold-building" };
        let child = tokio::process::Command::new(TEST_WORKER)
            .env_clear()
            .envs(container_env(pod))
            .env("INSECURE", "true")
            .env("TEST_WORKER_SCENARIO", scenario)
            .env("TEST_WORKER_REPORT", &report)
            .env("TEST_WORKER_HEARTBEAT_MS", "200")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("test worker");
        PodOutcome::Run(child)
    })
}

/// Two managers share the cluster, the database and Redis. A Job of a completed build and
/// one of a build nobody knows are deleted exactly once; the Job of a running build stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_jobs_are_deleted_once_across_two_managers() {
    let cluster = Cluster::start().await;
    let fake = FakeKube::start(Auth::Anyone, None).await;
    let server = fake.addr.to_string();
    let config = |_: &Path| {
        format!(
            "{}BUILDMAN_ORPHAN_REAP_INTERVAL: 1\n{}",
            cluster.shared_keys(),
            config_yaml(
                &cluster.manager_keys(2),
                &kube_executor("cluster", &server, "    SETUP_TIME: 5\n")
            )
        )
    };
    let a = TestServer::start(config, "happy", fast_timings()).await;
    fake.set_kubelet(test_worker_kubelet(a.dir.path()));
    let done = submit(&a, "ns/done").await;
    let view = a.wait_phase(&done, &FINAL, T).await;
    assert_eq!(view["phase"], "complete", "{view}");
    let running = submit(&a, "ns/running").await;
    a.wait_phase(&running, &["building"], T).await;
    let running_job = fake.jobs()[0].metadata.name.clone().unwrap();
    let hour = Duration::from_secs(3600);
    let left_done = fake.insert_job(abandoned_job("builds", &done, hour));
    let unknown = buildman_core::BuildId::new().to_string();
    let left_unknown = fake.insert_job(abandoned_job("builds", &unknown, hour));

    let b = TestServer::start(config, "happy", fast_timings()).await;
    let deadline = Instant::now() + T;
    while fake.job_deletes(&left_done) + fake.job_deletes(&left_unknown) < 2 {
        assert!(
            Instant::now() < deadline,
            "orphans not deleted: {:?}",
            fake.requests()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until the running Job is past its SETUP_TIME, and both managers made several more
    // passes (each lists the Jobs once).
    let lists = |fake: &FakeKube| {
        (fake.requests().iter())
            .filter(|r| {
                r.method == "GET" && r.path.ends_with("/jobs") && !r.query.contains("watch")
            })
            .count()
    };
    let old_enough = Instant::now() + Duration::from_secs(6);
    while Instant::now() < old_enough {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let passes = lists(&fake);
    while lists(&fake) < passes + 6 {
        assert!(Instant::now() < deadline, "no more orphan passes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fake.job_deletes(&left_done),
        1,
        "the completed build's Job, once"
    );
    assert_eq!(
        fake.job_deletes(&left_unknown),
        1,
        "the unknown build's Job, once"
    );
    assert_eq!(
        fake.job_deletes(&running_job),
        0,
        "the running build's Job is left alone"
    );
    assert_eq!(a.build(&running).await["phase"], "building");
    a.cancel("ns/running", &running).await;
    a.wait_phase(&running, &["cancelled"], T).await;
    b.stop().await;
    a.stop().await;
}

/// Our worker started with exactly the environment a kubernetesPodman Job gives it (the
/// fake kubelet runs `buildman worker` as a local process with the pod's variables; only
/// the bundle path /certs/cacert.crt is moved into the test's directory): it writes
/// CA_CERT — the manager's own certificate, the default — to that path, trusts it,
/// registers over TLS and completes a build with podman.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_worker_builds_with_the_kubernetes_podman_environment_over_tls() {
    let certs = buildman_testkit::certs::Certs::make();
    let (cert, key) = (certs.path("self.pem"), certs.path("self.key"));
    let fake = FakeKube::start(Auth::Anyone, None).await;
    let server = fake.addr.to_string();
    let s = TestServer::start(
        |_| {
            let mut yaml = config_yaml(
                "ALLOWED_WORKER_COUNT: 1",
                &kube_executor("cluster", &server, ""),
            );
            yaml.push_str(&format!(
                "BUILDMAN_GRPC_TLS:\n  CERT: {}\n  KEY: {}\n",
                cert.display(),
                key.display()
            ));
            yaml
        },
        "",
        fast_timings(),
    )
    .await;
    let bundle = s.dir.path().join("certs/cacert.crt");
    let work = s.dir.path().join("work");
    let output = s.dir.path().join("data/images");
    let env_seen = Arc::new(Mutex::new(Vec::new()));
    let kubelet: Kubelet = {
        let (bundle, env_seen) = (bundle.clone(), env_seen.clone());
        Arc::new(move |pod| {
            let mut env = container_env(pod);
            *env_seen.lock().unwrap() = env.clone();
            for (name, value) in &mut env {
                if value == "/certs/cacert.crt" {
                    *value = bundle.display().to_string();
                }
                assert_ne!(name, "INSECURE", "the manager speaks TLS");
            }
            let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_buildman"))
                .arg("worker")
                .env_clear()
                .envs(env)
                // What the test machine needs beyond the pod's variables: where tools are,
                // a scratch dir, and where this manager wants OCI layouts (no registry).
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("TMPDIR", &work)
                .env("BUILDMAN_OUTPUT_DIR", &output)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("buildman worker");
            PodOutcome::Run(child)
        })
    };
    fake.set_kubelet(kubelet);
    let context = tar_gz(
        &[("Dockerfile", b"FROM scratch\nCOPY f /f\n"), ("f", b"x")],
        &[],
    );
    let id = s.submit_bytes("demo/podman", &[], &context).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = s.wait_phase(&id, &FINAL, Duration::from_secs(300)).await;
    assert_eq!(
        view["phase"],
        "complete",
        "{view}\n{:#?}",
        s.logs("demo/podman", &id).await
    );
    let env: std::collections::BTreeMap<String, String> =
        env_seen.lock().unwrap().iter().cloned().collect();
    let manager_cert = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(
        env["CA_CERT"], manager_cert,
        "CA_CERT defaults to the manager's certificate"
    );
    assert_eq!(env["CONTAINER_RUNTIME"], "podman");
    assert_eq!(env["EXECUTOR"], "kubernetesPodman");
    let written = std::fs::read_to_string(&bundle).expect("the worker wrote the bundle");
    assert!(
        written.starts_with(manager_cert.trim_end()),
        "CA_CERT first in the bundle"
    );
    s.stop().await;
}

/// `check-config` accepts a file whose only executors are Kubernetes ones (as `serve` does:
/// the orphan test above runs two managers on such a file).
#[test]
fn check_config_accepts_only_kubernetes_executors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    let executors =
        kube_executor("podman", "127.0.0.1:6443", "") + "  - EXECUTOR: kubernetes\n    NAME: vm\n";
    std::fs::write(&file, config_yaml("ALLOWED_WORKER_COUNT: 1", &executors)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildman"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 executor(s): podman, vm"), "{text}");
    assert!(!text.contains("not available"), "{text}");
}
