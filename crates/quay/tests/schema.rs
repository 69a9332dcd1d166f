//! Quay's schema fixture on a real PostgreSQL, with a build started as Quay's web tier
//! starts one (testkit::quay): the rows are what quay-integration.md section 4 says, and
//! the BuildPack made from them carries the token Quay stored.

use buildman_quay::buildpack::{self, Archive};
use buildman_quay::rows::{AccessTokenRow, BuildRow, JobConfig, QueueBody};
use buildman_quay::secret::FieldCipher;
use buildman_testkit::quay::{self, BuildRequest, SCHEMA_REVISION};
use sqlx::{PgPool, Row};

const KEY: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

fn request() -> BuildRequest {
    BuildRequest {
        namespace: "acme".into(),
        repository: "web".into(),
        job_config: serde_json::json!({
            "docker_tags": ["v1"], "registry": "quay.example", "build_subdir": "/sub/Dockerfile",
            "context": "/sub", "trigger_metadata": {}, "is_manual": true, "manual_user": "ann",
            "archive_url": null,
        }),
        resource_key: Some("0b4a9e5c-8d1e-4a8e-9d64-3c2f1b0a9e77".into()),
        display_name: "1a2b3c4".into(),
        pull_credentials: Some(serde_json::json!({
            "username": "acme+bot", "password": "robot-token", "registry": "https://quay.example/v1/",
        })),
        ..BuildRequest::default()
    }
}

/// The build read back as the manager's build query reads it (section 6.1).
async fn read_build(pool: &PgPool, uuid: &str) -> BuildRow {
    let row = sqlx::query(
        r#"SELECT b.id, b.uuid, b.phase, b.job_config, b.resource_key, b.display_name, b.queue_id,
                  b.access_token_id, ns.username, r.name
           FROM repositorybuild b
           JOIN repository r ON r.id = b.repository_id
           JOIN "user" ns ON ns.id = r.namespace_user_id
           LEFT JOIN "user" robot ON robot.id = b.pull_robot_id
           LEFT JOIN repositorybuildtrigger t ON t.id = b.trigger_id
           LEFT JOIN buildtriggerservice s ON s.id = t.service_id
           WHERE b.uuid = $1 ORDER BY b.started DESC LIMIT 1"#,
    )
    .bind(uuid)
    .fetch_one(pool)
    .await
    .expect("the build query");
    let text = |column: &str| row.get::<String, _>(column);
    BuildRow {
        id: row.get("id"),
        uuid: text("uuid"),
        phase: text("phase"),
        job_config: JobConfig::parse(&text("job_config")).expect("job_config"),
        resource_key: row.get("resource_key"),
        display_name: text("display_name"),
        queue_id: row.get("queue_id"),
        access_token_id: row.get("access_token_id"),
        namespace: text("username"),
        repository: text("name"),
        trigger: None,
    }
}

