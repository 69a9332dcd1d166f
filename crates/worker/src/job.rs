//! One job, start to end: register, unpack the context, pull the base images, ask for the
//! cached tag, build, push every tag (or write an OCI layout when no registry is set), and
//! report complete or error. The work dir and the built image are removed whatever the
//! outcome.

use std::path::{Path, PathBuf};

use buildman_proto as pb;
use pb::build_pack::BuildPack as Package;
use tokio::sync::mpsc;

use crate::backend::{self, Backend, BuildRequest, Credentials};
use crate::context::{self, Limits, Source};
use crate::session::{Logger, Session, SessionError, Target};

/// The worker's environment, as quay-builder reads it.
#[derive(Clone, Debug)]
pub struct WorkerEnv {
    /// The registration token (TOKEN).
    pub token: String,
    pub target: Target,
    /// CONTAINER_RUNTIME: buildah, podman or docker.
    pub container_runtime: Option<String>,
    /// BUILDAH_ISOLATION.
    pub buildah_isolation: Option<String>,
    /// DOCKER_HOST.
    pub docker_host: Option<String>,
    /// BUILDMAN_OUTPUT_DIR (buildman's own): where to write OCI layouts when the job names
    /// no registry. Quay's manager always names one.
    pub output_dir: Option<PathBuf>,
    /// Where work dirs are made (TMPDIR, else /tmp).
    pub work_root: PathBuf,
    pub limits: Limits,
}

impl WorkerEnv {
    /// Reads the environment through `get`; an error names the missing or bad variable.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let token = non_empty("TOKEN")
            .ok_or("TOKEN is not set: the worker needs its registration token")?;
        let server = non_empty("SERVER")
            .ok_or("SERVER is not set: the worker needs host:port of the build manager")?;
        let ca_pem = match non_empty("TLS_CERT_PATH") {
            Some(p) => Some(std::fs::read(&p).map_err(|e| format!("TLS_CERT_PATH {p}: {e}"))?),
            None => None,
        };
        Ok(WorkerEnv {
            token,
            target: Target {
                server,
                insecure: non_empty("INSECURE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
                ca_pem,
            },
            container_runtime: non_empty("CONTAINER_RUNTIME"),
            buildah_isolation: non_empty("BUILDAH_ISOLATION"),
            docker_host: non_empty("DOCKER_HOST"),
            output_dir: non_empty("BUILDMAN_OUTPUT_DIR").map(PathBuf::from),
            work_root: non_empty("TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from),
            limits: Limits::default(),
        })
    }
}

/// How a job ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Built and pushed; the manager was told `complete`.
    Complete,
    /// The build failed; the manager was told `error` and the log says why.
    Failed(String),
    /// The manager stopped knowing the job (cancelled or timed out); the build was stopped.
    Cancelled,
}

/// A failure of the build itself (reported as phase `error`), or of the session.
enum Failure {
    Build(String),
    Session(SessionError),
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        Failure::Session(e)
    }
}

/// Runs one job. `Err` only when the manager could not be reached or refused the session;
/// a failed build is an `Ok(Outcome::Failed)` after the manager was told.
pub async fn run(env: &WorkerEnv) -> Result<Outcome, SessionError> {
    let (mut session, pack) = Session::register(&env.target, &env.token).await?;
    let work = tempfile::Builder::new()
        .prefix("buildman-work-")
        .tempdir_in(&env.work_root)
        .map_err(|e| {
            SessionError::Endpoint(format!("work dir in {}: {e}", env.work_root.display()))
        })?;
    let backend = match backend::from_env(
        env.container_runtime.as_deref(),
        env.buildah_isolation.as_deref(),
        env.docker_host.as_deref(),
    ) {
        Ok(b) => b,
        Err(e) => {
            let logger = session.logger("unpacking");
            return report_failure(&mut session, &logger, e.to_string()).await;
        }
    };
    let image = format!("localhost/buildman-work/{}:latest", uuid_like(work.path()));
    let cancelled = session.cancelled();
    let result = tokio::select! {
        r = build(&mut session, &pack, env, backend.as_ref(), work.path(), &image) => Some(r),
        () = cancelled => None,
    };
    // Whatever happened: the image and the work dir go (the TempDir on drop).
    if let Err(e) = backend.remove(&image).await {
        tracing::debug!(error = %e, "removing the work image");
    }
    drop(work);
    match result {
        None => Ok(Outcome::Cancelled),
        Some(Ok(())) => {
            session.flush_logs().await;
            session.set_phase(pb::Phase::Complete, None).await?;
            Ok(Outcome::Complete)
        }
        Some(Err(Failure::Build(why))) => {
            let logger = session.logger("error");
            report_failure(&mut session, &logger, why).await
        }
        Some(Err(Failure::Session(e))) => Err(e),
    }
}

