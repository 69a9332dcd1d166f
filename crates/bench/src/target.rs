//! The manager under test: one this generator starts (`buildman serve
//! --allow-bench-executor` with a generated config in a temp dir, on free ports), or one
//! already running that the caller names.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a spawned manager may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a spawned manager may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The backends a spawned manager runs on; `None` everywhere is the embedded defaults
/// (SQLite in the data dir, the in-memory orchestrator).
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// BUILDMAN_DATABASE_URL (e.g. `postgres://...`). Secret: never printed.
    pub database_url: Option<String>,
    /// ORCHESTRATOR REDIS_HOST and REDIS_PORT, as `host:port`.
    pub redis: Option<String>,
    /// REDIS_PASSWORD. Secret: never printed.
    pub redis_password: Option<String>,
}

impl Backends {
    /// `sqlite + memory`, `postgres + redis`, ... (for reports; no secrets).
    pub fn label(&self) -> String {
        let store = match self.database_url.as_deref() {
            None => "sqlite (embedded)",
            Some(u) if u.starts_with("sqlite:") => "sqlite",
            Some(u) if u.starts_with("postgres") => "postgresql",
            Some(_) => "database URL",
        };
        let orchestrator = if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        };
        format!("{store} + {orchestrator} orchestrator")
    }
}

/// What a spawned manager is started with.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// The buildman binary.
    pub buildman: PathBuf,
    /// BENCH_CALLBACK_URL.
    pub callback_url: String,
    /// ALLOWED_WORKER_COUNT.
    pub allowed_worker_count: u32,
    /// Store and orchestrator.
    pub backends: Backends,
    /// Keep the temp dir (config, data, manager log) after the run.
    pub keep_dir: bool,
}

/// The buildman binary next to this one (`target/release/buildman` beside
/// `target/release/buildman-bench`).
pub fn buildman_next_to_me() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding this binary")?;
    let dir = me.parent().context("this binary has no directory")?;
    let candidate = dir.join("buildman");
    if !candidate.is_file() {
        bail!(
            "no buildman binary next to {} (build it with `cargo build --release -p buildman`, or pass --buildman PATH)",
            me.display()
        );
    }
    Ok(candidate)
}

/// The per-token request rate the bench's manager allows: the load generator submits and
/// polls with one token, far beyond what a user's token is allowed (BUILDMAN_LIMITS).
const BENCH_RATE: u32 = 1_000_000;
/// Connections per listener the bench's manager accepts: 10,000 workers with a connection
/// each, and room for the generator's own.
const BENCH_CONNECTIONS: u32 = 20_000;

