//! Several managers side by side, as a scaled-out deployment runs them: two managers in this
//! process, each with its own data dir, ports and executor, sharing one PostgreSQL database,
//! one Redis under one ORCHESTRATOR_PREFIX and one JWT signing key (so a worker's token is
//! good at either). ALLOWED_WORKER_COUNT must hold across them, the queue rules too, and a
//! manager that dies must not lose the build it was running.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use buildman_manager::Timings;
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

impl Cluster {
    /// A manager's configuration: the shared backends and key, `allowed` workers, and one
    /// popen executor named `executor` (so reports tell which manager ran a worker).
    fn config(&self, dir: &Path, allowed: u32, executor: &str, executor_keys: &str) -> String {
        let manager_keys = self.manager_keys(allowed);
        let executors = popen(dir, executor, executor_keys);
        format!(
            "{}{}",
            self.shared_keys(),
            config_yaml(&manager_keys, &executors)
        )
    }

    /// Starts a manager with [`Cluster::config`], its test workers playing `scenario` with
    /// `env` added to their environment.
    async fn manager(
        &self,
        executor: &str,
        allowed: u32,
        executor_keys: &str,
        scenario: &str,
        timings: Timings,
        env: &[(&str, &str)],
    ) -> TestServer {
        TestServer::start_with_env(
            |d| self.config(d, allowed, executor, executor_keys),
            scenario,
            timings,
            env,
        )
        .await
    }
}

fn id_of(view: &Value) -> String {
    view["id"].as_str().expect("a build id").to_string()
}

fn at(report: &Value) -> u64 {
    report["at"].as_u64().expect("a timestamp")
}

