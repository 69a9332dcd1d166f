//! Running a tool: stdout and stderr written to files ([`super::follow`]: a tool's writes
//! never wait for the worker) and read as fast as they come into a [`LineSink`] (which never
//! makes the reader wait; see [`crate::output`]), the last lines kept for the error, and the
//! whole process group killed when the caller stops waiting.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

use super::follow::OutputFile;
use super::pump::pump;
use super::{BackendError, ERROR_TAIL_LINES, LineSink};

/// How long a cancelled command's process group gets between SIGTERM and SIGKILL. buildah
/// needs well under a second to remove its working container after SIGTERM.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Runs `cmd` to its end. Its output (stdout and stderr, each cut into lines and chunks of
/// long lines, `secrets` replaced) goes to `out` as soon as it is read; a non-zero exit
/// becomes [`BackendError::Failed`] named `label` with the last [`ERROR_TAIL_LINES`] lines.
/// More output waiting in `out` than its bound stops the command with
/// [`BackendError::OutputBacklog`].
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
    let io = |e| BackendError::io(format!("making the output files of {label}"), e);
    let (stdout, stderr) = (
        OutputFile::new().map_err(io)?,
        OutputFile::new().map_err(io)?,
    );
    cmd.stdin(Stdio::null())
        .stdout(stdout.writer().map_err(io)?)
        .stderr(stderr.writer().map_err(io)?)
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
    let (exited, watch) = watch::channel(false);
    let stdout = stdout.follow(watch.clone()).map_err(io)?;
    let stderr = stderr.follow(watch).map_err(io)?;

    let tail = Mutex::new(VecDeque::with_capacity(ERROR_TAIL_LINES));
    let pumps = async {
        tokio::try_join!(
            pump(stdout, out, secrets, &tail),
            pump(stderr, out, secrets, &tail)
        )
    };
    let wait = async {
        let status = child.wait().await;
        // Anything still in the group now is a stray of a finished command; what it wrote
        // is read, what it would write after is not waited for.
        group.kill_now();
        let _ = exited.send(true);
        Ok(status)
    };
    // An overflow returns at once; `group`, dropped then, stops the command.
    let (_, status) = tokio::try_join!(pumps, wait)?;
    let status = status.map_err(|e| BackendError::io(format!("waiting for {label}"), e))?;
    if status.success() {
        Ok(())
    } else {
        let tail = tail.into_inner().unwrap_or_else(|e| e.into_inner());
        Err(BackendError::Failed {
            command: label.to_string(),
            status: status.to_string(),
            tail: tail.into_iter().collect(),
        })
    }
}

/// Process groups of dropped commands that may still have members (between their SIGTERM
/// and their end or SIGKILL).
static STOPPING: AtomicUsize = AtomicUsize::new(0);

