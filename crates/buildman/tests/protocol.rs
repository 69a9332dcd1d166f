//! Every refusal of the worker protocol, through a real gRPC client: each is answered as
//! the protocol doc says, and none of them changes the build.

mod common;

use std::time::Duration;

use buildman_manager::{KeyPair, TokenService, TokenType};
use buildman_proto as pb;
use common::*;
use pb::build_manager_client::BuildManagerClient;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

type Client = BuildManagerClient<tonic::transport::Channel>;

async fn heartbeat_once(client: &mut Client, jwt: &str) -> Result<bool, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::HeartbeatRequest {
        job_jwt: jwt.into(),
    })
    .await
    .unwrap();
    let mut replies = client
        .heartbeat(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match replies.message().await? {
        Some(r) => Ok(r.reply),
        None => Err(tonic::Status::unknown("stream ended")),
    }
}

/// Sends log lines on one stream; returns each reply's `success`.
async fn log_lines(client: &mut Client, jwt: &str, lines: &[(i32, &str)]) -> Vec<bool> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .log_message(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    for (seq, line) in lines {
        tx.send(pb::LogMessageRequest {
            job_jwt: jwt.into(),
            sequence_number: *seq,
            log_message: line.to_string(),
            phase: "building".into(),
        })
        .await
        .unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(
            reply.sequence_number, *seq,
            "the reply echoes the sequence number"
        );
        out.push(reply.success);
    }
    out
}

fn set_phase(jwt: &str, seq: i32, phase: pb::Phase) -> pb::SetPhaseRequest {
    pb::SetPhaseRequest {
        job_jwt: jwt.into(),
        sequence_number: seq,
        phase: phase as i32,
        pull_metadata: None,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_messages_are_refused_and_change_nothing() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-registered",
        fast_timings(),
    )
    .await;
    let view = s.submit("demo/proto", &[]).await;
    let id = view["id"].as_str().unwrap().to_string();
    let reg = s.wait_report(|r| r["event"] == "registered", T).await;
    let registration = reg["registration_token"].as_str().unwrap().to_string();
    let job = reg["job_token"].as_str().unwrap().to_string();
    s.wait_phase(&id, &["unpacking"], T).await;
    let before_logs = s.logs("demo/proto", &id).await.len();

    let mut client = Client::connect(s.grpc.clone()).await.unwrap();
    assert_eq!(
        client
            .ping(pb::PingRequest {})
            .await
            .unwrap()
            .into_inner()
            .reply,
        "pong"
    );
    let build_id = id.parse().unwrap();

    // A token signed by another key that claims the manager's kid: forged.
    let kid = jsonwebtoken::decode_header(&job).unwrap().kid.unwrap();
    let other = KeyPair::generate().unwrap();
    let forger = TokenService::new(
        "registry.test",
        &KeyPair {
            kid: kid.clone(),
            ..other.clone()
        },
        &[],
    )
    .unwrap();
    let forged = forger
        .issue(TokenType::Job, build_id, "building/x", "claim", T)
        .unwrap();
    let e = heartbeat_once(&mut client, &forged).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("signature"), "{}", e.message());

    // Signed by a key the manager does not trust.
    let stranger = TokenService::new("registry.test", &other, &[]).unwrap();
    let unknown = stranger
        .issue(TokenType::Job, build_id, "building/x", "claim", T)
        .unwrap();
    let e = heartbeat_once(&mut client, &unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("unknown key"), "{}", e.message());

    // Signed by the manager's own key, but expired beyond the 30 s skew.
    let pem = std::fs::read(s.dir.path().join("data/signing-key.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.clone());
    let now = unix_now();
    let claims = json!({
        "iss": "buildman", "aud": "registry.test", "sub": "(anonymous)",
        "iat": now - 600, "nbf": now - 600, "exp": now - 120,
        "context": {"token_type": "build_job_token", "build_id": id, "job_id": format!("building/{id}"), "expiration": 480},
    });
    let expired = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    let e = heartbeat_once(&mut client, &expired).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());

    // Garbage, and the wrong kind of token for each call.
    let e = heartbeat_once(&mut client, "not-a-jwt").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = heartbeat_once(&mut client, &registration)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("registration token"),
        "{}",
        e.message()
    );
    let e = client
        .set_phase(set_phase(&registration, 1, pb::Phase::Building))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = client
        .register_build_job(pb::BuildJobArgs {
            register_jwt: job.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("job token"), "{}", e.message());

    // A registration token registers once.
    let e = client
        .register_build_job(pb::BuildJobArgs {
            register_jwt: registration.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message().contains("already registered"),
        "{}",
        e.message()
    );

    // Log lines: sequence numbers must increase on a stream, and lines must be JSON.
    let line = r#"{"stream":"hello\n"}"#;
    let answers = log_lines(
        &mut client,
        &job,
        &[
            (5, line),
            (5, line),
            (4, line),
            (6, "not json"),
            (7, "[1]"),
            (8, line),
        ],
    )
    .await;
    assert_eq!(answers, [true, false, false, false, false, true]);
    let logs = s.logs("demo/proto", &id).await;
    assert_eq!(
        logs.len(),
        before_logs + 2,
        "only the two accepted lines were stored"
    );

    // A worker that reconnects re-sends its unacknowledged line on a new stream: it is
    // acknowledged, and stored once.
    let resent = r#"{"stream":"after reconnect\n"}"#;
    assert_eq!(
        log_lines(&mut client, &job, &[(8, line), (9, resent)]).await,
        [true, true]
    );
    let logs = s.logs("demo/proto", &id).await;
    assert_eq!(
        logs.len(),
        before_logs + 3,
        "the re-sent line was stored once"
    );
    assert_eq!(logs.last().unwrap()["message"], "after reconnect\n");

    // None of the refusals moved the build.
    assert_eq!(s.build(&id).await["phase"], "unpacking");
    assert!(
        heartbeat_once(&mut client, &job).await.unwrap(),
        "the real job token still works"
    );

    // After a final phase, changes are refused; repeating the final phase is not.
    let done = client
        .set_phase(set_phase(&job, 10, pb::Phase::Complete))
        .await
        .unwrap()
        .into_inner();
    assert!(done.success);
    assert_eq!(done.sequence_number, 10);
    let late = client
        .set_phase(set_phase(&job, 11, pb::Phase::Building))
        .await
        .unwrap()
        .into_inner();
    assert!(!late.success);
    assert_eq!(late.sequence_number, 11);
    let again = client
        .set_phase(set_phase(&job, 12, pb::Phase::Complete))
        .await
        .unwrap()
        .into_inner();
    assert!(again.success);
    assert_eq!(s.build(&id).await["phase"], "complete");
    assert_eq!(
        phases(&s.logs("demo/proto", &id).await)
            .last()
            .map(String::as_str),
        Some("complete")
    );
    // The job is gone: heartbeats answer false, and the held worker was stopped.
    assert!(!heartbeat_once(&mut client, &job).await.unwrap());
    let started = s.wait_report(|r: &Value| r["event"] == "started", T).await;
    wait_gone(started["pid"].as_u64().unwrap(), T).await;
    s.stop().await;
}

/// A log message over the 4 MiB limit is answered with OUT_OF_RANGE naming the limit —
/// never a silent end of the stream (a worker would reconnect and resend it for ever) —
/// and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_log_message_is_refused_with_a_status_that_names_the_limit() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-registered",
        fast_timings(),
    )
    .await;
    let id = s.submit("demo/big", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = s.wait_report(|r| r["event"] == "registered", T).await;
    let job = reg["job_token"].as_str().unwrap().to_string();
    s.wait_phase(&id, &["unpacking"], T).await;
    let before = s.logs("demo/big", &id).await.len();

    // The client side allows sending it: the manager's limit is what is tested.
    let mut client = Client::connect(s.grpc.clone())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .log_message(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let line = json!({ "stream": "x".repeat(5 << 20) }).to_string();
    tx.send(pb::LogMessageRequest {
        job_jwt: job.clone(),
        sequence_number: 1,
        log_message: line,
        phase: "building".into(),
    })
    .await
    .unwrap();
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&(4 << 20).to_string()),
        "the limit is named: {}",
        status.message()
    );
    assert_eq!(
        s.logs("demo/big", &id).await.len(),
        before,
        "nothing stored"
    );
    s.stop().await;
}

