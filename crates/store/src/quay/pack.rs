//! What a worker's BuildPack and DetermineCachedTag read from Quay's rows beyond the build
//! (quay-integration.md sections 6.2, 6.4 and 7): the build's access token, the pull
//! robot's credentials in its queue item's body, and the repository's live tags.

use buildman_core::BuildId;
use buildman_quay::rows::{AccessTokenRow, QueueBody};
use chrono::{DateTime, Utc};

use super::QuayStore;
use crate::{Result, StoreError};

/// Live, visible tags of a repository at `$3` (ms): Quay's `tag` joined to its manifest.
const LIVE_TAGS: &str = r#"SELECT t.name FROM tag t
  JOIN manifest m ON m.id = t.manifest_id
  JOIN repository r ON r.id = t.repository_id
  JOIN "user" ns ON ns.id = r.namespace_user_id
 WHERE ns.username = $1 AND r.name = $2 AND NOT t.hidden
   AND (t.lifetime_end_ms IS NULL OR t.lifetime_end_ms > $3)"#;

impl QuayStore {
    /// The access token a build's worker logs in to Quay with (its code still encrypted).
    pub async fn access_token(&self, id: i32) -> Result<Option<AccessTokenRow>> {
        let row: Option<(i32, String, String)> =
            sqlx::query_as("SELECT id, token_name, token_code FROM accesstoken WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(id, token_name, token_code)| AccessTokenRow {
            id,
            token_name,
            token_code,
        }))
    }

    /// The body of a build's queue item (the pull robot's credentials), while it has one.
    pub async fn queue_body(&self, build: BuildId) -> Result<Option<QueueBody>> {
        let body: Option<String> = sqlx::query_scalar(
            "SELECT q.body FROM queueitem q WHERE q.id = (SELECT CASE WHEN queue_id ~ '^[0-9]{1,9}$' \
             THEN queue_id::integer END FROM repositorybuild WHERE uuid = $1 \
             ORDER BY started DESC, id DESC LIMIT 1)",
        )
        .bind(build.to_string())
        .fetch_optional(self.pool())
        .await?;
        body.map(|b| QueueBody::parse(&b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// The first of `tags` that is a live tag of the repository at `now`.
    pub async fn live_tag(
        &self,
        namespace: &str,
        repository: &str,
        tags: &[String],
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let live: Vec<String> = sqlx::query_scalar(&format!("{LIVE_TAGS} AND t.name = ANY($4)"))
            .bind(namespace)
            .bind(repository)
            .bind(now.timestamp_millis())
            .bind(tags)
            .fetch_all(self.pool())
            .await?;
        Ok(tags.iter().find(|t| live.contains(t)).cloned())
    }

    /// Quay's DetermineCachedTag: a live tag of the repository named among `tags`, else the
    /// live tag started last; "" when the repository has none.
    pub async fn cached_tag(
        &self,
        namespace: &str,
        repository: &str,
        tags: &[String],
        now: DateTime<Utc>,
    ) -> Result<String> {
        let now_ms = now.timestamp_millis();
        if let Some(name) = self.live_tag(namespace, repository, tags, now).await? {
            return Ok(name);
        }
        let latest: Option<String> = sqlx::query_scalar(&format!(
            "{LIVE_TAGS} ORDER BY t.lifetime_start_ms DESC LIMIT 1"
        ))
        .bind(namespace)
        .bind(repository)
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        Ok(latest.unwrap_or_default())
    }
}
