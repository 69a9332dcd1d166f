//! A scripted worker for testing a build manager deployment and for buildman's own tests.
//! It plays quay-builder's exact call pattern (Ping, open the log stream, register,
//! heartbeat every 2 s awaiting each reply, walk the phases with sequence numbers, one
//! acknowledged log line at a time) but builds nothing.
//!
//! Environment: quay-builder's `TOKEN`, `SERVER`, `INSECURE`; plus
//! `TEST_WORKER_SCENARIO` (`happy` by default, `never-register`, `stop-heartbeats`,
//! `hold-building`, `hold-pushing`, `hold-registered`, `fail-build` (reports `error` after
//! building), `fail-building` (an error line, then phase `error`), `die-first-attempt` (the
//! first attempt of each build exits silently in the building phase, later ones are happy),
//! or `by-repository`: the scenario is the name of the build's repository,
//! `ns/hold-building` holds), `TEST_WORKER_REPORT` (a file that gets one JSON line per
//! event, for tests to read), `TEST_WORKER_HEARTBEAT_MS` and
//! `TEST_WORKER_BUILD_MS` (when set, the building phase takes that long, between a
//! `building` and a `built` report, so that the runs of several workers overlap).
//!
//! More output while building: `TEST_WORKER_LINES` lines (`line <n> sent-at <unix ms>`,
//! padded with dots to `TEST_WORKER_LINE_BYTES`), `TEST_WORKER_LINE_MS` apart, started only
//! once the file `<TEST_WORKER_LINES_AFTER>/<build uuid>` exists when that is set; reported
//! as `lines-sent` with the time they took.

use std::time::Duration;

use buildman_proto as pb;
use pb::build_manager_client::BuildManagerClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

type Client = BuildManagerClient<Channel>;

/// Appends an event, stamped with the time (ms since the epoch), the pid and the name this
/// binary was started under (tests link it under one name per executor).
fn report(mut event: serde_json::Value) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    event["at"] = at.into();
    event["pid"] = std::process::id().into();
    event["argv0"] = std::env::args().next().unwrap_or_default().into();
    event["build_uuid"] = std::env::var("BUILD_UUID").ok().into();
    if let Ok(path) = std::env::var("TEST_WORKER_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write per line: workers append to one file at once, and `writeln!` would
            // write the line in pieces that another worker's could interleave.
            let _ = f.write_all(format!("{event}\n").as_bytes());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The manager stops a worker with SIGTERM (right after acknowledging its final phase,
    // or on cancel): record the exit either way, so tests can tell when each worker ended.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("test worker: cannot handle SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    let code = tokio::select! {
        result = run() => match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("test worker: {e}");
                report(serde_json::json!({ "event": "failed", "error": e.to_string() }));
                1
            }
        },
        _ = term.recv() => 0,
    };
    report(serde_json::json!({ "event": "exiting" }));
    std::process::exit(code);
}

/// Any failure ends the run, reported as `failed` with its message.
type Error = Box<dyn std::error::Error>;

/// What the environment asks of this worker.
struct Settings {
    /// `TEST_WORKER_SCENARIO`; anything unknown plays `happy`.
    scenario: String,
    /// The registration token (`TOKEN`).
    token: String,
    /// The manager's gRPC address (`SERVER`).
    server: String,
    /// `TEST_WORKER_HEARTBEAT_MS`, 2 s by default as quay-builder.
    heartbeat_every: Duration,
    /// `TEST_WORKER_BUILD_MS`: how long the building phase lasts, if set.
    build_time: Option<Duration>,
    /// The extra output lines (`TEST_WORKER_LINES` and friends).
    lines: Lines,
}

