//! Quay's database for tests of the Quay mode: the part of Quay's schema buildman uses
//! ([`SCHEMA`], `quay/schema.sql`), and what Quay's web tier does to start a build
//! ([`start_build`], quay-integration.md section 4.1), so a test can play Quay's UI.
//!
//! Encryption is the caller's (`buildman_quay::secret::FieldCipher::encrypt`), handed in
//! as a function: testkit does not depend on the crates it tests.

use sqlx::PgPool;

/// The fixture schema, with the enum rows and Alembic revision Quay's migrations write.
pub const SCHEMA: &str = include_str!("quay/schema.sql");

/// The Alembic revision [`SCHEMA`] stands for.
pub const SCHEMA_REVISION: &str = "9fa37f66a9b6";

/// A fresh database on this binary's PostgreSQL server holding [`SCHEMA`]; its URL and a pool.
pub async fn database() -> (String, PgPool) {
    let url = crate::postgres::fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    sqlx::raw_sql(SCHEMA)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("applying Quay's schema fixture: {e}"));
    (url, pool)
}

/// The repository `namespace/name` (made with its namespace user when missing); its id.
pub async fn repository(pool: &PgPool, namespace: &str, name: &str) -> i32 {
    sqlx::query(r#"INSERT INTO "user" (username) VALUES ($1) ON CONFLICT (username) DO NOTHING"#)
        .bind(namespace)
        .execute(pool)
        .await
        .expect("inserting the namespace user");
    let (id,): (i32,) = sqlx::query_as(
        r#"INSERT INTO repository (namespace_user_id, name)
           SELECT id, $2 FROM "user" WHERE username = $1
           ON CONFLICT (namespace_user_id, name) DO UPDATE SET name = EXCLUDED.name
           RETURNING id"#,
    )
    .bind(namespace)
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("inserting the repository");
    id
}

/// A build as a user, trigger or API call asks Quay for one.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    pub namespace: String,
    pub repository: String,
    /// `repositorybuild.job_config` (section 4.2).
    pub job_config: serde_json::Value,
    /// The uploaded archive's file id.
    pub resource_key: Option<String>,
    pub display_name: String,
    pub trigger_id: Option<i32>,
    pub pull_robot_id: Option<i32>,
    /// The queue body's `pull_credentials` (username, password, registry).
    pub pull_credentials: Option<serde_json::Value>,
    /// The access token's name and plaintext code (`None`: 32 random characters each), so
    /// a test registry can accept the name + code as the `$token` password.
    pub token: Option<(String, String)>,
}

/// What Quay's web tier wrote for a build.
#[derive(Clone, Debug)]
pub struct StartedBuild {
    pub build_id: i32,
    pub uuid: String,
    pub access_token_id: i32,
    /// 32 characters of `[A-Z0-9]`, stored in plaintext.
    pub token_name: String,
    /// 32 characters of `[A-Z0-9]`, stored encrypted.
    pub token_code: String,
    pub queue_item_id: i32,
}

/// Starts a build as Quay's web tier does (section 4.1): the access token (role `write`,
/// kind `build-worker`, its code stored as `encrypt` makes it), then in one transaction
/// the build (phase `waiting`), its queue item in `dockerfilebuild/<ns>/<repo>/` (3
/// retries, available now) and the item's id on the build. The repository must exist
/// ([`repository`]). Times are the database's UTC clock.
pub async fn start_build(
    pool: &PgPool,
    request: &BuildRequest,
    encrypt: impl Fn(&str) -> String,
) -> StartedBuild {
    let repository_id = repository_id(pool, &request.namespace, &request.repository).await;
    let (token_name, token_code) =
        (request.token.clone()).unwrap_or_else(|| (token_chars(), token_chars()));
    let (access_token_id,): (i32,) = sqlx::query_as(
        "INSERT INTO accesstoken
             (friendly_name, token_name, token_code, repository_id, created, role_id, temporary, kind_id)
         VALUES ('Repository Build Token', $1, $2, $3, now() AT TIME ZONE 'utc',
                 (SELECT id FROM role WHERE name = 'write'), true,
                 (SELECT id FROM accesstokenkind WHERE name = 'build-worker'))
         RETURNING id",
    )
    .bind(&token_name)
    .bind(encrypt(&token_code))
    .bind(repository_id)
    .fetch_one(pool)
    .await
    .expect("inserting the access token");

    let uuid = uuid::Uuid::new_v4().to_string();
    let mut tx = pool.begin().await.expect("BEGIN");
    let (build_id,): (i32,) = sqlx::query_as(
        "INSERT INTO repositorybuild
             (uuid, repository_id, access_token_id, resource_key, job_config, phase, started,
              display_name, trigger_id, pull_robot_id, queue_id)
         VALUES ($1, $2, $3, $4, $5, 'waiting', now() AT TIME ZONE 'utc', $6, $7, $8, NULL)
         RETURNING id",
    )
    .bind(&uuid)
    .bind(repository_id)
    .bind(access_token_id)
    .bind(&request.resource_key)
    .bind(request.job_config.to_string())
    .bind(&request.display_name)
    .bind(request.trigger_id)
    .bind(request.pull_robot_id)
    .fetch_one(&mut *tx)
    .await
    .expect("inserting the build");
    let body = serde_json::json!({
        "build_uuid": uuid,
        "pull_credentials": request.pull_credentials,
    });
    let (queue_item_id,): (i32,) = sqlx::query_as(
        "INSERT INTO queueitem
             (queue_name, body, available_after, available, processing_expires, retries_remaining, state_id)
         VALUES ($1, $2, now() AT TIME ZONE 'utc', true, NULL, 3, $3)
         RETURNING id",
    )
    .bind(format!("dockerfilebuild/{}/{}/", request.namespace, request.repository))
    .bind(body.to_string())
    .bind(uuid::Uuid::new_v4().to_string())
    .fetch_one(&mut *tx)
    .await
    .expect("inserting the queue item");
    sqlx::query("UPDATE repositorybuild SET queue_id = $1 WHERE id = $2")
        .bind(queue_item_id.to_string())
        .bind(build_id)
        .execute(&mut *tx)
        .await
        .expect("storing the queue item on the build");
    tx.commit().await.expect("COMMIT");
    StartedBuild {
        build_id,
        uuid,
        access_token_id,
        token_name,
        token_code,
        queue_item_id,
    }
}

