//! Feeds arbitrary bytes to `context::unpack` and checks that nothing escapes the
//! destination: no new entry next to it, a canary untouched, every path inside it resolving
//! (through any symlinks) to somewhere inside it, and no setuid/setgid/sticky bit.

#![no_main]

use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use buildman_worker::context::{Limits, unpack};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"canary";

/// One directory per fuzzing process: a canary, and one scratch parent per input.
fn root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("canary"), CANARY).expect("canary");
        dir
    })
    .path()
}

/// Every path under `dir`, not following symlinks.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    let parent = tempfile::tempdir_in(root).expect("tempdir");
    let dest = parent.path().join("dest");
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 1000,
        max_download: 1 << 20,
    };
    let _ = unpack(Cursor::new(data), &dest, &limits);

    let beside: Vec<_> = std::fs::read_dir(parent.path())
        .expect("list parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        beside.is_empty() || beside == ["dest"],
        "escaped next to dest: {beside:?}"
    );
    let in_root = std::fs::read_dir(root).expect("list root").count();
    assert_eq!(in_root, 2, "escaped into the fuzz root");
    assert_eq!(std::fs::read(root.join("canary")).expect("canary"), CANARY);

    if let Ok(dest) = dest.canonicalize() {
        let mut paths = Vec::new();
        walk(&dest, &mut paths);
        for path in paths {
            if let Ok(real) = path.canonicalize() {
                assert!(
                    real.starts_with(&dest),
                    "{} resolves to {}, outside dest",
                    path.display(),
                    real.display()
                );
            }
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if !meta.file_type().is_symlink() {
                assert_eq!(
                    meta.permissions().mode() & 0o7000,
                    0,
                    "{} has a special mode bit",
                    path.display()
                );
            }
        }
    }
});
