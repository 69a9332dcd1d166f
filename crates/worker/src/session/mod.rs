//! The worker's side of the protocol, as quay-builder speaks it, and resilient to a
//! dropped connection: unary calls are retried, the heartbeat and log streams are reopened,
//! and log lines not yet acknowledged are re-sent with their original sequence numbers
//! (the manager stores each once). The endpoint is dialled again each time, so a load
//! balancer in front of several managers may route the worker to another one. A log stream
//! the manager keeps refusing is given up rather than retried for ever ([`log_stream`]).
//! Streams open by sending ([`bidi`]); the connection has no HTTP/2 keepalive ([`link`]).
//! docs/worker-protocol.md says what the worker assumes of a manager.

mod bidi;
mod heartbeat;
mod link;
mod log_stream;
mod logger;

use std::future::Future;
use std::time::{Duration, Instant};

use buildman_proto as pb;
use pb::build_manager_client::BuildManagerClient;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub use heartbeat::{HEARTBEAT_EVERY, HEARTBEAT_TIMEOUT};
use link::Link;
pub use link::Target;
use log_stream::{LogCommand, LogSender};
pub use log_stream::{LogFailure, MAX_LOG_REOPENS};
pub use logger::Logger;

type Client = BuildManagerClient<Channel>;

/// How long the worker keeps trying to get back to its manager before it gives up.
pub const RECONNECT_FOR: Duration = Duration::from_secs(600);
/// How long the manager may take to answer a call or acknowledge a log line before the
/// connection counts as dead (and is dialled anew).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The manager could not be reached for [`RECONNECT_FOR`].
    #[error("lost the build manager at {server}: {status}")]
    Unreachable { server: String, status: String },
    /// The manager answered with an error.
    #[error("the build manager refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    /// The endpoint is malformed or TLS could not be set up.
    #[error("bad endpoint {0}")]
    Endpoint(String),
}

/// A capped exponential backoff between reconnects: 100 ms doubling up to 5 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    fn delay(&self) -> Duration {
        self.0
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

/// True for failures of the connection rather than answers of the manager.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Makes a unary call with the link's current client, retried on connection failures (and
/// on no answer within [`ANSWER_TIMEOUT`], after dialling anew) with a capped exponential
/// backoff.
async fn retry<T, F, Fut>(link: &Link, call: &'static str, mut f: F) -> Result<T, SessionError>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        let (client, generation) = link.current();
        let failed = match tokio::time::timeout(ANSWER_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(s)) => s,
            Err(_) => {
                link.redial(generation);
                Status::deadline_exceeded(format!("no answer within {ANSWER_TIMEOUT:?}"))
            }
        };
        if !transient(&failed) {
            return Err(SessionError::Refused {
                call,
                message: failed.message().to_string(),
            });
        }
        if started.elapsed() >= RECONNECT_FOR {
            return Err(SessionError::Unreachable {
                server: link.server().to_string(),
                status: failed.message().to_string(),
            });
        }
        tracing::warn!(call, error = %failed.message(), "manager unreachable; retrying in {:?}", backoff.delay());
        backoff.wait().await;
    }
}

