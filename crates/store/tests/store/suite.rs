//! The tests every backend must pass, written once against [`Backend`]; `store_suite!`
//! instantiates them as `#[tokio::test]`s for one backend.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use buildman_core::queue::queue_name;
use buildman_core::{Build, BuildId, BuildSource, ClaimedItem, LogEntry, NewBuild, Phase, Requeue};
use buildman_store::{BuildFilter, LogPage, Store, StoreError, WorkerLine};
use chrono::{DateTime, TimeDelta, Utc};

/// A database for one test, and how to open handles on it.
#[async_trait]
pub trait Backend: Send + Sync + Sized + 'static {
    /// The store type of the backend.
    type Store: Store + Clone;
    /// A fresh, empty database.
    async fn fresh() -> Self;
    /// A new handle on the database with its own connections, as another manager would have.
    async fn open(&self) -> Self::Store;
    /// Closes a handle's connections.
    async fn close(store: &Self::Store);
    /// Runs `sql` on a connection of its own that skips foreign-key checks, to write what
    /// the store never would.
    async fn tamper(&self, sql: &str);
    /// SQL literals the column types take but the store cannot read: tags that are no list
    /// of names, a `created_at` that is no time, a log entry that is none.
    const NOT_TAGS: &str;
    const NOT_A_TIME: &str;
    const NOT_AN_ENTRY: &str;
}

/// Generates one `#[tokio::test]` per suite test for a [`Backend`] type.
macro_rules! store_suite {
    ($backend:ty) => {
        $crate::suite::store_suite!(@tests $backend:
            create_get_and_list,
            claims_oldest_first_one_per_repository,
            an_expired_lease_is_claimable_again_and_costs_a_retry,
            exhausted_retries_are_not_claimable,
            returned_items_wait_and_may_get_their_retry_back,
            attempts_and_silent_restores_are_counted,
            builds_of_every_repository_are_found_by_filter,
            a_builds_attempts_executor_and_times_are_kept,
            a_phase_change_and_its_log_entry_are_one,
            a_lost_claim_cannot_be_used,
            extensions_write_only_past_the_minimum,
            delete_item_ignores_the_claim,
            release_all_claims_returns_every_claim,
            claimed_items_are_the_claims_held,
            concurrent_claimers_never_share_an_item,
            a_full_namespace_refuses_new_builds,
            concurrent_submissions_respect_the_queue_limit,
            set_phase_is_a_compare_and_set,
            logs_append_in_batches_and_read_in_pages,
            a_log_page_is_bounded_by_bytes,
            concurrent_appends_keep_indices_dense,
            worker_lines_are_stored_once_per_attempt_across_builds,
            lines_of_an_attempt_that_is_over_are_refused,
            concurrent_worker_lines_are_stored_once,
            worker_lines_and_the_managers_entries_share_one_dense_log,
            data_survives_reopening,
            concurrent_opens_migrate_once,
            undecodable_rows_are_reported_as_corrupt,
            queue_stats_are_quays_counts_for_every_manager,
            retention_takes_only_builds_over_for_good,
            a_complete_builds_tags_are_found_for_the_cached_tag,
        );
    };
    (@tests $backend:ty: $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::suite::$test::<$backend>().await;
            }
        )*
    };
}
pub(crate) use store_suite;

pub use crate::maintenance::{
    queue_stats_are_quays_counts_for_every_manager, retention_takes_only_builds_over_for_good,
};
pub use crate::tags::a_complete_builds_tags_are_found_for_the_cached_tag;

/// The lease of most claims in the tests.
pub const LEASE: Duration = Duration::from_secs(530);

/// A database and one handle on it; keep the database alive as long as the handle.
async fn store<B: Backend>() -> (B, B::Store) {
    let db = B::fresh().await;
    let store = db.open().await;
    (db, store)
}

/// A new build of `namespace/repository` with every field set.
pub fn new_build(namespace: &str, repository: &str) -> NewBuild {
    NewBuild {
        namespace: namespace.to_string(),
        repository: repository.to_string(),
        source: BuildSource::ArchiveUrl {
            url: "https://example.com/context.tar.gz".to_string(),
        },
        tags: vec!["latest".to_string(), "v1".to_string()],
        context: "/".to_string(),
        dockerfile_path: "/Dockerfile".to_string(),
        display_name: "abc123".to_string(),
        manual_user: Some("alice".to_string()),
        pull_robot: None,
    }
}

/// Creates a build of `namespace/repository` with 3 retries and no queue limit.
pub async fn create<S: Store>(store: &S, namespace: &str, repository: &str) -> Build {
    store
        .create_build(new_build(namespace, repository), 3, None)
        .await
        .unwrap()
}

/// Some time after every build created so far became available, in whole milliseconds as
/// the store keeps times.
pub fn soon() -> DateTime<Utc> {
    let now = Utc::now() + TimeDelta::seconds(1);
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap()
}

/// `s` seconds.
/// A return to the queue after `after`, with the retry given back or not.
fn requeue(after: Duration, restore_retry: bool) -> Requeue {
    Requeue {
        after,
        restore_retry,
        silent_restores: 0,
    }
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

/// The messages of a page of log.
fn messages(page: LogPage) -> Vec<String> {
    page.entries.into_iter().map(|e| e.message).collect()
}

pub async fn create_get_and_list<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let mut git = new_build("acme", "web");
    git.source = BuildSource::Git {
        url: "git@example.com:acme/web.git".to_string(),
        sha: "deadbeef".to_string(),
        private_key: Some("KEY".to_string()),
    };
    git.pull_robot = Some("acme+robot".to_string());
    let first = store.create_build(git, 3, None).await.unwrap();
    assert_eq!(first.phase, Phase::Waiting);
    assert_eq!(first.created_at, first.updated_at);
    assert_eq!(
        store.get_build(first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_build(BuildId::new()).await.unwrap(), None);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = create(&store, "acme", "web").await;
    // Same millisecond: insertion order still decides.
    let third = create(&store, "acme", "web").await;
    create(&store, "acme", "other").await;
    create(&store, "other", "web").await;

    let all = store.list_builds("acme", "web", 10, None).await.unwrap();
    let ids: Vec<_> = all.iter().map(|b| b.id).collect();
    assert_eq!(ids, [third.id, second.id, first.id]);
    assert_eq!(all[2], first);

    let limited = store.list_builds("acme", "web", 2, None).await.unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].id, third.id);

    let since = store
        .list_builds("acme", "web", 10, Some(second.created_at))
        .await
        .unwrap();
    let ids: Vec<_> = since.iter().map(|b| b.id).collect();
    assert_eq!(ids, [third.id, second.id]);
    assert!(
        store
            .list_builds("nobody", "web", 10, None)
            .await
            .unwrap()
            .is_empty()
    );

    let state = store.queue_state(first.id).await.unwrap().unwrap();
    assert_eq!(state.retries_remaining, 3);
    assert!(state.available);
    assert_eq!(state.available_after, first.created_at);
    assert_eq!(state.processing_expires, None);
}