/// Extra output lines the building phase sends.
#[derive(Clone, Default)]
struct Lines {
    /// `TEST_WORKER_LINES`: how many.
    count: u64,
    /// `TEST_WORKER_LINE_BYTES`: each padded to this length.
    bytes: usize,
    /// `TEST_WORKER_LINE_MS`: the pause between two.
    every: Duration,
    /// `TEST_WORKER_LINES_AFTER`: a directory where a file named after the build must
    /// appear before the lines start.
    after: Option<std::path::PathBuf>,
}

impl Settings {
    /// Reads the settings; `TOKEN` and `SERVER` are required.
    fn from_env() -> Result<Self, Error> {
        let millis = |var| std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok());
        Ok(Self {
            scenario: std::env::var("TEST_WORKER_SCENARIO").unwrap_or_else(|_| "happy".into()),
            token: std::env::var("TOKEN")?,
            server: std::env::var("SERVER")?,
            heartbeat_every: Duration::from_millis(
                millis("TEST_WORKER_HEARTBEAT_MS").unwrap_or(2000),
            ),
            build_time: millis("TEST_WORKER_BUILD_MS").map(Duration::from_millis),
            lines: Lines {
                count: millis("TEST_WORKER_LINES").unwrap_or(0),
                bytes: millis("TEST_WORKER_LINE_BYTES").unwrap_or(0) as usize,
                every: Duration::from_millis(millis("TEST_WORKER_LINE_MS").unwrap_or(0)),
                after: std::env::var_os("TEST_WORKER_LINES_AFTER").map(Into::into),
            },
        })
    }
}

/// Plays the scenario: quay-builder's steps, stopping to wait for the job to go where the
/// scenario holds.
async fn run() -> Result<(), Error> {
    let settings = Settings::from_env()?;
    let scenario = settings.scenario.as_str();
    report(serde_json::json!({
        "event": "started", "scenario": scenario, "server": settings.server,
        "registry_hostname": std::env::var("REGISTRY_HOSTNAME").ok(),
    }));
    if scenario == "never-register" {
        std::future::pending::<()>().await;
    }
    let mut job = Job::register(&settings).await?;
    let scenario = match scenario {
        "by-repository" => job.repository.rsplit('/').next().unwrap_or_default(),
        "die-first-attempt" if earlier_starts() == 0 => "die",
        other => other,
    }
    .to_string();
    let scenario = scenario.as_str();
    let cancelled = spawn_heartbeats(
        job.client.clone(),
        job.jwt.clone(),
        settings.heartbeat_every,
        scenario == "stop-heartbeats",
    );
    job.set_phase(pb::Phase::Unpacking, None).await?;
    if matches!(scenario, "stop-heartbeats" | "hold-registered") {
        return wait_for_cancel(cancelled).await;
    }
    job.pull().await?;
    job.build(settings.build_time).await?;
    job.send_lines(&settings.lines).await?;
    match scenario {
        "hold-building" => return wait_for_cancel(cancelled).await,
        "fail-building" => {
            job.log_json(&serde_json::json!({
                "error": "The command '/bin/sh -c make' returned a non-zero code: 2",
                "errorDetail": {"code": 2},
            }))
            .await?;
            job.set_phase(pb::Phase::Error, None).await?;
            report(serde_json::json!({ "event": "failed-build" }));
            return Ok(());
        }
        "die" => {
            report(serde_json::json!({ "event": "dying" }));
            std::process::exit(3);
        }
        "fail-build" => {
            job.set_phase(pb::Phase::Error, None).await?;
            report(serde_json::json!({ "event": "failed-build" }));
            return Ok(());
        }
        _ => {}
    }
    job.set_phase(pb::Phase::Pushing, None).await?;
    if scenario == "hold-pushing" {
        return wait_for_cancel(cancelled).await;
    }
    job.set_phase(pb::Phase::Complete, None).await?;
    report(serde_json::json!({ "event": "completed" }));
    Ok(())
}

