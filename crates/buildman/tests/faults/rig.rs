//! The fault suite's deployment: one PostgreSQL database, one Redis, `buildman serve`
//! managers on both (manager `a` reaches Redis through a proxy the test can cut), and real
//! workers (`buildman worker`, buildah) that dial their manager through a proxy the test
//! can point elsewhere. The build's context is served over HTTP by the test, so any
//! manager's worker can fetch it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// The heartbeat TTL of the suite's managers (BUILDMAN_HEARTBEAT_TTL).
pub const TTL: Duration = Duration::from_secs(4);
/// How many output lines the build prints, a quarter of a second apart.
pub const LINES: usize = 40;
/// The repository the suite builds into.
pub const REPO: &str = "faults/demo";
/// How long a build may take to get anywhere a step waits for.
pub const T: Duration = Duration::from_secs(240);

/// The lines, one at a time (awk's `system` runs `/bin/sh`, busybox here).
const OUTPUT: &str = r#"BEGIN {
    for (i = 1; i <= 40; i++) { print "line " i; fflush(); system("/bin/busybox sleep 0.25") }
}
"#;

/// One scenario's deployment.
pub struct Rig {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
    /// Between the workers and a manager.
    pub workers: Proxy,
    /// Between manager `a` and Redis.
    pub redis_link: Proxy,
    /// Where the context is served.
    context_url: String,
    /// Managers started so far, by name.
    pub managers: Vec<(String, Serve)>,
}

impl Rig {
    /// The backends, the proxies and the context server; no manager yet.
    pub async fn start() -> Rig {
        let cluster = Cluster::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("work")).expect("work dir");
        let workers = Proxy::start().await;
        let redis_link = Proxy::start().await;
        redis_link
            .target
            .send_replace(Some(([127, 0, 0, 1], cluster.redis.port()).into()));
        let context_url = serve_bytes(context()).await;
        Rig {
            cluster,
            dir,
            workers,
            redis_link,
            context_url,
            managers: Vec::new(),
        }
    }

    /// Starts manager `name` (`a` talks to Redis through [`Rig::redis_link`]) and points the
    /// workers' proxy at it when `workers_here`.
    pub async fn start_manager(&mut self, name: &str, workers_here: bool) {
        let redis_port = if name == "a" {
            self.redis_link.port
        } else {
            self.cluster.redis.port()
        };
        let manager_keys = format!(
            "ALLOWED_WORKER_COUNT: 2\n  ORCHESTRATOR_PREFIX: {}\n  ORCHESTRATOR: {{REDIS_HOST: 127.0.0.1, REDIS_PORT: {redis_port}}}",
            self.cluster.prefix
        );
        let config = format!(
            "BUILDMAN_DRAIN_SECONDS: 1\nBUILDMAN_HEARTBEAT_TTL: {}\nBUILDMAN_ORPHAN_REAP_INTERVAL: 2\n{}BUILDMAN_HOSTNAME: 127.0.0.1:{}\nBUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n{}",
            TTL.as_secs(),
            self.cluster.shared_keys(),
            self.workers.port,
            config_yaml(
                &manager_keys,
                &format!(
                    "  - EXECUTOR: popen\n    NAME: real\n    BUILDER_BINARY_LOCATION: {}\n",
                    self.worker_script().display()
                )
            )
        );
        let serve = Serve::start(self.dir.path(), name, &config).await;
        if workers_here {
            self.workers.target.send_replace(Some(serve.grpc));
        }
        self.managers.push((name.to_string(), serve));
    }

    /// Manager `name`.
    pub fn manager(&mut self, name: &str) -> &mut Serve {
        let found = self.managers.iter_mut().find(|(n, _)| n == name);
        &mut found.expect("no such manager").1
    }

    /// Submits the suite's build through manager `name`; returns its id.
    pub async fn submit(&mut self, name: &str) -> String {
        let url = self.context_url.clone();
        let (namespace, repository) = split(REPO);
        let response = self
            .manager(name)
            .request(
                reqwest::Method::POST,
                &buildman_api::paths::builds(namespace, repository),
            )
            .json(&serde_json::json!({ "archive_url": url }))
            .send()
            .await
            .expect("create build");
        assert_eq!(response.status(), 201, "create build");
        let view: Value = response.json().await.expect("view");
        view["id"].as_str().expect("id").to_string()
    }

    /// The workers started so far, from their wrapper's records: (process group, build,
    /// exit status once it exited).
    pub fn workers(&self) -> Vec<(u64, String, Option<String>)> {
        let text = std::fs::read_to_string(self.runs()).unwrap_or_default();
        let mut workers: Vec<(u64, String, Option<String>)> = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["start", pid, build] => {
                    workers.push((pid.parse().expect("pid"), build.to_string(), None))
                }
                ["end", pid, code] => {
                    let pid: u64 = pid.parse().expect("pid");
                    if let Some(w) = workers.iter_mut().find(|w| w.0 == pid) {
                        w.2 = Some(code.to_string());
                    }
                }
                _ => {}
            }
        }
        workers
    }

    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// The worker, through a wrapper (the leader of the worker's process group) that records
    /// its start and exit.
    fn worker_script(&self) -> PathBuf {
        let script = self.dir.path().join("worker.sh");
        let runs = self.runs();
        let text = format!(
            "#!/bin/sh\nexport TMPDIR={}\necho \"start $$ $BUILD_UUID\" >> {runs}\n{} worker\necho \"end $$ $?\" >> {runs}\n",
            self.dir.path().join("work").display(),
            env!("CARGO_BIN_EXE_buildman"),
            runs = runs.display(),
        );
        std::fs::write(&script, text).expect("wrapper");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        script
    }
}

