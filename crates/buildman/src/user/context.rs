//! What `submit` checks in a local context before anything is uploaded, so that a build
//! that cannot work is refused at once rather than by the worker after queueing.

use std::path::{Path, PathBuf};

/// Where the manager's worker will look for the Dockerfile of a context directory `dir`:
/// `--dockerfile` from the root (then, as Quay's worker does, relative to `--context`), else
/// `Dockerfile` in `--context`.
pub fn dockerfile_candidates(
    dir: &Path,
    dockerfile: Option<&str>,
    context: Option<&str>,
) -> Vec<PathBuf> {
    let inside = |base: &Path, p: &str| base.join(p.trim_start_matches('/'));
    let context_dir = inside(dir, context.unwrap_or_default());
    match dockerfile.filter(|d| !d.is_empty()) {
        Some(d) => vec![inside(dir, d), inside(&context_dir, d)],
        None => vec![context_dir.join("Dockerfile")],
    }
}

/// Refuses a context directory without its Dockerfile (a regular file, or a link to one);
/// returns the Dockerfile's path relative to `dir`.
pub fn check_dir(
    dir: &Path,
    dockerfile: Option<&str>,
    context: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let candidates = dockerfile_candidates(dir, dockerfile, context);
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.strip_prefix(dir).unwrap_or(found).to_path_buf());
    }
    anyhow::bail!(
        "no Dockerfile at {}: add one to the context, or name it with --dockerfile \
         (a path inside {})",
        candidates[0].display(),
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfile_is_looked_for_where_the_manager_will() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/docker")).expect("mkdir");
        std::fs::write(root.join("sub/Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(root.join("sub/docker/Build.df"), "FROM scratch\n").expect("write");
        let err = check_dir(root, None, None).expect_err("none at the root");
        assert!(err.to_string().starts_with("no Dockerfile at"), "{err}");
        assert!(err.to_string().contains("--dockerfile"), "{err}");
        let found = check_dir(root, None, Some("sub")).expect("in the context");
        assert_eq!(found, Path::new("sub/Dockerfile"));
        check_dir(root, None, Some("/sub/")).expect("absolute context");
        check_dir(root, Some("/sub/docker/Build.df"), None).expect("named");
        check_dir(root, Some("docker/Build.df"), Some("sub")).expect("relative to the context");
        assert!(
            check_dir(root, Some("sub/docker"), None).is_err(),
            "a directory"
        );
    }
}
