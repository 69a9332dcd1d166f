//! Deadlines: a worker that never registers, heartbeats that stop, a build that runs past
//! MACHINE_MAX_TIME. Each makes the build `internalerror`, stops the worker, and requeues
//! per Quay's rules.

mod common;

use std::time::Duration;

use buildman_manager::Timings;
use common::*;

const T: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_registers_spends_a_retry_and_after_three_the_build_expires() {
    let s = TestServer::start(
        |d| {
            config_yaml(
                "ALLOWED_WORKER_COUNT: 1",
                &popen(d, "local", "    SETUP_TIME: 1\n"),
            )
        },
        "never-register",
        fast_timings(),
    )
    .await;
    let id = s.submit("demo/silent", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let view = s.wait_phase(&id, &["expired"], T).await;
    assert!(
        view["error"].as_str().unwrap().contains("did not register"),
        "{view}"
    );
    let starts: Vec<u64> = s
        .reports()
        .iter()
        .filter(|r| r["event"] == "started")
        .map(|r| r["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(starts.len(), 3, "three tries, each spending a retry");
    for pid in starts {
        wait_gone(pid, T).await;
    }
    s.wait_queue(&id, Option::is_none, T).await; // out of the queue for good
    let logs = s.logs("demo/silent", &id).await;
    assert_eq!(
        phases(&logs)
            .iter()
            .filter(|p| *p == "internalerror")
            .count(),
        3
    );
    assert!(
        logs.iter()
            .any(|e| e["message"] == "no retries left; the build will not run again")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_that_stop_requeue_the_build_with_its_retry_restored() {
    let timings = Timings {
        heartbeat_ttl: Duration::from_secs(1),
        requeue_delay: Duration::from_secs(120),
        ..fast_timings()
    };
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "stop-heartbeats",
        timings,
    )
    .await;
    let id = s.submit("demo/hung", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = s.wait_phase(&id, &["internalerror"], T).await;
    assert!(
        view["error"].as_str().unwrap().contains("heartbeats"),
        "{view}"
    );

    let q = s
        .wait_queue(&id, |q| q.as_ref().is_none_or(|q| q.available), T)
        .await
        .expect("still queued");
    assert_eq!(q.retries_remaining, 3, "the retry was given back");
    assert!(q.available);
    assert!(
        q.available_after > chrono::Utc::now() + chrono::Duration::seconds(60),
        "back after the requeue delay"
    );
    let started = s.wait_report(|r| r["event"] == "started", T).await;
    wait_gone(started["pid"].as_u64().unwrap(), T).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_past_machine_max_time_is_stopped_and_spends_its_retry() {
    let timings = Timings {
        requeue_delay: Duration::from_secs(120),
        ..fast_timings()
    };
    let s = TestServer::start(
        |d| {
            config_yaml(
                "ALLOWED_WORKER_COUNT: 1\n  MACHINE_MAX_TIME: 2",
                &popen(d, "local", ""),
            )
        },
        "hold-building",
        timings,
    )
    .await;
    let id = s.submit("demo/long", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&id, &["building"], T).await;
    let view = s.wait_phase(&id, &["internalerror"], T).await;
    assert!(
        view["error"].as_str().unwrap().contains("MACHINE_MAX_TIME"),
        "{view}"
    );
    let q = s
        .manager()
        .builds()
        .queue_state(id.parse().unwrap())
        .await
        .unwrap()
        .expect("still queued");
    assert_eq!(q.retries_remaining, 2);
    let started = s.wait_report(|r| r["event"] == "started", T).await;
    wait_gone(started["pid"].as_u64().unwrap(), T).await;
    s.stop().await;
}

/// A worker that goes silent on every attempt (killed for memory each time, say) gets its
/// retry back BUILDMAN_MAX_SILENT_RETRIES times (2), then spends it like any failure: the
/// build ends for good, and its log says which attempt ended, why, and what came next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_silent_on_every_attempt_ends_after_the_retry_budget() {
    let timings = Timings {
        heartbeat_ttl: Duration::from_secs(1),
        ..fast_timings()
    };
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "stop-heartbeats",
        timings,
    )
    .await;
    let id = s.submit("demo/oom", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // 3 retries: 2 given back, then 3 spent: 5 attempts, then the build gives up.
    let view = s
        .wait_phase(&id, &["expired"], Duration::from_secs(120))
        .await;
    assert!(
        view["error"].as_str().unwrap().contains("heartbeats"),
        "{view}"
    );
    let logs = s.logs("demo/oom", &id).await;
    let told: Vec<&str> = logs
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("attempt "))
        .collect();
    let heard = "the worker stopped sending heartbeats";
    assert_eq!(
        told,
        [
            format!(
                "attempt 1 ended: {heard}; attempt 2 runs in 0.3 s (its retry given back; 3 left)"
            ),
            format!(
                "attempt 2 ended: {heard}; attempt 3 runs in 0.3 s (its retry given back; 3 left)"
            ),
            format!("attempt 3 ended: {heard}; attempt 4 runs in 0.3 s (a retry spent; 2 left)"),
            format!("attempt 4 ended: {heard}; attempt 5 runs in 0.3 s (a retry spent; 1 left)"),
            format!("attempt 5 ended: {heard}"),
        ]
    );
    assert_eq!(
        logs.last().and_then(|e| e["message"].as_str()),
        Some("no retries left; the build will not run again")
    );
    let starts = s
        .reports()
        .into_iter()
        .filter(|r| r["event"] == "started")
        .count();
    assert_eq!(starts, 5, "one worker per attempt, then no more");
    s.stop().await;
}
