//! A manager killed with SIGKILL while it runs a build: another manager on the same
//! PostgreSQL and Redis takes the build over as soon as its record expires (the heartbeat
//! TTL) and runs it again at once, with no requeue delay; a build whose job record Redis
//! lost (FLUSHALL) runs again within seconds. Prints how long each took.
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

/// Redis flushed mid-build (its data lost): the store still holds the build's claim, but no
/// job record names it. Within two claim checks (a quarter of the heartbeat TTL apart) the
/// attempt ends as lost and the build runs again at once, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_job_record_redis_lost_runs_again_within_seconds() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "BUILDMAN_HEARTBEAT_TTL: 4\n{}BUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n{}",
        cluster.shared_keys(),
        config_yaml(
            &cluster.manager_keys(1),
            &test_worker_script(dir.path(), "TEST_WORKER_BUILD_MS=6000")
        )
    );
    let a = Serve::start(dir.path(), "a", &config).await;
    let context = tar_gz(&[("Dockerfile", b"FROM scratch\n")], &[]);
    let id = a.submit("demo/flushed", &context).await;
    a.wait_phase(&id, &["building"]).await;
    let first_pid = reports(dir.path())
        .into_iter()
        .find(|r| r["event"] == "started")
        .unwrap()["pid"]
        .clone();

    let flushed = redis_command(cluster.redis.port(), "FLUSHALL").await;
    assert_eq!(flushed, "+OK");
    let at = Instant::now();
    let deadline = at + T;
    let rerun = loop {
        let rerun = reports(dir.path())
            .into_iter()
            .any(|r| r["event"] == "registered" && r["pid"] != first_pid);
        if rerun {
            break at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "never ran again: {}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    a.wait_phase(&id, &["complete"]).await;
    println!(
        "Redis flushed mid-build: running again after {:.1} s",
        rerun.as_secs_f64()
    );
    let logs = a.logs("demo/flushed", &id).await;
    let text: Vec<String> = logs.iter().map(|e| e["message"].to_string()).collect();
    assert!(
        text.iter()
            .any(|m| m.contains("the orchestrator lost the job's record")),
        "the log says why the build ran again: {text:?}"
    );
    assert!(text.iter().any(|m| m.contains("runs in 0 s")), "{text:?}");
    // Once: only the second attempt got past building (the first worker was refused).
    let phases = phases(&logs);
    let pushed = phases.iter().filter(|p| *p == "pushing").count();
    assert_eq!(pushed, 1, "{phases:?}");
    let view = a.get(&format!("/api/v1/build/{id}")).await;
    assert_eq!(view["phase"], "complete", "{view}");
}
