//! Worker sessions: what a worker's calls do — registration, heartbeats, phase changes,
//! log lines and the cached-tag question. The gRPC service is a thin adapter over these.
//! A final phase ends the job through the reaper.

mod packs;
mod streams;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use buildman_core::{Actor, Build, BuildPack, JobEnd, JobRecord, Phase};
use buildman_store::Store;
use serde_json::{Map, Value};

use crate::executors::Executors;
use crate::leases::LeaseMarks;
use crate::logwriter::LogWriter;
use crate::metrics::Metrics;
use crate::reaper::Reaper;
use crate::records::JobRecords;
use crate::settings::Settings;
use crate::tasks::Tasks;
use crate::tokens::{TokenContext, TokenError, TokenService, TokenType};
use crate::{ManagerError, phases};

pub use packs::{BuildPacks, OwnBuildPacks};
pub use streams::{HeartbeatStream, LogStream};

pub use buildman_core::PackageSource;

/// Everything a registered worker needs to run the build: the BuildPack and the job token.
#[derive(Clone)]
pub struct Assignment {
    pub job_token: String,
    pub pack: BuildPack,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("pack", &self.pack)
            .finish_non_exhaustive()
    }
}

/// A phase a worker reports, with the pull metadata it may carry.
#[derive(Clone, Debug, Default)]
pub struct PhaseReport {
    pub phase: Option<Phase>,
    pub pull_metadata: Map<String, Value>,
}

/// The worker-facing side of the manager.
pub struct WorkerSessions {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) records: JobRecords,
    pub(crate) executors: Executors,
    pub(crate) tokens: Arc<TokenService>,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) packs: Arc<dyn BuildPacks>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) log_writer: LogWriter,
    /// The queue leases this manager last wrote (see [`WorkerSessions::extend_lease`]).
    pub(crate) leases: Mutex<LeaseMarks>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tasks: Tasks,
}

impl WorkerSessions {
    /// RegisterBuildJob: accepts a registration token once, for a job that is scheduled and
    /// not yet started, and hands back the build's assignment with a job token.
    pub async fn register(&self, token: &str) -> Result<Assignment, ManagerError> {
        let ctx = self.tokens.verify(token, TokenType::Registration)?;
        let record = self.claim_job(&ctx).await?;
        self.metrics.registered(&record);
        // A worker that registers proves its control plane works.
        if let Some(c) = (record.executor_name.as_deref()).and_then(|n| self.executors.get(n)) {
            c.breaker.succeeded();
        }
        let build = self
            .store
            .get_build(ctx.build_id)
            .await?
            .ok_or(ManagerError::NotFound(ctx.build_id))?;
        if matches!(build.phase, Phase::Waiting | Phase::InternalError) {
            // The worker called in before the scheduler marked the build scheduled (an
            // executor whose worker starts before `start` returns): registration is the
            // latest point a build is scheduled, so the worker's phases are accepted.
            phases::change(
                self.store.as_ref(),
                build.id,
                Phase::BuildScheduled,
                Actor::Scheduler,
                None,
                Default::default(),
            )
            .await?;
        }
        let assignment = self.assignment(&build, &ctx, &record).await?;
        tracing::info!(build_id = %build.id, "worker registered");
        Ok(assignment)
    }

    /// Marks the job registered (its first heartbeat), once; returns its record.
    async fn claim_job(&self, ctx: &TokenContext) -> Result<JobRecord, ManagerError> {
        let ttl = self.settings.timings.heartbeat_ttl;
        let now = chrono::Utc::now().timestamp();
        let mut refusal = None;
        let registered = self
            .records
            .modify(&ctx.job_key, |record| {
                if record.build_id != ctx.build_id {
                    return Err(
                        TokenError::Refused("token does not belong to this job".into()).into(),
                    );
                }
                if !same_attempt(ctx, record) {
                    return Err(stale_attempt());
                }
                if record.registered() {
                    refusal = Some("a worker already registered for this job");
                    return Ok(None);
                }
                let mut next = record.clone();
                next.last_heartbeat = Some(now);
                Ok(Some((next, Some(heartbeat_ttl(ttl, record)))))
            })
            .await?;
        match registered {
            Some(record) => Ok(record),
            None => Err(ManagerError::JobNotWaiting {
                build: ctx.build_id,
                why: refusal.unwrap_or(
                    "the job is not waiting for a worker (it expired, ended or was cancelled)",
                ),
            }),
        }
    }

