//! The user-facing side of the manager: submitting, reading and cancelling builds, and the
//! uploaded contexts builds are made from. The REST API is a thin adapter over this.

use std::sync::Arc;

use buildman_contexts::{ContextStore, Download, new_id};
use buildman_core::{Build, BuildId, BuildSource, InvalidBuild, NewBuild, Phase};
use buildman_store::{BuildFilter, LogPage, QueueState, Store};
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;
use tokio::sync::watch;

use crate::ManagerError;
use crate::feed::Feed;
use crate::feed::follow::Follower;
use crate::metrics::Metrics;
use crate::reaper::Reaper;
use crate::scheduler::Wake;
use crate::settings::Settings;

/// Builds as users see them. Cheap to clone.
#[derive(Clone)]
pub struct Builds {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) feed: Arc<Feed>,
    pub(crate) files: Arc<dyn ContextStore>,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) wake: Wake,
    pub(crate) settings: Arc<Settings>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Builds {
    /// Checks a build request ([`NewBuild::validate`]), queues it and wakes the scheduler.
    /// An empty display name gets Quay's kind: a short random hex string.
    pub async fn submit(&self, mut new: NewBuild) -> Result<Build, ManagerError> {
        if new.display_name.is_empty() {
            new.display_name = new_id()[..7].to_string();
        }
        let mut new = new.validate()?;
        if let BuildSource::Git {
            private_key: Some(key),
            ..
        } = &mut new.source
        {
            let sealing = self.settings.sealing_key.as_ref().ok_or_else(|| {
                InvalidBuild("this manager has no sealing key: it cannot keep a deploy key".into())
            })?;
            *key = sealing.seal(key)?;
        }
        if let BuildSource::Uploaded { file_id } = &new.source
            && !self.files.exists(file_id).await?
        {
            return Err(InvalidBuild(format!(
                "file_id {file_id:?} names no uploaded file: upload the context first"
            ))
            .into());
        }
        let s = &self.settings;
        let build = self
            .store
            .create_build(new, s.queue_rules.retries, s.max_queued_per_namespace)
            .await?;
        self.metrics.queue_put();
        tracing::info!(build_id = %build.id, repository = %build.full_repository(), "build queued");
        self.wake.notify();
        Ok(build)
    }

    /// Cancels a build unless it is pushing or final; stops its worker if it has one.
    pub async fn cancel(&self, id: BuildId) -> Result<(), ManagerError> {
        self.reaper.cancel(id).await
    }

    /// One build.
    pub async fn get(&self, id: BuildId) -> Result<Option<Build>, ManagerError> {
        Ok(self.store.get_build(id).await?)
    }

    /// A repository's builds, newest first; `since` keeps those created at or after it.
    pub async fn list(
        &self,
        namespace: &str,
        repository: &str,
        limit: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Build>, ManagerError> {
        Ok(self
            .store
            .list_builds(namespace, repository, limit, since)
            .await?)
    }

    /// Builds of every repository matching `filter`, newest first, at most `limit`.
    pub async fn find(&self, filter: &BuildFilter, limit: u32) -> Result<Vec<Build>, ManagerError> {
        Ok(self.store.find_builds(filter, limit).await?)
    }

    /// A receiver whose value changes when a build is created or changes on this manager
    /// (other managers' changes are not seen: a list that must show them reads again).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.feed.changes()
    }

    /// Follows a build's log from entry `from` on (see [`Follower`]). Refuses an index past
    /// the end of the log.
    pub async fn follow(&self, build: &Build, from: u64) -> Result<Follower, ManagerError> {
        let follower = Follower::new(self.store.clone(), &self.feed, build, from);
        let total = self.store.read_logs(build.id, from, 0, 0).await?.total;
        if from > total {
            return Err(InvalidBuild(format!(
                "cannot follow build {} from entry {from}: its log has {total} entries",
                build.id
            ))
            .into());
        }
        Ok(follower)
    }

    /// Log entries from index `start` (at most `limit`, and at most `max_bytes` of them
    /// but at least one), with the log's total length.
    pub async fn logs(
        &self,
        id: BuildId,
        start: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<LogPage, ManagerError> {
        Ok(self.store.read_logs(id, start, limit, max_bytes).await?)
    }

    /// The build's place in the queue, `None` once it left it.
    pub async fn queue_state(&self, id: BuildId) -> Result<Option<QueueState>, ManagerError> {
        Ok(self.store.queue_state(id).await?)
    }

    /// True when the build is `internalerror` with no retry left: the status view shows
    /// it as `expired`.
    pub async fn is_expired(&self, build: &Build) -> Result<bool, ManagerError> {
        Ok(
            build.phase == Phase::InternalError
                && self.store.queue_state(build.id).await?.is_none(),
        )
    }

    /// A new upload id (the capability to upload one context, and to fetch it).
    pub fn new_upload_id(&self) -> String {
        new_id()
    }

    /// Stores an uploaded context of at most `limit` bytes under `file_id`.
    pub async fn upload(
        &self,
        file_id: &str,
        mut body: impl AsyncRead + Send + Unpin,
        limit: u64,
    ) -> Result<u64, ManagerError> {
        Ok(self.files.put(file_id, &mut body, limit).await?)
    }

    /// A finished upload's bytes, for a worker to download; `None` when there is none.
    pub async fn download(&self, file_id: &str) -> Result<Option<Download>, ManagerError> {
        Ok(self.files.open(file_id).await?)
    }
}
