//! A manager killed with SIGKILL while it runs a build: another manager on the same
//! PostgreSQL and Redis takes the build over as soon as its record expires (the heartbeat
//! TTL) and runs it again at once, with no requeue delay. Prints how long that took.
//! Needs PostgreSQL and Redis (`.ci/run` installs them).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(300);

/// The test workers' reports so far.
fn reports(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("report.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_managers_build_runs_again_on_another_at_once() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}BUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n{}",
        cluster.shared_keys(),
        config_yaml(
            &cluster.manager_keys(1),
            &test_worker_script(dir.path(), "TEST_WORKER_BUILD_MS=15000")
        )
    );
    let mut a = Serve::start(dir.path(), "a", &config).await;
    let context = tar_gz(&[("Dockerfile", b"FROM scratch\n")], &[]);
    let id = a.submit("demo/takeover", &context).await;
    a.wait_phase(&id, &["building"]).await;
    let first = reports(dir.path());
    let first_pid = first.iter().find(|r| r["event"] == "started").unwrap()["pid"].clone();

    let b = Serve::start(dir.path(), "b", &config).await;
    a.kill();
    let killed = Instant::now();
    // The orphaned worker cannot reach its manager: it stops (quay-builder gives up too).

    // The build runs again on b: a worker other than the first registers.
    let deadline = killed + T;
    let rerun = loop {
        let rerun = reports(dir.path())
            .into_iter()
            .find(|r| r["event"] == "registered" && r["pid"] != first_pid);
        if rerun.is_some() {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the build never ran again: {:?}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    b.wait_phase(&id, &["complete"]).await;
    let complete = killed.elapsed();
    println!(
        "takeover after kill -9: running again after {:.1} s, complete after {:.1} s \
         (heartbeat TTL 60 s, build 15 s)",
        rerun.as_secs_f64(),
        complete.as_secs_f64()
    );
    let log = b.logs("demo/takeover", &id).await;
    let text = log
        .iter()
        .map(|e| e["message"].to_string())
        .collect::<Vec<_>>();
    assert!(
        text.iter()
            .any(|m| m.contains("another manager took the build over")),
        "the log says why the build ran again: {text:?}"
    );
    assert!(
        text.iter().any(|m| m.contains("runs in 0 s")),
        "no requeue delay: {text:?}"
    );
}
