//! The state of a worker's two open streams. Each message carries the job token again;
//! it is checked against the token service's cache of verified tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use buildman_core::LogEntry;
use buildman_store::WorkerLine;

use super::WorkerSessions;
use crate::ManagerError;

/// One Heartbeat stream.
pub struct HeartbeatStream {
    sessions: Arc<WorkerSessions>,
}

impl HeartbeatStream {
    /// A new stream.
    pub fn new(sessions: Arc<WorkerSessions>) -> Self {
        HeartbeatStream { sessions }
    }

    /// One heartbeat: `Ok(true)` when the job exists and its expiry was pushed out; an
    /// error for a bad token.
    pub async fn beat(&mut self, token: &str) -> Result<bool, ManagerError> {
        let ctx = self.sessions.verify_job_token(token)?;
        self.sessions.heartbeat(&ctx).await
    }
}

/// How often log lines count as heartbeats. A heartbeat keeps a job for 60 s, and the
/// heartbeat stream sends one every 2 s anyway: counting a line every 10 s keeps a job
/// alive on log lines alone with a wide margin, without a job-record write per line.
const LOG_HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// One LogMessage stream: the last sequence number seen, and when it last counted as a
/// heartbeat.
pub struct LogStream {
    sessions: Arc<WorkerSessions>,
    last_sequence: Option<i32>,
    last_heartbeat: Option<Instant>,
}

impl LogStream {
    /// A new stream.
    pub fn new(sessions: Arc<WorkerSessions>) -> Self {
        LogStream {
            sessions,
            last_sequence: None,
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
        let ctx = self.sessions.verify_job_token(token)?;
        if self.last_sequence.is_some_and(|last| sequence <= last) {
            return Ok(false);
        }
        let Ok(entry) = LogEntry::from_worker_line(line) else {
            return Ok(false);
        };
        self.last_sequence = Some(sequence);
        let line = WorkerLine {
            build: ctx.build_id,
            attempt: ctx.attempt.clone(),
            sequence,
            entry,
        };
        // Written with whatever other streams' lines are waiting (group commit).
        self.sessions.log_writer.append(line).await?;
        if self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= LOG_HEARTBEAT_EVERY)
        {
            self.last_heartbeat = Some(Instant::now());
            self.sessions.heartbeat(&ctx).await?;
        }
        Ok(true)
    }
}
