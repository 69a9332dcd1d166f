//! A worker that registers and reports its first phase before the executor's `start` has
//! returned (an executor whose workers start faster than it answers). The manager must
//! accept it, log `build-scheduled` once and in order, and run the build to `complete`.
//! The bench executor's callback is answered only after the worker reported UNPACKING, so
//! the order is forced, not left to timing.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use buildman::serve::{self, ServeOptions};
use buildman_bench::api::Api;
use buildman_bench::callback::StartCall;
use buildman_bench::worker::{Channels, Shared, Worker};
use buildman_core::LogType;
use buildman_core::config::Config;
use buildman_proto::Phase;
use tokio::sync::{Mutex, mpsc};

type Handoff = mpsc::UnboundedSender<Result<Worker, String>>;
/// What the callback handler shares: connections, error counts, where workers go.
type Early = (Arc<Channels>, Arc<Shared>, Arc<Mutex<Handoff>>);

/// Registers and reports UNPACKING, then answers the callback and hands the worker on.
async fn start_early(
    State((channels, shared, handoff)): State<Early>,
    Json(call): Json<StartCall>,
) -> StatusCode {
    let worker = async {
        let channel = channels.next(&call.server)?;
        let mut worker = Worker::register(channel, &call.token, shared)
            .await
            .map_err(|f| f.to_string())?;
        worker
            .phase(Phase::Unpacking, None)
            .await
            .map_err(|f| f.to_string())?;
        Ok(worker)
    }
    .await;
    let _ = handoff.lock().await.send(worker);
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ahead_of_the_scheduler_is_accepted() {
    // What the binaries do at start: reqwest is built without a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shared = Arc::new(Shared::default());
    let (handoff, mut workers) = mpsc::unbounded_channel();
    let state: Early = (
        Arc::new(Channels::new(1)),
        shared.clone(),
        Arc::new(Mutex::new(handoff)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!("http://{}/worker", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/worker", post(start_early))
        .route("/worker/stop", post(|| async { StatusCode::OK }))
        .with_state(state);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "FEATURE_BUILD_SUPPORT: true\nBUILD_MANAGER:\n- ephemeral\n- EXECUTORS:\n  - EXECUTOR: bench\n    BENCH_CALLBACK_URL: {callback}\n"
    );
    let mut options = ServeOptions::from_config(Config::parse(&yaml).unwrap().config).unwrap();
    options.data_dir = dir.path().join("data");
    options.http_listen = "127.0.0.1:0".parse().unwrap();
    options.grpc_listen = "127.0.0.1:0".parse().unwrap();
    options.allow_bench_executor = true;
    let running = serve::start(options).await.unwrap();
    let token = std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap();
    let api = Api::new(&format!("http://{}", running.http_addr), token.trim()).unwrap();

    for round in 0..3 {
        let repo = format!("early-{round}");
        let (id, _) = api.submit("bench", &repo).await.unwrap();
        let mut worker = tokio::time::timeout(Duration::from_secs(60), workers.recv())
            .await
            .expect("the manager called back")
            .unwrap()
            .expect("the early worker registered and was let into UNPACKING");
        worker.phase(Phase::Pulling, None).await.unwrap();
        worker.phase(Phase::Building, None).await.unwrap();
        worker.log("Step 1/1 : FROM scratch\n").await.unwrap();
        worker.complete().await.unwrap();

        assert_eq!(api.build(&id).await.unwrap().phase.as_str(), "complete");
        let phases: Vec<String> = api
            .logs("bench", &repo, &id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == Some(LogType::Phase))
            .map(|e| e.message.clone())
            .collect();
        assert_eq!(
            phases,
            [
                "build-scheduled",
                "unpacking",
                "pulling",
                "building",
                "pushing",
                "complete"
            ]
        );
    }
    assert_eq!(shared.errors.total(), 0, "{:?}", shared.errors.report());
    running.stop().await;
    server.abort();
}