/// A registered job: the connection, the job token, the open log stream and the sequence
/// numbers of phases and log lines sent so far.
struct Job {
    client: Client,
    jwt: String,
    /// `namespace/name` of the build's repository.
    repository: String,
    phase_seq: i32,
    log_tx: mpsc::Sender<pb::LogMessageRequest>,
    log_replies: tonic::Streaming<pb::LogMessageResponse>,
    log_seq: i32,
}

impl Job {
    /// Connects, pings, opens the log stream and registers, as quay-builder does (it opens
    /// the log stream before it registers).
    async fn register(settings: &Settings) -> Result<Self, Error> {
        let channel = Channel::from_shared(format!("http://{}", settings.server))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let mut client = Client::new(channel);
        client.ping(pb::PingRequest {}).await?;
        let (log_tx, log_rx) = mpsc::channel::<pb::LogMessageRequest>(1);
        let log_replies = client
            .log_message(ReceiverStream::new(log_rx))
            .await?
            .into_inner();
        let pack = client
            .register_build_job(pb::BuildJobArgs {
                register_jwt: settings.token.clone(),
            })
            .await?
            .into_inner();
        let jwt = pack.job_jwt.clone();
        report(serde_json::json!({
            "event": "registered", "registration_token": settings.token, "job_token": jwt,
            "package_url": match &pack.build_pack {
                Some(pb::build_pack::BuildPack::PackageUrl(u)) => Some(u.clone()),
                _ => None,
            },
            "repository": pack.repository, "tags": pack.tag_names,
            "context": pack.context, "dockerfile_path": pack.dockerfile_path,
        }));
        Ok(Self {
            client,
            jwt,
            repository: pack.repository.clone(),
            phase_seq: 0,
            log_tx,
            log_replies,
            log_seq: 0,
        })
    }

    /// Sets the next phase; the manager must accept it with its sequence number.
    async fn set_phase(
        &mut self,
        phase: pb::Phase,
        meta: Option<pb::set_phase_request::PullMetadata>,
    ) -> Result<(), Error> {
        self.phase_seq += 1;
        let request = pb::SetPhaseRequest {
            job_jwt: self.jwt.clone(),
            sequence_number: self.phase_seq,
            phase: phase as i32,
            pull_metadata: meta,
        };
        let reply = self.client.set_phase(request).await?.into_inner();
        if !reply.success || reply.sequence_number != self.phase_seq {
            return Err(format!("phase {phase:?} rejected").into());
        }
        Ok(())
    }

    /// Sends one log line and waits for the manager to acknowledge it.
    async fn log(&mut self, line: &str) -> Result<(), Error> {
        self.log_json(&serde_json::json!({ "stream": line })).await
    }

    /// Sends one line of Docker's build-stream JSON and waits for the acknowledgement.
    async fn log_json(&mut self, line: &serde_json::Value) -> Result<(), Error> {
        self.log_seq += 1;
        let message = line.to_string();
        self.log_tx
            .send(pb::LogMessageRequest {
                job_jwt: self.jwt.clone(),
                sequence_number: self.log_seq,
                log_message: message,
                phase: "building".into(),
            })
            .await?;
        let reply = self
            .log_replies
            .message()
            .await?
            .ok_or("log stream closed")?;
        if !reply.success || reply.sequence_number != self.log_seq {
            return Err("log line rejected".into());
        }
        Ok(())
    }

    /// The pulling phase, with its metadata, then the cached-tag question (reported).
    async fn pull(&mut self) -> Result<(), Error> {
        let meta = pb::set_phase_request::PullMetadata {
            registry_url: "registry.example".into(),
            base_image: "library/alpine".into(),
            base_image_tag: "3".into(),
            pull_username: String::new(),
        };
        self.set_phase(pb::Phase::Pulling, Some(meta)).await?;
        let cached = self
            .client
            .determine_cached_tag(pb::CachedTagRequest {
                job_jwt: self.jwt.clone(),
                base_image_name: "library/alpine".into(),
                base_image_tag: "3".into(),
                base_image_id: String::new(),
            })
            .await?
            .into_inner()
            .cached_tag;
        report(serde_json::json!({ "event": "cached_tag", "tag": cached }));
        Ok(())
    }

