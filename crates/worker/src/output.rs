//! A command's output on its way to the build log, without loss and without ever slowing
//! the command down.
//!
//! buildah drops output when the reader of its stdout falls behind (its relay for a `RUN`
//! step gives up on what it has not written when the step ends), so the worker must never
//! apply backpressure to a backend. Each of the command's pipes is read as fast as it
//! produces into a [`Splitter`], which makes one [`Chunk`] per line, and the chunks go into
//! a spool that never blocks:
//!
//! - **Spool**: up to [`SPOOL_MEMORY_BYTES`] (8 MiB) of output waits in memory; past that it
//!   goes to an unnamed file in the job's work dir (deleted when it is closed, so it goes
//!   with the work dir whatever happens), and back to memory once the file is drained. More
//!   than [`SPOOL_MAX_BYTES`] (1 GiB) waiting stops the command and fails the build.
//! - **Lines**: a line is never split or joined with another; its line end (`\n`, and any
//!   `\r` before it) is dropped. A line longer than [`MAX_ENTRY_BYTES`] (64 KiB), including a
//!   `\r` progress bar, is cut on UTF-8 character boundaries into chunks; every chunk but the
//!   last has `continues` set, is sent as `{"stream": "<chunk>", "continues": true}` and is
//!   joined with the next entry on display. A last line without a newline is a line too.
//!
//! A [`LineSource`] hands the chunks on in order, at whatever pace the log stream allows.

mod split;
mod spool;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

pub use split::{MAX_ENTRY_BYTES, Splitter};
pub use spool::{Overflow, SPOOL_MAX_BYTES, SPOOL_MEMORY_BYTES, Spool};

/// One log entry of output: a whole line without its line end, or one chunk of a longer one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The text.
    pub text: String,
    /// True when the line goes on in the next chunk.
    pub continues: bool,
}

impl Chunk {
    /// A whole line.
    pub fn line(text: impl Into<String>) -> Self {
        Chunk {
            text: text.into(),
            continues: false,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
}

struct State {
    spool: Spool,
    sinks: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the spool consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a backend puts its output. Pushing never waits. Cloneable; the [`LineSource`] ends
/// once every clone is dropped and everything pushed was taken.
pub struct LineSink(Arc<Shared>);

/// The reading end of a [`LineSink`].
pub struct LineSource(Arc<Shared>);

/// A spool spilling to `dir` with the default bounds, as a sink and its source.
pub fn spool(dir: &Path) -> (LineSink, LineSource) {
    spool_with(Spool::new(
        dir.to_path_buf(),
        SPOOL_MEMORY_BYTES,
        SPOOL_MAX_BYTES,
    ))
}

/// `spool` around a spool of your own (other bounds, for tests).
pub fn spool_with(spool: Spool) -> (LineSink, LineSource) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { spool, sinks: 1 }),
        ready: Notify::new(),
    });
    (LineSink(shared.clone()), LineSource(shared))
}

impl LineSink {
    /// Queues a chunk. [`Overflow`] once too much output waits; the chunk is kept anyway.
    pub fn push(&self, chunk: Chunk) -> Result<(), Overflow> {
        let result = self.0.lock().spool.push(chunk);
        self.0.ready.notify_one();
        result
    }

    /// Queues a whole line of the worker's own.
    pub fn line(&self, text: impl Into<String>) {
        // Overflow is for a command to stop; one line of ours is kept either way.
        let _ = self.push(Chunk::line(text));
    }
}

impl Clone for LineSink {
    fn clone(&self) -> Self {
        self.0.lock().sinks += 1;
        LineSink(self.0.clone())
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.0.lock().sinks -= 1;
        self.0.ready.notify_one();
    }
}

impl LineSource {
    /// The next chunk, waiting for one; `None` once every sink is gone and all was taken.
    pub async fn next(&mut self) -> Option<Chunk> {
        loop {
            {
                let mut state = self.0.lock();
                if let Some(chunk) = state.spool.pop() {
                    return Some(chunk);
                }
                if state.sinks == 0 {
                    return None;
                }
            }
            // One reader: a notification sent before we wait leaves a permit behind.
            self.0.ready.notified().await;
        }
    }
}