pub async fn claims_oldest_first_one_per_repository<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let a1 = create(&store, "acme", "a").await;
    let a2 = create(&store, "acme", "a").await;
    let b1 = create(&store, "acme", "b").await;
    let now = soon();

    let first = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(first.build_id, a1.id);
    assert_eq!(first.queue_name, queue_name("acme", "a"));
    assert_eq!(first.retries_remaining, 2);
    // a2 waits for a1: the next claim takes the other repository's build.
    let second = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(second.build_id, b1.id);
    assert_eq!(store.claim(now, LEASE).await.unwrap(), None);

    let state = store.queue_state(a1.id).await.unwrap().unwrap();
    assert!(!state.available);
    assert_eq!(state.retries_remaining, 2);
    assert_eq!(
        state.processing_expires,
        Some(now + TimeDelta::from_std(LEASE).unwrap())
    );

    // Once a1 is done, a2 may run.
    assert!(store.complete_item(&first).await.unwrap());
    assert_eq!(store.queue_state(a1.id).await.unwrap(), None);
    let third = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(third.build_id, a2.id);
}

pub async fn an_expired_lease_is_claimable_again_and_costs_a_retry<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = store
        .create_build(new_build("acme", "web"), 2, None)
        .await
        .unwrap();
    let later = store
        .create_build(new_build("acme", "web"), 2, None)
        .await
        .unwrap();
    let now = soon();
    let lease = Duration::from_secs(10);

    let first = store.claim(now, lease).await.unwrap().unwrap();
    assert_eq!(first.build_id, build.id);
    assert_eq!(first.retries_remaining, 1);
    assert_eq!(store.claim(now + secs(9), lease).await.unwrap(), None);

    // The lease ran out: the same item again (oldest first, its repository no longer busy).
    let second = store.claim(now + secs(10), lease).await.unwrap().unwrap();
    assert_eq!(second.item_id, first.item_id);
    assert_ne!(second.state_id, first.state_id);
    assert_eq!(second.retries_remaining, 0);
    // The first claim is lost for good.
    assert!(!store.complete_item(&first).await.unwrap());

    // Its retries are exhausted: once expired it is never claimable again, and the
    // repository is free for the next build.
    let third = store.claim(now + secs(25), lease).await.unwrap().unwrap();
    assert_eq!(third.build_id, later.id);
    assert!(
        store
            .return_item(&third, now + secs(25), &requeue(Duration::ZERO, true))
            .await
            .unwrap()
    );
    let fourth = store.claim(now + secs(100), lease).await.unwrap().unwrap();
    assert_eq!(fourth.build_id, later.id);
    assert!(store.complete_item(&fourth).await.unwrap());
    assert_eq!(store.claim(now + secs(1000), lease).await.unwrap(), None);
    let state = store.queue_state(build.id).await.unwrap().unwrap();
    assert_eq!(state.retries_remaining, 0);
}

pub async fn exhausted_retries_are_not_claimable<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = store
        .create_build(new_build("acme", "web"), 1, None)
        .await
        .unwrap();
    let now = soon();
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(item.retries_remaining, 0);
    assert!(
        store
            .return_item(&item, now, &requeue(Duration::ZERO, false))
            .await
            .unwrap()
    );
    let state = store.queue_state(build.id).await.unwrap().unwrap();
    assert!(state.available);
    assert_eq!(state.retries_remaining, 0);
    assert_eq!(store.claim(now + secs(60), LEASE).await.unwrap(), None);
    assert_eq!(store.next_available_after(now).await.unwrap(), None);

    let none_at_all = store
        .create_build(new_build("acme", "zero"), 0, None)
        .await
        .unwrap();
    assert_eq!(store.claim(now + secs(60), LEASE).await.unwrap(), None);
    assert!(store.queue_state(none_at_all.id).await.unwrap().is_some());
}

pub async fn returned_items_wait_and_may_get_their_retry_back<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let now = soon();
    assert_eq!(store.next_available_after(now).await.unwrap(), None);

    // Returned with the retry restored, available in 30 s.
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    assert!(
        store
            .return_item(&item, now, &requeue(Duration::from_secs(30), true))
            .await
            .unwrap()
    );
    let state = store.queue_state(build.id).await.unwrap().unwrap();
    assert_eq!(state.retries_remaining, 3);
    assert!(state.available);
    assert_eq!(state.processing_expires, None);
    assert_eq!(state.available_after, now + secs(30));
    assert_eq!(
        store.next_available_after(now).await.unwrap(),
        Some(now + secs(30))
    );
    assert_eq!(store.claim(now + secs(29), LEASE).await.unwrap(), None);
    // The old claim is gone with the return.
    assert!(!store.complete_item(&item).await.unwrap());

    // Returned without the retry, available in 10 s.
    let item = store.claim(now + secs(30), LEASE).await.unwrap().unwrap();
    assert_eq!(item.retries_remaining, 2);
    assert_eq!(store.next_available_after(now).await.unwrap(), None);
    assert!(
        store
            .return_item(
                &item,
                now + secs(30),
                &requeue(Duration::from_secs(10), false)
            )
            .await
            .unwrap()
    );
    let state = store.queue_state(build.id).await.unwrap().unwrap();
    assert_eq!(state.retries_remaining, 2);
    assert_eq!(
        store.next_available_after(now + secs(30)).await.unwrap(),
        Some(now + secs(40))
    );
    // Not in the future any more: nothing to wait for.
    assert_eq!(
        store.next_available_after(now + secs(40)).await.unwrap(),
        None
    );
    let item = store.claim(now + secs(40), LEASE).await.unwrap().unwrap();
    assert_eq!(item.retries_remaining, 1);
    assert_eq!(item.attempt, 3, "each claim is one more attempt");
}

