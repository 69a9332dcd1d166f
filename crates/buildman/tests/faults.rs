//! The fault suite: a build running on a deployment of two `buildman serve` managers on one
//! PostgreSQL and one Redis, with the real worker (buildah) dialling its manager through a
//! proxy, meets each fault while it prints its output; afterwards the suite checks:
//! - the build completes (every build reaches a final phase);
//! - no build runs twice at once: the stored output is one run of lines per attempt, each
//!   numbered 1, 2, 3, … with no line twice and no interleaving, and the last attempt's run
//!   is whole (two attempts making progress at once would interleave);
//! - every acknowledged log line is stored exactly once (the same check: a line re-sent
//!   after a reconnect would appear twice);
//! - no worker is left without a live job: every worker process started for the build is
//!   gone after it completed.
//!
//! It prints, per fault, how long after the fault ended the attempt that completed the build
//! was making progress (a line of its output stored), and how many attempts ran.
//! `BUILDMAN_FAULTS_REPEAT=5` runs each fault five times and prints the medians (the table in
//! docs/operations.md). Each fault is a test of its own, so nextest (CI) runs them side by
//! side, each process with its own PostgreSQL; under `cargo test` give `--test-threads=1`
//! (the PostgreSQL restart would hit the others). Disk full on the embedded store is
//! `store_faults.rs`.
//! Needs buildah, runc, busybox-static, PostgreSQL and Redis (`.ci/run` installs them).

mod common;
#[path = "faults/rig.rs"]
mod rig;

use std::time::{Duration, Instant};

use common::{redis_command, wait_gone};
use rig::*;

/// The faults played.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// kill -9 of the manager running the build; its worker reconnects to the other.
    KillReconnect,
    /// kill -9 of the manager running the build, with its worker (its host died).
    KillWithWorker,
    /// Redis saved, killed and started again with its data.
    RedisRestart,
    /// FLUSHALL: Redis loses every key.
    RedisFlush,
    /// PostgreSQL stopped for 2 s and started again.
    PostgresRestart,
    /// Both managers killed; the job's deadline passes; a new manager starts.
    AllManagersDown,
    /// The network between the build's manager and Redis cut for 10 s.
    RedisCut,
}

