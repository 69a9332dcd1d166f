//! Scheduling, the ends of jobs and shutdown.

use std::sync::Arc;
use std::time::Duration;

use buildman_core::Phase;
use buildman_orchestrator::Orchestrator;
use buildman_orchestrator::memory::MemoryOrchestrator;

use crate::harness::*;

#[tokio::test]
async fn an_attempt_no_executor_takes_spends_its_retry_and_the_last_one_gives_up() {
    let executor = Arc::new(Scripted {
        fail_start: true,
        ..Scripted::new("scripted")
    });
    let manager = manager(&executor, 1).await;
    let build = manager.builds().submit(request("r")).await.unwrap();
    // Three attempts, each spending a retry; then the build ends for good.
    eventually("the build gives up", || async {
        manager
            .builds()
            .queue_state(build.id)
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let build = manager.builds().get(build.id).await.unwrap().unwrap();
    assert_eq!(build.phase, Phase::InternalError);
    assert!(manager.builds().is_expired(&build).await.unwrap());
    let messages = messages(&manager, build.id).await;
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.starts_with("no executor could start a worker (scripted:"))
            .count(),
        3,
        "one attempt per retry: {messages:?}"
    );
    let end = &messages[messages.len() - 4..];
    assert_eq!(
        end,
        [
            "internalerror",
            "no executor could start a worker",
            "attempt 3 ended: no executor could start a worker",
            "no retries left; the build will not run again"
        ]
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn no_claim_without_a_slot() {
    let executor = scripted();
    let manager = manager(&executor, 1).await;
    let first = manager.builds().submit(request("a")).await.unwrap();
    let second = manager.builds().submit(request("b")).await.unwrap();
    eventually("the first build is scheduled", || async {
        phase(&manager, first.id).await == Phase::BuildScheduled
    })
    .await;
    let waiting = manager
        .builds()
        .queue_state(second.id)
        .await
        .unwrap()
        .unwrap();
    assert!(waiting.available, "the second build is not claimed");
    assert_eq!(waiting.retries_remaining, 3, "and has spent no retry");
    assert_eq!(executor.started(), 1);
    // The first build ends: its slot goes to the second.
    manager.builds().cancel(first.id).await.unwrap();
    eventually("the second build is scheduled", || async {
        phase(&manager, second.id).await == Phase::BuildScheduled
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_worker_follows_the_transition_table() {
    let executor = scripted();
    let manager = manager(&executor, 1).await;
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async { executor.started() == 1 }).await;
    let sessions = manager.sessions();
    let ctx = register(sessions, &executor.token(0)).await;
    assert!(
        sessions
            .set_phase(&ctx, report(Phase::Building))
            .await
            .unwrap()
    );
    assert!(
        !sessions
            .set_phase(&ctx, report(Phase::Waiting))
            .await
            .unwrap(),
        "a worker may not move a build back to waiting"
    );
    assert!(
        !sessions
            .set_phase(&ctx, report(Phase::Cancelled))
            .await
            .unwrap(),
        "nor cancel it"
    );
    assert_eq!(phase(&manager, build.id).await, Phase::Building);
    assert!(
        sessions
            .set_phase(&ctx, report(Phase::Complete))
            .await
            .unwrap()
    );
    assert!(
        !sessions
            .set_phase(&ctx, report(Phase::Building))
            .await
            .unwrap(),
        "nothing follows a final phase"
    );
    assert_eq!(phase(&manager, build.id).await, Phase::Complete);
    assert!(
        manager
            .builds()
            .queue_state(build.id)
            .await
            .unwrap()
            .is_none()
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_waits_for_a_worker_stop_in_flight() {
    let executor = Arc::new(Scripted {
        stop_takes: Duration::from_millis(300),
        ..Scripted::new("scripted")
    });
    let manager = manager(&executor, 1).await;
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async { executor.started() == 1 }).await;
    manager.builds().cancel(build.id).await.unwrap();
    // The stop runs in the background; the shutdown waits for it.
    manager.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        executor.stopped().len(),
        1,
        "the worker was stopped before the shutdown returned"
    );
}

/// A push is cancelled only when its worker is gone: refused while the worker is heard
/// from, accepted once its job is lost (a flushed orchestrator, say), so no build is stuck
/// in `pushing` holding its queue item.
#[tokio::test]
async fn a_push_can_be_cancelled_once_its_worker_is_gone() {
    let orchestrator = MemoryOrchestrator::new();
    let executor = scripted();
    let manager = manager_with(
        Arc::new(sqlite().await),
        orchestrator.clone(),
        vec![Exec::of(&executor)],
        1,
    );
    let build = manager.builds().submit(request("r")).await.unwrap();
    eventually("a worker is started", || async { executor.started() == 1 }).await;
    let sessions = manager.sessions();
    let ctx = register(sessions, &executor.token(0)).await;
    assert!(
        sessions
            .set_phase(&ctx, report(Phase::Pushing))
            .await
            .unwrap()
    );
    let refused = manager.builds().cancel(build.id).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is pushing and can no longer be cancelled"),
        "{refused}"
    );
    // The job is lost; the worker is heard from no more.
    let key = buildman_core::job::job_key(build.id);
    assert!(orchestrator.take(&key).await.unwrap().is_some());
    manager.builds().cancel(build.id).await.unwrap();
    assert_eq!(phase(&manager, build.id).await, Phase::Cancelled);
    assert!(
        manager
            .builds()
            .queue_state(build.id)
            .await
            .unwrap()
            .is_none()
    );
    manager.shutdown(Duration::from_secs(5)).await;
}