pub async fn attempts_and_silent_restores_are_counted<B: Backend>() {
    let (_db, store) = store::<B>().await;
    create(&store, "acme", "web").await;
    let now = soon();
    let first = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!((first.attempt, first.silent_restores), (1, 0));
    let silent = Requeue {
        after: Duration::ZERO,
        restore_retry: true,
        silent_restores: 1,
    };
    assert!(store.return_item(&first, now, &silent).await.unwrap());
    let second = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!((second.attempt, second.silent_restores), (2, 1));
    assert_eq!(second.retries_remaining, first.retries_remaining);
    // Restarting without an orchestrator gives claims back without counting them.
    assert_eq!(store.release_all_claims(now).await.unwrap(), 1);
    let third = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!((third.attempt, third.silent_restores), (3, 1));
}

pub async fn builds_of_every_repository_are_found_by_filter<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let a = create(&store, "acme", "web").await;
    let b = create(&store, "acme", "api").await;
    let c = create(&store, "other", "web").await;
    let d = create(&store, "other", "db").await;
    let ids = |builds: Vec<Build>| builds.into_iter().map(|b| b.id).collect::<Vec<_>>();
    let find = |filter: BuildFilter, limit| {
        let store = store.clone();
        async move { ids(store.find_builds(&filter, limit).await.unwrap()) }
    };
    assert_eq!(
        find(BuildFilter::default(), 10).await,
        [d.id, c.id, b.id, a.id],
        "every repository, newest first"
    );
    assert_eq!(find(BuildFilter::default(), 2).await, [d.id, c.id]);
    let namespace = |n: &str| BuildFilter {
        namespace: Some(n.into()),
        ..BuildFilter::default()
    };
    assert_eq!(find(namespace("acme"), 10).await, [b.id, a.id]);
    let web = BuildFilter {
        repository: Some("web".into()),
        ..BuildFilter::default()
    };
    assert_eq!(find(web.clone(), 10).await, [c.id, a.id]);
    let acme_web = BuildFilter {
        namespace: Some("acme".into()),
        ..web
    };
    assert_eq!(find(acme_web, 10).await, [a.id]);

    // b fails for good (no queue item left), c fails and will be retried.
    for id in [b.id, c.id] {
        store
            .set_phase(id, Phase::InternalError, &[], Some("lost"), None)
            .await
            .unwrap();
    }
    store.delete_item(b.id).await.unwrap();
    let internal = |queued| BuildFilter {
        phase: Some(Phase::InternalError),
        queued,
        ..BuildFilter::default()
    };
    assert_eq!(find(internal(None), 10).await, [c.id, b.id]);
    assert_eq!(find(internal(Some(false)), 10).await, [b.id], "expired");
    assert_eq!(
        find(internal(Some(true)), 10).await,
        [c.id],
        "to be retried"
    );
    let waiting = BuildFilter {
        namespace: Some("other".into()),
        phase: Some(Phase::Waiting),
        ..BuildFilter::default()
    };
    assert_eq!(find(waiting, 10).await, [d.id]);
    assert!(find(namespace("nobody"), 10).await.is_empty());
}

pub async fn a_builds_attempts_executor_and_times_are_kept<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    assert_eq!(
        (build.attempts, build.executor.as_deref()),
        (0, None),
        "never ran"
    );
    assert_eq!((build.scheduled_at, build.finished_at), (None, None));
    let get = || async { store.get_build(build.id).await.unwrap().unwrap() };
    let claim = store.claim(soon(), LEASE).await.unwrap().unwrap();
    store.set_executor(build.id, "local").await.unwrap();
    store
        .set_phase(build.id, Phase::BuildScheduled, &[], None, None)
        .await
        .unwrap();
    let scheduled = get().await;
    assert_eq!(scheduled.attempts, 1);
    assert_eq!(scheduled.executor.as_deref(), Some("local"));
    let first_scheduled = scheduled.scheduled_at.expect("scheduled");
    assert!(first_scheduled >= build.created_at);
    assert_eq!(scheduled.finished_at, None);

    store
        .set_phase(build.id, Phase::InternalError, &[], Some("lost"), None)
        .await
        .unwrap();
    let failed = get().await.finished_at.expect("finished");
    // A repeat of the final phase keeps its time.
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .set_phase(build.id, Phase::InternalError, &[], None, None)
        .await
        .unwrap();
    assert_eq!(get().await.finished_at, Some(failed));

    // The retry: a second claim on another executor; the queue wait stays the first one's.
    assert!(
        store
            .return_item(&claim, soon(), &requeue(Duration::ZERO, false))
            .await
            .unwrap()
    );
    store.claim(soon(), LEASE).await.unwrap().unwrap();
    store.set_executor(build.id, "remote").await.unwrap();
    store
        .set_phase(build.id, Phase::BuildScheduled, &[], None, None)
        .await
        .unwrap();
    let retried = get().await;
    assert_eq!(
        (retried.attempts, retried.executor.as_deref()),
        (2, Some("remote"))
    );
    assert_eq!(retried.scheduled_at, Some(first_scheduled));
    assert_eq!(retried.finished_at, None, "running again");
    store
        .set_phase(build.id, Phase::Complete, &[], None, None)
        .await
        .unwrap();
    assert!(get().await.finished_at.is_some());
    assert!(matches!(
        store.set_executor(BuildId::new(), "local").await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn a_phase_change_and_its_log_entry_are_one<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let entry = |m: &str| LogEntry::output(m);
    let scheduled = entry("build-scheduled");
    let before = store
        .set_phase(
            build.id,
            Phase::BuildScheduled,
            &[Phase::Waiting],
            None,
            Some(&scheduled),
        )
        .await
        .unwrap();
    assert_eq!(before, Some(Phase::Waiting));
    // A repeat changes nothing and logs nothing; a refused change logs nothing.
    let again = entry("again");
    let repeat = [Phase::BuildScheduled];
    store
        .set_phase(build.id, Phase::BuildScheduled, &repeat, None, Some(&again))
        .await
        .unwrap();
    let refused = entry("refused");
    let none = store
        .set_phase(
            build.id,
            Phase::Pushing,
            &[Phase::Waiting],
            None,
            Some(&refused),
        )
        .await
        .unwrap();
    assert_eq!(none, None);
    let page = store.read_logs(build.id, 0, 10, u64::MAX).await.unwrap();
    assert_eq!(messages(page), ["build-scheduled"]);
    // Concurrent changes log in the order they were made: walking the log from the first
    // entry, each entry's change started from the phase the previous one left.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let to = if i % 2 == 0 {
                Phase::Building
            } else {
                Phase::Pulling
            };
            let from = [Phase::BuildScheduled, Phase::Building, Phase::Pulling];
            let e = LogEntry::output(format!("change {i}"));
            let before = store.set_phase(build.id, to, &from, None, Some(&e)).await;
            (e.message, before.unwrap().unwrap(), to)
        }));
    }
    let mut changes = std::collections::HashMap::new();
    for t in tasks {
        let (message, before, to) = t.await.unwrap();
        changes.insert(message, (before, to));
    }
    let mut phase = Phase::BuildScheduled;
    for message in messages(store.read_logs(build.id, 1, 100, u64::MAX).await.unwrap()) {
        let (before, to) = changes[&message];
        assert_eq!(before, phase, "{message} logged out of order");
        phase = to;
    }
    let now = store.get_build(build.id).await.unwrap().unwrap().phase;
    assert_eq!(phase, now, "every change is logged");
}

