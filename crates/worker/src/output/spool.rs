//! The spool between a command's output and the log stream: a queue of [`Chunk`]s held in
//! memory up to a bound, then in an unnamed file in the job's work dir. Pushing never waits
//! for the reader; order is kept across the switch (everything in memory comes before
//! everything in the file), and once the reader has caught up the file is closed (which
//! deletes it) and the queue goes back to memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;

use super::Chunk;

/// Bytes of spooled output kept in memory before the spool spills to a file (8 MiB).
pub const SPOOL_MEMORY_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of output waiting for the manager, in memory and file together, past which the
/// command is stopped and the build fails (1 GiB): a step printing without end must not
/// fill the worker's disk.
pub const SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// How many bytes the file is written and read in at a time.
const IO_BYTES: usize = 64 * 1024;
/// A record: text length (u32, little endian), the `continues` flag, the text.
const HEADER: usize = 5;

/// The spool grew past its bound.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "more than {} MiB of output waited to be sent to the build manager",
    .0 / (1024 * 1024)
)]
pub struct Overflow(pub u64);

/// The queue itself; [`super::LineSink`] and [`super::LineSource`] share one behind a lock.
pub struct Spool {
    memory: VecDeque<Chunk>,
    memory_bytes: usize,
    memory_limit: usize,
    max_bytes: u64,
    dir: PathBuf,
    file: Option<SpoolFile>,
    /// Set once a file could not be created or written, so the warning is given once.
    file_trouble: bool,
}

impl Spool {
    /// An empty spool that spills to `dir` past `memory_limit` bytes and overflows past
    /// `max_bytes`.
    pub fn new(dir: PathBuf, memory_limit: usize, max_bytes: u64) -> Self {
        Spool {
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_limit,
            max_bytes,
            dir,
            file: None,
            file_trouble: false,
        }
    }

    /// Appends a chunk. An error once more than the maximum waits; the chunk is kept
    /// anyway, so nothing pushed is ever lost.
    pub fn push(&mut self, chunk: Chunk) -> Result<(), Overflow> {
        let size = chunk.text.len();
        if self.file.is_none() && self.memory_bytes + size > self.memory_limit {
            self.file = self.open_file();
        }
        match &mut self.file {
            Some(file) => {
                if let Err(e) = file.push(&chunk) {
                    self.warn_once(format!("writing the output spool file: {e}"));
                }
            }
            None => {
                self.memory_bytes += size;
                self.memory.push_back(chunk);
            }
        }
        let waiting = self.memory_bytes as u64 + self.file.as_ref().map_or(0, SpoolFile::unread);
        if waiting > self.max_bytes {
            return Err(Overflow(self.max_bytes));
        }
        Ok(())
    }

    /// Takes the oldest chunk, if any.
    pub fn pop(&mut self) -> Option<Chunk> {
        if let Some(chunk) = self.memory.pop_front() {
            self.memory_bytes -= chunk.text.len();
            return Some(chunk);
        }
        let file = self.file.as_mut()?;
        let popped = file.pop();
        if file.records == 0 || popped.is_err() {
            // Caught up (or the file is unreadable): closing it deletes it.
            self.file = None;
        }
        match popped {
            Ok(chunk) => chunk,
            Err((lost, e)) => Some(Chunk {
                text: format!(
                    "[buildman: {lost} lines of output lost: reading the spool file failed: {e}]"
                ),
                continues: false,
            }),
        }
    }

    /// True while the spool holds output in a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    fn open_file(&mut self) -> Option<SpoolFile> {
        match tempfile::tempfile_in(&self.dir) {
            Ok(file) => Some(SpoolFile::new(file)),
            Err(e) => {
                let dir = self.dir.display();
                self.warn_once(format!("creating an output spool file in {dir}: {e}"));
                None
            }
        }
    }

    fn warn_once(&mut self, what: String) {
        if !self.file_trouble {
            self.file_trouble = true;
            tracing::warn!("{what}; output waits in memory instead");
        }
    }
}

/// The file part: records at logical offsets, the ones before `disk_end` on disk, the rest
/// still in `pending`. Offsets only grow; a range the reader took from memory is never
/// written, which leaves a hole that costs no disk.
struct SpoolFile {
    file: File,
    disk_end: u64,
    pending: Vec<u8>,
    read_at: u64,
    read_buf: Vec<u8>,
    read_pos: usize,
    records: usize,
}

impl SpoolFile {
    fn new(file: File) -> Self {
        SpoolFile {
            file,
            disk_end: 0,
            pending: Vec::new(),
            read_at: 0,
            read_buf: Vec::new(),
            read_pos: 0,
            records: 0,
        }
    }

    /// Bytes pushed and not yet taken.
    fn unread(&self) -> u64 {
        self.disk_end + self.pending.len() as u64 - self.read_at
            + (self.read_buf.len() - self.read_pos) as u64
    }

