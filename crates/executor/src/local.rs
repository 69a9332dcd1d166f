//! The local-process executor (Quay's `popen`): runs the worker binary as a child of the
//! manager, in its own process group so that stopping it also stops whatever it started
//! (buildah, podman, their helpers).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use buildman_core::BuildId;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::{
    Executor, ExecutorError, FailureReports, OwnedWorker, Result, StartRequest, WorkerFailure,
};

/// How many of a worker's last stderr lines a failure report quotes.
const FAILURE_TAIL: usize = 5;

/// How long a killed group may take to disappear before `stop` gives up waiting for it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How to run the worker binary and what to tell it.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// The worker binary (BUILDER_BINARY_LOCATION).
    pub program: PathBuf,
    /// Arguments before any the executor adds, e.g. `["worker"]` when the program is buildman.
    pub args: Vec<String>,
    /// CONTAINER_RUNTIME for the worker (docker or podman); unset when `None`.
    pub container_runtime: Option<String>,
    /// BUILDAH_ISOLATION for the worker.
    pub buildah_isolation: String,
    /// INSECURE for the worker (also set when the request asks for it).
    pub insecure: bool,
    /// Sets DEBUG=true for the worker.
    pub debug: bool,
    /// HTTP_PROXY for the worker.
    pub http_proxy: Option<String>,
    /// HTTPS_PROXY for the worker.
    pub https_proxy: Option<String>,
    /// NO_PROXY for the worker.
    pub no_proxy: Option<String>,
    /// More variables, set last so they override the ones above.
    pub extra_env: Vec<(String, String)>,
    /// How long a worker has to exit after SIGTERM before its group gets SIGKILL.
    pub stop_grace: Duration,
}

impl Default for LocalSettings {
    fn default() -> Self {
        Self {
            program: PathBuf::from("/usr/local/bin/quay-builder"),
            args: Vec::new(),
            container_runtime: None,
            buildah_isolation: "chroot".to_owned(),
            insecure: false,
            debug: false,
            http_proxy: None,
            https_proxy: None,
            no_proxy: None,
            extra_env: Vec::new(),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// Runs workers as local child processes, one process group each.
pub struct LocalExecutor {
    settings: LocalSettings,
    children: Arc<Mutex<HashMap<String, Running>>>,
    /// Every exit of a worker is reported: the manager acts on those of workers that had
    /// not registered yet (a worker that cannot start fails its attempt at once).
    exits: mpsc::Sender<WorkerFailure>,
    exits_taken: FailureReports,
}

/// A live child, as `stop` needs it; the reaper task owns the `Child` itself.
#[derive(Clone)]
struct Running {
    build_id: BuildId,
    pgid: Pid,
    started_at: SystemTime,
    /// Becomes true once the reaper has seen the child exit and removed it from the map.
    exited: watch::Receiver<bool>,
}

impl LocalExecutor {
    /// An executor that runs `settings.program`.
    pub fn new(settings: LocalSettings) -> Self {
        let (exits, exits_taken) = FailureReports::channel();
        Self {
            settings,
            children: Arc::default(),
            exits,
            exits_taken,
        }
    }

    fn children(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        lock(&self.children)
    }

    /// The worker's whole environment: nothing of the manager's leaks in except what a
    /// worker needs to find its tools and container engine.
    fn environment(&self, request: &StartRequest) -> Vec<(OsString, OsString)> {
        let s = &self.settings;
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let mut set = |k: &str, v: &str| env.push((k.into(), v.into()));
        set("TOKEN", &request.token);
        set("BUILD_UUID", &request.build_id.to_string());
        set("SERVER", &request.server);
        set("REGISTRY_HOSTNAME", &request.registry_hostname);
        if let Some(runtime) = &s.container_runtime {
            set("CONTAINER_RUNTIME", runtime);
        }
        set("BUILDAH_ISOLATION", &s.buildah_isolation);
        let insecure = s.insecure || request.insecure;
        set("INSECURE", if insecure { "true" } else { "false" });
        if s.debug {
            set("DEBUG", "true");
        }
        for (name, value) in [
            ("HTTP_PROXY", &s.http_proxy),
            ("HTTPS_PROXY", &s.https_proxy),
            ("NO_PROXY", &s.no_proxy),
        ] {
            if let Some(value) = value {
                set(name, value);
            }
        }
        for name in ["DOCKER_HOST", "PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                env.push((name.into(), value));
            }
        }
        for (name, value) in &s.extra_env {
            env.push((name.into(), value.into()));
        }
        env
    }
}

fn lock(children: &Mutex<HashMap<String, Running>>) -> MutexGuard<'_, HashMap<String, Running>> {
    // Every critical section is a single map operation, so a poisoned map is still consistent.
    children.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Signals a process group; a group that no longer exists is not an error.
fn signal_group(pgid: Pid, signal: Signal) -> Result<()> {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(err) => Err(ExecutorError::Failed(format!(
            "sending {signal} to process group {pgid}: {err}"
        ))),
    }
}

/// The last lines a worker wrote to stderr, quoted when it exits.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// Forwards a worker's output, line by line, to the manager's log, keeping the last lines
/// in `tail` when given one.
async fn forward_output(
    build_id: BuildId,
    stream: &'static str,
    pipe: impl AsyncRead + Unpin,
    tail: Option<Tail>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => return,
            Ok(_) => {
                // Lossy: a worker printing binary garbage must not lose the rest of its log.
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                tracing::info!(build_id = %build_id, stream, "{line}");
                if let Some(tail) = &tail {
                    let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                    if tail.len() == FAILURE_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_string());
                }
            }
            Err(err) => {
                tracing::warn!(build_id = %build_id, stream, "reading worker output: {err}");
                return;
            }
        }
    }
}

