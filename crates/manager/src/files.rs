//! Uploaded build contexts, kept as files under the data dir and served to workers by an
//! unguessable id.
use std::path::{Path, PathBuf};

/// A directory of uploaded contexts, each named by a random id.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Uses (and creates on first write) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStore { dir: dir.into() }
    }

    /// The file of an id, when the id is well-formed (64 hex digits) and the file exists.
    pub fn path(&self, file_id: &str) -> Option<PathBuf> {
        let ok = file_id.len() == 64 && file_id.bytes().all(|b| b.is_ascii_hexdigit());
        let path = self.dir.join(file_id);
        (ok && path.is_file()).then_some(path)
    }

    /// Stores bytes under a new random id and returns the id.
    pub async fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        use rand::RngCore;
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        tokio::fs::create_dir_all(&self.dir).await?;
        let tmp = self.dir.join(format!(".{id}.part"));
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, self.dir.join(&id)).await?;
        Ok(id)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
