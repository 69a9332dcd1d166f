//! A measurement, not a check (the machine is shared and noisy): submit → worker process
//! started, over 20 builds, one at a time. Run with
//! `cargo test --release -p buildman --test latency -- --ignored --nocapture`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it on purpose"]
async fn submit_to_worker_started_latency() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "happy",
        fast_timings(),
    )
    .await;
    let mut samples = Vec::new();
    for _ in 0..20 {
        let file_id = s.upload(b"FROM scratch\n").await;
        let submitted = now_ms();
        let view: serde_json::Value = s
            .req(
                reqwest::Method::POST,
                &buildman_api::paths::builds("demo", "latency"),
            )
            .json(&buildman_api::CreateBuild::uploaded(file_id))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = view["id"].as_str().unwrap().to_string();
        let started = s
            .wait_report(
                |r| r["event"] == "started" && r["build_uuid"] == id.as_str(),
                Duration::from_secs(30),
            )
            .await;
        samples.push(started["at"].as_u64().unwrap().saturating_sub(submitted));
        s.wait_phase(&id, &["complete"], Duration::from_secs(30))
            .await;
    }
    samples.sort();
    println!(
        "submit -> worker started over {} builds: min {} ms, median {} ms, p90 {} ms, max {} ms",
        samples.len(),
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10],
        samples[samples.len() - 1]
    );
    s.stop().await;
}
