//! A build's life through the real interfaces: REST to submit and observe, the local
//! executor starting the scripted test worker, the worker driving the gRPC protocol.

mod common;

use std::time::Duration;

use buildman_api::{ListQuery, LogsQuery, paths};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn one_worker(dir: &std::path::Path) -> String {
    config_yaml(
        "ALLOWED_WORKER_COUNT: 1",
        &popen(dir, "local", "    SETUP_TIME: 30\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_from_submit_to_complete() {
    let s = TestServer::start(one_worker, "happy", fast_timings()).await;
    let view = s.submit("demo/hello", &["v1", "latest"]).await;
    assert_eq!(view["phase"], "waiting");
    assert_eq!(
        view["repository"],
        serde_json::json!({"namespace": "demo", "name": "hello"})
    );
    let id = view["id"].as_str().unwrap().to_string();

    let done = s
        .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
        .await;
    assert_eq!(done["phase"], "complete", "{done}");

    // What the worker was handed: the uploaded context, the repository and the tags.
    let registered = s.wait_report(|r| r["event"] == "registered", T).await;
    assert_eq!(registered["repository"], "demo/hello");
    assert_eq!(registered["tags"], serde_json::json!(["v1", "latest"]));
    assert_eq!(registered["dockerfile_path"], "/Dockerfile");
    let package_url = registered["package_url"].as_str().unwrap();
    let context = reqwest::get(package_url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        &context[..],
        b"FROM scratch\nCOPY hello /\n",
        "the worker fetches the upload without an API token"
    );
    let started = s.wait_report(|r| r["event"] == "started", T).await;
    assert_eq!(started["build_uuid"], id.as_str());

    // The log: every phase in order, with data; step lines as commands; output kept.
    let logs = s.logs("demo/hello", &id).await;
    assert_eq!(
        phases(&logs),
        [
            "build-scheduled",
            "unpacking",
            "pulling",
            "building",
            "pushing",
            "complete"
        ]
    );
    let pulling = logs
        .iter()
        .find(|e| e["type"] == "phase" && e["message"] == "pulling")
        .unwrap();
    assert_eq!(pulling["data"]["base_image"], "library/alpine");
    assert!(pulling["data"]["datetime"].is_string());
    let commands: Vec<&str> = logs
        .iter()
        .filter(|e| e["type"] == "command")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        ["Step 1/2 : FROM scratch\n", "Step 2/2 : COPY hello /\n"]
    );
    assert!(logs.iter().any(|e| e["message"] == "Successfully built 0123456789ab\n" && e.get("type").is_none()));

    // Paging from an index returns the tail with the total.
    let page: Value = s
        .req(
            reqwest::Method::GET,
            &paths::build_logs("demo", "hello", &id),
        )
        .query(&LogsQuery {
            start: Some(3),
            follow: false,
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["start"], 3);
    assert_eq!(page["total"], logs.len());
    assert_eq!(page["logs"].as_array().unwrap()[..], logs[3..]);

    // The build left the queue, and its worker is gone.
    s.wait_queue(&id, Option::is_none, T).await;
    wait_gone(started["pid"].as_u64().unwrap(), T).await;

    // The status view and the repository listing agree.
    let status: Value = s
        .req(
            reqwest::Method::GET,
            &paths::build_status("demo", "hello", &id),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["phase"], "complete");
    let list: Value = s
        .req(reqwest::Method::GET, &paths::builds("demo", "hello"))
        .query(&ListQuery {
            limit: Some(10),
            since: None,
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["builds"][0]["id"], id.as_str());
    s.stop().await;
}
