//! The data dir belongs to one `serve` at a time. A second manager on the same directory
//! would share its SQLite database, keys and uploads with the first, and (believing the
//! first's claims to be left over from a crash) return its running builds to the queue and
//! start second workers for them. So `serve` takes an advisory lock on a file in the data
//! dir before it reads or writes anything else there, keeps it while it runs (the kernel
//! drops it when the process ends, however it ends), and refuses to start without it,
//! naming the process that holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file, in the data dir; it holds the process id of the manager that has it.
pub(super) const LOCK_FILE: &str = "serve.lock";

/// The data dir's lock, held while this value lives.
pub struct DataDirLock {
    _lock: Flock<File>,
}

/// Takes the data dir's lock, or says which process holds it.
pub(super) fn lock(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "a process that has not yet written its id".to_owned(),
                pid => format!("process {pid}"),
            };
            bail!(
                "the data dir {} is in use by another `buildman serve` ({holder}, holding {}): \
                 stop that manager first, or give this one another --data-dir",
                data_dir.display(),
                path.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(DataDirLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_granted_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let refused = lock(dir.path()).err().unwrap().to_string();
        let pid = format!("process {}", std::process::id());
        assert!(refused.contains(&pid), "{refused}");
        assert!(refused.contains("--data-dir"), "{refused}");
        drop(held);
        lock(dir.path()).expect("free again once released");
    }
}
