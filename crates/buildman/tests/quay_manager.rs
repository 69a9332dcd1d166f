//! Our worker (`buildman worker`, real buildah) against a build manager built on grpcio's
//! Python server that behaves as Quay's does (`tests/quay_manager/manager.py`): it replies
//! on a stream only after receiving, so response headers come with the first reply; it
//! enforces grpcio's default keepalive policy; it acks log lines by sequence number and
//! refuses a second registration. Needs python3 with grpcio and grpcio-tools, buildah,
//! docker-registry and busybox-static (`.ci/run` installs them); a missing one fails the
//! test with the reason.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildman_testkit::{Registry, TOKEN, unique};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const REGISTER_TOKEN: &str = "registration-token-of-the-quay-test";

/// The Python manager; killed when dropped.
struct QuayManager {
    port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: PathBuf,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl QuayManager {
    /// Starts the manager for one build of `dockerfile`, pushing to `registry` as
    /// `demo/quay`, with `extra` arguments; panics with its stderr when it does not come up.
    async fn start(registry: &Registry, dockerfile: &str, extra: &[&str]) -> QuayManager {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("Dockerfile");
        std::fs::write(&context, dockerfile).unwrap();
        let stderr = dir.path().join("manager.stderr");
        let mut child = tokio::process::Command::new("python3")
            .arg(here.join("tests/quay_manager/manager.py"))
            .arg("--proto")
            .arg(here.join("../proto/proto"))
            .arg("--context")
            .arg(&context)
            .args(["--registry", &registry.addr, "--token", TOKEN])
            .args(["--repository", "demo/quay", "--tags", "latest,v1"])
            .args(["--register-token", REGISTER_TOKEN])
            .args(extra)
            // grpc-core's keepalive trace: every HTTP/2 ping the server receives.
            .env("GRPC_TRACE", "http_keepalive")
            .env("GRPC_VERBOSITY", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
        let listening = match first {
            Ok(Ok(Some(line))) => serde_json::from_str::<Value>(&line).ok(),
            _ => None,
        };
        let Some(port) = listening.as_ref().and_then(|e| e["port"].as_u64()) else {
            panic!(
                "the Python manager did not start (it needs python3 with grpcio and \
                 grpcio-tools: `python3 -m pip install grpcio grpcio-tools`, as .ci/run \
                 does); first line {listening:?}; its stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str(&line).expect("the manager prints JSON");
                sink.lock().unwrap().push(event);
            }
        });
        QuayManager {
            port: u16::try_from(port).unwrap(),
            events,
            stderr,
            dir,
            _child: child,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The manager's stderr: grpc-core's trace and any Python error.
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Runs `buildman worker` against this manager until it exits (at most `limit`);
    /// returns its exit status and stderr.
    async fn run_worker(&self, limit: Duration) -> (ExitStatus, String) {
        let work = self.dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let stderr = self.dir.path().join("worker.stderr");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_buildman"))
            .arg("worker")
            .env("TOKEN", REGISTER_TOKEN)
            .env("SERVER", format!("127.0.0.1:{}", self.port))
            .env("INSECURE", "true")
            .env("CONTAINER_RUNTIME", "buildah")
            .env("BUILDAH_ISOLATION", "chroot")
            .env("TMPDIR", &work)
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("the worker starts");
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the worker did not finish within {limit:?}\nworker:\n{}\nmanager events:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default(),
                summary(&self.events())
            ),
        };
        (status, std::fs::read_to_string(&stderr).unwrap_or_default())
    }
}

/// Events of one kind.
fn of<'a>(events: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events.iter().filter(move |e| e["event"] == kind)
}

/// The phases the manager accepted, in order.
fn phases(events: &[Value]) -> Vec<String> {
    of(events, "phase")
        .filter(|e| e["success"] == true)
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect()
}

/// The text of a log event's line (its `stream`, or `error`).
fn text(log: &Value) -> String {
    let entry: Value = serde_json::from_str(log["message"].as_str().unwrap()).unwrap();
    let text = entry["stream"].as_str().or(entry["error"].as_str());
    text.unwrap_or_default().to_string()
}

/// The text of each stored log line, by sequence number order.
fn stored_lines(events: &[Value]) -> Vec<(i64, String)> {
    let mut lines: Vec<(i64, String)> = of(events, "log")
        .filter(|e| e["stored"] == true)
        .map(|e| (e["sequence_number"].as_i64().unwrap(), text(e)))
        .collect();
    lines.sort_by_key(|(sequence, _)| *sequence);
    lines
}

/// The distinct peers (TCP connections) the manager's calls came from.
fn peers(events: &[Value]) -> Vec<String> {
    let mut peers: Vec<String> = of(events, "call")
        .map(|e| e["peer"].as_str().unwrap().to_string())
        .collect();
    peers.dedup();
    peers.sort();
    peers.dedup();
    peers
}

/// Streams that broke (error or cancellation) while the build was still running.
fn broken_streams(events: &[Value]) -> Vec<&Value> {
    of(events, "stream_end")
        .filter(|e| e["broken"] == true && e["after_final_phase"] == false)
        .collect()
}

