//! A simulated quay-builder: the protocol calls in quay-builder's order and manner (Ping,
//! open the log stream, RegisterBuildJob, one heartbeat stream with a heartbeat every 2 s
//! awaiting each reply, SetPhase with counting sequence numbers, log lines one at a time
//! awaiting each ack), and nothing else. Many run in one process; they share a pool of
//! HTTP/2 connections, each multiplexing the streams of a few dozen workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman_proto as pb;
use pb::build_manager_client::BuildManagerClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::callback::StartCall;
use crate::stats::{Errors, Recorder, lock};

/// quay-builder's heartbeat period.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// quay-builder's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC client of the manager.
pub type Client = BuildManagerClient<Channel>;

/// HTTP/2 connections shared by the simulated workers: worker `n` uses connection
/// `n / per_connection`, so each connection carries the streams of `per_connection` workers.
pub struct Channels {
    per_connection: usize,
    next: AtomicUsize,
    channels: Mutex<Vec<Channel>>,
}

impl Channels {
    /// A pool putting `per_connection` workers on each connection (at least 1).
    pub fn new(per_connection: usize) -> Channels {
        Channels {
            per_connection: per_connection.max(1),
            next: AtomicUsize::new(0),
            channels: Mutex::default(),
        }
    }

    /// The connection for the next worker, to `server` (`host:port`).
    pub fn next(&self, server: &str) -> Result<Channel, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) / self.per_connection;
        let mut channels = lock(&self.channels);
        while channels.len() <= i {
            let endpoint = Endpoint::from_shared(format!("http://{server}"))
                .map_err(|e| format!("bad server address {server:?}: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            // Lazy: dials on first use, from inside the worker's task.
            channels.push(endpoint.connect_lazy());
        }
        Ok(channels[i].clone())
    }

    /// How many connections were opened.
    pub fn connections(&self) -> usize {
        lock(&self.channels).len()
    }
}

/// What all workers of a scenario share: their error counts and heartbeat latencies.
#[derive(Default)]
pub struct Shared {
    /// Every failure, by kind.
    pub errors: Errors,
    /// Heartbeat reply latencies.
    pub heartbeats: Recorder,
}

/// A worker's failure: which call, and what happened.
#[derive(Debug)]
pub struct Failure {
    /// The call that failed (`register`, `SetPhase`, `LogMessage`, ...).
    pub call: &'static str,
    /// What happened.
    pub message: String,
}

impl Failure {
    fn new(call: &'static str, message: impl std::fmt::Display) -> Failure {
        Failure {
            call,
            message: message.to_string(),
        }
    }

    /// Counts this failure in `errors`.
    pub fn count(&self, errors: &Errors) {
        errors.add(self.call, &self.message);
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.message)
    }
}

/// One registered simulated worker.
pub struct Worker {
    client: Client,
    jwt: String,
    phase_sequence: i32,
    log_sequence: i32,
    log_tx: mpsc::Sender<pb::LogMessageRequest>,
    log_replies: Streaming<pb::LogMessageResponse>,
    /// True once the worker is finishing: heartbeats stop, refusals are expected.
    finishing: watch::Sender<bool>,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// The worker a start callback asks for: connects (sharing `channels`) to the server
    /// the call names and registers with its token.
    pub async fn start(
        channels: &Channels,
        call: &StartCall,
        shared: Arc<Shared>,
    ) -> Result<Worker, Failure> {
        let channel = channels
            .next(&call.server)
            .map_err(|m| Failure::new("connect", m))?;
        Worker::register(channel, &call.token, shared).await
    }

    /// Ping, open the log stream, register with the registration token, start
    /// heartbeating: quay-builder's start-up.
    pub async fn register(
        channel: Channel,
        token: &str,
        shared: Arc<Shared>,
    ) -> Result<Worker, Failure> {
        let mut client = Client::new(channel);
        client
            .ping(pb::PingRequest {})
            .await
            .map_err(|s| Failure::new("Ping", s))?;
        let (log_tx, log_rx) = mpsc::channel(1);
        let log_replies = client
            .log_message(ReceiverStream::new(log_rx))
            .await
            .map_err(|s| Failure::new("LogMessage open", s))?
            .into_inner();
        let pack = client
            .register_build_job(pb::BuildJobArgs {
                register_jwt: token.to_string(),
            })
            .await
            .map_err(|s| Failure::new("RegisterBuildJob", s))?
            .into_inner();
        if pack.build_pack.is_none() {
            return Err(Failure::new(
                "RegisterBuildJob",
                "the BuildPack has neither package_url nor git_package",
            ));
        }
        let (finishing, finishing_rx) = watch::channel(false);
        let heartbeats = tokio::spawn(heartbeat_loop(
            client.clone(),
            pack.job_jwt.clone(),
            shared,
            finishing_rx,
        ));
        Ok(Worker {
            client,
            jwt: pack.job_jwt,
            phase_sequence: 0,
            log_sequence: 0,
            log_tx,
            log_replies,
            finishing,
            heartbeats,
        })
    }

