//! What an operator reads off a running manager: `/metrics` after builds that completed,
//! failed, expired and fell back, parsed with the Prometheus project's own text-format
//! parser (Python's prometheus_client, as `.ci/run` installs it); and the retention pass,
//! which deletes what ended builds leave behind and nothing of a running one.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use buildman_api::paths;
use buildman_manager::Timings;
use common::*;

const T: Duration = Duration::from_secs(120);

/// A popen executor named `name` whose test worker plays `scenario` (a script around it,
/// since the scenario is otherwise the same for every worker of a test).
fn scripted(dir: &Path, name: &str, scenario: &str, extra: &str) -> String {
    let script = dir.join(format!("worker-{name}.sh"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\nTEST_WORKER_SCENARIO={scenario} exec {TEST_WORKER}\n"),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    format!(
        "  - EXECUTOR: popen\n    NAME: {name}\n    BUILDER_BINARY_LOCATION: {}\n{extra}",
        script.display()
    )
}

/// One sample: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// `/metrics` at `base`, without a token, parsed by prometheus_client's parser (which fails
/// on anything that is not the text format).
async fn scrape(base: &str) -> Vec<Sample> {
    let response = reqwest::get(format!("{base}{}", paths::METRICS))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    let parser = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("parser");
    assert!(
        out.status.success(),
        "the text does not parse (the parser needs `pip install prometheus_client`, as .ci/run does): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<(String, HashMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser output");
    parsed
        .into_iter()
        .map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// The value of the sample `name` with exactly `labels`; `None` if there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Like [`value`], panicking with the series it has when there is no such sample.
fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| {
        let same: Vec<_> = samples.iter().filter(|s| s.name == name).collect();
        panic!("no {name}{labels:?}; the series of that name: {same:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_builds_that_completed_failed_expired_and_fell_back() {
    let timings = Timings {
        metrics_refresh: Duration::from_millis(100),
        ..fast_timings()
    };
    let s = TestServer::start(
        |d| {
            let executors = [
                // Its worker cannot even start: builds of `fallback` fall back to `local`.
                "  - EXECUTOR: popen\n    NAME: broken\n    BUILDER_BINARY_LOCATION: /nonexistent/worker\n    NAMESPACE_WHITELIST: [fallback]\n    CIRCUIT_BREAKER_THRESHOLD: 1\n    CIRCUIT_BREAKER_COOLDOWN: 3600\n".to_owned(),
                scripted(d, "failing", "fail-build", "    NAMESPACE_WHITELIST: [failing]\n"),
                scripted(
                    d,
                    "silent",
                    "never-register",
                    "    NAMESPACE_WHITELIST: [expiring]\n    SETUP_TIME: 1\n",
                ),
                popen(d, "local", ""),
            ];
            config_yaml("ALLOWED_WORKER_COUNT: 4", &executors.concat())
        },
        "happy",
        timings,
    )
    .await;
    let mut ids = Vec::new();
    for (repo, end) in [
        ("plain/app", "complete"),
        ("fallback/app", "complete"),
        ("failing/app", "error"),
        ("expiring/app", "expired"),
    ] {
        let id = s.submit(repo, &[]).await["id"].as_str().unwrap().to_owned();
        let view = s
            .wait_phase(&id, &["complete", "error", "expired"], T)
            .await;
        assert_eq!(view["phase"], end, "{repo}: {view}");
        ids.push(id);
    }

    // The gauges follow the store on a timer: wait until they show the queue empty.
    let deadline = Instant::now() + T;
    let m = loop {
        let m = scrape(&s.base).await;
        let queue = [("queue_name", "dockerfilebuild")];
        let idle = value(&m, "buildman_builds", &[("phase", "waiting")]) == Some(0.0)
            && value(&m, "quay_queue_items_available", &queue) == Some(0.0)
            && value(&m, "buildman_workers", &[("executor", "silent")]) == Some(0.0);
        if idle {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the gauges never showed the queue empty"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Quay's series, Quay's labels.
    let queue = [("queue_name", "dockerfilebuild")];
    assert_eq!(
        must(&m, "quay_build_fallback_total", &[("executor", "broken")]),
        1.0
    );
    assert_eq!(
        must(&m, "quay_build_jobs_total", &[("success", "true")]),
        2.0
    );
    assert_eq!(
        must(&m, "quay_build_jobs_total", &[("success", "false")]),
        2.0,
        "the error, and the expired build once its last retry was spent"
    );
    let durations = "quay_build_duration_seconds_count";
    let status = |executor, job_status| [("executor", executor), ("job_status", job_status)];
    assert_eq!(must(&m, durations, &status("local", "complete")), 2.0);
    assert_eq!(must(&m, durations, &status("failing", "error")), 1.0);
    assert_eq!(
        must(&m, durations, &status("silent", "expired")),
        3.0,
        "every attempt of the expired build"
    );
    let acks = "quay_build_ack_duration_seconds_count";
    assert_eq!(must(&m, acks, &[("executor", "local")]), 2.0);
    assert_eq!(must(&m, acks, &[("executor", "failing")]), 1.0);
    assert_eq!(
        value(&m, acks, &[("executor", "silent")]),
        None,
        "it never registered"
    );
    let starts = "quay_build_start_duration_seconds_count";
    assert_eq!(
        must(&m, starts, &[("executor", "popen")]),
        6.0,
        "2 + 1 + 3 workers"
    );
    let scheduled = "quay_build_queue_duration_seconds_count";
    assert_eq!(must(&m, scheduled, &[("schedule_success", "True")]), 6.0);
    assert_eq!(must(&m, "quay_queue_item_puts_total", &queue), 4.0);
    let gets = |availability| {
        [
            ("queue_name", "dockerfilebuild"),
            ("availability", availability),
        ]
    };
    assert_eq!(
        must(&m, "quay_queue_item_gets_total", &gets("acquired")),
        6.0
    );
    assert!(must(&m, "quay_queue_item_gets_total", &gets("nonexistant")) >= 1.0);
    for gauge in [
        "quay_queue_items_locked",
        "quay_queue_items_available",
        "quay_queue_items_available_unlocked",
    ] {
        assert_eq!(must(&m, gauge, &queue), 0.0, "{gauge}");
    }

    // buildman's own.
    assert_eq!(must(&m, "buildman_queue_wait_seconds_count", &[]), 4.0);
    assert_eq!(must(&m, "buildman_queue_oldest_waiting_seconds", &[]), 0.0);
    let expiries = "buildman_job_expiries_total";
    assert_eq!(must(&m, expiries, &[("kind", "never_registered")]), 3.0);
    let breaker = "buildman_executor_breaker_open";
    assert_eq!(
        must(&m, breaker, &[("executor", "broken")]),
        1.0,
        "opened by its one failure"
    );
    assert_eq!(must(&m, breaker, &[("executor", "local")]), 0.0);
    assert!(must(&m, "buildman_log_lines_total", &[("outcome", "stored")]) >= 1.0);
    // Four builds, each claimed at least once (the expired one three times).
    assert!(must(&m, "buildman_store_calls_total", &[("call", "claim")]) >= 4.0);
    let grpc = "buildman_grpc_request_duration_seconds_count";
    let call = |method| [("method", method), ("code", "OK")];
    assert_eq!(must(&m, grpc, &call("RegisterBuildJob")), 3.0);
    let http = "buildman_http_request_duration_seconds_count";
    let route = paths::builds("{namespace}", "{repository}");
    let submitted = [
        ("method", "POST"),
        ("route", route.as_str()),
        ("code", "201"),
    ];
    assert_eq!(must(&m, http, &submitted), 4.0);
    assert!(must(&m, "buildman_data_dir_bytes", &[]) > 0.0);

    // No label names a build or a repository.
    for sample in &m {
        for value in sample.labels.values() {
            assert!(
                !ids.iter().any(|id| value.contains(id.as_str())) && !value.contains("/app"),
                "{sample:?}"
            );
        }
    }
}

/// The names of the finished uploads in a data dir.
fn uploads(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("contexts"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_what_ended_builds_leave_and_nothing_of_a_running_one() {
    let timings = Timings {
        retention_every: Duration::from_millis(200),
        ..fast_timings()
    };
    let s = TestServer::start(
        |d| {
            let executors = [
                scripted(
                    d,
                    "held",
                    "hold-building",
                    "    NAMESPACE_WHITELIST: [held]\n",
                ),
                popen(d, "quick", "    NAMESPACE_WHITELIST: [done]\n"),
            ];
            format!(
                "BUILDMAN_BUILD_RETENTION: 1\n{}",
                config_yaml("ALLOWED_WORKER_COUNT: 2", &executors.concat())
            )
        },
        "happy",
        timings,
    )
    .await;
    let data = s.dir.path().join("data");
    let running = s.submit("held/app", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let held_upload = uploads(&data);
    assert_eq!(held_upload.len(), 1);
    s.wait_phase(&running, &["building"], T).await;
    let done = s.submit("done/app", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done_upload: Vec<String> = (uploads(&data).into_iter())
        .filter(|u| !held_upload.contains(u))
        .collect();
    assert_eq!(done_upload.len(), 1);
    s.wait_phase(&done, &["complete"], T).await;

    // The ended build's context goes at the next pass; after BUILDMAN_BUILD_RETENTION the
    // build goes too, with its log.
    let deadline = Instant::now() + T;
    loop {
        let gone = s
            .req(reqwest::Method::GET, &paths::build_by_id(&done))
            .send()
            .await
            .expect("get build")
            .status()
            == 404;
        if gone && uploads(&data) == held_upload {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention left {:?} (build gone: {gone})",
            uploads(&data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The running build keeps its context (its worker can still fetch it) and its record.
    let file = paths::file(&held_upload[0]);
    let fetched = reqwest::get(format!("{}{file}", s.base))
        .await
        .expect("download");
    assert_eq!(fetched.status(), 200);
    assert_eq!(s.build(&running).await["phase"], "building");
    assert!(!s.logs("held/app", &running).await.is_empty());
}
