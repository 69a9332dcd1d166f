//! The build backends against real tools: buildah (and podman when installed) building from,
//! and pushing to, a throwaway Debian `docker-registry` on 127.0.0.1 with htpasswd auth.
//!
//! Needs `apt-get install -y buildah runc docker-registry busybox-static` (podman optional);
//! tests print a notice and pass when a tool is missing. Each test has its own registry and
//! its own buildah storage (`--root`/`--runroot` in a temp dir), so they run in parallel
//! without seeing each other's images. Every test name starts with `backend_` so that
//! `cargo test -p buildman-worker backend` selects them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use buildman_worker::backend::{
    Backend, BackendConfig, BackendError, BuildRequest, Credentials, LineSink, Tool, find_on_path,
    from_env, normalize_step_line, select_tool,
};
use tokio::sync::mpsc;

/// The push/pull token the test registry accepts for user `$token`.
const TOKEN: &str = "push-token-0123456789";

/// A running registry; killed when dropped.
struct Registry {
    /// `127.0.0.1:PORT`.
    addr: String,
    /// Kept for kill_on_drop.
    _child: tokio::process::Child,
    /// Config, htpasswd and blob storage.
    _dir: tempfile::TempDir,
}

/// Everything a backend test needs, or `None` (after a notice) when a tool is missing.
struct Env {
    registry: Registry,
    /// Temp dir for storage, contexts and exports.
    tmp: tempfile::TempDir,
    /// The buildah executable (also used to make base images for podman).
    buildah: PathBuf,
    /// The static busybox that goes into base images.
    busybox: PathBuf,
}

impl Env {
    /// Starts a registry and a temp dir, or says what's missing and returns `None`.
    async fn start(test: &str) -> Option<Env> {
        let mut missing = Vec::new();
        let buildah = find_on_path("buildah");
        let registry = find_on_path("docker-registry").or_else(|| find_on_path("registry"));
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        if buildah.is_none() {
            missing.push("buildah");
        }
        if registry.is_none() {
            missing.push("docker-registry");
        }
        if busybox.is_none() {
            missing.push("busybox-static");
        }
        let (Some(buildah), Some(registry), Some(busybox)) = (buildah, registry, busybox) else {
            eprintln!("SKIP {test}: not installed: {}", missing.join(", "));
            return None;
        };
        let registry = start_registry(&registry).await;
        let tmp = tempfile::tempdir().unwrap();
        Some(Env {
            registry,
            tmp,
            buildah,
            busybox,
        })
    }

    /// A backend config for `tool` using this test's private storage.
    fn config(&self, tool: Tool) -> BackendConfig {
        let mut config = BackendConfig::new(tool);
        config.root = Some(self.tmp.path().join("storage"));
        config.runroot = Some(self.tmp.path().join("run"));
        config
    }

