//! The generator's end of the bench executor: an HTTP server on 127.0.0.1 that takes the
//! manager's start callbacks (one per job: build id, registration token, gRPC address) and
//! stop callbacks, and hands each start to the running scenario.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;

use crate::stats::lock;

/// One start callback: the manager asks for a worker for this job.
#[derive(Clone, Deserialize)]
pub struct StartCall {
    /// The build the job runs.
    pub build_id: String,
    /// The registration token for RegisterBuildJob. Secret.
    pub token: String,
    /// `host:port` of the manager's gRPC endpoint.
    pub server: String,
    /// The executor's id for this worker; stop callbacks name it.
    pub execution_id: String,
    /// When the callback arrived (set on arrival, not sent).
    #[serde(skip, default = "Instant::now")]
    pub at: Instant,
}

impl std::fmt::Debug for StartCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartCall")
            .field("build_id", &self.build_id)
            .field("server", &self.server)
            .field("execution_id", &self.execution_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct StopCall {
    execution_id: String,
}

/// What a scenario does with each start callback (it spawns a simulated worker).
pub type StartHandler = Arc<dyn Fn(StartCall) + Send + Sync>;

/// Stop callbacks, by execution id: a worker can watch for its own.
#[derive(Default)]
pub struct Stops {
    by_id: Mutex<HashMap<String, watch::Sender<bool>>>,
    count: AtomicU64,
}

impl Stops {
    /// A receiver that turns true once the manager stopped `execution_id` (also when that
    /// happened before this call).
    pub fn watch(&self, execution_id: &str) -> watch::Receiver<bool> {
        lock(&self.by_id)
            .entry(execution_id.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    fn stop(&self, execution_id: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        lock(&self.by_id)
            .entry(execution_id.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .send_replace(true);
    }

    /// How many stop callbacks arrived.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Shared {
    handler: Arc<Mutex<Option<StartHandler>>>,
    stops: Arc<Stops>,
    unhandled: Arc<AtomicU64>,
}

/// The callback server; stops serving when dropped.
pub struct Callbacks {
    /// The URL to configure as BENCH_CALLBACK_URL.
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Callbacks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Callbacks {
    /// Listens on `listen` (port 0 picks a free one).
    pub async fn start(listen: SocketAddr) -> anyhow::Result<Callbacks> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening for bench callbacks on {listen}"))?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            handler: Arc::default(),
            stops: Arc::default(),
            unhandled: Arc::default(),
        };
        let router = Router::new()
            .route("/worker", post(on_start))
            .route("/worker/stop", post(on_stop))
            .with_state(shared.clone());
        // The manager waits for each answer: keep Nagle's algorithm from delaying them.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "bench callback server failed");
            }
        });
        Ok(Callbacks {
            url: format!("http://{addr}/worker"),
            shared,
            task,
        })
    }

    /// Routes start callbacks to `handler` until [`Callbacks::clear_handler`]; without a
    /// handler they are refused (503), and the manager retries the build later.
    pub fn set_handler(&self, handler: StartHandler) {
        *lock(&self.shared.handler) = Some(handler);
    }

    /// Stops routing start callbacks.
    pub fn clear_handler(&self) {
        *lock(&self.shared.handler) = None;
    }

    /// The stop callbacks received.
    pub fn stops(&self) -> &Arc<Stops> {
        &self.shared.stops
    }

    /// Start callbacks refused because no scenario was running.
    pub fn unhandled(&self) -> u64 {
        self.shared.unhandled.load(Ordering::Relaxed)
    }
}

async fn on_start(State(shared): State<Shared>, Json(mut call): Json<StartCall>) -> StatusCode {
    call.at = Instant::now();
    let handler = lock(&shared.handler).clone();
    match handler {
        Some(handler) => {
            handler(call);
            StatusCode::OK
        }
        None => {
            shared.unhandled.fetch_add(1, Ordering::Relaxed);
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn on_stop(State(shared): State<Shared>, Json(call): Json<StopCall>) -> StatusCode {
    shared.stops.stop(&call.execution_id);
    StatusCode::OK
}