/// A build trigger as Quay's web tier stores it on activation (section 3.4).
#[derive(Clone, Debug, Default)]
pub struct TriggerRequest {
    pub namespace: String,
    pub repository: String,
    /// `buildtriggerservice.name`: `github`, `gitlab`, `bitbucket`, `custom-git`.
    pub service: String,
    /// `repositorybuildtrigger.config` (`build_source`, `dockerfile_path`, `context`, ...).
    pub config: serde_json::Value,
    /// The deploy key's private half as stored (`v0$$...`, encrypted by the caller).
    pub secure_private_key: Option<String>,
}

/// Inserts a trigger of `namespace/repository` connected by its namespace user; its id and
/// uuid.
pub async fn trigger(pool: &PgPool, request: &TriggerRequest) -> (i32, String) {
    let repository_id = repository_id(pool, &request.namespace, &request.repository).await;
    let uuid = uuid::Uuid::new_v4().to_string();
    let (id,): (i32,) = sqlx::query_as(
        "INSERT INTO repositorybuildtrigger
             (uuid, service_id, repository_id, connected_user_id, config, secure_private_key,
              disabled_datetime)
         SELECT $1, s.id, r.id, r.namespace_user_id, $3, $4, now() AT TIME ZONE 'utc'
           FROM buildtriggerservice s, repository r WHERE s.name = $2 AND r.id = $5
         RETURNING id",
    )
    .bind(&uuid)
    .bind(&request.service)
    .bind(request.config.to_string())
    .bind(&request.secure_private_key)
    .bind(repository_id)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("inserting the trigger (service {:?}): {e}", request.service));
    (id, uuid)
}

/// A notification of `namespace/repository` on `event` (a webhook, as a user sets one up
/// in Quay's UI) under `uuid`.
pub async fn notification(
    pool: &PgPool,
    namespace: &str,
    repository: &str,
    event: &str,
    uuid: &str,
) {
    let repository_id = repository_id(pool, namespace, repository).await;
    sqlx::query(
        "INSERT INTO repositorynotification
             (uuid, repository_id, event_id, method_id, title, config_json, event_config_json)
         SELECT $1, $2, e.id, m.id, 't', '{}', '{}'
           FROM externalnotificationevent e, externalnotificationmethod m
          WHERE e.name = $3 AND m.name = 'webhook'",
    )
    .bind(uuid)
    .bind(repository_id)
    .bind(event)
    .execute(pool)
    .await
    .expect("inserting the notification");
}

/// The notification queue items (`notification/...`) in the order they were queued: their
/// queue name and JSON body, as Quay's notification worker reads them.
pub async fn queued_notifications(pool: &PgPool) -> Vec<(String, serde_json::Value)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT queue_name, body FROM queueitem WHERE queue_name LIKE 'notification/%' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("reading the notification queue");
    rows.into_iter()
        .map(|(name, body)| (name, serde_json::from_str(&body).expect("a JSON body")))
        .collect()
}

/// The id of `namespace/name`; panics when it was not made.
async fn repository_id(pool: &PgPool, namespace: &str, name: &str) -> i32 {
    let row: Option<(i32,)> = sqlx::query_as(
        r#"SELECT r.id FROM repository r JOIN "user" u ON u.id = r.namespace_user_id
           WHERE u.username = $1 AND r.name = $2"#,
    )
    .bind(namespace)
    .bind(name)
    .fetch_optional(pool)
    .await
    .expect("looking up the repository");
    row.unwrap_or_else(|| panic!("no repository {namespace}/{name}: make it with quay::repository"))
        .0
}

/// 32 random characters of `[A-Z0-9]` (hex digits: a subset of what Quay draws from).
fn token_chars() -> String {
    uuid::Uuid::new_v4().simple().to_string().to_uppercase()
}

/// The entries of a build's log list in the build-log Redis at `redis_url`, as Quay's log
/// viewer reads them (`LRANGE builds/<uuid>/logs 0 -1`).
pub async fn log_entries(redis_url: &str, uuid: &str) -> Vec<serde_json::Value> {
    let client = redis::Client::open(redis_url).expect("a Redis URL");
    let mut conn = (client.get_multiplexed_async_connection())
        .await
        .expect("connect to the build-log Redis");
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("builds/{uuid}/logs"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("LRANGE");
    raw.iter()
        .map(|r| serde_json::from_str(r).expect("a JSON log entry"))
        .collect()
}
