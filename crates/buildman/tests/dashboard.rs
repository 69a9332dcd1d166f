//! The web dashboard in a real browser: `tests/web/dashboard.mjs` drives headless Chromium
//! (Debian's `chromium`, through the npm package `playwright-core`; `.ci/run` installs
//! both) against a manager started here, whose scripted workers play the scenario their
//! repository is named after. Screenshots and measurements land in
//! `target/tmp/dashboard/`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_follows_cancels_and_explains_builds_in_a_browser() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    assert!(
        Path::new("/usr/bin/chromium").exists()
            && web.join("node_modules/playwright-core").exists(),
        "the browser test needs Debian's chromium and playwright-core: \
         `apt-get install chromium && npm ci --prefix crates/buildman/tests/web` (.ci/run does)"
    );
    let go = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_with_env(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 2", &popen(d, "local", "")),
        "by-repository",
        fast_timings(),
        &[
            ("TEST_WORKER_LINES", "20"),
            ("TEST_WORKER_LINE_MS", "100"),
            (
                "TEST_WORKER_LINES_AFTER",
                go.path().to_str().expect("utf-8"),
            ),
        ],
    )
    .await;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let node = tokio::process::Command::new("node")
        .arg(web.join("dashboard.mjs"))
        .current_dir(&web)
        .env("BASE", &s.base)
        .env("TOKEN", &s.token)
        .env("GO_DIR", go.path())
        .env("OUT", &out)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), node)
        .await
        .expect("the browser test ends within 5 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // What the browser saw is what the API says.
    let builds: serde_json::Value = s
        .req(reqwest::Method::GET, "/api/v1/builds?namespace=web")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let phases: Vec<(&str, &str)> = builds["builds"]
        .as_array()
        .expect("builds")
        .iter()
        .map(|b| {
            (
                b["repository"]["name"].as_str().unwrap_or_default(),
                b["phase"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [("fail-building", "error"), ("hold-building", "cancelled")]
    );
    for shot in [
        "list.png",
        "build.png",
        "build-failed.png",
        "list-400px.png",
    ] {
        let bytes = std::fs::read(out.join(shot)).expect("screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
    s.stop().await;
}