/// A registered job: the BuildPack, and the handles to report on it.
pub struct Session {
    link: Link,
    job_jwt: String,
    phase_sequence: i32,
    log: mpsc::Sender<LogCommand>,
    log_failure: watch::Receiver<Option<LogFailure>>,
    cancelled: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Session {
    /// Pings the manager, opens the log stream, registers with the registration token and
    /// starts heartbeating, in quay-builder's order.
    pub async fn register(
        target: &Target,
        token: &str,
    ) -> Result<(Session, pb::BuildPack), SessionError> {
        let link = Link::new(target)?;
        retry(&link, "Ping", |mut c| async move {
            c.ping(pb::PingRequest {}).await
        })
        .await?;
        let (log_tx, log_rx) = mpsc::channel(1024);
        let pack = retry(&link, "RegisterBuildJob", |mut c| {
            let register_jwt = token.to_string();
            async move {
                c.register_build_job(pb::BuildJobArgs { register_jwt })
                    .await
            }
        })
        .await?
        .into_inner();
        let job_jwt = pack.job_jwt.clone();
        let (cancel_tx, cancelled) = watch::channel(false);
        let (failure_tx, log_failure) = watch::channel(None);
        let tasks = vec![
            tokio::spawn(LogSender::new(link.clone(), log_rx, failure_tx).run()),
            tokio::spawn(heartbeat::heartbeats(
                link.clone(),
                job_jwt.clone(),
                cancel_tx,
            )),
        ];
        Ok((
            Session {
                link,
                job_jwt,
                phase_sequence: 0,
                log: log_tx,
                log_failure,
                cancelled,
                tasks,
            },
            pack,
        ))
    }

    /// Reports a phase, after every log line logged before it was acknowledged (so the
    /// log shows the change where it happened); an error when the manager refuses it.
    pub async fn set_phase(
        &mut self,
        phase: pb::Phase,
        pull_metadata: Option<pb::set_phase_request::PullMetadata>,
    ) -> Result<(), SessionError> {
        self.flush_logs().await;
        self.phase_sequence += 1;
        let request = pb::SetPhaseRequest {
            job_jwt: self.job_jwt.clone(),
            sequence_number: self.phase_sequence,
            phase: phase as i32,
            pull_metadata,
        };
        let reply = retry(&self.link, "SetPhase", |mut c| {
            let r = request.clone();
            async move { c.set_phase(r).await }
        })
        .await?
        .into_inner();
        if !reply.success || reply.sequence_number != request.sequence_number {
            return Err(SessionError::Refused {
                call: "SetPhase",
                message: format!("phase {} was not accepted", phase.as_str_name()),
            });
        }
        Ok(())
    }

    /// Asks which tag to prime the cache from ("" for none).
    pub async fn cached_tag(
        &self,
        base_image: &str,
        base_tag: &str,
    ) -> Result<String, SessionError> {
        let request = pb::CachedTagRequest {
            job_jwt: self.job_jwt.clone(),
            base_image_name: base_image.to_string(),
            base_image_tag: base_tag.to_string(),
            base_image_id: String::new(),
        };
        Ok(retry(&self.link, "DetermineCachedTag", |mut c| {
            let r = request.clone();
            async move { c.determine_cached_tag(r).await }
        })
        .await?
        .into_inner()
        .cached_tag)
    }

    /// A sender for build-output lines: each is a Docker build-stream JSON object.
    pub fn logger(&self, phase: &str) -> Logger {
        Logger::new(self.log.clone(), self.job_jwt.clone(), phase)
    }

    /// Waits until every log line sent so far was acknowledged (or dropped, once the log
    /// stream gave up).
    pub async fn flush_logs(&self) {
        let (tx, rx) = oneshot::channel();
        if self.log.send(LogCommand::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Why the log stream gave up, if it did.
    pub fn log_failure(&self) -> Option<LogFailure> {
        self.log_failure.borrow().clone()
    }

    /// The manager's `host:port`.
    pub fn server(&self) -> &str {
        self.link.server()
    }

    /// A future that resolves when the log stream gave up (see [`log_stream`]): the build
    /// cannot be followed any more and must end.
    pub fn log_failed(&self) -> impl Future<Output = LogFailure> + Send + 'static {
        let mut rx = self.log_failure.clone();
        async move {
            let failure = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|f| f.clone());
            match failure {
                Some(failure) => failure,
                // The log task is gone only with the session: nothing to wait for.
                None => std::future::pending().await,
            }
        }
    }

    /// A future that resolves when the manager no longer knows the job (heartbeat answered
    /// `false` three times in a row): the build was cancelled or timed out, and the worker
    /// must stop.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.cancelled.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}
