//! BUILDMAN_LIMITS through the real interfaces: a body over its bound is refused before it is
//! read, a log page stops at its byte bound and pages on, an API token over its rate gets
//! 429 and then gets through again, and idle connections over the connection bound neither
//! cost the manager descriptors nor stop `/healthz` and a worker's Ping for longer than the
//! idle timeout.

mod common;

use std::time::{Duration, Instant};

use buildman_proto as pb;
use common::*;
use pb::build_manager_client::BuildManagerClient;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

const T: Duration = Duration::from_secs(60);

/// A manager whose config starts with `limits` (a BUILDMAN_LIMITS line).
async fn server(limits: &str, scenario: &str) -> TestServer {
    let limits = limits.to_string();
    TestServer::start(
        move |d| {
            format!(
                "{limits}\n{}",
                config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", ""))
            )
        },
        scenario,
        fast_timings(),
    )
    .await
}

/// Sends `head` (and no more) on a new connection and reads the answer until the manager
/// closes it or `T` passes.
async fn raw_request(base: &str, head: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = find(&answer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
            let length = (head.lines())
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|l| l.trim().parse::<usize>().ok());
            if length.is_some_and(|n| answer.len() >= end + 4 + n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The JSON body of a raw answer.
fn json_body(answer: &str) -> Value {
    let body = &answer[answer.find("\r\n\r\n").expect("a complete answer") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_their_bound_are_refused_before_they_are_read() {
    let s = server(
        "BUILDMAN_LIMITS: {JSON_BODY_BYTES: 1024, UPLOAD_BYTES: 4096}",
        "complete",
    )
    .await;
    let path = "/api/v1/repository/demo/app/build/";

    // 1 GB announced, a few bytes sent: the answer comes without waiting for the rest.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{{\"archive_url\": \"",
        s.token
    );
    let answer = raw_request(&s.base, &head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let error = json_body(&answer)["error"].as_str().unwrap().to_string();
    assert!(error.contains("1024 bytes"), "the bound is named: {error}");

    // Without a Content-Length (chunked), the body is cut off at the bound.
    let big = json!({ "archive_url": "https://example.com/c.tar.gz", "tags": ["x".repeat(4000)] })
        .to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        s.token,
        big.len()
    );
    let answer = raw_request(&s.base, &head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(json_body(&answer)["error"].is_string());

    // An upload over UPLOAD_BYTES is refused by its Content-Length, before it is read.
    let drop: Value = s
        .req(reqwest::Method::POST, "/api/v1/filedrop/")
        .json(&json!({ "mimeType": "application/gzip" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = drop["url"].as_str().unwrap();
    let upload_path = &url[url.find("/api/").unwrap()..];
    let head = format!(
        "PUT {upload_path} HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 1000000000\r\n\r\nxx",
        s.token
    );
    let answer = raw_request(&s.base, &head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        json_body(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("4096 bytes")
    );

    // A small body still goes through.
    let view = s.submit("demo/app", &["latest"]).await;
    assert!(view["id"].is_string(), "{view}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_page_is_bounded_by_bytes_and_pages_on() {
    let s = server(
        "BUILDMAN_LIMITS: {LOG_PAGE_BYTES: 2500000}",
        "hold-registered",
    )
    .await;
    let id = s.submit("demo/biglog", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = s.wait_report(|r| r["event"] == "registered", T).await;
    let job = reg["job_token"].as_str().unwrap().to_string();
    s.wait_phase(&id, &["unpacking"], T).await;

    // Five lines of 1 MiB from the worker.
    let mut client = BuildManagerClient::connect(s.grpc.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = (client.log_message(ReceiverStream::new(rx)).await)
        .unwrap()
        .into_inner();
    for seq in 1..=5 {
        let line = json!({ "stream": format!("{seq}{}", "y".repeat(1 << 20)) }).to_string();
        let request = pb::LogMessageRequest {
            job_jwt: job.clone(),
            sequence_number: seq,
            log_message: line,
            phase: "building".into(),
        };
        tx.send(request).await.unwrap();
        assert!(replies.message().await.unwrap().unwrap().success);
    }

    // Paged through the REST API: no page carries more than the bound, each moves on,
    // and together they hold every line once, in order.
    let mut start = 0u64;
    let mut big_lines = Vec::new();
    loop {
        let path = format!("/api/v1/repository/demo/biglog/build/{id}/logs?start={start}");
        let response = s.req(reqwest::Method::GET, &path).send().await.unwrap();
        let page: Value = response.json().await.unwrap();
        let entries = page["logs"].as_array().unwrap();
        let total = page["total"].as_u64().unwrap();
        if start >= total {
            break;
        }
        assert!(!entries.is_empty(), "page at {start} of {total} is empty");
        let bytes: usize = entries.iter().map(|e| e.to_string().len()).sum();
        assert!(
            entries.len() == 1 || bytes <= 2_500_000,
            "{} entries, {bytes} bytes",
            entries.len()
        );
        big_lines.extend(
            (entries.iter())
                .filter_map(|e| e["message"].as_str())
                .filter(|m| m.len() > 1 << 20)
                .map(|m| m[..1].to_string()),
        );
        start += entries.len() as u64;
    }
    assert_eq!(big_lines, ["1", "2", "3", "4", "5"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_then_gets_through_again() {
    let s = server(
        "BUILDMAN_API_TOKENS: [other-token-of-at-least-32-chars-0001]\n\
         BUILDMAN_LIMITS: {RATE_PER_SECOND: 1, RATE_BURST: 3}",
        "complete",
    )
    .await;
    let path = "/api/v1/repository/demo/app/build/";
    let statuses = async |token: &str, n| {
        let mut out = Vec::new();
        for _ in 0..n {
            let response = (s.http.get(format!("{}{path}", s.base)))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            out.push(response);
        }
        out
    };
    let answers = statuses(&s.token, 6).await;
    let refused = answers.into_iter().find(|r| r.status() == 429);
    let refused = refused.expect("a request over the burst is refused");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let error: Value = refused.json().await.unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("too many requests")
    );

    // Keyed by the token: another token and the unauthenticated health check go on.
    let other = statuses("other-token-of-at-least-32-chars-0001", 1).await;
    assert_eq!(other[0].status(), 200);
    let health = s.http.get(format!("{}/healthz", s.base)).send().await;
    assert_eq!(health.unwrap().status(), 200);

    // Waiting as told lets the token through again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(statuses(&s.token, 1).await[0].status(), 200);
    s.stop().await;
}

/// Open sockets of process `pid`: what a connection costs. Other descriptors (database
/// files, a runtime thread's eventfd) come and go on their own, whatever the connections do.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_no_descriptors_past_the_bound_and_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "BUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n\
         BUILDMAN_LIMITS: {{MAX_CONNECTIONS: 8, IDLE_TIMEOUT: 1, HEADER_READ_TIMEOUT: 1}}\n{}",
        config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(dir.path(), "local", ""))
    );
    let serve = Serve::start(dir.path(), "limits", &config).await;
    let pid = serve.child.id();
    let before = open_sockets(pid);
    let http_addr = serve.base.trim_start_matches("http://").to_string();

    // 40 silent connections on each listener: the kernel queues what is over the bound.
    let mut idle = Vec::new();
    for addr in [http_addr.clone(), serve.grpc.to_string()] {
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
    }
    let held = open_sockets(pid);
    assert!(
        held <= before + 2 * 8 + 4,
        "{held} sockets open with 80 idle connections (before: {before})"
    );

    // Each idle one is closed in its turn; then health checks and Pings are answered.
    let deadline = Instant::now() + T;
    let http = buildman_testkit::http_client();
    loop {
        let asked = http
            .get(format!("{}/healthz", serve.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if asked.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
    }
    let mut client = loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", serve.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5));
        if let Ok(channel) = endpoint.connect().await {
            break BuildManagerClient::new(channel);
        }
        assert!(
            Instant::now() < deadline,
            "the worker service never answered"
        );
    };
    let ping = loop {
        match client.ping(pb::PingRequest {}).await {
            Ok(reply) => break reply,
            Err(e) => assert!(Instant::now() < deadline, "Ping never answered: {e}"),
        }
    };
    assert!(!ping.into_inner().reply.is_empty());

    // The idle ones were closed by the manager, not left open.
    let mut closed = 0;
    for mut conn in idle {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(T, conn.read_to_end(&mut answer)).await;
        if read.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 80, "every idle connection is closed by the manager");
}