/// A job token is bound to its attempt: once the first attempt's job ended (its worker
/// went silent) and a second attempt runs, the first worker's token changes nothing —
/// no phase, no heartbeat, no log line; and once the build is over, no token adds to its
/// log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_token_is_bound_to_its_attempt() {
    let timings = buildman_manager::Timings {
        heartbeat_ttl: Duration::from_secs(1),
        ..fast_timings()
    };
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-registered",
        timings,
    )
    .await;
    let id = s.submit("demo/twice", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let first = s.wait_report(|r| r["event"] == "registered", T).await;
    let first_job = first["job_token"].as_str().unwrap().to_string();
    let started = s.wait_report(|r| r["event"] == "started", T).await;
    // The first worker dies without a word; its job's deadline passes and the build runs
    // again.
    let pid = started["pid"].as_u64().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let second = s
        .wait_report(
            |r| r["event"] == "registered" && r["job_token"] != first["job_token"],
            T,
        )
        .await;
    let second_job = second["job_token"].as_str().unwrap().to_string();
    s.wait_phase(&id, &["unpacking"], T).await;
    let before = s.logs("demo/twice", &id).await.len();

    let mut client = Client::connect(s.grpc.clone()).await.unwrap();
    let e = client
        .set_phase(set_phase(&first_job, 9, pb::Phase::Complete))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("earlier attempt"), "{}", e.message());
    let e = heartbeat_once(&mut client, &first_job).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let stale = log_line_status(&mut client, &first_job).await;
    assert!(
        matches!(
            stale.code(),
            Code::FailedPrecondition | Code::Unauthenticated
        ),
        "{stale:?}"
    );
    let view = s.build(&id).await;
    assert_eq!(
        view["phase"], "unpacking",
        "the second attempt is untouched"
    );
    assert_eq!(
        s.logs("demo/twice", &id).await.len(),
        before,
        "nothing stored"
    );

    // Over for good: even the live attempt's token adds nothing any more.
    assert_eq!(s.cancel("demo/twice", &id).await.status(), 201);
    let late = log_line_status(&mut client, &second_job).await;
    assert!(
        matches!(
            late.code(),
            Code::FailedPrecondition | Code::Unauthenticated
        ),
        "{late:?}"
    );
    let logged = phases(&s.logs("demo/twice", &id).await);
    assert_eq!(logged.last().map(String::as_str), Some("cancelled"));
    s.stop().await;
}

