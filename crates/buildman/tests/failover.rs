//! A worker outlives the manager that started it: two `buildman serve` processes on one
//! PostgreSQL, one Redis and one signing key; the worker dials them through a TCP proxy (its
//! SERVER). The first manager is killed with SIGKILL mid-build, the proxy is pointed at the
//! second, and the real worker (`buildman worker`, buildah) finishes the build there. The
//! same with SIGTERM, as an operator (or Kubernetes) stops a manager: it drains for
//! BUILDMAN_DRAIN_SECONDS, exits 0, and the build goes on through the other.
//! Needs buildah, runc, busybox-static, PostgreSQL and Redis (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");
const T: Duration = Duration::from_secs(300);

/// The worker, through a wrapper that records its exit status in `exit_file`.
fn worker_script(dir: &Path, work: &Path, exit_file: &Path) -> PathBuf {
    let script = dir.join("worker.sh");
    let text = format!(
        "#!/bin/sh\nexport TMPDIR={}\n{BUILDMAN} worker\necho $? > {}\n",
        work.display(),
        exit_file.display()
    );
    std::fs::write(&script, text).expect("wrapper");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    script
}

/// 5,000 lines at once, then 20 more a quarter of a second apart (awk's `system` runs
/// `/bin/sh`, busybox here).
const OUTPUT: &str = r#"BEGIN {
    for (i = 1; i <= 5000; i++) print "line " i
    for (i = 5001; i <= 5020; i++) { print "line " i; fflush(); system("/bin/busybox sleep 0.25") }
}
"#;

/// How the first manager goes.
enum Stop {
    /// SIGKILL: it dies at once.
    Kill,
    /// SIGTERM: it drains for a second, then exits without ending the build.
    Terminate,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_survives_its_killed_manager_and_completes_on_another() {
    fail_over(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_stopped_with_sigterm_leaves_its_build_to_another() {
    fail_over(Stop::Terminate).await;
}

/// Starts a build on one manager, stops that manager as `stop` says mid-build, and checks
/// that the build completes through the other with every line once and one attempt.
async fn fail_over(stop: Stop) {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let exit_file = dir.path().join("worker-exit");
    let script = worker_script(dir.path(), &work, &exit_file);
    let proxy = Proxy::start().await;
    let config = format!(
        "BUILDMAN_DRAIN_SECONDS: 1\n{}BUILDMAN_HOSTNAME: 127.0.0.1:{}\nBUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n{}",
        cluster.shared_keys(),
        proxy.port,
        config_yaml(
            &cluster.manager_keys(1),
            &format!(
                "  - EXECUTOR: popen\n    NAME: real\n    BUILDER_BINARY_LOCATION: {}\n",
                script.display()
            )
        )
    );
    let mut a = Serve::start(dir.path(), "a", &config).await;
    proxy.target.send_replace(Some(a.grpc));

    let busybox = std::fs::read(buildman_testkit::busybox()).expect("busybox");
    let dockerfile =
        b"FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY out.awk /out.awk\n\
        RUN [\"/bin/busybox\", \"awk\", \"-f\", \"/out.awk\"]\n";
    let context = tar_gz(
        &[
            ("Dockerfile", dockerfile),
            ("busybox", &busybox),
            ("out.awk", OUTPUT.as_bytes()),
        ],
        &[],
    );
    let id = a.submit("demo/failover", &context).await;

    // Mid-build, with part of the output stored, the manager dies.
    a.wait_phase(&id, &["building"]).await;
    let deadline = Instant::now() + T;
    while a.logs("demo/failover", &id).await.len() < 1000 {
        assert!(Instant::now() < deadline, "no output stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Started now, so that it cannot have claimed the build before the first one did.
    let b = Serve::start(dir.path(), "b", &config).await;
    match stop {
        Stop::Kill => a.kill(),
        Stop::Terminate => {
            a.terminate();
            let status = a.wait_exit(T).await;
            assert!(status.success(), "{status}\n{}", a.log_text());
            let log = a.log_text();
            assert!(
                log.contains("builds still running go on"),
                "the drain says what becomes of the build:\n{log}"
            );
        }
    }
    proxy.target.send_replace(Some(b.grpc));

    let view = b
        .wait_phase(&id, &["complete", "error", "internalerror"])
        .await;
    let logs = b.logs("demo/failover", &id).await;
    assert_eq!(view["phase"], "complete", "{view}\n{logs:?}");
    let printed: Vec<&str> = logs
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("line "))
        .collect();
    let expected: Vec<String> = (1..=5020).map(|i| format!("line {i}\n")).collect();
    assert_eq!(printed, expected, "every line once, in order");
    assert_eq!(phases(&logs), COMPLETE_RUN, "one attempt, not restarted");

    // The worker finished normally: no panic on its dead manager's pipes.
    let deadline = Instant::now() + T;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&exit_file)
            && !text.trim().is_empty()
        {
            break text.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the worker did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, "0", "the worker's exit status");
}