pub async fn a_lost_claim_cannot_be_used<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let now = soon();
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    let mut stale = item.clone();
    stale.state_id = "not-the-claim".to_string();
    assert!(!store.complete_item(&stale).await.unwrap());
    assert!(
        !store
            .return_item(&stale, now, &requeue(Duration::ZERO, true))
            .await
            .unwrap()
    );
    assert!(
        !store
            .extend_item(&stale, now, LEASE * 2, Duration::ZERO)
            .await
            .unwrap()
    );
    // Nothing changed.
    let state = store.queue_state(build.id).await.unwrap().unwrap();
    assert!(!state.available);
    assert_eq!(state.retries_remaining, 2);
    assert!(store.complete_item(&item).await.unwrap());
    // A completed item's claim is gone too.
    assert!(!store.complete_item(&item).await.unwrap());
    assert!(
        !store
            .return_item(&item, now, &requeue(Duration::ZERO, true))
            .await
            .unwrap()
    );
    assert!(
        !store
            .extend_item(&item, now, LEASE, Duration::ZERO)
            .await
            .unwrap()
    );
}

pub async fn extensions_write_only_past_the_minimum<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let now = soon();
    let minimum = Duration::from_secs(60);
    let item = store
        .claim(now, Duration::from_secs(300))
        .await
        .unwrap()
        .unwrap();
    let expires = |s| Some(now + secs(s));
    let state = || async { store.queue_state(build.id).await.unwrap().unwrap() };
    assert_eq!(state().await.processing_expires, expires(300));

    // Moves it by exactly the minimum: held, but not written.
    assert!(
        store
            .extend_item(&item, now + secs(60), Duration::from_secs(300), minimum)
            .await
            .unwrap()
    );
    assert_eq!(state().await.processing_expires, expires(300));
    // Shorter than now: never moved back.
    assert!(
        store
            .extend_item(&item, now, Duration::from_secs(10), minimum)
            .await
            .unwrap()
    );
    assert_eq!(state().await.processing_expires, expires(300));
    // Past the minimum: written.
    assert!(
        store
            .extend_item(&item, now + secs(61), Duration::from_secs(300), minimum)
            .await
            .unwrap()
    );
    assert_eq!(state().await.processing_expires, expires(361));
    // The claim is unchanged by an extension.
    assert!(store.complete_item(&item).await.unwrap());
}

pub async fn delete_item_ignores_the_claim<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let item = store.claim(soon(), LEASE).await.unwrap().unwrap();
    store.delete_item(build.id).await.unwrap();
    assert_eq!(store.queue_state(build.id).await.unwrap(), None);
    assert!(!store.complete_item(&item).await.unwrap());
    // Deleting again, or an unknown build, is fine.
    store.delete_item(build.id).await.unwrap();
    store.delete_item(BuildId::new()).await.unwrap();
    // The build itself stays.
    assert!(store.get_build(build.id).await.unwrap().is_some());
}

pub async fn release_all_claims_returns_every_claim<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let a = create(&store, "acme", "a").await;
    let b = create(&store, "acme", "b").await;
    let waiting = create(&store, "acme", "c").await;
    let now = soon();
    let first = store.claim(now, LEASE).await.unwrap().unwrap();
    let second = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!((first.build_id, second.build_id), (a.id, b.id));
    let before = store.queue_state(waiting.id).await.unwrap().unwrap();

    let later = now + secs(5);
    assert_eq!(store.release_all_claims(later).await.unwrap(), 2);
    for build in [a.id, b.id] {
        let state = store.queue_state(build).await.unwrap().unwrap();
        assert!(state.available);
        assert_eq!(state.retries_remaining, 3, "the retry is restored");
        assert_eq!(state.available_after, later);
        assert_eq!(state.processing_expires, None);
    }
    // The unclaimed item is untouched, and the old claims are gone.
    assert_eq!(
        store.queue_state(waiting.id).await.unwrap().unwrap(),
        before
    );
    assert!(!store.complete_item(&first).await.unwrap());
    assert!(
        !store
            .extend_item(&second, later, LEASE, Duration::ZERO)
            .await
            .unwrap()
    );
    assert_eq!(store.release_all_claims(later).await.unwrap(), 0);
    // Claimable again, oldest first.
    let again = store.claim(later, LEASE).await.unwrap().unwrap();
    assert_eq!(again.build_id, a.id);
    assert_ne!(again.state_id, first.state_id);
}