/// Waits, at most [`CANCEL_GRACE`] and a second, until every process group of a dropped
/// command is gone (SIGKILLed if need be): a worker that stops must not exit before, or
/// the escalation to SIGKILL would die with it and leave buildah running.
pub(crate) async fn stopped_commands_gone() {
    let deadline = Instant::now() + CANCEL_GRACE + Duration::from_secs(1);
    while STOPPING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
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
            let mut gone = false;
            while !gone && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                gone = killpg(pgid, None).is_err();
            }
            if !gone {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            STOPPING.fetch_sub(1, Ordering::SeqCst);
        };
        STOPPING.fetch_add(1, Ordering::SeqCst);
        if std::thread::Builder::new()
            .name("buildman-group-kill".into())
            .spawn(escalate)
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            STOPPING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::pump::TAIL_ENTRY_BYTES;
    use crate::output::{LineSource, Spool, spool_with};

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    fn sink() -> (LineSink, LineSource) {
        crate::output::spool(&std::env::temp_dir())
    }

    /// Everything the source hands on (drop every sink first).
    async fn texts(mut source: LineSource) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(chunk) = source.next().await {
            lines.push(chunk.text);
        }
        lines
    }

    #[tokio::test]
    async fn streams_both_streams_and_strips_newlines() {
        let (tx, rx) = sink();
        run(
            sh("echo one; echo two >&2; printf 'three\\r\\n'; printf last"),
            "sh",
            Some(&tx),
            &[],
        )
        .await
        .unwrap();
        drop(tx);
        let mut lines = texts(rx).await;
        lines.sort();
        assert_eq!(lines, ["last", "one", "three", "two"]);
    }

    /// buildah relays a step's output with writes that can fail when the reader is behind
    /// (and drops what it holds when the step ends): such a tool loses nothing here.
    #[tokio::test]
    async fn a_tool_whose_writes_must_not_wait_loses_nothing() {
        let script = "import os\nos.set_blocking(1, False)\nlost = 0\n\
            for i in range(200000):\n    line = b'line %d\\n' % i\n    \
            try:\n        lost += len(line) - os.write(1, line)\n    \
            except BlockingIOError:\n        lost += len(line)\n\
            os.write(2, b'lost %d' % lost)\n";
        let (tx, rx) = sink();
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script);
        run(cmd, "python3", Some(&tx), &[]).await.unwrap();
        drop(tx);
        let lines = texts(rx).await;
        assert!(lines.contains(&"lost 0".to_string()), "{:?}", lines.last());
        let printed: Vec<&String> = lines.iter().filter(|l| l.starts_with("line ")).collect();
        assert_eq!(printed.len(), 200_000);
        assert!(
            printed
                .iter()
                .enumerate()
                .all(|(i, l)| **l == format!("line {i}"))
        );
    }

    #[tokio::test]
    async fn lines_arrive_while_the_command_still_runs() {
        let (tx, mut rx) = sink();
        {
            let fut = run(sh("echo first; sleep 2; echo second"), "sh", Some(&tx), &[]);
            tokio::pin!(fut);
            let started = std::time::Instant::now();
            tokio::select! {
                _ = &mut fut => panic!("finished before its first line was seen"),
                chunk = rx.next() => assert_eq!(chunk.map(|c| c.text).as_deref(), Some("first")),
            }
            assert!(started.elapsed() < std::time::Duration::from_millis(1500));
            fut.await.unwrap();
        }
        drop(tx);
        assert_eq!(texts(rx).await, ["second"]);
    }

    #[tokio::test]
    async fn a_command_never_waits_for_the_reader_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        // A small memory bound, so most of it goes through the spool file.
        let (tx, rx) = spool_with(Spool::new(dir.path().into(), 64 * 1024, u64::MAX));
        // Nobody reads until the command has ended.
        run(
            sh("seq 1 200000; printf 'no newline'"),
            "seq",
            Some(&tx),
            &[],
        )
        .await
        .unwrap();
        drop(tx);
        let lines = texts(rx).await;
        let expected: Vec<String> = (1..=200_000)
            .map(|n| n.to_string())
            .chain(["no newline".to_string()])
            .collect();
        assert_eq!(lines, expected);
    }

    #[tokio::test]
    async fn too_much_waiting_output_stops_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = spool_with(Spool::new(dir.path().into(), 1024, 1024 * 1024));
        let err = run(sh("yes"), "yes", Some(&tx), &[]).await.unwrap_err();
        assert!(matches!(err, BackendError::OutputBacklog(_)), "{err:?}");
        assert!(err.to_string().contains("1 MiB"), "{err}");
    }

    #[tokio::test]
    async fn a_failure_tail_keeps_only_the_start_of_long_lines() {
        let err = run(
            sh("head -c 200000 /dev/zero | tr '\\0' x; exit 1"),
            "sh",
            None,
            &[],
        )
        .await
        .unwrap_err();
        let BackendError::Failed { tail, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(tail.len(), 4, "three full chunks and the rest");
        assert!(
            tail.iter()
                .all(|l| l.len() <= TAIL_ENTRY_BYTES + '…'.len_utf8())
        );
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
        let (tx, rx) = sink();
        let err = run(
            sh("echo 'token hunter2 ok'; echo 'denied for hunter2' >&2; exit 1"),
            "sh",
            Some(&tx),
            &["hunter2", ""],
        )
        .await
        .unwrap_err();
        drop(tx);
        let mut lines = texts(rx).await;
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
        let (tx, mut rx) = sink();
        let fut = run(cmd, "sh", Some(&tx), &[]);
        tokio::select! {
            _ = fut => panic!("finished early"),
            chunk = rx.next() => assert_eq!(chunk.map(|c| c.text).as_deref(), Some("started")),
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
