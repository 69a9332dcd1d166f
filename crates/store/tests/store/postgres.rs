//! The suite on fresh databases of a PostgreSQL server started by the tests
//! (`buildman_testkit::postgres`), and PostgreSQL's own tests.

use async_trait::async_trait;
use buildman_core::queue::queue_name;
use buildman_store::Store;
use buildman_store::postgres::PostgresStore;
use sqlx::Connection;

use crate::suite::{Backend, LEASE, create, soon, store_suite};
use buildman_testkit::postgres::fresh_database;

/// A database of its own on the test server.
pub struct Postgres {
    url: String,
}

#[async_trait]
impl Backend for Postgres {
    type Store = PostgresStore;
    const NOT_TAGS: &str = "'\"x\"'";
    // BIGINT holds no words; a number of milliseconds beyond any date is as wrong.
    const NOT_A_TIME: &str = "9223372036854775807";
    const NOT_AN_ENTRY: &str = "'\"not an entry\"'";

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

    /// As the superuser it is, the connection can turn foreign-key checks off.
    async fn tamper(&self, sql: &str) {
        let mut raw = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut raw)
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut raw).await.unwrap();
        raw.close().await.unwrap();
    }
}

store_suite!(Postgres);

/// The advisory-lock class the store uses for queue names (`postgres.rs`).
const QUEUE_NAME_LOCK: i32 = 0x626d_0001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_skips_a_repository_another_manager_is_claiming() {
    let db = Postgres::fresh().await;
    let store = db.open().await;
    let a1 = create(&store, "acme", "a").await;
    let b1 = create(&store, "acme", "b").await;
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
