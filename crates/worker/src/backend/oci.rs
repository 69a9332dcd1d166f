//! buildah and podman: one implementation, since podman's image commands are buildah's
//! (`podman build` is buildah's imagebuildah). The differences: the build subcommand
//! (`buildah bud` — also spelled `build` since 1.24, `bud` works on every version — vs
//! `podman build`), where `--runtime` goes (a `bud` flag for buildah, a global flag for
//! podman), and `rmi` of a missing image (buildah exits 125 "image not known", podman 0).

use std::path::Path;

use tokio::process::Command;

use super::auth::{AuthDir, registry_host, repository};
use super::process::run;
use super::{Backend, BackendConfig, BackendError, BuildRequest, Credentials, LineSink, Tool};

/// The name the credentials file gets for `--authfile`.
const AUTH_FILE: &str = "auth.json";

/// A buildah or podman backend (`config.tool` says which).
#[derive(Debug, Clone)]
pub struct OciBackend {
    /// Tool, storage and isolation settings.
    config: BackendConfig,
}

impl OciBackend {
    /// A backend for `config.tool` (buildah or podman; anything else is treated as buildah).
    pub fn new(config: BackendConfig) -> Self {
        Self { config }
    }

    /// The settings this backend runs with.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// True for podman, whose flags differ in the places the module doc lists.
    fn is_podman(&self) -> bool {
        self.config.tool == Tool::Podman
    }

    /// The tool's name for error labels.
    fn name(&self) -> &'static str {
        if self.is_podman() {
            "podman"
        } else {
            "buildah"
        }
    }

    /// `<tool> <global storage flags> <sub>`: storage flags must precede the subcommand.
    fn command(&self, sub: &str) -> Command {
        let c = &self.config;
        let mut cmd = match &c.program {
            Some(p) => Command::new(p),
            None => Command::new(self.name()),
        };
        if let Some(driver) = &c.storage_driver {
            cmd.arg("--storage-driver").arg(driver);
        }
        if let Some(root) = &c.root {
            cmd.arg("--root").arg(root);
        }
        if let Some(runroot) = &c.runroot {
            cmd.arg("--runroot").arg(runroot);
        }
        if self.is_podman()
            && let Some(runtime) = &c.runtime
        {
            cmd.arg("--runtime").arg(runtime);
        }
        cmd.arg(sub);
        cmd
    }

    /// `buildah push`-style label for errors.
    fn label(&self, sub: &str) -> String {
        format!("{} {sub}", self.name())
    }

    /// Adds `--authfile` (when there are credentials) and `--tls-verify=false` (insecure).
    fn registry_flags(cmd: &mut Command, auth: Option<&AuthDir>, insecure: bool) {
        if let Some(auth) = auth {
            cmd.arg("--authfile").arg(auth.file());
        }
        if insecure {
            cmd.arg("--tls-verify=false");
        }
    }
}

/// An auth dir holding `creds` for the registry of `image`, if there are credentials.
fn auth_for(image: &str, creds: Option<&Credentials>) -> Result<Option<AuthDir>, BackendError> {
    creds
        .map(|c| AuthDir::write([(registry_host(image), c)], AUTH_FILE, false))
        .transpose()
}

/// The error text of a missing image (`buildah rmi`: "nosuch:1: image not known").
/// How often a build runs when each run fails on [`is_storage_race`]: workers on one host
/// share buildah's storage, and a plain `rmi` of one build's image can remove a layer
/// another build's `--layers` cache lookup is reading at that moment. The lookup comes
/// before the step runs, and the step's cached layers make a second run quick.
const STORAGE_RACE_ATTEMPTS: u32 = 3;

/// Whether a build failed because a layer vanished under its cache lookup (buildah: "checking
/// if cached image exists from a previous build: getting top layer info: layer not known").
fn is_storage_race(err: &BackendError) -> bool {
    matches!(err, BackendError::Failed { tail, .. }
        if tail.iter().any(|l| l.contains("layer not known")))
}

fn is_image_unknown(err: &BackendError) -> bool {
    matches!(err, BackendError::Failed { tail, .. }
        if tail.iter().any(|l| l.contains("image not known")))
}

#[async_trait::async_trait]
impl Backend for OciBackend {
    fn tool(&self) -> Tool {
        self.config.tool
    }

    async fn pull(
        &self,
        image: &str,
        creds: Option<&Credentials>,
        insecure: bool,
        out: &LineSink,
    ) -> Result<(), BackendError> {
        let auth = auth_for(image, creds)?;
        let mut cmd = self.command("pull");
        Self::registry_flags(&mut cmd, auth.as_ref(), insecure);
        cmd.arg(image);
        let secrets: Vec<&str> = creds.map(|c| c.password.as_str()).into_iter().collect();
        run(cmd, &self.label("pull"), Some(out), &secrets).await
    }

