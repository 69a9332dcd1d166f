//! The quay backend as a [`Store`]: builds read from Quay's rows, phases written as Quay
//! writes them, logs in the build-log Redis in Quay's format, the queue's state and gauges.

use std::time::Duration;

use buildman_core::config::{BuildLogsRedisConfig, Config};
use buildman_core::{BuildSource, LogEntry, LogType, NewBuild, Phase, Requeue};
use buildman_quay::secret::FieldCipher;
use buildman_store::quay::{BuildLogs, QuayStore, Site, TriggerThresholds};
use buildman_store::{BuildFilter, Store, StoreError, WorkerLine};
use buildman_testkit::quay::{self, BuildRequest, StartedBuild};
use buildman_testkit::redis::RedisServer;
use sqlx::PgPool;

use crate::{LEASE, db_now};

/// A Quay database, a build-log Redis and the store on them.
async fn quay_store() -> (PgPool, RedisServer, QuayStore) {
    let (_url, pool) = quay::database().await;
    let redis = RedisServer::start().await;
    let logs = BuildLogs::connect(&BuildLogsRedisConfig {
        host: "127.0.0.1".into(),
        port: redis.port(),
        password: None,
        db: 0,
        ssl: false,
    })
    .await
    .expect("build-log redis");
    let store = QuayStore::open(pool.clone(), logs)
        .await
        .expect("a supported schema");
    (pool, redis, store)
}

/// An uploaded-archive build of `namespace/repository` started as Quay's web tier does.
async fn upload(pool: &PgPool, namespace: &str, repository: &str) -> StartedBuild {
    quay::repository(pool, namespace, repository).await;
    let request = BuildRequest {
        namespace: namespace.into(),
        repository: repository.into(),
        job_config: serde_json::json!({
            "docker_tags": ["latest", "v1"], "context": "/app",
            "build_subdir": "/app/Dockerfile", "is_manual": true, "manual_user": "alice",
            "trigger_metadata": {}, "archive_url": null,
        }),
        resource_key: Some("0b1c2d3e-aaaa-4bbb-8ccc-123456789abc".into()),
        display_name: "1234567".into(),
        ..BuildRequest::default()
    };
    let cipher = FieldCipher::from_config("k").expect("key");
    quay::start_build(pool, &request, |c| cipher.encrypt(c).expect("short")).await
}

#[tokio::test]
async fn builds_are_read_from_quays_rows() {
    let (pool, _redis, store) = quay_store().await;
    let older = upload(&pool, "acme", "web").await;
    let newer = upload(&pool, "acme", "web").await;
    upload(&pool, "acme", "api").await;

    let id = older.uuid.parse().expect("uuid");
    let build = store.get_build(id).await.expect("get").expect("found");
    assert_eq!(
        (build.namespace.as_str(), build.repository.as_str()),
        ("acme", "web")
    );
    assert_eq!(build.phase, Phase::Waiting);
    assert_eq!(
        build.source,
        BuildSource::Uploaded {
            file_id: "0b1c2d3e-aaaa-4bbb-8ccc-123456789abc".into()
        }
    );
    assert_eq!(build.tags, ["latest", "v1"]);
    assert_eq!(
        (build.context.as_str(), build.dockerfile_path.as_str()),
        ("/app", "/app/Dockerfile")
    );
    assert_eq!(build.manual_user.as_deref(), Some("alice"));
    assert_eq!(
        (build.display_name.as_str(), build.attempts),
        ("1234567", 0)
    );

    let listed = store
        .list_builds("acme", "web", 10, None)
        .await
        .expect("list");
    let ids: Vec<String> = listed.iter().map(|b| b.id.to_string()).collect();
    assert_eq!(
        ids,
        [newer.uuid.clone(), older.uuid.clone()],
        "newest first"
    );
    let filter = BuildFilter {
        namespace: Some("acme".into()),
        queued: Some(true),
        ..BuildFilter::default()
    };
    assert_eq!(store.find_builds(&filter, 10).await.expect("find").len(), 3);
    let filter = BuildFilter {
        repository: Some("api".into()),
        ..BuildFilter::default()
    };
    assert_eq!(store.find_builds(&filter, 10).await.expect("find").len(), 1);

    let refused = store.create_build(new_build(), 3, None).await;
    match refused {
        Err(StoreError::Unsupported(m)) => assert!(m.contains("started by Quay"), "{m}"),
        other => panic!("expected a refusal naming Quay, got {other:?}"),
    }
}

