//! The LogMessage stream: queued lines sent with up to [`LOG_WINDOW`] of them awaiting
//! their acknowledgements (quay-builder waits for each; the stream is bidirectional, so a
//! window costs the manager one write for many lines instead of one each), across
//! reconnects, and given up with a reason instead of retried for ever when the manager
//! keeps refusing.
//!
//! - A stream opens with its first line (no waiting for response headers, [`super::bidi`]).
//! - Answers come in order, one per line. A broken stream is reopened and every
//!   unacknowledged line re-sent with its sequence number (the manager stores each once).
//!   No answer within [`ANSWER_TIMEOUT`] breaks the stream and the connection is dialled
//!   anew.
//! - While the manager cannot be reached at all, the worker keeps trying for
//!   [`RECONNECT_FOR`], as for every other call.
//! - A refusal — an error status that names the message, not the connection
//!   (INVALID_ARGUMENT, OUT_OF_RANGE, RESOURCE_EXHAUSTED, UNAUTHENTICATED, ...) — ends it
//!   at once.
//! - So does a stream that had to be reopened [`MAX_LOG_REOPENS`] times in a row without a
//!   single line acknowledged in between (a manager that ends the stream without
//!   answering, or does not answer within [`ANSWER_TIMEOUT`]).
//!
//! Once given up, the reason is published (the job ends the build with it) and output lines
//! are dropped; each error line (the job's last words) still gets one try.

use std::collections::VecDeque;
use std::time::Instant;

use buildman_proto as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Code, Status};

use super::link::Link;
use super::{ANSWER_TIMEOUT, Backoff, RECONNECT_FOR, bidi};

/// How many times in a row the log stream may be reopened without one line acknowledged
/// before the build is given up.
pub const MAX_LOG_REOPENS: u32 = 10;

/// Most lines in flight (sent, not yet acknowledged) on the log stream.
pub const LOG_WINDOW: usize = 256;

/// What the job asks of the log stream.
pub(super) enum LogCommand {
    /// A line to send; an error line is still tried (once) after the stream gave up.
    Line {
        request: pb::LogMessageRequest,
        error: bool,
    },
    Flush(oneshot::Sender<()>),
}

/// Why the log stream gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFailure {
    /// What happened, for the build log and the worker's stderr.
    pub reason: String,
    /// True when the manager could not be reached at all (nothing to report to).
    pub unreachable: bool,
}

/// How one stream ended.
enum Ended {
    /// No more lines will come.
    Done,
    /// The stream could not be opened: the connection failed before the manager took it.
    Unopened(Status),
    /// Opened, then broken or ended before the line at the front was acknowledged.
    Broken(String),
    /// The manager refused the line at the front.
    Refused(Status),
}

/// True for an answer that refuses the message itself: sending it again cannot help.
fn refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::Unimplemented
    )
}

/// The sending side of the log stream; [`LogSender::run`] until the job drops its handles.
pub(super) struct LogSender {
    link: Link,
    commands: mpsc::Receiver<LogCommand>,
    failure: watch::Sender<Option<LogFailure>>,
    next_sequence: i32,
    pending: VecDeque<pb::LogMessageRequest>,
    flushes: Vec<oneshot::Sender<()>>,
    backoff: Backoff,
    reopens: u32,
    unreachable_since: Option<Instant>,
}

impl LogSender {
    pub(super) fn new(
        link: Link,
        commands: mpsc::Receiver<LogCommand>,
        failure: watch::Sender<Option<LogFailure>>,
    ) -> Self {
        LogSender {
            link,
            commands,
            failure,
            next_sequence: 1,
            pending: VecDeque::new(),
            flushes: Vec::new(),
            backoff: Backoff::new(),
            reopens: 0,
            unreachable_since: None,
        }
    }

    fn failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    pub(super) async fn run(mut self) {
        loop {
            if self.pending.is_empty() && !self.next_command().await {
                return;
            }
            match self.send_on().await {
                Ended::Done => return,
                Ended::Unopened(status) => self.unopened(status).await,
                Ended::Broken(why) => self.broken(why).await,
                Ended::Refused(status) => self.refused(&status),
            }
        }
    }

    /// Waits for the next line (answering flushes while nothing is pending); false once the
    /// job dropped every handle.
    async fn next_command(&mut self) -> bool {
        loop {
            self.answer_flushes();
            match self.commands.recv().await {
                Some(command) => {
                    self.take(command);
                    if !self.pending.is_empty() {
                        return true;
                    }
                }
                None => return false,
            }
        }
    }