/// What one run of a fault measured.
struct Outcome {
    /// From the end of the fault until the attempt that completed the build had a line of
    /// its output stored (zero when it never stopped).
    recovery: Duration,
    /// How many attempts ran.
    attempts: usize,
    /// From the build's completion until every worker process started for it was gone.
    workers_gone: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_builds_manager_worker_reconnects() {
    measure(Fault::KillReconnect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_builds_manager_with_its_worker() {
    measure(Fault::KillWithWorker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_its_data() {
    measure(Fault::RedisRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed() {
    measure(Fault::RedisFlush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted() {
    measure(Fault::PostgresRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manager_down_past_the_deadline() {
    measure(Fault::AllManagersDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_to_redis_cut_for_10_s() {
    measure(Fault::RedisCut).await;
}

/// Plays `fault` BUILDMAN_FAULTS_REPEAT times (default once), checking the invariants each
/// time, and prints each run and the median.
async fn measure(fault: Fault) {
    let repeat: usize = std::env::var("BUILDMAN_FAULTS_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut outcomes = Vec::new();
    for run in 1..=repeat {
        let o = run_fault(fault).await;
        println!(
            "{fault:?} run {run}: progress again {:.1} s after the fault, {} attempt(s), workers gone {:.1} s after completion",
            o.recovery.as_secs_f64(),
            o.attempts,
            o.workers_gone.as_secs_f64()
        );
        outcomes.push(o);
    }
    let mut times: Vec<f64> = outcomes.iter().map(|o| o.recovery.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let attempts: Vec<usize> = outcomes.iter().map(|o| o.attempts).collect();
    println!(
        "FAULT {fault:?} | recovery median of {repeat}: {:.1} s (all: {times:.1?}) | attempts {attempts:?} | lost 0, duplicated 0, orphaned 0",
        times[times.len() / 2],
    );
}

/// Starts a build on manager `a`, lets it print some output, plays `fault`, and checks the
/// invariants once the build is over.
async fn run_fault(fault: Fault) -> Outcome {
    let mut rig = Rig::start().await;
    rig.start_manager("a", true).await;
    let id = rig.submit("a").await;
    let a = rig.manager("a").base.clone();
    rig.wait_lines("a", &id, 5).await;
    // Started now, so that the build is `a`'s.
    rig.start_manager("b", false).await;
    let before = try_view(&a, &id).await.map_or(0, |(_, logs)| logs.len());
    let (ended, watcher) = play(fault, &mut rig, &id).await;

    let base = rig.manager(watcher).base.clone();
    let deadline = Instant::now() + T;
    let mut samples = Vec::new();
    let (phase, logs) = loop {
        if let Some((phase, logs)) = try_view(&base, &id).await {
            samples.push((Instant::now(), logs.len()));
            if ["complete", "error", "cancelled"].contains(&phase.as_str()) {
                break (phase, logs);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{fault:?}: build {id} not over\n{}",
            logs_of(&rig)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let completed = Instant::now();
    assert_eq!(phase, "complete", "{fault:?}: {logs:?}\n{}", logs_of(&rig));
    let attempts = check_output(fault, &logs);

    // Progress again: the first line of the last attempt stored after the fault began.
    let last_start = (logs.iter().enumerate())
        .rev()
        .find(|(i, e)| *i >= before && e["message"].as_str() == Some("line 1\n"))
        .map_or(before, |(i, _)| i);
    let first = (logs.iter().enumerate())
        .skip(last_start.max(before))
        .find(|(_, e)| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("line "))
        })
        .map_or(logs.len(), |(i, _)| i);
    let progressed = samples
        .iter()
        .find(|(_, n)| *n > first)
        .map_or(completed, |(at, _)| *at);

    // No worker is left behind.
    for (pgid, build, _) in rig.workers() {
        if build == id {
            wait_gone(pgid, T).await;
        }
    }
    Outcome {
        recovery: progressed.saturating_duration_since(ended),
        attempts,
        workers_gone: completed.elapsed(),
    }
}

/// Plays `fault` on the running build; returns when the fault ended and which manager to
/// follow the build through afterwards.
async fn play(fault: Fault, rig: &mut Rig, id: &str) -> (Instant, &'static str) {
    let redis = rig.cluster.redis.port();
    match fault {
        Fault::KillReconnect => {
            rig.manager("a").kill();
            let b = rig.manager("b").grpc;
            rig.workers.target.send_replace(Some(b));
        }
        Fault::KillWithWorker => {
            for (pgid, build, _) in rig.workers() {
                if build == id {
                    kill_group(pgid);
                }
            }
            rig.manager("a").kill();
            let b = rig.manager("b").grpc;
            rig.workers.target.send_replace(Some(b));
        }
        Fault::RedisRestart => {
            assert_eq!(redis_command(redis, "SAVE").await, "+OK");
            rig.cluster.redis.stop().await;
            rig.cluster.redis.restart().await;
        }
        Fault::RedisFlush => {
            assert_eq!(redis_command(redis, "FLUSHALL").await, "+OK");
        }
        Fault::PostgresRestart => {
            tokio::task::spawn_blocking(buildman_testkit::postgres::stop_server)
                .await
                .expect("stop PostgreSQL");
            // The outage itself, not a wait for a condition.
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::spawn_blocking(buildman_testkit::postgres::start_server)
                .await
                .expect("start PostgreSQL");
        }
        Fault::AllManagersDown => {
            rig.manager("a").kill();
            rig.manager("b").kill();
            // Long enough for the job's deadline to pass with no manager watching.
            tokio::time::sleep(TTL + Duration::from_secs(2)).await;
            rig.start_manager("c", true).await;
            return (Instant::now(), "c");
        }
        Fault::RedisCut => {
            rig.redis_link.cut.send_replace(true);
            tokio::time::sleep(Duration::from_secs(10)).await;
            rig.redis_link.cut.send_replace(false);
        }
    }
    (Instant::now(), "b")
}

/// Checks the build's stored output: one run of lines per attempt, numbered from 1 without
/// gaps or repeats, the last one whole. Returns how many attempts printed output.
fn check_output(fault: Fault, logs: &[serde_json::Value]) -> usize {
    let numbers = line_numbers(logs);
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for n in numbers {
        match runs.last_mut() {
            Some(run) if n != 1 => run.push(n),
            _ => runs.push(vec![n]),
        }
    }
    for run in &runs {
        let expected: Vec<usize> = (1..=run.len()).collect();
        assert_eq!(
            run, &expected,
            "{fault:?}: an attempt's lines are stored once each, in order, and attempts do not interleave"
        );
    }
    assert_eq!(
        runs.last().map(Vec::len),
        Some(LINES),
        "{fault:?}: the attempt that completed stored all its lines"
    );
    runs.len()
}
