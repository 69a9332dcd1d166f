//! The `quay` backend: buildman in place of Quay's build manager, on Quay's own PostgreSQL
//! database and build-log Redis (shared/docs/quay-integration.md), so builds started from
//! Quay's UI, API and triggers run on buildman and show up in Quay as before.
//!
//! - [`queue`] and [`items`]: the build queue in `queueitem`, Quay's claim and the rest.
//! - [`builds`]: `repositorybuild` with its joins as the domain's build; the phase written
//!   as Quay writes it.
//! - [`logs`]: the logs in `BUILDLOGS_REDIS`, in Quay's list layout and entry format.
//! - `pack`: what a worker's BuildPack and DetermineCachedTag read beyond the build.
//!
//! Quay's web tier owns its tables: this backend writes `repositorybuild.phase` and
//! `queueitem` rows only, never migrates the schema, and refuses to open a database at a
//! revision it does not know. What has no meaning here is refused with what to use
//! instead ([`StoreError::Unsupported`]): builds are created by Quay's web tier; retention
//! is Quay's (its log archiver and garbage collection).

use std::time::Duration;

use async_trait::async_trait;
use buildman_core::config::QuayModeConfig;
use buildman_core::{Build, BuildId, ClaimedItem, LogEntry, NewBuild, Phase, Requeue};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::{BuildFilter, LogPage, QueueState, QueueStats, Result, Store, StoreError, WorkerLine};

pub mod builds;
mod items;
pub mod logs;
mod notify;
mod pack;
mod queue;
mod triggers;

pub use builds::QuayBuild;
pub use logs::BuildLogs;
pub use notify::Site;
pub use queue::{QuayQueue, SUPPORTED_REVISIONS};
pub use triggers::TriggerThresholds;

/// The store on Quay's database and build-log Redis.
#[derive(Clone)]
pub struct QuayStore {
    queue: QuayQueue,
    logs: BuildLogs,
    /// Where Quay is, for notifications; `None` sends none.
    site: Option<Site>,
    /// When a trigger's successive failures disable it.
    thresholds: TriggerThresholds,
}

/// Connections to Quay's database when DB_CONNECTION_ARGS sets no `max_connections`.
const MAX_CONNECTIONS: u32 = 10;

impl QuayStore {
    /// Connects to Quay's database (DB_URI, its host replaced by BUILDER_DB_HOST_OVERRIDE
    /// when set, with DB_CONNECTION_ARGS' TLS settings) and build-log Redis, and checks
    /// the schema revision.
    pub async fn connect(config: &QuayModeConfig) -> Result<Self> {
        let args = &config.db_connection_args;
        let mut options: PgConnectOptions = config.db_uri.parse()?;
        if let Some(host) = &config.db_host_override {
            options = options.host(host);
        }
        if let Some(mode) = &args.sslmode {
            options = options.ssl_mode(mode.parse()?);
        }
        if let Some(ca) = &args.sslrootcert {
            options = options.ssl_root_cert(ca);
        }
        if let Some(cert) = &args.sslcert {
            options = options.ssl_client_cert(cert);
        }
        if let Some(key) = &args.sslkey {
            options = options.ssl_client_key(key);
        }
        let pool = PgPoolOptions::new()
            .max_connections(args.max_connections.unwrap_or(MAX_CONNECTIONS))
            .connect_with(options)
            .await?;
        let logs = BuildLogs::connect(&config.buildlogs_redis).await?;
        Self::open(pool, logs).await
    }

    /// The store over an open pool on Quay's database (its schema revision checked) and
    /// the build-log Redis.
    pub async fn open(pool: PgPool, logs: BuildLogs) -> Result<Self> {
        Ok(Self {
            queue: QuayQueue::open(pool).await?,
            logs,
            site: None,
            thresholds: TriggerThresholds::default(),
        })
    }

