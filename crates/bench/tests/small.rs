//! The load generator at small scale against a manager started in-process with the bench
//! executor: each scenario reports no errors, and what it counted matches what the REST
//! API shows. No timing is asserted: the machine is shared and the build is unoptimised.

use std::time::Duration;

use buildman::serve::{self, Running, ServeOptions};
use buildman_bench::api::Api;
use buildman_bench::callback::Callbacks;
use buildman_bench::connected::ConnectedOptions;
use buildman_bench::logs::LogsOptions;
use buildman_bench::schedule::ScheduleOptions;
use buildman_bench::{Env, Report};
use buildman_core::config::Config;

/// A manager on free loopback ports whose bench executor calls back `callbacks`.
async fn manager(callbacks: &Callbacks, workers: u32) -> (Running, tempfile::TempDir, String) {
    // What the binaries do at start: reqwest is built without a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = format!(
        "FEATURE_BUILD_SUPPORT: true\nSERVER_HOSTNAME: bench.test\nBUILD_MANAGER:\n- ephemeral\n\
         - ALLOWED_WORKER_COUNT: {workers}\n  EXECUTORS:\n  - EXECUTOR: bench\n    NAME: bench\n    \
         SETUP_TIME: 120\n    BENCH_CALLBACK_URL: {}\n",
        callbacks.url
    );
    let config = Config::parse(&yaml).expect("valid config").config;
    let mut options = ServeOptions::from_config(config).expect("options");
    options.data_dir = dir.path().join("data");
    options.http_listen = "127.0.0.1:0".parse().unwrap();
    options.grpc_listen = "127.0.0.1:0".parse().unwrap();
    options.allow_bench_executor = true;
    let running = serve::start(options).await.expect("manager starts");
    let token = std::fs::read_to_string(dir.path().join("data/admin-token"))
        .expect("admin token")
        .trim()
        .to_string();
    (running, dir, token)
}

/// Runs `scenario` against a fresh manager and returns its report.
async fn run<F, Fut>(workers: u32, scenario: F) -> Report
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = (Env, anyhow::Result<Report>)>,
{
    let callbacks = Callbacks::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("callback server");
    let (running, _dir, token) = manager(&callbacks, workers).await;
    let api = Api::new(&format!("http://{}", running.http_addr), &token).expect("client");
    // A few workers per connection, so the test also covers several connections.
    let env = Env::new(api, None, callbacks, 10);
    let (_env, report) = tokio::time::timeout(Duration::from_secs(300), scenario(env))
        .await
        .expect("the scenario ends by itself");
    running.stop().await;
    let report = report.expect("the scenario runs");
    println!("{}", report.render());
    report
}

fn count(report: &Report, key: &str) -> u64 {
    report.results[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {}", report.results))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_small() {
    let options = ScheduleOptions {
        builds: 60,
        idle_builds: 5,
        repositories: 10,
        submitters: 8,
        lines_per_build: 2,
        timeout_s: 240,
    };
    let report = run(20, |env| async move {
        let r = buildman_bench::schedule::run(&env, &options).await;
        (env, r)
    })
    .await;
    assert_eq!(report.errors.total, 0, "{:?}", report.errors);
    assert!(report.verification.ok, "{:?}", report.verification);
    assert_eq!(count(&report, "burst_submitted"), 60);
    assert_eq!(count(&report, "burst_completed"), 60);
    assert_eq!(count(&report, "stops"), 65);
    assert_eq!(report.results["idle"]["submit_to_start"]["count"], 5);
    assert_eq!(report.results["burst"]["submit_to_registered"]["count"], 60);
    // Every build was claimed and completed through the store, and the report says so.
    let calls = &report.results["store_calls_per_build"];
    for call in ["claim", "set_phase", "complete_item"] {
        let per_build = calls[call].as_f64().unwrap_or_default();
        assert!(per_build >= 1.0, "{call}: {per_build} per build in {calls}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_small() {
    let options = ConnectedOptions {
        workers: 50,
        duration_s: 3,
        log_every_s: 1.0,
        settle_s: 0,
        submitters: 8,
        timeout_s: 240,
    };
    let report = run(50, |env| async move {
        let r = buildman_bench::connected::run(&env, &options).await;
        (env, r)
    })
    .await;
    assert_eq!(report.errors.total, 0, "{:?}", report.errors);
    // The verification compares each build's stored lines with its worker's acks.
    assert!(report.verification.ok, "{:?}", report.verification);
    assert_eq!(count(&report, "workers_connected"), 50);
    assert!(count(&report, "lines_acked") >= 50, "{}", report.results);
    assert!(report.results["heartbeat"]["count"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_small() {
    let options = LogsOptions {
        streams: 5,
        duration_s: 0,
        lines: Some(200),
        line_bytes: 80,
        timeout_s: 240,
    };
    let report = run(5, |env| async move {
        let r = buildman_bench::logs::run(&env, &options).await;
        (env, r)
    })
    .await;
    assert_eq!(report.errors.total, 0, "{:?}", report.errors);
    assert!(report.verification.ok, "{:?}", report.verification);
    assert_eq!(count(&report, "lines_acked"), 1000);
    assert_eq!(count(&report, "lines_stored"), 1000);
    assert_eq!(count(&report, "streams"), 5);
}