    /// Opens a stream with the line at the front and sends the pending lines on it, up to
    /// [`LOG_WINDOW`] ahead of their answers, until there are no more or the stream fails.
    async fn send_on(&mut self) -> Ended {
        let Some(first) = self.pending.front().cloned() else {
            return Ended::Done;
        };
        let (mut client, generation) = self.link.current();
        let (tx, mut replies) = bidi::open(first, LOG_WINDOW, move |requests| async move {
            client.log_message(requests).await
        });
        // Lines of `pending` sent on this stream (the front ones), and the job's handles.
        let (mut sent, mut open) = (1, true);
        let mut progress = Instant::now();
        loop {
            while sent < self.pending.len().min(LOG_WINDOW) {
                let line = self.pending[sent].clone();
                let sequence = line.sequence_number;
                if tx.send(line).await.is_err() {
                    return Ended::Broken(format!("the stream closed before line {sequence}"));
                }
                sent += 1;
            }
            if sent == 0 {
                // Nothing in flight: wait for the next line (answering flushes).
                if !open || !self.next_command().await {
                    return Ended::Done;
                }
                continue;
            }
            let sequence = self.pending.front().map_or(0, |l| l.sequence_number);
            let room = open && sent < LOG_WINDOW;
            let deadline = tokio::time::Instant::from_std(progress + ANSWER_TIMEOUT);
            tokio::select! {
                answer = tokio::time::timeout_at(deadline, replies.next()) => match answer {
                    Ok(Ok(Some(reply))) => {
                        self.acknowledged(sequence, &reply);
                        sent -= 1;
                        progress = Instant::now();
                        self.answer_flushes();
                    }
                    Ok(Ok(None)) => {
                        return Ended::Broken(format!(
                            "the build manager ended the log stream without answering line {sequence}"
                        ));
                    }
                    Ok(Err(status)) if refusal(&status) => return Ended::Refused(status),
                    Ok(Err(status)) if !replies.opened() => return Ended::Unopened(status),
                    Ok(Err(status)) => return Ended::Broken(status.message().to_string()),
                    Err(_) => {
                        self.link.redial(generation);
                        return Ended::Broken(format!(
                            "no answer to line {sequence} within {ANSWER_TIMEOUT:?}"
                        ));
                    }
                },
                () = self.link.replaced(generation) => {
                    return Ended::Broken("the connection went silent; dialled anew".into());
                }
                command = self.commands.recv(), if room => match command {
                    Some(command) => self.take(command),
                    None => open = false,
                },
            }
        }
    }

    /// A command that came while lines were in flight.
    fn take(&mut self, command: LogCommand) {
        match command {
            LogCommand::Line { error, .. } if self.failed() && !error => {}
            LogCommand::Line { mut request, .. } => {
                request.sequence_number = self.next_sequence;
                self.next_sequence += 1;
                self.pending.push_back(request);
            }
            LogCommand::Flush(flush) => {
                self.flushes.push(flush);
                self.answer_flushes();
            }
        }
    }

    /// Answers the flushes waiting for every line to be acknowledged, once they are.
    fn answer_flushes(&mut self) {
        if self.pending.is_empty() {
            for flush in self.flushes.drain(..) {
                let _ = flush.send(());
            }
        }
    }

    fn acknowledged(&mut self, sequence: i32, reply: &pb::LogMessageResponse) {
        self.reopens = 0;
        self.unreachable_since = None;
        self.backoff.reset();
        if reply.sequence_number != sequence {
            tracing::warn!(
                sent = sequence,
                got = reply.sequence_number,
                "log ack out of order"
            );
        } else if !reply.success {
            tracing::warn!(sequence, "log line refused by the manager");
        }
        self.pending.pop_front();
    }

    /// The manager could not be reached: retried for [`RECONNECT_FOR`].
    async fn unopened(&mut self, status: Status) {
        if self.failed() {
            self.pending.pop_front();
            return;
        }
        let since = *self.unreachable_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= RECONNECT_FOR {
            let message = status.message();
            let reason = format!("lost the build manager for {RECONNECT_FOR:?}: {message}");
            return self.give_up(reason, true);
        }
        tracing::warn!(error = %status.message(), "log stream: cannot open; retrying in {:?}", self.backoff.delay());
        self.backoff.wait().await;
    }

    /// Opened, but no answer came: reopened, up to [`MAX_LOG_REOPENS`] times in a row.
    async fn broken(&mut self, why: String) {
        self.unreachable_since = None;
        if self.failed() {
            self.pending.pop_front();
            return;
        }
        self.reopens += 1;
        if self.reopens >= MAX_LOG_REOPENS {
            let reason = format!(
                "the log stream to the build manager failed {MAX_LOG_REOPENS} times in a row \
                 without a line acknowledged; last: {why}"
            );
            return self.give_up(reason, false);
        }
        tracing::warn!(error = %why, "log stream broke; reconnecting in {:?}", self.backoff.delay());
        self.backoff.wait().await;
    }

    /// The manager refused the line at the front: the build is given up.
    fn refused(&mut self, status: &Status) {
        if self.failed() {
            self.pending.pop_front();
            return;
        }
        let sequence = self.pending.front().map_or(0, |l| l.sequence_number);
        let (code, message) = (status.code(), status.message());
        let reason = format!("the build manager refused log line {sequence} ({code:?}): {message}");
        self.give_up(reason, false);
    }

    fn give_up(&mut self, reason: String, unreachable: bool) {
        tracing::error!("{reason}; giving up the log stream");
        self.pending.clear();
        self.failure.send_replace(Some(LogFailure {
            reason,
            unreachable,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_the_answers_that_name_the_message() {
        for code in [
            Code::ResourceExhausted,
            Code::OutOfRange,
            Code::InvalidArgument,
        ] {
            assert!(refusal(&Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
        ] {
            assert!(!refusal(&Status::new(code, "x")), "{code:?}");
        }
    }
}
