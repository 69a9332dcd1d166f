//! Group commit for worker log lines. Every LogMessage stream hands its line to one writer
//! task, which appends all the lines waiting at that moment in a single store transaction
//! and acknowledges each line once its batch is committed. Under load a batch holds the
//! lines of many streams, so the store does one commit (and one round of per-build
//! lookups) for all of them instead of one per line, and streams no longer queue on the
//! database's write lock one transaction each; with a single stream a batch is one line.
//!
//! Nothing changes for a worker: a line is acknowledged only after it is durable, and each
//! stream has one line in flight, so lines of a build keep their order.

use std::sync::{Arc, Mutex, PoisonError};

use buildman_store::{Store, WorkerLine};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ManagerError;

/// Most lines written in one transaction; more wait for the next one.
const MAX_BATCH: usize = 2048;
/// Lines waiting for the writer at most: past it, streams wait to hand theirs over.
const QUEUE: usize = 8192;

type Ack = oneshot::Sender<Result<bool, ManagerError>>;

/// The handle streams append through.
pub(crate) struct LogWriter {
    tx: mpsc::Sender<(WorkerLine, Ack)>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl LogWriter {
    /// Starts the writer task on the current runtime.
    pub(crate) fn spawn(store: Arc<dyn Store>) -> LogWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_batches(store, rx, stop.clone()));
        LogWriter {
            tx,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Appends lines with the next batch (all of them, so lines a stream received together
    /// share a transaction) and answers each in order: `Ok(false)` when the store already
    /// held it (re-sent after a reconnect), as [`Store::append_worker_lines`] says.
    pub(crate) async fn append_all(
        &self,
        lines: Vec<WorkerLine>,
    ) -> Vec<Result<bool, ManagerError>> {
        let mut pending = Vec::with_capacity(lines.len());
        for line in lines {
            let (ack, done) = oneshot::channel();
            match self.tx.send((line, ack)).await {
                Ok(()) => pending.push(Some(done)),
                Err(_) => pending.push(None),
            }
        }
        let mut answers = Vec::with_capacity(pending.len());
        for done in pending {
            answers.push(match done {
                Some(done) => done
                    .await
                    .map_err(|_| ManagerError::ShuttingDown)
                    .and_then(|r| r),
                None => Err(ManagerError::ShuttingDown),
            });
        }
        answers
    }

    /// Writes the lines already handed over, refuses new ones, and waits for the writer
    /// to end: the last step of a shutdown, so no acknowledged line is lost.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the log writer failed");
        }
    }
}

/// Writes whatever is waiting, batch after batch, until stopped; then writes what was
/// handed over before the stop and ends.
async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(WorkerLine, Ack)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            () = stop.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if received == 0 {
            return;
        }
        write_batch(store.as_ref(), &mut batch).await;
    }
}

/// Writes one batch and acknowledges each line.
async fn write_batch(store: &dyn Store, batch: &mut Vec<(WorkerLine, Ack)>) {
    let (lines, acks): (Vec<WorkerLine>, Vec<Ack>) = batch.drain(..).unzip();
    match store.append_worker_lines(&lines).await {
        Ok(stored) => {
            for (ack, stored) in acks.into_iter().zip(stored) {
                let _ = ack.send(Ok(stored.is_some()));
            }
        }
        Err(e) if lines.len() == 1 => {
            if let Some(ack) = acks.into_iter().next() {
                let _ = ack.send(Err(e.into()));
            }
        }
        Err(e) => {
            // One bad line (say, of a build that is gone) must not fail the other
            // streams' lines: write each on its own, so only its own stream sees it.
            tracing::warn!(error = %e, lines = lines.len(), "a batch of log lines failed; writing them one by one");
            for (line, ack) in lines.into_iter().zip(acks) {
                let result = store
                    .append_worker_lines(std::slice::from_ref(&line))
                    .await
                    .map(|stored| stored.first().is_some_and(Option::is_some))
                    .map_err(ManagerError::from);
                let _ = ack.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildman_core::{BuildId, BuildSource, LogEntry, NewBuild};
    use buildman_store::sqlite::SqliteStore;

    impl LogWriter {
        async fn append(&self, line: WorkerLine) -> Result<bool, ManagerError> {
            self.append_all(vec![line]).await.remove(0)
        }
    }

    async fn store_with_build() -> (Arc<dyn Store>, BuildId) {
        let store = SqliteStore::open_url("sqlite::memory:").await.unwrap();
        let build = store
            .create_build(
                NewBuild {
                    namespace: "ns".into(),
                    repository: "repo".into(),
                    source: BuildSource::ArchiveUrl {
                        url: "http://example.com/c.tar".into(),
                    },
                    tags: vec![],
                    context: "/".into(),
                    dockerfile_path: "/Dockerfile".into(),
                    display_name: "x".into(),
                    manual_user: None,
                    pull_robot: None,
                },
                3,
                None,
            )
            .await
            .unwrap();
        (Arc::new(store), build.id)
    }

    fn line(build: BuildId, sequence: i32) -> WorkerLine {
        WorkerLine {
            build,
            attempt: None,
            sequence,
            entry: LogEntry::output(format!("line {sequence}")),
        }
    }

    #[tokio::test]
    async fn lines_waiting_together_are_written_together_and_a_bad_one_fails_alone() {
        let (store, build) = store_with_build().await;
        let writer = LogWriter::spawn(store.clone());
        // Queued before the writer runs, so they make one batch; the unknown build's line
        // fails that batch, and the retry line by line fails only that line.
        let (a, b, unknown, again) = tokio::join!(
            writer.append(line(build, 1)),
            writer.append(line(build, 2)),
            writer.append(line(BuildId::new(), 1)),
            writer.append(line(build, 2)),
        );
        assert!(a.unwrap());
        assert!(b.unwrap());
        assert!(unknown.is_err());
        assert!(
            !again.unwrap(),
            "a re-sent line is acknowledged but not stored"
        );
        let page = store.read_logs(build, 0, 10, u64::MAX).await.unwrap();
        let messages: Vec<&str> = page.entries.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["line 1", "line 2"]);
    }

    #[tokio::test]
    async fn every_line_acknowledged_before_a_shutdown_is_stored() {
        let (store, build) = store_with_build().await;
        let writer = Arc::new(LogWriter::spawn(store.clone()));
        let pending: Vec<_> = (1..=200)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.append(line(build, i)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        writer.shutdown().await;
        let mut acknowledged = 0;
        for p in pending {
            match p.await.unwrap() {
                Ok(stored) => {
                    assert!(stored);
                    acknowledged += 1;
                }
                Err(ManagerError::ShuttingDown) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert!(
            acknowledged > 0,
            "lines handed over before the stop are written"
        );
        assert_eq!(
            store
                .read_logs(build, 0, 500, u64::MAX)
                .await
                .unwrap()
                .total,
            acknowledged,
            "every acknowledged line is stored, and only those"
        );
        assert!(matches!(
            writer.append(line(build, 1000)).await,
            Err(ManagerError::ShuttingDown)
        ));
    }
}
