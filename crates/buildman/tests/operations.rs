//! What an operator relies on when running `buildman serve`: readiness that follows
//! PostgreSQL and Redis while liveness stays up, a drain on SIGTERM that hands a running
//! build back to the queue with its retry, a data dir that refuses a second manager, and
//! JSON log lines a collector can read that never hold a token. (SIGTERM with two managers
//! sharing PostgreSQL and Redis: tests/failover.rs.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use buildman_api::paths;
use buildman_proto as pb;
use buildman_store::Store;
use common::*;
use pb::build_manager_client::BuildManagerClient;
use serde_json::Value;
use tonic::Code;

const T: Duration = Duration::from_secs(120);

/// Serialises the tests that use this binary's PostgreSQL, since one of them stops it
/// (nextest runs each test in a process of its own; `cargo test` runs them on threads).
static POSTGRES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The status and body of `GET base+path`, without a token.
async fn probe(base: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base}{path}")).await.expect("probe");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Polls `path` until it answers `status`; returns the body.
async fn wait_probe(base: &str, path: &str, status: u16) -> String {
    let deadline = Instant::now() + T;
    loop {
        let (got, body) = probe(base, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} answers {got} ({body}), not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_postgres_and_redis_while_liveness_stays_up() {
    let _postgres = POSTGRES.lock().await;
    let mut cluster = Cluster::start().await;
    let s = TestServer::start(
        |d| {
            let executors = popen(d, "local", "");
            format!(
                "{}{}",
                cluster.shared_keys(),
                config_yaml(&cluster.manager_keys(1), &executors)
            )
        },
        "happy",
        fast_timings(),
    )
    .await;
    assert_eq!(probe(&s.base, paths::READYZ).await.0, 200);

    buildman_testkit::postgres::stop_server();
    let why = wait_probe(&s.base, paths::READYZ, 503).await;
    let why: Value = serde_json::from_str(&why).expect("a JSON error");
    assert!(
        why["error"].as_str().unwrap().starts_with("store:"),
        "{why}"
    );
    assert_eq!(probe(&s.base, paths::HEALTHZ).await.0, 200);
    buildman_testkit::postgres::start_server();
    wait_probe(&s.base, paths::READYZ, 200).await;

    cluster.redis.stop().await;
    let why = wait_probe(&s.base, paths::READYZ, 503).await;
    assert!(why.contains("orchestrator:"), "{why}");
    assert_eq!(probe(&s.base, paths::HEALTHZ).await.0, 200);
    cluster.redis.restart().await;
    wait_probe(&s.base, paths::READYZ, 200).await;

    // Back to work after both outages.
    let id = s.submit("demo/after", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = s
        .wait_phase(&id, &["complete", "error", "internalerror"], T)
        .await;
    assert_eq!(view["phase"], "complete", "{view}");
    s.stop().await;
}

/// A popen executor running the test worker as `scenario` (through a script, as a `serve`
/// process passes no test environment), reporting to `dir/report.jsonl`.
fn scripted_executor(dir: &Path, scenario: &str) -> String {
    let script = dir.join(format!("worker-{scenario}.sh"));
    let report = dir.join("report.jsonl");
    let text = format!(
        "#!/bin/sh\nexport TEST_WORKER_SCENARIO={scenario} TEST_WORKER_REPORT={} TEST_WORKER_HEARTBEAT_MS=200\nexec {TEST_WORKER}\n",
        report.display()
    );
    std::fs::write(&script, text).expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    format!(
        "  - EXECUTOR: popen\n    NAME: local\n    BUILDER_BINARY_LOCATION: {}\n",
        script.display()
    )
}

/// A `serve` config on embedded defaults (SQLite in the data dir, the in-memory
/// orchestrator), one worker slot, [`SERVE_API_TOKEN`] and `extra` top-level keys.
fn embedded_config(dir: &Path, scenario: &str, extra: &str) -> String {
    format!(
        "BUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n{extra}{}",
        config_yaml("ALLOWED_WORKER_COUNT: 1", &scripted_executor(dir, scenario))
    )
}

/// The job token the test worker's report says it got for `id`.
fn job_token(dir: &Path, id: &str) -> String {
    let reports = std::fs::read_to_string(dir.join("report.jsonl")).unwrap_or_default();
    let registered = (reports.lines())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["event"] == "registered" && r["build_uuid"] == id);
    let token = registered.and_then(|r| r["job_token"].as_str().map(str::to_string));
    token.expect("the worker reported its registration")
}

/// Sends one log line with `jwt` to `serve`'s worker service; the status it is refused with.
async fn late_line_status(serve: &Serve, jwt: &str) -> tonic::Status {
    let mut client = BuildManagerClient::connect(format!("http://{}", serve.grpc))
        .await
        .expect("connect");
    let line = pb::LogMessageRequest {
        job_jwt: jwt.into(),
        sequence_number: 1000,
        log_message: r#"{"stream": "late\n"}"#.into(),
        phase: "building".into(),
    };
    let stream = tokio_stream::iter([line]);
    let mut replies = client
        .log_message(stream)
        .await
        .expect("stream")
        .into_inner();
    match replies.message().await {
        Err(status) => status,
        Ok(reply) => panic!("a line after the cancel was answered {reply:?}"),
    }
}

/// The pid of the worker the test worker's report says started for `id`.
fn worker_pid(dir: &Path, id: &str) -> Option<u64> {
    let reports = std::fs::read_to_string(dir.join("report.jsonl")).unwrap_or_default();
    reports
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["event"] == "started" && r["build_uuid"] == id)
        .and_then(|r| r["pid"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_running_build_back_with_its_retry_and_it_completes_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let drain = "BUILDMAN_DRAIN_SECONDS: 5\n";
    let config = embedded_config(dir.path(), "hold-building", drain);
    let mut a = Serve::start(dir.path(), "a", &config).await;
    let id = a.submit("demo/drained", b"FROM scratch\n").await;
    a.wait_phase(&id, &["building"]).await;
    let worker = worker_pid(dir.path(), &id).expect("the worker reported its start");

    // Draining: no longer ready, still alive, the build still running.
    a.terminate();
    let why = wait_probe(&a.base, paths::READYZ, 503).await;
    assert!(why.contains("draining"), "{why}");
    assert_eq!(probe(&a.base, paths::HEALTHZ).await.0, 200);
    assert_eq!(a.get(&paths::build_by_id(&id)).await["phase"], "building");
    // The worker holds its build past the drain period: the build goes back to the queue.
    let status = a.wait_exit(T).await;
    assert!(status.success(), "{status}\n{}", a.log_text());
    assert!(
        a.log_text()
            .contains("returned to the queue with their retry"),
        "{}",
        a.log_text()
    );
    wait_gone(worker, T).await;

    // In the store: back in the queue, free to claim, with the retry the claim took.
    let data = dir.path().join("a-data");
    let store = buildman_store::sqlite::SqliteStore::open(&data.join("buildman.db"))
        .await
        .expect("the data dir's database");
    let queued = (store.queue_state(id.parse().unwrap()).await)
        .expect("queue state")
        .expect("still queued");
    assert_eq!(
        queued.retries_remaining,
        buildman_core::queue::QueueRules::default().retries,
        "{queued:?}"
    );
    assert!(queued.available, "{queued:?}");
    drop(store);

    // A restart on the same data dir runs it to the end.
    let config = embedded_config(dir.path(), "happy", drain);
    let b = Serve::start(dir.path(), "a", &config).await;
    // Until it runs again its phase is `internalerror` (with a retry left: not expired).
    let view = b.wait_phase(&id, &["complete", "error"]).await;
    assert_eq!(view["phase"], "complete", "{view}");
    let logs = b.logs("demo/drained", &id).await;
    let scheduled = phases(&logs)
        .iter()
        .filter(|p| *p == "build-scheduled")
        .count();
    assert_eq!(
        scheduled, 2,
        "one attempt before the stop, one after: {logs:?}"
    );
}

/// Every file under `dir` with its bytes, by path relative to it.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                found.insert(name, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_dir_refuses_naming_the_holder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = embedded_config(dir.path(), "hold-building", "");
    let a = Serve::start(dir.path(), "a", &config).await;
    let id = a.submit("demo/held", b"FROM scratch\n").await;
    a.wait_phase(&id, &["building"]).await;
    let data = dir.path().join("a-data");
    // SQLite's files change under the running manager (heartbeats); the rest must not.
    let outside_sqlite = |all: BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        all.into_iter()
            .filter(|(name, _)| !name.starts_with("buildman.db"))
            .collect()
    };
    let names_before: Vec<String> = files(&data).into_keys().collect();
    let before = outside_sqlite(files(&data));

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_buildman"))
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("a.yaml"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("buildman serve");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("in use by another `buildman serve`")
            && stderr.contains(&format!("process {}", a.child.id())),
        "the refusal names the holder: {stderr}"
    );
    assert!(stderr.contains("--data-dir"), "and what to do: {stderr}");
    assert!(String::from_utf8_lossy(&second.stdout).is_empty());

    assert_eq!(files(&data).into_keys().collect::<Vec<_>>(), names_before);
    assert_eq!(outside_sqlite(files(&data)), before);
    // The first manager's build was not taken from it.
    assert_eq!(a.get(&paths::build_by_id(&id)).await["phase"], "building");
    let logs = a.logs("demo/held", &id).await;
    let scheduled = phases(&logs)
        .iter()
        .filter(|p| *p == "build-scheduled")
        .count();
    assert_eq!(scheduled, 1, "{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_name_the_build_and_hold_no_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The repository names the test worker's scenario: one runs through, one holds.
    let config = embedded_config(dir.path(), "by-repository", "");
    let a = Serve::start_with_env(
        dir.path(),
        "a",
        &config,
        &[
            ("BUILDMAN_LOG_FORMAT", "json"),
            ("RUST_LOG", "debug,sqlx=warn,h2=warn,hyper=warn,tower=warn"),
        ],
    )
    .await;
    let id = a.submit("demo/happy", b"FROM scratch\n").await;
    let view = a
        .wait_phase(&id, &["complete", "error", "internalerror"])
        .await;
    assert_eq!(view["phase"], "complete", "{view}");
    // One more: a build cancelled while its worker runs.
    let held = a.submit("demo/hold-building", b"FROM scratch\n").await;
    a.wait_phase(&held, &["building"]).await;
    let cancel = a
        .request(
            reqwest::Method::DELETE,
            &paths::build("demo", "hold-building", &held),
        )
        .send()
        .await
        .expect("cancel");
    assert!(cancel.status().is_success(), "{}", cancel.status());
    a.wait_phase(&held, &["cancelled"]).await;
    // A line the worker sent as the cancel landed: refused, and no error of the manager's.
    let late = late_line_status(&a, &job_token(dir.path(), &held)).await;
    assert!(
        matches!(
            late.code(),
            Code::FailedPrecondition | Code::Unauthenticated
        ),
        "{late:?}"
    );

    let text = a.log_text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "the manager logged errors: {errors:#?}");
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
    // Every line about a build names it in `build_id`, which a collector can index.
    for build in [&id, &held] {
        let about: Vec<&Value> = lines
            .iter()
            .filter(|l| l.to_string().contains(build.as_str()))
            .collect();
        assert!(about.len() >= 2, "too few lines about {build}:\n{text}");
        for line in about {
            assert_eq!(line["build_id"], build.as_str(), "{line}");
        }
    }

    // No token: the API token, the admin token, the workers' JWTs, the signing key.
    let admin = std::fs::read_to_string(dir.path().join("a-data/admin-token")).unwrap_or_default();
    for secret in [SERVE_API_TOKEN, admin.trim(), "eyJ", "PRIVATE KEY"] {
        if !secret.is_empty() {
            assert!(!text.contains(secret), "the log holds {secret:?}:\n{text}");
        }
    }
}
