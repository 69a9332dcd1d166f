//! What a worker's calls do: registration, heartbeats, phase changes, log lines and the
//! cached-tag question. The gRPC server is a thin adapter over these.

use std::time::{Duration, Instant};

use buildman_core::{BuildId, BuildSource, JobRecord, LogEntry, Phase};
use serde_json::{Map, Value};

use buildman_store::WorkerLine;

use crate::jobs::JobOutcome;
use crate::tokens::{TokenContext, TokenType};
use crate::{Manager, ManagerError, unix_now};

/// Where the worker gets its build context from (the BuildPack's `build_pack` oneof).
#[derive(Clone, PartialEq, Eq)]
pub enum PackageSource {
    /// An http(s) URL of an archive or a Dockerfile.
    Url(String),
    /// A git repository at a commit, with an optional SSH key.
    Git {
        url: String,
        sha: String,
        private_key: String,
    },
}

/// Everything a registered worker needs to run the build (the BuildPack).
#[derive(Clone)]
pub struct Assignment {
    pub job_token: String,
    pub source: PackageSource,
    pub context: String,
    pub dockerfile_path: String,
    /// `namespace/repository`.
    pub repository: String,
    pub registry: String,
    pub pull_token: String,
    pub push_token: String,
    pub tags: Vec<String>,
    /// Credentials for pulling base images, when the build has them.
    pub base_image: Option<(String, String)>,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("repository", &self.repository)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// A phase a worker reports, with the pull metadata it may carry.
#[derive(Clone, Debug, Default)]
pub struct PhaseReport {
    pub phase: Option<Phase>,
    pub pull_metadata: Map<String, Value>,
}

impl Manager {
    /// RegisterBuildJob: accepts a registration token once, for a job that is scheduled and
    /// not yet started, and hands back the build's assignment with a job token.
    pub async fn register(&self, token: &str) -> Result<Assignment, ManagerError> {
        let ctx = self.inner.tokens.verify(token, TokenType::Registration)?;
        let s = &self.inner.settings;
        let now = unix_now();
        let mut refusal = None;
        let registered = self
            .modify_job(&ctx.job_id, |record| {
                if record.build_id != ctx.build_id {
                    return Err(ManagerError::Unauthenticated(
                        "token does not belong to this job".into(),
                    ));
                }
                if record.registered() {
                    refusal = Some("a worker already registered for this job");
                    return Ok(None);
                }
                let mut next = record.clone();
                next.last_heartbeat = Some(now);
                Ok(Some((
                    next,
                    Some(heartbeat_ttl(s.timings.heartbeat_ttl, record)),
                )))
            })
            .await?;
        let Some(_record) = registered else {
            return Err(ManagerError::Internal(format!(
                "cannot start job for build {}: {}",
                ctx.build_id,
                refusal.unwrap_or(
                    "the job is not waiting for a worker (it expired, ended or was cancelled)"
                )
            )));
        };
        let build = self
            .inner
            .store
            .get_build(ctx.build_id)
            .await?
            .ok_or(ManagerError::NotFound(ctx.build_id))?;
        let source = match &build.source {
            BuildSource::ArchiveUrl { url } => PackageSource::Url(url.clone()),
            BuildSource::Uploaded { file_id } => PackageSource::Url(format!(
                "{}/api/v1/filedrop/{file_id}",
                s.public_url.trim_end_matches('/')
            )),
            BuildSource::Git {
                url,
                sha,
                private_key,
            } => PackageSource::Git {
                url: url.clone(),
                sha: sha.clone(),
                private_key: private_key.clone().unwrap_or_default(),
            },
        };
        let job_token =
            self.inner
                .tokens
                .issue(TokenType::Job, build.id, &ctx.job_id, s.machine_max_time)?;
        tracing::info!(build_id = %build.id, "worker registered");
        Ok(Assignment {
            job_token,
            source,
            context: build.context.clone(),
            dockerfile_path: build.dockerfile_path.clone(),
            repository: build.full_repository(),
            registry: s.registry.clone(),
            pull_token: s.pull_token.clone(),
            push_token: s.push_token.clone(),
            tags: build.effective_tags(),
            base_image: None,
        })
    }

    /// Checks a job token (not a registration token).
    pub fn verify_job_token(&self, token: &str) -> Result<TokenContext, ManagerError> {
        self.inner.tokens.verify(token, TokenType::Job)
    }

    /// Heartbeat: `true` when the job exists and its expiry was pushed out.
    pub async fn heartbeat(&self, ctx: &TokenContext) -> Result<bool, ManagerError> {
        let s = &self.inner.settings;
        let now = unix_now();
        let record = self
            .modify_job(&ctx.job_id, |record| {
                if record.build_id != ctx.build_id || now >= record.max_expiration {
                    return Ok(None);
                }
                let mut next = record.clone();
                next.last_heartbeat = Some(now);
                Ok(Some((
                    next,
                    Some(heartbeat_ttl(s.timings.heartbeat_ttl, record)),
                )))
            })
            .await?;
        let Some(record) = record else {
            return Ok(false);
        };
        let rules = &s.queue_rules;
        self.inner
            .store
            .extend_item(
                &record.queue_item,
                crate::now(),
                s.timings.heartbeat_lease,
                rules.minimum_extension,
            )
            .await?;
        Ok(true)
    }

