//! Uploaded contexts as files in a directory of this manager (`<data dir>/contexts`): the
//! embedded default. Only this manager has them; workers fetch them from its REST API.

use std::io::ErrorKind;
use std::path::PathBuf;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::{ContextError, ContextStore, Download, WorkerUrl, check_id, well_formed, write_part};

/// A directory of uploaded contexts, each file named by its id.
pub struct LocalStore {
    dir: PathBuf,
    worker_url: WorkerUrl,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl LocalStore {
    /// Uses (and creates on first write) `dir`; workers fetch uploads from `worker_url(id)`.
    pub fn new(dir: impl Into<PathBuf>, worker_url: WorkerUrl) -> Self {
        LocalStore {
            dir: dir.into(),
            worker_url,
        }
    }

    /// The file of a finished upload, when the id is well-formed.
    fn file(&self, id: &str) -> Option<PathBuf> {
        well_formed(id).then(|| self.dir.join(id))
    }
}

#[async_trait]
impl ContextStore for LocalStore {
    /// Written aside as `.<id>.part`, then renamed: a reader never sees half an upload.
    async fn put(
        &self,
        id: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
        limit: u64,
    ) -> Result<u64, ContextError> {
        check_id(id)?;
        let done = self.dir.join(id);
        if tokio::fs::try_exists(&done)
            .await
            .map_err(ContextError::Storage)?
        {
            return Err(ContextError::AlreadyUploaded);
        }
        let part = self.dir.join(format!(".{id}.part"));
        let size = write_part(body, &part, limit).await?;
        if let Err(e) = tokio::fs::rename(&part, &done).await {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(ContextError::Storage(e));
        }
        Ok(size)
    }

    async fn exists(&self, id: &str) -> Result<bool, ContextError> {
        let Some(file) = self.file(id) else {
            return Ok(false);
        };
        match tokio::fs::metadata(file).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ContextError::Storage(e)),
        }
    }

    async fn worker_url(&self, id: &str) -> Result<String, ContextError> {
        check_id(id)?;
        Ok((self.worker_url)(id))
    }

    async fn open(&self, id: &str) -> Result<Option<Download>, ContextError> {
        let Some(file) = self.file(id) else {
            return Ok(None);
        };
        match tokio::fs::File::open(file).await {
            Ok(file) => Ok(Some(Box::new(file))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ContextError::Storage(e)),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), ContextError> {
        check_id(id)?;
        match tokio::fs::remove_file(self.dir.join(id)).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(ContextError::Storage(e)),
            _ => Ok(()),
        }
    }
}
