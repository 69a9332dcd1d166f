//! The worker protocol's gRPC service (`buildman_pb.BuildManager`), as Quay's build
//! manager answers it (see shared/docs/worker-protocol.md, "What the manager answers").

use std::net::SocketAddr;
use std::pin::Pin;

use std::sync::Arc;
use std::time::Duration;

use crate::generated::build_manager_server::{BuildManager, BuildManagerServer};
use crate::listen::{Bounded, BoundedListener};
use buildman_core::Phase;
use buildman_manager::sessions::{HeartbeatStream, LogStream, PackageSource, PhaseReport};
use buildman_manager::tokens::TokenError;
use buildman_manager::{ManagerError, WorkerSessions};
use buildman_proto as pb;
use buildman_store::StoreError;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Largest message a worker may send, in bytes (gRPC's customary 4 MiB). A larger one is
/// answered with OUT_OF_RANGE naming the limit, never a silent end of the stream; our
/// worker splits long log lines far below it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Maps a manager error to the gRPC status the protocol names.
fn status(e: ManagerError) -> Status {
    if !e.is_refusal() {
        tracing::error!(error = %e, "worker call failed");
    }
    let message = e.to_string();
    match e {
        ManagerError::Token(TokenError::Refused(_)) => Status::unauthenticated(message),
        ManagerError::Invalid(_) => Status::invalid_argument(message),
        ManagerError::NotFound(_) => Status::not_found(message),
        ManagerError::Conflict(_) => Status::failed_precondition(message),
        // The protocol: RegisterBuildJob answers INTERNAL when it cannot start the job.
        ManagerError::JobNotWaiting { .. } => Status::internal(message),
        ManagerError::Store(StoreError::AttemptOver(_)) => Status::failed_precondition(message),
        ManagerError::Store(StoreError::NotFound(_)) => Status::not_found(message),
        ManagerError::ShuttingDown => Status::unavailable(message),
        // A backend that cannot be reached now (Redis cut off, PostgreSQL restarting): the
        // worker retries UNAVAILABLE, so a short outage does not end its build.
        ManagerError::Orchestrator(_) | ManagerError::Store(StoreError::Database(_)) => {
            Status::unavailable(message)
        }
        _ => Status::internal(message),
    }
}

fn phase_of(p: pb::Phase) -> Phase {
    match p {
        pb::Phase::Waiting => Phase::Waiting,
        pb::Phase::Unpacking => Phase::Unpacking,
        pb::Phase::Pulling => Phase::Pulling,
        pb::Phase::Building => Phase::Building,
        pb::Phase::Pushing => Phase::Pushing,
        pb::Phase::Complete => Phase::Complete,
        pb::Phase::Error => Phase::Error,
    }
}

/// The gRPC service over the manager's worker sessions.
pub struct WorkerService {
    sessions: Arc<WorkerSessions>,
}

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Most requests of one stream answered together: a worker that sends before each
/// acknowledgement (ours keeps a window of lines in flight) has them written in one go.
pub const MAX_PIPELINED: usize = 256;

/// Answers the requests of one bidirectional stream, in order, keeping per-stream state.
#[tonic::async_trait]
trait StreamHandler<Req, Rep>: Send + 'static {
    /// The replies to requests that arrived together, in order; an error ends the stream
    /// with that status (as the protocol wants for a bad token) and is the last reply.
    async fn handle(&mut self, requests: Vec<Req>) -> Vec<Result<Rep, Status>>;
}

/// Runs a handler over an inbound stream and returns the outbound one. The handler runs
/// when the reply stream is polled, inside the task the connection already has for the
/// call: a message costs no task switch or channel of its own, and an open stream no task
/// of its own (a worker holds two open for its whole build). Requests already received
/// are handled together (at most [`MAX_PIPELINED`]); a worker that waits for each answer
/// gets one at a time. The stream ends with the inbound one, or after the first error
/// reply; an inbound error (an oversized or undecodable message) is answered with its
/// status, so the worker knows why.
fn reply_stream<Req, Rep>(
    inbound: Streaming<Req>,
    handler: impl StreamHandler<Req, Rep>,
) -> ReplyStream<Rep>
where
    Req: Send + 'static,
    Rep: Send + 'static,
{
    let chunks = futures::StreamExt::ready_chunks(inbound, MAX_PIPELINED);
    let replies = futures::stream::unfold(Some((chunks, handler)), |state| async move {
        let (mut chunks, mut handler) = state?;
        let received = chunks.next().await?;
        let mut requests = Vec::with_capacity(received.len());
        let mut failed = None;
        for r in received {
            match r {
                Ok(r) => requests.push(r),
                Err(e) => {
                    tracing::debug!(error = %e, "worker stream closed with an error");
                    failed = Some(e);
                    break;
                }
            }
        }
        let mut replies = handler.handle(requests).await;
        replies.extend(failed.map(Err));
        let go_on = replies.iter().all(Result::is_ok);
        Some((replies, go_on.then_some((chunks, handler))))
    });
    Box::pin(futures::StreamExt::flat_map(replies, futures::stream::iter))
}