    /// The building phase: a few log lines, then, with a `build_time`, that long between a
    /// `building` and a `built` report.
    async fn build(&mut self, build_time: Option<Duration>) -> Result<(), Error> {
        self.set_phase(pb::Phase::Building, None).await?;
        self.log("Step 1/2 : FROM scratch\n").await?;
        self.log(" ---> Running in test worker\n").await?;
        self.log("Step 2/2 : COPY hello /\n").await?;
        self.log("Successfully built 0123456789ab\n").await?;
        if let Some(build_time) = build_time {
            report(serde_json::json!({ "event": "building" }));
            tokio::time::sleep(build_time).await;
            report(serde_json::json!({ "event": "built" }));
        }
        Ok(())
    }
}

impl Job {
    /// The extra lines of `TEST_WORKER_LINES`, reported with the time they took.
    async fn send_lines(&mut self, lines: &Lines) -> Result<(), Error> {
        if lines.count == 0 {
            return Ok(());
        }
        if let Some(dir) = &lines.after {
            let go = dir.join(std::env::var("BUILD_UUID").unwrap_or_default());
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !go.exists() {
                if std::time::Instant::now() > deadline {
                    return Err(format!("{} never appeared", go.display()).into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let started = std::time::Instant::now();
        for n in 1..=lines.count {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let mut text = format!("line {n} sent-at {at} ");
            if text.len() < lines.bytes {
                text.push_str(&".".repeat(lines.bytes - text.len()));
            }
            text.push('\n');
            self.log(&text).await?;
            if !lines.every.is_zero() {
                tokio::time::sleep(lines.every).await;
            }
        }
        report(serde_json::json!({
            "event": "lines-sent", "count": lines.count,
            "ms": started.elapsed().as_millis() as u64,
        }));
        Ok(())
    }
}

/// How many workers of this build started before this one (from the report file): 0 on
/// its first attempt.
fn earlier_starts() -> usize {
    let (Ok(path), Ok(build)) = (
        std::env::var("TEST_WORKER_REPORT"),
        std::env::var("BUILD_UUID"),
    ) else {
        return 0;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let starts = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "started" && e["build_uuid"] == build.as_str())
        .count();
    // This worker's own start is in the file already.
    starts.saturating_sub(1)
}

/// Heartbeats every `every`, awaiting each reply; like quay-builder, a `false` reply is
/// retried at once and the third in a row means the job is gone. Resolves then.
fn spawn_heartbeats(
    mut client: Client,
    jwt: String,
    every: Duration,
    stop_after_first: bool,
) -> tokio::sync::oneshot::Receiver<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel(1);
        let Ok(replies) = client.heartbeat(ReceiverStream::new(rx)).await else {
            let _ = done_tx.send(());
            return;
        };
        let mut replies = replies.into_inner();
        let mut refused = 0;
        loop {
            if tx
                .send(pb::HeartbeatRequest {
                    job_jwt: jwt.clone(),
                })
                .await
                .is_err()
            {
                break;
            }
            match replies.message().await {
                Ok(Some(r)) if r.reply => refused = 0,
                Ok(Some(_)) => {
                    refused += 1;
                    if refused >= 3 {
                        break;
                    }
                    continue;
                }
                _ => break,
            }
            if stop_after_first {
                // Stay connected but silent, as a hung worker would.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(every).await;
        }
        let _ = done_tx.send(());
    });
    done_rx
}

/// Waits until the heartbeats say the job is gone (reported), then ends the run.
async fn wait_for_cancel(heartbeats: tokio::sync::oneshot::Receiver<()>) -> Result<(), Error> {
    let _ = heartbeats.await;
    report(serde_json::json!({ "event": "job-gone" }));
    Ok(())
}