#[tokio::test]
async fn a_build_started_as_quays_web_tier_does_has_quays_rows() {
    let (_url, pool) = quay::database().await;
    let (revision,): (String,) = sqlx::query_as("SELECT version_num FROM alembic_version")
        .fetch_one(&pool)
        .await
        .expect("alembic_version");
    assert_eq!(revision, SCHEMA_REVISION);
    quay::repository(&pool, "acme", "web").await;
    let cipher = FieldCipher::from_config(KEY).expect("key");
    let started = quay::start_build(&pool, &request(), |code| {
        cipher.encrypt(code).expect("short")
    })
    .await;

    // The build: waiting, pointing at its queue item.
    let build = read_build(&pool, &started.uuid).await;
    assert_eq!(build.phase, "waiting");
    assert_eq!(build.queue_id, Some(started.queue_item_id.to_string()));
    assert_eq!(build.namespace, "acme");
    assert_eq!(build.job_config.docker_tags, Some(vec!["v1".to_owned()]));
    let (logs_archived,): (bool,) =
        sqlx::query_as("SELECT logs_archived FROM repositorybuild WHERE id = $1")
            .bind(started.build_id)
            .fetch_one(&pool)
            .await
            .expect("logs_archived");
    assert!(!logs_archived, "the DB default");

    // The queue item: available now, 3 retries, no lease, a state_id.
    let (name, body, available, retries, expires_null, state_id, due): (String, String, bool, i32, bool, String, bool) =
        sqlx::query_as(
            "SELECT queue_name, body, available, retries_remaining, processing_expires IS NULL, state_id,
                    available_after <= now() AT TIME ZONE 'utc'
             FROM queueitem WHERE id = $1",
        )
        .bind(started.queue_item_id)
        .fetch_one(&pool)
        .await
        .expect("queue item");
    assert_eq!(name, "dockerfilebuild/acme/web/");
    assert!(available && expires_null && due);
    assert_eq!(retries, 3);
    assert_eq!(state_id.len(), 36);
    let body = QueueBody::parse(&body).expect("body");
    assert_eq!(body.build_uuid, started.uuid);

    // The token: role write, kind build-worker, temporary, its code decrypting.
    let (token_name, token_code, role, kind, temporary): (String, String, String, String, bool) = sqlx::query_as(
        "SELECT t.token_name, t.token_code, r.name, k.name, t.temporary FROM accesstoken t
         JOIN role r ON r.id = t.role_id JOIN accesstokenkind k ON k.id = t.kind_id WHERE t.id = $1",
    )
    .bind(build.access_token_id)
    .fetch_one(&pool)
    .await
    .expect("token");
    assert_eq!(
        (role.as_str(), kind.as_str(), temporary),
        ("write", "build-worker", true)
    );
    assert_eq!(token_code.len(), 88);
    assert_eq!(
        cipher.decrypt(&token_code).as_deref(),
        Ok(started.token_code.as_str())
    );

    // What the worker is handed.
    let token = AccessTokenRow {
        id: build.access_token_id,
        token_name,
        token_code,
    };
    assert_eq!(
        buildpack::archive(&build),
        Some(Archive::Userfile(build.resource_key.clone().expect("key")))
    );
    let pack = buildpack::build_pack(
        &build,
        &token,
        &body,
        Some("http://quay.example/userfiles/x"),
        &cipher,
        "quay.example",
    )
    .expect("pack");
    assert_eq!(
        pack.push_token,
        format!("{}{}", started.token_name, started.token_code)
    );
    assert_eq!(
        pack.base_image,
        Some(("acme+bot".into(), "robot-token".into()))
    );
    assert_eq!(
        (pack.context.as_str(), pack.dockerfile_path.as_str()),
        ("/sub", "Dockerfile")
    );
}

#[tokio::test]
async fn the_schema_holds_quays_constraints() {
    let (_url, pool) = quay::database().await;
    quay::repository(&pool, "acme", "web").await;
    let cipher = FieldCipher::from_config(KEY).expect("key");
    let a = quay::start_build(&pool, &request(), |c| cipher.encrypt(c).expect("short")).await;
    quay::start_build(&pool, &request(), |c| cipher.encrypt(c).expect("short")).await;

    // state_id is unique.
    let dup = sqlx::query("UPDATE queueitem SET state_id = (SELECT state_id FROM queueitem WHERE id = $1) WHERE id <> $1")
        .bind(a.queue_item_id)
        .execute(&pool)
        .await;
    assert!(dup.is_err(), "two items with one state_id");
    // token_name is unique.
    let dup = sqlx::query("UPDATE accesstoken SET token_name = $1 WHERE id <> $2")
        .bind(&a.token_name)
        .bind(a.access_token_id)
        .execute(&pool)
        .await;
    assert!(dup.is_err(), "two tokens with one name");
    // disablereason ids are fixed; the DB defaults of a trigger are Quay's.
    let (reason,): (String,) = sqlx::query_as("SELECT name FROM disablereason WHERE id = 3")
        .fetch_one(&pool)
        .await
        .expect("reason 3");
    assert_eq!(reason, "successive_build_internal_errors");
    let (enabled, failures, internal, migrated): (bool, i32, i32, bool) = sqlx::query_as(
        r#"INSERT INTO repositorybuildtrigger (uuid, service_id, repository_id, connected_user_id, config)
           SELECT 't', s.id, r.id, r.namespace_user_id, '{}' FROM buildtriggerservice s, repository r
           WHERE s.name = 'github'
           RETURNING enabled, successive_failure_count, successive_internal_error_count, fully_migrated"#,
    )
    .fetch_one(&pool)
    .await
    .expect("a trigger with defaults");
    assert_eq!((enabled, failures, internal, migrated), (true, 0, 0, false));
}
