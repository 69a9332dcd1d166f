//! Quay mode's part of `serve` (BUILDMAN_STORE: quay): Quay's defaults where buildman's
//! differ, the idle states Quay's builder has, and the store on Quay's database.

use std::sync::Arc;

use std::time::{Duration, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use buildman_core::config::{Config, Lifecycle, QuayModeConfig};
use buildman_core::{Build, BuildPack};
use buildman_manager::sessions::BuildPacks;
use buildman_manager::{Manager, ManagerError};
use buildman_quay::buildpack::{Archive, archive, build_pack};
use buildman_quay::rows::QueueBody;
use buildman_quay::secret::FieldCipher;
use buildman_quay::userfiles::Userfiles;
use buildman_store::quay::{QuayStore, Site, TriggerThresholds};
use buildman_store::{Store, StoreError};

/// Quay's gRPC address for workers: every interface, port 50051.
pub const QUAY_GRPC_LISTEN: &str = "0.0.0.0:50051";
/// How often the builds this manager runs are checked for a cancel in Quay.
const CANCEL_CHECK: Duration = Duration::from_secs(2);

/// Why a Quay-mode manager has nothing to do, when it has not: Quay's builder then stays up
/// idle (so a supervisor does not restart it in a loop), and so does buildman. `None` in
/// buildman's own mode, which refuses to start instead.
pub fn idle_reason(config: &Config) -> Option<&'static str> {
    let quay = config.quay.as_ref()?;
    if !config.feature_build_support {
        return Some("FEATURE_BUILD_SUPPORT is false: builds are disabled in Quay");
    }
    if quay.registry_readonly {
        return Some("REGISTRY_STATE is readonly: Quay takes no builds");
    }
    if matches!(config.build_manager.lifecycle, Lifecycle::External) {
        return Some("BUILD_MANAGER is `external`: builds run elsewhere");
    }
    None
}

/// The store on Quay's database and build-log Redis, and the workers' BuildPacks from
/// Quay's rows.
pub(super) async fn open(
    config: &Config,
    quay: &QuayModeConfig,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn BuildPacks>)> {
    let cipher =
        FieldCipher::from_config(&quay.database_secret_key).context("DATABASE_SECRET_KEY")?;
    let userfiles = Userfiles::from_config(&quay.document)
        .context("the user-file storage (USERFILES_LOCATION, DISTRIBUTED_STORAGE_CONFIG)")?;
    let store = QuayStore::connect(quay)
        .await
        // DB_URI may hold a password: name the keys, not the values.
        .context("opening Quay's database (DB_URI) and build-log Redis (BUILDLOGS_REDIS)")?;
    let store = store
        .with_notifications(Site {
            server_hostname: config.server_hostname.clone(),
            scheme: quay.preferred_url_scheme.clone(),
        })
        .with_trigger_thresholds(TriggerThresholds {
            failures: quay.trigger_failure_threshold,
            internal_errors: quay.trigger_internal_error_threshold,
        });
    let store = Arc::new(store);
    let packs = QuayBuildPacks {
        store: store.clone(),
        cipher,
        userfiles,
        server_hostname: config.server_hostname.clone(),
    };
    Ok((store, Arc::new(packs)))
}

/// BuildPacks as Quay's manager makes them (sections 6.2 to 7): the build's access token
/// decrypted as the registry password, the trigger's deploy key for git builds, the
/// uploaded archive's download URL, the pull robot from the queue body; the cached tag
/// from Quay's `tag` table.
struct QuayBuildPacks {
    store: Arc<QuayStore>,
    cipher: FieldCipher,
    userfiles: Userfiles,
    server_hostname: String,
}

#[async_trait]
impl BuildPacks for QuayBuildPacks {
    async fn build_pack(&self, build: &Build) -> Result<BuildPack, ManagerError> {
        let unusable = |why: String| {
            ManagerError::Store(StoreError::Corrupt(format!("build {}: {why}", build.id)))
        };
        let quay =
            (self.store.quay_build(build.id).await?).ok_or(ManagerError::NotFound(build.id))?;
        let token = (self.store.access_token(quay.row.access_token_id).await?)
            .ok_or_else(|| unusable("its access token is gone".into()))?;
        let body = self.store.queue_body(build.id).await?.unwrap_or(QueueBody {
            build_uuid: build.id.to_string(),
            pull_credentials: None,
        });
        let url = match archive(&quay.row) {
            Some(Archive::Url(url)) => Some(url),
            Some(Archive::Userfile(id)) => Some(
                (self.userfiles.download_url(&id, SystemTime::now()).await)
                    .map_err(|e| unusable(e.to_string()))?,
            ),
            None => None,
        };
        build_pack(
            &quay.row,
            &token,
            &body,
            url.as_deref(),
            &self.cipher,
            &self.server_hostname,
        )
        .map_err(|e| unusable(e.to_string()))
    }

    async fn cached_tag(&self, build: &Build) -> Result<String, ManagerError> {
        let now = chrono::Utc::now();
        Ok((self.store)
            .cached_tag(&build.namespace, &build.repository, &build.tags, now)
            .await?)
    }
}

/// Quay's web tier cancels a build by setting its phase to `cancelled` and deleting its
/// queue item; the cancel key it writes in Redis is one no manager can read
/// (quay-integration.md section 12.4). So the builds this manager runs are checked every
/// [`CANCEL_CHECK`] and the workers of cancelled ones stopped, until `stop`.
pub(super) async fn stop_cancelled_workers(manager: Manager, stop: impl Future<Output = ()>) {
    let watch = async {
        loop {
            tokio::time::sleep(CANCEL_CHECK).await;
            if let Err(e) = manager.end_cancelled_elsewhere().await {
                tracing::warn!(error = %e, "could not look for builds cancelled in Quay");
            }
        }
    };
    tokio::select! {
        () = watch => {}
        () = stop => {}
    }
}

/// What `check-config` says of Quay mode beyond the file's own rules: the secret key
/// derives a key, the user-file storage is one buildman makes download URLs for. `Ok`
/// holds the lines to print; `Err` the problem.
pub fn check(config: &Config) -> Result<Vec<String>, String> {
    let Some(quay) = &config.quay else {
        return Ok(Vec::new());
    };
    FieldCipher::from_config(&quay.database_secret_key)
        .map_err(|e| format!("DATABASE_SECRET_KEY: {e}"))?;
    Userfiles::from_config(&quay.document).map_err(|e| e.to_string())?;
    let redis = &quay.buildlogs_redis;
    let mut lines = vec![format!(
        "Quay mode: builds from Quay's database (DB_URI), logs to BUILDLOGS_REDIS at {}:{} db {}, workers push to {}",
        redis.host, redis.port, redis.db, config.server_hostname
    )];
    if let Some(why) = idle_reason(config) {
        lines.push(format!(
            "idle: {why}; `serve` stays up without running builds"
        ));
    }
    Ok(lines)
}
