//! The REST API's refusals: authentication, malformed requests, unknown builds, and the
//! per-namespace queue limit (429). Each answers JSON `{"error": ...}` that says why.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("a JSON error body");
    (
        status,
        body["error"]
            .as_str()
            .expect("an error message")
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_is_wrong() {
    let s = TestServer::start(
        |d| {
            let mut yaml = config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", ""));
            yaml.push_str("BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: 2\n");
            yaml
        },
        "hold-building",
        fast_timings(),
    )
    .await;
    let url = |p: &str| format!("{}{p}", s.base);

    let (code, msg) = error_of(s.http.get(url("/api/v1/build/x")).send().await.unwrap()).await;
    assert_eq!(code, 401);
    assert!(msg.contains("missing API token"), "{msg}");
    let (code, msg) = error_of(
        s.http
            .get(url("/api/v1/build/x"))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, msg.as_str()), (401, "invalid API token"));

    let create = |repo: &str, body: Value| {
        s.req(Method::POST, &format!("/api/v1/repository/{repo}/build/"))
            .json(&body)
            .send()
    };
    let file_id = s.upload(b"FROM scratch\n").await;
    for (repo, body, expected) in [
        (
            "demo/x",
            json!({}),
            "give exactly one of archive_url, file_id and git_url",
        ),
        (
            "demo/x",
            json!({"archive_url": "http://h/a.tar", "file_id": file_id}),
            "give exactly one",
        ),
        (
            "demo/x",
            json!({"archive_url": "file:///etc/passwd"}),
            "must be an http:// or https:// URL",
        ),
        (
            "demo/x",
            json!({"file_id": "f".repeat(64)}),
            "names no uploaded file",
        ),
        (
            "Demo/x",
            json!({"file_id": file_id}),
            "invalid namespace \"Demo\"",
        ),
        (
            "demo/x",
            json!({"file_id": file_id, "dockerfile_path": "../../etc/passwd"}),
            "must stay inside the build context",
        ),
        (
            "demo/x",
            json!({"file_id": file_id, "docker_tags": ["bad tag"]}),
            "invalid tag \"bad tag\"",
        ),
        (
            "demo/x",
            json!({"file_id": file_id, "surprise": 1}),
            "unknown field `surprise`",
        ),
        (
            "demo/x",
            json!({"file_id": file_id, "docker_tags": (0..101).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "101 tags given; a build pushes at most 100 tags",
        ),
        (
            "demo/x",
            json!({"file_id": file_id, "docker_tags": ["a".repeat(10 * 1024)]}),
            "a tag is 10240 characters long; the limit is 128",
        ),
    ] {
        let (code, msg) = error_of(create(repo, body.clone()).await.unwrap()).await;
        assert_eq!(code, 400, "{body}");
        assert!(msg.contains(expected), "{body}: {msg}");
    }
    // 100,000 tags do not even get read: the body is over BUILDMAN_LIMITS.JSON_BODY_BYTES.
    let tags: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    let body = json!({"file_id": file_id, "docker_tags": tags});
    let refused = create("demo/x", body).await.unwrap();
    assert_eq!(
        refused.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the unread body's connection is not reused"
    );
    let (code, msg) = error_of(refused).await;
    assert_eq!(code, 413, "{msg}");
    assert!(msg.contains("BUILDMAN_LIMITS"), "{msg}");
    let (code, _) = error_of(
        s.req(Method::GET, &format!("/api/v1/build/{}", uuid_like()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 404);

    // The namespace limit counts builds still in the queue; another namespace is unaffected.
    s.submit("demo/a", &[]).await;
    s.submit("demo/b", &[]).await;
    let (code, msg) = error_of(create("demo/c", json!({"file_id": file_id})).await.unwrap()).await;
    assert_eq!(code, 429);
    assert!(
        msg.contains("namespace demo already has 2 queued builds"),
        "{msg}"
    );
    s.submit("other/a", &[]).await;

    // An upload id can be used once, and only a well-formed one.
    let resp = s
        .req(Method::PUT, &format!("/api/v1/filedrop/{file_id}"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 409);
    let resp = s
        .req(Method::PUT, "/api/v1/filedrop/..%2Fescape")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 400);
    s.stop().await;
}

fn uuid_like() -> String {
    "123e4567-e89b-12d3-a456-426614174000".to_string()
}

/// Malformed queries and paths are refused with the same JSON errors as the rest (never
/// plain text, never a 500 from the database), and the database file is the owner's only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_and_paths_are_refused_in_json() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-building",
        fast_timings(),
    )
    .await;
    let id = s.submit("demo/x", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, expected) in [
        (
            format!("/api/v1/repository/demo/x/build/{id}/logs?start=-1"),
            "invalid query",
        ),
        (
            "/api/v1/repository/demo/x/build/?limit=-5".to_string(),
            "invalid query",
        ),
        (
            "/api/v1/repository/de%00mo/x/build/".to_string(),
            "invalid namespace",
        ),
        (
            format!("/api/v1/repository/demo/x%00/build/{id}"),
            "invalid repository",
        ),
    ] {
        let (code, msg) = error_of(s.req(Method::GET, &path).send().await.unwrap()).await;
        assert_eq!(code, 400, "{path}: {msg}");
        assert!(msg.contains(expected), "{path}: {msg}");
    }
    let (code, msg) = error_of(
        s.req(Method::POST, "/api/v1/repository/demo/x/build/")
            .json(&json!({"archive_url": "http://h/a\u{0}.tar"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 400);
    assert!(msg.contains("control character"), "{msg}");
    use std::os::unix::fs::PermissionsExt;
    let db = s.dir.path().join("data/buildman.db");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", db.display());
    s.stop().await;
}