pub async fn claimed_items_are_the_claims_held<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let a = create(&store, "acme", "a").await;
    let b = create(&store, "acme", "b").await;
    create(&store, "acme", "c").await;
    assert_eq!(store.claimed_items(10).await.unwrap(), vec![]);
    let now = soon();
    let first = store.claim(now, LEASE).await.unwrap().unwrap();
    let second = store.claim(now, LEASE).await.unwrap().unwrap();
    let mut held = store.claimed_items(10).await.unwrap();
    held.sort_by_key(|i| i.item_id);
    // Each as the claim that took it: the same state, retries and attempt.
    assert_eq!(held, vec![first.clone(), second.clone()]);
    assert_eq!(store.claimed_items(1).await.unwrap().len(), 1, "the limit");
    // A claim handed back through what the listing gave is the claim itself.
    let requeue = Requeue {
        after: Duration::ZERO,
        restore_retry: true,
        silent_restores: 0,
    };
    assert!(store.return_item(&held[0], now, &requeue).await.unwrap());
    let left = store.claimed_items(10).await.unwrap();
    assert_eq!(left, vec![second]);
    assert_eq!(
        store
            .queue_state(a.id)
            .await
            .unwrap()
            .unwrap()
            .retries_remaining,
        3
    );
    assert!(store.complete_item(&left[0]).await.unwrap());
    assert_eq!(store.queue_state(b.id).await.unwrap(), None);
}

pub async fn concurrent_claimers_never_share_an_item<B: Backend>() {
    let (db, first) = store::<B>().await;
    let second = db.open().await;
    const ITEMS: usize = 60;
    let mut builds = HashSet::new();
    for i in 0..ITEMS {
        let build = first
            .create_build(new_build("acme", &format!("repo{i}")), 3, None)
            .await
            .unwrap();
        builds.insert(build.id);
    }
    let now = soon();
    let mut claimed = Vec::new();
    loop {
        let (a, b) = tokio::join!(first.claim(now, LEASE), second.claim(now, LEASE));
        let (a, b) = (a.unwrap(), b.unwrap());
        if a.is_none() && b.is_none() {
            break;
        }
        claimed.extend(a);
        claimed.extend(b);
    }
    assert_eq!(claimed.len(), ITEMS);
    let ids: HashSet<_> = claimed.iter().map(|c| c.build_id).collect();
    assert_eq!(ids, builds);
    let items: HashSet<_> = claimed.iter().map(|c| c.item_id).collect();
    assert_eq!(items.len(), ITEMS);

    // The same with tasks on both threads, racing for items of a single repository: only
    // one claim may hold at a time, and it is the oldest item's.
    let mut single = Vec::new();
    for _ in 0..10 {
        let build = create(&first, "acme", "single").await;
        single.push(build.id);
    }
    // Claimed as of after their creation (a busy machine can take longer than `soon`'s
    // margin to create them).
    let now = soon();
    for expected in single {
        let claimers: Vec<_> = [&first, &second, &first, &second]
            .into_iter()
            .map(|store| {
                let store = store.clone();
                tokio::spawn(async move { store.claim(now, LEASE).await.unwrap() })
            })
            .collect();
        let mut won = Vec::new();
        for claimer in claimers {
            won.extend(claimer.await.unwrap());
        }
        assert_eq!(won.len(), 1, "exactly one claim per round: {won:?}");
        assert_eq!(won[0].build_id, expected, "oldest first");
        assert!(first.complete_item(&won[0]).await.unwrap());
    }
    assert_eq!(first.claim(now, LEASE).await.unwrap(), None);
}

