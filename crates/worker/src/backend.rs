//! Build backends: the container tool that pulls base images, builds the Dockerfile and pushes
//! the result. One [`Backend`] per tool: buildah and podman share [`OciBackend`] (same CLI
//! shape), docker has [`DockerBackend`].
//!
//! # Command-line findings (Debian 12: buildah 1.28.2, podman 4.3.1, runc 1.1.5, registry 2.8.2)
//!
//! Installed with `apt-get install -y buildah runc docker-registry busybox-static podman`
//! (podman only for its own tests; `docker-registry` and `busybox-static` only for tests).
//!
//! - Storage: the default `overlay` driver works here as root (ext4 backing, native overlay
//!   diff), in `/var/lib/containers/storage` and equally in a `--root`/`--runroot` temp dir, so
//!   no `--storage-driver vfs` is needed. It stays configurable ([`BackendConfig`]) for hosts
//!   without overlay (containers/storage also honours `STORAGE_DRIVER` from the environment).
//! - Isolation: `buildah bud --isolation chroot` runs `RUN` steps without an OCI runtime, so
//!   crun's cgroup trouble never comes up; `podman build --isolation chroot` works the same.
//!   The default runtime on this machine is already runc (crun is not installed); buildah takes
//!   `--runtime PATH` on `bud`, podman as a global flag.
//! - Credentials: `--authfile FILE` with `{"auths":{"HOST":{"auth":base64(user:pw)}}}` works for
//!   `bud`, `pull` and `push` (so the password never shows in `ps`, unlike `--creds`).
//!   `--tls-verify=false` is needed for a plain-http registry even on 127.0.0.1 (otherwise
//!   "http: server gave HTTP response to HTTPS client"); containers/image makes no loopback
//!   exception the way dockerd does.
//! - A push with a wrong password fails at once (exit 125, no retries) with
//!   `Error: ... checking whether a blob sha256:... exists in HOST/REPO: unauthorized:
//!   authentication required`: that line ends up in [`BackendError::Failed`].
//! - Build output (stdout and stderr): `STEP 1/3: FROM 127.0.0.1:5000/base`, the pull's
//!   `Trying to pull ...`/`Copying blob ...` lines, `STEP 2/3: RUN echo hello > /hello`,
//!   `--> 12fb2556bd6`, `--> Using cache <id>` on a cache hit, `COMMIT built:1`,
//!   `Successfully tagged localhost/built:1`, then the full image id. Multi-stage builds prefix
//!   the stage: `[1/2] STEP 1/2: FROM base AS b`, `[2/2] COMMIT built:5`. See
//!   [`normalize_step_line`] for the Docker-style rewrite the manager's log matcher needs.
//! - `--iidfile FILE` gets the image id as `sha256:<64 hex>` (docker writes the same shape).
//! - `--cache-from` on buildah 1.28 takes a *repository* (no tag, no digest: it refuses
//!   `repo:tag` with "repository must contain neither a tag nor digest") and looks for
//!   `--cache-to` layer images there; misses and auth refusals there do not fail the build. So
//!   the backend passes the repository part of the cache image; the worker should also
//!   [`Backend::pull`] the cached tag in its pulling phase, as quay-builder does, and put the
//!   pull token for that registry into [`BuildRequest::registry_creds`] so those lookups are
//!   authorised.
//! - `--format docker` keeps Dockerfile instructions that OCI image configs cannot carry
//!   (buildah drops HEALTHCHECK, ONBUILD, SHELL in OCI format) and yields Docker v2s2
//!   manifests every registry version of Quay accepts; it is the default here.
//! - `buildah push IMAGE oci:DIR:TAG` writes `DIR/{index.json,oci-layout,blobs/}`.
//! - `buildah bud --force-rm` removes the intermediate containers of a failed build too.
//! - Cancelling: buildah's chroot isolation runs a step as `buildah-chroot-runtime` →
//!   `buildah-chroot-exec` → the command, all in buildah's process group. SIGTERM to the group
//!   makes buildah print "subprocess exited on terminated" and remove its working container;
//!   SIGKILL leaves the container (and its overlay mount) behind. Hence SIGTERM first, SIGKILL
//!   after a grace, when a backend future is dropped (see `process::run`).
//! - `buildah rmi -f NAME` of an unknown image exits 125 ("image not known"), podman's exits
//!   0; [`Backend::remove`] treats both as done. The `--layers` intermediate images and
//!   pulled base images stay as cache (pruning them could race a concurrent build in the same
//!   storage); `buildah rmi --prune` reclaims them when nothing builds. A plain `rmi` can
//!   still remove a layer another build's cache lookup is reading ("getting top layer info:
//!   layer not known"); such a build runs again, up to 3 runs in all.
//! - Test base images: `buildah from scratch`, `buildah copy` of a dir holding the static
//!   `/bin/busybox` (Debian's busybox-static) plus `sh`/`echo`/... symlinks, `buildah config
//!   --cmd`, `buildah commit`, `buildah rm`.
//! - Test registry: Debian's `docker-registry serve CONFIG` with `auth: htpasswd` works over
//!   plain http; bcrypt hashes `$2b$`/`$2y$` are both accepted.

