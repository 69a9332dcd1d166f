//! Each manager's liveness key in the orchestrator (`managers/<id>`), refreshed well within
//! its TTL while the manager runs. When a job's record expires, the manager that sees the
//! expiry looks the job's manager up: if its key is gone, that manager died (a kill -9, a
//! lost host), the build was not at fault, and it runs again at once rather than after the
//! requeue delay (see [`JobEnd::ManagerLost`]).

use std::sync::Arc;
use std::time::Duration;

use buildman_core::{JobEnd, JobRecord};
use buildman_orchestrator::Orchestrator;

/// The key's value; only its presence matters.
const ALIVE: &str = "alive";

/// The key of manager `id`.
fn key(id: &str) -> String {
    format!("managers/{id}")
}

/// How long a manager's key outlives its last refresh: a quarter of the heartbeat TTL, so a
/// dead manager's key is gone long before its jobs' records expire, within 1–15 s.
pub(crate) fn ttl(heartbeat_ttl: Duration) -> Duration {
    (heartbeat_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// Keeps manager `id`'s key alive until the task is cancelled.
pub(crate) async fn keep_alive(orchestrator: Arc<dyn Orchestrator>, id: Arc<str>, ttl: Duration) {
    let key = key(&id);
    loop {
        let refreshed = match orchestrator
            .compare_and_set(&key, ALIVE, ALIVE, Some(ttl))
            .await
        {
            Ok(true) => Ok(true),
            Ok(false) => orchestrator.create(&key, ALIVE, Some(ttl)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = refreshed {
            tracing::warn!(error = %e, "could not refresh this manager's liveness key");
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

/// How the job of an expired `record` ended, seen from manager `me`: `end`, unless the
/// worker went silent because the manager that ran the job died.
pub(crate) async fn expired_end(
    orchestrator: &dyn Orchestrator,
    me: &str,
    record: &JobRecord,
    end: JobEnd,
) -> JobEnd {
    let Some(owner) = record.manager_id.as_deref() else {
        return end;
    };
    if end != JobEnd::WorkerSilent || owner == me || orchestrator.is_process_local() {
        return end;
    }
    match orchestrator.get(&key(owner)).await {
        Ok(None) => JobEnd::ManagerLost,
        Ok(Some(_)) => end,
        Err(e) => {
            tracing::warn!(error = %e, "could not tell whether a job's manager is alive");
            end
        }
    }
}
