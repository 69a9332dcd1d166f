//! The scheduler: claims queue items while a worker slot is free and starts a worker for
//! each. It is woken by events (a build submitted, a slot freed, an item due again); a
//! periodic poll remains only as a backstop.
//!
//! A slot is taken *before* an item is claimed, so a build waiting for capacity never
//! spends a retry; each claimed item is scheduled in its own task, so a slow control plane
//! does not hold up the others.

use std::time::Duration;

use buildman_core::job::job_key;
use buildman_core::{Build, ClaimedItem, JobRecord, Phase};
use buildman_executor::StartRequest;

use crate::jobs::JobOutcome;
use crate::tokens::TokenType;
use crate::{Manager, ManagerError, now, unix_now};

/// The scheduler loop; runs until its task is aborted.
pub async fn run(manager: Manager) {
    loop {
        loop {
            match schedule_next(&manager).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler: could not take the next build");
                    break;
                }
            }
        }
        let backstop = manager.inner.settings.timings.backstop_poll;
        let wait = match manager.inner.store.next_available_after(now()).await {
            Ok(Some(at)) => (at - now()).to_std().unwrap_or_default().min(backstop),
            _ => backstop,
        };
        tokio::select! {
            _ = manager.inner.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Takes a slot and claims one item; `false` when there is no capacity or no work.
async fn schedule_next(manager: &Manager) -> Result<bool, ManagerError> {
    let inner = &manager.inner;
    let holder = uuid::Uuid::new_v4().to_string();
    if !inner
        .orchestrator
        .acquire_slot(&holder, inner.settings.allowed_worker_count)
        .await?
    {
        return Ok(false);
    }
    let item = match inner.store.claim(now(), claim_lease(manager)).await {
        Ok(Some(item)) => item,
        other => {
            inner.orchestrator.release_slot(&holder).await?;
            return other.map(|_| false).map_err(Into::into);
        }
    };
    let manager = manager.clone();
    tokio::spawn(async move {
        let build_id = item.build_id;
        if let Err(e) = start_job(&manager, item, holder).await {
            tracing::error!(build_id = %build_id, error = %e, "could not schedule the build");
        }
    });
    Ok(true)
}

/// The first lease covers waiting for an executor and the slowest executor's setup.
fn claim_lease(manager: &Manager) -> Duration {
    let s = &manager.inner.settings;
    let setup = manager
        .inner
        .executors
        .iter()
        .map(|e| e.config.setup_time)
        .max()
        .unwrap_or_default();
    s.job_registration_timeout + setup + Duration::from_secs(60)
}

/// Creates the job record, starts a worker on the first executor that takes it, and marks
/// the build scheduled.
async fn start_job(manager: &Manager, item: ClaimedItem, slot: String) -> Result<(), ManagerError> {
    let inner = &manager.inner;
    let s = &inner.settings;
    let Some(build) = inner.store.get_build(item.build_id).await? else {
        inner.store.complete_item(&item).await?;
        inner.orchestrator.release_slot(&slot).await?;
        return Ok(());
    };
    if build.phase.is_terminal_for_worker() {
        // Cancelled (or otherwise ended) after it was queued: nothing to run.
        inner.store.complete_item(&item).await?;
        inner.orchestrator.release_slot(&slot).await?;
        manager.inner.wake.notify_one();
        return Ok(());
    }
    let key = job_key(build.id);
    let created = unix_now();
    let mut record = JobRecord {
        build_id: build.id,
        namespace: build.namespace.clone(),
        repository: build.repository.clone(),
        queue_item: item.clone(),
        slot_holder: slot.clone(),
        created_at: created,
        max_expiration: created + s.machine_max_time.as_secs() as i64,
        last_heartbeat: None,
        executor_name: None,
        execution_id: None,
        manager_id: Some(manager.id().to_string()),
    };
    let value =
        serde_json::to_string(&record).map_err(|e| ManagerError::Internal(e.to_string()))?;
    if !inner
        .orchestrator
        .create(&key, &value, Some(s.job_registration_timeout))
        .await?
    {
        // A job for this build is still recorded (a previous attempt not yet cleaned up):
        // give the item back with its retry; the old record's expiry cleans it up.
        tracing::warn!(build_id = %build.id, "a job for this build already exists; requeueing");
        inner
            .store
            .return_item(&item, now(), s.timings.no_executor_retry, true)
            .await?;
        inner.orchestrator.release_slot(&slot).await?;
        return Ok(());
    }

    let Some((executor_name, execution_id)) = start_worker(manager, &build, &item, &key).await?
    else {
        // No executor could start a worker. The job record goes, the item comes back later.
        if inner.orchestrator.take(&key).await?.is_some() {
            inner
                .store
                .return_item(&item, now(), s.timings.no_executor_retry, false)
                .await?;
            inner.orchestrator.release_slot(&slot).await?;
            manager.wake_after(s.timings.no_executor_retry);
            manager.inner.wake.notify_one();
        }
        return Ok(());
    };

    let setup_time = inner
        .executors
        .iter()
        .find(|e| e.config.name == executor_name)
        .map(|e| e.config.setup_time)
        .unwrap_or(s.job_registration_timeout);
    let scheduled = manager
        .modify_job(&key, |current| {
            // The worker may already have registered: keep what it wrote.
            record = current.clone();
            record.executor_name = Some(executor_name.clone());
            record.execution_id = Some(execution_id.clone());
            let ttl = if record.registered() {
                s.timings.heartbeat_ttl
            } else {
                setup_time
            };
            Ok(Some((record.clone(), Some(ttl))))
        })
        .await?;
    if scheduled.is_none() {
        // The job ended (expired or cancelled) while the executor was starting the worker,
        // before anyone knew its execution id: stop it here.
        tracing::warn!(build_id = %build.id, "job ended while its worker was starting; stopping the worker");
        manager.stop_worker(&executor_name, &execution_id).await;
        return Ok(());
    }
    let from = [Phase::Waiting, Phase::InternalError, Phase::BuildScheduled];
    match inner
        .store
        .set_phase(build.id, Phase::BuildScheduled, &from, None)
        .await?
    {
        Some(prev) if prev != Phase::BuildScheduled => {
            manager
                .log_phase(build.id, Phase::BuildScheduled, Default::default())
                .await
        }
        Some(_) => {}
        None => {
            // Either the worker registered (which marks the build scheduled) and already
            // reported a later phase, or the build was cancelled or ended meanwhile.
            let current = inner.store.get_build(build.id).await?.map(|b| b.phase);
            if current.is_none_or(|p| p.is_final()) {
                if let Some(record) = manager.take_job(build.id).await? {
                    manager.finish_job(record, JobOutcome::Cancelled).await?;
                }
                return Ok(());
            }
        }
    }
    inner
        .store
        .extend_item(
            &item,
            now(),
            setup_time + Duration::from_secs(60),
            Duration::ZERO,
        )
        .await?;
    tracing::info!(build_id = %build.id, executor = %executor_name, execution_id = %execution_id, "worker started");
    Ok(())
}

/// Tries the executors in order; returns the one that started a worker and its id.
async fn start_worker(
    manager: &Manager,
    build: &Build,
    item: &ClaimedItem,
    key: &str,
) -> Result<Option<(String, String)>, ManagerError> {
    let inner = &manager.inner;
    let s = &inner.settings;
    let mut failures = Vec::new();
    for entry in &inner.executors {
        let c = &entry.config;
        if !c.allows_namespace(&build.namespace) {
            tracing::debug!(build_id = %build.id, executor = %c.name, "executor not allowed for namespace");
            continue;
        }
        if c.minimum_retry_threshold > item.retries_remaining {
            tracing::debug!(build_id = %build.id, executor = %c.name, "too few retries left for executor");
            continue;
        }
        let token = inner.tokens.issue(
            TokenType::Registration,
            build.id,
            key,
            s.job_registration_timeout + c.setup_time + Duration::from_secs(30),
        )?;
        let request = StartRequest {
            build_id: build.id,
            token,
            server: s.worker_server.clone(),
            registry_hostname: s.registry.clone(),
            insecure: s.worker_insecure,
            max_lifetime_s: c.max_lifetime_s,
        };
        match entry.executor.start(&request).await {
            Ok(execution_id) => return Ok(Some((c.name.clone(), execution_id))),
            Err(e) => {
                tracing::warn!(build_id = %build.id, executor = %c.name, error = %e, "executor could not start a worker; trying the next");
                failures.push(format!("{}: {e}", c.name));
            }
        }
    }
    let why = if failures.is_empty() {
        "no executor is allowed to run this build (namespace or retry policy)".to_string()
    } else {
        format!("no executor could start a worker ({})", failures.join("; "))
    };
    tracing::error!(build_id = %build.id, "{why}");
    manager
        .log(build.id, &[buildman_core::LogEntry::error(why)])
        .await;
    Ok(None)
}
