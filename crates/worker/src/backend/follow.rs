//! A tool's stdout or stderr as a file the worker reads while it grows.
//!
//! Not a pipe: buildah relays a `RUN` step's output through its own pipe and, when the step
//! ends while that relay is blocked on a full pipe to us, drops what it still holds (seen
//! here: 571 of 200,000 lines lost while the machine was busy). A write to a regular file
//! never waits for a reader, so nothing the tool prints depends on the worker being
//! scheduled in time. What has been read is released with a punched hole, so the file takes
//! no more disk than the output not yet read plus [`RELEASE_BYTES`].

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::fcntl::{FallocateFlags, fallocate};
use tempfile::NamedTempFile;
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

/// How often a file that has no new bytes is looked at again while the tool runs.
const POLL: Duration = Duration::from_millis(20);
/// Read bytes are released (a hole punched) in steps of this much.
const RELEASE_BYTES: u64 = 8 * 1024 * 1024;

/// The file a tool writes one stream into.
pub(super) struct OutputFile {
    file: NamedTempFile,
}

impl OutputFile {
    /// A new empty file in the system's temp dir (removed when the reader is dropped).
    pub(super) fn new() -> io::Result<OutputFile> {
        Ok(OutputFile {
            file: NamedTempFile::new()?,
        })
    }

    /// The tool's end of the file: its own open file, so its writes and our reads keep
    /// separate offsets.
    pub(super) fn writer(&self) -> io::Result<std::fs::File> {
        self.file.reopen()
    }

    /// The worker's end, reading until `exited` turns true and every byte is read.
    pub(super) fn follow(self, exited: watch::Receiver<bool>) -> io::Result<Followed> {
        let reader = tokio::fs::File::from_std(self.file.reopen()?);
        Ok(Followed {
            _file: self.file,
            reader,
            exited,
            read: 0,
            released: 0,
        })
    }
}

/// Reads an [`OutputFile`] as it grows.
pub(super) struct Followed {
    /// Keeps the file's name until the reader is done.
    _file: NamedTempFile,
    reader: tokio::fs::File,
    exited: watch::Receiver<bool>,
    read: u64,
    released: u64,
}

impl Followed {
    /// The next bytes; 0 once the tool has exited and everything it wrote was read.
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Whether the tool had exited is taken before the read: a read that finds
            // nothing after that is the end, since the tool can write no more.
            let exited = *self.exited.borrow_and_update();
            let n = self.reader.read(buf).await?;
            if n > 0 {
                self.read += n as u64;
                self.release().await;
                return Ok(n);
            }
            if exited {
                return Ok(0);
            }
            tokio::select! {
                _ = self.exited.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Punches out what has been read, in [`RELEASE_BYTES`] steps. Best effort: a file
    /// system without holes keeps the bytes until the file is removed.
    async fn release(&mut self) {
        if self.read - self.released < RELEASE_BYTES {
            return;
        }
        let (from, len) = (self.released, self.read - self.released);
        self.released = self.read;
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
            return;
        };
        let _ = fallocate(self.reader.as_fd(), flags, from, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[tokio::test]
    async fn reads_what_is_written_before_and_after_the_writer_exits() {
        let file = OutputFile::new().unwrap();
        let mut writer = file.writer().unwrap();
        let (exited, watch) = watch::channel(false);
        let mut followed = file.follow(watch).unwrap();
        writer.write_all(b"first\n").unwrap();
        let mut buf = [0u8; 64];
        let n = followed.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first\n");

        writer.write_all(b"last\n").unwrap();
        drop(writer);
        exited.send(true).unwrap();
        let n = followed.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"last\n", "written before the exit was seen");
        assert_eq!(followed.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn read_bytes_are_released_from_the_disk() {
        use std::os::unix::fs::MetadataExt as _;
        let file = OutputFile::new().unwrap();
        let path = file.file.path().to_owned();
        let mut writer = file.writer().unwrap();
        let (_exited, watch) = watch::channel(false);
        let mut followed = file.follow(watch).unwrap();
        let block = vec![b'x'; 1024 * 1024];
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..3 * RELEASE_BYTES / block.len() as u64 {
            writer.write_all(&block).unwrap();
            let mut left = block.len();
            while left > 0 {
                left -= followed.read(&mut buf).await.unwrap();
            }
        }
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(meta.len(), 3 * RELEASE_BYTES, "the size stays");
        assert!(
            meta.blocks() * 512 <= RELEASE_BYTES,
            "{} bytes still on disk",
            meta.blocks() * 512
        );
    }
}
