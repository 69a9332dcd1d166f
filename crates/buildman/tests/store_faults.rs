//! The SQLite store on a disk that fills and then frees again: the manager never wedges.
//!
//! The full disk is played without mounting anything: `buildman serve` runs with SIGXFSZ
//! ignored (an ignored signal survives exec), so when the test lowers its RLIMIT_FSIZE with
//! `prlimit`, every write past the limit fails with EFBIG, as on a full disk, instead of
//! killing it; raising the limit again frees the disk.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// Sets the soft file size limit of process `pid` (`unlimited` or bytes).
fn set_file_size_limit(pid: u32, limit: &str) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={limit}:"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit --fsize={limit} failed");
}

/// Polls `/readyz` until its status is `status`.
async fn wait_ready(serve: &Serve, status: u16) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let response = serve.request(reqwest::Method::GET, "/readyz").send().await;
        if let Ok(r) = response
            && r.status() == status
        {
            return r.json().await.unwrap_or(Value::Null);
        }
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_and_frees_does_not_wedge_the_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "BUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n{}",
        config_yaml(
            "ALLOWED_WORKER_COUNT: 2",
            &test_worker_script(
                dir.path(),
                "TEST_WORKER_SCENARIO=happy TEST_WORKER_BUILD_MS=3000 TEST_WORKER_HEARTBEAT_MS=200"
            )
        )
    );
    let ignore_xfsz = ["sh", "-c", "trap '' XFSZ; exec \"$0\" \"$@\""];
    let serve = Serve::start_under(dir.path(), "sqlite", &config, &ignore_xfsz).await;
    let pid = serve.child.id();
    let context = tar_gz(&[("Dockerfile", b"FROM scratch\n")], &[]);
    wait_ready(&serve, 200).await;

    // A build is running when the disk fills.
    let running = serve.submit("demo/disk", &context).await;
    serve.wait_phase(&running, &["building"]).await;
    set_file_size_limit(pid, "0");
    let why = wait_ready(&serve, 503).await;
    println!("unready while the disk is full: {why}");

    // A build submitted now is refused with an error, not accepted into a store that
    // cannot keep it.
    let http = buildman_testkit::http_client();
    let submitted = http
        .post(format!("{}/api/v1/repository/demo/disk/build/", serve.base))
        .bearer_auth(SERVE_API_TOKEN)
        .json(&serde_json::json!({ "archive_url": "https://example.com/c.tar.gz" }))
        .send()
        .await
        .unwrap();
    let status = submitted.status();
    let body: Value = submitted.json().await.unwrap();
    assert!(status.is_server_error(), "{status}: {body}");
    assert!(body["error"].is_string(), "{body}");

    // The disk frees: the manager becomes ready again by itself, the build that was running
    // ends, and a new one completes.
    set_file_size_limit(pid, "unlimited");
    wait_ready(&serve, 200).await;
    let ended = serve
        .wait_phase(&running, &["complete", "error", "internalerror"])
        .await;
    println!(
        "the build running during the fault ended {}",
        ended["phase"]
    );
    let after = serve.submit("demo/disk", &context).await;
    serve.wait_phase(&after, &["complete"]).await;
    if ended["phase"] != "complete" {
        // An attempt lost to the fault is retried: the build completes.
        serve.wait_phase(&running, &["complete"]).await;
    }

    // Nothing half-written: each log ends with its build's final phase, and the store
    // lists no build stuck in between.
    for id in [&running, &after] {
        let logs = serve.logs("demo/disk", id).await;
        let last = phases(&logs).last().cloned();
        assert_eq!(last.as_deref(), Some("complete"), "{id}: {logs:?}");
    }
    let list = serve.get("/api/v1/repository/demo/disk/build/").await;
    for build in list["builds"].as_array().unwrap() {
        assert_eq!(build["phase"], "complete", "{build}");
    }
    assert!(
        !serve.log_text().contains("non-zero transaction depth"),
        "{}",
        serve.log_text()
    );
}
