//! A manager started in-process on 127.0.0.1 with free ports, a temp data dir, and local
//! executors that run the scripted test worker; plus HTTP and gRPC helpers.

// Each test binary uses a part of this module.
#![allow(dead_code, unused_imports)]

mod archive;
mod cluster;
pub mod git_server;
mod proxy;
mod serve_process;

pub use archive::tar_gz;
pub use cluster::{Cluster, redis_command};
pub use proxy::Proxy;
pub use serve_process::{SERVE_API_TOKEN, Serve};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildman::serve::{self, Running, ServeOptions};
use buildman_api::{CreateBuild, FileDrop, LogsQuery, NewFileDrop, paths};
use buildman_core::config::Config;
use buildman_manager::Timings;
use serde_json::Value;

/// The scripted worker binary built with these tests.
pub const TEST_WORKER: &str = env!("CARGO_BIN_EXE_buildman-test-worker");

/// Short life-cycle delays so deadlines pass in seconds, not minutes.
pub fn fast_timings() -> Timings {
    Timings {
        backstop_poll: Duration::from_secs(5),
        heartbeat_ttl: Duration::from_secs(60),
        heartbeat_lease: Duration::from_secs(300),
        no_executor_retry: Duration::from_millis(300),
        requeue_delay: Duration::from_millis(300),
        stop_timeout: Duration::from_secs(10),
        ..Timings::default()
    }
}

/// A running manager and what tests need to talk to it.
pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub grpc: String,
    pub token: String,
    pub http: reqwest::Client,
    pub report: PathBuf,
}

/// A `BUILD_MANAGER` block around `executors` (YAML list items, indented by 2).
pub fn config_yaml(extra_manager_keys: &str, executors: &str) -> String {
    format!(
        "FEATURE_BUILD_SUPPORT: true\nSERVER_HOSTNAME: registry.test\nBUILD_MANAGER:\n- ephemeral\n- {extra_manager_keys}\n  EXECUTORS:\n{executors}"
    )
}

/// One popen executor running the test worker (under `name`, via a symlink so reports
/// tell which executor ran it).
pub fn popen(dir: &Path, name: &str, extra: &str) -> String {
    let link = dir.join(format!("worker-{name}"));
    if !link.exists() {
        std::os::unix::fs::symlink(TEST_WORKER, &link).expect("symlink to the test worker");
    }
    format!(
        "  - EXECUTOR: popen\n    NAME: {name}\n    BUILDER_BINARY_LOCATION: {}\n{extra}",
        link.display()
    )
}

/// One popen executor `local` running the test worker with `env` (`NAME=value ...`) set,
/// through a script (popen workers get a clean environment; `buildman serve` processes
/// cannot pass theirs on), reporting to `dir/report.jsonl`.
pub fn test_worker_script(dir: &Path, env: &str) -> String {
    let script = dir.join("worker.sh");
    let text = format!(
        "#!/bin/sh\nexport {env} TEST_WORKER_REPORT={}\nexec {TEST_WORKER}\n",
        dir.join("report.jsonl").display()
    );
    std::fs::write(&script, text).expect("worker script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    format!(
        "  - EXECUTOR: popen\n    NAME: local\n    BUILDER_BINARY_LOCATION: {}\n",
        script.display()
    )
}

/// One popen executor running the real worker (`buildman worker`, through a wrapper script
/// because BUILDER_BINARY_LOCATION names a program without arguments).
pub fn real_worker(dir: &Path, extra: &str) -> String {
    let script = dir.join("buildman-worker");
    if !script.exists() {
        let buildman = env!("CARGO_BIN_EXE_buildman");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nexec {buildman} worker \"$@\"\n"),
        )
        .expect("wrapper");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    format!(
        "  - EXECUTOR: popen\n    NAME: real\n    BUILDER_BINARY_LOCATION: {}\n{extra}",
        script.display()
    )
}

