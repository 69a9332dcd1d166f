//! Where a registered worker's BuildPack and the cached-tag answer come from: the seam
//! between the worker sessions and the store that holds builds. [`OwnBuildPacks`] answers
//! from buildman's own store; in Quay mode the binary hands in one that reads Quay's rows
//! (access token, deploy key, user files, `tag` table).

use std::sync::Arc;

use async_trait::async_trait;
use buildman_contexts::ContextStore;
use buildman_core::{Build, BuildPack, BuildSource, PackageSource};
use buildman_store::Store;

use crate::ManagerError;
use crate::settings::Settings;

/// A build's BuildPack and its cached tag.
#[async_trait]
pub trait BuildPacks: Send + Sync + 'static {
    /// What the worker of `build` is handed (the job token is the sessions' own).
    async fn build_pack(&self, build: &Build) -> Result<BuildPack, ManagerError>;

    /// DetermineCachedTag: a tag of the build's repository worth pulling as a cache, or "".
    async fn cached_tag(&self, build: &Build) -> Result<String, ManagerError>;
}

/// The BuildPacks of buildman's own store: the registry and tokens of the settings, the
/// context as submitted (an upload's URL from the context store, a deploy key unsealed).
pub struct OwnBuildPacks {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) files: Arc<dyn ContextStore>,
    pub(crate) settings: Arc<Settings>,
}

#[async_trait]
impl BuildPacks for OwnBuildPacks {
    async fn build_pack(&self, build: &Build) -> Result<BuildPack, ManagerError> {
        let s = &self.settings;
        let source = match &build.source {
            BuildSource::ArchiveUrl { url } => PackageSource::Url(url.clone()),
            BuildSource::Uploaded { file_id } => {
                PackageSource::Url(self.files.worker_url(file_id).await?)
            }
            BuildSource::Git {
                url,
                sha,
                private_key,
            } => PackageSource::Git {
                url: url.clone(),
                sha: sha.clone(),
                private_key: match private_key {
                    Some(sealed) => self.open_secret(sealed)?,
                    None => String::new(),
                },
            },
        };
        Ok(BuildPack {
            source,
            context: build.context.clone(),
            dockerfile_path: build.dockerfile_path.clone(),
            repository: build.full_repository(),
            registry: s.registry.clone(),
            pull_token: s.pull_token.clone(),
            push_token: s.push_token.clone(),
            tag_names: build.effective_tags(),
            base_image: None,
        })
    }

    /// The first of this build's tags that an earlier complete build of the same
    /// repository pushed, or "".
    async fn cached_tag(&self, build: &Build) -> Result<String, ManagerError> {
        let tags = build.effective_tags();
        let pushed = (self.store)
            .pushed_tag(&build.namespace, &build.repository, &tags)
            .await?;
        Ok(pushed.unwrap_or_default())
    }
}

impl OwnBuildPacks {
    /// A build secret as the worker needs it: opened with the sealing key.
    fn open_secret(&self, sealed: &str) -> Result<String, ManagerError> {
        let key = (self.settings.sealing_key.as_ref()).ok_or(crate::sealing::SealError::Open)?;
        Ok(key.open(sealed)?)
    }
}
