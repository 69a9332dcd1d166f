//! Quay's retry rules in Quay mode (quay-integration.md sections 13 and 14,
//! reference-behaviour.md), as a Quay user and operator see them: the queue item's
//! retries_remaining, available and available_after, the build's phase, its Redis log and
//! the notification queue. Short deadlines come from the config keys: an executor's
//! SETUP_TIME, BUILDMAN_HEARTBEAT_TTL, MACHINE_MAX_TIME. A failed attempt comes back after
//! Quay's 30 s.

use std::path::Path;
use std::time::{Duration, Instant};

use buildman_testkit::quay;
use serde_json::Value;

use super::common::{self, Serve, alive, wait_gone};
use super::{QuayWorld, messages, quay_keys, reports, wait_phase};

/// Long enough for an attempt on a loaded CI machine.
const T: Duration = Duration::from_secs(120);
/// Quay's delay before a failed attempt's item is available again, in seconds.
const REQUEUE: f64 = 30.0;

/// A build's queue item as Quay's tables hold it.
#[derive(Debug)]
struct Item {
    available: bool,
    retries_remaining: i32,
    /// Seconds from the database's clock to `available_after`.
    available_in: f64,
}

async fn item(pool: &sqlx::PgPool, id: i32) -> Option<Item> {
    let row: Option<(bool, i32, f64)> = sqlx::query_as(
        "SELECT available, retries_remaining, \
         EXTRACT(EPOCH FROM available_after - (now() AT TIME ZONE 'utc'))::float8 \
         FROM queueitem WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .expect("queue item");
    row.map(|(available, retries_remaining, available_in)| Item {
        available,
        retries_remaining,
        available_in,
    })
}

/// Waits until the item is back in the queue (available again) after an attempt ended.
async fn wait_returned(pool: &sqlx::PgPool, id: i32) -> Item {
    let deadline = Instant::now() + T;
    loop {
        match item(pool, id).await {
            Some(item) if item.available => return item,
            Some(_) => {}
            None => panic!("the queue item {id} is gone"),
        }
        assert!(Instant::now() < deadline, "item {id} not returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `buildman serve` in Quay mode on `world` with one popen executor running the scripted
/// worker in `scenario`; `manager_keys` and `executor_keys` are added to BUILD_MANAGER[1]
/// and to the executor.
async fn serve(
    world: &QuayWorld,
    dir: &Path,
    scenario: &str,
    manager_keys: &str,
    executor_keys: &str,
) -> Serve {
    let config = format!(
        "{}BUILDMAN_HEARTBEAT_TTL: 4\nBUILD_MANAGER:\n- ephemeral\n- ALLOWED_WORKER_COUNT: 1\n{manager_keys}  EXECUTORS:\n{}{executor_keys}",
        quay_keys(&world.url, world.redis.port(), &world.front.addr),
        common::test_worker_script(dir, &format!("TEST_WORKER_SCENARIO={scenario}")),
    );
    Serve::start(dir, "quay", &config).await
}

/// A build started as Quay's web tier starts one, with webhooks on every build event.
async fn start(world: &QuayWorld) -> quay::StartedBuild {
    for event in ["build_start", "build_success", "build_failure"] {
        quay::notification(&world.pool, "acme", "web", event, &format!("n-{event}")).await;
    }
    world.upload("FROM {server}/base\n").await
}

/// The plain log lines the manager writes when an attempt ends.
fn attempt_lines(log: &[Value]) -> Vec<&str> {
    (log.iter())
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("attempt "))
        .collect()
}

/// The events of the notifications queued for the build.
async fn notified(pool: &sqlx::PgPool, uuid: &str) -> Vec<String> {
    (quay::queued_notifications(pool).await.into_iter())
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix("notification/acme/web/")?;
            let (event, build) = rest.split_once("/build/")?;
            (build.trim_end_matches('/') == uuid).then(|| event.to_owned())
        })
        .collect()
}

/// The pids of the scripted workers that started, in order.
fn started(dir: &Path) -> Vec<u64> {
    (reports(dir).iter())
        .filter(|r| r["event"] == "started")
        .filter_map(|r| r["pid"].as_u64())
        .collect()
}

/// Waits until `n` scripted workers have started; their pids.
async fn wait_started(dir: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + T;
    loop {
        let pids = started(dir);
        if pids.len() >= n {
            return pids;
        }
        assert!(Instant::now() < deadline, "{} workers started", pids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the end of a build's first attempt, for `why`, as Quay shows it: the phase
/// `internalerror`, the queue item back with `left` retries after Quay's 30 s (`retry`
/// says whether the attempt spent its retry or got it back), the reason logged once, then
/// what comes next. Returns the build's Redis log.
async fn assert_first_attempt_ended(
    world: &QuayWorld,
    build: &quay::StartedBuild,
    why: &str,
    retry: &str,
    left: i32,
) -> Vec<Value> {
    let pool = &world.pool;
    wait_phase(pool, &build.uuid, &["internalerror"], T).await;
    let returned = wait_returned(pool, build.queue_item_id).await;
    assert_eq!(returned.retries_remaining, left, "{returned:?}");
    assert!(
        returned.available_in > 0.0 && returned.available_in <= REQUEUE,
        "available again within Quay's 30 s: {returned:?}"
    );
    let log = quay::log_entries(&world.redis.url(), &build.uuid).await;
    assert_eq!(messages(&log, "error"), [why], "{log:#?}");
    assert_eq!(
        attempt_lines(&log),
        [format!(
            "attempt 1 ended: {why}; attempt 2 runs in 30 s ({retry}; {left} left)"
        )],
        "{log:#?}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_registers_spends_a_retry_each_time_and_then_fails_for_good() {
    let world = QuayWorld::start().await;
    let build = start(&world).await;
    let dir = tempfile::tempdir().expect("dir");
    let serve = serve(
        &world,
        dir.path(),
        "never-register",
        "",
        "    SETUP_TIME: 1\n",
    )
    .await;
    let pool = &world.pool;

    let why = "the worker did not register within the executor's SETUP_TIME";
    assert_first_attempt_ended(&world, &build, why, "a retry spent", 2).await;
    assert!(
        notified(pool, &build.uuid).await.is_empty(),
        "retries are left"
    );

    // Attempts 2 and 3 go the same way; then no retry is left.
    let deadline = Instant::now() + 3 * T;
    while item(pool, build.queue_item_id).await.is_some() {
        assert!(Instant::now() < deadline, "{}", serve.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let phase = wait_phase(pool, &build.uuid, &["internalerror"], T).await;
    assert_eq!(phase, "internalerror");
    let log = quay::log_entries(&world.redis.url(), &build.uuid).await;
    assert_eq!(
        messages(&log, "phase"),
        [
            "build-scheduled",
            "internalerror",
            "build-scheduled",
            "internalerror",
            "build-scheduled",
            "internalerror"
        ],
        "{log:#?}"
    );
    assert_eq!(
        messages(&log, "error"),
        [
            why,
            why,
            why,
            "no retries left; the build will not run again"
        ],
        "{log:#?}"
    );
    assert_eq!(attempt_lines(&log).len(), 3, "{log:#?}");
    assert_eq!(
        notified(pool, &build.uuid).await,
        ["build_failure"],
        "Quay sends build_failure when an expired build has no retry left"
    );
    let pids = started(dir.path());
    assert_eq!(pids.len(), 3, "one worker per attempt");
    for pid in pids {
        wait_gone(pid, T).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_registering_is_lost_and_its_build_runs_again_with_the_retry() {
    let world = QuayWorld::start().await;
    let build = start(&world).await;
    let dir = tempfile::tempdir().expect("dir");
    let _serve = serve(&world, dir.path(), "hold-building", "", "").await;
    let pool = &world.pool;

    wait_phase(pool, &build.uuid, &["building"], T).await;
    let pid = wait_started(dir.path(), 1).await[0];
    let claimed = item(pool, build.queue_item_id).await.expect("claimed");
    assert_eq!((claimed.available, claimed.retries_remaining), (false, 2));
    let pid_t = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");

    // BUILDMAN_HEARTBEAT_TTL (4 s) later the worker counts as lost.
    let why = "the worker stopped sending heartbeats";
    assert_first_attempt_ended(&world, &build, why, "its retry given back", 3).await;
    assert_eq!(
        notified(pool, &build.uuid).await,
        ["build_start"],
        "an incomplete attempt notifies nobody"
    );

    // The build runs again once the 30 s are over, on a new claim.
    wait_phase(
        pool,
        &build.uuid,
        &["building"],
        T + Duration::from_secs(30),
    )
    .await;
    let second = wait_started(dir.path(), 2).await[1];
    let claimed = item(pool, build.queue_item_id)
        .await
        .expect("claimed again");
    assert_eq!((claimed.available, claimed.retries_remaining), (false, 2));
    // Cancelled as Quay's web tier does it, so that the worker ends with the test.
    sqlx::query("DELETE FROM queueitem WHERE id = $1")
        .bind(build.queue_item_id)
        .execute(pool)
        .await
        .expect("delete");
    sqlx::query("UPDATE repositorybuild SET phase = 'cancelled' WHERE uuid = $1")
        .bind(&build.uuid)
        .execute(pool)
        .await
        .expect("cancel");
    wait_gone(second, T).await;
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_past_machine_max_time_is_stopped_and_spends_its_retry() {
    let world = QuayWorld::start().await;
    let build = start(&world).await;
    let dir = tempfile::tempdir().expect("dir");
    let _serve = serve(
        &world,
        dir.path(),
        "hold-building",
        "  MACHINE_MAX_TIME: 3\n",
        "",
    )
    .await;
    let pool = &world.pool;

    wait_phase(pool, &build.uuid, &["building"], T).await;
    let pid = wait_started(dir.path(), 1).await[0];
    wait_gone(pid, T).await;
    let why = "the build ran longer than MACHINE_MAX_TIME";
    let log = assert_first_attempt_ended(&world, &build, why, "a retry spent", 2).await;
    assert_eq!(
        messages(&log, "phase"),
        [
            "build-scheduled",
            "unpacking",
            "pulling",
            "building",
            "internalerror"
        ],
        "{log:#?}"
    );
    assert_eq!(notified(pool, &build.uuid).await, ["build_start"]);
}