async fn report_failure(
    session: &mut Session,
    logger: &Logger,
    why: String,
) -> Result<Outcome, SessionError> {
    logger.error(&why).await;
    session.flush_logs().await;
    session.set_phase(pb::Phase::Error, None).await?;
    Ok(Outcome::Failed(why))
}

/// A short unique name for the work image, from the work dir's random suffix.
fn uuid_like(work: &Path) -> String {
    work.file_name()
        .map(|n| {
            n.to_string_lossy()
                .to_ascii_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        })
        .unwrap_or_default()
}

/// Docker's rule, which buildah follows too: registries on the loopback interface are
/// spoken to over plain http.
fn is_loopback_registry(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

/// `registry/repo:tag` → (registry, repo, tag) with Docker's defaults.
fn split_image(image: &str) -> (String, String, String) {
    let (name, tag) = match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (image, "latest"),
    };
    let name = name.split('@').next().unwrap_or(name);
    match name.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            (host.to_string(), rest.to_string(), tag.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string(), tag.to_string()),
    }
}

/// Forwards a backend's output lines to the manager's log, as they come.
fn forward(logger: Logger) -> (mpsc::Sender<String>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let task = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            logger
                .stream(&format!("{}\n", backend::normalize_step_line(&line)))
                .await;
        }
    });
    (tx, task)
}

async fn build(
    session: &mut Session,
    pack: &pb::BuildPack,
    env: &WorkerEnv,
    backend: &dyn Backend,
    work: &Path,
    image: &str,
) -> Result<(), Failure> {
    // Unpacking.
    session.set_phase(pb::Phase::Unpacking, None).await?;
    let source = match &pack.build_pack {
        Some(Package::PackageUrl(url)) => Source::Url(url.clone()),
        Some(Package::GitPackage(g)) => Source::Git {
            url: g.url.clone(),
            sha: g.sha.clone(),
            private_key: Some(g.private_key.clone()).filter(|k| !k.is_empty()),
        },
        None => {
            return Err(Failure::Build(
                "the build pack names neither a package URL nor a git repository".into(),
            ));
        }
    };
    let prepared = context::prepare(
        &source,
        &pack.context,
        &pack.dockerfile_path,
        work,
        &env.limits,
    )
    .await
    .map_err(|e| Failure::Build(e.to_string()))?;
    let dockerfile = std::fs::read_to_string(&prepared.dockerfile)
        .map_err(|e| Failure::Build(format!("reading the Dockerfile: {e}")))?;

    // Pulling: each base image, with its pull metadata.
    let base_creds = pack
        .base_image
        .as_ref()
        .filter(|b| !b.username.is_empty())
        .map(|b| Credentials::new(b.username.clone(), b.password.clone()));
    let bases = backend::from_lines(&dockerfile);
    let logger = session.logger("pulling");
    let mut insecure_pulls = false;
    if bases.is_empty() {
        session.set_phase(pb::Phase::Pulling, None).await?;
    }
    for base in &bases {
        let (registry, repo, tag) = split_image(base);
        insecure_pulls |= is_loopback_registry(&registry);
        let meta = pb::set_phase_request::PullMetadata {
            registry_url: registry.clone(),
            base_image: repo,
            base_image_tag: tag,
            pull_username: base_creds
                .as_ref()
                .map(|c| c.username.clone())
                .unwrap_or_default(),
        };
        session.set_phase(pb::Phase::Pulling, Some(meta)).await?;
        // A base image on the job's own registry is pulled with Quay's pull token.
        let creds = if registry == pack.registry && !pack.pull_token.is_empty() {
            Some(Credentials::token(pack.pull_token.clone()))
        } else {
            base_creds.clone()
        };
        let (out, task) = forward(logger.clone());
        let pulled = backend
            .pull(base, creds.as_ref(), is_loopback_registry(&registry), &out)
            .await;
        drop(out);
        let _ = task.await;
        pulled.map_err(|e| Failure::Build(format!("pulling base image {base}: {e}")))?;
    }

    // Pulling again, for the cache: the manager names a tag of this repository to prime
    // the build cache from, or none.
    let (first_repo, first_tag) = bases
        .first()
        .map(|b| {
            let (_, r, t) = split_image(b);
            (r, t)
        })
        .unwrap_or_default();
    let cached = session.cached_tag(&first_repo, &first_tag).await?;
    let push_creds = Credentials::token(pack.push_token.clone());
    let mut cache_from = None;
    if !cached.is_empty() && !pack.registry.is_empty() {
        session.set_phase(pb::Phase::Pulling, None).await?;
        let cached_image = format!("{}/{}:{cached}", pack.registry, pack.repository);
        let pull_creds = Credentials::token(pack.pull_token.clone());
        let (out, task) = forward(logger.clone());
        let primed = backend
            .pull(
                &cached_image,
                Some(&pull_creds),
                is_loopback_registry(&pack.registry),
                &out,
            )
            .await;
        drop(out);
        let _ = task.await;
        match primed {
            Ok(()) => cache_from = Some(cached_image),
            Err(e) => {
                logger
                    .stream(&format!("cache not primed ({cached_image}): {e}\n"))
                    .await
            }
        }
    }

    // Building: every output line streamed.
    session.set_phase(pb::Phase::Building, None).await?;
    let mut request = BuildRequest {
        context_dir: prepared.context_dir.clone(),
        dockerfile: prepared.dockerfile.clone(),
        tag: image.to_string(),
        cache_from,
        insecure_registries: insecure_pulls,
        ..Default::default()
    };
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"] {
        if let Ok(v) = std::env::var(var) {
            request.build_args.push((var.to_string(), v));
        }
    }
    if !pack.registry.is_empty() && !pack.pull_token.is_empty() {
        // Cache lookups in the job's own repository use Quay's pull token.
        request.registry_creds.insert(
            pack.registry.clone(),
            Credentials::token(pack.pull_token.clone()),
        );
    }
    if let (Some(creds), Some(base)) = (&base_creds, bases.first()) {
        request
            .registry_creds
            .insert(split_image(base).0, creds.clone());
    }
    let (out, task) = forward(session.logger("building"));
    let built = backend.build(&request, &out).await;
    drop(out);
    let _ = task.await;
    built.map_err(|e| Failure::Build(format!("the build failed: {e}")))?;

    // Pushing every tag, or writing them to an OCI layout.
    session.set_phase(pb::Phase::Pushing, None).await?;
    let (out, task) = forward(session.logger("pushing"));
    let pushed = push(pack, env, backend, image, &push_creds, &out).await;
    drop(out);
    let _ = task.await;
    pushed
}

