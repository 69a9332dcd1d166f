//! The real worker end to end: manager + local executor + `buildman worker` + buildah +
//! the distribution registry, all on this machine. Needs buildah, runc, docker-registry and
//! busybox-static (`.ci/run` installs them).

mod common;

use std::path::Path;
use std::time::Duration;

use buildman_testkit::{Registry, TOKEN};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(180);

fn registry_config(dir: &Path, registry: &Registry, token: &str) -> String {
    let mut yaml = config_yaml("ALLOWED_WORKER_COUNT: 2", &real_worker(dir, ""));
    yaml.push_str(&format!(
        "BUILDMAN_REGISTRY: {}\nBUILDMAN_REGISTRY_PUSH_TOKEN: {token}\n",
        registry.addr
    ));
    yaml
}

fn messages(logs: &[Value], kind: &str) -> Vec<String> {
    logs.iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["message"].as_str().unwrap().trim_end().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_build_pushes_every_tag_to_the_registry() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let s = TestServer::start(|d| registry_config(d, &registry, TOKEN), "", fast_timings()).await;
    let dockerfile = format!(
        "FROM {}/base\nRUN echo built-by-buildman > /result.txt\nCOPY file.txt /file.txt\n",
        registry.addr
    );
    let context = tar_gz(
        &[
            ("Dockerfile", dockerfile.as_bytes()),
            ("file.txt", b"hello\n"),
        ],
        &[],
    );
    let id = s
        .submit_bytes("demo/app", &["v1", "latest"], &context)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = s
        .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
        .await;
    let logs = s.logs("demo/app", &id).await;
    assert_eq!(view["phase"], "complete", "{view}\n{logs:#?}");

    for tag in ["v1", "latest"] {
        let config = registry.image_config("demo/app", tag).await;
        let history = config["history"].to_string();
        assert!(
            history.contains("echo built-by-buildman > /result.txt"),
            "{tag}: {history}"
        );
    }
    assert_eq!(phases(&logs), COMPLETE_RUN);
    let pulling = logs.iter().find(|e| e["message"] == "pulling").unwrap();
    assert_eq!(pulling["data"]["registry_url"], registry.addr.as_str());
    assert_eq!(pulling["data"]["base_image"], "base");
    let steps = messages(&logs, "command");
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(steps[0].starts_with("Step 1/3 : FROM"), "{steps:?}");
    assert!(
        steps[1].starts_with("Step 2/3 : RUN echo built-by-buildman"),
        "{steps:?}"
    );
    // The work dir went with the build.
    let work = s.dir.path().join("work");
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "work dir left behind"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_push_token_ends_in_error_with_the_registrys_refusal() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let s = TestServer::start(
        |d| registry_config(d, &registry, "wrong-token"),
        "",
        fast_timings(),
    )
    .await;
    let dockerfile = format!("FROM {}/base\nRUN true\n", registry.addr);
    let id = s
        .submit_bytes("demo/denied", &[], dockerfile.as_bytes())
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = s
        .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
        .await;
    assert_eq!(view["phase"], "error", "{view}");
    let logs = s.logs("demo/denied", &id).await;
    let errors = messages(&logs, "error").join("\n");
    assert!(
        errors.contains("unauthorized") || errors.contains("authentication required"),
        "{errors}"
    );
    assert!(
        !serde_json::to_string(&logs)
            .unwrap()
            .contains("wrong-token"),
        "the token leaked into the log"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_context_builds_the_requested_commit() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let repo = scratch.path().join("src");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"]);
    for version in ["one", "two"] {
        let dockerfile = format!("FROM {}/base\nRUN echo version-{version}\n", registry.addr);
        std::fs::write(repo.join("Dockerfile"), dockerfile).unwrap();
        git(&["add", "Dockerfile"]);
        git(&["commit", "-q", "-m", version]);
    }
    let older = git(&["rev-parse", "HEAD~1"]);
    let bare = scratch.path().join("src.git");
    let out = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&repo)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Served by `git daemon`: builds take remote repositories only (no file:// or local
    // paths, which would read the worker's machine).
    let (_daemon, port) = git_server::git_daemon(scratch.path()).await;

    let s = TestServer::start(|d| registry_config(d, &registry, TOKEN), "", fast_timings()).await;
    let build = s
        .manager()
        .builds()
        .submit(buildman_core::NewBuild {
            namespace: "demo".into(),
            repository: "git".into(),
            source: buildman_core::BuildSource::Git {
                url: format!("git://127.0.0.1:{port}/src.git"),
                sha: older,
                private_key: None,
            },
            tags: vec!["old".into()],
            context: "/".into(),
            dockerfile_path: "/Dockerfile".into(),
            display_name: "git".into(),
            manual_user: None,
            pull_robot: None,
        })
        .await
        .unwrap();
    let id = build.id.to_string();
    let view = s
        .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
        .await;
    assert_eq!(
        view["phase"],
        "complete",
        "{view}\n{:#?}",
        s.logs("demo/git", &id).await
    );
    let history = registry.image_config("demo/git", "old").await["history"].to_string();
    assert!(history.contains("version-one"), "{history}");
    assert!(!history.contains("version-two"), "{history}");
    s.stop().await;
}

/// An executor stops a worker with SIGTERM (to the worker alone: Kubernetes, or a signal
/// to its pid); the worker must stop the buildah it runs, which leads a process group of its
/// own, before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_stops_its_buildah_first() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_base(scratch.path()).await;
    let s = TestServer::start(|d| registry_config(d, &registry, TOKEN), "", fast_timings()).await;
    // A duration of its own, to tell this build's step from any other's.
    let seconds = 600 + std::process::id() % 300;
    let dockerfile = format!("FROM {}/base\nRUN sleep {seconds}\n", registry.addr);
    let context = tar_gz(&[("Dockerfile", dockerfile.as_bytes())], &[]);
    let id = s.submit_bytes("demo/stopped", &["v1"], &context).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_phase(&id, &["building"], T).await;
    let worker = *workers_of(&id).first().expect("a worker runs the build");
    let step = format!("sleep {seconds}");
    let deadline = std::time::Instant::now() + T;
    let running = loop {
        let running = descendants(worker);
        if running.iter().any(|(_, cmd)| cmd.ends_with(&step)) {
            break running;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the step never ran: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        running.iter().any(|(_, cmd)| cmd.starts_with("buildah ")),
        "{running:?}"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(worker).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_gone(u64::from(worker), Duration::from_secs(60)).await;
    for (pid, cmd) in &running {
        assert!(!alive(u64::from(*pid)), "{cmd} ({pid}) still runs");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_end_in_error_and_touch_nothing_outside_the_work_dir() {
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 2", &real_worker(d, "")),
        "",
        fast_timings(),
    )
    .await;
    // The worker's work dirs are made in <test>/work; a canary sits beside them.
    let work = s.dir.path().join("work");
    let canary = work.join("canary");
    std::fs::write(&canary, "untouched").unwrap();
    let dockerfile: &[u8] = b"FROM scratch\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_gz(
                &[("Dockerfile", dockerfile), ("../../canary", b"overwritten")],
                &[],
            ),
            "..",
        ),
        (
            "absolute",
            tar_gz(
                &[("Dockerfile", dockerfile), ("/tmp/buildman-escaped", b"x")],
                &[],
            ),
            "absolute",
        ),
        (
            "symlink",
            tar_gz(
                &[("Dockerfile", dockerfile), ("out/canary", b"overwritten")],
                &[("out", "../..")],
            ),
            "outside",
        ),
    ];
    for (name, archive, reason) in cases {
        let id = s.submit_bytes(&format!("demo/{name}"), &[], &archive).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let view = s
            .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
            .await;
        assert_eq!(view["phase"], "error", "{name}: {view}");
        let errors = messages(&s.logs(&format!("demo/{name}"), &id).await, "error").join("\n");
        assert!(errors.contains(reason), "{name}: {errors}");
    }
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "untouched");
    assert!(!Path::new("/tmp/buildman-escaped").exists());
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("canary")],
        "only the canary remains"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_registry_the_image_is_written_as_an_oci_layout() {
    let scratch = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &real_worker(d, "")),
        "",
        fast_timings(),
    )
    .await;
    std::fs::copy(buildman_testkit::busybox(), scratch.path().join("busybox")).unwrap();
    let busybox = std::fs::read(scratch.path().join("busybox")).unwrap();
    let dockerfile: &[u8] =
        b"FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo hi > /hi\"]\n";
    let context = tar_gz(&[("Dockerfile", dockerfile), ("busybox", &busybox)], &[]);
    let id = s.submit_bytes("demo/local", &["v1"], &context).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = s
        .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
        .await;
    assert_eq!(
        view["phase"],
        "complete",
        "{view}\n{:#?}",
        messages(&s.logs("demo/local", &id).await, "error")
    );
    let location = view["result_location"]
        .as_str()
        .expect("the view says where the image is");
    let dir = Path::new(location.strip_prefix("oci:").unwrap());
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert!(index.to_string().contains("\"v1\""), "{index}");
    s.stop().await;
}

