//! What the manager does with its executors: falling back when a worker fails before it
//! registers, the circuit breaker, and stopping orphaned workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use buildman_core::{BuildId, Phase};
use buildman_orchestrator::memory::MemoryOrchestrator;

use crate::harness::*;

/// A pod that cannot be scheduled (say) ends the attempt on that executor at once: the
/// reason is in the build log, the worker is stopped, and the next executor runs the build
/// within the same attempt (no retry spent), without waiting out SETUP_TIME.
#[tokio::test]
async fn a_worker_failing_before_it_registers_falls_back_to_the_next_executor() {
    let first = Arc::new(Scripted {
        fail_after_start: Some("pod unschedulable: 0/3 nodes are available: insufficient memory"),
        ..Scripted::new("cluster")
    });
    let second = Arc::new(Scripted::new("local"));
    let manager = manager_with(
        Arc::new(sqlite().await),
        MemoryOrchestrator::new(),
        vec![Exec::of(&first), Exec::of(&second)],
        1,
    );
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("the next executor starts a worker", || async {
        second.started() == 1
    })
    .await;
    assert_eq!(
        first.stopped(),
        ["cluster-1"],
        "the failed worker is stopped"
    );
    let sessions = manager.sessions();
    let ctx = register(sessions, &second.token(0)).await;
    assert!(
        sessions
            .set_phase(&ctx, report(Phase::Complete))
            .await
            .unwrap()
    );
    let log = messages(&manager, build.id).await;
    assert!(
        log.iter().any(|m| m
            == "the worker on executor cluster failed before registering: \
                pod unschedulable: 0/3 nodes are available: insufficient memory"),
        "{log:?}"
    );
    assert_eq!(phase(&manager, build.id).await, Phase::Complete);
    manager.shutdown(Duration::from_secs(5)).await;
}

/// An executor failing N starts in a row (3 by default, 2 here) is skipped for its
/// cool-down: later builds go straight to the next executor.
#[tokio::test]
async fn the_breaker_opens_after_failures_in_a_row() {
    let flaky = Arc::new(Scripted {
        fail_after_start: Some("ErrImagePull"),
        ..Scripted::new("flaky")
    });
    let good = Arc::new(Scripted::new("good"));
    let manager = manager_with(
        Arc::new(sqlite().await),
        MemoryOrchestrator::new(),
        vec![
            Exec {
                breaker_threshold: 2,
                ..Exec::of(&flaky)
            },
            Exec::of(&good),
        ],
        5,
    );
    for (i, repo) in ["a", "b", "c", "d"].into_iter().enumerate() {
        manager.builds().submit(request(repo)).await.unwrap();
        eventually("the good executor runs the build", || async {
            good.started() == i + 1
        })
        .await;
    }
    assert_eq!(flaky.started(), 2, "skipped once open");
    manager.shutdown(Duration::from_secs(5)).await;
}

/// The orphan reaper stops a worker whose build is unknown and one whose build has no
/// live job, once across two managers sharing the orchestrator; it leaves alone a young
/// worker and the worker of a live job.
#[tokio::test]
async fn orphans_are_stopped_once_and_live_workers_are_left_alone() {
    let executor = Arc::new(Scripted::new("local"));
    let orchestrator = MemoryOrchestrator::new();
    let store = Arc::new(sqlite().await);
    let setup = Duration::from_secs(60);
    let exec = || Exec {
        setup_time: setup,
        ..Exec::of(&executor)
    };
    let a = manager_with(store.clone(), orchestrator.clone(), vec![exec()], 1);
    let live = a.builds().submit(request("live")).await.unwrap();
    eventually("a worker is started", || async { executor.started() == 1 }).await;
    let ended = a.builds().submit(request("ended")).await.unwrap();
    a.builds().cancel(ended.id).await.unwrap();
    let old = setup * 2;
    *executor.owned.lock().unwrap() = vec![
        owned("local-1", Some(live.id), old),
        owned("stray", Some(BuildId::new()), old),
        owned("leftover", Some(ended.id), old),
        owned("young", None, Duration::ZERO),
    ];
    let b = manager_with(store, orchestrator, vec![exec()], 1);
    eventually("the orphans are stopped", || async {
        let stopped = executor.stopped();
        stopped.contains(&"stray".to_string()) && stopped.contains(&"leftover".to_string())
    })
    .await;
    // A few more passes on both managers change nothing.
    let passes = executor.owned_calls.load(Ordering::SeqCst);
    eventually("four more orphan passes", || async {
        executor.owned_calls.load(Ordering::SeqCst) >= passes + 4
    })
    .await;
    let mut stopped = executor.stopped();
    stopped.sort();
    assert_eq!(
        stopped,
        ["leftover", "stray"],
        "each stopped once, no other"
    );
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}