    /// Disables triggers at these counts of successive failures (Quay's defaults otherwise).
    pub fn with_trigger_thresholds(mut self, thresholds: TriggerThresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Sends Quay's build notifications (build_start, build_success, build_failure) for
    /// the phase changes this store makes, with links to Quay at `site`.
    pub fn with_notifications(mut self, site: Site) -> Self {
        self.site = Some(site);
        self
    }

    fn pool(&self) -> &PgPool {
        &self.queue.pool
    }

    /// A build as Quay's rows hold it (section 6.1): what a worker's BuildPack is made of.
    pub async fn quay_build(&self, id: BuildId) -> Result<Option<QuayBuild>> {
        builds::by_uuid(self.pool(), id).await
    }
}

#[async_trait]
impl Store for QuayStore {
    async fn create_build(&self, _: NewBuild, _: u32, _: Option<u32>) -> Result<Build> {
        Err(StoreError::Unsupported(
            "in Quay mode builds are started by Quay (its UI, its API \
             POST /api/v1/repository/<namespace>/<repository>/build/, or a build trigger), \
             not by buildman's API"
                .into(),
        ))
    }

    async fn get_build(&self, id: BuildId) -> Result<Option<Build>> {
        self.quay_build(id).await?.map(|b| b.to_build()).transpose()
    }

    async fn list_builds(
        &self,
        namespace: &str,
        repository: &str,
        limit: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Build>> {
        let since_ms = since.map(|t| t.timestamp_millis());
        builds::of_repository(self.pool(), namespace, repository, limit, since_ms).await
    }

    async fn find_builds(&self, filter: &BuildFilter, limit: u32) -> Result<Vec<Build>> {
        builds::matching(self.pool(), filter, limit).await
    }

    /// Quay's compare-and-set; the phase entry is appended after the write, as Quay does.
    /// Quay has no column for the error, and the log has it already: the manager appends
    /// an internal error's reason (a silent worker, one that never registered) as an error
    /// entry for every store, and a build error's text is the worker's last error line.
    async fn set_phase(
        &self,
        id: BuildId,
        to: Phase,
        from: &[Phase],
        _error: Option<&str>,
        entry: Option<&LogEntry>,
    ) -> Result<Option<Phase>> {
        let before = builds::compare_and_set_phase(self.pool(), id, to, from).await?;
        if before.is_some_and(|b| b != to) {
            self.notify_change(id, to).await;
            self.count_trigger_result(id, to).await?;
            if let Some(entry) = entry {
                self.logs
                    .append(&id.to_string(), std::slice::from_ref(entry))
                    .await?;
            }
        }
        Ok(before)
    }

    /// Quay has no column for it: not stored.
    /// The first of `tags` that is a live tag of the repository in Quay's `tag` table.
    async fn pushed_tag(
        &self,
        namespace: &str,
        repository: &str,
        tags: &[String],
    ) -> Result<Option<String>> {
        self.live_tag(namespace, repository, tags, Utc::now()).await
    }

    async fn set_executor(&self, _: BuildId, _: &str) -> Result<()> {
        Ok(())
    }

    /// Quay has no column for it (and workers always push in Quay mode): not stored.
    async fn set_result_location(&self, _: BuildId, _: &str) -> Result<()> {
        Ok(())
    }

    async fn claim(&self, now: DateTime<Utc>, lease: Duration) -> Result<Option<ClaimedItem>> {
        self.queue.claim(now, lease).await
    }

    async fn complete_item(&self, item: &ClaimedItem) -> Result<bool> {
        self.queue.complete_item(item).await
    }

    /// Quay sends `build_failure` when a build expires on its last retry (section 14).
    async fn give_up_item(&self, item: &ClaimedItem) -> Result<bool> {
        let done = self.queue.complete_item(item).await?;
        if done {
            self.notify_event(item.build_id, notify::FAILURE).await;
        }
        Ok(done)
    }

    async fn return_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        requeue: &Requeue,
    ) -> Result<bool> {
        self.queue.return_item(item, now, requeue).await
    }

    async fn extend_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        lease: Duration,
        minimum: Duration,
    ) -> Result<bool> {
        self.queue.extend_item(item, now, lease, minimum).await
    }

    async fn release_all_claims(&self, now: DateTime<Utc>) -> Result<u64> {
        self.queue.release_all(now).await
    }

    async fn delete_item(&self, build: BuildId) -> Result<()> {
        self.queue.delete_build_item(build).await
    }

    async fn claimed_items(&self, limit: u32) -> Result<Vec<ClaimedItem>> {
        self.queue.claimed(limit).await
    }