pub async fn a_full_namespace_refuses_new_builds<B: Backend>() {
    let (_db, store) = store::<B>().await;
    for repository in ["a", "b"] {
        store
            .create_build(new_build("acme", repository), 3, Some(2))
            .await
            .unwrap();
    }
    let refused = store
        .create_build(new_build("acme", "c"), 3, Some(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::QueueFull { namespace, limit: 2 } if namespace == "acme"),
        "{refused:?}"
    );
    // Nothing of the refused build was stored.
    assert!(
        store
            .list_builds("acme", "c", 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    // Other namespaces, and no limit, are unaffected.
    store
        .create_build(new_build("other", "a"), 3, Some(2))
        .await
        .unwrap();
    create(&store, "acme", "c").await;
    // acme has a, b and c queued now; a finished build frees its place.
    assert!(matches!(
        store.create_build(new_build("acme", "d"), 3, Some(3)).await,
        Err(StoreError::QueueFull { limit: 3, .. })
    ));
    let item = store.claim(soon(), LEASE).await.unwrap().unwrap();
    assert_eq!(item.queue_name, queue_name("acme", "a"));
    assert!(store.complete_item(&item).await.unwrap());
    store
        .create_build(new_build("acme", "d"), 3, Some(3))
        .await
        .unwrap();
}

pub async fn concurrent_submissions_respect_the_queue_limit<B: Backend>() {
    let (db, first) = store::<B>().await;
    let second = db.open().await;
    const LIMIT: u32 = 5;
    for round in 0..3 {
        // Twenty submissions at once, from two handles, into a namespace with room for five.
        let namespace = format!("ns{round}");
        let submissions: Vec<_> = (0..20)
            .map(|i| {
                let store = if i % 2 == 0 {
                    first.clone()
                } else {
                    second.clone()
                };
                let build = new_build(&namespace, &format!("repo{i}"));
                tokio::spawn(async move { store.create_build(build, 3, Some(LIMIT)).await })
            })
            .collect();
        let mut accepted = 0;
        for submission in submissions {
            match submission.await.unwrap() {
                Ok(_) => accepted += 1,
                Err(StoreError::QueueFull { limit: LIMIT, .. }) => {}
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert_eq!(accepted, LIMIT, "round {round}");
        let mut stored = 0;
        for i in 0..20 {
            let builds = first
                .list_builds(&namespace, &format!("repo{i}"), 10, None)
                .await
                .unwrap();
            stored += builds.len();
        }
        assert_eq!(
            stored, LIMIT as usize,
            "round {round}: refused builds are not stored"
        );
    }
}

pub async fn set_phase_is_a_compare_and_set<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    assert_eq!(
        store
            .set_phase(
                build.id,
                Phase::BuildScheduled,
                &[Phase::Waiting],
                None,
                None
            )
            .await
            .unwrap(),
        Some(Phase::Waiting)
    );
    // Not allowed from build-scheduled: nothing changes.
    assert_eq!(
        store
            .set_phase(
                build.id,
                Phase::Pushing,
                &[Phase::Waiting],
                Some("no"),
                None
            )
            .await
            .unwrap(),
        None
    );
    let stored = store.get_build(build.id).await.unwrap().unwrap();
    assert_eq!(stored.phase, Phase::BuildScheduled);
    assert_eq!(stored.error, None);
    assert!(stored.updated_at >= build.updated_at);

    // A cancel racing a worker: whichever comes first wins.
    let cancellable: Vec<_> = Phase::ALL.into_iter().filter(|p| p.can_cancel()).collect();
    assert_eq!(
        store
            .set_phase(
                build.id,
                Phase::Cancelled,
                &cancellable,
                Some("cancelled by alice"),
                None
            )
            .await
            .unwrap(),
        Some(Phase::BuildScheduled)
    );
    assert_eq!(
        store
            .set_phase(
                build.id,
                Phase::Building,
                &[Phase::BuildScheduled],
                None,
                None
            )
            .await
            .unwrap(),
        None
    );
    // An empty `from` allows every phase; no error keeps the stored one.
    assert_eq!(
        store
            .set_phase(build.id, Phase::InternalError, &[], None, None)
            .await
            .unwrap(),
        Some(Phase::Cancelled)
    );
    let stored = store.get_build(build.id).await.unwrap().unwrap();
    assert_eq!(stored.phase, Phase::InternalError);
    assert_eq!(stored.error.as_deref(), Some("cancelled by alice"));
    store
        .set_phase(build.id, Phase::Error, &[], Some("push refused"), None)
        .await
        .unwrap();
    let stored = store.get_build(build.id).await.unwrap().unwrap();
    assert_eq!(stored.error.as_deref(), Some("push refused"));

    let missing = BuildId::new();
    assert!(matches!(
        store.set_phase(missing, Phase::Error, &[], None, None).await,
        Err(StoreError::NotFound(id)) if id == missing
    ));

    store
        .set_result_location(build.id, "/var/lib/buildman/results/x")
        .await
        .unwrap();
    let stored = store.get_build(build.id).await.unwrap().unwrap();
    assert_eq!(
        stored.result_location.as_deref(),
        Some("/var/lib/buildman/results/x")
    );
    assert!(matches!(
        store.set_result_location(missing, "/x").await,
        Err(StoreError::NotFound(_))
    ));
    // An error of an earlier attempt does not outlive a build that completes.
    let retried = create(&store, "acme", "retried").await;
    let internal = Some("the worker stopped sending heartbeats");
    store
        .set_phase(retried.id, Phase::InternalError, &[], internal, None)
        .await
        .unwrap();
    store
        .set_phase(retried.id, Phase::Complete, &[], None, None)
        .await
        .unwrap();
    let done = store.get_build(retried.id).await.unwrap().unwrap();
    assert_eq!(done.error, None);
}

pub async fn logs_append_in_batches_and_read_in_pages<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let other = create(&store, "acme", "web").await;
    let page = store.read_logs(build.id, 0, 100, u64::MAX).await.unwrap();
    assert_eq!((page.start, page.total, page.entries.len()), (0, 0, 0));
    assert_eq!(store.append_logs(build.id, &[]).await.unwrap(), 0);

    let line = |i: usize| LogEntry::output(format!("line {i}"));
    let mut expected: Vec<LogEntry> = Vec::new();
    let first: Vec<_> = (0..3).map(line).collect();
    expected.extend(first.clone());
    assert_eq!(store.append_logs(build.id, &first).await.unwrap(), 3);
    // A batch larger than one INSERT.
    let big: Vec<_> = (3..1003).map(line).collect();
    expected.extend(big.clone());
    assert_eq!(store.append_logs(build.id, &big).await.unwrap(), 1003);
    let mut phase_data = serde_json::Map::new();
    phase_data.insert("pull_metadata".into(), serde_json::json!({"x": 1}));
    let special = vec![
        LogEntry::phase(Phase::Building, phase_data, "2024-01-01T00:00:00Z"),
        LogEntry::from_worker_line(r#"{"stream":"Step 1/2 : FROM scratch"}"#).unwrap(),
        LogEntry::error("boom"),
    ];
    expected.extend(special.clone());
    assert_eq!(store.append_logs(build.id, &special).await.unwrap(), 1006);
    assert_eq!(store.append_logs(build.id, &[]).await.unwrap(), 1006);
    // Another build's log is its own.
    assert_eq!(store.append_logs(other.id, &first).await.unwrap(), 3);

    let all = store
        .read_logs(build.id, 0, 10_000, u64::MAX)
        .await
        .unwrap();
    assert_eq!(all.total, 1006);
    assert_eq!(all.entries, expected);

    let page = store.read_logs(build.id, 250, 10, u64::MAX).await.unwrap();
    assert_eq!((page.start, page.total), (250, 1006));
    assert_eq!(page.entries, expected[250..260]);
    let tail = store
        .read_logs(build.id, 1000, 100, u64::MAX)
        .await
        .unwrap();
    assert_eq!(tail.entries, expected[1000..]);
    let past = store
        .read_logs(build.id, 5000, 100, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        (past.start, past.total, past.entries.len()),
        (5000, 1006, 0)
    );

    // Logs of a build that does not exist are refused.
    let missing = BuildId::new();
    assert!(matches!(
        store.append_logs(missing, &first).await,
        Err(StoreError::NotFound(id)) if id == missing
    ));
}

pub async fn a_log_page_is_bounded_by_bytes<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let big = |i: usize| LogEntry::output(format!("{i}{}", "x".repeat(100_000)));
    let entries: Vec<_> = (0..10).map(big).collect();
    store.append_logs(build.id, &entries).await.unwrap();
    // Each entry is a little over 100,000 bytes as stored: three fit under 350,000.
    let mut start = 0;
    let mut pages = Vec::new();
    while start < 10 {
        let page = store
            .read_logs(build.id, start, 1000, 350_000)
            .await
            .unwrap();
        assert_eq!((page.start, page.total), (start, 10));
        assert!(!page.entries.is_empty(), "a page always moves on");
        pages.push(page.entries.len());
        for (i, entry) in page.entries.iter().enumerate() {
            assert_eq!(entry, &entries[start as usize + i]);
        }
        start += page.entries.len() as u64;
    }
    assert_eq!(pages, [3, 3, 3, 1]);
    // One entry larger than the bound still comes, alone.
    let page = store.read_logs(build.id, 0, 1000, 10).await.unwrap();
    assert_eq!(page.entries, entries[..1]);
}

pub async fn concurrent_appends_keep_indices_dense<B: Backend>() {
    let (db, first) = store::<B>().await;
    let second = db.open().await;
    let build = create(&first, "acme", "web").await;
    let writer = |store: B::Store, name: &'static str| {
        tokio::spawn(async move {
            for batch in 0..20 {
                let entries: Vec<_> = (0..7)
                    .map(|i| LogEntry::output(format!("{name} {batch} {i}")))
                    .collect();
                store.append_logs(build.id, &entries).await.unwrap();
            }
        })
    };
    let (a, b) = tokio::join!(writer(first.clone(), "a"), writer(second, "b"));
    a.unwrap();
    b.unwrap();
    let page = first.read_logs(build.id, 0, 1000, u64::MAX).await.unwrap();
    assert_eq!(page.total, 280);
    assert_eq!(page.entries.len(), 280);
    // Each batch stayed in one piece and in order.
    for chunk in page.entries.chunks(7) {
        let prefix = chunk[0].message.rsplit_once(' ').unwrap().0;
        for (i, entry) in chunk.iter().enumerate() {
            assert_eq!(entry.message, format!("{prefix} {i}"));
        }
    }
}

pub async fn worker_lines_are_stored_once_per_attempt_across_builds<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let a = create(&store, "ns", "a").await.id;
    let b = create(&store, "ns", "b").await.id;
    let line = |build, sequence, m: &str| WorkerLine {
        build,
        attempt: None,
        sequence,
        entry: LogEntry::output(m),
    };
    assert!(store.append_worker_lines(&[]).await.unwrap().is_empty());
    let stored = store
        .append_worker_lines(&[
            line(a, 1, "a1"),
            line(b, 1, "b1"),
            line(a, 2, "a2"),
            line(a, 2, "a2 again"),
        ])
        .await
        .unwrap();
    assert_eq!(stored, [Some(0), Some(0), Some(1), None], "where each went");
    // A re-send after a reconnect: 2 is already stored, 3 is new.
    let stored = store
        .append_worker_lines(&[line(a, 2, "a2"), line(a, 3, "a3")])
        .await
        .unwrap();
    assert_eq!(stored, [None, Some(2)]);
    assert_eq!(
        messages(store.read_logs(a, 0, 100, u64::MAX).await.unwrap()),
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        messages(store.read_logs(b, 0, 100, u64::MAX).await.unwrap()),
        ["b1"]
    );
    // Worker lines and other entries share one log with dense indices.
    assert_eq!(
        store
            .append_logs(b, &[LogEntry::output("b phase")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .append_worker_lines(&[line(b, 2, "b2")])
            .await
            .unwrap(),
        [Some(2)]
    );
    assert_eq!(
        messages(store.read_logs(b, 0, 100, u64::MAX).await.unwrap()),
        ["b1", "b phase", "b2"]
    );
    // A new attempt (a new claim) starts the count afresh.
    let claimed = store.claim(Utc::now(), LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.build_id, a);
    assert_eq!(
        store
            .append_worker_lines(&[line(a, 1, "retry 1")])
            .await
            .unwrap(),
        [Some(3)]
    );
    assert_eq!(store.read_logs(a, 0, 100, u64::MAX).await.unwrap().total, 4);
    // A line for a build that does not exist refuses the whole batch.
    let missing = BuildId::new();
    assert!(matches!(
        store
            .append_worker_lines(&[line(a, 2, "a retry 2"), line(missing, 1, "x")])
            .await,
        Err(StoreError::NotFound(id)) if id == missing
    ));
    assert_eq!(store.read_logs(a, 0, 100, u64::MAX).await.unwrap().total, 4);
}

pub async fn lines_of_an_attempt_that_is_over_are_refused<B: Backend>() {
    let (_db, store) = store::<B>().await;
    let build = create(&store, "ns", "a").await.id;
    let first = store.claim(Utc::now(), LEASE).await.unwrap().unwrap();
    let line = |attempt: &ClaimedItem, sequence, m: &str| WorkerLine {
        build,
        attempt: Some(attempt.state_id.clone()),
        sequence,
        entry: LogEntry::output(m),
    };
    assert_eq!(
        store
            .append_worker_lines(&[line(&first, 1, "first 1")])
            .await
            .unwrap(),
        [Some(0)]
    );
    // The first attempt ends; a second one runs.
    let requeue = requeue(Duration::ZERO, true);
    assert!(
        store
            .return_item(&first, Utc::now(), &requeue)
            .await
            .unwrap()
    );
    let second = store.claim(Utc::now(), LEASE).await.unwrap().unwrap();
    assert!(matches!(
        store.append_worker_lines(&[line(&first, 2, "stale")]).await,
        Err(StoreError::AttemptOver(id)) if id == build
    ));
    assert_eq!(
        store
            .append_worker_lines(&[line(&second, 1, "second 1")])
            .await
            .unwrap(),
        [Some(1)]
    );
    // The build completes: no attempt may add to its log any more.
    store
        .set_phase(build, Phase::Complete, &[], None, None)
        .await
        .unwrap();
    assert!(matches!(
        store.append_worker_lines(&[line(&second, 2, "late")]).await,
        Err(StoreError::AttemptOver(_))
    ));
    assert_eq!(
        messages(store.read_logs(build, 0, 10, u64::MAX).await.unwrap()),
        ["first 1", "second 1"]
    );
}

pub async fn concurrent_worker_lines_are_stored_once<B: Backend>() {
    // Two connections of one worker (a reconnect while the old stream still delivers) send
    // the same lines of two builds at once, in batches of different sizes: every line is
    // stored exactly once, in sequence order, at dense indices.
    let (db, first) = store::<B>().await;
    let second = db.open().await;
    let x = create(&first, "ns", "x").await.id;
    let y = create(&first, "ns", "y").await.id;
    const LINES: i32 = 120;
    let sender = move |store: B::Store, batch: usize| {
        tokio::spawn(async move {
            let sequences: Vec<i32> = (1..=LINES).collect();
            for chunk in sequences.chunks(batch) {
                let lines: Vec<_> = chunk
                    .iter()
                    .flat_map(|&sequence| {
                        [x, y].map(|build| WorkerLine {
                            build,
                            attempt: None,
                            sequence,
                            entry: LogEntry::output(format!("{build} {sequence}")),
                        })
                    })
                    .collect();
                store.append_worker_lines(&lines).await.unwrap();
            }
        })
    };
    let (a, b) = tokio::join!(sender(first.clone(), 5), sender(second, 7));
    a.unwrap();
    b.unwrap();
    for build in [x, y] {
        let page = first.read_logs(build, 0, 1000, u64::MAX).await.unwrap();
        let expected: Vec<_> = (1..=LINES).map(|s| format!("{build} {s}")).collect();
        assert_eq!(page.total, expected.len() as u64);
        assert_eq!(messages(page), expected);
    }
}

pub async fn worker_lines_and_the_managers_entries_share_one_dense_log<B: Backend>() {
    // A worker's lines and the manager's own entries of one build written at the same time
    // (on SQLite through two connections: the log appender's and the pool's): each kept
    // once, in its own order, at dense indices.
    let (_db, store) = store::<B>().await;
    let build = create(&store, "ns", "x").await.id;
    const EACH: i32 = 200;
    let worker = {
        let store = store.clone();
        tokio::spawn(async move {
            let sequences: Vec<i32> = (1..=EACH).collect();
            for chunk in sequences.chunks(9) {
                let lines: Vec<_> = chunk
                    .iter()
                    .map(|&sequence| WorkerLine {
                        build,
                        attempt: None,
                        sequence,
                        entry: LogEntry::output(format!("worker {sequence}")),
                    })
                    .collect();
                store.append_worker_lines(&lines).await.unwrap();
            }
        })
    };
    let manager = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 1..=EACH {
                let entry = LogEntry::output(format!("manager {n}"));
                store.append_logs(build, &[entry]).await.unwrap();
            }
        })
    };
    let (w, m) = tokio::join!(worker, manager);
    w.unwrap();
    m.unwrap();
    let page = store.read_logs(build, 0, 1000, u64::MAX).await.unwrap();
    assert_eq!(
        page.total,
        2 * EACH as u64,
        "one entry per index, none twice"
    );
    let all = messages(page);
    for who in ["worker", "manager"] {
        let theirs: Vec<_> = all.iter().filter(|m| m.starts_with(who)).collect();
        let expected: Vec<_> = (1..=EACH).map(|n| format!("{who} {n}")).collect();
        assert_eq!(
            theirs,
            expected.iter().collect::<Vec<_>>(),
            "{who}'s entries"
        );
    }
}