/// The build's context: busybox, and a Dockerfile whose RUN prints [`LINES`] lines, after
/// copying a file of its own so that no earlier run's layer cache skips it.
fn context() -> Vec<u8> {
    let busybox = std::fs::read(buildman_testkit::busybox()).expect("busybox");
    let dockerfile =
        b"FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY out.awk /out.awk\n\
        COPY nonce /nonce\nRUN [\"/bin/busybox\", \"awk\", \"-f\", \"/out.awk\"]\n";
    let nonce = buildman_contexts::new_id();
    tar_gz(
        &[
            ("Dockerfile", dockerfile),
            ("busybox", &busybox),
            ("out.awk", OUTPUT.as_bytes()),
            ("nonce", nonce.as_bytes()),
        ],
        &[],
    )
}

/// Serves `bytes` to every GET on a free port (HTTP/1.0, one answer per connection);
/// returns the URL.
async fn serve_bytes(bytes: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/context.tar.gz",
        listener.local_addr().expect("addr")
    );
    let bytes = std::sync::Arc::new(bytes);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&bytes).await;
            });
        }
    });
    url
}

/// The build's phase and whole log through the manager at `base`; `None` while it cannot
/// answer (its store is down, say).
pub async fn try_view(base: &str, id: &str) -> Option<(String, Vec<Value>)> {
    let http = buildman_testkit::http_client();
    let get = |path: String| {
        http.get(format!("{base}{path}"))
            .bearer_auth(SERVE_API_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
    };
    let view = get(format!("/api/v1/build/{id}")).await.ok()?;
    if !view.status().is_success() {
        return None;
    }
    let view: Value = view.json().await.ok()?;
    let (namespace, repository) = split(REPO);
    let mut logs = Vec::new();
    loop {
        let path = format!(
            "{}?start={}",
            buildman_api::paths::build_logs(namespace, repository, id),
            logs.len()
        );
        let page = get(path).await.ok()?;
        if !page.status().is_success() {
            return None;
        }
        let page: Value = page.json().await.ok()?;
        let entries = page["logs"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or_default();
        logs.extend(entries.iter().cloned());
        if entries.is_empty() || logs.len() as u64 >= total {
            break;
        }
    }
    Some((view["phase"].as_str()?.to_string(), logs))
}

/// The numbers of the build's output lines in the order stored.
pub fn line_numbers(logs: &[Value]) -> Vec<usize> {
    logs.iter()
        .filter_map(|e| e["message"].as_str())
        .filter_map(|m| m.strip_prefix("line "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

impl Rig {
    /// Waits until manager `name` has stored at least `n` output lines of build `id`.
    pub async fn wait_lines(&mut self, name: &str, id: &str, n: usize) {
        let base = self.manager(name).base.clone();
        let deadline = Instant::now() + T;
        loop {
            let mut tail = String::new();
            if let Some((phase, logs)) = try_view(&base, id).await {
                if line_numbers(&logs).len() >= n {
                    return;
                }
                let messages = logs.iter().filter_map(|e| e["message"].as_str());
                let skip = logs.len().saturating_sub(20);
                tail = messages.skip(skip).collect::<Vec<_>>().join("\n");
                // A build that ended before printing will not print: say why at once.
                assert!(
                    !["complete", "error", "internalerror", "cancelled"].contains(&phase.as_str()),
                    "build {id} ended {phase} before {n} output lines; its log ends:\n{tail}\n{}",
                    logs_of(self)
                );
            }
            assert!(
                Instant::now() < deadline,
                "build {id}: no output stored; its log ends:\n{tail}\n{}",
                logs_of(self)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Kills a worker's whole process group with SIGKILL.
pub fn kill_group(pgid: u64) {
    let pgid = nix::unistd::Pid::from_raw(pgid as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
}

/// The manager's log, for failure messages.
pub fn logs_of(rig: &Rig) -> String {
    (rig.managers.iter())
        .map(|(name, s)| format!("--- {name}\n{}", tail(&s.log_text())))
        .collect()
}

fn tail(text: &str) -> &str {
    let cut = text.len().saturating_sub(6000);
    let cut = (cut..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[cut..]
}