    /// Queues a record; writes once a block's worth is queued. On a write error the
    /// record stays queued in memory, to be written with the next or read from there.
    fn push(&mut self, chunk: &Chunk) -> io::Result<()> {
        let text = chunk.text.as_bytes();
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending.push(u8::from(chunk.continues));
        self.pending.extend_from_slice(&text[..len as usize]);
        self.records += 1;
        if self.pending.len() >= IO_BYTES {
            self.file.write_all_at(&self.pending, self.disk_end)?;
            self.disk_end += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    /// The next record; on a read error, how many records are lost with it.
    fn pop(&mut self) -> Result<Option<Chunk>, (usize, io::Error)> {
        if self.records == 0 {
            return Ok(None);
        }
        loop {
            if let Some((chunk, used)) = decode(&self.read_buf[self.read_pos..]) {
                self.read_pos += used;
                self.records -= 1;
                return Ok(Some(chunk));
            }
            self.read_buf.drain(..self.read_pos);
            self.read_pos = 0;
            self.fill().map_err(|e| (self.records, e))?;
        }
    }

    /// Reads the next block from disk, or takes what is still in memory.
    fn fill(&mut self) -> io::Result<()> {
        if self.read_at < self.disk_end {
            let want = usize::try_from(self.disk_end - self.read_at)
                .unwrap_or(usize::MAX)
                .min(IO_BYTES);
            let old = self.read_buf.len();
            self.read_buf.resize(old + want, 0);
            self.file
                .read_exact_at(&mut self.read_buf[old..], self.read_at)?;
            self.read_at += want as u64;
        } else if !self.pending.is_empty() {
            let taken = self.pending.len() as u64;
            self.read_buf.append(&mut self.pending);
            self.disk_end += taken;
            self.read_at += taken;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spool file ends in the middle of a record",
            ));
        }
        Ok(())
    }
}

/// A record from the start of `bytes` and its length, if it is all there.
fn decode(bytes: &[u8]) -> Option<(Chunk, usize)> {
    let header: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(header) as usize;
    let continues = *bytes.get(4)? != 0;
    let text = bytes.get(HEADER..HEADER + len)?;
    // Written from a String, so valid UTF-8; lossy only to never panic on a bad disk.
    let text = String::from_utf8_lossy(text).into_owned();
    Some((Chunk { text, continues }, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize, len: usize) -> Chunk {
        let mut text = format!("line {n} ");
        while text.len() < len {
            text.push(char::from(b'a' + (n % 26) as u8));
        }
        Chunk {
            text,
            continues: n.is_multiple_of(7),
        }
    }

    /// The number of files open in `dir` that are not in its listing: our unnamed spool.
    fn open_unnamed_files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[test]
    fn stays_in_memory_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().into(), 1000, u64::MAX);
        for n in 0..10 {
            spool.push(line(n, 50)).unwrap();
        }
        assert!(!spool.spilled());
        for n in 0..10 {
            assert_eq!(spool.pop(), Some(line(n, 50)));
        }
        assert_eq!(spool.pop(), None);
    }

    #[test]
    fn spills_to_a_file_keeps_order_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().into(), 10_000, u64::MAX);
        let sizes = |n: usize| [10, 300, 70_000, 0, 5][n % 5];
        let mut expected = VecDeque::new();
        let mut popped = Vec::new();
        // Interleaved: a fast writer with a reader taking one for every three pushed,
        // so the spool spills, the reader crosses from memory into the file and from
        // the file into what is not yet written, and the file is dropped when drained.
        for n in 0..3_000 {
            let chunk = line(n, sizes(n));
            expected.push_back(chunk.clone());
            spool.push(chunk).unwrap();
            if n == 100 {
                assert!(spool.spilled(), "past the bound it spills");
                assert_eq!(open_unnamed_files_in(dir.path()), 1);
                assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
            }
            if n.is_multiple_of(3) {
                popped.extend(spool.pop());
            }
        }
        while let Some(chunk) = spool.pop() {
            popped.push(chunk);
        }
        assert_eq!(popped.len(), expected.len());
        assert!(popped.iter().eq(expected.iter()), "in order, none lost");
        assert!(!spool.spilled(), "drained: back to memory");
        assert_eq!(open_unnamed_files_in(dir.path()), 0, "the file is gone");

        // And it spills again when needed.
        for n in 0..200 {
            spool.push(line(n, 100)).unwrap();
        }
        assert!(spool.spilled());
        for n in 0..200 {
            assert_eq!(spool.pop(), Some(line(n, 100)));
        }
    }

    #[test]
    fn without_a_usable_dir_output_waits_in_memory() {
        let mut spool = Spool::new("/nonexistent/spool".into(), 100, u64::MAX);
        for n in 0..50 {
            spool.push(line(n, 40)).unwrap();
        }
        for n in 0..50 {
            assert_eq!(spool.pop(), Some(line(n, 40)));
        }
    }

    #[test]
    fn overflow_is_reported_and_nothing_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().into(), 100, 1000);
        let results: Vec<_> = (0..30).map(|n| spool.push(line(n, 50))).collect();
        assert_eq!(results[0], Ok(()));
        assert_eq!(results[29], Err(Overflow(1000)));
        for n in 0..30 {
            assert_eq!(spool.pop(), Some(line(n, 50)));
        }
    }
}