pub async fn data_survives_reopening<B: Backend>() {
    let (db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    let now = soon();
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    store
        .set_phase(build.id, Phase::Building, &[], None, None)
        .await
        .unwrap();
    store
        .append_logs(build.id, &[LogEntry::output("hello")])
        .await
        .unwrap();
    B::close(&store).await;
    assert!(store.get_build(build.id).await.is_err());

    let store = db.open().await;
    let stored = store.get_build(build.id).await.unwrap().unwrap();
    assert_eq!(stored.phase, Phase::Building);
    assert_eq!(stored.created_at, build.created_at);
    let state = store.queue_state(build.id).await.unwrap().unwrap();
    assert!(!state.available);
    assert_eq!(state.retries_remaining, 2);
    // The claim is still held and usable after the restart.
    assert!(
        store
            .extend_item(&item, now + secs(120), LEASE, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let page = store.read_logs(build.id, 0, 10, u64::MAX).await.unwrap();
    assert_eq!(page.entries, [LogEntry::output("hello")]);
    assert_eq!(
        store
            .append_logs(build.id, &[LogEntry::output("again")])
            .await
            .unwrap(),
        2
    );
}

pub async fn concurrent_opens_migrate_once<B: Backend>() {
    // Managers starting together on a new database both bring it up to date.
    let db = B::fresh().await;
    let (first, second) = tokio::join!(db.open(), db.open());
    let build = create(&first, "acme", "web").await;
    assert_eq!(second.get_build(build.id).await.unwrap(), Some(build));
    // And opening an up-to-date database changes nothing.
    let third = db.open().await;
    assert_eq!(
        third
            .list_builds("acme", "web", 10, None)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn undecodable_rows_are_reported_as_corrupt<B: Backend>() {
    let (db, store) = store::<B>().await;
    let build = create(&store, "acme", "web").await;
    store
        .append_logs(build.id, &[LogEntry::output("fine")])
        .await
        .unwrap();
    let corrupt = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::Corrupt(message)) => assert!(message.contains(what), "{message}"),
        other => panic!("{other:?}, not corrupt for {what}"),
    };

    db.tamper("UPDATE builds SET phase = 'expired'").await;
    corrupt(store.get_build(build.id).await.map(drop), "expired");
    corrupt(
        store
            .set_phase(build.id, Phase::Error, &[], None, None)
            .await
            .map(drop),
        "expired",
    );
    db.tamper("UPDATE builds SET phase = 'waiting', source = '{\"kind\":\"ftp\"}'")
        .await;
    corrupt(
        store.list_builds("acme", "web", 10, None).await.map(drop),
        "source",
    );
    let source = r#"'{"kind":"uploaded","file_id":"f"}'"#;
    let tags = B::NOT_TAGS;
    db.tamper(&format!(
        "UPDATE builds SET source = {source}, tags = {tags}"
    ))
    .await;
    corrupt(store.get_build(build.id).await.map(drop), "tags");
    let created_at = B::NOT_A_TIME;
    db.tamper(&format!(
        "UPDATE builds SET tags = '[]', created_at = {created_at}"
    ))
    .await;
    corrupt(store.get_build(build.id).await.map(drop), "created_at");
    db.tamper("UPDATE builds SET created_at = 0").await;
    assert!(store.get_build(build.id).await.unwrap().is_some());

    db.tamper(&format!(
        "UPDATE build_logs SET entry = {}",
        B::NOT_AN_ENTRY
    ))
    .await;
    corrupt(
        store.read_logs(build.id, 0, 10, u64::MAX).await.map(drop),
        "log entry 0",
    );
    db.tamper("UPDATE queue_items SET retries_remaining = -1")
        .await;
    corrupt(
        store.queue_state(build.id).await.map(drop),
        "retries_remaining -1",
    );
    db.tamper("UPDATE queue_items SET retries_remaining = 3, build_id = 'nonsense'")
        .await;
    corrupt(store.claim(soon(), LEASE).await.map(drop), "nonsense");
    // The failed claim changed nothing.
    db.tamper(&format!("UPDATE queue_items SET build_id = '{}'", build.id))
        .await;
    assert!(
        store
            .queue_state(build.id)
            .await
            .unwrap()
            .unwrap()
            .available
    );
}
