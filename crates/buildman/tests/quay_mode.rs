//! Quay mode (BUILDMAN_STORE: quay) through the `buildman` binary: check-config, the idle
//! states Quay's builder has, the schema check, and builds started as Quay's web tier
//! starts them running to the end on Quay's database and build-log Redis.

mod common;
#[path = "quay_mode/front.rs"]
mod front;
#[path = "quay_mode/retries.rs"]
mod retries;
#[path = "quay_mode/trigger.rs"]
mod trigger;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use buildman_quay::secret::FieldCipher;
use buildman_testkit::quay;
use buildman_testkit::redis::RedisServer;
use buildman_testkit::{Registry, TOKEN};

const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");
/// Quay's DATABASE_SECRET_KEY in these tests.
const SECRET: &str = "4815162342";

/// The Quay-mode keys of a config file on `db_url` and the build-log Redis on `redis_port`,
/// with Quay (its registry and user files) at `server`.
fn quay_keys(db_url: &str, redis_port: u16, server: &str) -> String {
    format!(
        "BUILDMAN_STORE: quay\nDB_URI: {db_url}\nDATABASE_SECRET_KEY: '{SECRET}'\n\
         SERVER_HOSTNAME: {server}\nBUILDLOGS_REDIS: {{host: 127.0.0.1, port: {redis_port}}}\n\
         DISTRIBUTED_STORAGE_CONFIG: {{local_us: [LocalStorage, {{storage_path: /datastorage}}]}}\n"
    )
}

fn check_config(dir: &Path, text: &str) -> std::process::Output {
    let file = dir.join("config.yaml");
    std::fs::write(&file, text).expect("config");
    Command::new(BUILDMAN)
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("check-config")
}

#[test]
fn check_config_validates_quay_mode() {
    let dir = tempfile::tempdir().expect("dir");
    let good = quay_keys("postgresql://quay:pw@db/quay", 6379, "quay.example");
    let out = check_config(dir.path(), &good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("build support on"), "{stdout}");
    assert!(
        stdout.contains("Quay mode") && stdout.contains("workers push to quay.example"),
        "{stdout}"
    );
    assert!(!stdout.contains("pw@"), "no password shown: {stdout}");

    let swift = good.replace(
        "[LocalStorage, {storage_path: /datastorage}]",
        "[SwiftStorage, {}]",
    );
    let out = check_config(dir.path(), &swift);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SwiftStorage is not supported"), "{stderr}");

    let out = check_config(
        dir.path(),
        "BUILDMAN_STORE: quay\nDATABASE_SECRET_KEY: 'x'\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing required key DB_URI"), "{stderr}");
}

#[tokio::test]
async fn with_builds_off_quay_mode_stays_up_idle_and_says_why() {
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "{}FEATURE_BUILD_SUPPORT: false\n",
        quay_keys("postgresql://quay@127.0.0.1:9/quay", 9, "quay.example")
    );
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config).expect("config");
    let log = dir.path().join("serve.log");
    let mut child = Command::new(BUILDMAN)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("idle until stopped")
    {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "serve exited: {:?}",
            std::fs::read_to_string(&log)
        );
        assert!(Instant::now() < deadline, "no idle message");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("FEATURE_BUILD_SUPPORT is false"), "{text}");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "still up after saying so"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn an_unsupported_schema_revision_is_refused_naming_the_supported_ones() {
    let (url, pool) = quay::database().await;
    sqlx::query("UPDATE alembic_version SET version_num = 'abcdef012345'")
        .execute(&pool)
        .await
        .expect("revision");
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, quay_keys(&url, redis.port(), "quay.example")).expect("config");
    let out = Command::new(BUILDMAN)
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("abcdef012345") && stderr.contains(quay::SCHEMA_REVISION),
        "{stderr}"
    );
}

/// A config for Quay mode on these servers, with one real-worker executor.
fn serve_config(dir: &Path, db_url: &str, redis: &RedisServer, server: &str) -> String {
    format!(
        "{}BUILD_MANAGER:\n- ephemeral\n- ALLOWED_WORKER_COUNT: 1\n  EXECUTORS:\n{}",
        quay_keys(db_url, redis.port(), server),
        common::real_worker(dir, "")
    )
}

