//! Worker lines appended on a connection and a thread of their own: a batch is one message
//! to that thread and one answer, whatever it takes in statements.
//!
//! sqlx runs each SQLite connection on a thread of its own and sends it every statement,
//! BEGIN and COMMIT as a message of its own, answered the same way: five round trips per
//! batch, 23 thread switches per acknowledged line with one stream (5 with the appender),
//! and a switch on this kind of VM costs tens of microseconds, far more than SQLite's work
//! for a line (docs/performance.md). Here the whole transaction runs on the thread that
//! owns the connection, with the shared path's rules ([`LogBatch`]) and log-heads query.
//! It is a second connection to the same file: SQLite's write lock (`BEGIN IMMEDIATE`, the
//! busy timeout) orders it with the pool's writes exactly as it orders two processes.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use buildman_core::BuildId;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::oneshot;

use super::{BUSY_TIMEOUT, LOG_HEADS, json_array};
use crate::common::LineAppender;
use crate::common::logs::{LogBatch, encode};
use crate::common::rows::LogHead;
use crate::{Result, StoreError, WorkerLine};

/// One worker line as the appender's thread takes it: owned, its entry encoded.
struct Line {
    build: BuildId,
    key: String,
    attempt: Option<String>,
    sequence: i32,
    entry: String,
}

/// A batch to append and where its answer goes.
struct Job {
    lines: Vec<Line>,
    answer: oneshot::Sender<Result<Vec<Option<u64>>>>,
}

/// The handle to the appender's thread. The channel needs no bound: every caller waits for
/// its answer before it sends again (the manager's log writer sends one batch at a time).
#[derive(Debug)]
pub(super) struct Appender {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Appender {
    /// Opens a connection to the database file at `path` (already created and migrated)
    /// and starts the thread that owns it.
    pub(super) fn open(path: &Path) -> Result<Appender> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(database)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(database)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(database)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(database)?;
        let (jobs, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-log-appender".into())
            .spawn(move || serve(conn, &inbox))
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        Ok(Appender {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Refuses new batches, lets the thread finish the ones sent and close its connection,
    /// and waits for it.
    pub(super) async fn close(&self) {
        drop(
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await
        {
            tracing::error!("the SQLite log appender's thread panicked");
        }
    }
}

#[async_trait]
impl LineAppender for Appender {
    async fn append(&self, lines: &[WorkerLine]) -> Result<Vec<Option<u64>>> {
        // Encoded here, so the thread's time goes to SQLite only.
        let entries = encode(lines.iter().map(|l| &l.entry))?;
        let lines = lines
            .iter()
            .zip(entries)
            .map(|(l, entry)| Line {
                build: l.build,
                key: l.build.to_string(),
                attempt: l.attempt.clone(),
                sequence: l.sequence,
                entry,
            })
            .collect();
        let (answer, answered) = oneshot::channel();
        let sent = match &*self.jobs.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(jobs) => jobs.send(Job { lines, answer }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        answered
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?
    }
}

/// The thread: batch after batch until the handle is closed or dropped.
fn serve(mut conn: Connection, inbox: &mpsc::Receiver<Job>) {
    while let Ok(job) = inbox.recv() {
        let _ = job.answer.send(append(&mut conn, &job.lines));
    }
}

/// One batch in one `BEGIN IMMEDIATE` transaction: the log heads, the rows, the last
/// sequence numbers. An error rolls it all back (the transaction's drop).
fn append(conn: &mut Connection, lines: &[Line]) -> Result<Vec<Option<u64>>> {
    let mut builds: Vec<&str> = lines.iter().map(|l| l.key.as_str()).collect();
    builds.sort_unstable();
    builds.dedup();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database)?;
    let mut batch = LogBatch::new(log_heads(&tx, &builds)?);
    batch.place_worker_lines(lines.iter().map(|l| {
        let attempt = l.attempt.as_deref();
        (
            l.build,
            l.key.as_str(),
            attempt,
            l.sequence,
            l.entry.as_str(),
        )
    }))?;
    {
        // One row per statement: a single-row INSERT needs no statement journal, which the
        // pool's one multi-row INSERT ... SELECT writes every touched page to.
        let mut insert = tx
            .prepare_cached("INSERT INTO build_logs (build_id, idx, entry) VALUES (?1, ?2, ?3)")
            .map_err(database)?;
        for row in batch.rows.iter() {
            insert.execute(row).map_err(database)?;
        }
        let mut last = tx
            .prepare_cached("UPDATE builds SET last_worker_sequence = ?2 WHERE id = ?1")
            .map_err(database)?;
        for pair in batch.last_sequences().iter() {
            last.execute(pair).map_err(database)?;
        }
    }
    tx.commit().map_err(database)?;
    Ok(batch.stored)
}

/// The log heads of `builds`, as [`LOG_HEADS`] reads them for the pool.
fn log_heads(conn: &Connection, builds: &[&str]) -> Result<Vec<LogHead>> {
    let mut heads = conn.prepare_cached(&LOG_HEADS).map_err(database)?;
    let rows = heads
        .query_map([json_array(builds)?], |row| {
            Ok(LogHead {
                id: row.get(0)?,
                last_worker_sequence: row.get(1)?,
                attempt: row.get(2)?,
                phase: row.get(3)?,
                total: row.get(4)?,
            })
        })
        .map_err(database)?;
    rows.collect::<rusqlite::Result<_>>().map_err(database)
}

/// SQLite's error, as the store reports a database's.
fn database(e: rusqlite::Error) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(e)))
}