#[tonic::async_trait]
impl StreamHandler<pb::HeartbeatRequest, pb::HeartbeatResponse> for HeartbeatStream {
    async fn handle(
        &mut self,
        requests: Vec<pb::HeartbeatRequest>,
    ) -> Vec<Result<pb::HeartbeatResponse, Status>> {
        let mut replies = Vec::with_capacity(requests.len());
        for req in requests {
            let reply = self.beat(&req.job_jwt).await.map_err(status);
            let failed = reply.is_err();
            replies.push(reply.map(|reply| pb::HeartbeatResponse { reply }));
            if failed {
                break;
            }
        }
        replies
    }
}

#[tonic::async_trait]
impl StreamHandler<pb::LogMessageRequest, pb::LogMessageResponse> for LogStream {
    async fn handle(
        &mut self,
        requests: Vec<pb::LogMessageRequest>,
    ) -> Vec<Result<pb::LogMessageResponse, Status>> {
        let batch: Vec<(&str, i32, &str)> = requests
            .iter()
            .map(|r| {
                (
                    r.job_jwt.as_str(),
                    r.sequence_number,
                    r.log_message.as_str(),
                )
            })
            .collect();
        let answers = self.messages(&batch).await;
        answers
            .into_iter()
            .zip(&requests)
            .map(|(answer, req)| {
                answer
                    .map_err(status)
                    .map(|success| pb::LogMessageResponse {
                        success,
                        sequence_number: req.sequence_number,
                    })
            })
            .collect()
    }
}

#[tonic::async_trait]
impl BuildManager for WorkerService {
    async fn ping(&self, _: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        Ok(Response::new(pb::PingReply {
            reply: "pong".to_string(),
        }))
    }

    async fn register_build_job(
        &self,
        request: Request<pb::BuildJobArgs>,
    ) -> Result<Response<pb::BuildPack>, Status> {
        let a = self
            .sessions
            .register(&request.into_inner().register_jwt)
            .await
            .map_err(status)?;
        let build_pack = Some(match a.pack.source {
            PackageSource::Url(url) => pb::build_pack::BuildPack::PackageUrl(url),
            PackageSource::Git {
                url,
                sha,
                private_key,
            } => pb::build_pack::BuildPack::GitPackage(pb::build_pack::GitPackage {
                url,
                sha,
                private_key,
            }),
        });
        Ok(Response::new(pb::BuildPack {
            job_jwt: a.job_token,
            build_pack,
            context: a.pack.context,
            dockerfile_path: a.pack.dockerfile_path,
            repository: a.pack.repository,
            registry: a.pack.registry,
            pull_token: a.pack.pull_token,
            push_token: a.pack.push_token,
            tag_names: a.pack.tag_names,
            base_image: a
                .pack
                .base_image
                .map(|(username, password)| pb::build_pack::BaseImage { username, password }),
        }))
    }