    /// The BuildPack of a registered worker; its job token lives as long as the job may
    /// (the rest of MACHINE_MAX_TIME) and names the job's attempt.
    async fn assignment(
        &self,
        build: &Build,
        ctx: &TokenContext,
        record: &JobRecord,
    ) -> Result<Assignment, ManagerError> {
        let pack = self.packs.build_pack(build).await?;
        let left = record.max_expiration - chrono::Utc::now().timestamp();
        let lifetime = Duration::from_secs(u64::try_from(left).unwrap_or(0).max(1));
        let attempt = &record.queue_item.state_id;
        let job_token =
            self.tokens
                .issue(TokenType::Job, build.id, &ctx.job_key, attempt, lifetime)?;
        Ok(Assignment { job_token, pack })
    }

    /// Checks a job token (not a registration token).
    pub fn verify_job_token(&self, token: &str) -> Result<TokenContext, ManagerError> {
        Ok(self.tokens.verify(token, TokenType::Job)?)
    }

    /// Heartbeat: `true` when the job exists and its expiry was pushed out.
    pub async fn heartbeat(&self, ctx: &TokenContext) -> Result<bool, ManagerError> {
        let ttl = self.settings.timings.heartbeat_ttl;
        let now = chrono::Utc::now().timestamp();
        let record = self
            .records
            .modify(&ctx.job_key, |record| {
                if record.build_id != ctx.build_id || now >= record.max_expiration {
                    return Ok(None);
                }
                if !same_attempt(ctx, record) {
                    return Err(stale_attempt());
                }
                let mut next = record.clone();
                next.last_heartbeat = Some(now);
                Ok(Some((next, Some(heartbeat_ttl(ttl, record)))))
            })
            .await?;
        let Some(record) = record else {
            return Ok(false);
        };
        self.extend_lease(&record).await?;
        Ok(true)
    }

    /// The lease marks; each critical section is one map operation, so a poisoned map is
    /// still consistent.
    fn leases(&self) -> MutexGuard<'_, LeaseMarks> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes a live job's queue lease out to `heartbeat_lease` from now when that moves
    /// it by more than the queue's minimum extension. That is the store's own rule, but the
    /// store needs a read to apply it; remembering what this manager last wrote skips the
    /// store altogether for most heartbeats. The remembered expiry never exceeds the real
    /// one, so the lease is always at least `heartbeat_lease - minimum_extension` ahead
    /// after a heartbeat. Another manager remembers nothing of these writes and simply
    /// writes itself when its own rule says so.
    async fn extend_lease(&self, record: &JobRecord) -> Result<(), ManagerError> {
        let s = &self.settings;
        let now = chrono::Utc::now();
        let lease_ms = i64::try_from(s.timings.heartbeat_lease.as_millis()).unwrap_or(i64::MAX);
        let minimum_ms =
            i64::try_from(s.queue_rules.minimum_extension.as_millis()).unwrap_or(i64::MAX);
        let now_ms = now.timestamp_millis();
        let wanted = now_ms.saturating_add(lease_ms);
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
            .store
            .extend_item(item, now, s.timings.heartbeat_lease, Duration::ZERO)
            .await?;
        let mut leases = self.leases();
        if held {
            leases.remember(record.build_id, &item.state_id, wanted, now_ms);
        } else {
            leases.forget(record.build_id);
        }
        Ok(())
    }

    /// SetPhase: records a worker's phase change. `Ok(false)` refuses it: the job is gone,
    /// or the transition table does not allow it (a final build, a step back to waiting).
    /// A repeat of the current phase succeeds. A final phase ends the job.
    /// Runs to its end when the worker disconnects mid-call (see [`Tasks::finish`]).
    pub async fn set_phase(
        self: &Arc<Self>,
        ctx: &TokenContext,
        report: PhaseReport,
    ) -> Result<bool, ManagerError> {
        let (sessions, ctx) = (Arc::clone(self), ctx.clone());
        let change = async move { sessions.record_phase(&ctx, report).await };
        (self.tasks.finish(change).await).unwrap_or(Err(ManagerError::ShuttingDown))
    }