/// What `reap` needs besides the child: where to report and whom to tell.
struct Exit {
    build_id: BuildId,
    execution_id: String,
    pgid: Pid,
    children: Arc<Mutex<HashMap<String, Running>>>,
    exited: watch::Sender<bool>,
    report: mpsc::Sender<WorkerFailure>,
    tail: Tail,
}

/// Waits for the worker to exit, then cleans up after it and reports the exit.
async fn reap(mut child: Child, exit: Exit) {
    let Exit {
        build_id,
        execution_id,
        pgid,
        children,
        exited,
        report,
        tail,
    } = exit;
    let status: std::io::Result<ExitStatus> = child.wait().await;
    let reason = match &status {
        Ok(status) => format!("the worker process exited ({status})"),
        Err(err) => format!("the worker process could not be waited for: {err}"),
    };
    match status {
        Ok(status) if status.success() => {
            tracing::info!(build_id = %build_id, execution_id, "worker exited: {status}");
        }
        Ok(status) => {
            tracing::warn!(build_id = %build_id, execution_id, "worker exited: {status}");
        }
        Err(err) => {
            tracing::error!(build_id = %build_id, execution_id, "waiting for worker: {err}");
        }
    }
    // Whatever the worker left behind in its group would otherwise run on unaccounted for,
    // and nobody could stop it later: its execution id is gone with it.
    if let Err(err) = signal_group(pgid, Signal::SIGKILL) {
        tracing::warn!(build_id = %build_id, execution_id, "{err}");
    }
    lock(&children).remove(&execution_id);
    exited.send_replace(true);
    let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    let reason = if tail.is_empty() {
        reason
    } else {
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("{reason}; its last output: {}", lines.join(" | "))
    };
    let failure = WorkerFailure {
        execution_id,
        build_id,
        reason,
    };
    if report.try_send(failure).is_err() {
        tracing::debug!(build_id = %build_id, "no room to report a worker's exit; its deadline will tell");
    }
}

/// Waits until the reaper reports the child gone (or the reaper itself is gone).
async fn wait_exited(mut exited: watch::Receiver<bool>) {
    let _ = exited.wait_for(|gone| *gone).await;
}

#[async_trait]
impl Executor for LocalExecutor {
    fn kind(&self) -> &'static str {
        "popen"
    }

    async fn start(&self, request: &StartRequest) -> Result<String> {
        let program = &self.settings.program;
        let mut command = Command::new(program);
        command
            .args(&self.settings.args)
            .env_clear()
            .envs(self.environment(request))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|err| {
            ExecutorError::Failed(format!("starting worker {}: {err}", program.display()))
        })?;
        let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            // Only possible if the child was already reaped, which nothing here has done.
            let _ = child.start_kill();
            return Err(ExecutorError::Failed(format!(
                "worker {} started without a process id",
                program.display()
            )));
        };
        let pgid = Pid::from_raw(pid);
        let execution_id = pid.to_string();
        let build_id = request.build_id;

        let tail = Tail::default();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_output(build_id, "stdout", stdout, None));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_output(
                build_id,
                "stderr",
                stderr,
                Some(tail.clone()),
            ));
        }

        let (exited_tx, exited_rx) = watch::channel(false);
        // Registered before the reaper starts, so a worker that exits at once is still
        // removed rather than left behind as a phantom entry.
        self.children().insert(
            execution_id.clone(),
            Running {
                build_id,
                pgid,
                started_at: SystemTime::now(),
                exited: exited_rx,
            },
        );
        let exit = Exit {
            build_id,
            execution_id: execution_id.clone(),
            pgid,
            children: Arc::clone(&self.children),
            exited: exited_tx,
            report: self.exits.clone(),
            tail,
        };
        tokio::spawn(reap(child, exit));
        tracing::info!(
            build_id = %build_id,
            execution_id,
            program = %program.display(),
            "started local worker"
        );
        Ok(execution_id)
    }

    async fn stop(&self, execution_id: &str) -> Result<()> {
        // Only ids this executor still tracks are signalled: a stale id's pid may have been
        // reused by an unrelated process.
        let Some(running) = self.children().get(execution_id).cloned() else {
            return Ok(());
        };
        signal_group(running.pgid, Signal::SIGTERM)?;
        let grace = self.settings.stop_grace;
        if tokio::time::timeout(grace, wait_exited(running.exited.clone()))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tracing::warn!(
            build_id = %running.build_id,
            execution_id,
            "worker ignored SIGTERM for {grace:?}; killing its process group"
        );
        signal_group(running.pgid, Signal::SIGKILL)?;
        if tokio::time::timeout(KILL_WAIT, wait_exited(running.exited))
            .await
            .is_err()
        {
            return Err(ExecutorError::Failed(format!(
                "worker {execution_id} still running {KILL_WAIT:?} after SIGKILL"
            )));
        }
        Ok(())
    }

    async fn running(&self) -> Result<usize> {
        Ok(self.children().len())
    }

    /// The children of this process (a local worker is never another manager's).
    async fn owned(&self) -> Result<Vec<OwnedWorker>> {
        Ok(self
            .children()
            .iter()
            .map(|(id, running)| OwnedWorker {
                execution_id: id.clone(),
                build_id: Some(running.build_id),
                started_at: running.started_at,
            })
            .collect())
    }

    fn failures(&self) -> Option<mpsc::Receiver<WorkerFailure>> {
        self.exits_taken.take()
    }
}
