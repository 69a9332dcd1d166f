//! The followed-log API (`GET .../logs?follow=1`, Server-Sent Events) as a client sees it:
//! every entry exactly once and in order, across a reconnect with `Last-Event-ID`, across
//! a retried attempt and across managers; the end only once the build is over for good; a
//! client that reads nothing is dropped with where to resume and does not slow the writer.

mod common;

use std::pin::Pin;
use std::time::{Duration, Instant};

use buildman_api::{LogEvent, LogsQuery, ViewPhase, paths};
use buildman_core::Phase;
use buildman_manager::Timings;
use common::*;
use eventsource_stream::Eventsource as _;
use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const T: Duration = Duration::from_secs(120);

type Events = Pin<Box<dyn Stream<Item = LogEvent> + Send>>;

/// Follows `repo`'s build `id` on the manager at `base`, from `start` or after `last`
/// (sent as `Last-Event-ID`).
async fn open(
    base: &str,
    token: &str,
    (repo, id): (&str, &str),
    start: Option<u64>,
    last: Option<u64>,
) -> Events {
    let (namespace, name) = split(repo);
    let mut request = reqwest::Client::new()
        .get(format!("{base}{}", paths::build_logs(namespace, name, id)))
        .query(&LogsQuery {
            start,
            follow: true,
        })
        .bearer_auth(token);
    if let Some(last) = last {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.expect("follow");
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    Box::pin(response.bytes_stream().eventsource().map(|event| {
        let event = event.expect("an event");
        LogEvent::parse(&event.event, &event.data)
            .expect("a well-formed event")
            .expect("a known event")
    }))
}

/// Reads events until `until` says stop (it sees each event) or the stream ends.
async fn read(events: &mut Events, mut until: impl FnMut(&LogEvent) -> bool) -> Vec<LogEvent> {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = tokio::time::timeout(left, events.next())
            .await
            .expect("events before the deadline")
        else {
            return seen;
        };
        let stop = until(&event);
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

/// The entries among events: `(index, message)`.
fn entries(events: &[LogEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            LogEvent::Entry(e) => Some((e.index, e.entry.message.clone())),
            _ => None,
        })
        .collect()
}

/// Checks that `got` is the whole stored log, each entry once, in order.
fn assert_whole_log(got: &[(u64, String)], log: &[serde_json::Value]) {
    let indices: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..log.len() as u64).collect::<Vec<_>>());
    let stored: Vec<&str> = log.iter().filter_map(|e| e["message"].as_str()).collect();
    let followed: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(followed, stored);
}

