//! Build notifications in Quay's notification queue (quay-integration.md section 15):
//! when the manager moves a build to `building`, `complete` or `error` (see [`event`]), or
//! gives up a build with no retry left (`build_failure`), one `queueitem` per
//! matching `repositorynotification` in `notification/<ns>/<repo>/<event>/build/<uuid>/`,
//! with Quay's event data, for Quay's notification worker to deliver.

use buildman_core::Phase;
use serde_json::{Value, json};
use uuid::Uuid;

use super::QuayStore;
use super::builds::QuayBuild;
use crate::Result;

/// Retries Quay gives a notification.
const NOTIFICATION_RETRIES: i32 = 5;

/// Where Quay is, for the notifications' links.
#[derive(Clone, Debug)]
pub struct Site {
    /// SERVER_HOSTNAME.
    pub server_hostname: String,
    /// PREFERRED_URL_SCHEME.
    pub scheme: String,
}

/// The event a phase change sends: `build_start` on `building`, `build_success` on
/// `complete`, `build_failure` on `error`. (Quay's manager sends `build_failure` only when
/// no retry is left, though an `error` is never retried: a failed build's first attempt
/// would notify nobody.)
pub(super) fn event(to: Phase) -> Option<&'static str> {
    match to {
        Phase::Building => Some("build_start"),
        Phase::Complete => Some("build_success"),
        Phase::Error => Some(FAILURE),
        _ => None,
    }
}

/// The event of a build that failed for good: an `error`, or an `internalerror` with no
/// retry left (see `QuayStore::give_up_item`).
pub(super) const FAILURE: &str = "build_failure";

/// Quay's `event_data` of a build event (section 15.2).
fn event_data(build: &QuayBuild, site: &Site) -> Value {
    let row = &build.row;
    let (ns, repo) = (&row.namespace, &row.repository);
    let config = &row.job_config;
    json!({
        "repository": format!("{ns}/{repo}"),
        "namespace": ns,
        "name": repo,
        "docker_url": format!("{}/{ns}/{repo}", site.server_hostname),
        "homepage": format!("{}://{}/repository/{ns}/{repo}/build/{}", site.scheme, site.server_hostname, row.uuid),
        "build_id": row.uuid,
        "build_name": row.display_name,
        "docker_tags": buildman_quay::buildpack::tag_names(config),
        "trigger_id": row.trigger.as_ref().map(|t| t.uuid.clone()),
        "trigger_kind": row.trigger.as_ref().map(|t| t.service.clone()),
        "trigger_metadata": config.trigger_metadata.clone().map_or(json!({}), |m| json!(m)),
    })
}

impl QuayStore {
    /// Enqueues `event` for every notification of the build's repository that asks for it.
    pub(super) async fn notify(&self, build: &QuayBuild, event: &str, site: &Site) -> Result<()> {
        let row = &build.row;
        let targets: Vec<String> = sqlx::query_scalar(
            r#"SELECT n.uuid FROM repositorynotification n
                 JOIN externalnotificationevent e ON e.id = n.event_id
                 JOIN repository r ON r.id = n.repository_id
                 JOIN "user" ns ON ns.id = r.namespace_user_id
                WHERE e.name = $1 AND ns.username = $2 AND r.name = $3"#,
        )
        .bind(event)
        .bind(&row.namespace)
        .bind(&row.repository)
        .fetch_all(self.pool())
        .await?;
        let queue = format!(
            "notification/{}/{}/{event}/build/{}/",
            row.namespace, row.repository, row.uuid
        );
        let data = event_data(build, site);
        for uuid in targets {
            let body = json!({"notification_uuid": uuid, "event_data": data, "performer_data": {}});
            sqlx::query(
                "INSERT INTO queueitem (queue_name, body, available_after, available, \
                 processing_expires, retries_remaining, state_id) \
                 VALUES ($1, $2, now() AT TIME ZONE 'utc', TRUE, NULL, $3, $4)",
            )
            .bind(&queue)
            .bind(body.to_string())
            .bind(NOTIFICATION_RETRIES)
            .bind(Uuid::new_v4().to_string())
            .execute(self.pool())
            .await?;
        }
        Ok(())
    }
}
