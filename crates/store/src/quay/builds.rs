//! Builds in Quay's `repositorybuild` and its joins (quay-integration.md sections 3.2, 5 and
//! 6.1), as the domain's [`Build`], and the phase written as Quay writes it: a
//! compare-and-set on the old phase, never out of `complete`, `error` or `cancelled`.
//!
//! Only `phase` is written: every other column belongs to Quay's web tier. What the domain
//! keeps and Quay has no column for (an error text, the executor, when the build was
//! scheduled or ended, where an unpushed result went) is not stored.

use buildman_core::{Build, BuildId, BuildSource, Phase};
use buildman_quay::buildpack::{Archive, archive, tag_names};
use buildman_quay::rows::{BuildRow, JobConfig, TriggerRow};
use sqlx::PgPool;

use super::items::from_millis;
use crate::{BuildFilter, Result, StoreError};

/// Retries Quay's web tier gives a build: with the item's retries, the attempt number.
const QUAY_RETRIES: i32 = 3;

/// The build query of section 6.1, plus what the domain's build shows (the pull robot's
/// name, the queue item's retries, the start as milliseconds); callers add `WHERE`.
const SELECT_BUILD: &str = r#"SELECT b.id, b.uuid, b.phase, b.job_config, b.resource_key,
       b.display_name, b.queue_id, b.access_token_id,
       (EXTRACT(EPOCH FROM b.started) * 1000)::bigint AS started_ms,
       ns.username AS namespace, r.name AS repository, pr.username AS pull_robot,
       t.id AS trigger_id, t.uuid AS trigger_uuid, s.name AS trigger_service,
       t.secure_private_key, q.retries_remaining
  FROM repositorybuild b
  JOIN repository r ON r.id = b.repository_id
  JOIN "user" ns ON ns.id = r.namespace_user_id
  LEFT JOIN "user" pr ON pr.id = b.pull_robot_id
  LEFT JOIN repositorybuildtrigger t ON t.id = b.trigger_id
  LEFT JOIN buildtriggerservice s ON s.id = t.service_id
  LEFT JOIN queueitem q
    ON q.id = CASE WHEN b.queue_id ~ '^[0-9]{1,9}$' THEN b.queue_id::integer END"#;

/// Newest first, as Quay lists a repository's builds.
const NEWEST_FIRST: &str = "ORDER BY b.started DESC, b.id DESC";

/// One row of [`SELECT_BUILD`].
#[derive(sqlx::FromRow)]
struct Row {
    id: i32,
    uuid: String,
    phase: String,
    job_config: String,
    resource_key: Option<String>,
    display_name: String,
    queue_id: Option<String>,
    access_token_id: i32,
    started_ms: i64,
    namespace: String,
    repository: String,
    pull_robot: Option<String>,
    trigger_id: Option<i32>,
    trigger_uuid: Option<String>,
    trigger_service: Option<String>,
    secure_private_key: Option<String>,
    retries_remaining: Option<i32>,
}

/// A build as Quay's rows hold it, with what the domain shows beside.
#[derive(Clone, Debug)]
pub struct QuayBuild {
    pub row: BuildRow,
    pub pull_robot: Option<String>,
    /// The queue item's retries, `None` once the build left the queue.
    pub retries_remaining: Option<i32>,
    pub started_ms: i64,
}

impl Row {
    fn into_build(self) -> Result<QuayBuild> {
        let job_config = JobConfig::parse(&self.job_config)
            .map_err(|e| StoreError::Corrupt(format!("build {}: {e}", self.uuid)))?;
        let trigger = match (self.trigger_id, self.trigger_uuid) {
            (Some(id), Some(uuid)) => Some(TriggerRow {
                id,
                uuid,
                service: self.trigger_service.unwrap_or_default(),
                secure_private_key: self.secure_private_key,
            }),
            _ => None,
        };
        Ok(QuayBuild {
            row: BuildRow {
                id: self.id,
                uuid: self.uuid,
                phase: self.phase,
                job_config,
                resource_key: self.resource_key,
                display_name: self.display_name,
                queue_id: self.queue_id,
                access_token_id: self.access_token_id,
                namespace: self.namespace,
                repository: self.repository,
                trigger,
            },
            pull_robot: self.pull_robot,
            retries_remaining: self.retries_remaining,
            started_ms: self.started_ms,
        })
    }
}

impl QuayBuild {
    /// The domain's view of the build.
    pub fn to_build(&self) -> Result<Build> {
        let row = &self.row;
        let id: BuildId = row
            .uuid
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("build uuid {:?}: {e}", row.uuid)))?;
        let phase: Phase = row
            .phase
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("build {id}: phase {:?}: {e}", row.phase)))?;
        let started = from_millis(self.started_ms, "repositorybuild.started")?;
        let config = &row.job_config;
        // Before the first claim the item has all its retries: attempt 0. Once the item
        // is gone the count is gone with it; a build that left `waiting` ran at least once.
        let attempts = match self.retries_remaining {
            Some(left) => QUAY_RETRIES.saturating_sub(left).max(0),
            None => i32::from(phase != Phase::Waiting),
        };
        Ok(Build {
            id,
            namespace: row.namespace.clone(),
            repository: row.repository.clone(),
            phase,
            source: source(row),
            tags: tag_names(config),
            context: config.context.clone().unwrap_or_default(),
            dockerfile_path: config.build_subdir.clone().unwrap_or_default(),
            display_name: row.display_name.clone(),
            manual_user: config.manual_user.clone(),
            pull_robot: self.pull_robot.clone(),
            created_at: started,
            updated_at: started,
            error: None,
            result_location: None,
            attempts: u32::try_from(attempts).unwrap_or(0),
            executor: None,
            scheduled_at: None,
            finished_at: None,
        })
    }
}

