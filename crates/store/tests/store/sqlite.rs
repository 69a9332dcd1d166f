//! The suite on SQLite database files in a temporary directory, and SQLite's own tests.

use std::path::PathBuf;

use async_trait::async_trait;
use buildman_store::Store;
use buildman_store::sqlite::SqliteStore;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tempfile::TempDir;

use crate::suite::{Backend, LEASE, create, soon, store_suite};

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

    async fn tamper(&self, sql: &str) {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .foreign_keys(false);
        let mut raw = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query(sql).execute(&mut raw).await.unwrap();
        raw.close().await.unwrap();
    }

    // SQLite stores whatever it is given.
    const NOT_TAGS: &str = "'x'";
    const NOT_A_TIME: &str = "'yesterday'";
    const NOT_AN_ENTRY: &str = "'not json'";
}

store_suite!(Sqlite);

#[tokio::test]
async fn in_memory_store_works() {
    let store = SqliteStore::open_url("sqlite::memory:").await.unwrap();
    let build = create(&store, "acme", "web").await;
    assert_eq!(store.get_build(build.id).await.unwrap(), Some(build));
    assert!(store.claim(soon(), LEASE).await.unwrap().is_some());
}
