//! Uploaded build contexts, kept as files under the data dir and handed to workers by an
//! unguessable id (the id is the capability: 256 random bits). The URL a worker fetches
//! an upload from belongs to whoever serves the files (the REST API): it is handed in as a
//! function, so the manager knows no route.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Turns a file id into the URL a worker downloads it from.
pub type WorkerUrl = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The id is not one [`FileStore::new_id`] makes.
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
    Interrupted(#[source] std::io::Error),
    /// The upload could not be written.
    #[error("storing the upload: {0}")]
    Storage(#[source] std::io::Error),
}

impl UploadError {
    /// True when the uploader's request was at fault, not the manager.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, UploadError::Storage(_))
    }
}

/// A directory of uploaded contexts, each named by a random id.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    worker_url: WorkerUrl,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("dir", &self.dir).finish()
    }
}

fn well_formed(file_id: &str) -> bool {
    file_id.len() == 64
        && file_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FileStore {
    /// Uses (and creates on first write) `dir`; workers fetch uploads from `worker_url(id)`.
    pub fn new(dir: impl Into<PathBuf>, worker_url: WorkerUrl) -> Self {
        FileStore {
            dir: dir.into(),
            worker_url,
        }
    }

    /// A new random id: 256 bits in hex.
    pub fn new_id() -> String {
        use rand::RngCore;
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        hex::encode(raw)
    }

    /// The file of an id, when the id is well-formed and the upload finished.
    pub fn path(&self, file_id: &str) -> Option<PathBuf> {
        let path = self.dir.join(file_id);
        (well_formed(file_id) && path.is_file()).then_some(path)
    }

    /// Where a worker downloads the upload `file_id`.
    pub fn worker_url(&self, file_id: &str) -> String {
        (self.worker_url)(file_id)
    }

    /// Stores an upload of at most `limit` bytes under `file_id`. It becomes visible only
    /// once complete (written aside, then renamed); an upload that fails leaves nothing.
    pub async fn write(
        &self,
        file_id: &str,
        body: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<u64, UploadError> {
        if !well_formed(file_id) {
            return Err(UploadError::MalformedId);
        }
        let part = self.dir.join(format!(".{file_id}.part"));
        let done = self.dir.join(file_id);
        if done.exists() {
            return Err(UploadError::AlreadyUploaded);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(UploadError::Storage)?;
        let written = copy_bounded(body, &part, limit).await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        let size = written?;
        tokio::fs::rename(&part, &done)
            .await
            .map_err(UploadError::Storage)?;
        Ok(size)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Copies `body` into a new file at `path`, refusing more than `limit` bytes.
async fn copy_bounded(
    body: impl AsyncRead + Unpin,
    path: &Path,
    limit: u64,
) -> Result<u64, UploadError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(UploadError::Storage)?;
    // One byte past the limit tells a too-large body from one exactly at it.
    let mut body = body.take(limit.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut size: u64 = 0;
    loop {
        let n = body
            .read(&mut buf)
            .await
            .map_err(UploadError::Interrupted)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            return Err(UploadError::TooLarge { limit });
        }
        file.write_all(&buf[..n])
            .await
            .map_err(UploadError::Storage)?;
    }
    file.flush().await.map_err(UploadError::Storage)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> FileStore {
        FileStore::new(dir, Arc::new(|id: &str| format!("http://files/{id}")))
    }

    #[tokio::test]
    async fn uploads_appear_whole_once_and_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let files = store(dir.path());
        let id = FileStore::new_id();
        assert!(files.path(&id).is_none());
        assert_eq!(
            files.write(&id, &b"FROM scratch\n"[..], 13).await.unwrap(),
            13
        );
        assert_eq!(
            std::fs::read(files.path(&id).unwrap()).unwrap(),
            b"FROM scratch\n"
        );
        assert!(matches!(
            files.write(&id, &b"again"[..], 100).await,
            Err(UploadError::AlreadyUploaded)
        ));
        let big = FileStore::new_id();
        assert!(matches!(
            files.write(&big, &b"0123456789"[..], 9).await,
            Err(UploadError::TooLarge { limit: 9 })
        ));
        assert!(files.path(&big).is_none());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "a refused upload leaves no file behind");
        assert!(matches!(
            files.write("../escape", &b""[..], 9).await,
            Err(UploadError::MalformedId)
        ));
        assert_eq!(files.worker_url(&id), format!("http://files/{id}"));
    }
}