mod auth;
mod docker;
mod dockerfile;
mod follow;
mod oci;
mod process;
mod pump;
mod syntax;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub(crate) use process::stopped_commands_gone;

pub use docker::DockerBackend;
pub use dockerfile::{from_lines, glued_tool_message, is_tool_message, normalize_step_line};
pub use oci::OciBackend;
pub use syntax::check_dockerfile;

/// Where a backend sends its output: lines (and chunks of over-long ones) without their
/// line ends, in the order they were read (stdout and stderr interleaved as they arrive).
/// Pushing never waits, so the tool is never slowed down; see [`crate::output`].
pub use crate::output::LineSink;

/// How many of the last output lines a failed command carries in its error.
pub const ERROR_TAIL_LINES: usize = 20;

/// Registry credentials; `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (`$token` for Quay's push/pull tokens).
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Quay's token login: user name `$token`, the token as password.
    pub fn token(token: impl Into<String>) -> Self {
        Self::new("$token", token)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What to build and how.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// The unpacked build context.
    pub context_dir: PathBuf,
    /// The Dockerfile (absolute, or relative to the worker's working directory).
    pub dockerfile: PathBuf,
    /// Local name for the result, e.g. `buildman/<build-uuid>:latest`.
    pub tag: String,
    /// An image (`host/repo:tag`) whose layers may prime the cache, if any.
    pub cache_from: Option<String>,
    /// Talk plain http / skip TLS verification for every registry the build pulls from.
    pub insecure_registries: bool,
    /// `--build-arg NAME=VALUE` pairs; proxy settings (`HTTP_PROXY`, `HTTPS_PROXY`,
    /// `NO_PROXY`, lower case too) go here, as they are predefined build args in all tools.
    pub build_args: Vec<(String, String)>,
    /// Credentials per registry host (`quay.io`, `127.0.0.1:5000`, `docker.io`) for pulls
    /// made by the build's FROM lines.
    pub registry_creds: BTreeMap<String, Credentials>,
}

/// Why a backend operation failed. No variant ever carries a password.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// None of the tools to choose from is on PATH.
    #[error("no container tool found: none of {} is on PATH", .0.join(", "))]
    NoTool(Vec<&'static str>),
    /// The requested tool is not on PATH.
    #[error("CONTAINER_RUNTIME is {0}, but {0} is not on PATH")]
    ToolMissing(&'static str),
    /// CONTAINER_RUNTIME names no tool we know.
    #[error("unknown CONTAINER_RUNTIME {0:?}: expected buildah, podman or docker")]
    UnknownTool(String),
    /// The request cannot be turned into a command line.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The tool could not be started.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The tool ran and exited unsuccessfully (or was killed).
    #[error("`{command}` failed ({status}); last output:\n{}", .tail.join("\n"))]
    Failed {
        /// Program and subcommand, e.g. `buildah push` (no arguments: they may be secret).
        command: String,
        /// The exit status as text.
        status: String,
        /// The last [`ERROR_TAIL_LINES`] output lines, passwords redacted.
        tail: Vec<String>,
    },
    /// The tool printed more than the output spool may hold while the manager was slower
    /// (see [`crate::output::SPOOL_MAX_BYTES`]); it was stopped.
    #[error("{0}; the command was stopped")]
    OutputBacklog(crate::output::Overflow),
    /// Local file handling around the tool (auth files, id files, unpacking) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl BackendError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// A container tool that can pull, build and push. One implementation per tool.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The tool this backend drives.
    fn tool(&self) -> Tool;

    /// Pulls `image` (with optional credentials for its registry; `insecure` allows plain http
    /// / unverified TLS). Output lines go to `out`.
    async fn pull(
        &self,
        image: &str,
        creds: Option<&Credentials>,
        insecure: bool,
        out: &LineSink,
    ) -> Result<(), BackendError>;

    /// Builds `req.dockerfile` in `req.context_dir` as `req.tag`, streaming every output line
    /// to `out` as it appears; returns the image id (`sha256:<hex>`).
    async fn build(&self, req: &BuildRequest, out: &LineSink) -> Result<String, BackendError>;

    /// Pushes local `image` to `destination` (`host/ns/repo:tag`), logging in with `creds`;
    /// `insecure` allows plain http / unverified TLS.
    async fn push(
        &self,
        image: &str,
        destination: &str,
        creds: Option<&Credentials>,
        insecure: bool,
        out: &LineSink,
    ) -> Result<(), BackendError>;

    /// Writes `image` as an OCI layout directory `dir` (index.json, oci-layout, blobs/) with
    /// the reference name `tag`; used when no registry is configured.
    async fn export_oci(
        &self,
        image: &str,
        dir: &Path,
        tag: &str,
        out: &LineSink,
    ) -> Result<(), BackendError>;

    /// Removes the local image `image` (call it whatever the build's outcome).
    async fn remove(&self, image: &str) -> Result<(), BackendError>;
}

/// The container tools a backend can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// buildah (`buildah bud`).
    Buildah,
    /// podman (`podman build`), same CLI shape as buildah.
    Podman,
    /// the docker CLI talking to a docker engine.
    Docker,
}