/// The manager's config for a bench run.
pub fn config_yaml(options: &SpawnOptions, data_dir: &Path) -> String {
    let mut yaml = format!(
        "FEATURE_BUILD_SUPPORT: true\n\
         SERVER_HOSTNAME: bench.local\n\
         BUILDMAN_DATA_DIR: {data}\n\
         BUILDMAN_LIMITS: {{RATE_PER_SECOND: {rate}, RATE_BURST: {rate}, MAX_CONNECTIONS: {conns}}}\n",
        data = data_dir.display(),
        rate = BENCH_RATE,
        conns = BENCH_CONNECTIONS,
    );
    if let Some(url) = &options.backends.database_url {
        yaml.push_str(&format!("BUILDMAN_DATABASE_URL: {}\n", yaml_string(url)));
    }
    yaml.push_str(&format!(
        "BUILD_MANAGER:\n- ephemeral\n- ALLOWED_WORKER_COUNT: {}\n",
        options.allowed_worker_count
    ));
    if let Some(redis) = &options.backends.redis {
        let (host, port) = redis.rsplit_once(':').unwrap_or((redis, "6379"));
        yaml.push_str(&format!(
            "  ORCHESTRATOR:\n    REDIS_HOST: {}\n    REDIS_PORT: {port}\n",
            yaml_string(host)
        ));
        if let Some(password) = &options.backends.redis_password {
            yaml.push_str(&format!("    REDIS_PASSWORD: {}\n", yaml_string(password)));
        }
    }
    // SETUP_TIME bounds how long a started job may wait for its worker to register; the
    // generator registers within milliseconds unless the machine is saturated.
    yaml.push_str(&format!(
        "  EXECUTORS:\n  - EXECUTOR: bench\n    NAME: bench\n    SETUP_TIME: 120\n    BENCH_CALLBACK_URL: {}\n",
        yaml_string(&options.callback_url)
    ));
    yaml
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The manager the scenarios run against.
pub struct Manager {
    /// Base URL of the REST API.
    pub api: String,
    /// A REST API token.
    pub token: String,
    /// Its process id, when known (CPU and memory are read from /proc).
    pub pid: Option<u32>,
    /// Where a spawned manager's stderr goes.
    pub log: Option<PathBuf>,
    /// What it runs on, for reports.
    pub backends: String,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Manager {
    /// A manager that is already running (its config must name this generator's callback
    /// URL in a bench executor).
    pub fn external(api: &str, token: &str, pid: Option<u32>) -> Manager {
        Manager {
            api: api.trim_end_matches('/').to_string(),
            token: token.to_string(),
            pid,
            log: None,
            backends: "as configured".to_string(),
            child: None,
            dir: None,
        }
    }

    /// Starts `buildman serve --allow-bench-executor` on free loopback ports with a
    /// generated config, and waits until it serves.
    pub async fn spawn(options: &SpawnOptions) -> anyhow::Result<Manager> {
        let dir = tempfile::Builder::new()
            .prefix("buildman-bench-")
            .tempdir()
            .context("creating a temp dir for the manager")?;
        let data = dir.path().join("data");
        let log = dir.path().join("manager.log");
        let mut child = serve(options, dir.path(), &data, &log)?;
        let stdout = child.stdout.take().context("the manager's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let api = wait_serving(&mut child, &mut lines, &log).await?;
        // Keep draining stdout so the manager never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token = std::fs::read_to_string(data.join("admin-token"))
            .context("reading the manager's admin token")?
            .trim()
            .to_string();
        let dir = if options.keep_dir {
            let kept = dir.keep();
            eprintln!("manager files kept in {}", kept.display());
            None
        } else {
            Some(dir)
        };
        Ok(Manager {
            api,
            token,
            pid: child.id(),
            log: Some(log),
            backends: options.backends.label(),
            child: Some(child),
            dir,
        })
    }

    /// Stops a spawned manager (SIGTERM, then SIGKILL); a no-op for an external one.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child process by its id.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        drop(self.dir.take());
    }
}

/// Writes the config into `dir` and starts `buildman serve` on it, with its data in `data`,
/// stdout piped and stderr into `log`.
fn serve(options: &SpawnOptions, dir: &Path, data: &Path, log: &Path) -> anyhow::Result<Child> {
    let config = dir.join("config.yaml");
    std::fs::write(&config, config_yaml(options, data))
        .with_context(|| format!("writing {}", config.display()))?;
    let stderr =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(&options.buildman)
        .arg("serve")
        .arg("--allow-bench-executor")
        .arg("--config")
        .arg(&config)
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", options.buildman.display()))
}

/// The REST API's base URL, from the line the manager prints once it serves; an error
/// with the end of its `log` if it exits first, or after [`START_TIMEOUT`].
async fn wait_serving(
    child: &mut Child,
    stdout: &mut Lines<BufReader<ChildStdout>>,
    log: &Path,
) -> anyhow::Result<String> {
    let serving = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = stdout.next_line().await? {
            if let Some(rest) = line.strip_prefix("buildman serving: REST API on ") {
                return Ok(Some(rest.to_string()));
            }
        }
        Ok::<_, std::io::Error>(None)
    })
    .await;
    match serving {
        Ok(Ok(Some(rest))) => Ok(rest
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()),
        Ok(Ok(None)) | Ok(Err(_)) => {
            let status = child.wait().await.ok();
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the manager exited before serving ({}):\n{}",
                status.map_or("unknown status".into(), |s| s.to_string()),
                tail.join("\n")
            );
        }
        Err(_) => bail!(
            "the manager did not start serving within {START_TIMEOUT:?}; see {}",
            log.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_backends() {
        let mut options = SpawnOptions {
            buildman: "buildman".into(),
            callback_url: "http://127.0.0.1:9/worker".into(),
            allowed_worker_count: 64,
            backends: Backends::default(),
            keep_dir: false,
        };
        let yaml = config_yaml(&options, Path::new("/tmp/d"));
        assert!(yaml.contains("ALLOWED_WORKER_COUNT: 64"), "{yaml}");
        assert!(yaml.contains("EXECUTOR: bench"), "{yaml}");
        assert!(
            !yaml.contains("REDIS") && !yaml.contains("DATABASE"),
            "{yaml}"
        );
        options.backends = Backends {
            database_url: Some("postgres://u:p@127.0.0.1/b".into()),
            redis: Some("127.0.0.1:6380".into()),
            redis_password: None,
        };
        let yaml = config_yaml(&options, Path::new("/tmp/d"));
        assert!(
            yaml.contains("BUILDMAN_DATABASE_URL: \"postgres://u:p@127.0.0.1/b\""),
            "{yaml}"
        );
        assert!(
            yaml.contains("REDIS_HOST: \"127.0.0.1\"\n    REDIS_PORT: 6380"),
            "{yaml}"
        );
        assert_eq!(options.backends.label(), "postgresql + redis orchestrator");
    }
}
