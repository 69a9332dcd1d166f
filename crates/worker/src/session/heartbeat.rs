//! The Heartbeat stream, as quay-builder keeps it: a beat every [`HEARTBEAT_EVERY`], each
//! awaiting its reply; reopened when it breaks. It is also the worker's keepalive: a beat
//! unanswered within [`HEARTBEAT_TIMEOUT`] means a dead connection, which is dialled anew.

use std::time::Duration;

use buildman_proto as pb;
use tokio::sync::watch;

use super::link::Link;
use super::{Backoff, bidi};

/// quay-builder's heartbeat period.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a beat may go unanswered before the connection counts as dead: well within
/// the minute a manager waits for a heartbeat before it gives the worker up.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);
/// How many `false` replies in a row (each retried at once) mean the job is gone.
const REFUSALS: u32 = 3;

/// Heartbeats until the manager no longer knows the job, then says so on `cancelled`.
pub(super) async fn heartbeats(link: Link, jwt: String, cancelled: watch::Sender<bool>) {
    let beat = || pb::HeartbeatRequest {
        job_jwt: jwt.clone(),
    };
    let mut backoff = Backoff::new();
    let mut refused = 0;
    loop {
        let (mut client, generation) = link.current();
        let (tx, mut replies) = bidi::open(beat(), 1, move |requests| async move {
            client.heartbeat(requests).await
        });
        let why = loop {
            let reply = match tokio::time::timeout(HEARTBEAT_TIMEOUT, replies.next()).await {
                Ok(Ok(Some(reply))) => reply,
                Ok(Ok(None)) => break "the build manager ended the stream".to_string(),
                Ok(Err(status)) => break status.message().to_string(),
                Err(_) => {
                    link.redial(generation);
                    break format!("no reply within {HEARTBEAT_TIMEOUT:?}");
                }
            };
            if reply.reply {
                refused = 0;
                backoff.reset();
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            } else {
                refused += 1;
                if refused >= REFUSALS {
                    tracing::warn!("the manager no longer knows this job; stopping");
                    let _ = cancelled.send(true);
                    return;
                }
            }
            if tx.send(beat()).await.is_err() {
                break "the stream closed".to_string();
            }
        };
        tracing::warn!(error = %why, "heartbeat stream broke; reconnecting in {:?}", backoff.delay());
        backoff.wait().await;
    }
}