impl Tool {
    /// The order tools are tried in when CONTAINER_RUNTIME is unset.
    pub const PREFERENCE: [Tool; 3] = [Tool::Buildah, Tool::Podman, Tool::Docker];

    /// The executable's name.
    pub fn program(self) -> &'static str {
        match self {
            Tool::Buildah => "buildah",
            Tool::Podman => "podman",
            Tool::Docker => "docker",
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program())
    }
}

impl FromStr for Tool {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "buildah" => Ok(Tool::Buildah),
            "podman" => Ok(Tool::Podman),
            "docker" => Ok(Tool::Docker),
            _ => Err(BackendError::UnknownTool(s.to_string())),
        }
    }
}

/// Everything that selects and tunes a backend; [`from_env`] fills it from the worker's
/// environment, tests set storage to a temp dir.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Which tool to drive.
    pub tool: Tool,
    /// The executable; `None` runs `tool.program()` from PATH.
    pub program: Option<PathBuf>,
    /// buildah/podman `--isolation` (BUILDAH_ISOLATION); `chroot` needs no OCI runtime.
    pub isolation: String,
    /// buildah/podman `--storage-driver` (`overlay` works here; `vfs` where it does not).
    pub storage_driver: Option<String>,
    /// buildah/podman `--root` (image store).
    pub root: Option<PathBuf>,
    /// buildah/podman `--runroot` (state and locks).
    pub runroot: Option<PathBuf>,
    /// buildah/podman OCI runtime (e.g. `/usr/bin/runc`), used by non-chroot isolation.
    pub runtime: Option<PathBuf>,
    /// buildah/podman image format for builds: `docker` (default) or `oci`.
    pub format: String,
    /// docker's DOCKER_HOST (engine socket), passed to every docker command.
    pub docker_host: Option<String>,
}

impl BackendConfig {
    /// Defaults for `tool`: chroot isolation, docker format, the tool's own storage.
    pub fn new(tool: Tool) -> Self {
        Self {
            tool,
            program: None,
            isolation: "chroot".to_string(),
            storage_driver: None,
            root: None,
            runroot: None,
            runtime: None,
            format: "docker".to_string(),
            docker_host: None,
        }
    }

    /// The backend this configuration describes.
    pub fn into_backend(self) -> Box<dyn Backend + Send + Sync> {
        match self.tool {
            Tool::Buildah | Tool::Podman => Box::new(OciBackend::new(self)),
            Tool::Docker => Box::new(DockerBackend::new(self)),
        }
    }
}

/// Picks the backend from CONTAINER_RUNTIME ("buildah" | "podman" | "docker"); default: buildah
/// when it is on PATH, else podman, else docker; an error naming what's missing otherwise.
/// `buildah_isolation` is BUILDAH_ISOLATION (default `chroot`), `docker_host` DOCKER_HOST.
pub fn from_env(
    container_runtime: Option<&str>,
    buildah_isolation: Option<&str>,
    docker_host: Option<&str>,
) -> Result<Box<dyn Backend + Send + Sync>, BackendError> {
    let tool = select_tool(container_runtime, |t| find_on_path(t.program()).is_some())?;
    let mut config = BackendConfig::new(tool);
    if let Some(isolation) = buildah_isolation.filter(|s| !s.trim().is_empty()) {
        config.isolation = isolation.trim().to_string();
    }
    config.docker_host = docker_host
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string);
    Ok(config.into_backend())
}

/// Chooses the tool: the named one if it is `available`, else the first available one of
/// [`Tool::PREFERENCE`]. Empty names count as unset (executors may export `VAR=`).
pub fn select_tool(
    container_runtime: Option<&str>,
    available: impl Fn(Tool) -> bool,
) -> Result<Tool, BackendError> {
    match container_runtime.filter(|s| !s.trim().is_empty()) {
        Some(name) => {
            let tool: Tool = name.parse()?;
            if available(tool) {
                Ok(tool)
            } else {
                Err(BackendError::ToolMissing(tool.program()))
            }
        }
        None => Tool::PREFERENCE
            .into_iter()
            .find(|t| available(*t))
            .ok_or_else(|| BackendError::NoTool(Tool::PREFERENCE.map(Tool::program).to_vec())),
    }
}

/// The first executable file named `program` in PATH's directories.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
