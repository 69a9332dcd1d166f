//! Job records in the orchestrator, typed: every role reads and changes them through here,
//! so the record's JSON form and the compare-and-set loop exist once.

use std::sync::Arc;
use std::time::Duration;

use buildman_core::job::job_key;
use buildman_core::{BuildId, JobRecord};
use buildman_orchestrator::Orchestrator;

use crate::ManagerError;

/// What a change to a job record decided: the new record and its TTL, or nothing to write.
pub(crate) type Change = Option<(JobRecord, Option<Duration>)>;

/// The job records of the orchestrator.
#[derive(Clone)]
pub(crate) struct JobRecords {
    orchestrator: Arc<dyn Orchestrator>,
}

impl JobRecords {
    pub(crate) fn new(orchestrator: Arc<dyn Orchestrator>) -> Self {
        JobRecords { orchestrator }
    }

    /// Writes a new job's record under its build's key; false when one exists already.
    pub(crate) async fn create(
        &self,
        record: &JobRecord,
        ttl: Duration,
    ) -> Result<bool, ManagerError> {
        let value = serde_json::to_string(record).map_err(ManagerError::JobRecord)?;
        Ok(self
            .orchestrator
            .create(&job_key(record.build_id), &value, Some(ttl))
            .await?)
    }

    /// A build's live job record.
    pub(crate) async fn get(&self, build: BuildId) -> Result<Option<JobRecord>, ManagerError> {
        self.orchestrator
            .get(&job_key(build))
            .await?
            .map(|raw| parse(&raw))
            .transpose()
    }

    /// Reads the record under `key`, lets `f` decide its new value and TTL, and writes it
    /// back with a compare-and-set, retrying when another call changed it in between.
    /// Returns the record written, or `None` when there is no job (or `f` chose to write
    /// nothing).
    pub(crate) async fn modify(
        &self,
        key: &str,
        mut f: impl FnMut(&JobRecord) -> Result<Change, ManagerError>,
    ) -> Result<Option<JobRecord>, ManagerError> {
        loop {
            let Some(raw) = self.orchestrator.get(key).await? else {
                return Ok(None);
            };
            let current = parse(&raw)?;
            let Some((next, ttl)) = f(&current)? else {
                return Ok(None);
            };
            let value = serde_json::to_string(&next).map_err(ManagerError::JobRecord)?;
            if self
                .orchestrator
                .compare_and_set(key, &raw, &value, ttl)
                .await?
            {
                return Ok(Some(next));
            }
        }
    }

    /// Every live job's record (a record that does not parse is left out, with a warning).
    pub(crate) async fn all(&self) -> Result<Vec<JobRecord>, ManagerError> {
        let listed = self.orchestrator.list("building/").await?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, raw)| match parse(&raw) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "ignoring a job record that does not parse");
                    None
                }
            })
            .collect())
    }

    /// Takes a build's job record out of the orchestrator; the caller must end the job.
    pub(crate) async fn take(&self, build: BuildId) -> Result<Option<JobRecord>, ManagerError> {
        self.orchestrator
            .take(&job_key(build))
            .await?
            .map(|raw| parse(&raw))
            .transpose()
    }
}

/// A record's JSON form back as a [`JobRecord`].
pub(crate) fn parse(raw: &str) -> Result<JobRecord, ManagerError> {
    serde_json::from_str(raw).map_err(ManagerError::JobRecord)
}
