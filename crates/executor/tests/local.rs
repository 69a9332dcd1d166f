//! The local executor against real `/bin/sh` workers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildman_core::BuildId;
use buildman_executor::local::{LocalExecutor, LocalSettings};
use buildman_executor::{Executor, ExecutorError, StartRequest};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

const TOKEN: &str = "secret-registration-token-0123456789";

fn sh(script: &str, dir: &Path) -> LocalSettings {
    LocalSettings {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        extra_env: vec![("OUT_DIR".to_owned(), dir.display().to_string())],
        stop_grace: Duration::from_secs(1),
        ..LocalSettings::default()
    }
}

fn request() -> StartRequest {
    StartRequest {
        build_id: BuildId::new(),
        token: TOKEN.to_owned(),
        server: "buildman.local:50051".to_owned(),
        registry_hostname: "quay.local".to_owned(),
        insecure: false,
        max_lifetime_s: 3600,
        manager_id: "m".into(),
    }
}

/// Waits for a file the script writes with `> x.tmp && mv x.tmp x`, so it is never half-read.
async fn read_when_written(path: &Path) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(data) = std::fs::read(path) {
            return data;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_pid(path: &Path) -> Pid {
    let text = String::from_utf8(read_when_written(path).await).unwrap();
    Pid::from_raw(text.trim().parse().unwrap())
}

/// Gone, or a zombie nobody has reaped yet (pid 1 in a container may never reap it).
fn process_gone(pid: Pid) -> bool {
    if kill(pid, None) == Err(Errno::ESRCH) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

async fn wait_gone(pid: Pid) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_none_running(executor: &LocalExecutor) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while executor.running().await.unwrap() != 0 {
        assert!(
            Instant::now() < deadline,
            "workers still counted as running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_env(data: &[u8]) -> BTreeMap<String, String> {
    data.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8(kv.to_vec()).unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `/proc/$$/environ` is exactly what the shell was exec'd with, before it adds PWD and co.
const DUMP_ENV: &str =
    r#"cat /proc/$$/environ > "$OUT_DIR/env.tmp" && mv "$OUT_DIR/env.tmp" "$OUT_DIR/env""#;

fn inherited() -> BTreeMap<String, String> {
    ["DOCKER_HOST", "PATH", "HOME"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
        .collect()
}

#[tokio::test]
async fn worker_gets_exactly_the_documented_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = sh(DUMP_ENV, dir.path());
    settings.container_runtime = Some("podman".to_owned());
    settings.buildah_isolation = "oci".to_owned();
    settings.debug = true;
    settings.http_proxy = Some("http://proxy:3128".to_owned());
    settings.no_proxy = Some("localhost".to_owned());
    let executor = LocalExecutor::new(settings);
    let mut req = request();
    req.insecure = true;

    executor.start(&req).await.unwrap();
    let env = read_env(&read_when_written(&dir.path().join("env")).await);

    let mut want: BTreeMap<String, String> = [
        ("TOKEN", TOKEN.to_owned()),
        ("BUILD_UUID", req.build_id.to_string()),
        ("SERVER", "buildman.local:50051".to_owned()),
        ("REGISTRY_HOSTNAME", "quay.local".to_owned()),
        ("CONTAINER_RUNTIME", "podman".to_owned()),
        ("BUILDAH_ISOLATION", "oci".to_owned()),
        ("INSECURE", "true".to_owned()),
        ("DEBUG", "true".to_owned()),
        ("HTTP_PROXY", "http://proxy:3128".to_owned()),
        ("NO_PROXY", "localhost".to_owned()),
        ("OUT_DIR", dir.path().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    want.extend(inherited());
    assert_eq!(env, want);

    // The manager's own environment (cargo sets plenty) must not leak into the worker.
    let (unrelated, _) = std::env::vars()
        .find(|(k, _)| !want.contains_key(k))
        .expect("the test process has some other variable");
    assert!(!env.contains_key(&unrelated), "{unrelated} leaked");
    wait_none_running(&executor).await;
}

#[tokio::test]
async fn optional_variables_are_left_out_when_unset() {
    let dir = tempfile::tempdir().unwrap();
    let executor = LocalExecutor::new(sh(DUMP_ENV, dir.path()));
    let req = request();
    executor.start(&req).await.unwrap();
    let env = read_env(&read_when_written(&dir.path().join("env")).await);

    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.retain(|k| !inherited().contains_key(*k));
    let want = [
        "BUILDAH_ISOLATION",
        "BUILD_UUID",
        "INSECURE",
        "OUT_DIR",
        "REGISTRY_HOSTNAME",
        "SERVER",
        "TOKEN",
    ];
    assert_eq!(keys, want);
    assert_eq!(env["INSECURE"], "false");
    assert_eq!(env["BUILDAH_ISOLATION"], "chroot");
    wait_none_running(&executor).await;
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        r#"sleep 1000 & echo $! > "$OUT_DIR/gc.tmp" && mv "$OUT_DIR/gc.tmp" "$OUT_DIR/gc"; wait"#;
    let mut settings = sh(script, dir.path());
    settings.stop_grace = Duration::from_secs(5);
    let executor = LocalExecutor::new(settings);
    let id = executor.start(&request()).await.unwrap();
    let leader = Pid::from_raw(id.parse().unwrap());
    let grandchild = read_pid(&dir.path().join("gc")).await;
    assert!(!process_gone(grandchild));
    assert_eq!(executor.running().await.unwrap(), 1);

    let started = Instant::now();
    executor.stop(&id).await.unwrap();
    // SIGTERM alone suffices here; the grace period must not have been sat out.
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(executor.running().await.unwrap(), 0);
    wait_gone(leader).await;
    wait_gone(grandchild).await;

    // Stopping again, or something never started, is not an error.
    executor.stop(&id).await.unwrap();
    executor.stop("999999999").await.unwrap();
}

#[tokio::test]
async fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"trap '' TERM; sleep 1000 & echo $! > "$OUT_DIR/gc.tmp" && mv "$OUT_DIR/gc.tmp" "$OUT_DIR/gc"; while :; do wait; done"#;
    let executor = LocalExecutor::new(sh(script, dir.path()));
    let id = executor.start(&request()).await.unwrap();
    let leader = Pid::from_raw(id.parse().unwrap());
    let grandchild = read_pid(&dir.path().join("gc")).await;

    let started = Instant::now();
    executor.stop(&id).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "stopped after {took:?}");
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert_eq!(executor.running().await.unwrap(), 0);
    wait_gone(leader).await;
    wait_gone(grandchild).await;
}

#[tokio::test]
async fn running_counts_live_workers_only() {
    let dir = tempfile::tempdir().unwrap();
    let executor = LocalExecutor::new(sh("sleep 0.3", dir.path()));
    assert_eq!(executor.running().await.unwrap(), 0);
    let a = executor.start(&request()).await.unwrap();
    let b = executor.start(&request()).await.unwrap();
    assert_ne!(a, b);
    assert_eq!(executor.running().await.unwrap(), 2);
    wait_none_running(&executor).await;

    let quick = LocalExecutor::new(sh("exit 3", dir.path()));
    quick.start(&request()).await.unwrap();
    wait_none_running(&quick).await;
}

#[tokio::test]
async fn a_missing_or_unexecutable_program_fails_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir/quay-builder");
    let executor = LocalExecutor::new(LocalSettings {
        program: missing.clone(),
        ..LocalSettings::default()
    });
    match executor.start(&request()).await {
        Err(ExecutorError::Failed(msg)) => {
            assert!(msg.contains(&missing.display().to_string()), "{msg}");
            assert!(msg.contains("No such file"), "{msg}");
            assert!(!msg.contains(TOKEN));
        }
        other => panic!("expected Failed, got {other:?}"),
    }

    let plain = dir.path().join("not-executable");
    std::fs::File::create(&plain)
        .unwrap()
        .write_all(b"#!/bin/sh\n")
        .unwrap();
    let executor = LocalExecutor::new(LocalSettings {
        program: plain.clone(),
        ..LocalSettings::default()
    });
    match executor.start(&request()).await {
        Err(ExecutorError::Failed(msg)) => {
            assert!(msg.contains(&plain.display().to_string()), "{msg}");
            assert!(msg.contains("ermission denied"), "{msg}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(executor.running().await.unwrap(), 0);
    assert_eq!(executor.kind(), "popen");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// current_thread: the thread-local subscriber then sees every task the executor spawns.
#[tokio::test(flavor = "current_thread")]
async fn worker_output_goes_to_the_log_with_the_build_id_and_never_the_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let executor = LocalExecutor::new(sh(
        r#"echo "hello from worker"; echo "oops on stderr" >&2; printf 'no newline'; exit 4"#,
        dir.path(),
    ));
    let req = request();
    executor.start(&req).await.unwrap();
    wait_none_running(&executor).await;

    let deadline = Instant::now() + Duration::from_secs(5);
    while !captured.text().contains("no newline") {
        assert!(
            Instant::now() < deadline,
            "log so far:\n{}",
            captured.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = captured.text();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in log:\n{log}"))
            .to_owned()
    };
    let id = req.build_id.to_string();
    assert!(line("hello from worker").contains(&id));
    assert!(line("hello from worker").contains("stream=\"stdout\""));
    assert!(line("oops on stderr").contains("stream=\"stderr\""));
    assert!(line("worker exited").contains("exit status: 4"));
    assert!(!log.contains(TOKEN), "token logged:\n{log}");
}