    type HeartbeatStream = ReplyStream<pb::HeartbeatResponse>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        Ok(Response::new(reply_stream(
            request.into_inner(),
            HeartbeatStream::new(self.sessions.clone()),
        )))
    }

    async fn set_phase(
        &self,
        request: Request<pb::SetPhaseRequest>,
    ) -> Result<Response<pb::SetPhaseResponse>, Status> {
        let req = request.into_inner();
        let ctx = self
            .sessions
            .verify_job_token(&req.job_jwt)
            .map_err(status)?;
        let mut pull_metadata = serde_json::Map::new();
        if let Some(m) = req.pull_metadata {
            for (k, v) in [
                ("registry_url", m.registry_url),
                ("base_image", m.base_image),
                ("base_image_tag", m.base_image_tag),
                ("pull_username", m.pull_username),
            ] {
                pull_metadata.insert(k.to_string(), v.into());
            }
        }
        let report = PhaseReport {
            phase: pb::Phase::try_from(req.phase).ok().map(phase_of),
            pull_metadata,
        };
        let success = self
            .sessions
            .set_phase(&ctx, report)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetPhaseResponse {
            success,
            sequence_number: req.sequence_number,
        }))
    }

    type LogMessageStream = ReplyStream<pb::LogMessageResponse>;

    async fn log_message(
        &self,
        request: Request<Streaming<pb::LogMessageRequest>>,
    ) -> Result<Response<Self::LogMessageStream>, Status> {
        Ok(Response::new(reply_stream(
            request.into_inner(),
            LogStream::new(self.sessions.clone()),
        )))
    }

    async fn determine_cached_tag(
        &self,
        request: Request<pb::CachedTagRequest>,
    ) -> Result<Response<pb::CachedTag>, Status> {
        let req = request.into_inner();
        let ctx = self
            .sessions
            .verify_job_token(&req.job_jwt)
            .map_err(status)?;
        let tag = self.sessions.cached_tag(&ctx).await.map_err(status)?;
        Ok(Response::new(pb::CachedTag { cached_tag: tag }))
    }
}

/// TLS material for the gRPC listener, in PEM.
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// How the worker service treats its connections besides the listener's bounds.
pub struct GrpcOptions {
    /// TLS, if the workers connect with it.
    pub tls: Option<TlsPem>,
    /// An HTTP/2 ping on a connection quiet for this long...
    pub keepalive_interval: Duration,
    /// ...closes it when unanswered for this long (a worker whose host vanished).
    pub keepalive_timeout: Duration,
}

/// Serves the worker protocol on `listener` until `shutdown` resolves.
pub async fn serve(
    sessions: Arc<WorkerSessions>,
    metrics: Arc<buildman_manager::Metrics>,
    listener: BoundedListener,
    options: GrpcOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout));
    if let Some(tls) = options.tls {
        let identity = tonic::transport::Identity::from_pem(tls.cert, tls.key);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?local, "gRPC worker service listening");
    // Connections end with this function's future (see `Severable`), not only when their
    // streams do.
    let (_server_alive, alive) = tokio::sync::watch::channel(());
    let incoming =
        (listener.incoming()).map(move |conn| conn.map(|io| Severable::new(io, alive.clone())));
    builder
        .layer(crate::ops::timing::GrpcTimingLayer::new(metrics))
        .add_service(
            BuildManagerServer::new(WorkerService { sessions })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// A worker connection that is cut once the server that accepted it is gone.
///
/// tonic runs every connection in a task of its own, and its graceful shutdown waits for the
/// streams on them to end, which a worker's heartbeat stream never does; the caller then
/// drops (aborts) the server. Without this, the connections, and the sessions their handlers
/// hold, would outlive it: the worker would go on heartbeating into a manager that was
/// stopped, and its job would never expire for another manager to take over.
struct Severable {
    io: Bounded,
    /// Resolves once the sender kept by `serve` is dropped.
    server_gone: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    severed: bool,
}

impl Severable {
    fn new(io: Bounded, mut alive: tokio::sync::watch::Receiver<()>) -> Self {
        Severable {
            io,
            server_gone: Box::pin(async move { while alive.changed().await.is_ok() {} }),
            severed: false,
        }
    }

    /// An error once the server is gone; otherwise wakes the connection when it goes.
    fn check(&mut self, cx: &mut std::task::Context<'_>) -> std::io::Result<()> {
        if !self.severed && std::future::Future::poll(self.server_gone.as_mut(), cx).is_ready() {
            self.severed = true;
        }
        if self.severed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the gRPC server stopped",
            ));
        }
        Ok(())
    }
}

impl tonic::transport::server::Connected for Severable {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(self.io.tcp())
    }
}

impl tokio::io::AsyncRead for Severable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        tokio::io::AsyncRead::poll_read(Pin::new(&mut self.io), cx, buf)
    }
}

impl tokio::io::AsyncWrite for Severable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.check(cx)?;
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.io), cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.io), cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.io), cx)
    }
}