    async fn build(&self, req: &BuildRequest, out: &LineSink) -> Result<String, BackendError> {
        if req.tag.is_empty() {
            return Err(BackendError::Invalid("empty build tag".into()));
        }
        let auth = if req.registry_creds.is_empty() {
            None
        } else {
            let entries = req.registry_creds.iter().map(|(h, c)| (h.as_str(), c));
            Some(AuthDir::write(entries, AUTH_FILE, false)?)
        };
        let iid_dir = tempfile::Builder::new()
            .prefix("buildman-iid-")
            .tempdir()
            .map_err(|e| BackendError::io("creating a temp dir for the image id", e))?;
        let iid_file = iid_dir.path().join("iid");

        let sub = if self.is_podman() { "build" } else { "bud" };
        let c = &self.config;
        let command = || {
            let mut cmd = self.command(sub);
            cmd.arg("--isolation").arg(&c.isolation);
            // --layers: cache every step (what Docker does); --force-rm: no containers left
            // behind by a failed step.
            cmd.arg("--layers").arg("--force-rm");
            cmd.arg("--format").arg(&c.format);
            cmd.arg("--iidfile").arg(&iid_file);
            if !self.is_podman()
                && let Some(runtime) = &c.runtime
            {
                cmd.arg("--runtime").arg(runtime);
            }
            Self::registry_flags(&mut cmd, auth.as_ref(), req.insecure_registries);
            if let Some(cache) = req.cache_from.as_deref().filter(|s| !s.is_empty()) {
                cmd.arg("--cache-from").arg(repository(cache));
            }
            for (name, value) in &req.build_args {
                cmd.arg("--build-arg").arg(format!("{name}={value}"));
            }
            cmd.arg("-f").arg(&req.dockerfile);
            cmd.arg("-t").arg(&req.tag);
            cmd.arg(&req.context_dir);
            cmd
        };

        let secrets: Vec<&str> = req
            .registry_creds
            .values()
            .map(|c| c.password.as_str())
            .collect();
        let mut attempt = 1;
        loop {
            match run(command(), &self.label(sub), Some(out), &secrets).await {
                Err(e) if attempt < STORAGE_RACE_ATTEMPTS && is_storage_race(&e) => {
                    attempt += 1;
                    out.line(format!(
                        "another build on this host removed an image layer this build's cache \
                         lookup was reading (\"layer not known\"); building again \
                         (attempt {attempt} of {STORAGE_RACE_ATTEMPTS})"
                    ));
                }
                result => break result?,
            }
        }
        let id = std::fs::read_to_string(&iid_file)
            .map_err(|e| BackendError::io("reading the built image's id", e))?;
        Ok(id.trim().to_string())
    }

    async fn push(
        &self,
        image: &str,
        destination: &str,
        creds: Option<&Credentials>,
        insecure: bool,
        out: &LineSink,
    ) -> Result<(), BackendError> {
        let destination = destination.strip_prefix("docker://").unwrap_or(destination);
        let auth = auth_for(destination, creds)?;
        let mut cmd = self.command("push");
        Self::registry_flags(&mut cmd, auth.as_ref(), insecure);
        // An explicit transport: a bare destination is parsed as one too, but
        // `docker://` leaves no doubt about names that look like other transports.
        cmd.arg(image).arg(format!("docker://{destination}"));
        let secrets: Vec<&str> = creds.map(|c| c.password.as_str()).into_iter().collect();
        run(cmd, &self.label("push"), Some(out), &secrets).await
    }

    async fn export_oci(
        &self,
        image: &str,
        dir: &Path,
        tag: &str,
        out: &LineSink,
    ) -> Result<(), BackendError> {
        let dir_text = dir
            .to_str()
            .ok_or_else(|| BackendError::Invalid(format!("non-UTF-8 path {}", dir.display())))?;
        // `oci:PATH:REF` splits at the first `:` after the transport.
        if dir_text.contains(':') {
            return Err(BackendError::Invalid(format!(
                "OCI layout path {dir_text:?} contains ':'"
            )));
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| BackendError::io(format!("creating {}", parent.display()), e))?;
        }
        let mut cmd = self.command("push");
        cmd.arg(image).arg(format!("oci:{dir_text}:{tag}"));
        run(cmd, &self.label("push"), Some(out), &[]).await
    }

    async fn remove(&self, image: &str) -> Result<(), BackendError> {
        // No -f: workers on one host share storage, and two builds with the same content
        // share an image id. A plain rmi only untags a name the image still has others
        // for, and leaves alone an image a running build uses.
        let mut cmd = self.command("rmi");
        cmd.arg(image);
        match run(cmd, &self.label("rmi"), None, &[]).await {
            // Nothing to remove (the build failed before tagging): the goal is met.
            Err(e) if is_image_unknown(&e) => Ok(()),
            other => other,
        }
    }
}
