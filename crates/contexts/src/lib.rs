//! Uploaded build contexts: where they are kept between the upload and the worker's download.
//! Each is named by an unguessable id (the id is the capability: 256 random bits) and stored
//! through [`ContextStore`], which has two backends:
//! - [`local::LocalStore`]: the data dir of the manager that received the upload (the
//!   embedded default; workers fetch it from that manager's REST API);
//! - [`s3::S3Store`]: an S3-compatible bucket every manager reaches (workers fetch a
//!   presigned URL), so a build uploaded to one manager can run from another.

pub mod local;
pub mod s3;

use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub use local::LocalStore;
pub use s3::S3Store;

/// Turns an upload id into the URL a worker downloads it from, when the manager's REST API
/// serves the upload (only the server knows its routes).
pub type WorkerUrl = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// A finished upload, opened for reading.
pub type Download = Box<dyn AsyncRead + Send + Unpin>;

/// Why an operation on an uploaded context failed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The id is not one [`new_id`] makes.
    #[error("unknown file id: get one from POST /api/v1/filedrop/")]
    MalformedId,
    /// Ids are used once.
    #[error("this file id was already uploaded")]
    AlreadyUploaded,
    /// The upload passed the size limit; what arrived was discarded.
    #[error("upload larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The client stopped sending; what arrived was discarded.
    #[error("upload interrupted: {0}")]
    Interrupted(#[source] io::Error),
    /// The storage failed (a disk, the object store).
    #[error("context storage: {0}")]
    Storage(#[source] io::Error),
}

impl ContextError {
    /// True when the uploader's request was at fault, not the storage.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ContextError::Storage(_))
    }
}

/// Where uploaded contexts are kept. Every method takes an id from [`new_id`]; any other id
/// is [`ContextError::MalformedId`] to `put` and `delete`, and absent to the others.
#[async_trait]
pub trait ContextStore: Send + Sync {
    /// Stores an upload of at most `limit` bytes under `id`, streaming. It becomes visible
    /// only once complete; an upload that fails leaves nothing. Returns its size.
    async fn put(
        &self,
        id: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
        limit: u64,
    ) -> Result<u64, ContextError>;

    /// Whether a finished upload has this id.
    async fn exists(&self, id: &str) -> Result<bool, ContextError>;

    /// The URL a worker downloads the upload from (asked when the worker registers).
    async fn worker_url(&self, id: &str) -> Result<String, ContextError>;

    /// The upload's bytes, `None` when there is no such upload.
    async fn open(&self, id: &str) -> Result<Option<Download>, ContextError>;

    /// Removes the upload; removing one that is not there is no error.
    async fn delete(&self, id: &str) -> Result<(), ContextError>;
}

/// Removes the `.<id>.part` files an upload interrupted by the end of the process left in
/// `dir` (both stores spool uploads there); returns how many. Only for the process that
/// owns `dir` alone, at start, when no upload can be in flight. A missing `dir` is empty.
pub fn remove_partial_uploads(dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let partial = name
            .to_str()
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(".part"))
            .is_some_and(well_formed);
        if partial {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A new random id: 256 bits in hex.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Whether `id` is one [`new_id`] makes: it is then safe as a file name and an object key.
fn well_formed(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Refuses an id [`new_id`] did not make.
fn check_id(id: &str) -> Result<(), ContextError> {
    if well_formed(id) {
        Ok(())
    } else {
        Err(ContextError::MalformedId)
    }
}

/// Copies `body` into the new file `part`, refusing more than `limit` bytes; on any failure
/// the file is removed, so nothing is left behind.
async fn write_part(
    body: &mut (dyn AsyncRead + Send + Unpin),
    part: &Path,
    limit: u64,
) -> Result<u64, ContextError> {
    let written = copy_bounded(body, part, limit).await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(part).await;
    }
    written
}

async fn copy_bounded(
    body: &mut (dyn AsyncRead + Send + Unpin),
    path: &Path,
    limit: u64,
) -> Result<u64, ContextError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(ContextError::Storage)?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ContextError::Storage)?;
    // One byte past the limit tells a too-large body from one exactly at it.
    let mut body = body.take(limit.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut size: u64 = 0;
    loop {
        let n = body
            .read(&mut buf)
            .await
            .map_err(ContextError::Interrupted)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            return Err(ContextError::TooLarge { limit });
        }
        file.write_all(&buf[..n])
            .await
            .map_err(ContextError::Storage)?;
    }
    file.flush().await.map_err(ContextError::Storage)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partial_uploads_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (id, other) = (new_id(), new_id());
        let part = dir.path().join(format!(".{id}.part"));
        std::fs::write(&part, b"half").unwrap();
        std::fs::write(dir.path().join(&other), b"done").unwrap();
        std::fs::write(dir.path().join(".notes.part"), b"not ours").unwrap();
        assert_eq!(remove_partial_uploads(dir.path()).unwrap(), 1);
        assert!(!part.exists());
        assert!(dir.path().join(&other).exists(), "a finished upload stays");
        assert!(
            dir.path().join(".notes.part").exists(),
            "a file not named by an id stays"
        );
        assert_eq!(remove_partial_uploads(&dir.path().join("none")).unwrap(), 0);
    }
}
