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
        let mut answers = self.messages(&[(token, sequence, line)]).await;
        answers.pop().unwrap_or(Ok(false))
    }

    /// Several LogMessages that arrived together (a worker that sends before each
    /// acknowledgement): answered as [`LogStream::message`] answers each, in order, with
    /// their lines written in one go. Processing stops at the first error (a bad token, a
    /// job no longer this token's), which is the last answer.
    pub async fn messages(
        &mut self,
        batch: &[(&str, i32, &str)],
    ) -> Vec<Result<bool, ManagerError>> {
        let mut answers: Vec<Option<Result<bool, ManagerError>>> = Vec::with_capacity(batch.len());
        let mut lines = Vec::new();
        let mut live = None;
        for &(token, sequence, line) in batch {
            let ctx = match self.sessions.verify_job_token(token) {
                Ok(ctx) => ctx,
                Err(e) => {
                    answers.push(Some(Err(e)));
                    break;
                }
            };
            if self.last_sequence.is_some_and(|last| sequence <= last) {
                answers.push(Some(Ok(false)));
                continue;
            }
            let Ok(entry) = LogEntry::from_worker_line(line) else {
                answers.push(Some(Ok(false)));
                continue;
            };
            self.last_sequence = Some(sequence);
            lines.push(WorkerLine {
                build: ctx.build_id,
                attempt: ctx.attempt.clone(),
                sequence,
                entry,
            });
            answers.push(None);
            live = Some(ctx);
        }
        // Written with whatever other streams' lines are waiting (group commit).
        let mut written = self.sessions.log_writer.append_all(lines).await.into_iter();
        let (mut stored, mut duplicate, mut refused) = (0, 0, 0);
        let mut answers: Vec<Result<bool, ManagerError>> = answers
            .into_iter()
            .map(|answer| match answer {
                Some(refusal) => {
                    refused += 1;
                    refusal
                }
                None => match written.next() {
                    Some(Ok(true)) => {
                        stored += 1;
                        Ok(true)
                    }
                    Some(Ok(false)) => {
                        // Re-sent after a reconnect: acknowledged, stored once already.
                        duplicate += 1;
                        Ok(true)
                    }
                    Some(Err(e)) => {
                        refused += 1;
                        Err(e)
                    }
                    None => Ok(false),
                },
            })
            .collect();
        (self.sessions.metrics).log_lines(stored, duplicate, refused);
        if let Some(ctx) = live
            && self
                .last_heartbeat
                .is_none_or(|at| at.elapsed() >= LOG_HEARTBEAT_EVERY)
        {
            self.last_heartbeat = Some(Instant::now());
            if let Err(e) = self.sessions.heartbeat(&ctx).await
                && let Some(last) = answers.last_mut()
            {
                // The job is no longer this token's: the stream ends here.
                *last = Err(e);
            }
        }
        answers
    }
}
