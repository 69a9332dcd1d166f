//! Uploaded build contexts, kept as files under the data dir and served to workers by an
//! unguessable id (the id is the capability: 256 random bits).

use std::path::{Path, PathBuf};

/// A directory of uploaded contexts, each named by a random id.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

fn well_formed(file_id: &str) -> bool {
    file_id.len() == 64
        && file_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FileStore {
    /// Uses (and creates on first write) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStore { dir: dir.into() }
    }

    /// A new random file id.
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

    /// Where an upload of `file_id` is written while it arrives, and where it is renamed to
    /// when complete; `None` for a malformed id.
    pub fn upload_paths(&self, file_id: &str) -> Option<(PathBuf, PathBuf)> {
        well_formed(file_id).then(|| {
            (
                self.dir.join(format!(".{file_id}.part")),
                self.dir.join(file_id),
            )
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
