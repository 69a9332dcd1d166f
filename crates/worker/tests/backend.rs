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

use buildman_testkit::{Buildah, Registry, TOKEN};
use buildman_worker::backend::{
    Backend, BackendConfig, BackendError, BuildRequest, Credentials, LineSink, Tool, find_on_path,
    from_env, normalize_step_line, select_tool,
};
use buildman_worker::output::spool;

/// Everything a backend test needs: a registry and a temp dir for storage, contexts and
/// exports. buildah, docker-registry and busybox-static must be installed (`.ci/run` does).
struct Env {
    registry: Registry,
    tmp: tempfile::TempDir,
}

impl Env {
    /// Starts a registry and a temp dir.
    async fn start() -> Env {
        Env {
            registry: Registry::start().await,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A backend config for `tool` using this test's private storage.
    fn config(&self, tool: Tool) -> BackendConfig {
        let mut config = BackendConfig::new(tool);
        config.root = Some(self.tmp.path().join("storage"));
        config.runroot = Some(self.tmp.path().join("run"));
        config
    }

    /// buildah with this test's storage.
    fn buildah_cli(&self) -> Buildah {
        Buildah {
            storage: Some((self.tmp.path().join("storage"), self.tmp.path().join("run"))),
        }
    }

    /// Runs buildah with this test's storage; returns stdout, panics on failure.
    fn buildah(&self, args: &[&str]) -> String {
        self.buildah_cli().run(args)
    }

    /// Local image names (`name:tag`) in this test's storage.
    fn images(&self) -> Vec<String> {
        self.buildah(&["images", "--format", "{{.Name}}:{{.Tag}}"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Commits a busybox-only base image as `name`.
    fn make_base_image(&self, name: &str) {
        self.buildah_cli().make_base_image(name, self.tmp.path());
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
    let (tx, mut rx) = spool(&std::env::temp_dir());
    let handle = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(chunk) = rx.next().await {
            lines.push(chunk.text);
        }
        lines
    });
    (tx, handle)
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
    let manifest = env.registry.json("ns/repo/manifests/v1").await;
    assert_eq!(
        manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
        "--format docker pushes Docker v2s2: {manifest}"
    );
    let digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(
        format!("sha256:{}", digest.trim_start_matches("sha256:")),
        id
    );
    let config = env.registry.json(&format!("ns/repo/blobs/{digest}")).await;
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
    let env = Env::start().await;
    let backend = env.config(Tool::Buildah).into_backend();
    round_trip(&env, backend.as_ref()).await;
}

#[tokio::test]
async fn backend_podman_builds_pushes_exports_and_removes() {
    if find_on_path("podman").is_none() {
        eprintln!("SKIP backend_podman_builds_pushes_exports_and_removes: podman not installed");
        return;
    }
    let env = Env::start().await;
    let backend = env.config(Tool::Podman).into_backend();
    assert_eq!(backend.tool(), Tool::Podman);
    round_trip(&env, backend.as_ref()).await;
}

#[tokio::test]
async fn backend_buildah_pull_needs_the_right_credentials() {
    let env = Env::start().await;
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
    let env = Env::start().await;
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
    let env = Env::start().await;
    let backend = env.config(Tool::Buildah).into_backend();
    let addr = env.registry.addr.clone();
    env.push_base(backend.as_ref()).await;
    // A unique argument to find the RUN step's process by.
    let context = env.context("ctx", &format!("FROM {addr}/base\nRUN sleep 4243\n"));
    let request = env.request(&context, "localhost/cancelled:1");
    let (tx, mut rx) = spool(&std::env::temp_dir());
    {
        let build = backend.build(&request, &tx);
        tokio::pin!(build);
        loop {
            tokio::select! {
                result = &mut build => panic!("build ended: {result:?}"),
                chunk = rx.next() => if chunk.map(|c| c.text).as_deref() == Some("STEP 2/2: RUN sleep 4243") { break },
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

/// A buildah whose first `failures` builds fail as buildah does when another build on the
/// host removes a layer the cache lookup reads; every other call is the real buildah.
/// Returns the script's path and the file counting the builds it failed.
fn racing_buildah(env: &Env, failures: u32) -> (PathBuf, PathBuf) {
    let real = find_on_path("buildah").expect("buildah installed");
    let count = env.tmp.path().join("raced");
    let script = env.tmp.path().join("buildah-racing");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             for a in \"$@\"; do [ \"$a\" = bud ] && bud=1; done\n\
             n=$(cat {count} 2>/dev/null || echo 0)\n\
             if [ -n \"$bud\" ] && [ \"$n\" -lt {failures} ]; then\n\
               echo $((n + 1)) > {count}\n\
               echo 'Error: checking if cached image exists from a previous build: getting top layer info: layer not known' >&2\n\
               exit 125\n\
             fi\n\
             exec {real} \"$@\"\n",
            count = count.display(),
            real = real.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, count)
}

/// Builds a small context with [`racing_buildah`] failing the first `failures` builds:
/// the result, the build's log lines and how many builds the script failed.
async fn build_racing(
    env: &Env,
    failures: u32,
) -> (Result<String, BackendError>, Vec<String>, u32) {
    let (script, raced) = racing_buildah(env, failures);
    let mut config = env.config(Tool::Buildah);
    config.program = Some(script);
    let backend = config.into_backend();
    let context = env.context("ctx", "FROM scratch\nCOPY file /file\n");
    let (tx, lines) = collect();
    let built = backend
        .build(&env.request(&context, "localhost/raced:latest"), &tx)
        .await;
    drop(tx);
    let raced = std::fs::read_to_string(&raced)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (built, lines.await.unwrap(), raced)
}

#[tokio::test]
async fn backend_buildah_builds_again_when_another_build_removed_a_layer_under_it() {
    let env = Env::start().await;
    let (built, lines, raced) = build_racing(&env, 1).await;
    assert!(built.is_ok_and(|id| !id.is_empty()), "{lines:?}");
    assert_eq!(raced, 1);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("layer not known") && l.contains("attempt 2 of 3")),
        "the build log says why it ran again: {lines:?}"
    );
    assert!(env.images().iter().any(|i| i == "localhost/raced:latest"));
}

#[tokio::test]
async fn backend_buildah_gives_up_a_build_that_keeps_losing_layers() {
    let env = Env::start().await;
    let (built, _, raced) = build_racing(&env, 99).await;
    assert!(
        matches!(&built, Err(BackendError::Failed { tail, .. })
            if tail.iter().any(|l| l.contains("layer not known"))),
        "{built:?}"
    );
    assert_eq!(raced, 3, "three runs, then the error");
}
