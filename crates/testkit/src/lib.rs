//! Test support: a throwaway distribution registry (Debian's `docker-registry`) on
//! 127.0.0.1 with htpasswd auth for Quay's `$token` user, and busybox base images built with
//! buildah and no network. Tests need `buildah`, `docker-registry` and `busybox-static`
//! installed (`.ci/run` installs them). Plus the servers of the scale-out backends:
//! [`postgres`] (a PostgreSQL server per test binary, a fresh database per test) and
//! [`redis`] (a `redis-server` per test); [`moto`], moto's AWS emulator, and [`s3`], a bucket
//! on it for the contexts in object storage; and [`kube`], a fake Kubernetes API server.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod certs;
pub mod kube;
pub mod moto;
pub mod postgres;
pub mod redis;
pub mod s3;

/// A port on 127.0.0.1 that was free a moment ago (a server may still lose it to a race:
/// callers retry on another).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A fresh unique word (32 hex digits). A build step that echoes it misses buildah's layer
/// cache, which persists across test runs: a step that must really run (and print) needs one.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Spawns `command` with no input and its output discarded, killed when dropped; panics
/// saying how to install the program (`install`) when it is missing.
pub fn spawn_quiet(command: &mut tokio::process::Command, install: &str) -> tokio::process::Child {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let spawned = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} is not installed: {install}")
        }
        Err(e) => panic!("cannot start {program}: {e}"),
    }
}

/// The password the test registry accepts for user `$token`.
pub const TOKEN: &str = "push-token-0123456789";

/// The first of `names` found on PATH.
pub fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// The static busybox from the busybox-static package.
pub fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static is installed")
}

/// Installs the process-wide rustls provider, as the `buildman` binary does at start: a
/// test binary that builds TLS or HTTP clients from the libraries calls this first.
pub fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client (reqwest is built without a default rustls provider).
pub fn http_client() -> reqwest::Client {
    tls_provider();
    reqwest::Client::new()
}

/// A running registry; killed when dropped.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts `docker-registry serve` on a free loopback port with htpasswd auth for
    /// `$token` / [`TOKEN`].
    pub async fn start() -> Registry {
        let program =
            which(&["docker-registry", "registry"]).expect("docker-registry is installed");
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        // Cost 4 (the minimum) keeps every request's password check fast.
        let hash = bcrypt::hash(TOKEN, 4).expect("bcrypt");
        std::fs::write(dir.path().join("htpasswd"), format!("$token:{hash}\n")).expect("htpasswd");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n",
            data = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = tokio::process::Command::new(program)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("registry starts");
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

    /// Starts a registry (as [`Registry::start`]) holding a busybox base image as
    /// `base:latest`, built with buildah's default storage; `scratch` is a temp dir for its
    /// rootfs.
    pub async fn start_with_base(scratch: &Path) -> Registry {
        let registry = Registry::start().await;
        let buildah = Buildah { storage: None };
        // Unique per call: tests of one binary build their base images in parallel.
        let local = format!("localhost/buildman-test-base-{}", unique());
        buildah.make_base_image(&local, scratch);
        buildah.push(&local, &format!("{}/base:latest", registry.addr));
        buildah.run(&["rmi", &local]);
        registry
    }

    /// GETs a registry API path (below `/v2/`) with the token, as JSON.
    pub async fn json(&self, path: &str) -> serde_json::Value {
        let resp = http_client()
            .get(format!("http://{}/v2/{path}", self.addr))
            .basic_auth("$token", Some(TOKEN))
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .await
            .expect("registry request");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let bytes = resp.bytes().await.expect("registry body");
        serde_json::from_slice(&bytes).expect("registry JSON")
    }

    /// The image config of `repo:tag`, through its manifest.
    pub async fn image_config(&self, repo: &str, tag: &str) -> serde_json::Value {
        let manifest = self.json(&format!("{repo}/manifests/{tag}")).await;
        let digest = manifest["config"]["digest"]
            .as_str()
            .expect("a config digest")
            .to_string();
        self.json(&format!("{repo}/blobs/{digest}")).await
    }
}

/// buildah with a given storage (`None`: the default, shared with workers on this machine).
pub struct Buildah {
    pub storage: Option<(PathBuf, PathBuf)>,
}

impl Buildah {
    /// Runs buildah; returns stdout, panics on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new("buildah");
        if let Some((root, runroot)) = &self.storage {
            cmd.arg("--root").arg(root).arg("--runroot").arg(runroot);
        }
        let output = cmd.args(args).output().expect("buildah runs");
        assert!(
            output.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Commits a busybox-only image as `name` (`from scratch` + copy + config + commit): the
    /// only way to get a base image without the internet. `scratch` is a temp dir for the
    /// rootfs.
    pub fn make_base_image(&self, name: &str, scratch: &Path) {
        let rootfs = scratch.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).expect("busybox");
        for applet in ["sh", "echo", "cat", "ls", "sleep", "true"] {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
        let container = self.run(&["from", "scratch"]).trim().to_string();
        self.run(&[
            "copy",
            &container,
            rootfs.to_str().expect("utf-8 path"),
            "/",
        ]);
        self.run(&["config", "--cmd", "/bin/sh", &container]);
        self.run(&["commit", "--quiet", &container, name]);
        self.run(&["rm", &container]);
    }

    /// Pushes a local image to the test registry (plain http, `$token` login).
    pub fn push(&self, image: &str, destination: &str) {
        let creds = format!("$token:{TOKEN}");
        self.run(&[
            "push",
            "--tls-verify=false",
            "--creds",
            &creds,
            image,
            &format!("docker://{destination}"),
        ]);
    }
}
