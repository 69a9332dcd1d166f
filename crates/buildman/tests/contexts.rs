//! Uploaded contexts shared by several managers: two `buildman serve` processes on one
//! PostgreSQL, one Redis, one signing key and one S3 bucket (moto on loopback). The manager
//! that took the upload is killed (SIGKILL) once its attempt is scheduled, its worker gone
//! with it; the other reruns the build with the real worker (`buildman worker`, buildah),
//! which downloads the context from the bucket. Also: `serve` warns when a shared database
//! meets contexts kept in the data dir.
//! Needs buildah, runc, PostgreSQL, Redis and moto_server (`.ci/run` installs them).

mod common;

use std::path::Path;

use buildman_api::paths;
use buildman_testkit::s3::{self, S3Server};
use common::*;

const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");
/// What the warning says (the whole line is in `serve/backends.rs`).
const WARNING: &str = "with several managers configure BUILDMAN_CONTEXT_STORAGE";

/// The context storage of every manager: the bucket, under a prefix.
fn s3_storage(server: &S3Server) -> String {
    format!(
        "BUILDMAN_CONTEXT_STORAGE: {{KIND: s3, BUCKET: {}, REGION: {}, ENDPOINT_URL: '{}', \
         ACCESS_KEY: {}, SECRET_KEY: {}, PREFIX: ctx/, PATH_STYLE: true}}\n",
        server.bucket,
        s3::REGION,
        server.endpoint(),
        s3::ACCESS_KEY,
        s3::SECRET_KEY,
    )
}

/// A program at `dir/name` running `body`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    path.display().to_string()
}

/// The files in a manager's `<data dir>/contexts` (its local store, or its S3 spool).
fn local_contexts(data_dir: &Path) -> Vec<String> {
    match std::fs::read_dir(data_dir.join("contexts")) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_uploaded_to_a_killed_manager_builds_on_another_from_s3() {
    let cluster = Cluster::start().await;
    let bucket = S3Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let shared = format!(
        "{}{}BUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n",
        cluster.shared_keys(),
        s3_storage(&bucket)
    );
    // A's worker dies at once with its host: the attempt never registers, and A is gone
    // before its SETUP_TIME passes, so B is the one that sees the deadline and reruns it.
    let lost = script(dir.path(), "lost-worker", "exit 0");
    let a_executor = format!(
        "  - EXECUTOR: popen\n    NAME: lost\n    BUILDER_BINARY_LOCATION: {lost}\n    SETUP_TIME: 10\n"
    );
    let real = script(
        dir.path(),
        "real-worker",
        &format!("export TMPDIR={}\nexec {BUILDMAN} worker", work.display()),
    );
    let b_executor =
        format!("  - EXECUTOR: popen\n    NAME: real\n    BUILDER_BINARY_LOCATION: {real}\n");
    // Two slots: B need not wait for the slot of A's attempt, which only lapses after
    // A fails to take its hand-over.
    let manager_keys = cluster.manager_keys(2);
    let a_config = format!("{shared}{}", config_yaml(&manager_keys, &a_executor));
    let b_config = format!("{shared}{}", config_yaml(&manager_keys, &b_executor));

    let mut a = Serve::start(dir.path(), "a", &a_config).await;
    let context = tar_gz(
        &[
            ("Dockerfile", b"FROM scratch\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", b"uploaded to a manager that died\n"),
        ],
        &[],
    );
    let id = a.submit("demo/contexts", &context).await;
    let keys = bucket.keys().await;
    assert_eq!(keys.len(), 1, "the upload is one object: {keys:?}");
    let file_id = keys[0]
        .strip_prefix("ctx/")
        .expect("under PREFIX")
        .to_owned();
    a.wait_phase(&id, &["build-scheduled"]).await;
    a.kill();
    assert_eq!(
        local_contexts(&dir.path().join("a-data")),
        Vec::<String>::new(),
        "nothing of the upload stayed on the manager that took it"
    );

    let b = Serve::start(dir.path(), "b", &b_config).await;
    // B serves an upload it never received (proxied from the bucket).
    let downloaded = (b
        .request(reqwest::Method::GET, &paths::file(&file_id))
        .send())
    .await
    .expect("download through B");
    assert_eq!(downloaded.status(), 200);
    assert!(downloaded.bytes().await.expect("body") == context);

    let view = b.wait_phase(&id, &["complete", "error", "expired"]).await;
    let logs = b.logs("demo/contexts", &id).await;
    assert_eq!(view["phase"], "complete", "{view}\n{logs:?}");
    // A's attempt ended (B saw its deadline or A's death, whichever came first), then
    // B's whole run.
    let phases = phases(&logs);
    assert!(
        phases.ends_with(&COMPLETE_RUN.map(String::from)),
        "B's whole run: {phases:?}"
    );
    assert!(
        logs.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("attempt 1 ended: "))),
        "A's attempt ended: {logs:?}"
    );
    assert_eq!(
        bucket.keys().await,
        keys,
        "the context is still in the bucket"
    );
    for (name, log) in [("a", a.log_text()), ("b", b.log_text())] {
        assert!(
            !log.contains(WARNING),
            "{name} warned with S3 storage:\n{log}"
        );
    }
}

#[tokio::test]
async fn serve_warns_when_a_shared_database_meets_a_local_context_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let executors = popen(dir.path(), "w", "");
    let manager = config_yaml("ALLOWED_WORKER_COUNT: 1", &executors);

    let database = buildman_testkit::postgres::fresh_database().await;
    let shared = format!("BUILDMAN_DATABASE_URL: {database}\n{manager}");
    let warned = Serve::start(dir.path(), "postgres", &shared).await;
    let log = warned.log_text();
    assert!(log.contains(WARNING), "no warning in:\n{log}");
    assert!(log.contains("WARN"), "logged as a warning:\n{log}");

    let alone = Serve::start(dir.path(), "sqlite", &manager).await;
    let log = alone.log_text();
    assert!(
        !log.contains(WARNING),
        "SQLite is this manager's own:\n{log}"
    );
}