/// Runs a build whose worker reaches the manager through a proxy and, mid-build (while
/// its RUN step prints), has its connection broken by `interrupt`: the build completes,
/// the worker dialled again, and every line is stored exactly once, in order.
async fn a_build_survives(repository: &str, interrupt: impl AsyncFnOnce(&Proxy)) {
    let proxy = Proxy::start().await;
    let port = proxy.port;
    let s = TestServer::start(
        |d| {
            let mut yaml = config_yaml("ALLOWED_WORKER_COUNT: 1", &real_worker(d, ""));
            // Workers dial the proxy; BUILDMAN_HOSTNAME is what executors hand them.
            yaml.push_str(&format!("BUILDMAN_HOSTNAME: 127.0.0.1:{port}\n"));
            yaml
        },
        "",
        fast_timings(),
    )
    .await;
    let grpc: std::net::SocketAddr = s.grpc.trim_start_matches("http://").parse().unwrap();
    proxy.target.send_replace(Some(grpc));

    let busybox = std::fs::read(buildman_testkit::busybox()).unwrap();
    // The loop must run (no cache hit), long enough to be interrupted.
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \": {}; for i in 1 2 3 4 5 6 7 8; do echo line-$i; /bin/busybox sleep 0.5; done\"]\n\
         RUN [\"/bin/busybox\", \"echo\", \"after\"]\n",
        buildman_testkit::unique()
    );
    let context = tar_gz(
        &[("Dockerfile", dockerfile.as_bytes()), ("busybox", &busybox)],
        &[],
    );
    let id = s.submit_bytes(repository, &[], &context).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    s.wait_phase(&id, &["building"], T).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = proxy.accepted.load(std::sync::atomic::Ordering::SeqCst);
    interrupt(&proxy).await;

    let view = s
        .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
        .await;
    let logs = s.logs(repository, &id).await;
    assert_eq!(view["phase"], "complete", "{view}\n{logs:#?}");
    assert!(
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) > before,
        "the worker dialled again after the cut"
    );
    let lines: Vec<String> = logs
        .iter()
        .filter_map(|e| e["message"].as_str())
        .map(|m| m.trim_end().to_string())
        .filter(|m| m.starts_with("line-") || m.starts_with("Step "))
        .collect();
    let expected: Vec<String> = ["Step 1/4", "Step 2/4", "Step 3/4"]
        .iter()
        .map(|s| s.to_string())
        .chain((1..=8).map(|i| format!("line-{i}")))
        .chain(["Step 4/4".to_string()])
        .collect();
    let got: Vec<String> = lines
        .iter()
        .map(|l| l.split(" :").next().unwrap_or(l).to_string())
        .collect();
    assert_eq!(got, expected, "every line exactly once, in order");
    assert_eq!(phases(&logs), COMPLETE_RUN);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reconnects_after_its_connection_drops_and_no_line_is_lost_or_doubled() {
    a_build_survives("demo/flaky", async |proxy| {
        // The connection is cut for 3 seconds.
        proxy.cut.send_replace(true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.cut.send_replace(false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connection_goes_silent_dials_again_and_no_line_is_lost_or_doubled() {
    // The connection stays open but carries nothing: only the worker's heartbeat timeout
    // finds out (it sends no HTTP/2 pings).
    a_build_survives("demo/silent", async |proxy| {
        proxy.silence.send(()).expect("a live connection");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_talk_tls_to_a_manager_with_a_certificate() {
    // A self-signed server certificate for 127.0.0.1 (not a CA: rustls refuses a CA
    // certificate as a server's).
    let certs = buildman_testkit::certs::Certs::make();
    let (cert, key) = (certs.path("self.pem"), certs.path("self.key"));
    let s = TestServer::start(
        |d| {
            let mut yaml = config_yaml("ALLOWED_WORKER_COUNT: 1", &real_worker(d, ""));
            yaml.push_str(&format!(
                "BUILDMAN_GRPC_TLS:\n  CERT: {}\n  KEY: {}\n",
                cert.display(),
                key.display()
            ));
            yaml
        },
        "",
        fast_timings(),
    )
    .await;
    // A plaintext client is refused: the listener speaks TLS only.
    let plain =
        buildman_proto::build_manager_client::BuildManagerClient::connect(s.grpc.clone()).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.ping(buildman_proto::PingRequest {}).await.is_err(),
    };
    assert!(
        refused,
        "plaintext gRPC must not work against a TLS listener"
    );

    let context = tar_gz(
        &[("Dockerfile", b"FROM scratch\nCOPY f /f\n"), ("f", b"x")],
        &[],
    );
    let id = s.submit_bytes("demo/tls", &[], &context).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = s
        .wait_phase(&id, &["complete", "error", "internalerror", "expired"], T)
        .await;
    assert_eq!(
        view["phase"],
        "complete",
        "{view}\n{:#?}",
        s.logs("demo/tls", &id).await
    );
    s.stop().await;
}
