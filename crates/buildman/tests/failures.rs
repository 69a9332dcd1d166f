//! What a failed build says: the real worker (`buildman worker`) and buildah for a manager
//! in this process; the summary read back from the build view, the log and `buildman
//! submit`'s last line. Needs buildah, runc, docker-registry and busybox-static (`.ci/run`
//! installs them).

mod common;

use std::path::Path;
use std::time::Duration;

use buildman_testkit::{Registry, TOKEN, unique};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(300);
const FINAL: [&str; 4] = ["complete", "error", "internalerror", "expired"];
const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");

/// A manager whose worker pushes to `registry`.
async fn server(registry: &Registry) -> TestServer {
    TestServer::start(
        |d| {
            let mut yaml = config_yaml("ALLOWED_WORKER_COUNT: 1", &real_worker(d, ""));
            yaml.push_str(&format!(
                "BUILDMAN_REGISTRY: {}\nBUILDMAN_REGISTRY_PUSH_TOKEN: {TOKEN}\n",
                registry.addr
            ));
            yaml
        },
        "",
        fast_timings(),
    )
    .await
}

/// A directory holding busybox and `dockerfile`.
fn context_dir(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(buildman_testkit::busybox(), dir.path().join("busybox")).expect("busybox");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    dir
}

/// Runs `buildman submit DIR -r repo` against `s`; returns (exit code, stdout, stderr).
fn cli_submit(s: &TestServer, dir: &Path, repo: &str) -> (i32, String, String) {
    let out = std::process::Command::new(BUILDMAN)
        .arg("submit")
        .arg(dir)
        .args(["-r", repo, "--server", &s.base, "--token", &s.token])
        .output()
        .expect("buildman submit runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The build id `submit` printed (`build <id> queued`).
fn queued_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("build ")?.strip_suffix(" queued"))
        .unwrap_or_else(|| panic!("no `build <id> queued` in {stdout:?}"))
        .to_string()
}

/// The messages of the log's error entries.
fn errors(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .filter(|e| e["type"] == "error")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_step_is_named_with_its_exit_status_and_last_output() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let s = server(&registry).await;
    // unique(): buildah's layer cache must not skip the step.
    let run = format!(
        "RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo compiling {}; echo \\\"make: *** No rule to make target 'all'.  Stop.\\\" >&2; exit 2\"]",
        unique()
    );
    let dir = context_dir(&format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n{run}\nRUN [\"/bin/busybox\", \"true\"]\n"
    ));
    let (code, stdout, stderr) = cli_submit(&s, dir.path(), "demo/failing");
    assert_eq!(code, 10, "exit code for a build error\n{stdout}\n{stderr}");
    let id = queued_id(&stdout);
    let view = s.wait_phase(&id, &FINAL, T).await;
    let logs = s.logs("demo/failing", &id).await;
    assert_eq!(view["phase"], "error", "{view}");

    let error = view["error"].as_str().expect("an error text");
    let step = format!("Step 3/4 : {run}");
    assert!(error.starts_with(&step), "{error}");
    assert!(error.contains(" → exit status 2: "), "{error}");
    assert!(
        error.contains("make: *** No rule to make target 'all'."),
        "{error}"
    );
    assert!(!error.contains("subprocess exited"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
    // The log's error entry is the summary, once; the output line is in the log once.
    assert_eq!(errors(&logs), [error]);
    let make_lines = logs
        .iter()
        .filter(|e| e["message"] == "make: *** No rule to make target 'all'.  Stop.\n")
        .count();
    assert_eq!(make_lines, 1, "{logs:#?}");
    // `submit` ends with the same summary.
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(last, format!("build {id} error: {error}"), "{stderr}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_typo_is_reported_with_its_line_in_words() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let s = server(&registry).await;
    let dir = context_dir("# a comment\nFROM scratch\nCOPY busybox /bin/busybox\nRUNN echo hi\n");
    let (code, stdout, stderr) = cli_submit(&s, dir.path(), "demo/typo");
    assert_eq!(code, 10, "{stdout}\n{stderr}");
    let id = queued_id(&stdout);
    let view = s.wait_phase(&id, &FINAL, T).await;
    assert_eq!(view["phase"], "error", "{view}");
    assert_eq!(view["error"], "Dockerfile line 4: unknown instruction RUNN");
    let logs = s.logs("demo/typo", &id).await;
    let text = serde_json::to_string(&logs).unwrap();
    assert!(
        !text.contains("imagebuilder.Step"),
        "no Go struct dump: {text}"
    );
    assert!(
        !phases(&logs).contains(&"pulling".to_string()),
        "found before pulling"
    );
    assert!(
        stderr.ends_with(&format!(
            "build {id} error: Dockerfile line 4: unknown instruction RUNN\n"
        )),
        "{stderr}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_base_image_is_named() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let s = server(&registry).await;
    let base = format!("{}/missing-{}:v1", registry.addr, unique());
    let dir = context_dir(&format!("FROM {base}\nRUN true\n"));
    let (code, stdout, stderr) = cli_submit(&s, dir.path(), "demo/nobase");
    assert_eq!(code, 10, "{stdout}\n{stderr}");
    let view = s.wait_phase(&queued_id(&stdout), &FINAL, T).await;
    let error = view["error"].as_str().expect("an error text");
    assert!(
        error.starts_with(&format!("pulling base image {base} → exit status 125: ")),
        "{error}"
    );
    assert!(error.contains("manifest unknown"), "{error}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_without_its_dockerfile_is_refused_by_the_cli_and_failed_by_the_worker() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let s = server(&registry).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), "no Dockerfile here\n").unwrap();
    let (code, stdout, stderr) = cli_submit(&s, dir.path(), "demo/nodockerfile");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "nothing queued: {stdout}");
    assert!(
        stderr.contains("no Dockerfile") && stderr.contains("--dockerfile"),
        "{stderr}"
    );
    let list = s
        .req(
            reqwest::Method::GET,
            &buildman_api::paths::builds("demo", "nodockerfile"),
        )
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(list["builds"], serde_json::json!([]), "nothing queued");

    // The API takes an uploaded archive as it is: the worker finds the Dockerfile missing
    // and the build fails, saying so.
    let archive = tar_gz(&[("README", b"no Dockerfile here\n")], &[]);
    let id = s.submit_bytes("demo/nodockerfile", &[], &archive).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = s.wait_phase(&id, &FINAL, T).await;
    assert_eq!(view["phase"], "error", "{view}");
    assert_eq!(
        view["error"],
        "Dockerfile \"/Dockerfile\" not found in the build package"
    );
    s.stop().await;
}