fn build_of(report: &Value) -> String {
    report["build_uuid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until a build's queue item is gone: a final phase is stored just before it goes.
async fn wait_dequeued(server: &TestServer, id: &str) {
    let build = id.parse().expect("a build id");
    let deadline = Instant::now() + T;
    while server
        .manager()
        .builds()
        .queue_state(build)
        .await
        .expect("queue state")
        .is_some()
    {
        assert!(Instant::now() < deadline, "build {id} is still queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The most workers alive at once, from `started` / `exiting` reports of every manager.
/// At the same millisecond an exit counts first: the slot of a worker is given back only
/// after it exited, so a start in the same millisecond came after it.
fn peak_workers(reports: &[Value]) -> usize {
    let mut edges: Vec<(u64, i32)> = reports
        .iter()
        .filter_map(|r| match r["event"].as_str()? {
            "started" => Some((at(r), 1)),
            "exiting" => Some((at(r), -1)),
            _ => None,
        })
        .collect();
    edges.sort();
    let (mut alive, mut peak) = (0i32, 0i32);
    for (_, delta) in edges {
        alive += delta;
        peak = peak.max(alive);
    }
    usize::try_from(peak).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_cap_and_the_queue_rules_hold_across_managers() {
    let cluster = Cluster::start().await;
    let env = [("TEST_WORKER_BUILD_MS", "500")];
    let a = cluster
        .manager("a", 2, "", "happy", fast_timings(), &env)
        .await;
    let b = cluster
        .manager("b", 2, "", "happy", fast_timings(), &env)
        .await;

    // A's first build takes one slot, then B's first takes the other: each manager runs
    // workers (after that, each completion wakes the manager that saw it).
    let repos = ["scale/r0", "scale/r1", "scale/r2", "scale/r3"];
    let mut submitted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (n, server) in [&a, &b].into_iter().enumerate() {
        let id = id_of(&server.submit(repos[n], &[]).await);
        server
            .wait_report(|r| r["event"] == "started" && build_of(r) == id, T)
            .await;
        submitted.entry(repos[n]).or_default().push(id);
    }
    for n in 2..12 {
        let server = if n % 2 == 1 { &b } else { &a };
        let repo = repos[n % repos.len()];
        let id = id_of(&server.submit(repo, &[]).await);
        submitted.entry(repo).or_default().push(id);
    }
    for (repo, ids) in &submitted {
        for id in ids {
            let view = a
                .wait_phase(id, &["complete", "error", "internalerror"], T)
                .await;
            assert_eq!(view["phase"], "complete", "{repo} {id}: {view}");
        }
    }

    let reports: Vec<Value> = a.reports().into_iter().chain(b.reports()).collect();
    // Each build ran once: one worker, one scheduling.
    let mut runs: HashMap<String, usize> = HashMap::new();
    for r in reports.iter().filter(|r| r["event"] == "started") {
        *runs.entry(build_of(r)).or_default() += 1;
    }
    assert_eq!(runs.len(), 12, "{runs:?}");
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    for (repo, ids) in &submitted {
        for id in ids {
            let scheduled = phases(&a.logs(repo, id).await)
                .iter()
                .filter(|p| *p == "build-scheduled")
                .count();
            assert_eq!(scheduled, 1, "{repo} {id}");
        }
    }

    // Never more than two workers alive over both managers, and the cap was used.
    let peak = peak_workers(&reports);
    assert_eq!(peak, 2, "workers alive at once over both managers");

    // Per repository: one build at a time (from registering to the end of building, which
    // is before its queue item is completed), in the order they were submitted.
    let window = |id: &str, event: &str| {
        reports
            .iter()
            .find(|r| r["event"] == event && build_of(r) == id)
            .map(at)
            .unwrap_or_else(|| panic!("no {event} report for {id}"))
    };
    for (repo, ids) in &submitted {
        let mut windows: Vec<(u64, u64, &String)> = ids
            .iter()
            .map(|id| (window(id, "registered"), window(id, "built"), id))
            .collect();
        windows.sort();
        let order: Vec<&String> = windows.iter().map(|w| w.2).collect();
        assert_eq!(order, ids.iter().collect::<Vec<_>>(), "order in {repo}");
        for pair in windows.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "builds of {repo} overlap: {} ran until {}, {} registered at {}",
                pair[0].2,
                pair[0].1,
                pair[1].2,
                pair[1].0
            );
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_survives_the_manager_that_ran_it() {
    let cluster = Cluster::start().await;
    let timings = Timings {
        heartbeat_ttl: Duration::from_secs(2),
        requeue_delay: Duration::from_millis(300),
        ..fast_timings()
    };
    let a = cluster
        .manager("a", 1, "", "hold-building", timings.clone(), &[])
        .await;
    let repo = "scale/failover";
    let id = id_of(&a.submit(repo, &[]).await);
    let first = a.wait_report(|r| r["event"] == "registered", T).await;
    a.wait_phase(&id, &["building"], T).await;

    // B runs only builds whose retry came back: its executor wants two left after the
    // claim, which only a restored retry leaves (3, claimed 2, restored 3, claimed 2).
    let b = cluster
        .manager(
            "b",
            1,
            "    MINIMUM_RETRY_THRESHOLD: 2\n",
            "happy",
            timings,
            &[],
        )
        .await;
    let _a_dir = a.stop().await;
    // A's worker lost its manager: its heartbeats fail and it gives up.
    wait_gone(first["pid"].as_u64().expect("a pid"), T).await;

    let view = b.wait_phase(&id, &["complete"], T).await;
    assert_eq!(view["phase"], "complete", "{view}");
    let logs = b.logs(repo, &id).await;
    // Both attempts, split by the expiry's `internalerror`. Where `build-scheduled` lands
    // among an attempt's first entries is not checked: the scheduler appends it after
    // marking the build scheduled, and a quick worker's first phases can come in between.
    let all = phases(&logs);
    let attempts: Vec<Vec<&str>> = all
        .split(|p| p == "internalerror")
        .map(|attempt| {
            let mut attempt: Vec<&str> = attempt.iter().map(String::as_str).collect();
            attempt.sort_by_key(|p| *p != "build-scheduled");
            attempt
        })
        .collect();
    let first_run = vec!["build-scheduled", "unpacking", "pulling", "building"];
    let second_run = [first_run.clone(), vec!["pushing", "complete"]].concat();
    assert_eq!(attempts, [first_run, second_run], "{logs:?}");
    assert!(
        logs.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the manager running the build died"))),
        "{logs:?}"
    );
    let reruns: Vec<Value> = b
        .reports()
        .into_iter()
        .filter(|r| r["event"] == "started")
        .collect();
    assert_eq!(reruns.len(), 1, "B ran it once: {reruns:?}");
    assert_eq!(build_of(&reruns[0]), id);
    wait_dequeued(&b, &id).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_another_manager_stops_the_worker_before_its_slot_is_reused() {
    let cluster = Cluster::start().await;
    // Heartbeats far apart: a worker that quits by itself (its job is gone) would take
    // seconds, a stop takes milliseconds.
    let env = [("TEST_WORKER_HEARTBEAT_MS", "5000")];
    let a = cluster
        .manager("a", 1, "", "hold-building", fast_timings(), &env)
        .await;
    let b = cluster
        .manager("b", 1, "", "happy", fast_timings(), &env)
        .await;
    let running = id_of(&a.submit("scale/cancelled", &[]).await);
    a.wait_phase(&running, &["building"], T).await;
    let worker = a
        .wait_report(|r| r["event"] == "registered" && build_of(r) == running, T)
        .await;
    let queued = id_of(&b.submit("scale/next", &[]).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.build(&queued).await["phase"],
        "waiting",
        "held by the cap"
    );

    // B takes the job, but the worker is A's child: A must stop it.
    let resp = b.cancel("scale/cancelled", &running).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(b.build(&running).await["phase"], "cancelled");
    wait_gone(worker["pid"].as_u64().expect("a pid"), T).await;
    let events_of_worker: Vec<String> = a
        .reports()
        .iter()
        .filter(|r| r["pid"] == worker["pid"])
        .map(|r| r["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !events_of_worker.iter().any(|e| e == "job-gone"),
        "A stopped its worker; it did not find out by itself: {events_of_worker:?}"
    );
    let exited = a
        .wait_report(|r| r["event"] == "exiting" && r["pid"] == worker["pid"], T)
        .await;

    // The slot came back only once the worker was gone: the queued build starts after.
    let started = |r: &Value| r["event"] == "started" && build_of(r) == queued;
    let deadline = Instant::now() + T;
    let next = loop {
        if let Some(r) = a.reports().into_iter().chain(b.reports()).find(started) {
            break r;
        }
        assert!(Instant::now() < deadline, "{queued} never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        at(&next) >= at(&exited),
        "the next worker started at {} before the cancelled one exited at {}",
        at(&next),
        at(&exited)
    );
    wait_dequeued(&a, &running).await;
    a.stop().await;
    b.stop().await;
}
