//! Running a tool: stdout and stderr streamed line by line as they come, the last lines kept
//! for the error, and the whole process group killed when the caller stops waiting.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::{BackendError, ERROR_TAIL_LINES, LineSink};

/// What replaces a secret that turns up in output.
const REDACTED: &str = "<redacted>";

/// How long a cancelled command's process group gets between SIGTERM and SIGKILL. buildah
/// needs well under a second to remove its working container after SIGTERM.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Runs `cmd` to its end. Each output line (stdout and stderr merged, newline stripped,
/// `secrets` replaced) goes to `out` as soon as it is read; a non-zero exit becomes
/// [`BackendError::Failed`] named `label` with the last [`ERROR_TAIL_LINES`] lines.
///
/// The child leads its own process group: buildah's chroot isolation runs a `RUN` step as
/// `buildah-chroot-runtime` → `buildah-chroot-exec` → the step's command, all in that group.
/// If this future is dropped mid-run, the whole group gets SIGTERM and, [`CANCEL_GRACE`]
/// later, SIGKILL if anything is left. Not tokio's `kill_on_drop`: that SIGKILLs buildah at
/// once, which leaves its working container behind (seen here), while on SIGTERM buildah
/// prints "subprocess exited on terminated" and removes it.
pub(crate) async fn run(
    mut cmd: Command,
    label: &str,
    out: Option<&LineSink>,
    secrets: &[&str],
) -> Result<(), BackendError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| BackendError::Spawn {
        program: label.to_string(),
        source,
    })?;
    // Armed before anything else can fail or be cancelled. A dropped, unfinished Child is
    // reaped by tokio in the background.
    let mut group = GroupKiller(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let (tx, mut rx) = mpsc::channel::<String>(256);
    let pump_out = pump(stdout, tx.clone());
    let pump_err = pump(stderr, tx);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(ERROR_TAIL_LINES);
    let forward = async {
        while let Some(line) = rx.recv().await {
            let line = redact(line, secrets);
            if tail.len() == ERROR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            if let Some(out) = out {
                // A gone receiver only means nobody listens any more; the command goes on.
                let _ = out.send(line).await;
            }
        }
    };
    let wait = async {
        let status = child.wait().await;
        // Anything still in the group now is a stray of a finished command; it could also
        // hold our pipes open forever, so it goes.
        group.kill_now();
        status
    };
    let ((), (), (), status) = tokio::join!(pump_out, pump_err, forward, wait);
    let status = status.map_err(|e| BackendError::io(format!("waiting for {label}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(BackendError::Failed {
            command: label.to_string(),
            status: status.to_string(),
            tail: tail.into_iter().collect(),
        })
    }
}

/// A process group to stop: SIGKILL once the leader has exited, SIGTERM then SIGKILL if
/// dropped before.
struct GroupKiller(Option<Pid>);

