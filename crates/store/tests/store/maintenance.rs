//! The suite's tests of the metrics' counts and the retention passes (see `suite.rs`).

use std::time::Duration;

use buildman_core::{Phase, Requeue};
use buildman_store::Store;
use chrono::{TimeDelta, Utc};

use crate::suite::{Backend, LEASE, create, soon};

/// Quay's three queue gauges count repositories, not items; the oldest waiting build and
/// the live phases come with them; another manager's handle sees the same.
pub async fn queue_stats_are_quays_counts_for_every_manager<B: Backend>() {
    let db = B::fresh().await;
    let (one, other) = (db.open().await, db.open().await);
    let c = create(&one, "ns", "c").await;
    let a1 = create(&one, "ns", "a").await;
    let _a2 = create(&one, "ns", "a").await;
    let _b = create(&one, "ns", "b").await;
    let now = soon();
    // c waits an hour before its next attempt; a1 runs.
    let claimed = one.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.build_id, c.id);
    let later = Requeue {
        after: Duration::from_secs(3600),
        restore_retry: true,
        silent_restores: 0,
    };
    assert!(one.return_item(&claimed, now, &later).await.unwrap());
    let running = one.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(running.build_id, a1.id);
    let before = one.set_phase(a1.id, Phase::Building, &[], None, None).await;
    assert_eq!(before.unwrap(), Some(Phase::Waiting));

    let stats = other.queue_stats(now).await.unwrap();
    assert_eq!(stats.locked, 1, "a runs");
    assert_eq!(
        stats.available, 2,
        "a (its second build) and b; c is not due"
    );
    assert_eq!(stats.available_unlocked, 1, "b: a has a build running");
    assert_eq!(
        stats.oldest_waiting,
        Some(c.created_at),
        "c waits, unclaimed"
    );
    assert_eq!(
        stats.live_phases,
        [(Phase::Waiting, 3), (Phase::Building, 1)]
    );
    // Once the lease ran out, a's claimed item is claimable again: nothing is locked, and a
    // still counts once (c is still not due).
    let expired = now + TimeDelta::from_std(LEASE).unwrap() + TimeDelta::seconds(1);
    let stats = other.queue_stats(expired).await.unwrap();
    assert_eq!(
        (stats.locked, stats.available, stats.available_unlocked),
        (0, 2, 2)
    );
    B::close(&one).await;
    B::close(&other).await;
}

/// Only builds over for good are offered for retention, once each for their contexts,
/// and deleted (with their logs) only after that.
pub async fn retention_takes_only_builds_over_for_good<B: Backend>() {
    let db = B::fresh().await;
    let store = db.open().await;
    let now = soon();
    // complete: claimed, then done with the queue.
    let done = create(&store, "ns", "done").await;
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    store
        .set_phase(done.id, Phase::Complete, &[], None, None)
        .await
        .unwrap();
    assert!(store.complete_item(&item).await.unwrap());
    store
        .append_logs(done.id, &[buildman_core::LogEntry::output("hello")])
        .await
        .unwrap();
    // internalerror with a retry left: still queued, so not over.
    let retried = create(&store, "ns", "retried").await;
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    store
        .set_phase(retried.id, Phase::InternalError, &[], None, None)
        .await
        .unwrap();
    let again = Requeue {
        after: Duration::ZERO,
        restore_retry: false,
        silent_restores: 0,
    };
    assert!(store.return_item(&item, now, &again).await.unwrap());
    // cancelled while waiting.
    let cancelled = create(&store, "ns", "cancelled").await;
    store
        .set_phase(cancelled.id, Phase::Cancelled, &[], None, None)
        .await
        .unwrap();
    store.delete_item(cancelled.id).await.unwrap();
    let _waiting = create(&store, "ns", "waiting").await;

    let after = Utc::now() + TimeDelta::seconds(1);
    let ids = |builds: Vec<buildman_core::Build>| builds.iter().map(|b| b.id).collect::<Vec<_>>();
    let ended = ids(store.ended_with_context(after, 10).await.unwrap());
    assert_eq!(ended, [done.id, cancelled.id], "oldest end first");
    let long_ago = Utc::now() - TimeDelta::hours(1);
    assert!(
        store
            .ended_with_context(long_ago, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(store.ended_with_context(after, 1).await.unwrap()),
        [done.id]
    );

    assert_eq!(
        store.delete_ended_builds(after, 10).await.unwrap(),
        0,
        "no build whose context is still there is deleted"
    );
    store.mark_contexts_pruned(&[done.id]).await.unwrap();
    assert_eq!(
        ids(store.ended_with_context(after, 10).await.unwrap()),
        [cancelled.id]
    );
    assert_eq!(store.delete_ended_builds(long_ago, 10).await.unwrap(), 0);
    assert_eq!(store.delete_ended_builds(after, 10).await.unwrap(), 1);
    assert!(store.get_build(done.id).await.unwrap().is_none());
    assert_eq!(
        store
            .read_logs(done.id, 0, 10, u64::MAX)
            .await
            .unwrap()
            .total,
        0
    );
    for kept in [retried.id, cancelled.id] {
        assert!(store.get_build(kept).await.unwrap().is_some());
    }
    store.ping().await.unwrap();
    B::close(&store).await;
}
