//! One job, start to end: register, unpack the context, pull the base images, ask for the
//! cached tag, build, push every tag (or write an OCI layout when no registry is set), and
//! report complete or error. The work dir and the built image are removed whatever the
//! outcome. A job also ends, in `error`, when its log stream gives up
//! ([`crate::session::MAX_LOG_REOPENS`]).

mod steps;
mod summary;
mod trust;

use std::path::{Path, PathBuf};

use buildman_proto as pb;

use crate::backend;
use crate::context::Limits;
use crate::session::{LogFailure, Session, SessionError, Target};

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
        let ca_pem = trust::manager_ca(non_empty("CA_CERT"), non_empty("TLS_CERT_PATH"))?;
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
    /// The worker was told to stop (SIGTERM: its executor stopping it); the build's
    /// commands were stopped, nothing was reported.
    Terminated,
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

/// How the job's work stopped, before it is reported.
enum Stopped {
    Built(Result<(), Failure>),
    Cancelled,
    LogFailed(LogFailure),
    Terminated,
}

/// Runs one job until it ends or `stop` resolves (the worker's SIGTERM). `Err` only when
/// the manager could not be reached or refused the session; a failed build is an
/// `Ok(Outcome::Failed)` after the manager was told.
pub async fn run(env: &WorkerEnv, stop: impl Future<Output = ()>) -> Result<Outcome, SessionError> {
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
        Err(e) => return report_failure(&mut session, "unpacking", e.to_string()).await,
    };
    let image = format!("localhost/buildman-work/{}:latest", uuid_like(work.path()));
    let cancelled = session.cancelled();
    let log_failed = session.log_failed();
    let job = steps::Job {
        pack: &pack,
        env,
        backend: backend.as_ref(),
        work: work.path(),
        image: &image,
    };
    let stopped = tokio::select! {
        r = job.build(&mut session) => Stopped::Built(r),
        () = cancelled => Stopped::Cancelled,
        failure = log_failed => Stopped::LogFailed(failure),
        () = stop => Stopped::Terminated,
    };
    // The build's commands, when it was dropped mid-run, get their SIGTERM and SIGKILL
    // before the worker moves on (and may exit).
    backend::stopped_commands_gone().await;
    // Whatever happened: the image and the work dir go (the TempDir on drop, and with it
    // any output spool file).
    if let Err(e) = backend.remove(&image).await {
        tracing::debug!(error = %e, "removing the work image");
    }
    drop(work);
    report(&mut session, stopped).await
}

/// Tells the manager how the job ended.
async fn report(session: &mut Session, stopped: Stopped) -> Result<Outcome, SessionError> {
    let failure = match stopped {
        Stopped::Cancelled => return Ok(Outcome::Cancelled),
        Stopped::Terminated => return Ok(Outcome::Terminated),
        Stopped::Built(Err(Failure::Session(e))) => return Err(e),
        Stopped::Built(Err(Failure::Build(why))) => {
            return report_failure(session, "error", why).await;
        }
        Stopped::Built(Ok(())) => {
            // Complete only with every line of the build stored.
            session.flush_logs().await;
            match session.log_failure() {
                None => {
                    session.set_phase(pb::Phase::Complete, None).await?;
                    return Ok(Outcome::Complete);
                }
                Some(failure) => failure,
            }
        }
        Stopped::LogFailed(failure) => failure,
    };
    if failure.unreachable {
        return Err(SessionError::Unreachable {
            server: session.server().to_string(),
            status: failure.reason,
        });
    }
    report_failure(session, "error", failure.reason).await
}

/// Logs `why` as an error in `phase` and reports phase ERROR.
async fn report_failure(
    session: &mut Session,
    phase: &str,
    why: String,
) -> Result<Outcome, SessionError> {
    session.logger(phase).error(&why).await;
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