/// Every event but the heartbeats, one a line: for failure messages.
fn summary(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["event"] != "heartbeat")
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What every build against the manager must show: the worker exited 0 after one
/// registration; the phases in order, ending in COMPLETE after the last log line; every
/// line the manager received answered `success`, a re-sent line identical to the first
/// copy; the stored lines numbered 1..=N without a gap. Returns the stored lines' text.
fn assert_complete(events: &[Value], status: ExitStatus, worker_stderr: &str) -> Vec<String> {
    let context = || {
        format!(
            "worker:\n{worker_stderr}\nmanager events:\n{}",
            summary(events)
        )
    };
    assert!(status.success(), "worker exited {status}\n{}", context());
    let registrations: Vec<&Value> = of(events, "register").collect();
    assert_eq!(registrations.len(), 1, "{}", context());
    assert_eq!(registrations[0]["accepted"], true, "{}", context());
    assert_eq!(
        phases(events),
        ["UNPACKING", "PULLING", "BUILDING", "PUSHING", "COMPLETE"],
        "{}",
        context()
    );
    let last_log = events.iter().rposition(|e| e["event"] == "log");
    let complete = events
        .iter()
        .position(|e| e["event"] == "phase" && e["phase"] == "COMPLETE");
    assert!(
        last_log < complete,
        "COMPLETE before a log line\n{}",
        context()
    );
    let stored = stored_lines(events);
    for log in of(events, "log") {
        assert_eq!(log["success"], true, "{log}\n{}", context());
        let sequence = log["sequence_number"].as_i64().unwrap();
        let first = of(events, "log").find(|e| e["sequence_number"] == sequence);
        assert_eq!(
            first.map(|e| &e["message"]),
            Some(&log["message"]),
            "re-sent line {sequence} differs\n{}",
            context()
        );
    }
    let numbers: Vec<i64> = stored.iter().map(|(n, _)| *n).collect();
    let expected: Vec<i64> = (1..=stored.len() as i64).collect();
    assert_eq!(numbers, expected, "{}", context());
    stored.into_iter().map(|(_, text)| text).collect()
}

/// The stored lines that start with `prefix`, trimmed.
fn lines_starting(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.trim_end().to_string())
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// A finished build: its registry, its manager, what the manager saw, the stored lines.
struct Built {
    registry: Registry,
    manager: QuayManager,
    events: Vec<Value>,
    lines: Vec<String>,
}

/// Builds `FROM <registry>/base` plus `RUN <run>` (made unique, so that buildah's layer
/// cache cannot skip it) with the worker against a manager started with `manager_args`,
/// within `limit`; asserts it completed ([`assert_complete`]).
async fn build(run: &str, manager_args: &[&str], limit: Duration) -> Built {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let dockerfile = format!("FROM {}/base\nRUN : {}; {run}\n", registry.addr, unique());
    let manager = QuayManager::start(&registry, &dockerfile, manager_args).await;
    let (status, worker) = manager.run_worker(limit).await;
    let events = manager.events();
    let lines = assert_complete(&events, status, &worker);
    Built {
        registry,
        manager,
        events,
        lines,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_against_quays_manager_completes_with_every_line_acknowledged() {
    let run = "echo built-against-quay > /result.txt && echo said-by-run";
    let Built {
        registry,
        events,
        lines,
        ..
    } = build(run, &[], Duration::from_secs(300)).await;

    let steps = lines_starting(&lines, "Step ");
    assert_eq!(steps.len(), 2, "{lines:#?}");
    assert!(steps[1].contains("echo built-against-quay"), "{steps:?}");
    assert_eq!(lines_starting(&lines, "said-by-run"), ["said-by-run"]);
    // Nothing broke, so everything went over the one connection.
    assert_eq!(peers(&events).len(), 1, "{}", summary(&events));
    assert!(broken_streams(&events).is_empty(), "{}", summary(&events));
    for tag in ["latest", "v1"] {
        let history = registry.image_config("demo/quay", tag).await["history"].to_string();
        assert!(
            history.contains("echo built-against-quay"),
            "{tag}: {history}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_minute_build_keeps_its_one_connection_to_quays_manager() {
    // Six minutes, mostly idle: longer than grpc-core's five-minute ping allowance.
    let run = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo tick-$i; sleep 30; done";
    let built = build(run, &[], Duration::from_secs(600)).await;
    let (events, lines, manager) = (&built.events, &built.lines, &built.manager);

    let ticks: Vec<String> = (1..=12).map(|i| format!("tick-{i}")).collect();
    assert_eq!(lines_starting(lines, "tick-"), ticks);
    // No GOAWAY and no other break: one connection, no stream ended before COMPLETE.
    assert_eq!(peers(events).len(), 1, "{}", summary(events));
    assert!(
        broken_streams(events).is_empty(),
        "{}\nmanager stderr:\n{}",
        summary(events),
        manager.stderr()
    );
    // Heartbeats went on through the whole step: some between every two ticks.
    let mut beats = 0;
    let mut seen_ticks = 0;
    for event in events {
        match event["event"].as_str() {
            Some("heartbeat") if event["reply"] == true => beats += 1,
            Some("log") if text(event).starts_with("tick-") => {
                assert!(seen_ticks == 0 || beats > 0, "no heartbeat before {event}");
                seen_ticks += 1;
                beats = 0;
            }
            _ => {}
        }
    }
    let pings = manager.stderr().matches("received ping").count();
    println!("the manager received {pings} HTTP/2 pings during the six-minute build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_from_quays_manager_is_a_reconnect_and_no_line_is_lost_or_stored_twice() {
    let run = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; \
               do echo line-$i; sleep 0.5; done";
    // The manager ends every connection with a GOAWAY after 3 s (then 1 s of grace).
    let args = ["--max-connection-age-ms", "3000"];
    let Built { events, lines, .. } = build(run, &args, Duration::from_secs(300)).await;

    assert!(
        peers(&events).len() > 1,
        "the manager ended no connection: the test tested nothing\n{}",
        summary(&events)
    );
    let received = of(&events, "log").count();
    println!(
        "{} connections, {} broken streams, {received} lines received for {} stored",
        peers(&events).len(),
        broken_streams(&events).len(),
        lines.len()
    );
    let expected: Vec<String> = (1..=20).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines_starting(&lines, "line-"), expected, "{lines:#?}");
}
