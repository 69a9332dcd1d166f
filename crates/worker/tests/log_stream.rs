//! The worker against a scripted manager whose log stream keeps failing: the job must end
//! in `error` with the reason, not reconnect until MACHINE_MAX_TIME. The manager here is a
//! gRPC server speaking the worker protocol that answers every call normally except
//! LogMessage; the worker runs a real buildah build. Needs buildah (`.ci/run` installs it).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman_proto as pb;
use buildman_worker::job::{self, Outcome, WorkerEnv};
use buildman_worker::session::MAX_LOG_REOPENS;
use pb::build_manager_server::{BuildManager, BuildManagerServer};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

/// What the scripted manager does with a log stream.
#[derive(Clone)]
enum LogAnswer {
    /// Ends it with this status at the first line.
    Refuse(Status),
    /// Takes the first line and ends it (status OK) without answering.
    EndWithoutAnswer,
}

/// What the scripted manager saw.
#[derive(Default)]
struct Seen {
    phases: Vec<pb::Phase>,
    log_streams: usize,
    lines: usize,
}

#[derive(Clone)]
struct Scripted {
    package_url: String,
    answer: LogAnswer,
    seen: Arc<Mutex<Seen>>,
}

type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl BuildManager for Scripted {
    type HeartbeatStream = Replies<pb::HeartbeatResponse>;
    type LogMessageStream = Replies<pb::LogMessageResponse>;

    async fn ping(&self, _: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        Ok(Response::new(pb::PingReply {
            reply: "pong".into(),
        }))
    }

    async fn register_build_job(
        &self,
        _: Request<pb::BuildJobArgs>,
    ) -> Result<Response<pb::BuildPack>, Status> {
        Ok(Response::new(pb::BuildPack {
            job_jwt: "job-token".into(),
            build_pack: Some(pb::build_pack::BuildPack::PackageUrl(
                self.package_url.clone(),
            )),
            repository: "demo/failing-log".into(),
            ..Default::default()
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let replies = request
            .into_inner()
            .map(|_| Ok(pb::HeartbeatResponse { reply: true }));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn set_phase(
        &self,
        request: Request<pb::SetPhaseRequest>,
    ) -> Result<Response<pb::SetPhaseResponse>, Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap().phases.push(request.phase());
        Ok(Response::new(pb::SetPhaseResponse {
            success: true,
            sequence_number: request.sequence_number,
        }))
    }

    async fn log_message(
        &self,
        request: Request<Streaming<pb::LogMessageRequest>>,
    ) -> Result<Response<Self::LogMessageStream>, Status> {
        self.seen.lock().unwrap().log_streams += 1;
        let (seen, answer) = (self.seen.clone(), self.answer.clone());
        let replies = request.into_inner().take(1).filter_map(move |_| {
            seen.lock().unwrap().lines += 1;
            match &answer {
                LogAnswer::Refuse(status) => Some(Err(status.clone())),
                LogAnswer::EndWithoutAnswer => None,
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn determine_cached_tag(
        &self,
        _: Request<pb::CachedTagRequest>,
    ) -> Result<Response<pb::CachedTag>, Status> {
        Ok(Response::new(pb::CachedTag::default()))
    }
}

/// Serves `body` over http on 127.0.0.1; returns its URL.
async fn serve_file(body: &'static str) -> String {
    let app = axum::Router::new().route(
        "/Dockerfile",
        axum::routing::get(move || async move { body }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/Dockerfile")
}

/// Runs one job of the real worker against a scripted manager answering log lines with
/// `answer`; returns the outcome and what the manager saw.
async fn run_job(answer: LogAnswer) -> (Outcome, Seen) {
    buildman_testkit::tls_provider();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let manager = Scripted {
        package_url: serve_file("FROM scratch\n").await,
        answer,
        seen: seen.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BuildManagerServer::new(manager))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let work = tempfile::tempdir().unwrap();
    let env = WorkerEnv::from_env(|name| {
        Some(match name {
            "TOKEN" => "registration-token".into(),
            "SERVER" => addr.to_string(),
            "INSECURE" => "true".into(),
            "CONTAINER_RUNTIME" => "buildah".into(),
            "TMPDIR" => work.path().display().to_string(),
            _ => return None,
        })
    })
    .unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        job::run(&env, std::future::pending()),
    )
    .await
    .expect("the job ended")
    .expect("the manager was reachable");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (outcome, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_log_line_ends_the_build_in_error_with_the_reason() {
    let refusal = Status::resource_exhausted("log message of 6291456 bytes exceeds 4 MiB");
    let (outcome, seen) = run_job(LogAnswer::Refuse(refusal)).await;
    let Outcome::Failed(why) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(why.contains("refused log line"), "{why}");
    assert!(why.contains("exceeds 4 MiB"), "{why}");
    assert_eq!(
        seen.phases.last(),
        Some(&pb::Phase::Error),
        "{:?}",
        seen.phases
    );
    assert!(!seen.phases.contains(&pb::Phase::Complete));
    // The refused line, then one try of the error line: no reconnecting.
    assert_eq!(seen.log_streams, 2, "log streams opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stream_that_never_acknowledges_ends_the_build_after_the_documented_reopens() {
    let (outcome, seen) = run_job(LogAnswer::EndWithoutAnswer).await;
    let Outcome::Failed(why) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        why.contains(&format!("failed {MAX_LOG_REOPENS} times in a row")),
        "{why}"
    );
    assert!(why.contains("without answering"), "{why}");
    assert_eq!(
        seen.phases.last(),
        Some(&pb::Phase::Error),
        "{:?}",
        seen.phases
    );
    // MAX_LOG_REOPENS tries of the first line, then one of the error line.
    assert_eq!(seen.log_streams, MAX_LOG_REOPENS as usize + 1);
    assert_eq!(seen.lines, MAX_LOG_REOPENS as usize + 1);
}
