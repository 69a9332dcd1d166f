//! The quay backend's build queue on Quay's schema fixture (testkit::quay), with builds
//! started as Quay's web tier starts them: Quay's claim, completion, return and lease
//! extension (quay-integration.md section 13).

use std::time::Duration;

use buildman_core::{ClaimedItem, Requeue};
use buildman_quay::secret::FieldCipher;
use buildman_store::StoreError;
use buildman_store::quay::{QuayQueue, SUPPORTED_REVISIONS};
use buildman_testkit::quay::{self, BuildRequest, StartedBuild};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

mod store;

pub(crate) const LEASE: Duration = Duration::from_secs(530);

async fn queue() -> (PgPool, QuayQueue) {
    let (_url, pool) = quay::database().await;
    let queue = QuayQueue::open(pool.clone())
        .await
        .expect("a supported schema");
    (pool, queue)
}

async fn start(pool: &PgPool, namespace: &str, repository: &str) -> StartedBuild {
    quay::repository(pool, namespace, repository).await;
    let cipher = FieldCipher::from_config("k").expect("key");
    let request = BuildRequest {
        namespace: namespace.into(),
        repository: repository.into(),
        job_config: serde_json::json!({"docker_tags": ["latest"], "context": "/", "build_subdir": "/Dockerfile"}),
        display_name: "abcdef0".into(),
        ..BuildRequest::default()
    };
    quay::start_build(pool, &request, |code| cipher.encrypt(code).expect("short")).await
}

/// The database's clock as a UTC time: what the web tier wrote `available_after` with.
pub(crate) async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    let text: String = sqlx::query_scalar(
        "SELECT to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(pool)
    .await
    .expect("now");
    text.parse().expect("a time")
}