    /// SetPhase; a refusal (or a sequence number not echoed) is a failure.
    pub async fn phase(
        &mut self,
        phase: pb::Phase,
        pull_metadata: Option<pb::set_phase_request::PullMetadata>,
    ) -> Result<(), Failure> {
        self.phase_sequence += 1;
        let sequence = self.phase_sequence;
        let reply = self
            .client
            .set_phase(pb::SetPhaseRequest {
                job_jwt: self.jwt.clone(),
                sequence_number: sequence,
                phase: phase as i32,
                pull_metadata,
            })
            .await
            .map_err(|s| Failure::new("SetPhase", s))?
            .into_inner();
        if !reply.success || reply.sequence_number != sequence {
            return Err(Failure::new(
                "SetPhase",
                format!("phase {} refused", phase.as_str_name()),
            ));
        }
        Ok(())
    }

    /// quay-builder's way to the building phase: unpacking, pulling (with metadata), the
    /// cached-tag question, pulling again for the cache, building.
    pub async fn to_building(&mut self) -> Result<(), Failure> {
        let metadata = || pb::set_phase_request::PullMetadata {
            registry_url: "registry.bench.local".into(),
            base_image: "library/alpine".into(),
            base_image_tag: "3".into(),
            pull_username: String::new(),
        };
        self.phase(pb::Phase::Unpacking, None).await?;
        self.phase(pb::Phase::Pulling, Some(metadata())).await?;
        self.client
            .determine_cached_tag(pb::CachedTagRequest {
                job_jwt: self.jwt.clone(),
                base_image_name: "library/alpine".into(),
                base_image_tag: "3".into(),
                base_image_id: String::new(),
            })
            .await
            .map_err(|s| Failure::new("DetermineCachedTag", s))?;
        self.phase(pb::Phase::Pulling, Some(metadata())).await?;
        self.phase(pb::Phase::Building, None).await
    }

    /// Sends one output line (`{"stream": text}`) and waits for its ack; returns how long
    /// the ack took.
    pub async fn log(&mut self, text: &str) -> Result<Duration, Failure> {
        self.log_sequence += 1;
        let sequence = self.log_sequence;
        let request = pb::LogMessageRequest {
            job_jwt: self.jwt.clone(),
            sequence_number: sequence,
            log_message: serde_json::json!({ "stream": text }).to_string(),
            phase: "building".into(),
        };
        let sent = Instant::now();
        self.log_tx
            .send(request)
            .await
            .map_err(|_| Failure::new("LogMessage", "the log stream is closed"))?;
        let reply = self
            .log_replies
            .message()
            .await
            .map_err(|s| Failure::new("LogMessage", s))?
            .ok_or_else(|| Failure::new("LogMessage", "the manager ended the log stream"))?;
        let took = sent.elapsed();
        if !reply.success || reply.sequence_number != sequence {
            return Err(Failure::new(
                "LogMessage",
                format!("line {sequence} refused"),
            ));
        }
        Ok(took)
    }

    /// How many log lines were acknowledged.
    pub fn lines_sent(&self) -> i32 {
        self.log_sequence
    }

    /// Pushing, then complete; the heartbeats stop as the worker process would exit.
    pub async fn complete(mut self) -> Result<(), Failure> {
        self.phase(pb::Phase::Pushing, None).await?;
        // From here on a heartbeat answered `false` is the job ending, not an error.
        self.finishing.send_replace(true);
        let result = self.phase(pb::Phase::Complete, None).await;
        self.close().await;
        result
    }

    /// Ends the worker without a final phase (the process went away).
    pub async fn close(self) {
        self.finishing.send_replace(true);
        drop(self.log_tx);
        let _ = self.heartbeats.await;
    }
}

/// One heartbeat every [`HEARTBEAT_EVERY`] on one stream, each awaiting its reply; a
/// `false` is retried at once, and the third in a row ends the loop, as in quay-builder.
async fn heartbeat_loop(
    mut client: Client,
    jwt: String,
    shared: Arc<Shared>,
    mut finishing: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::channel(1);
    let mut replies = match client.heartbeat(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            Failure::new("Heartbeat open", s).count(&shared.errors);
            return;
        }
    };
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = finishing.wait_for(|f| *f) => return,
        }
        loop {
            let sent = Instant::now();
            let request = pb::HeartbeatRequest {
                job_jwt: jwt.clone(),
            };
            if tx.send(request).await.is_err() {
                return;
            }
            let reply = tokio::select! {
                r = replies.message() => r,
                _ = finishing.wait_for(|f| *f) => return,
            };
            let finished = *finishing.borrow();
            match reply {
                Ok(Some(r)) => {
                    shared.heartbeats.record(sent.elapsed());
                    if r.reply {
                        refused = 0;
                        break;
                    }
                    if finished {
                        return;
                    }
                    Failure::new("Heartbeat", "the manager answered false").count(&shared.errors);
                    refused += 1;
                    if refused >= 3 {
                        return;
                    }
                }
                Ok(None) if finished => return,
                Ok(None) => {
                    Failure::new("Heartbeat", "the manager ended the heartbeat stream")
                        .count(&shared.errors);
                    return;
                }
                Err(_) if finished => return,
                Err(s) => {
                    Failure::new("Heartbeat", s).count(&shared.errors);
                    return;
                }
            }
        }
    }
}