fn new_build() -> NewBuild {
    NewBuild {
        namespace: "acme".into(),
        repository: "web".into(),
        source: BuildSource::ArchiveUrl {
            url: "https://example.com/a.tar.gz".into(),
        },
        tags: Vec::new(),
        context: "/".into(),
        dockerfile_path: "/Dockerfile".into(),
        display_name: "x".into(),
        manual_user: None,
        pull_robot: None,
    }
}

#[tokio::test]
async fn phases_are_quays_compare_and_set_and_logged_in_quays_format() {
    let (pool, redis, store) = quay_store().await;
    let started = upload(&pool, "acme", "web").await;
    let id = started.uuid.parse().expect("uuid");
    let entry = |p: Phase| LogEntry::phase(p, Default::default(), "2026-01-01T00:00:00Z");

    let before = store
        .set_phase(
            id,
            Phase::BuildScheduled,
            &[Phase::Waiting],
            None,
            Some(&entry(Phase::BuildScheduled)),
        )
        .await
        .expect("set");
    assert_eq!(before, Some(Phase::Waiting));
    // Not from one of the allowed phases: refused; the current phase again: no write.
    assert_eq!(
        store
            .set_phase(id, Phase::Complete, &[Phase::Pushing], None, None)
            .await
            .expect("set"),
        None
    );
    assert_eq!(
        store
            .set_phase(
                id,
                Phase::BuildScheduled,
                &[Phase::BuildScheduled],
                None,
                Some(&entry(Phase::BuildScheduled))
            )
            .await
            .expect("set"),
        Some(Phase::BuildScheduled)
    );
    // Quay's web tier cancels: the manager never moves the build out of it.
    sqlx::query("UPDATE repositorybuild SET phase = 'cancelled' WHERE uuid = $1")
        .bind(&started.uuid)
        .execute(&pool)
        .await
        .expect("cancel");
    assert_eq!(
        store
            .set_phase(
                id,
                Phase::Building,
                &[],
                None,
                Some(&entry(Phase::Building))
            )
            .await
            .expect("set"),
        None
    );
    let phase: String = sqlx::query_scalar("SELECT phase FROM repositorybuild WHERE uuid = $1")
        .bind(&started.uuid)
        .fetch_one(&pool)
        .await
        .expect("phase");
    assert_eq!(phase, "cancelled");

    let log = buildman_testkit::quay::log_entries(&redis.url(), &started.uuid).await;
    assert_eq!(log.len(), 1, "one phase entry: {log:?}");
    assert_eq!(log[0]["message"], "build-scheduled");
    assert_eq!(log[0]["type"], "phase");
    let datetime = log[0]["data"]["datetime"].as_str().expect("a datetime");
    assert!(
        chrono::NaiveDateTime::parse_from_str(datetime, "%Y-%m-%d %H:%M:%S%.f").is_ok(),
        "Python's str(datetime): {datetime}"
    );
}

#[tokio::test]
async fn worker_lines_are_stored_once_per_attempt() {
    let (pool, redis, store) = quay_store().await;
    let started = upload(&pool, "acme", "web").await;
    let id = started.uuid.parse().expect("uuid");
    let now = db_now(&pool).await + chrono::Duration::seconds(1);
    let claim = store.claim(now, LEASE).await.expect("claim").expect("item");
    let line = |sequence: i32, text: &str| WorkerLine {
        build: id,
        attempt: Some(claim.state_id.clone()),
        sequence,
        entry: LogEntry::from_worker_line(&serde_json::json!({ "stream": text }).to_string())
            .expect("line"),
    };
    let first = store
        .append_worker_lines(&[line(1, "Step 1/2 : FROM scratch"), line(2, "hello")])
        .await
        .expect("append");
    assert_eq!(first, [Some(0), Some(1)]);
    // A reconnected worker re-sends line 2.
    let again = store
        .append_worker_lines(&[line(2, "hello"), line(3, "Step 2/2 : COPY a /")])
        .await
        .expect("append");
    assert_eq!(again, [None, Some(2)]);

    let log = buildman_testkit::quay::log_entries(&redis.url(), &started.uuid).await;
    let messages: Vec<&str> = log.iter().filter_map(|e| e["message"].as_str()).collect();
    assert_eq!(
        messages,
        ["Step 1/2 : FROM scratch", "hello", "Step 2/2 : COPY a /"]
    );
    assert_eq!(log[0]["type"], "command");
    assert!(log[1].get("type").is_none());
    let status: String = redis::cmd("GET")
        .arg(format!("builds/{}/status", started.uuid))
        .query_async(
            &mut redis::Client::open(redis.url())
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("connect"),
        )
        .await
        .expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(
        (
            status["current_command"].as_u64(),
            status["total_commands"].as_u64()
        ),
        (Some(2), Some(2))
    );

    // Pages, bounded by count and by bytes (always the first).
    let page = store.read_logs(id, 1, 10, u64::MAX).await.expect("read");
    assert_eq!((page.start, page.total, page.entries.len()), (1, 3, 2));
    assert_eq!(page.entries[1].kind, Some(LogType::Command));
    let page = store.read_logs(id, 0, 10, 1).await.expect("read");
    assert_eq!(page.entries.len(), 1);

    // Returned to the queue: the claim's lines are over.
    let requeue = Requeue {
        after: Duration::ZERO,
        restore_retry: true,
        silent_restores: 0,
    };
    assert!(
        store
            .return_item(&claim, now, &requeue)
            .await
            .expect("return")
    );
    assert!(matches!(
        store.append_worker_lines(&[line(4, "late")]).await,
        Err(StoreError::AttemptOver(b)) if b == id
    ));
}

