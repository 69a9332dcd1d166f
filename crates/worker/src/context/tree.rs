//! The only code that writes unpacked entries to disk. Archive readers hand it names and
//! data; it decides where (if anywhere) they may go.
//!
//! The invariant that keeps everything inside the root:
//! - entry names are relative and never contain `..`;
//! - a name is resolved component by component here, never by the kernel: a symlink met on
//!   the way is followed by reading it and continuing inside the root, so the path finally
//!   opened has only real directories in it;
//! - symlinks are stored in a normal form, `../` repeated at most as deep as the link's real
//!   directory, then plain names; following one from its real place therefore never leaves
//!   the root, whatever the plain names later turn out to be (they are resolved the same way);
//! - a real directory is never replaced, so a symlink's real place never changes;
//! - files are created with `O_EXCL | O_NOFOLLOW`, and hard links only to regular files.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{ContextError, Limits};

/// How many symlinks one name may pass through, as Linux's own limit.
const MAX_SYMLINK_HOPS: u32 = 40;
/// Copy buffer size; bytes are counted per read, before they are written.
const CHUNK: usize = 64 * 1024;

/// An unpack destination that checks every entry against the rules above and the limits.
pub(crate) struct Tree {
    /// The destination, canonical, so real paths below it can be joined and compared.
    root: PathBuf,
    limits: Limits,
    entries: u64,
    bytes: u64,
    /// Relative paths known to be real directories (made or checked here), to skip `lstat`s.
    dirs: HashSet<PathBuf>,
    /// The copy buffer, kept across entries: archives of many small files are common.
    buf: Vec<u8>,
}

/// An entry name as the archive spells it, for messages.
pub(crate) fn show(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

/// Splits a relative, `/`-separated entry name into its plain components.
///
/// Rejects absolute names and `..` anywhere; `.` and empty components are dropped. An empty
/// result means the name is the root itself (`./`).
fn entry_components(name: &[u8]) -> Result<Vec<OsString>, ContextError> {
    if name.is_empty() {
        return Err(ContextError::Format(
            "archive entry with an empty name".into(),
        ));
    }
    if name[0] == b'/' {
        return Err(ContextError::Hostile(format!(
            "archive entry {} has an absolute path",
            show(name)
        )));
    }
    let mut out = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(ContextError::Hostile(format!(
                    "archive entry {} points outside the build context",
                    show(name)
                )));
            }
            _ if part.contains(&0) => {
                return Err(ContextError::Format(format!(
                    "archive entry {} has a NUL byte in its name",
                    show(name)
                )));
            }
            _ => out.push(OsString::from_vec(part.to_vec())),
        }
    }
    Ok(out)
}

/// How a resolved name's last component is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Leave it as it is: it is about to be created or replaced (missing parents are made).
    Keep,
    /// Follow it if it is a symlink: it must exist already (a hard link's target).
    Follow,
}

/// What [`Tree::step`] found at one component of a name being resolved.
enum Step {
    /// A real directory, or the last component: the resolved path goes into it.
    Into,
    /// A symlink: its target's components take its place.
    Symlink,
}

impl Tree {
    /// Opens (creating if need be) `dest` as the root everything is unpacked under.
    pub(crate) fn new(dest: &Path, limits: &Limits) -> Result<Self, ContextError> {
        fs::create_dir_all(dest)
            .map_err(|e| ContextError::io(format!("creating {}", dest.display()), e))?;
        let root = dest
            .canonicalize()
            .map_err(|e| ContextError::io(format!("resolving {}", dest.display()), e))?;
        Ok(Self {
            root,
            limits: *limits,
            entries: 0,
            bytes: 0,
            dirs: HashSet::new(),
            buf: vec![0u8; CHUNK],
        })
    }

