//! The `buildman` binary as a user runs it: check-config, serve refusing bad configs,
//! serve + submit running a build to the end, and a restart that keeps every queued build.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buildman_api::{CreateBuild, paths};
use common::{TEST_WORKER, alive};
use serde_json::Value;

const BUILDMAN: &str = env!("CARGO_BIN_EXE_buildman");

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// What `buildman check-config` says about a file it refuses.
fn refused_by_check_config(file: &Path) -> String {
    let out = Command::new(BUILDMAN)
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_config_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "FEATURE_BUILD_SUPPORT: true\nBUILD_MANAGER:\n- ephemeral\n- ALLOWED_WORKER_COUNT: 0\n  ORCHESTRATOR:\n    REDIS_HOST: r\n    REDIS_PREFIX: x/\n  EXECUTORS:\n  - EXECUTOR: popen\n    NAME: a\n    SETUP_TIME: abc\n  - EXECUTOR: popen\n    NAME: a\n    SURPRISE: 1\n",
    );
    let err = refused_by_check_config(&bad);
    for expected in [
        "BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: must be at least 1, got 0",
        "BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PREFIX: a key prefix does not belong in ORCHESTRATOR; set ORCHESTRATOR_PREFIX instead",
        "BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got \"abc\"",
        "BUILD_MANAGER[1].EXECUTORS[1].NAME: duplicate executor name \"a\" (also used by EXECUTORS[0])",
        "warning: BUILD_MANAGER[1].EXECUTORS[1].SURPRISE: unknown key, ignored",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    // serve refuses the same file with the same messages.
    let out = Command::new(BUILDMAN)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EXECUTORS[0].SETUP_TIME: expected an integer"),
        "{err}"
    );
    assert!(err.contains("invalid configuration, not starting"), "{err}");

    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../core/tests/fixtures/quay-sample.yaml"
    );
    let out = Command::new(BUILDMAN)
        .args(["check-config", sample])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 executor(s): kubernetes, ec2"));
}

#[test]
fn check_config_reports_context_storage_problems_without_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "storage.yaml",
        "FEATURE_BUILD_SUPPORT: true\nBUILDMAN_CONTEXT_STORAGE:\n  KIND: s3\n  \
         ENDPOINT_URL: minio:9000\n  ACCESS_KEY: AKIAXYZZY\n  SECRETKEY: xyzzy-secret\n",
    );
    let err = refused_by_check_config(&bad);
    for expected in [
        "BUILDMAN_CONTEXT_STORAGE: missing required key BUCKET",
        "BUILDMAN_CONTEXT_STORAGE.ENDPOINT_URL: expected a URL starting with http:// or https://, got \"minio:9000\"",
        "BUILDMAN_CONTEXT_STORAGE: set both ACCESS_KEY and SECRET_KEY, or neither to use the AWS SDK's credentials chain",
        "warning: BUILDMAN_CONTEXT_STORAGE.SECRETKEY: unknown key, ignored",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("XYZZY") && !err.contains("xyzzy"), "{err}");
}

#[test]
fn check_config_reads_the_ec2_endpoint_and_ami_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ec2 = |keys: &str| {
        format!(
            "FEATURE_BUILD_SUPPORT: true\nBUILD_MANAGER:\n- ephemeral\n- EXECUTORS:\n  \
             - EXECUTOR: ec2\n    EC2_REGION: eu-west-1\n{keys}"
        )
    };
    let check = |name: &str, keys: &str| {
        let path = write(dir.path(), name, &ec2(keys));
        Command::new(BUILDMAN)
            .arg("check-config")
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(
        "good.yaml",
        "    EC2_ENDPOINT_URL: http://127.0.0.1:5000\n    \
         COREOS_STREAM_URL: https://builds.coreos.fedoraproject.org/streams\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 executor(s): ec2"));

    let out = check("bad.yaml", "    EC2_ENDPOINT_URL: 127.0.0.1:5000\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        r#"BUILD_MANAGER[1].EXECUTORS[0].EC2_ENDPOINT_URL: expected a URL starting with http:// or https://, got "127.0.0.1:5000""#,
        "BUILD_MANAGER[1].EXECUTORS[0]: missing required key COREOS_AMI",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn serve_says_when_builds_are_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "c.yaml", "FEATURE_BUILD_SUPPORT: false\n");
    let out = Command::new(BUILDMAN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("builds are disabled"));
}