    async fn record_phase(
        &self,
        ctx: &TokenContext,
        report: PhaseReport,
    ) -> Result<bool, ManagerError> {
        let Some(to) = report.phase else {
            return Ok(false);
        };
        let build = ctx.build_id;
        // The job's record, not the build row, says whether this worker may still report:
        // one orchestrator read instead of a store read per phase.
        let record = match self.records.get(build).await? {
            Some(record) if same_attempt(ctx, &record) => record,
            other => return self.repeat_or_refuse(build, to, other.is_some()).await,
        };
        let error = match to {
            Phase::Error => Some(phases::worker_error(self.store.as_ref(), build).await),
            _ => None,
        };
        if to == Phase::Complete {
            // Before the phase: whoever sees `complete` also sees where the image went.
            self.record_result_location(&record).await;
        }
        let before = phases::change(
            self.store.as_ref(),
            build,
            to,
            Actor::Worker,
            error.as_deref(),
            report.pull_metadata,
        )
        .await?;
        match before {
            Some(prev) if prev == to => return Ok(true),
            Some(_) => {}
            // A final phase repeated while its first report is still being handled.
            None => return self.repeat_or_refuse(build, to, false).await,
        }
        tracing::info!(build_id = %build, phase = %to, "phase");
        let end = match to {
            Phase::Complete => JobEnd::Complete,
            Phase::Error => JobEnd::Error,
            _ => return Ok(true),
        };
        if let Some(record) = self.records.take(build).await? {
            self.reaper.end(record, end).await?;
        }
        Ok(true)
    }

    /// A phase report the job's record or the transition table refused (`stale`: a later
    /// attempt runs): a repeat of the build's current phase still succeeds, as the
    /// protocol asks; anything else is refused.
    async fn repeat_or_refuse(
        &self,
        build: buildman_core::BuildId,
        to: Phase,
        stale: bool,
    ) -> Result<bool, ManagerError> {
        let current = self.store.get_build(build).await?.map(|b| b.phase);
        match current {
            Some(phase) if phase == to => Ok(true),
            Some(_) if stale => Err(stale_attempt()),
            _ => Ok(false),
        }
    }

    /// Records where the image went: `<registry>/<namespace>/<repository>` when the worker
    /// pushed, or the OCI layout a local worker wrote when no registry is set.
    async fn record_result_location(&self, job: &JobRecord) {
        let s = &self.settings;
        let (namespace, repository) = (&job.namespace, &job.repository);
        let location = match &s.result_dir {
            _ if !s.registry.is_empty() => format!("{}/{namespace}/{repository}", s.registry),
            Some(dir) => {
                let layout = dir.join(namespace).join(repository);
                format!("oci:{}", layout.display())
            }
            None => return,
        };
        if let Err(e) = self
            .store
            .set_result_location(job.build_id, &location)
            .await
        {
            tracing::warn!(build_id = %job.build_id, error = %e, "could not record where the image went");
        }
    }

    /// DetermineCachedTag: a tag worth pulling as a cache (see [`BuildPacks::cached_tag`]),
    /// or "".
    pub async fn cached_tag(&self, ctx: &TokenContext) -> Result<String, ManagerError> {
        match self.store.get_build(ctx.build_id).await? {
            Some(build) => self.packs.cached_tag(&build).await,
            None => Ok(String::new()),
        }
    }
}

/// True when the token is for the job's current attempt (a token naming none predates
/// attempts and is taken as the current one's).
fn same_attempt(ctx: &TokenContext, record: &JobRecord) -> bool {
    ctx.attempt
        .as_deref()
        .is_none_or(|a| a == record.queue_item.state_id)
}

/// The refusal of a token whose attempt is over (a later attempt runs).
fn stale_attempt() -> ManagerError {
    TokenError::Refused("token of an earlier attempt of this build: that attempt is over".into())
        .into()
}

/// A job's TTL after a heartbeat: the heartbeat TTL, cut short by MACHINE_MAX_TIME.
fn heartbeat_ttl(ttl: Duration, record: &JobRecord) -> Duration {
    let left = (record.max_expiration - chrono::Utc::now().timestamp()).max(1) as u64;
    ttl.min(Duration::from_secs(left))
}