    /// Counts one archive entry against `max_entries`.
    pub(crate) fn count_entry(&mut self) -> Result<(), ContextError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ContextError::TooLarge(format!(
                "the build package has more than {} entries",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    /// Counts `n` bytes of content against `max_bytes`.
    fn count_bytes(&mut self, n: u64) -> Result<(), ContextError> {
        match self.bytes.checked_add(n) {
            Some(total) if total <= self.limits.max_bytes => {
                self.bytes = total;
                Ok(())
            }
            _ => Err(self.too_large()),
        }
    }

    fn too_large(&self) -> ContextError {
        ContextError::TooLarge(format!(
            "the build package unpacks to more than {} bytes",
            self.limits.max_bytes
        ))
    }

    /// Resolves `components` to a path of real directories (plus the last component) relative
    /// to the root, following symlinks by hand and creating missing parent directories.
    fn resolve(
        &mut self,
        name: &[u8],
        components: Vec<OsString>,
        last: Last,
    ) -> Result<PathBuf, ContextError> {
        let mut queue: VecDeque<OsString> = components.into();
        let mut real = PathBuf::new();
        let mut hops = 0;
        while let Some(part) = queue.pop_front() {
            if part == ".." {
                // Only symlink targets (normal form, checked when made) bring `..` here.
                if !real.pop() {
                    return Err(ContextError::Hostile(format!(
                        "archive entry {} resolves outside the build context",
                        show(name)
                    )));
                }
                continue;
            }
            let candidate = real.join(&part);
            let is_last = queue.is_empty();
            if self.dirs.contains(&candidate) {
                real = candidate;
                continue;
            }
            if is_last && last == Last::Keep {
                real = candidate;
                break;
            }
            match self.step(name, &candidate, is_last, last)? {
                Step::Into => real = candidate,
                Step::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ContextError::Hostile(format!(
                            "archive entry {} passes through too many symlinks",
                            show(name)
                        )));
                    }
                    let mut expanded = self.symlink_components(name, &candidate)?;
                    expanded.extend(queue.drain(..));
                    queue = expanded;
                }
            }
        }
        Ok(real)
    }

    /// Looks on disk at `candidate`, the next component of the name being resolved. A real
    /// directory is stepped into (a missing parent is made first when `last` is
    /// [`Last::Keep`]), and so is anything that is the last component; a symlink is left for
    /// the caller to follow; anything else is an error.
    fn step(
        &mut self,
        name: &[u8],
        candidate: &Path,
        is_last: bool,
        last: Last,
    ) -> Result<Step, ContextError> {
        match fs::symlink_metadata(self.root.join(candidate)) {
            Ok(meta) if meta.file_type().is_symlink() => Ok(Step::Symlink),
            Ok(meta) if meta.is_dir() => {
                self.dirs.insert(candidate.to_owned());
                Ok(Step::Into)
            }
            Ok(_) if is_last => Ok(Step::Into),
            Ok(_) => Err(ContextError::Format(format!(
                "archive entry {} has {} as a parent directory, but it is a file",
                show(name),
                show(candidate.as_os_str().as_bytes())
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !is_last && last == Last::Keep => {
                // Archives often list files before (or without) their directories.
                self.make_dir(candidate, 0o755)?;
                Ok(Step::Into)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ContextError::Format(format!(
                "archive entry {} names {}, which is not in the archive before it",
                show(name),
                show(candidate.as_os_str().as_bytes())
            ))),
            Err(e) => Err(ContextError::io(
                format!("inspecting {}", candidate.display()),
                e,
            )),
        }
    }

    /// The components of the target of symlink `link` (relative to the root), to be
    /// resolved in its place; `..`s are kept for [`Self::resolve`] to apply.
    fn symlink_components(
        &self,
        name: &[u8],
        link: &Path,
    ) -> Result<VecDeque<OsString>, ContextError> {
        let target = fs::read_link(self.root.join(link))
            .map_err(|e| ContextError::io(format!("reading symlink {}", link.display()), e))?;
        if target.is_absolute() {
            // Never made here; refuse rather than follow it out.
            return Err(ContextError::Hostile(format!(
                "archive entry {} passes through an absolute symlink",
                show(name)
            )));
        }
        Ok(target
            .as_os_str()
            .as_bytes()
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .map(|p| OsString::from_vec(p.to_vec()))
            .collect())
    }

    /// Resolves an entry's name to where it will be created, relative to the root; `None`
    /// for the root itself.
    fn locate(&mut self, name: &[u8]) -> Result<Option<PathBuf>, ContextError> {
        let components = entry_components(name)?;
        if components.is_empty() {
            return Ok(None);
        }
        let rel = self.resolve(name, components, Last::Keep)?;
        Ok((!rel.as_os_str().is_empty()).then_some(rel))
    }

    /// Makes room for a new entry at `rel`: an existing non-directory there is removed (later
    /// entries win, as with tar), a directory is never replaced. Returns whether a directory
    /// is already there.
    fn make_room(&mut self, name: &[u8], rel: &Path, is_dir: bool) -> Result<bool, ContextError> {
        if self.dirs.contains(rel) {
            return if is_dir {
                Ok(true)
            } else {
                Err(replaces_dir(name))
            };
        }
        match fs::symlink_metadata(self.root.join(rel)) {
            Ok(meta) if meta.is_dir() => {
                if is_dir {
                    Ok(true)
                } else {
                    Err(replaces_dir(name))
                }
            }
            Ok(_) => {
                // unlink never follows a symlink, so this removes only the link itself.
                fs::remove_file(self.root.join(rel))
                    .map_err(|e| ContextError::io(format!("replacing {}", rel.display()), e))?;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ContextError::io(format!("inspecting {}", rel.display()), e)),
        }
    }

    /// [`Self::locate`] then [`Self::make_room`] for a non-directory, which needs a name.
    fn place_non_dir(&mut self, name: &[u8], kind: &str) -> Result<PathBuf, ContextError> {
        let Some(rel) = self.locate(name)? else {
            return Err(ContextError::Format(format!(
                "archive entry {} is a {kind} without a name",
                show(name)
            )));
        };
        self.make_room(name, &rel, false)?;
        Ok(rel)
    }

    fn make_dir(&mut self, rel: &Path, mode: u32) -> Result<(), ContextError> {
        let full = self.root.join(rel);
        fs::DirBuilder::new()
            .mode(mode)
            .create(&full)
            .map_err(|e| ContextError::io(format!("creating directory {}", rel.display()), e))?;
        self.dirs.insert(rel.to_owned());
        Ok(())
    }

    /// Creates directory `name` (or updates the mode of an existing one).
    pub(crate) fn dir(&mut self, name: &[u8], mode: u32) -> Result<(), ContextError> {
        // The owner keeps rwx so later entries can be written into it.
        let mode = (mode & 0o777) | 0o700;
        let Some(rel) = self.locate(name)? else {
            return Ok(());
        };
        if !self.make_room(name, &rel, true)? {
            self.make_dir(&rel, mode)?;
        }
        // DirBuilder's mode is cut by the umask, and an existing directory takes the
        // archive's mode too: set it exactly.
        fs::set_permissions(self.root.join(&rel), fs::Permissions::from_mode(mode))
            .map_err(|e| ContextError::io(format!("setting mode of {}", rel.display()), e))
    }

    /// Creates regular file `name` from `data`, which claims to hold `declared` bytes.
    ///
    /// The claim only lets an oversized entry fail early: bytes are counted as they are
    /// written, and the file never grows past what `max_bytes` leaves.
    pub(crate) fn file(
        &mut self,
        name: &[u8],
        mode: u32,
        declared: u64,
        data: &mut dyn Read,
    ) -> Result<(), ContextError> {
        if declared > self.limits.max_bytes.saturating_sub(self.bytes) {
            return Err(self.too_large());
        }
        let rel = self.place_non_dir(name, "file")?;
        let full = self.root.join(&rel);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&full)
            .map_err(|e| ContextError::io(format!("creating {}", rel.display()), e))?;
        let mut buf = std::mem::take(&mut self.buf);
        let copied = self.copy(name, &rel, data, &mut file, &mut buf);
        self.buf = buf;
        copied?;
        // Keep rwx for everyone as the archive says (COPY preserves it), never setuid,
        // setgid or sticky; the owner can always read it, since the builder must.
        file.set_permissions(fs::Permissions::from_mode((mode & 0o777) | 0o400))
            .map_err(|e| ContextError::io(format!("setting mode of {}", rel.display()), e))
    }

    /// Reads and discards what is left of an entry's data, counting it like file content
    /// (a directory entry with gigabytes of "data" is a bomb too).
    pub(crate) fn drain(&mut self, name: &[u8], data: &mut dyn Read) -> Result<(), ContextError> {
        let mut buf = std::mem::take(&mut self.buf);
        let drained = self.copy(name, Path::new(""), data, &mut io::sink(), &mut buf);
        self.buf = buf;
        drained
    }

    /// Copies `data` to `out` through `buf`, counting every byte before it is written.
    fn copy(
        &mut self,
        name: &[u8],
        rel: &Path,
        data: &mut dyn Read,
        out: &mut dyn Write,
        buf: &mut [u8],
    ) -> Result<(), ContextError> {
        loop {
            let n = match data.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(name, e)),
            };
            self.count_bytes(n as u64)?;
            out.write_all(&buf[..n])
                .map_err(|e| ContextError::io(format!("writing {}", rel.display()), e))?;
        }
    }

    /// Creates symlink `name` pointing at `target`, which must stay inside the root.
    pub(crate) fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ContextError> {
        if target.is_empty() {
            return Err(ContextError::Format(format!(
                "symlink {} has an empty target",
                show(name)
            )));
        }
        if target[0] == b'/' {
            return Err(ContextError::Hostile(format!(
                "symlink {} points to absolute path {}, outside the build context",
                show(name),
                show(target)
            )));
        }
        if target.contains(&0) {
            return Err(ContextError::Format(format!(
                "symlink {} has a NUL byte in its target",
                show(name)
            )));
        }
        // Lexical normal form: leading `..`s, then plain names.
        let mut ups = 0usize;
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in target.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        ups += 1;
                    }
                }
                _ => parts.push(part),
            }
        }
        let rel = self.place_non_dir(name, "symlink")?;
        let depth = rel.components().count() - 1;
        if ups > depth {
            return Err(ContextError::Hostile(format!(
                "symlink {} points to {}, outside the build context",
                show(name),
                show(target)
            )));
        }
        let mut normal: Vec<u8> = b"../".repeat(ups);
        normal.extend_from_slice(&parts.join(&b'/'));
        if normal.is_empty() {
            normal.push(b'.');
        }
        let normal = normal.strip_suffix(b"/").unwrap_or(&normal);
        std::os::unix::fs::symlink(OsStr::from_bytes(normal), self.root.join(&rel))
            .map_err(|e| ContextError::io(format!("creating symlink {}", rel.display()), e))
    }

    /// Creates hard link `name` to `target`, an earlier regular file of the archive (named
    /// from the archive's root, as tar does).
    pub(crate) fn hardlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ContextError> {
        let hostile = || {
            ContextError::Hostile(format!(
                "hard link {} points to {}, outside the build context",
                show(name),
                show(target)
            ))
        };
        let target_components = match entry_components(target) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return Err(hostile()),
            Err(ContextError::Hostile(_)) => return Err(hostile()),
            Err(e) => return Err(e),
        };
        let target_rel = self.resolve(name, target_components, Last::Follow)?;
        let target_full = self.root.join(&target_rel);
        let meta = fs::symlink_metadata(&target_full)
            .map_err(|e| ContextError::io(format!("inspecting {}", target_rel.display()), e))?;
        // A link to a symlink would copy its target to a new depth; to a directory, loop.
        if !meta.is_file() {
            return Err(ContextError::Format(format!(
                "hard link {} points to {}, which is not a regular file",
                show(name),
                show(target)
            )));
        }
        let Some(rel) = self.locate(name)? else {
            return Err(ContextError::Format(format!(
                "archive entry {} is a hard link without a name",
                show(name)
            )));
        };
        if rel == target_rel {
            // A link to itself: nothing to do (and removing the file first would lose it).
            return Ok(());
        }
        self.make_room(name, &rel, false)?;
        fs::hard_link(&target_full, self.root.join(&rel))
            .map_err(|e| ContextError::io(format!("creating hard link {}", rel.display()), e))
    }
}

/// The error for a non-directory entry where a directory already is.
fn replaces_dir(name: &[u8]) -> ContextError {
    ContextError::Format(format!(
        "archive entry {} would replace a directory",
        show(name)
    ))
}

/// A read error from the archive stream, which usually means it is corrupt or truncated.
pub(crate) fn read_error(name: &[u8], e: io::Error) -> ContextError {
    if let Some(inner) = e.get_ref()
        && let Some(err) = inner.downcast_ref::<BudgetExceeded>()
    {
        return ContextError::TooLarge(err.to_string());
    }
    ContextError::Format(format!("could not read archive entry {}: {e}", show(name)))
}

/// Raised through `io::Error` by a stream reader that was asked for more than it may give.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BudgetExceeded(pub(crate) String);