#[tokio::test]
async fn the_queue_state_cancel_and_quays_gauges() {
    let (pool, _redis, store) = quay_store().await;
    let web = upload(&pool, "acme", "web").await;
    upload(&pool, "acme", "web").await;
    let api = upload(&pool, "acme", "api").await;
    let now = db_now(&pool).await + chrono::Duration::seconds(1);
    let web_id = web.uuid.parse().expect("uuid");

    let stats = store.queue_stats(now).await.expect("stats");
    assert_eq!(
        (stats.locked, stats.available, stats.available_unlocked),
        (0, 2, 2)
    );
    assert_eq!(stats.live_phases, [(Phase::Waiting, 3)]);
    assert!(stats.oldest_waiting.is_some());

    let claim = store.claim(now, LEASE).await.expect("claim").expect("item");
    assert_eq!(claim.build_id, web_id);
    let state = store
        .queue_state(web_id)
        .await
        .expect("state")
        .expect("queued");
    assert!(!state.available);
    assert_eq!(state.retries_remaining, 2);
    let stats = store.queue_stats(now).await.expect("stats");
    assert_eq!(
        (stats.locked, stats.available, stats.available_unlocked),
        (1, 2, 1)
    );

    // Back in 60 s: the scheduler sleeps until then.
    let requeue = Requeue {
        after: Duration::from_secs(60),
        restore_retry: false,
        silent_restores: 0,
    };
    assert!(
        store
            .return_item(&claim, now, &requeue)
            .await
            .expect("return")
    );
    let next = store
        .next_available_after(now)
        .await
        .expect("next")
        .expect("a due time");
    assert_eq!(
        next.timestamp(),
        (now + chrono::Duration::seconds(60)).timestamp()
    );

    // Cancel, as the web tier deletes the item by the build's queue_id.
    let api_id = api.uuid.parse().expect("uuid");
    store.delete_item(api_id).await.expect("delete");
    assert_eq!(store.queue_state(api_id).await.expect("state"), None);
    let queued = BuildFilter {
        queued: Some(false),
        ..BuildFilter::default()
    };
    let gone: Vec<String> = store
        .find_builds(&queued, 10)
        .await
        .expect("find")
        .iter()
        .map(|b| b.id.to_string())
        .collect();
    assert_eq!(gone, [api.uuid]);
}

