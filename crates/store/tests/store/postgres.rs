//! The suite on fresh databases of a PostgreSQL server started by the tests
//! (`buildman_testkit::postgres`), and PostgreSQL's own tests.

use async_trait::async_trait;
use buildman_core::queue::queue_name;
use buildman_core::{LogEntry, Phase};
use buildman_store::postgres::PostgresStore;
use buildman_store::{Store, StoreError};
use sqlx::Connection;

use crate::suite::{Backend, LEASE, new_build, soon, store_suite};
use buildman_testkit::postgres::fresh_database;

/// A database of its own on the test server.
pub struct Postgres {
    url: String,
}

#[async_trait]
impl Backend for Postgres {
    type Store = PostgresStore;

    async fn fresh() -> Self {
        Postgres {
            url: fresh_database().await,
        }
    }

    async fn open(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).await.unwrap()
    }

    async fn close(store: &PostgresStore) {
        store.close().await;
    }
}

store_suite!(Postgres);

/// The advisory-lock class the store uses for queue names (`postgres.rs`).
const QUEUE_NAME_LOCK: i32 = 0x626d_0001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_skips_a_repository_another_manager_is_claiming() {
    let db = Postgres::fresh().await;
    let store = db.open().await;
    let a1 = store
        .create_build(new_build("acme", "a"), 3, None)
        .await
        .unwrap();
    let b1 = store
        .create_build(new_build("acme", "b"), 3, None)
        .await
        .unwrap();
    let now = soon();

    // Another manager in the middle of a claim on repository a holds its queue name's lock.
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut claiming = other.begin().await.unwrap();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
        .bind(QUEUE_NAME_LOCK)
        .bind(queue_name("acme", "a"))
        .fetch_one(&mut *claiming)
        .await
        .unwrap();
    assert!(locked);
    // a1 is older, but a is busy: b1 it is, and then nothing.
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(item.build_id, b1.id);
    assert_eq!(store.claim(now, LEASE).await.unwrap(), None);
    // The other manager gave up: a1 is claimable again.
    claiming.rollback().await.unwrap();
    let item = store.claim(now, LEASE).await.unwrap().unwrap();
    assert_eq!(item.build_id, a1.id);
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_rows_are_reported_as_corrupt() {
    let db = Postgres::fresh().await;
    let store = db.open().await;
    let build = store
        .create_build(new_build("acme", "web"), 3, None)
        .await
        .unwrap();
    store
        .append_logs(build.id, &[LogEntry::output("fine")])
        .await
        .unwrap();

    // A raw connection that skips foreign-key checks (as the superuser it is), so it can
    // write anything the column types allow.
    let mut raw = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut raw)
        .await
        .unwrap();
    let mut tamper = async |sql: &str| {
        sqlx::raw_sql(sql).execute(&mut raw).await.unwrap();
    };

    tamper("UPDATE builds SET phase = 'expired'").await;
    let err = store.get_build(build.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(what) if what.contains("expired")),
        "{err:?}"
    );
    assert!(matches!(
        store.set_phase(build.id, Phase::Error, &[], None).await,
        Err(StoreError::Corrupt(_))
    ));
    tamper("UPDATE builds SET phase = 'waiting', source = '{\"kind\":\"ftp\"}'").await;
    assert!(matches!(
        store.list_builds("acme", "web", 10, None).await,
        Err(StoreError::Corrupt(what)) if what.contains("source")
    ));
    tamper(
        "UPDATE builds SET source = '{\"kind\":\"uploaded\",\"file_id\":\"f\"}', tags = '\"x\"'",
    )
    .await;
    assert!(matches!(
        store.get_build(build.id).await,
        Err(StoreError::Corrupt(what)) if what.contains("tags")
    ));
    // BIGINT holds no words; a number of milliseconds beyond any date is as wrong.
    tamper("UPDATE builds SET tags = '[]', created_at = 9223372036854775807").await;
    assert!(matches!(
        store.get_build(build.id).await,
        Err(StoreError::Corrupt(what)) if what.contains("created_at")
    ));
    tamper("UPDATE builds SET created_at = 0").await;
    assert!(store.get_build(build.id).await.unwrap().is_some());

    tamper("UPDATE build_logs SET entry = '\"not an entry\"'").await;
    assert!(matches!(
        store.read_logs(build.id, 0, 10).await,
        Err(StoreError::Corrupt(what)) if what.contains("log entry 0")
    ));
    tamper("UPDATE queue_items SET retries_remaining = -1").await;
    assert!(matches!(
        store.queue_state(build.id).await,
        Err(StoreError::Corrupt(what)) if what.contains("retries_remaining -1")
    ));
    tamper("UPDATE queue_items SET retries_remaining = 3, build_id = 'nonsense'").await;
    assert!(matches!(
        store.claim(soon(), LEASE).await,
        Err(StoreError::Corrupt(what)) if what.contains("nonsense")
    ));
    // The failed claim changed nothing.
    let (available,): (bool,) = sqlx::query_as("SELECT available FROM queue_items")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert!(available);
    raw.close().await.unwrap();
}
