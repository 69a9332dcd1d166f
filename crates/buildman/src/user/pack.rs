//! Packing a local build context directory as a tar.gz in memory, leaving out what its
//! `.dockerignore` excludes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use flate2::Compression;
use flate2::write::GzEncoder;

use super::dockerignore::{self, DockerIgnore};

/// A packed context.
pub struct Packed {
    /// The tar.gz.
    pub bytes: Vec<u8>,
    /// Files and directories `.dockerignore` left out (a directory counts once).
    pub excluded: usize,
}

/// Packs everything under `dir` that its `.dockerignore` does not exclude into a
/// gzip-compressed tar, paths relative to `dir`. `always` (relative paths: the Dockerfile)
/// are packed whatever `.dockerignore` says, as `docker build` sends the Dockerfile and the
/// `.dockerignore` itself (which the worker's builder then applies to COPY and ADD).
///
/// Symlinks are stored as symlinks (never followed, so nothing outside `dir` is read);
/// ownership and timestamps are left out so the same tree packs to the same entries.
pub fn pack_dir(dir: &Path, always: &[PathBuf]) -> anyhow::Result<Packed> {
    let ignore = DockerIgnore::read(dir)?;
    let mut always = always.to_vec();
    always.push(PathBuf::from(dockerignore::FILE_NAME));
    let mut packer = Packer {
        builder: tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default())),
        root: dir,
        ignore,
        always,
        excluded: 0,
    };
    packer.builder.follow_symlinks(false);
    packer.builder.mode(tar::HeaderMode::Deterministic);
    packer
        .add_tree(Path::new(""))
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    let excluded = packer.excluded;
    let encoder = (packer.builder.into_inner()).context("cannot finish the tar archive")?;
    let bytes = encoder.finish().context("cannot finish the gzip stream")?;
    Ok(Packed { bytes, excluded })
}

/// The walk over a context directory.
struct Packer<'a> {
    builder: tar::Builder<GzEncoder<Vec<u8>>>,
    root: &'a Path,
    ignore: DockerIgnore,
    always: Vec<PathBuf>,
    excluded: usize,
}

impl Packer<'_> {
    /// Adds the entries of directory `rel` (relative to the root), in name order.
    fn add_tree(&mut self, rel: &Path) -> anyhow::Result<()> {
        let here = self.root.join(rel);
        let mut entries = std::fs::read_dir(&here)
            .and_then(|dir| dir.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot list {}", here.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = rel.join(entry.file_name());
            let is_dir = entry.file_type()?.is_dir();
            let needed = self.always.iter().any(|a| a.starts_with(&path));
            if !needed && self.ignore.excludes(&path.to_string_lossy()) {
                self.excluded += 1;
                // Below an excluded directory only a `!pattern` can bring something back.
                if is_dir && self.ignore.has_exceptions() {
                    self.add_tree(&path)?;
                }
                continue;
            }
            self.builder
                .append_path_with_name(entry.path(), &path)
                .with_context(|| format!("cannot pack {}", entry.path().display()))?;
            if is_dir {
                self.add_tree(&path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::collections::BTreeMap;
    use std::io::Read as _;

    /// What an unpacked entry looked like: type, and content or link target.
    #[derive(Debug, PartialEq, Eq)]
    enum Entry {
        Dir,
        File(String),
        Link(String),
    }

    fn unpack(bytes: &[u8]) -> BTreeMap<String, Entry> {
        let mut archive = tar::Archive::new(GzDecoder::new(bytes));
        let mut out = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let value = if kind.is_dir() {
                Entry::Dir
            } else if kind.is_symlink() {
                let target = entry.link_name().expect("link").expect("target");
                Entry::Link(target.to_string_lossy().into_owned())
            } else {
                let mut s = String::new();
                entry.read_to_string(&mut s).expect("read");
                Entry::File(s)
            };
            out.insert(path.trim_end_matches('/').to_string(), value);
        }
        out
    }

    #[cfg(unix)]
    #[test]
    fn packs_files_subdirs_and_symlinks() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), "do not pack").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/a.txt"), "hello").expect("write");
        std::os::unix::fs::symlink("sub/a.txt", root.join("link")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("escape"))
            .expect("symlink");
        std::os::unix::fs::symlink(outside.path(), root.join("escape-dir")).expect("symlink");

        let entries = unpack(&pack_dir(root, &[]).expect("pack").bytes);
        let expected: BTreeMap<String, Entry> = [
            ("Dockerfile", Entry::File("FROM scratch\n".into())),
            ("sub", Entry::Dir),
            ("sub/a.txt", Entry::File("hello".into())),
            ("link", Entry::Link("sub/a.txt".into())),
            (
                "escape",
                Entry::Link(outside.path().join("secret").to_string_lossy().into_owned()),
            ),
            (
                "escape-dir",
                Entry::Link(outside.path().to_string_lossy().into_owned()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(entries, expected);
    }

    #[test]
    fn packing_a_missing_dir_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(pack_dir(&dir.path().join("nope"), &[]).is_err());
    }

    #[test]
    fn dockerignore_leaves_files_out_but_never_the_dockerfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("big/keep")).expect("mkdir");
        std::fs::write(root.join("big/blob"), "x".repeat(4096)).expect("write");
        std::fs::write(root.join("big/keep/me"), "kept").expect("write");
        std::fs::write(root.join("a.log"), "log").expect("write");
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(
            root.join(".dockerignore"),
            "*.log\nbig\n!big/keep\nDockerfile\n.dockerignore\n",
        )
        .expect("write");
        let packed = pack_dir(root, &[PathBuf::from("Dockerfile")]).expect("pack");
        let names: Vec<String> = unpack(&packed.bytes).into_keys().collect();
        assert_eq!(
            names,
            [".dockerignore", "Dockerfile", "big/keep", "big/keep/me"]
        );
        assert_eq!(packed.excluded, 3, "a.log, big, big/blob");
    }
}