fn is_end(e: &LogEvent) -> bool {
    matches!(e, LogEvent::End(_) | LogEvent::Lagged(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_every_entry_once_in_order_across_a_reconnect_and_a_retry() {
    let timings = Timings {
        heartbeat_ttl: Duration::from_secs(1),
        ..fast_timings()
    };
    let s = TestServer::start_with_env(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "die-first-attempt",
        timings,
        &[("TEST_WORKER_LINES", "30"), ("TEST_WORKER_LINE_MS", "10")],
    )
    .await;
    let repo = "demo/retried";
    let id = s.submit(repo, &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Some entries, then the connection drops.
    let mut first = open(&s.base, &s.token, (repo, &id), None, None).await;
    let mut got = 0;
    let before = read(&mut first, |e| {
        got += usize::from(matches!(e, LogEvent::Entry(_)));
        got == 8
    })
    .await;
    drop(first);
    let last = entries(&before).last().expect("entries").0;

    // The browser's way back: Last-Event-ID names the last entry received.
    let mut again = open(&s.base, &s.token, (repo, &id), None, Some(last)).await;
    let after = read(&mut again, is_end).await;
    assert!(
        again.next().await.is_none(),
        "the stream closes after its end"
    );

    let mut followed = entries(&before);
    followed.extend(entries(&after));
    assert_whole_log(&followed, &s.logs(repo, &id).await);
    let retries: Vec<u32> = after
        .iter()
        .filter_map(|e| match e {
            LogEvent::Retry(r) => Some(r.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [2], "the retry is an event with its attempt");
    let phases: Vec<ViewPhase> = before
        .iter()
        .chain(&after)
        .filter_map(|e| match e {
            LogEvent::Phase(p) => Some(p.phase),
            _ => None,
        })
        .collect();
    let internal = ViewPhase::Phase(Phase::InternalError);
    let at = phases
        .iter()
        .position(|p| *p == internal)
        .expect("the first attempt's end");
    assert!(
        phases[at..].contains(&ViewPhase::Phase(Phase::Building)),
        "the stream went on past the internal error: {phases:?}"
    );
    let Some(LogEvent::End(end)) = after.last() else {
        panic!("no end: {after:?}");
    };
    assert_eq!(end.build.phase, ViewPhase::Phase(Phase::Complete));
    assert_eq!(end.build.attempt, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_another_manager_than_the_workers_gets_every_entry() {
    let cluster = Cluster::start().await;
    let config = |d: &std::path::Path| {
        format!(
            "{}{}",
            cluster.shared_keys(),
            config_yaml(&cluster.manager_keys(1), &popen(d, "local", ""))
        )
    };
    let go = tempfile::tempdir().expect("temp dir");
    let env = [
        ("TEST_WORKER_LINES", "40"),
        ("TEST_WORKER_LINE_MS", "20"),
        ("TEST_WORKER_LINES_AFTER", go.path().to_str().unwrap()),
    ];
    let b = TestServer::start_with_env(config, "happy", fast_timings(), &env).await;
    let repo = "demo/elsewhere";
    let id = b.submit(repo, &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.wait_phase(&id, &["building"], T).await;
    // Started once the build runs on b, so the build's worker talks to b only.
    let a = TestServer::start_with_env(config, "happy", fast_timings(), &env).await;

    let mut events = open(&a.base, &a.token, (repo, &id), None, None).await;
    std::fs::write(go.path().join(&id), b"").expect("go");
    let seen = read(&mut events, is_end).await;
    let Some(LogEvent::End(end)) = seen.last() else {
        panic!("no end: {seen:?}");
    };
    assert_eq!(end.build.phase, ViewPhase::Phase(Phase::Complete));
    let lines = entries(&seen)
        .iter()
        .filter(|(_, m)| m.starts_with("line "))
        .count();
    assert_eq!(lines, 40, "every line the worker sent to the other manager");
    assert_whole_log(&entries(&seen), &b.logs(repo, &id).await);
    a.stop().await;
    b.stop().await;
}

/// A client that sends its request and reads nothing, on a socket whose receive buffer is
/// as small as the system allows: the server's writes back up within a few megabytes.
async fn silent_follower(base: &str, token: &str, repo: &str, id: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    let (namespace, name) = split(repo);
    // HTTP/1.0: the body is the stream itself, to the end of the connection (no chunks).
    let request = format!(
        "GET {}?follow=1 HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n",
        paths::build_logs(namespace, name, id)
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    stream
}

/// What a silent follower got once it reads: its events, up to the end of the stream.
async fn read_silent(mut stream: tokio::net::TcpStream) -> Vec<LogEvent> {
    let mut bytes = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the stream")
        .expect("read");
    let body_at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers")
        + 4;
    let head = String::from_utf8_lossy(&bytes[..body_at]).to_string();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let body = bytes[body_at..].to_vec();
    let chunks = futures::stream::iter([Ok::<_, std::io::Error>(body)]);
    chunks
        .eventsource()
        .map(|e| {
            let e = e.expect("event");
            LogEvent::parse(&e.event, &e.data)
                .expect("event")
                .expect("known")
        })
        .collect()
        .await
}

/// Lines per second the worker's lines were stored at (the worker waits for each
/// acknowledgement, which comes after the line was committed).
async fn ingestion_rate(s: &TestServer, id: &str) -> f64 {
    let sent = s
        .wait_report(|r| r["event"] == "lines-sent" && r["build_uuid"] == id, T)
        .await;
    let count = sent["count"].as_f64().unwrap_or_default();
    count / (sent["ms"].as_f64().unwrap_or(1.0).max(1.0) / 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_dropped_with_where_to_resume_and_slows_nothing() {
    let go = tempfile::tempdir().expect("temp dir");
    // 4,000 lines of 2 KB: twice what the kernel buffers between server and client hold.
    let env = [
        ("TEST_WORKER_LINES", "4000"),
        ("TEST_WORKER_LINE_BYTES", "2000"),
        ("TEST_WORKER_LINES_AFTER", go.path().to_str().unwrap()),
    ];
    let s = TestServer::start_with_env(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "happy",
        fast_timings(),
        &env,
    )
    .await;
    let repo = "demo/slow";

    // Without any follower.
    let alone = s.submit(repo, &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(go.path().join(&alone), b"").expect("go");
    s.wait_phase(&alone, &["complete"], T).await;
    let rate_alone = ingestion_rate(&s, &alone).await;

    // With a client that reads nothing and one that reads everything.
    let id = s.submit(repo, &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&id, &["building"], T).await;
    let silent = silent_follower(&s.base, &s.token, repo, &id).await;
    let mut reader = open(&s.base, &s.token, (repo, &id), None, None).await;
    let reading = tokio::spawn(async move { read(&mut reader, is_end).await });
    std::fs::write(go.path().join(&id), b"").expect("go");
    s.wait_phase(&id, &["complete"], T).await;
    let rate_silent = ingestion_rate(&s, &id).await;
    println!(
        "log ingestion: {rate_alone:.0} lines/s alone, {rate_silent:.0} lines/s with a client \
         that reads nothing (4000 lines of 2 KB)"
    );

    let log = s.logs(repo, &id).await;
    let all = reading.await.expect("reader");
    assert!(
        matches!(all.last(), Some(LogEvent::End(_))),
        "the reader got to the end"
    );
    assert_whole_log(&entries(&all), &log);

    // The silent client, reading at last, finds a prefix of the log and where to resume.
    let dropped = read_silent(silent).await;
    let Some(LogEvent::Lagged(lagged)) = dropped.last() else {
        panic!("not dropped: {:?}", dropped.last());
    };
    let prefix = entries(&dropped);
    assert_eq!(
        lagged.next,
        prefix.len() as u64,
        "resume right after what it got"
    );
    let mut rest = open(&s.base, &s.token, (repo, &id), Some(lagged.next), None).await;
    let mut followed = prefix;
    followed.extend(entries(&read(&mut rest, is_end).await));
    assert_whole_log(&followed, &log);
    s.stop().await;
}