    async fn queue_state(&self, build: BuildId) -> Result<Option<QueueState>> {
        self.queue.build_item_state(build).await
    }

    async fn next_available_after(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        self.queue.next_due(now).await
    }

    async fn append_logs(&self, id: BuildId, entries: &[LogEntry]) -> Result<u64> {
        if builds::by_uuid(self.pool(), id).await?.is_none() {
            return Err(StoreError::NotFound(id));
        }
        self.logs.append(&id.to_string(), entries).await
    }

    async fn append_worker_lines(&self, lines: &[WorkerLine]) -> Result<Vec<Option<u64>>> {
        let grouped = logs::by_build(lines);
        for build in &grouped {
            self.check_attempt(&build.uuid, build.attempt).await?;
        }
        self.logs.append_worker_lines(&grouped, lines.len()).await
    }

    async fn read_logs(
        &self,
        id: BuildId,
        start: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<LogPage> {
        self.logs
            .read(&id.to_string(), start, limit, max_bytes)
            .await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        self.logs.ping().await
    }

    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats> {
        self.queue.stats(now).await
    }

    /// Retention is Quay's: none here.
    async fn ended_with_context(&self, _: DateTime<Utc>, _: u32) -> Result<Vec<Build>> {
        Ok(Vec::new())
    }

    /// Retention is Quay's: nothing to record.
    async fn mark_contexts_pruned(&self, _: &[BuildId]) -> Result<()> {
        Ok(())
    }

    /// Retention is Quay's: buildman deletes no build of Quay's.
    async fn delete_ended_builds(&self, _: DateTime<Utc>, _: u32) -> Result<u64> {
        Ok(0)
    }
}

impl QuayStore {
    /// Quay's notification of a phase change, if it sends one. Best effort: the phase is
    /// stored, and Quay's own notification worker retries deliveries, not enqueues.
    async fn notify_change(&self, id: BuildId, to: Phase) {
        if let Some(event) = notify::event(to) {
            self.notify_event(id, event).await;
        }
    }

    /// Quay's notification `event` of a build, if Quay's site is known. Best effort, as
    /// [`QuayStore::notify_change`].
    async fn notify_event(&self, id: BuildId, event: &str) {
        let Some(site) = &self.site else {
            return;
        };
        let sent = async {
            match builds::by_uuid(self.pool(), id).await? {
                Some(build) => self.notify(&build, event, site).await,
                None => Ok(()),
            }
        };
        if let Err(e) = sent.await {
            tracing::warn!(build_id = %id, error = %e, "could not enqueue Quay's build notification");
        }
    }

    /// Counts a triggered build's result on its trigger (section 14.1).
    async fn count_trigger_result(&self, id: BuildId, to: Phase) -> Result<()> {
        if !matches!(to, Phase::Complete | Phase::Error | Phase::InternalError) {
            return Ok(());
        }
        let trigger = builds::by_uuid(self.pool(), id)
            .await?
            .and_then(|b| b.row.trigger.map(|t| t.id));
        match trigger {
            Some(trigger) => {
                triggers::count_result(self.pool(), trigger, to, self.thresholds).await
            }
            None => Ok(()),
        }
    }

    /// Refuses lines of an attempt that is over: the build is in a final phase, or its
    /// queue item (whose `state_id` names the attempt) is gone or claimed again since.
    async fn check_attempt(&self, uuid: &str, attempt: Option<&str>) -> Result<()> {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT b.phase, q.state_id FROM repositorybuild b LEFT JOIN queueitem q \
               ON q.id = CASE WHEN b.queue_id ~ '^[0-9]{1,9}$' THEN b.queue_id::integer END \
             WHERE b.uuid = $1 ORDER BY b.started DESC, b.id DESC LIMIT 1",
        )
        .bind(uuid)
        .fetch_optional(self.pool())
        .await?;
        let id: BuildId = uuid
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("build uuid {uuid:?}: {e}")))?;
        let (phase, current) = row.ok_or(StoreError::NotFound(id))?;
        let over = phase.parse::<Phase>().is_ok_and(Phase::is_final);
        let other = attempt.is_some_and(|a| current.as_deref() != Some(a));
        if over || other {
            return Err(StoreError::AttemptOver(id));
        }
        Ok(())
    }
}
