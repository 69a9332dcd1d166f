//! Packing a local build context directory as a tar.gz in memory.

use std::path::Path;

use anyhow::Context as _;
use flate2::Compression;
use flate2::write::GzEncoder;

/// Packs everything under `dir` into a gzip-compressed tar, paths relative to `dir`.
///
/// Symlinks are stored as symlinks (never followed, so nothing outside `dir` is read);
/// ownership and timestamps are left out so the same tree packs to the same entries.
pub fn pack_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let encoder = GzEncoder::new(Vec::new(), Compression::default());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder
        .append_dir_all("", dir)
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    let encoder = builder
        .into_inner()
        .context("cannot finish the tar archive")?;
    encoder.finish().context("cannot finish the gzip stream")
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

        let entries = unpack(&pack_dir(root).expect("pack"));
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
        assert!(pack_dir(&dir.path().join("nope")).is_err());
    }
}
