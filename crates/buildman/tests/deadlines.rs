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
    let build_id = id.parse().unwrap();
    assert_eq!(
        s.manager().builds().queue_state(build_id).await.unwrap(),
        None,
        "out of the queue for good"
    );
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
        .manager()
        .builds()
        .queue_state(id.parse().unwrap())
        .await
        .unwrap()
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