/// A `buildman serve` process; killed on drop.
struct Server {
    child: Child,
    api: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(config: &Path, data: &Path) -> Server {
        let mut child = Command::new(BUILDMAN)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let api = loop {
            let line = lines.next().expect("serve printed its addresses").unwrap();
            if let Some(rest) = line.strip_prefix("buildman serving: REST API on ") {
                break rest.split(',').next().unwrap().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, api }
    }

    /// SIGTERM, as an operator stops it; waits for the exit.
    fn terminate(mut self) {
        nix_kill(self.child.id());
        let _ = self.child.wait();
    }

    fn cli(&self, data: &Path, args: &[&str]) -> std::process::Output {
        Command::new(BUILDMAN)
            .args(args)
            .args(["--server", &self.api, "--data-dir"])
            .arg(data)
            .output()
            .unwrap()
    }
}

fn nix_kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn serve_config(dir: &Path, worker: &Path, extra: &str) -> std::path::PathBuf {
    write(
        dir,
        "config.yaml",
        &format!(
            "FEATURE_BUILD_SUPPORT: true\nBUILDMAN_HTTP_LISTEN: 127.0.0.1:0\nBUILDMAN_GRPC_LISTEN: 127.0.0.1:0\nBUILD_MANAGER:\n- ephemeral\n- ALLOWED_WORKER_COUNT: 1\n  EXECUTORS:\n  - EXECUTOR: popen\n    BUILDER_BINARY_LOCATION: {}\n{extra}",
            worker.display()
        ),
    )
}

#[test]
fn serve_and_submit_run_a_build_to_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&serve_config(dir.path(), Path::new(TEST_WORKER), ""), &data);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    write(&ctx, "Dockerfile", "FROM scratch\nCOPY hello /\n");
    write(&ctx, "hello", "hi\n");

    let out = server.cli(
        &data,
        &[
            "submit",
            ctx.to_str().unwrap(),
            "-r",
            "demo/hello",
            "-t",
            "v1",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("build ")
                .and_then(|r| r.strip_suffix(" queued"))
        })
        .expect("the build id is printed first")
        .to_string();
    for expected in [
        "==> build-scheduled",
        "==> building",
        "Step 1/2 : FROM scratch",
        "==> complete",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    let out = server.cli(&data, &["builds", "-r", "demo/hello", "--json"]);
    assert!(out.status.success());
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["phase"], "complete");
    // Across repositories, filtered by phase: the table says how long it waited and ran.
    let out = server.cli(&data, &["builds", "--phase", "complete"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(out.status.success() && lines.len() == 2, "{table}");
    assert!(lines[0].contains("REPOSITORY") && lines[0].ends_with("WAIT  DURATION"));
    assert!(lines[1].starts_with(&id) && lines[1].contains("complete  demo/hello"));
    let out = server.cli(&data, &["builds", "-r", "demo", "--phase", "error"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = server.cli(&data, &["builds", "--phase", "done"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--phase: unknown phase \"done\""));
    let out = server.cli(&data, &["logs", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Step 2/2 : COPY hello /"));
    let out = server.cli(&data, &["cancel", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a complete build cannot be cancelled"
    );
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_restarted_manager_keeps_and_runs_every_queued_build() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // First run: a worker that never registers holds the only slot, so the others wait.
    let pidfile = dir.path().join("hung.pid");
    let hung = write(
        dir.path(),
        "hung-worker",
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 600\n",
            pidfile.display()
        ),
    );
    std::fs::set_permissions(&hung, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let server = Server::start(
        &serve_config(dir.path(), &hung, "    SETUP_TIME: 3600\n"),
        &data,
    );
    let token = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let http = reqwest::blocking_client();
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let resp: Value = http
            .post(format!("{}{}", server.api, paths::builds("demo", name)))
            .bearer_auth(&token)
            .json(&CreateBuild::archive_url("http://127.0.0.1:9/unused.tar"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        ids.push(resp["id"].as_str().unwrap().to_string());
    }
    let phase = |api: &str, id: &str| -> String {
        let v: Value = http
            .get(format!("{api}{}", paths::build_by_id(id)))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["phase"].as_str().unwrap().to_string()
    };
    wait_until(
        "the first build to be scheduled",
        Duration::from_secs(30),
        || phase(&server.api, &ids[0]) == "build-scheduled",
    );
    assert_eq!(phase(&server.api, &ids[1]), "waiting");
    server.terminate();
    let hung_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-KILL", &hung_pid.to_string()])
        .status();

    // Second run on the same data dir, with a worker that completes: every build runs,
    // the one the first run had claimed included.
    std::fs::remove_file(dir.path().join("config.yaml")).unwrap();
    let server = Server::start(&serve_config(dir.path(), Path::new(TEST_WORKER), ""), &data);
    for id in &ids {
        wait_until("every build to complete", Duration::from_secs(60), || {
            phase(&server.api, id) == "complete"
        });
    }
    assert!(!alive(hung_pid.into()));
}

mod reqwest {
    //! A blocking-style client for these synchronous tests, over the async one.
    pub use ::reqwest::*;
    pub fn blocking_client() -> Blocking {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Blocking(
            ::reqwest::Client::new(),
            tokio::runtime::Runtime::new().unwrap(),
        )
    }
    pub struct Blocking(::reqwest::Client, tokio::runtime::Runtime);
    pub struct Req<'a>(RequestBuilder, &'a tokio::runtime::Runtime);
    impl Blocking {
        pub fn get(&self, url: String) -> Req<'_> {
            Req(self.0.get(url), &self.1)
        }
        pub fn post(&self, url: String) -> Req<'_> {
            Req(self.0.post(url), &self.1)
        }
    }
    pub struct Resp<'a>(Response, &'a tokio::runtime::Runtime);
    impl<'a> Req<'a> {
        pub fn bearer_auth(self, t: &str) -> Self {
            Req(self.0.bearer_auth(t), self.1)
        }
        pub fn json(self, v: &impl serde::Serialize) -> Self {
            Req(self.0.json(v), self.1)
        }
        pub fn send(self) -> Result<Resp<'a>> {
            let rt = self.1;
            rt.block_on(self.0.send()).map(|r| Resp(r, rt))
        }
    }
    impl Resp<'_> {
        pub fn json(self) -> Result<serde_json::Value> {
            self.1.block_on(self.0.json())
        }
    }
}