/// Waits until the build's phase in `repositorybuild` is one of `phases`.
async fn wait_phase(pool: &sqlx::PgPool, uuid: &str, phases: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let phase: String = sqlx::query_scalar("SELECT phase FROM repositorybuild WHERE uuid = $1")
            .bind(uuid)
            .fetch_one(pool)
            .await
            .expect("phase");
        if phases.contains(&phase.as_str()) {
            return phase;
        }
        assert!(Instant::now() < deadline, "build {uuid} still {phase}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Quay for a test: its database, build-log Redis, registry (with a busybox `base`) and
/// front (SERVER_HOSTNAME), and `buildman serve` in Quay mode on them.
struct QuayWorld {
    url: String,
    pool: sqlx::PgPool,
    redis: RedisServer,
    registry: Registry,
    front: front::Front,
    _scratch: tempfile::TempDir,
}

impl QuayWorld {
    async fn start() -> QuayWorld {
        let (url, pool) = quay::database().await;
        let redis = RedisServer::start().await;
        let scratch = tempfile::tempdir().expect("dir");
        let registry = Registry::start_with_base(scratch.path()).await;
        let front = front::start(&registry.addr).await;
        quay::repository(&pool, "acme", "web").await;
        QuayWorld {
            url,
            pool,
            redis,
            registry,
            front,
            _scratch: scratch,
        }
    }

    /// What Quay's web tier does for an uploaded archive holding `dockerfile` (`{server}`
    /// standing for SERVER_HOSTNAME): the file, the access token, the build row and its
    /// queue item. The access token's name and code make up the test registry's TOKEN.
    async fn upload(&self, dockerfile: &str) -> quay::StartedBuild {
        let server = &self.front.addr;
        let dockerfile = dockerfile.replace("{server}", server);
        let file_id = buildman_testkit::unique();
        let archive = common::tar_gz(&[("Dockerfile", dockerfile.as_bytes())], &[]);
        self.front.upload(&file_id, archive);
        let cipher = FieldCipher::from_config(SECRET).expect("key");
        let (name, code) = TOKEN.split_at(11);
        let request = quay::BuildRequest {
            namespace: "acme".into(),
            repository: "web".into(),
            job_config: serde_json::json!({
                "docker_tags": ["v1"], "registry": server, "build_subdir": "/Dockerfile",
                "context": "/", "trigger_metadata": {}, "is_manual": true,
                "manual_user": "alice", "archive_url": null,
            }),
            resource_key: Some(file_id),
            display_name: "abcdef0".into(),
            token: Some((name.into(), code.into())),
            ..quay::BuildRequest::default()
        };
        quay::start_build(&self.pool, &request, |c| cipher.encrypt(c).expect("short")).await
    }

    /// `buildman serve` in Quay mode with one real-worker executor.
    async fn serve(&self, dir: &Path) -> common::Serve {
        let config = serve_config(dir, &self.url, &self.redis, &self.front.addr);
        common::Serve::start(dir, "quay", &config).await
    }

    /// Like [`QuayWorld::serve`], with the user files in `storage` (a
    /// DISTRIBUTED_STORAGE_CONFIG location, flow-style YAML) instead of LocalStorage.
    async fn serve_with_storage(&self, dir: &Path, storage: &str) -> common::Serve {
        let config = serve_config(dir, &self.url, &self.redis, &self.front.addr)
            .replace("[LocalStorage, {storage_path: /datastorage}]", storage);
        common::Serve::start(dir, "quay", &config).await
    }
}

/// The messages of a build's Redis log entries of `kind` (`phase`, `command`, `error`).
fn messages<'a>(log: &'a [serde_json::Value], kind: &str) -> Vec<&'a str> {
    (log.iter())
        .filter(|e| e["type"] == kind)
        .filter_map(|e| e["message"].as_str())
        .collect()
}