impl TestServer {
    /// Starts a manager with `config` (YAML), the test worker playing `scenario`.
    pub async fn start(
        config: impl FnOnce(&Path) -> String,
        scenario: &str,
        timings: Timings,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config, scenario, timings).await
    }

    /// Like [`TestServer::start`], with more environment for the test worker (its knobs,
    /// such as `TEST_WORKER_BUILD_MS`).
    pub async fn start_with_env(
        config: impl FnOnce(&Path) -> String,
        scenario: &str,
        timings: Timings,
        worker_env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in_with_env(dir, config, scenario, timings, worker_env).await
    }

    /// Like [`TestServer::start`] on an existing data dir (to restart a manager).
    pub async fn start_in(
        dir: tempfile::TempDir,
        config: impl FnOnce(&Path) -> String,
        scenario: &str,
        timings: Timings,
    ) -> Self {
        Self::start_in_with_env(dir, config, scenario, timings, &[]).await
    }

    /// Like [`TestServer::start_in`], with more environment for the test worker.
    pub async fn start_in_with_env(
        dir: tempfile::TempDir,
        config: impl FnOnce(&Path) -> String,
        scenario: &str,
        timings: Timings,
        worker_env: &[(&str, &str)],
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let yaml = config(dir.path());
        let loaded =
            Config::parse(&yaml).unwrap_or_else(|e| panic!("test config invalid: {e:?}\n{yaml}"));
        let report = dir.path().join("report.jsonl");
        let mut options = ServeOptions::from_config(loaded.config).expect("options");
        options.data_dir = dir.path().join("data");
        options.http_listen = "127.0.0.1:0".parse().expect("addr");
        options.grpc_listen = "127.0.0.1:0".parse().expect("addr");
        options.timings = timings;
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        options.worker_env = vec![
            ("TMPDIR".into(), work.display().to_string()),
            ("TEST_WORKER_SCENARIO".into(), scenario.into()),
            ("TEST_WORKER_REPORT".into(), report.display().to_string()),
            ("TEST_WORKER_HEARTBEAT_MS".into(), "200".into()),
        ];
        options.worker_env.extend(
            worker_env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string())),
        );
        let running = serve::start(options.clone()).await.expect("manager starts");
        let token = std::fs::read_to_string(options.data_dir.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_string();
        TestServer {
            base: format!("http://{}", running.http_addr),
            grpc: format!("http://{}", running.grpc_addr),
            running: Some(running),
            dir,
            token,
            http: reqwest::Client::new(),
            report,
        }
    }

    /// Stops the manager, keeping its data dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.dir
    }

    pub fn manager(&self) -> &buildman_manager::Manager {
        &self.running.as_ref().expect("running").manager
    }

    /// An authenticated request to `path` (one of [`buildman_api::paths`]).
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Uploads `bytes` through the file drop; returns the file id.
    pub async fn upload(&self, bytes: &[u8]) -> String {
        upload_at(&self.http, &self.base, &self.token, bytes).await
    }

    /// Submits a build of an uploaded lone Dockerfile; returns the build view.
    pub async fn submit(&self, repo: &str, tags: &[&str]) -> Value {
        self.submit_bytes(repo, tags, b"FROM scratch\nCOPY hello /\n")
            .await
    }

    /// Submits a build of an uploaded context (an archive or a Dockerfile) to `repo`
    /// (`namespace/name`).
    pub async fn submit_bytes(&self, repo: &str, tags: &[&str], context: &[u8]) -> Value {
        submit_at(&self.http, &self.base, &self.token, repo, tags, context).await
    }

    /// Asks to cancel a build (DELETE on Quay's build resource).
    pub async fn cancel(&self, repo: &str, id: &str) -> reqwest::Response {
        let (namespace, name) = split(repo);
        self.req(reqwest::Method::DELETE, &paths::build(namespace, name, id))
            .send()
            .await
            .expect("cancel")
    }

    /// The build view.
    pub async fn build(&self, id: &str) -> Value {
        self.req(reqwest::Method::GET, &paths::build_by_id(id))
            .send()
            .await
            .expect("get build")
            .json()
            .await
            .expect("build view")
    }

    /// Polls until the build's phase is one of `phases`; panics after `within`.
    pub async fn wait_phase(&self, id: &str, phases: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let view = self.build(id).await;
            if phases.contains(&view["phase"].as_str().unwrap_or("")) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "build {id} stuck in {} (wanted {phases:?})",
                view["phase"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the build's queue item until `settled` holds and returns it (`None`: out of
    /// the queue); panics after `within`. A job's end marks the build before it settles the
    /// item, so a final phase alone does not say the item is settled yet.
    pub async fn wait_queue(
        &self,
        id: &str,
        settled: impl Fn(&Option<buildman_store::QueueState>) -> bool,
        within: Duration,
    ) -> Option<buildman_store::QueueState> {
        let deadline = Instant::now() + within;
        let build = id.parse().expect("a build id");
        loop {
            let state = (self.manager().builds().queue_state(build).await).expect("queue state");
            if settled(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "build {id}'s queue item never settled: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole log of a build, page after page from 0.
    pub async fn logs(&self, repo: &str, id: &str) -> Vec<Value> {
        logs_at(&self.http, &self.base, &self.token, repo, id).await
    }

    /// The worker reports so far, one JSON object per event.
    pub fn reports(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.report)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a worker report matching `pred`.
    pub async fn wait_report(&self, pred: impl Fn(&Value) -> bool, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.reports().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no such worker report; got {:?}",
                self.reports()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Uploads `bytes` through the file drop of the REST API at `base`; returns the file id.
pub async fn upload_at(http: &reqwest::Client, base: &str, token: &str, bytes: &[u8]) -> String {
    let drop: FileDrop = http
        .post(format!("{base}{}", paths::FILEDROP))
        .bearer_auth(token)
        .json(&NewFileDrop::default())
        .send()
        .await
        .expect("filedrop")
        .json()
        .await
        .expect("filedrop json");
    let put = http
        .put(format!("{base}{}", paths::file(&drop.file_id)))
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("upload");
    assert!(put.status().is_success(), "upload: {}", put.status());
    drop.file_id
}

/// Submits a build of an uploaded context to the REST API at `base`; returns the view.
pub async fn submit_at(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    repo: &str,
    tags: &[&str],
    context: &[u8],
) -> Value {
    let file_id = upload_at(http, base, token, context).await;
    let request = CreateBuild {
        docker_tags: Some(tags.iter().map(|t| t.to_string()).collect()),
        ..CreateBuild::uploaded(file_id)
    };
    let (namespace, name) = split(repo);
    let resp = http
        .post(format!("{base}{}", paths::builds(namespace, name)))
        .bearer_auth(token)
        .json(&request)
        .send()
        .await
        .expect("create build");
    assert_eq!(
        resp.status(),
        201,
        "create build: {}",
        resp.text().await.unwrap_or_default()
    );
    resp.json().await.expect("build view")
}

/// The phases of a build that ran once and completed.
pub const COMPLETE_RUN: [&str; 6] = [
    "build-scheduled",
    "unpacking",
    "pulling",
    "building",
    "pushing",
    "complete",
];

/// The whole log of a build from the REST API at `base`, page after page from 0.
pub async fn logs_at(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    repo: &str,
    id: &str,
) -> Vec<Value> {
    let mut logs = Vec::new();
    loop {
        let start = logs.len();
        let (namespace, name) = split(repo);
        let page: Value = http
            .get(format!("{base}{}", paths::build_logs(namespace, name, id)))
            .query(&LogsQuery {
                start: Some(start as u64),
                follow: false,
            })
            .bearer_auth(token)
            .send()
            .await
            .expect("logs")
            .json()
            .await
            .expect("logs json");
        let entries = page["logs"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or_default();
        logs.extend(entries.iter().cloned());
        if entries.is_empty() || logs.len() as u64 >= total {
            return logs;
        }
    }
}

/// `namespace/name` split in two.
pub fn split(repo: &str) -> (&str, &str) {
    repo.split_once('/')
        .unwrap_or_else(|| panic!("{repo:?} is not namespace/name"))
}

/// The phases recorded in a log, in order.
pub fn phases(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .filter(|e| e["type"] == "phase")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

/// True while a process exists and is not a zombie.
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Waits until a process is gone; panics after `within`.
pub async fn wait_gone(pid: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "worker process {pid} still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pids of the `buildman worker` processes whose environment names the build
/// (quay-builder's BUILD_UUID).
pub fn workers_of(uuid: &str) -> Vec<u32> {
    let wanted = format!("BUILD_UUID={uuid}");
    (all_pids().into_iter())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                args.get(1) == Some(&b"worker".as_slice()) && args[0].ends_with(b"buildman")
            })
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
        })
        .collect()
}

/// The pids of every process now.
fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    (entries.flatten())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// The processes descended from `pid` now (children, their children, ...), with their
/// command lines (arguments joined by spaces).
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let pids = all_pids();
    let mut found = vec![pid];
    let mut out = Vec::new();
    while let Some(parent) = found.pop() {
        for &p in &pids {
            if parent_of(p) == Some(parent) {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                out.push((p, cmd.trim_end().to_string()));
                found.push(p);
            }
        }
    }
    out
}
