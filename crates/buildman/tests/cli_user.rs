//! The user commands as a person or a script runs them, against a manager in this process
//! with the scripted test worker: Ctrl-C during `submit`, `.dockerignore`, `--json` on every
//! command that prints data, shell completions.

mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");
const T: Duration = Duration::from_secs(60);

async fn server(scenario: &str) -> TestServer {
    TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 2", &popen(d, "local", "")),
        scenario,
        fast_timings(),
    )
    .await
}

/// `buildman ARGS --server .. --token ..`; returns (exit code, stdout, stderr).
fn buildman(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BUILDMAN)
        .args(args)
        .args(["--server", &s.base, "--token", &s.token])
        .output()
        .expect("buildman runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A context directory with a Dockerfile.
fn context_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_submit_says_the_build_goes_on_and_how_to_follow_or_cancel_it() {
    let s = server("hold-building").await;
    let dir = context_dir();
    let mut child = tokio::process::Command::new(BUILDMAN)
        .arg("submit")
        .arg(dir.path())
        .args([
            "-r",
            "demo/interrupted",
            "--server",
            &s.base,
            "--token",
            &s.token,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr_pipe, &mut text)
            .await
            .unwrap();
        text
    });
    let mut id = None;
    // Follow until the build is building, as a person would watch it.
    let watched = tokio::time::timeout(T, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(queued) = line
                .strip_prefix("build ")
                .and_then(|l| l.strip_suffix(" queued"))
            {
                id = Some(queued.to_string());
            }
            if line == "==> building" {
                return;
            }
        }
        panic!("submit ended before the build was building");
    })
    .await;
    assert!(watched.is_ok(), "the build never reached building");
    let id = id.expect("submit printed the build id");
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "exit code for an interrupted submit\n{stderr}"
    );
    let said = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        said,
        format!(
            "interrupted: build {id} goes on without this command; follow it with \
             `buildman logs -f {id}`, cancel it with `buildman cancel {id}`"
        ),
        "{stderr}"
    );

    // The build goes on: still building, not cancelled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.build(&id).await["phase"], "building");
    let (code, out, err) = buildman(&s, &["status", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("phase: building"), "{out}");
    assert!(out.contains("repository: demo/interrupted"), "{out}");

    // --json: the view of `status` and `cancel`, one object per log entry for `logs`.
    let (code, out, err) = buildman(&s, &["status", "--json", &id]);
    assert_eq!(code, 0, "{err}");
    let view: Value = serde_json::from_str(&out).expect("status --json is a build view");
    assert_eq!(
        (view["id"].as_str(), view["phase"].as_str()),
        (Some(id.as_str()), Some("building"))
    );
    let (code, out, err) = buildman(&s, &["cancel", "--json", &id]);
    assert_eq!(code, 0, "{err}");
    let view: Value = serde_json::from_str(&out).expect("cancel --json is a build view");
    assert_eq!(view["phase"], "cancelled", "{view}");
    let (code, out, err) = buildman(&s, &["logs", "--json", &id]);
    assert_eq!(code, 0, "{err}");
    let entries: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect();
    let phases: Vec<&str> = (entries.iter())
        .filter(|e| e["type"] == "phase")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(phases.last(), Some(&"cancelled"), "{entries:?}");
    assert_eq!(
        entries,
        s.logs("demo/interrupted", &id).await,
        "as the API answers them"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_leaves_out_what_dockerignore_excludes_and_prints_json() {
    let s = server("happy").await;
    let dir = context_dir();
    let root = dir.path();
    std::fs::write(root.join("big.bin"), vec![7u8; 20 * 1024 * 1024]).unwrap();
    std::fs::write(root.join("debug.log"), "root log").unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/kept.log"), "below the root").unwrap();
    std::fs::write(root.join("app.txt"), "app").unwrap();
    std::fs::write(
        root.join(".dockerignore"),
        "# not for the image\nbig.bin\n*.log\n",
    )
    .unwrap();

    let (code, out, err) = buildman(
        &s,
        &[
            "submit",
            &root.to_string_lossy(),
            "-r",
            "demo/ignored",
            "--no-follow",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let view: Value = serde_json::from_str(&out).expect("submit --json is the build view");
    assert_eq!(view["phase"], "waiting", "{view}");
    let file_id = view["resource_key"].as_str().expect("an uploaded context");
    let upload = s.dir.path().join("data/contexts").join(file_id);
    let names = tar_names(&upload);
    assert_eq!(
        names,
        [
            ".dockerignore",
            "Dockerfile",
            "app.txt",
            "sub",
            "sub/kept.log"
        ],
        "what was uploaded"
    );
    assert!(std::fs::metadata(&upload).unwrap().len() < 1024 * 1024);

    // Following with --json: the entries, then the final view on the last line.
    let (code, out, err) = buildman(
        &s,
        &[
            "submit",
            &root.to_string_lossy(),
            "-r",
            "demo/ignored",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect();
    let last = lines.last().expect("output");
    assert_eq!(last["phase"], "complete", "{out}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|e| e.get("message").is_some()),
        "{out}"
    );
    s.stop().await;
}

/// The entry names of a tar.gz file, directories without their trailing `/`.
fn tar_names(path: &Path) -> Vec<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for (shell, expected) in [
        ("bash", "_buildman()"),
        ("zsh", "#compdef buildman"),
        ("fish", "complete -c buildman"),
    ] {
        let out = Command::new(BUILDMAN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(expected), "{shell}: {script}");
        for command in ["submit", "logs", "status", "cancel"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let out = Command::new(BUILDMAN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