/// Where the build's context comes from, as Quay's manager picks it: a trigger's repository
/// when the trigger has a deploy key (never shown: the key stays in Quay's row), else the
/// archive URL or the uploaded file.
fn source(row: &BuildRow) -> BuildSource {
    let metadata = row.job_config.trigger_metadata.clone().unwrap_or_default();
    if row
        .trigger
        .as_ref()
        .is_some_and(|t| t.secure_private_key.is_some())
    {
        return BuildSource::Git {
            url: metadata.git_url.unwrap_or_default(),
            sha: metadata.commit.or(metadata.commit_sha).unwrap_or_default(),
            private_key: None,
        };
    }
    match archive(row) {
        Some(Archive::Url(url)) => BuildSource::ArchiveUrl { url },
        Some(Archive::Userfile(file_id)) => BuildSource::Uploaded { file_id },
        None => BuildSource::ArchiveUrl { url: String::new() },
    }
}

/// The newest build of a uuid (the uuid column is not unique in Quay's schema).
pub(super) async fn by_uuid(pool: &PgPool, id: BuildId) -> Result<Option<QuayBuild>> {
    let sql = format!("{SELECT_BUILD} WHERE b.uuid = $1 {NEWEST_FIRST} LIMIT 1");
    let row: Option<Row> = sqlx::query_as(&sql)
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    row.map(Row::into_build).transpose()
}

/// A repository's builds, newest first, started at or after `since_ms`.
pub(super) async fn of_repository(
    pool: &PgPool,
    namespace: &str,
    repository: &str,
    limit: u32,
    since_ms: Option<i64>,
) -> Result<Vec<Build>> {
    let sql = format!(
        "{SELECT_BUILD} WHERE ns.username = $1 AND r.name = $2 \
         AND ($3::bigint IS NULL OR b.started >= to_timestamp($3::bigint / 1000.0) AT TIME ZONE 'utc') \
         {NEWEST_FIRST} LIMIT $4"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(namespace)
        .bind(repository)
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    to_builds(rows)
}

/// Builds of every repository matching `filter`, newest first.
pub(super) async fn matching(
    pool: &PgPool,
    filter: &BuildFilter,
    limit: u32,
) -> Result<Vec<Build>> {
    let sql = format!(
        "{SELECT_BUILD} WHERE ($1::varchar IS NULL OR ns.username = $1) \
         AND ($2::varchar IS NULL OR r.name = $2) AND ($3::varchar IS NULL OR b.phase = $3) \
         AND ($4::boolean IS NULL OR (q.id IS NOT NULL) = $4) {NEWEST_FIRST} LIMIT $5"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(&filter.namespace)
        .bind(&filter.repository)
        .bind(filter.phase.map(Phase::as_str))
        .bind(filter.queued)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    to_builds(rows)
}

fn to_builds(rows: Vec<Row>) -> Result<Vec<Build>> {
    rows.into_iter()
        .map(|r| r.into_build()?.to_build())
        .collect()
}

/// The phases Quay's manager never moves a build out of.
fn is_quay_final(phase: Phase) -> bool {
    matches!(phase, Phase::Complete | Phase::Error | Phase::Cancelled)
}

/// Quay's phase write: read the newest row of the uuid, refuse when its phase is final
/// for Quay or not one of `from` (all when empty), succeed without a write when it is `to`
/// already, else `UPDATE ... WHERE id AND phase = <read>`; a lost race reads again. The
/// phase before, or `None` when refused.
pub(super) async fn compare_and_set_phase(
    pool: &PgPool,
    id: BuildId,
    to: Phase,
    from: &[Phase],
) -> Result<Option<Phase>> {
    loop {
        let row: Option<(i32, String)> = sqlx::query_as(
            "SELECT id, phase FROM repositorybuild WHERE uuid = $1 ORDER BY started DESC, id DESC LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
        let (row_id, stored) = row.ok_or(StoreError::NotFound(id))?;
        let current: Phase = stored
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("build {id}: phase {stored:?}: {e}")))?;
        if !from.is_empty() && !from.contains(&current) {
            return Ok(None);
        }
        if current == to {
            return Ok(Some(current));
        }
        if is_quay_final(current) {
            return Ok(None);
        }
        let done =
            sqlx::query("UPDATE repositorybuild SET phase = $1 WHERE id = $2 AND phase = $3")
                .bind(to.as_str())
                .bind(row_id)
                .bind(&stored)
                .execute(pool)
                .await?;
        if done.rows_affected() == 1 {
            return Ok(Some(current));
        }
    }
}
