//! What a worker's calls do: registration, heartbeats, phase changes, log lines and the
//! cached-tag question. The gRPC server is a thin adapter over these.

use std::collections::HashMap;
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
        if matches!(build.phase, Phase::Waiting | Phase::InternalError) {
            // The worker called in before the scheduler marked the build scheduled (an
            // executor whose worker starts before `start` returns): registration is the
            // latest point a build is scheduled, so the worker's phases are accepted.
            let from = [Phase::Waiting, Phase::InternalError];
            if let Some(prev) = self
                .inner
                .store
                .set_phase(build.id, Phase::BuildScheduled, &from, None)
                .await?
                && prev != Phase::BuildScheduled
            {
                self.log_phase(build.id, Phase::BuildScheduled, Default::default())
                    .await;
            }
        }
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

    /// Checks a job token, reusing `cache` when it holds the same token and that token is
    /// still valid: a stream repeats its token on every message, and an RS256 check costs
    /// more than everything else a heartbeat does.
    fn verify_job_token_cached(
        &self,
        cache: &mut Option<VerifiedToken>,
        token: &str,
    ) -> Result<TokenContext, ManagerError> {
        let now = u64::try_from(unix_now()).unwrap_or(0);
        if let Some(v) = cache.as_ref()
            && v.token == token
            && now <= v.valid_until
        {
            return Ok(v.context.clone());
        }
        let (context, valid_until) = self.inner.tokens.verify_until(token, TokenType::Job)?;
        *cache = Some(VerifiedToken {
            token: token.to_string(),
            context: context.clone(),
            valid_until,
        });
        Ok(context)
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
        self.extend_lease(&record).await?;
        Ok(true)
    }

    /// Pushes a live job's queue lease out to `heartbeat_lease` from now when that moves
    /// it by more than the queue's minimum extension. That is the store's own rule, but the
    /// store needs a read to apply it; remembering what this manager last wrote skips the
    /// store altogether for most heartbeats. The remembered expiry never exceeds the real
    /// one, so the lease is always at least `heartbeat_lease - minimum_extension` ahead
    /// after a heartbeat, as before. Another manager remembers nothing of these writes and
    /// simply writes itself when its own rule says so.
    async fn extend_lease(&self, record: &JobRecord) -> Result<(), ManagerError> {
        let s = &self.inner.settings;
        let now = crate::now();
        let lease_ms = i64::try_from(s.timings.heartbeat_lease.as_millis()).unwrap_or(i64::MAX);
        let minimum_ms =
            i64::try_from(s.queue_rules.minimum_extension.as_millis()).unwrap_or(i64::MAX);
        let wanted = now.timestamp_millis().saturating_add(lease_ms);
        let item = &record.queue_item;
        if self
            .leases()
            .is_fresh(record.build_id, &item.state_id, wanted, minimum_ms)
        {
            return Ok(());
        }
        // No minimum: the store writes unless the lease is already further out, so after
        // this call it ends at `wanted` or later.
        let held = self
            .inner
            .store
            .extend_item(item, now, s.timings.heartbeat_lease, Duration::ZERO)
            .await?;
        let mut leases = self.leases();
        if held {
            leases.remember(record.build_id, &item.state_id, wanted);
        } else {
            leases.forget(record.build_id);
        }
        Ok(())
    }

    /// Forgets what this manager wrote of a job's lease (the job ended).
    pub(crate) fn forget_lease(&self, build: BuildId) {
        self.leases().forget(build);
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
        if let Err(e) = self
            .inner
            .store
            .set_result_location(build.id, &location)
            .await
        {
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

/// A job token checked on a stream, with the context it carries, valid until
/// `valid_until` (unix seconds, clock skew included).
struct VerifiedToken {
    token: String,
    context: TokenContext,
    valid_until: u64,
}

/// The queue leases this manager last wrote, per build: the claim (`state_id`) and the
/// expiry (unix ms) it wrote.
#[derive(Default)]
pub(crate) struct Leases {
    marks: HashMap<BuildId, (String, i64)>,
    /// Marks are pruned of lapsed leases when the map reaches this size (jobs finished by
    /// another manager leave theirs behind).
    prune_at: usize,
}

/// The fewest marks before pruning is considered.
const LEASES_PRUNE_MIN: usize = 4096;

impl Leases {
    /// True when this claim's lease, as last written here, is already within `minimum`
    /// (ms) of `wanted` (unix ms).
    fn is_fresh(&self, build: BuildId, state_id: &str, wanted: i64, minimum: i64) -> bool {
        self.marks
            .get(&build)
            .is_some_and(|(claim, expires)| claim == state_id && wanted - expires <= minimum)
    }

    fn remember(&mut self, build: BuildId, state_id: &str, expires: i64) {
        if self.marks.len() >= self.prune_at.max(LEASES_PRUNE_MIN) {
            let now = crate::now().timestamp_millis();
            self.marks.retain(|_, (_, e)| *e > now);
            self.prune_at = 2 * self.marks.len();
        }
        self.marks.insert(build, (state_id.to_string(), expires));
    }

    fn forget(&mut self, build: BuildId) {
        self.marks.remove(&build);
    }
}

/// The state of one Heartbeat stream: the token verified on it.
pub struct HeartbeatStream {
    manager: Manager,
    verified: Option<VerifiedToken>,
}

impl HeartbeatStream {
    /// A new stream.
    pub fn new(manager: Manager) -> Self {
        HeartbeatStream {
            manager,
            verified: None,
        }
    }

    /// One heartbeat: `Ok(true)` when the job exists and its expiry was pushed out; an
    /// error for a bad token.
    pub async fn beat(&mut self, token: &str) -> Result<bool, ManagerError> {
        let ctx = self
            .manager
            .verify_job_token_cached(&mut self.verified, token)?;
        self.manager.heartbeat(&ctx).await
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
    verified: Option<VerifiedToken>,
    last_heartbeat: Option<Instant>,
}

/// How often log lines count as heartbeats. A heartbeat keeps the job for 60 s, and the
/// heartbeat stream sends one every 2 s anyway: counting a line every 10 s keeps a job
/// alive on log lines alone with a wide margin, without a job-record write per line.
const LOG_HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

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
        let ctx = self
            .manager
            .verify_job_token_cached(&mut self.verified, token)?;
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
        // Written with whatever other streams' lines are waiting (group commit).
        self.manager.log_writer().append(line).await?;
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
        self.verified.as_ref().map(|v| v.context.build_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_fresh_until_it_needs_moving_by_more_than_the_minimum() {
        let mut leases = Leases::default();
        let build = BuildId::new();
        assert!(!leases.is_fresh(build, "claim", 1_000_000, 60_000));
        leases.remember(build, "claim", 1_000_000);
        assert!(leases.is_fresh(build, "claim", 1_000_000, 60_000));
        assert!(leases.is_fresh(build, "claim", 1_060_000, 60_000));
        assert!(!leases.is_fresh(build, "claim", 1_060_001, 60_000));
        // Another claim of the item (a later attempt) is not this lease.
        assert!(!leases.is_fresh(build, "other-claim", 1_000_000, 60_000));
        leases.forget(build);
        assert!(!leases.is_fresh(build, "claim", 1_000_000, 60_000));
    }

    #[test]
    fn lapsed_leases_are_pruned() {
        let mut leases = Leases::default();
        for _ in 0..LEASES_PRUNE_MIN {
            leases.remember(BuildId::new(), "claim", 0);
        }
        let live = BuildId::new();
        let future = crate::now().timestamp_millis() + 60_000;
        leases.remember(live, "claim", future);
        assert_eq!(leases.marks.len(), 1, "the lapsed marks went");
        assert!(leases.is_fresh(live, "claim", future, 0));
    }
}
