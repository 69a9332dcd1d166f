//! Scheduling: the worker cap and per-repository order, executor fallback and the
//! executor policies (MINIMUM_RETRY_THRESHOLD, NAMESPACE_WHITELIST, STAGED_ROLLOUT), and
//! cancel.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn events<'a>(reports: &'a [Value], name: &str) -> Vec<&'a Value> {
    reports.iter().filter(|r| r["event"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_at_a_time_in_repository_order_without_losing_retries() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "happy",
        fast_timings(),
    )
    .await;
    let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
    for repo in ["demo/a", "demo/a", "demo/b", "demo/a", "demo/b"] {
        let id = s.submit(repo, &[]).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        ids.entry(repo).or_default().push(id);
    }
    let all: Vec<String> = ids.values().flatten().cloned().collect();

    // While builds wait for the one slot, none of them spends a retry.
    let deadline = Instant::now() + T;
    loop {
        let mut finished = 0;
        for id in &all {
            let view = s.build(id).await;
            match view["phase"].as_str().unwrap() {
                "complete" => finished += 1,
                "waiting" => {
                    // Unclaimed while it waits for the slot; a claim (the one retry a
                    // run spends) comes only with a free slot.
                    let q = s
                        .manager()
                        .builds()
                        .queue_state(id.parse().unwrap())
                        .await
                        .unwrap();
                    if let Some(q) = q.filter(|q| q.available) {
                        assert_eq!(q.retries_remaining, 3, "a waiting build lost a retry");
                    }
                }
                "error" | "internalerror" | "expired" | "cancelled" => {
                    panic!("build failed: {view}")
                }
                _ => {}
            }
        }
        if finished == all.len() {
            break;
        }
        assert!(Instant::now() < deadline, "builds did not all complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Never two workers at once: each worker's life ends before the next one's starts.
    // (A worker reports its exit just after its build completed: wait for the last one.)
    for started in events(&s.reports(), "started") {
        wait_gone(started["pid"].as_u64().unwrap(), T).await;
    }
    let reports = s.reports();
    let started = events(&reports, "started");
    let exits = events(&reports, "exiting");
    assert_eq!(started.len(), 5);
    let mut lives: Vec<(u64, u64)> = started
        .iter()
        .map(|st| {
            let end = exits
                .iter()
                .find(|c| c["pid"] == st["pid"])
                .expect("every worker exited");
            (st["at"].as_u64().unwrap(), end["at"].as_u64().unwrap())
        })
        .collect();
    lives.sort();
    for pair in lives.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two workers overlapped: {pair:?}");
    }
    // Per repository, builds ran in the order they were submitted.
    for (repo, expected) in &ids {
        let order: Vec<String> = started
            .iter()
            .map(|r| r["build_uuid"].as_str().unwrap().to_string())
            .filter(|id| expected.contains(id))
            .collect();
        assert_eq!(&order, expected, "order in {repo}");
    }
    // Each build was scheduled exactly once.
    for (repo, list) in &ids {
        for id in list {
            let logs = s.logs(repo, id).await;
            assert_eq!(
                phases(&logs)
                    .iter()
                    .filter(|p| *p == "build-scheduled")
                    .count(),
                1
            );
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_cannot_start_falls_through_to_the_next() {
    let s = TestServer::start(
        |d| {
            let broken = "  - EXECUTOR: popen\n    NAME: broken\n    BUILDER_BINARY_LOCATION: /nonexistent/quay-builder\n";
            config_yaml("ALLOWED_WORKER_COUNT: 2", &format!("{broken}{}", popen(d, "second", "")))
        },
        "happy",
        fast_timings(),
    )
    .await;
    let id = s.submit("demo/fallback", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&id, &["complete"], T).await;
    let started = s.wait_report(|r| r["event"] == "started", T).await;
    assert!(
        started["argv0"]
            .as_str()
            .unwrap()
            .ends_with("worker-second")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_policies_skip_the_right_executors() {
    let s = TestServer::start(
        |d| {
            let executors = [
                popen(d, "needs3", "    MINIMUM_RETRY_THRESHOLD: 3\n"),
                popen(d, "teamonly", "    NAMESPACE_WHITELIST: [team]\n"),
                popen(d, "rollout0", "    STAGED_ROLLOUT: 0.0\n"),
                popen(d, "needs2", "    MINIMUM_RETRY_THRESHOLD: 2\n"),
                popen(d, "last", ""),
            ]
            .concat();
            config_yaml("ALLOWED_WORKER_COUNT: 1", &executors)
        },
        "happy",
        fast_timings(),
    )
    .await;
    // First try: 2 retries left after the claim. `needs3` is skipped, `teamonly` is not for
    // demo, `rollout0` admits nobody, `needs2` takes it.
    let demo = s.submit("demo/policy", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&demo, &["complete"], T).await;
    let team = s.submit("team/policy", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&team, &["complete"], T).await;
    let reports = s.reports();
    let ran_on = |id: &str| {
        events(&reports, "started")
            .iter()
            .find(|r| r["build_uuid"] == id)
            .map(|r| {
                r["argv0"]
                    .as_str()
                    .unwrap()
                    .rsplit('-')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .unwrap()
    };
    assert_eq!(ran_on(&demo), "needs2");
    assert_eq!(ran_on(&team), "teamonly");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_building_worker_and_dequeues_a_waiting_build() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-building",
        fast_timings(),
    )
    .await;
    let running = s.submit("demo/cancel", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = s.submit("demo/other", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&running, &["building"], T).await;
    assert_eq!(
        s.build(&queued).await["phase"],
        "waiting",
        "held back by the worker cap"
    );

    // The queued one first: it leaves the queue and never runs.
    let resp = s.cancel("demo/other", &queued).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(s.build(&queued).await["phase"], "cancelled");
    assert_eq!(
        s.manager()
            .builds()
            .queue_state(queued.parse().unwrap())
            .await
            .unwrap(),
        None
    );

    let resp = s.cancel("demo/cancel", &running).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.json::<Value>().await.unwrap(), "Okay");
    assert_eq!(s.build(&running).await["phase"], "cancelled");
    let started = s
        .wait_report(
            |r| r["build_uuid"] == running.as_str() && r["event"] == "started",
            T,
        )
        .await;
    wait_gone(started["pid"].as_u64().unwrap(), T).await;
    assert_eq!(
        s.manager()
            .builds()
            .queue_state(running.parse().unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        phases(&s.logs("demo/cancel", &running).await)
            .last()
            .unwrap(),
        "cancelled"
    );

    // A finished build cannot be cancelled again.
    let resp = s.cancel("demo/cancel", &running).await;
    assert_eq!(resp.status(), 400);
    assert!(
        events(&s.reports(), "started")
            .iter()
            .all(|r| r["build_uuid"] != queued.as_str())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_refused_while_pushing() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-pushing",
        fast_timings(),
    )
    .await;
    let id = s.submit("demo/push", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&id, &["pushing"], T).await;
    let resp = s.cancel("demo/push", &id).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("pushing"),
        "{body}"
    );
    assert_eq!(s.build(&id).await["phase"], "pushing");
    let started = s.wait_report(|r| r["event"] == "started", T).await;
    assert!(
        alive(started["pid"].as_u64().unwrap()),
        "the worker keeps pushing"
    );
    s.stop().await;
}