/// An item's (available, retries_remaining, state_id, processing_expires, available_after).
async fn item(pool: &PgPool, id: i32) -> Option<(bool, i32, String, Option<String>, String)> {
    let row = sqlx::query(
        "SELECT available, retries_remaining, state_id, to_char(processing_expires, 'YYYY-MM-DD HH24:MI:SS') AS expires, \
         to_char(available_after, 'YYYY-MM-DD HH24:MI:SS') AS after FROM queueitem WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .expect("item");
    row.map(|r| {
        (
            r.get("available"),
            r.get("retries_remaining"),
            r.get("state_id"),
            r.get("expires"),
            r.get("after"),
        )
    })
}

/// A build started in acme/web, a time just after, and the build's claim at that time.
async fn claim_one(pool: &PgPool, queue: &QuayQueue) -> (StartedBuild, DateTime<Utc>, ClaimedItem) {
    let build = start(pool, "acme", "web").await;
    let now = db_now(pool).await + chrono::Duration::seconds(1);
    let claimed = queue
        .claim(now, LEASE)
        .await
        .expect("claim")
        .expect("an item");
    (build, now, claimed)
}

fn text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

#[tokio::test]
async fn claims_are_quays_oldest_first_one_per_repository() {
    let (pool, queue) = queue().await;
    let web1 = start(&pool, "acme", "web").await;
    let web2 = start(&pool, "acme", "web").await;
    let api = start(&pool, "acme", "api").await;
    let now = db_now(&pool).await + chrono::Duration::seconds(1);

    let first = queue
        .claim(now, LEASE)
        .await
        .expect("claim")
        .expect("an item");
    assert_eq!(first.item_id, i64::from(web1.queue_item_id));
    assert_eq!(first.build_id.to_string(), web1.uuid);
    assert_eq!(first.queue_name, "dockerfilebuild/acme/web/");
    assert_eq!((first.retries_remaining, first.attempt), (2, 1));
    let (available, retries, state_id, expires, _) =
        item(&pool, web1.queue_item_id).await.expect("row");
    assert!(!available);
    assert_eq!(retries, 2);
    assert_eq!(state_id, first.state_id, "the claim wrote a new state_id");
    assert_eq!(expires, Some(text(now + chrono::Duration::seconds(530))));

    // acme/web is running: its second build waits; acme/api goes next.
    let second = queue
        .claim(now, LEASE)
        .await
        .expect("claim")
        .expect("an item");
    assert_eq!(second.item_id, i64::from(api.queue_item_id));
    assert_eq!(queue.claim(now, LEASE).await.expect("claim"), None);

    // Once web's first build is done with the queue, its second is claimable.
    assert!(queue.complete_item(&first).await.expect("complete"));
    assert_eq!(item(&pool, web1.queue_item_id).await, None);
    let third = queue
        .claim(now, LEASE)
        .await
        .expect("claim")
        .expect("an item");
    assert_eq!(third.item_id, i64::from(web2.queue_item_id));
    // A lease run out makes an item claimable again, spending another retry.
    let later = now + chrono::Duration::seconds(531);
    let again = queue
        .claim(later, LEASE)
        .await
        .expect("claim")
        .expect("an item");
    assert_eq!(again.item_id, third.item_id);
    assert_eq!((again.retries_remaining, again.attempt), (1, 2));
    assert!(
        !queue.complete_item(&third).await.expect("complete"),
        "the older claim was lost"
    );
}

#[tokio::test]
async fn a_returned_item_waits_keeps_its_lease_and_gets_a_new_state_id() {
    let (pool, queue) = queue().await;
    let (build, now, claimed) = claim_one(&pool, &queue).await;
    let requeue = Requeue {
        after: Duration::from_secs(30),
        restore_retry: true,
        silent_restores: 1,
    };
    assert!(
        queue
            .return_item(&claimed, now, &requeue)
            .await
            .expect("return")
    );
    let (available, retries, state_id, expires, after) =
        item(&pool, build.queue_item_id).await.expect("row");
    assert!(available);
    assert_eq!(retries, 3, "retry restored");
    assert_ne!(state_id, claimed.state_id);
    assert_eq!(
        expires,
        Some(text(now + chrono::Duration::seconds(530))),
        "Quay leaves it"
    );
    assert_eq!(after, text(now + chrono::Duration::seconds(30)));
    assert!(
        !queue
            .return_item(&claimed, now, &requeue)
            .await
            .expect("return"),
        "claim lost"
    );
    assert_eq!(
        queue.claim(now, LEASE).await.expect("claim"),
        None,
        "not due yet"
    );
    let next = queue
        .claim(now + chrono::Duration::seconds(31), LEASE)
        .await
        .expect("claim")
        .expect("due");
    assert_eq!(next.retries_remaining, 2);
    let spend = Requeue {
        restore_retry: false,
        ..requeue
    };
    assert!(queue.return_item(&next, now, &spend).await.expect("return"));
    assert_eq!(item(&pool, build.queue_item_id).await.expect("row").1, 2);
}

#[tokio::test]
async fn leases_move_only_by_more_than_the_minimum() {
    let (pool, queue) = queue().await;
    let (build, now, claimed) = claim_one(&pool, &queue).await;
    let minute = Duration::from_secs(60);
    let expires = || async { item(&pool, build.queue_item_id).await.expect("row").3 };
    // now + 300 s is earlier than the claim's lease: held, nothing written.
    assert!(
        queue
            .extend_item(&claimed, now, Duration::from_secs(300), minute)
            .await
            .expect("extend")
    );
    assert_eq!(
        expires().await,
        Some(text(now + chrono::Duration::seconds(530)))
    );
    let later = now + chrono::Duration::seconds(400);
    assert!(
        queue
            .extend_item(&claimed, later, Duration::from_secs(300), minute)
            .await
            .expect("extend")
    );
    assert_eq!(
        expires().await,
        Some(text(later + chrono::Duration::seconds(300)))
    );
    assert!(queue.complete_item(&claimed).await.expect("complete"));
    assert!(
        !queue
            .extend_item(&claimed, later, LEASE, minute)
            .await
            .expect("extend"),
        "gone"
    );
}

#[tokio::test]
async fn racing_managers_start_one_build_per_repository() {
    let (pool, queue) = queue().await;
    for _ in 0..4 {
        start(&pool, "acme", "web").await;
    }
    let now = db_now(&pool).await + chrono::Duration::seconds(1);
    let other = QuayQueue::open(pool.clone()).await.expect("open");
    let claims: Vec<Option<ClaimedItem>> = futures_join(&queue, &other, now).await;
    assert_eq!(claims.iter().flatten().count(), 1, "{claims:?}");
}

async fn futures_join(
    a: &QuayQueue,
    b: &QuayQueue,
    now: DateTime<Utc>,
) -> Vec<Option<ClaimedItem>> {
    let (x, y, z, w) = tokio::join!(
        a.claim(now, LEASE),
        b.claim(now, LEASE),
        a.claim(now, LEASE),
        b.claim(now, LEASE)
    );
    [x, y, z, w]
        .into_iter()
        .map(|c| c.expect("claim"))
        .collect()
}

#[tokio::test]
async fn an_item_naming_no_build_is_set_aside_as_quay_does() {
    let (pool, queue) = queue().await;
    let build = start(&pool, "acme", "web").await;
    sqlx::query("UPDATE queueitem SET body = 'not json' WHERE id = $1")
        .bind(build.queue_item_id)
        .execute(&pool)
        .await
        .expect("spoil the body");
    let now = db_now(&pool).await + chrono::Duration::seconds(1);
    assert_eq!(queue.claim(now, LEASE).await.expect("claim"), None);
    let (available, retries, _, _, after) = item(&pool, build.queue_item_id).await.expect("row");
    assert!(available);
    assert_eq!(retries, 2, "Quay spends the retry");
    assert_eq!(after, text(now + chrono::Duration::seconds(300)));
}

#[tokio::test]
async fn an_unknown_schema_revision_is_refused_naming_the_supported_ones() {
    let (_url, pool) = quay::database().await;
    sqlx::query("UPDATE alembic_version SET version_num = 'abc123'")
        .execute(&pool)
        .await
        .expect("update");
    let err = QuayQueue::open(pool).await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedSchema(_)));
    let text = err.to_string();
    assert!(
        text.contains("abc123") && text.contains(SUPPORTED_REVISIONS[0]),
        "{text}"
    );
}
