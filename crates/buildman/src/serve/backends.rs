//! The store, the orchestrator and the context storage the configuration names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use buildman_contexts::{ContextStore, LocalStore, S3Store};
use buildman_core::config::{Config, ContextStorageConfig, OrchestratorConfig};
use buildman_orchestrator::Orchestrator;
use buildman_orchestrator::memory::MemoryOrchestrator;
use buildman_orchestrator::redis::{RedisOrchestrator, RedisOrchestratorConfig};
use buildman_server::rest::filedrop_url;
use buildman_store::Store;
use buildman_store::postgres::PostgresStore;
use buildman_store::sqlite::SqliteStore;

/// The store: SQLite in the data dir unless BUILDMAN_DATABASE_URL names another (Quay
/// mode's is `quay::open`'s).
pub(super) async fn open_store(config: &Config, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    match config.database_url.as_deref() {
        None => Ok(Arc::new(
            SqliteStore::open(&data_dir.join("buildman.db"))
                .await
                .context("opening the SQLite database in the data dir")?,
        )),
        Some(url) if url.starts_with("sqlite:") => {
            Ok(Arc::new(SqliteStore::open_url(url).await.with_context(
                || "opening BUILDMAN_DATABASE_URL".to_string(),
            )?))
        }
        Some(url) => Ok(Arc::new(
            PostgresStore::connect(url)
                .await
                // The URL may hold a password: name the key, not the value.
                .context("connecting to PostgreSQL (BUILDMAN_DATABASE_URL)")?,
        )),
    }
}

/// The orchestrator: in memory, or Redis when ORCHESTRATOR has REDIS_* keys.
pub(super) async fn open_orchestrator(config: &Config) -> anyhow::Result<Arc<dyn Orchestrator>> {
    let bm = &config.build_manager;
    Ok(match &bm.orchestrator {
        OrchestratorConfig::Memory => Arc::new(MemoryOrchestrator::new()),
        OrchestratorConfig::Redis(r) => Arc::new(
            RedisOrchestrator::connect(redis_config(
                r,
                &bm.orchestrator_prefix,
                bm.machine_max_time,
            ))
            .await
            .context("connecting to the Redis orchestrator (BUILD_MANAGER[1].ORCHESTRATOR)")?,
        ),
    })
}

/// The Redis orchestrator's settings from Quay's ORCHESTRATOR keys.
fn redis_config(
    r: &buildman_core::config::RedisConfig,
    prefix: &str,
    machine_max_time: std::time::Duration,
) -> RedisOrchestratorConfig {
    let mut c = RedisOrchestratorConfig::new(r.host.clone(), r.port, prefix);
    c.password = r.password.clone();
    c.db = r.db;
    c.tls = r.ssl;
    c.tls_ca_cert = r.extra.get("ca_cert").map(PathBuf::from);
    c.skip_keyspace_event_setup = r.skip_keyspace_event_setup;
    // A slot must outlive the longest job plus the time to stop its worker.
    c.slot_ttl = machine_max_time + std::time::Duration::from_secs(3600);
    c
}

/// The context storage: `<data dir>/contexts`, served to workers by this manager's REST API at
/// `public_url`, unless BUILDMAN_CONTEXT_STORAGE names a bucket (S3 uploads are spooled in the
/// same directory on their way).
pub(super) async fn open_contexts(
    config: &Config,
    data_dir: &Path,
    public_url: &str,
) -> anyhow::Result<Arc<dyn ContextStore>> {
    let dir = data_dir.join("contexts");
    match &config.context_storage {
        ContextStorageConfig::Local => {
            if shared_database(config) {
                tracing::warn!(
                    "uploaded contexts live in this manager's data dir: a build uploaded here \
                     fails on any other manager; with several managers configure \
                     BUILDMAN_CONTEXT_STORAGE (KIND: s3) so that they share them"
                );
            }
            let public_url = public_url.to_owned();
            Ok(Arc::new(LocalStore::new(
                dir,
                Arc::new(move |id: &str| filedrop_url(&public_url, id)),
            )))
        }
        ContextStorageConfig::S3(s3) => {
            Ok(Arc::new(S3Store::connect(s3, dir).await.context(
                "opening the context storage (BUILDMAN_CONTEXT_STORAGE)",
            )?))
        }
    }
}

/// A database other managers can share (PostgreSQL), as opposed to this one's SQLite file.
fn shared_database(config: &Config) -> bool {
    config
        .database_url
        .as_deref()
        .is_some_and(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"))
}
