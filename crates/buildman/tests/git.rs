//! Builds from git repositories, through the API and `buildman submit`: one served by
//! `git daemon` (git://, no key), one over ssh with a deploy key, served by this test's own
//! sshd on a loopback port. The deploy key must be in no API answer, log line or database
//! file in plain text. Needs git, openssh-server, buildah, runc and busybox-static
//! (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use buildman_testkit::unique;
use common::git_server::{deploy_key, git_daemon, make_repo, sshd};
use common::*;
use serde_json::{Value, json};

const FINAL: [&str; 4] = ["complete", "error", "internalerror", "expired"];
const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");

/// Every file under `dir` as bytes (the data dir: database, WAL, keys).
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_repository_is_built_through_the_api_and_the_cli() {
    let repos = tempfile::tempdir().unwrap();
    let marker = format!("built-from-git-{}", unique());
    let sha = make_repo(repos.path(), &marker);
    let (_daemon, port) = git_daemon(repos.path()).await;
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &real_worker(d, "")),
        "",
        fast_timings(),
    )
    .await;

    // The API, by branch.
    let created = s
        .req(
            reqwest::Method::POST,
            &buildman_api::paths::builds("demo", "git"),
        )
        .json(&json!({"git_url": url, "git_ref": "main", "docker_tags": ["v1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let view: Value = created.json().await.unwrap();
    let id = view["id"].as_str().unwrap().to_string();
    assert_eq!(
        view["trigger_metadata"],
        json!({"git_url": url, "commit": "main"})
    );
    let view = s.wait_phase(&id, &FINAL, Duration::from_secs(300)).await;
    let logs = s.logs("demo/git", &id).await;
    assert_eq!(view["phase"], "complete", "{view}\n{logs:#?}");
    assert!(
        logs.iter().any(|e| e["message"] == format!("{marker}\n")),
        "the repository's Dockerfile ran: {logs:#?}"
    );

    // The CLI, by commit, printing where the image went.
    let out = Command::new(BUILDMAN)
        .arg("submit")
        .arg(format!("{url}#{sha}"))
        .args([
            "-r", "demo/git", "-t", "v2", "--server", &s.base, "--token", &s.token,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(" complete: oci:"), "{last}");
    assert!(last.ends_with("/demo/git:v2"), "{last}");

    // An API refusal names the problem.
    let refused = s
        .req(
            reqwest::Method::POST,
            &buildman_api::paths::builds("demo", "git"),
        )
        .json(&json!({"git_url": "file:///etc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("git_url must be"),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_key_clones_over_ssh_and_is_never_shown_or_stored_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("built-over-ssh-{}", unique());
    let sha = make_repo(dir.path(), &marker);
    let deploy = deploy_key(dir.path(), &["-t", "ed25519"]);
    let key = std::fs::read_to_string(&deploy).unwrap();
    // The key's body: what must never show up anywhere.
    let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let (_sshd, url) = sshd(dir.path(), &deploy.with_extension("pub")).await;

    let config = format!(
        "{}BUILDMAN_API_TOKENS: [{SERVE_API_TOKEN}]\n",
        config_yaml("ALLOWED_WORKER_COUNT: 1", &real_worker(dir.path(), ""))
    );
    let serve = Serve::start(dir.path(), "manager", &config).await;
    let out = Command::new(BUILDMAN)
        .arg("submit")
        .arg(format!("{url}#{}", &sha[..12]))
        .args(["-r", "demo/deploykey", "--ssh-key"])
        .arg(&deploy)
        .args(["--server", &serve.base, "--token", SERVE_API_TOKEN])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("build ")?.strip_suffix(" queued"))
        .unwrap_or_else(|| panic!("{stdout}\n{stderr}"))
        .to_string();
    let view = serve.wait_phase(&id, &FINAL).await;
    let logs = serve.logs("demo/deploykey", &id).await;
    assert_eq!(view["phase"], "complete", "{view}\n{logs:#?}\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(logs.iter().any(|e| e["message"] == format!("{marker}\n")));

    // Nowhere in the clear: API answers, the build log, the manager's log, the CLI's
    // output, any file of the data dir (database and WAL included).
    let answers = [
        serve.get(&format!("/api/v1/build/{id}")).await,
        serve
            .get(&buildman_api::paths::builds("demo", "deploykey"))
            .await,
        Value::Array(logs),
    ];
    let mut texts: Vec<(String, String)> = answers
        .iter()
        .map(|a| ("an API answer".to_string(), a.to_string()))
        .collect();
    texts.push(("the manager's log".into(), serve.log_text()));
    texts.push(("the CLI's output".into(), format!("{stdout}{stderr}")));
    let data = dir.path().join("manager-data");
    for (path, bytes) in all_files(&data) {
        texts.push((
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for (what, text) in &texts {
        for line in &body {
            assert!(!text.contains(line), "the deploy key is in {what}");
        }
    }
    let sealed = texts.iter().any(|(_, t)| t.contains("aes256gcm:"));
    assert!(sealed, "the key is stored sealed");
    let key_file = data.join("sealing-key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