    /// SetPhase: records a worker's phase change. `Ok(false)` refuses it: the job is gone,
    /// or the build already reached a final phase. A repeat of the current phase succeeds.
    pub async fn set_phase(
        &self,
        ctx: &TokenContext,
        report: PhaseReport,
    ) -> Result<bool, ManagerError> {
        let Some(to) = report.phase else {
            return Ok(false);
        };
        let store = &self.inner.store;
        let build = ctx.build_id;
        let Some(current) = store.get_build(build).await? else {
            return Ok(false);
        };
        if current.phase == to {
            return Ok(true);
        }
        if self.inner.orchestrator.get(&ctx.job_id).await?.is_none() {
            return Ok(false);
        }
        let from = [
            Phase::BuildScheduled,
            Phase::Unpacking,
            Phase::Pulling,
            Phase::Building,
            Phase::Pushing,
        ];
        let error =
            (to == Phase::Error).then_some("the worker reported an error; see the build log");
        match store.set_phase(build, to, &from, error).await? {
            Some(prev) if prev == to => return Ok(true),
            Some(_) => {}
            None => return Ok(false),
        }
        self.log_phase(build, to, report.pull_metadata).await;
        tracing::info!(build_id = %build, phase = %to, "phase");
        let outcome = match to {
            Phase::Complete => {
                self.record_result_location(&current).await;
                JobOutcome::Complete
            }
            Phase::Error => JobOutcome::Error,
            _ => return Ok(true),
        };
        if let Some(record) = self.take_job(build).await? {
            self.finish_job(record, outcome).await?;
        }
        Ok(true)
    }

    /// With no registry, a local worker wrote the image as an OCI layout: say where.
    async fn record_result_location(&self, build: &buildman_core::Build) {
        let s = &self.inner.settings;
        let Some(dir) = s.result_dir.as_ref().filter(|_| s.registry.is_empty()) else {
            return;
        };
        let layout = dir.join(&build.namespace).join(&build.repository);
        let location = format!("oci:{}", layout.display());
        if let Err(e) = self.inner.store.set_result_location(build.id, &location).await {
            tracing::warn!(build_id = %build.id, error = %e, "could not record where the image went");
        }
    }

    /// DetermineCachedTag: the first of this build's tags that an earlier complete build of
    /// the same repository pushed, or "".
    pub async fn cached_tag(&self, ctx: &TokenContext) -> Result<String, ManagerError> {
        let store = &self.inner.store;
        let Some(build) = store.get_build(ctx.build_id).await? else {
            return Ok(String::new());
        };
        let earlier = store
            .list_builds(&build.namespace, &build.repository, 50, None)
            .await?;
        let pushed: Vec<String> = earlier
            .iter()
            .filter(|b| b.id != build.id && b.phase == Phase::Complete)
            .flat_map(|b| b.effective_tags())
            .collect();
        Ok(build
            .effective_tags()
            .into_iter()
            .find(|t| pushed.contains(t))
            .unwrap_or_default())
    }
}

/// A job's TTL after a heartbeat: the heartbeat TTL, cut short by MACHINE_MAX_TIME.
fn heartbeat_ttl(ttl: Duration, record: &JobRecord) -> Duration {
    let left = (record.max_expiration - unix_now()).max(1) as u64;
    ttl.min(Duration::from_secs(left))
}

/// The state of one LogMessage stream: the last sequence number seen, the token verified
/// on it, and when it last counted as a heartbeat.
pub struct LogStream {
    manager: Manager,
    last_sequence: Option<i32>,
    verified: Option<(String, TokenContext)>,
    last_heartbeat: Option<Instant>,
}

/// How often log lines count as heartbeats; more often would only repeat the same write.
const LOG_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

impl LogStream {
    /// A new stream.
    pub fn new(manager: Manager) -> Self {
        LogStream {
            manager,
            last_sequence: None,
            verified: None,
            last_heartbeat: None,
        }
    }

    /// One LogMessage: `Ok(false)` refuses a sequence number not greater than the last one
    /// on this stream, or a line that is not a JSON object; an accepted line is appended
    /// to the build's log and counts as a heartbeat. A line the build's log already holds
    /// (re-sent on a new stream after a reconnect) is acknowledged but not stored again.
    pub async fn message(
        &mut self,
        token: &str,
        sequence: i32,
        line: &str,
    ) -> Result<bool, ManagerError> {
        let ctx = match &self.verified {
            Some((t, ctx)) if t == token => ctx.clone(),
            _ => {
                let ctx = self.manager.verify_job_token(token)?;
                self.verified = Some((token.to_string(), ctx.clone()));
                ctx
            }
        };
        if self.last_sequence.is_some_and(|last| sequence <= last) {
            return Ok(false);
        }
        let Ok(entry) = LogEntry::from_worker_line(line) else {
            return Ok(false);
        };
        self.last_sequence = Some(sequence);
        let line = WorkerLine {
            build: ctx.build_id,
            sequence,
            entry,
        };
        self.manager.inner.store.append_worker_lines(&[line]).await?;
        if self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= LOG_HEARTBEAT_EVERY)
        {
            self.last_heartbeat = Some(Instant::now());
            self.manager.heartbeat(&ctx).await?;
        }
        Ok(true)
    }

    /// The build this stream writes to, once a message was accepted.
    pub fn build(&self) -> Option<BuildId> {
        self.verified.as_ref().map(|(_, c)| c.build_id)
    }
}