#[tokio::test]
async fn phase_changes_enqueue_quays_build_notifications() {
    let (pool, _redis, store) = quay_store().await;
    let store = store.with_notifications(Site {
        server_hostname: "quay.example".into(),
        scheme: "https".into(),
    });
    let started = upload(&pool, "acme", "web").await;
    let id = started.uuid.parse().expect("uuid");
    for event in ["build_start", "build_success"] {
        quay::notification(&pool, "acme", "web", event, &format!("n-{event}")).await;
    }
    for phase in [Phase::BuildScheduled, Phase::Building, Phase::Complete] {
        store
            .set_phase(id, phase, &[], None, None)
            .await
            .expect("set")
            .expect("changed");
    }
    let queued = quay::queued_notifications(&pool).await;
    let names: Vec<&str> = queued.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("notification/acme/web/build_start/build/{}/", started.uuid),
            format!(
                "notification/acme/web/build_success/build/{}/",
                started.uuid
            ),
        ]
    );
    let body = &queued[1].1;
    assert_eq!(body["notification_uuid"], "n-build_success");
    let data = &body["event_data"];
    assert_eq!(data["repository"], "acme/web");
    assert_eq!(data["build_id"], started.uuid.as_str());
    assert_eq!(data["build_name"], "1234567");
    assert_eq!(data["docker_url"], "quay.example/acme/web");
    assert_eq!(
        data["homepage"],
        format!(
            "https://quay.example/repository/acme/web/build/{}",
            started.uuid
        )
    );
    assert_eq!(data["docker_tags"], serde_json::json!(["latest", "v1"]));
    assert_eq!(data["trigger_id"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_triggers_successive_failures_disable_it_as_quay_does() {
    let (pool, _redis, store) = quay_store().await;
    let store = store.with_trigger_thresholds(TriggerThresholds {
        failures: 2,
        internal_errors: 5,
    });
    quay::repository(&pool, "acme", "web").await;
    let (trigger,): (i32,) = sqlx::query_as(
        "INSERT INTO repositorybuildtrigger (uuid, service_id, repository_id, connected_user_id, config) \
         SELECT 'trig', s.id, r.id, r.namespace_user_id, '{}' FROM buildtriggerservice s, repository r \
         WHERE s.name = 'github' AND r.name = 'web' RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("trigger");
    let cipher = FieldCipher::from_config("k").expect("key");
    let run = |phase: Phase| {
        let (pool, store, cipher) = (pool.clone(), store.clone(), cipher.clone());
        async move {
            let request = BuildRequest {
                namespace: "acme".into(),
                repository: "web".into(),
                job_config: serde_json::json!({"archive_url": "https://example.com/a.tgz"}),
                display_name: "x".into(),
                trigger_id: Some(trigger),
                ..BuildRequest::default()
            };
            let b = quay::start_build(&pool, &request, |c| cipher.encrypt(c).expect("short")).await;
            let id = b.uuid.parse().expect("uuid");
            store
                .set_phase(id, phase, &[], None, None)
                .await
                .expect("set")
                .expect("changed");
        }
    };
    let state = |pool: PgPool| async move {
        let row: (i32, i32, bool, Option<i32>) = sqlx::query_as(
            "SELECT successive_failure_count, successive_internal_error_count, enabled, disabled_reason_id \
             FROM repositorybuildtrigger WHERE uuid = 'trig'",
        )
        .fetch_one(&pool)
        .await
        .expect("trigger");
        row
    };
    run(Phase::InternalError).await;
    run(Phase::Error).await;
    assert_eq!(
        state(pool.clone()).await,
        (1, 0, true, None),
        "an error resets the internal errors"
    );
    run(Phase::Complete).await;
    assert_eq!(
        state(pool.clone()).await,
        (0, 0, true, None),
        "complete resets both"
    );
    run(Phase::Error).await;
    run(Phase::Error).await;
    assert_eq!(
        state(pool.clone()).await,
        (2, 0, false, Some(2)),
        "disabled: successive_build_failures"
    );
}

#[tokio::test]
async fn builder_db_host_override_replaces_db_uris_host() {
    let (url, pool) = quay::database().await;
    let started = upload(&pool, "acme", "override").await;
    let redis = RedisServer::start().await;
    // DB_URI names a host where nothing listens (the web tier's view); the builder reaches
    // the database only through the override, as in Quay's supervisord setup.
    let elsewhere = url.replace("127.0.0.1", "127.0.0.2");
    let yaml = format!(
        "BUILDMAN_STORE: quay\nDB_URI: {elsewhere}\nDATABASE_SECRET_KEY: 'k'\n\
         BUILDLOGS_REDIS: {{host: 127.0.0.1, port: {}}}\nBUILDER_DB_HOST_OVERRIDE: 127.0.0.1\n",
        redis.port()
    );
    let config = Config::parse(&yaml).expect("valid config").config;
    let store = QuayStore::connect(config.quay.as_ref().expect("quay mode"))
        .await
        .expect("connects through the override");
    let id = started.uuid.parse().expect("uuid");
    let build = store.get_build(id).await.expect("read");
    assert!(build.is_some(), "the build Quay's web tier started is read");
}