    /// Runs buildah with this test's storage; returns stdout, panics on failure.
    fn buildah(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(&self.buildah)
            .arg("--root")
            .arg(self.tmp.path().join("storage"))
            .arg("--runroot")
            .arg(self.tmp.path().join("run"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Local image names (`name:tag`) in this test's storage.
    fn images(&self) -> Vec<String> {
        self.buildah(&["images", "--format", "{{.Name}}:{{.Tag}}"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Commits a busybox-only image as `name` (`buildah from scratch` + copy + config +
    /// commit): the only way to get a base image without the internet.
    fn make_base_image(&self, name: &str) {
        let rootfs = self.tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy(&self.busybox, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "cat", "ls", "sleep", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let container = self.buildah(&["from", "scratch"]).trim().to_string();
        self.buildah(&["copy", &container, rootfs.to_str().unwrap(), "/"]);
        self.buildah(&["config", "--cmd", "/bin/sh", &container]);
        self.buildah(&["commit", "--quiet", &container, name]);
        self.buildah(&["rm", &container]);
    }

    /// Makes a base image and pushes it to the registry as `base:latest`.
    async fn push_base(&self, backend: &dyn Backend) -> String {
        self.make_base_image("localhost/base-src:latest");
        let dest = format!("{}/base:latest", self.registry.addr);
        let (tx, _lines) = collect();
        backend
            .push(
                "localhost/base-src:latest",
                &dest,
                Some(&Credentials::token(TOKEN)),
                true,
                &tx,
            )
            .await
            .unwrap();
        dest
    }

    /// A context dir with `dockerfile` and a file named `file`.
    fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(dir.join("file"), "file content\n").unwrap();
        dir
    }

    /// A build request for `context` tagged `tag`, with the token for the test registry.
    fn request(&self, context: &Path, tag: &str) -> BuildRequest {
        BuildRequest {
            context_dir: context.to_path_buf(),
            dockerfile: context.join("Dockerfile"),
            tag: tag.to_string(),
            insecure_registries: true,
            registry_creds: BTreeMap::from([(
                self.registry.addr.clone(),
                Credentials::token(TOKEN),
            )]),
            ..BuildRequest::default()
        }
    }
}

/// A sink and a task gathering what it receives (await the handle after dropping the sink).
fn collect() -> (LineSink, tokio::task::JoinHandle<Vec<String>>) {
    let (tx, mut rx) = mpsc::channel(64);
    let handle = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    (tx, handle)
}

/// Starts `docker-registry serve` on a free loopback port with htpasswd auth for `$token`.
async fn start_registry(program: &Path) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // Cost 4 (the minimum) keeps hashing and every request's check fast.
    let hash = bcrypt::hash(TOKEN, 4).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("$token:{hash}\n")).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
         http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n",
        data = dir.path().join("data").display(),
        htpasswd = dir.path().join("htpasswd").display(),
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = tokio::process::Command::new(program)
        .arg("serve")
        .arg(&config_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = http_client();
    for _ in 0..100 {
        if let Ok(resp) = client.get(format!("http://{addr}/v2/")).send().await {
            assert_eq!(resp.status(), 401, "the registry must ask for credentials");
            return Registry {
                addr,
                _child: child,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "registry did not come up: {}",
        std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
    );
}

/// An HTTP client (reqwest is built without a default rustls provider).
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// GETs a registry API path with the token, as JSON.
async fn registry_json(addr: &str, path: &str) -> serde_json::Value {
    let resp = http_client()
        .get(format!("http://{addr}/v2/{path}"))
        .basic_auth("$token", Some(TOKEN))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Builds, pushes, checks the pushed config, exports and removes: the worker's whole path.
async fn round_trip(env: &Env, backend: &dyn Backend) {
    let addr = env.registry.addr.clone();
    let base = env.push_base(backend).await;
    assert_eq!(base, format!("{addr}/base:latest"));

    let context = env.context(
        "ctx",
        &format!("FROM {addr}/base\nRUN echo hello > /hello\nCOPY file /file\n"),
    );
    let tag = "localhost/buildman-test/built:1";
    let (tx, lines) = collect();
    let id = backend
        .build(&env.request(&context, tag), &tx)
        .await
        .unwrap();
    drop(tx);
    let lines = lines.await.unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let step1 = format!("STEP 1/3: FROM {addr}/base");
    assert!(lines.contains(&step1), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "STEP 2/3: RUN echo hello > /hello"),
        "{lines:#?}"
    );
    assert_eq!(
        normalize_step_line(&step1),
        format!("Step 1/3 : FROM {addr}/base")
    );
    assert!(!lines.iter().any(|l| l.contains(TOKEN)));

    // Push with the right token, then read back what the registry holds.
    let (tx, _) = collect();
    let dest = format!("{addr}/ns/repo:v1");
    backend
        .push(tag, &dest, Some(&Credentials::token(TOKEN)), true, &tx)
        .await
        .unwrap();
    let manifest = registry_json(&addr, "ns/repo/manifests/v1").await;
    assert_eq!(
        manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
        "--format docker pushes Docker v2s2: {manifest}"
    );
    let digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(
        format!("sha256:{}", digest.trim_start_matches("sha256:")),
        id
    );
    let config = registry_json(&addr, &format!("ns/repo/blobs/{digest}")).await;
    let history: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        history.iter().any(|h| h.contains("echo hello > /hello")),
        "{history:?}"
    );
    assert!(history.iter().any(|h| h.contains("COPY")), "{history:?}");
    // busybox, the RUN layer and the COPY layer.
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        3,
        "{config}"
    );

    // A wrong token: the registry's refusal is in the error, the password is not.
    let (tx, _) = collect();
    let bad = Credentials::token("wrong-token-xyz");
    let err = backend
        .push(tag, &format!("{addr}/ns/repo:v2"), Some(&bad), true, &tx)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BackendError::Failed { .. }), "{err:?}");
    assert!(
        text.contains("unauthorized") || text.contains("authentication required"),
        "{text}"
    );
    assert!(!text.contains("wrong-token-xyz"), "{text}");

    // No registry: an OCI layout directory.
    let oci = env.tmp.path().join("export/oci");
    let (tx, _) = collect();
    backend.export_oci(tag, &oci, "v1", &tx).await.unwrap();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(oci.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    assert!(oci.join("oci-layout").exists());

    // Cleanup leaves no image, and is idempotent.
    assert!(
        env.images()
            .iter()
            .any(|i| i == "localhost/buildman-test/built:1")
    );
    backend.remove(tag).await.unwrap();
    assert!(
        !env.images()
            .iter()
            .any(|i| i.contains("buildman-test/built")),
        "{:?}",
        env.images()
    );
    backend.remove(tag).await.unwrap();
}

#[tokio::test]
async fn backend_buildah_builds_pushes_exports_and_removes() {
    let Some(env) = Env::start("backend_buildah_builds_pushes_exports_and_removes").await else {
        return;
    };
    let backend = env.config(Tool::Buildah).into_backend();
    round_trip(&env, backend.as_ref()).await;
}

#[tokio::test]
async fn backend_podman_builds_pushes_exports_and_removes() {
    if find_on_path("podman").is_none() {
        eprintln!("SKIP backend_podman_builds_pushes_exports_and_removes: podman not installed");
        return;
    }
    let Some(env) = Env::start("backend_podman_builds_pushes_exports_and_removes").await else {
        return;
    };
    let backend = env.config(Tool::Podman).into_backend();
    assert_eq!(backend.tool(), Tool::Podman);
    round_trip(&env, backend.as_ref()).await;
}

#[tokio::test]
async fn backend_buildah_pull_needs_the_right_credentials() {
    let Some(env) = Env::start("backend_buildah_pull_needs_the_right_credentials").await else {
        return;
    };
    let backend = env.config(Tool::Buildah).into_backend();
    let base = env.push_base(backend.as_ref()).await;
    env.buildah(&["rmi", "localhost/base-src:latest"]);

    let (tx, _) = collect();
    let err = backend
        .pull(&base, Some(&Credentials::token("nope-nope")), true, &tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert!(!err.to_string().contains("nope-nope"), "{err}");

    let (tx, lines) = collect();
    backend
        .pull(&base, Some(&Credentials::token(TOKEN)), true, &tx)
        .await
        .unwrap();
    drop(tx);
    let lines = lines.await.unwrap();
    assert!(lines.iter().any(|l| l.contains("Copying")), "{lines:#?}");
    assert!(env.images().contains(&base), "{:?}", env.images());
}

#[tokio::test]
async fn backend_buildah_failed_step_reports_its_output() {
    let Some(env) = Env::start("backend_buildah_failed_step_reports_its_output").await else {
        return;
    };
    let backend = env.config(Tool::Buildah).into_backend();
    let addr = env.registry.addr.clone();
    env.push_base(backend.as_ref()).await;
    let context = env.context(
        "ctx",
        // The pause: once, under heavy load, the marker was missing from the tail; it keeps
        // buildah's copying of the step's output from racing the step's exit.
        &format!("FROM {addr}/base\nRUN echo boom-marker-17 && sleep 0.3 && exit 3\n"),
    );
    let (tx, _) = collect();
    let err = backend
        .build(&env.request(&context, "localhost/failing:1"), &tx)
        .await
        .unwrap_err();
    let BackendError::Failed { command, tail, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(command, "buildah bud");
    assert!(tail.iter().any(|l| l == "boom-marker-17"), "{tail:#?}");
    assert!(err.to_string().contains("exit status 3"), "{err}");
    // --force-rm: the failed step's container is gone too.
    assert_eq!(env.buildah(&["containers", "--quiet"]).trim(), "");
    backend.remove("localhost/failing:1").await.unwrap();
}

#[tokio::test]
async fn backend_buildah_cancelled_build_leaves_no_process() {
    let Some(env) = Env::start("backend_buildah_cancelled_build_leaves_no_process").await else {
        return;
    };
    let backend = env.config(Tool::Buildah).into_backend();
    let addr = env.registry.addr.clone();
    env.push_base(backend.as_ref()).await;
    // A unique argument to find the RUN step's process by.
    let context = env.context("ctx", &format!("FROM {addr}/base\nRUN sleep 4243\n"));
    let request = env.request(&context, "localhost/cancelled:1");
    let (tx, mut rx) = mpsc::channel(64);
    {
        let build = backend.build(&request, &tx);
        tokio::pin!(build);
        loop {
            tokio::select! {
                result = &mut build => panic!("build ended: {result:?}"),
                line = rx.recv() => if line.as_deref() == Some("STEP 2/2: RUN sleep 4243") { break },
            }
        }
        // Let the RUN step really start, then drop the build.
        let running = async {
            while sleepers().is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            result = &mut build => panic!("build ended: {result:?}"),
            () = running => {}
            () = tokio::time::sleep(Duration::from_secs(20)) => panic!("RUN step never started"),
        }
    }
    // SIGTERM first: buildah stops the step and removes its working container itself.
    for _ in 0..200 {
        if sleepers().is_empty() && env.buildah(&["containers", "--quiet"]).trim().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the dropped build left {:?} running and containers {:?}",
        sleepers(),
        env.buildah(&["containers", "--quiet"])
    );
}

/// Live (non-zombie) processes running `sleep 4243`.
fn sleepers() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            cmdline.split(|b| *b == 0).any(|arg| arg == b"4243") && !stat.contains(") Z ")
        })
        .collect()
}

#[test]
fn backend_tool_selection() {
    let all = |_: Tool| true;
    let none = |_: Tool| false;
    let only_docker = |t: Tool| t == Tool::Docker;
    assert_eq!(select_tool(None, all).unwrap(), Tool::Buildah);
    assert_eq!(
        select_tool(Some(""), |t| t != Tool::Buildah).unwrap(),
        Tool::Podman
    );
    assert_eq!(select_tool(None, only_docker).unwrap(), Tool::Docker);
    assert_eq!(select_tool(Some("Podman"), all).unwrap(), Tool::Podman);
    let err = select_tool(Some("podman"), only_docker).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CONTAINER_RUNTIME is podman, but podman is not on PATH"
    );
    let err = select_tool(None, none).unwrap_err();
    assert!(err.to_string().contains("buildah, podman, docker"), "{err}");
    let err = select_tool(Some("rkt"), all).unwrap_err();
    assert!(err.to_string().contains("\"rkt\""), "{err}");
}

#[test]
fn backend_from_env_honours_container_runtime() {
    if find_on_path("buildah").is_some() {
        let backend = from_env(Some("buildah"), Some("chroot"), None).unwrap();
        assert_eq!(backend.tool(), Tool::Buildah);
        assert_eq!(from_env(None, None, None).unwrap().tool(), Tool::Buildah);
    }
    assert!(from_env(Some("nonsense"), None, None).is_err());
}

#[test]
fn backend_credentials_debug_hides_the_password() {
    let creds = Credentials::token("very-secret");
    let text = format!("{creds:?}");
    assert!(
        text.contains("$token") && !text.contains("very-secret"),
        "{text}"
    );
}
