//! The suite on SQLite database files in a temporary directory, and SQLite's own tests.

use std::path::PathBuf;

use async_trait::async_trait;
use buildman_core::LogEntry;
use buildman_store::sqlite::SqliteStore;
use buildman_store::{Store, StoreError};
use tempfile::TempDir;

use crate::suite::{Backend, LEASE, new_build, soon, store_suite};

/// A database file of its own, in a directory that does not exist yet.
pub struct Sqlite {
    _dir: TempDir,
    path: PathBuf,
}

#[async_trait]
impl Backend for Sqlite {
    type Store = SqliteStore;

    async fn fresh() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("buildman.db");
        Sqlite { _dir: dir, path }
    }

    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.path).await.unwrap()
    }

    async fn close(store: &SqliteStore) {
        store.close().await;
    }
}

store_suite!(Sqlite);

#[tokio::test]
async fn in_memory_store_works() {
    let store = SqliteStore::open_url("sqlite::memory:").await.unwrap();
    let build = store
        .create_build(new_build("acme", "web"), 3, None)
        .await
        .unwrap();
    assert_eq!(store.get_build(build.id).await.unwrap(), Some(build));
    assert!(store.claim(soon(), LEASE).await.unwrap().is_some());
}

#[tokio::test]
async fn undecodable_rows_are_reported_as_corrupt() {
    let db = Sqlite::fresh().await;
    let store = db.open().await;
    let build = store
        .create_build(new_build("acme", "web"), 3, None)
        .await
        .unwrap();
    store
        .append_logs(build.id, &[LogEntry::output("fine")])
        .await
        .unwrap();

    // A second, raw connection, with foreign keys off so it can write anything.
    let raw = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db.path)
            .foreign_keys(false),
    )
    .await
    .unwrap();
    let tamper = |sql: &'static str| {
        let raw = raw.clone();
        async move {
            sqlx::query(sql).execute(&raw).await.unwrap();
        }
    };

    tamper("UPDATE builds SET phase = 'expired'").await;
    let err = store.get_build(build.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(what) if what.contains("expired")),
        "{err:?}"
    );
    assert!(matches!(
        store
            .set_phase(build.id, buildman_core::Phase::Error, &[], None)
            .await,
        Err(StoreError::Corrupt(_))
    ));
    tamper("UPDATE builds SET phase = 'waiting', source = '{\"kind\":\"ftp\"}'").await;
    assert!(matches!(
        store.list_builds("acme", "web", 10, None).await,
        Err(StoreError::Corrupt(what)) if what.contains("source")
    ));
    tamper("UPDATE builds SET source = '{\"kind\":\"uploaded\",\"file_id\":\"f\"}', tags = 'x'")
        .await;
    assert!(matches!(
        store.get_build(build.id).await,
        Err(StoreError::Corrupt(what)) if what.contains("tags")
    ));
    tamper("UPDATE builds SET tags = '[]', created_at = 'yesterday'").await;
    assert!(matches!(
        store.get_build(build.id).await,
        Err(StoreError::Corrupt(what)) if what.contains("created_at")
    ));
    tamper("UPDATE builds SET created_at = 0").await;
    assert!(store.get_build(build.id).await.unwrap().is_some());

    tamper("UPDATE build_logs SET entry = 'not json'").await;
    assert!(matches!(
        store.read_logs(build.id, 0, 10).await,
        Err(StoreError::Corrupt(what)) if what.contains("log entry 0")
    ));
    tamper("UPDATE queue_items SET build_id = 'nonsense'").await;
    assert!(matches!(
        store.claim(soon(), LEASE).await,
        Err(StoreError::Corrupt(what)) if what.contains("nonsense")
    ));
    raw.close().await;
}