impl GroupKiller {
    /// SIGKILLs what is left of the group (no-op after the first call).
    fn kill_now(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (nobody left) is the normal case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        let Some(pgid) = self.0.take() else { return };
        if killpg(pgid, Signal::SIGTERM).is_err() {
            return; // nobody left
        }
        // Drop cannot wait, so a thread does. It polls so that it stops as soon as the group
        // is empty, which keeps the window for the number being reused tiny (and a group id
        // cannot be reused while any member lives).
        let escalate = move || {
            let deadline = Instant::now() + CANCEL_GRACE;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                if killpg(pgid, None).is_err() {
                    return;
                }
            }
            let _ = killpg(pgid, Signal::SIGKILL);
        };
        if std::thread::Builder::new()
            .name("buildman-group-kill".into())
            .spawn(escalate)
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Reads `reader` line by line into `tx` until EOF, a read error or a closed channel.
async fn pump(reader: Option<impl AsyncRead + Unpin>, tx: mpsc::Sender<String>) {
    let Some(reader) = reader else { return };
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                // Tools print UTF-8, but a RUN step may print anything: never fail on it.
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// `line` with every non-empty secret replaced.
fn redact(line: String, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(line, |line, secret| {
            if line.contains(secret) {
                line.replace(secret, REDACTED)
            } else {
                line
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[tokio::test]
    async fn streams_both_streams_and_strips_newlines() {
        let (tx, mut rx) = mpsc::channel(16);
        run(
            sh("echo one; echo two >&2; printf 'three\\r\\n'; printf last"),
            "sh",
            Some(&tx),
            &[],
        )
        .await
        .unwrap();
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        lines.sort();
        assert_eq!(lines, ["last", "one", "three", "two"]);
    }

    #[tokio::test]
    async fn lines_arrive_while_the_command_still_runs() {
        let (tx, mut rx) = mpsc::channel(16);
        let fut = run(sh("echo first; sleep 2; echo second"), "sh", Some(&tx), &[]);
        tokio::pin!(fut);
        let started = std::time::Instant::now();
        tokio::select! {
            _ = &mut fut => panic!("finished before its first line was seen"),
            line = rx.recv() => assert_eq!(line.as_deref(), Some("first")),
        }
        assert!(started.elapsed() < std::time::Duration::from_millis(1500));
        fut.await.unwrap();
        assert_eq!(rx.recv().await.as_deref(), Some("second"));
    }

    #[tokio::test]
    async fn failure_carries_the_last_lines() {
        let err = run(
            sh("echo 'denied for hunter2' >&2; sleep 0.2; \
                for i in $(seq 1 30); do echo line $i; done; exit 3"),
            "sh test",
            None,
            &["hunter2"],
        )
        .await
        .unwrap_err();
        let BackendError::Failed {
            command,
            status,
            tail,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(command, "sh test");
        assert!(status.contains('3'), "{status}");
        let expected: Vec<String> = (11..=30).map(|i| format!("line {i}")).collect();
        assert_eq!(tail, &expected);
        assert!(err.to_string().ends_with("line 29\nline 30"), "{err}");
    }

    #[tokio::test]
    async fn secrets_are_redacted_in_lines_and_errors() {
        let (tx, mut rx) = mpsc::channel(16);
        let err = run(
            sh("echo 'token hunter2 ok'; echo 'denied for hunter2' >&2; exit 1"),
            "sh",
            Some(&tx),
            &["hunter2", ""],
        )
        .await
        .unwrap_err();
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        lines.sort();
        assert_eq!(lines, ["denied for <redacted>", "token <redacted> ok"]);
        let text = err.to_string();
        assert!(text.contains("denied for <redacted>"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = run(Command::new("/nonexistent/tool"), "tool", None, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Spawn { .. }), "{err:?}");
    }

    /// Starts `script` (which must write its background child's pid to `$PIDFILE` and then
    /// print `started`), drops the run once `started` arrives, and returns that pid.
    async fn start_and_drop(script: &str, dir: &std::path::Path) -> i32 {
        let pidfile = dir.join("pid");
        let mut cmd = sh(script);
        cmd.env("PIDFILE", &pidfile);
        let (tx, mut rx) = mpsc::channel(16);
        let fut = run(cmd, "sh", Some(&tx), &[]);
        tokio::select! {
            _ = fut => panic!("finished early"),
            line = rx.recv() => assert_eq!(line.as_deref(), Some("started")),
        }
        std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits up to `limit` for `pid` to be gone (or a zombie); true if it went.
    async fn gone_within(pid: i32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // Gone, or a zombie waiting for init to reap it.
                Err(_) => return true,
                Ok(stat) if stat.contains(") Z ") => return true,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        false
    }

    #[tokio::test]
    async fn dropping_the_future_terminates_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        // A grandchild in the background, like buildah's chroot helper running a RUN step.
        let pid = start_and_drop(
            "sleep 300 & echo $! > $PIDFILE; echo started; wait",
            dir.path(),
        )
        .await;
        assert!(
            gone_within(pid, Duration::from_secs(2)).await,
            "SIGTERM did not reach {pid}"
        );
    }

    #[tokio::test]
    async fn a_group_ignoring_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        // Ignored signals stay ignored in children, so the sleep shrugs off SIGTERM.
        let script = "trap '' TERM; sleep 300 & echo $! > $PIDFILE; echo started; wait";
        let pid = start_and_drop(script, dir.path()).await;
        assert!(
            !gone_within(pid, Duration::from_secs(1)).await,
            "SIGTERM was ignored"
        );
        assert!(
            gone_within(pid, CANCEL_GRACE + Duration::from_secs(3)).await,
            "no SIGKILL for {pid}"
        );
    }
}