/// Waits until the build ends and checks it completed as Quay shows a build that did:
/// phase `complete` in repositorybuild, its queue item gone, the six phase entries in
/// its Redis log. Returns the log.
async fn assert_completes(
    world: &QuayWorld,
    build: &quay::StartedBuild,
    serve: &common::Serve,
) -> Vec<serde_json::Value> {
    let ended = ["complete", "error", "internalerror"];
    let phase = wait_phase(&world.pool, &build.uuid, &ended, Duration::from_secs(240)).await;
    // The queue item is deleted right after the phase is written, as Quay does: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let left = loop {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queueitem WHERE id = $1")
            .bind(build.queue_item_id)
            .fetch_one(&world.pool)
            .await
            .expect("count");
        if left == 0 || phase != "complete" || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = quay::log_entries(&world.redis.url(), &build.uuid).await;
    assert_eq!(phase, "complete", "{log:#?}\n{}", serve.log_text());
    assert_eq!(left, 0, "the queue item is gone");
    assert_eq!(messages(&log, "phase"), common::COMPLETE_RUN, "{log:#?}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_started_in_quay_runs_to_complete_on_quays_rows() {
    let world = QuayWorld::start().await;
    let build = world
        .upload("FROM {server}/base\nRUN echo built-in-quay-mode\n")
        .await;
    let dir = tempfile::tempdir().expect("dir");
    let serve = world.serve(dir.path()).await;
    let log = assert_completes(&world, &build, &serve).await;
    let steps = messages(&log, "command");
    assert_eq!(steps.len(), 2, "{log:#?}");
    assert!(
        steps[1].starts_with("Step 2/2 : RUN echo built-in-quay-mode"),
        "{steps:?}"
    );
    assert!(
        log.iter().all(|e| e["data"]["datetime"].is_string()),
        "{log:#?}"
    );
    let history = world.registry.image_config("acme/web", "v1").await["history"].to_string();
    assert!(history.contains("echo built-in-quay-mode"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_in_quay_stops_the_worker() {
    let world = QuayWorld::start().await;
    let build = world.upload("FROM {server}/base\nRUN sleep 30\n").await;
    let dir = tempfile::tempdir().expect("dir");
    let serve = world.serve(dir.path()).await;
    wait_phase(
        &world.pool,
        &build.uuid,
        &["building"],
        Duration::from_secs(120),
    )
    .await;
    assert!(
        !common::workers_of(&build.uuid).is_empty(),
        "a worker runs the build"
    );

    // What Quay's web tier does (section 12.4): the queue item deleted, the phase set.
    sqlx::query("DELETE FROM queueitem WHERE id = $1")
        .bind(build.queue_item_id)
        .execute(&world.pool)
        .await
        .expect("delete");
    sqlx::query(
        "UPDATE repositorybuild SET phase = 'cancelled' WHERE uuid = $1 AND phase = 'building'",
    )
    .bind(&build.uuid)
    .execute(&world.pool)
    .await
    .expect("cancel");

    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::workers_of(&build.uuid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the worker still runs:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let phase: String = sqlx::query_scalar("SELECT phase FROM repositorybuild WHERE uuid = $1")
        .bind(&build.uuid)
        .fetch_one(&world.pool)
        .await
        .expect("phase");
    assert_eq!(phase, "cancelled");
    // The worker may give up by itself first (its lines and phases are refused once the
    // build is cancelled); the manager ends the job either way, freeing its slot.
    while !serve.log_text().contains("build cancelled elsewhere") {
        assert!(
            Instant::now() < deadline,
            "the job was not ended:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The worker reports (`report.jsonl`) the scripted workers of a manager in `dir` wrote.
fn reports(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("report.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The most scripted workers alive at once (an exit at the same millisecond counts first).
fn peak_workers(reports: &[serde_json::Value]) -> i32 {
    // Each worker from its start to its exit; one the manager stopped (killed once its
    // build ended, so it wrote no `exiting`) to its last report.
    let mut lives: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    for r in reports {
        let (Some(pid), Some(at)) = (r["pid"].as_u64(), r["at"].as_u64()) else {
            continue;
        };
        let life = lives.entry(pid).or_insert((at, at));
        life.0 = life.0.min(at);
        life.1 = life.1.max(at);
    }
    let mut edges: Vec<(u64, i32)> = (lives.values())
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // An exit and a start at the same millisecond: the exit first.
    edges.sort();
    let (mut alive, mut peak) = (0, 0);
    for (_, delta) in edges {
        alive += delta;
        peak = peak.max(alive);
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_on_one_quay_database_run_each_build_once_within_the_cap() {
    let (url, pool) = quay::database().await;
    let redis = RedisServer::start().await;
    let keys = tempfile::tempdir().expect("dir");
    let signing_key = keys.path().join("signing-key.pem");
    let pair = buildman_manager::KeyPair::generate().expect("a key pair");
    std::fs::write(&signing_key, pair.private_pem).expect("signing key");
    // Both managers share Quay's database, one Redis orchestrator and the signing key.
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let mut managers = Vec::new();
    for (n, dir) in dirs.iter().enumerate() {
        let config = format!(
            "{}BUILDMAN_JWT_SIGNING_KEY: {{KID: k1, PRIVATE_KEY_PATH: {}}}\n\
             BUILD_MANAGER:\n- ephemeral\n- ALLOWED_WORKER_COUNT: 2\n  ORCHESTRATOR_PREFIX: buildman/quay/\n  \
             ORCHESTRATOR: {{REDIS_HOST: 127.0.0.1, REDIS_PORT: {}}}\n  EXECUTORS:\n{}",
            quay_keys(&url, redis.port(), "quay.test"),
            signing_key.display(),
            redis.port(),
            common::test_worker_script(dir.path(), "TEST_WORKER_BUILD_MS=300")
        );
        managers.push(common::Serve::start(dir.path(), &format!("m{n}"), &config).await);
    }
    // Quay's web tier starts builds while both managers poll.
    let cipher = FieldCipher::from_config(SECRET).expect("key");
    let mut builds = Vec::new();
    for repository in ["a", "b", "c"] {
        quay::repository(&pool, "acme", repository).await;
        for _ in 0..2 {
            let request = quay::BuildRequest {
                namespace: "acme".into(),
                repository: repository.into(),
                job_config: serde_json::json!({"docker_tags": ["latest"], "context": "/", "build_subdir": "/Dockerfile"}),
                resource_key: Some(buildman_testkit::unique()),
                display_name: "abcdef0".into(),
                ..quay::BuildRequest::default()
            };
            builds.push(
                quay::start_build(&pool, &request, |c| cipher.encrypt(c).expect("short")).await,
            );
        }
    }
    for build in &builds {
        let phase = wait_phase(
            &pool,
            &build.uuid,
            &["complete", "error", "internalerror"],
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(phase, "complete", "{}", build.uuid);
    }

    let all: Vec<serde_json::Value> = dirs.iter().flat_map(|d| reports(d.path())).collect();
    for build in &builds {
        let runs = (all.iter())
            .filter(|r| r["event"] == "started" && r["build_uuid"] == build.uuid.as_str())
            .count();
        assert_eq!(runs, 1, "build {} ran {runs} times", build.uuid);
        let scheduled = (buildman_testkit::quay::log_entries(&redis.url(), &build.uuid)
            .await
            .iter())
        .filter(|e| e["type"] == "phase" && e["message"] == "build-scheduled")
        .count();
        assert_eq!(scheduled, 1, "build {}", build.uuid);
    }
    assert!(
        peak_workers(&all) <= 2,
        "ALLOWED_WORKER_COUNT 2 over both managers: {all:#?}"
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queueitem")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "every queue item is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_on_s3_storage_is_fetched_through_a_presigned_url() {
    use buildman_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
    let world = QuayWorld::start().await;
    let s3 = S3Server::start().await;
    let build = world
        .upload("FROM {server}/base\nRUN echo built-from-s3\n")
        .await;
    // The front has the archive; S3 gets the same bytes at Quay's storage path.
    let file_id: String =
        sqlx::query_scalar("SELECT resource_key FROM repositorybuild WHERE uuid = $1")
            .bind(&build.uuid)
            .fetch_one(&world.pool)
            .await
            .expect("resource key");
    let dockerfile = format!("FROM {}/base\nRUN echo built-from-s3\n", world.front.addr);
    let archive = common::tar_gz(&[("Dockerfile", dockerfile.as_bytes())], &[]);
    world.front.upload(&file_id, Vec::new());
    s3.client()
        .put_object()
        .bucket(&s3.bucket)
        .key(format!("registry/userfiles/{file_id}"))
        .body(archive.into())
        .send()
        .await
        .expect("upload");
    let storage = format!(
        "[S3Storage, {{s3_bucket: {}, storage_path: /registry, s3_access_key: {ACCESS_KEY}, s3_secret_key: {SECRET_KEY}, endpoint_url: '{}'}}]",
        s3.bucket,
        s3.endpoint()
    );
    let dir = tempfile::tempdir().expect("dir");
    let serve = world.serve_with_storage(dir.path(), &storage).await;
    assert_completes(&world, &build, &serve).await;
    let history = world.registry.image_config("acme/web", "v1").await["history"].to_string();
    assert!(history.contains("echo built-from-s3"), "{history}");
}