/// Sends one log line with `jwt` and returns the status the stream ends with.
async fn log_line_status(client: &mut Client, jwt: &str) -> tonic::Status {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .log_message(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::LogMessageRequest {
        job_jwt: jwt.into(),
        sequence_number: 1000,
        log_message: json!({"stream": "stale\n"}).to_string(),
        phase: "building".into(),
    })
    .await
    .unwrap();
    match replies.message().await {
        Err(status) => status,
        Ok(reply) => panic!("a stale line was answered {reply:?}"),
    }
}

/// A worker may send log lines before their acknowledgements come back: every line is
/// answered, in order, with its own sequence number, and stored once in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_log_lines_are_answered_in_order_and_stored_once() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-registered",
        fast_timings(),
    )
    .await;
    let id = s.submit("demo/pipe", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = s.wait_report(|r| r["event"] == "registered", T).await;
    let job = reg["job_token"].as_str().unwrap().to_string();
    s.wait_phase(&id, &["unpacking"], T).await;
    let before = s.logs("demo/pipe", &id).await.len();

    let mut client = Client::connect(s.grpc.clone()).await.unwrap();
    const LINES: i32 = 600;
    let requests: Vec<pb::LogMessageRequest> = (1..=LINES)
        .map(|seq| pb::LogMessageRequest {
            job_jwt: job.clone(),
            sequence_number: 1000 + seq,
            log_message: json!({ "stream": format!("piped {seq}\n") }).to_string(),
            phase: "building".into(),
        })
        .collect();
    // All sent at once, none waiting for its answer.
    let mut replies = client
        .log_message(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    for seq in 1..=LINES {
        let reply = replies.message().await.unwrap().expect("a reply per line");
        assert_eq!(reply.sequence_number, 1000 + seq, "answers come in order");
        assert!(reply.success);
    }
    let logs = s.logs("demo/pipe", &id).await;
    let piped: Vec<&str> = logs[before..]
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    let expected: Vec<String> = (1..=LINES).map(|seq| format!("piped {seq}\n")).collect();
    assert_eq!(piped, expected);
    s.stop().await;
}

/// DetermineCachedTag answers the first of a build's tags that an earlier complete build of
/// the same repository pushed, never one only a failed build asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_tag_is_one_an_earlier_complete_build_pushed() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &popen(d, "local", "")),
        "hold-registered",
        fast_timings(),
    )
    .await;
    let mut client = Client::connect(s.grpc.clone()).await.unwrap();
    // Runs a build of `repo` with `tags` to `end` (when given) through its worker's token;
    // returns that token.
    let mut runs = 0;
    let mut run = async |repo: &str, tags: &[&str], end: Option<pb::Phase>| {
        let id = s.submit(repo, tags).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        runs += 1;
        // One build at a time: this one's worker is the next to register.
        let deadline = tokio::time::Instant::now() + T;
        let jwt = loop {
            let registered: Vec<Value> = (s.reports().into_iter())
                .filter(|r| r["event"] == "registered")
                .collect();
            if let Some(r) = registered.get(runs - 1) {
                break r["job_token"].as_str().unwrap().to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no worker registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let walk = [
            pb::Phase::Unpacking,
            pb::Phase::Pulling,
            pb::Phase::Building,
        ];
        for (seq, phase) in walk.into_iter().chain(end).enumerate() {
            let seq = i32::try_from(seq).unwrap() + 1;
            client.set_phase(set_phase(&jwt, seq, phase)).await.unwrap();
        }
        if end.is_some() {
            s.wait_phase(&id, &["complete", "error"], T).await;
        }
        jwt
    };
    run("demo/cache", &["v1", "v2"], Some(pb::Phase::Complete)).await;
    run("demo/cache", &["v3"], Some(pb::Phase::Error)).await;
    let asking = run("demo/cache", &["v3", "v2", "v1"], None).await;
    let cached = |jwt: String| pb::CachedTagRequest {
        job_jwt: jwt,
        ..Default::default()
    };
    let answer = client.determine_cached_tag(cached(asking)).await.unwrap();
    assert_eq!(answer.into_inner().cached_tag, "v2");
    s.stop().await;
}
