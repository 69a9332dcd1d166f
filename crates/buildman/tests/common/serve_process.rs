//! `buildman serve` as a separate process (so that a test can kill it with SIGKILL), with
//! the REST helpers bound to its address and [`SERVE_API_TOKEN`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{logs_at, submit_at};

/// The API token configs of [`Serve`] processes list in BUILDMAN_API_TOKENS.
pub const SERVE_API_TOKEN: &str = "serve-process-test-token";
/// How long a build may take to reach a phase a test waits for.
const T: Duration = Duration::from_secs(300);

/// A `buildman serve` process and where it listens.
pub struct Serve {
    pub child: Child,
    /// `http://ADDR` of its REST API.
    pub base: String,
    /// Its gRPC address.
    pub grpc: std::net::SocketAddr,
    /// Its stderr: the manager's log.
    pub log: PathBuf,
}

impl Serve {
    /// Starts `buildman serve` with `config` in `dir/name*`; waits until it listens.
    pub async fn start(dir: &Path, name: &str, config: &str) -> Serve {
        Self::start_with(dir, name, config, &[], &[]).await
    }

    /// Like [`Serve::start`], with more environment (such as BUILDMAN_LOG_FORMAT).
    pub async fn start_with_env(
        dir: &Path,
        name: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Serve {
        Self::start_with(dir, name, config, env, &[]).await
    }

    /// Like [`Serve::start`], run by `wrapper` (a command line that ends by running its
    /// arguments, such as `sh -c '...; exec "$0" "$@"'`).
    pub async fn start_under(dir: &Path, name: &str, config: &str, wrapper: &[&str]) -> Serve {
        Self::start_with(dir, name, config, &[], wrapper).await
    }

    /// [`Serve::start`] with more environment, run by `wrapper` (empty: none).
    async fn start_with(
        dir: &Path,
        name: &str,
        config: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Serve {
        let config_file = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_file, config).expect("config");
        let out = dir.join(format!("{name}.out"));
        let log = dir.join(format!("{name}.log"));
        let buildman = env!("CARGO_BIN_EXE_buildman");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(buildman);
                c
            }
            None => Command::new(buildman),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_file)
            .arg("--data-dir")
            .arg(dir.join(format!("{name}-data")))
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("buildman serve");
        // "buildman serving: REST API on http://ADDR, workers on ADDR, data in DIR"
        let deadline = Instant::now() + Duration::from_secs(60);
        let line = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("buildman serving:")) {
                break line.to_string();
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "{name} did not start: {text}\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let field = |after: &str| {
            let rest = &line[line.find(after).expect("address") + after.len()..];
            rest.split([',', ' ']).next().expect("address").to_string()
        };
        Serve {
            child,
            base: format!("http://{}", field("REST API on http://")),
            grpc: field("workers on ").parse().expect("gRPC address"),
            log,
        }
    }

    /// An authenticated request to `path`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        buildman_testkit::http_client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(SERVE_API_TOKEN)
    }

    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> Value {
        let response = self.request(reqwest::Method::GET, path).send().await;
        response.expect("request").json().await.expect("json")
    }

    /// Uploads `context` and submits a build of it to `repo`; returns the build's id.
    pub async fn submit(&self, repo: &str, context: &[u8]) -> String {
        let http = buildman_testkit::http_client();
        let view = submit_at(&http, &self.base, SERVE_API_TOKEN, repo, &[], context).await;
        view["id"].as_str().expect("id").to_string()
    }

    /// The whole log of a build.
    pub async fn logs(&self, repo: &str, id: &str) -> Vec<Value> {
        logs_at(
            &buildman_testkit::http_client(),
            &self.base,
            SERVE_API_TOKEN,
            repo,
            id,
        )
        .await
    }

    /// Polls until the build is in one of `phases`.
    pub async fn wait_phase(&self, id: &str, phases: &[&str]) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let view = self.get(&format!("/api/v1/build/{id}")).await;
            if phases.contains(&view["phase"].as_str().unwrap_or_default()) {
                return view;
            }
            assert!(Instant::now() < deadline, "build {id}: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as an operator (or Kubernetes) stops it; [`Serve::wait_exit`] waits.
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits until it exited; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