async fn push(
    pack: &pb::BuildPack,
    env: &WorkerEnv,
    backend: &dyn Backend,
    image: &str,
    creds: &Credentials,
    out: &mpsc::Sender<String>,
) -> Result<(), Failure> {
    let tags = if pack.tag_names.is_empty() {
        vec!["latest".to_string()]
    } else {
        pack.tag_names.clone()
    };
    if !pack.registry.is_empty() {
        for tag in &tags {
            let destination = format!("{}/{}:{tag}", pack.registry, pack.repository);
            backend
                .push(
                    image,
                    &destination,
                    Some(creds),
                    is_loopback_registry(&pack.registry),
                    out,
                )
                .await
                .map_err(|e| Failure::Build(format!("pushing {destination}: {e}")))?;
        }
        return Ok(());
    }
    let Some(dir) = &env.output_dir else {
        return Err(Failure::Build(
            "the job names no registry to push to, and BUILDMAN_OUTPUT_DIR is not set".into(),
        ));
    };
    let layout = dir.join(&pack.repository);
    std::fs::create_dir_all(&layout)
        .map_err(|e| Failure::Build(format!("creating {}: {e}", layout.display())))?;
    for tag in &tags {
        backend
            .export_oci(image, &layout, tag, out)
            .await
            .map_err(|e| {
                Failure::Build(format!("writing the OCI layout {}: {e}", layout.display()))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_with_docker_defaults() {
        let s = |i| split_image(i);
        assert_eq!(
            s("alpine"),
            ("docker.io".into(), "alpine".into(), "latest".into())
        );
        assert_eq!(
            s("library/alpine:3"),
            ("docker.io".into(), "library/alpine".into(), "3".into())
        );
        assert_eq!(
            s("127.0.0.1:5000/base"),
            ("127.0.0.1:5000".into(), "base".into(), "latest".into())
        );
        assert_eq!(
            s("quay.io/ns/repo:v1"),
            ("quay.io".into(), "ns/repo".into(), "v1".into())
        );
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(!is_loopback_registry("quay.io"));
    }
}
