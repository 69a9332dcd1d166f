//! Quay's rules for the context directory and Dockerfile inside an unpacked package.
//!
//! Quay gives both from the package root, with or without a leading `/`: context `/sub`,
//! Dockerfile `/sub/Dockerfile`. Some configurations give the Dockerfile relative to the
//! context instead (`Dockerfile` with context `/sub`), so that is tried when the
//! root-relative path does not exist. Both must stay inside the package, checked on the
//! names and again after symlinks are resolved.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::{ContextError, Prepared};

/// What Quay uses when no Dockerfile path is configured.
const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// `path` (relative to a base, leading `/` ignored) with `.` and `..` folded away, or `None`
/// if a `..` climbs above the base.
fn normalize(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(path.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Canonicalizes `path`, mapping "does not exist" to `missing`.
fn canonical(path: &Path, missing: impl FnOnce() -> ContextError) -> Result<PathBuf, ContextError> {
    path.canonicalize().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => missing(),
        _ => ContextError::io(format!("resolving {}", path.display()), e),
    })
}

/// Finds the context directory and Dockerfile inside the unpacked package `src`.
pub(crate) fn resolve(
    src: &Path,
    context: &str,
    dockerfile_path: &str,
) -> Result<Prepared, ContextError> {
    let root = src
        .canonicalize()
        .map_err(|e| ContextError::io("resolving the unpacked build package", e))?;
    let (context_rel, context_dir) = context_dir(&root, context)?;
    let dockerfile = dockerfile(&root, &context_rel, dockerfile_path)?;
    Ok(Prepared {
        context_dir,
        dockerfile,
    })
}

/// The context directory named `context`: its path relative to the package `root`, as
/// given, and where it really is (symlinks resolved), which must be a directory inside.
fn context_dir(root: &Path, context: &str) -> Result<(PathBuf, PathBuf), ContextError> {
    let context_rel = normalize(context).ok_or_else(|| {
        ContextError::Hostile(format!(
            "build context {context:?} points outside the build package"
        ))
    })?;
    let context_dir = canonical(&root.join(&context_rel), || {
        ContextError::ContextMissing(context.to_owned())
    })?;
    if !context_dir.starts_with(root) {
        return Err(ContextError::Hostile(format!(
            "build context {context:?} resolves outside the build package (through a symlink)"
        )));
    }
    if !context_dir.is_dir() {
        return Err(ContextError::ContextMissing(context.to_owned()));
    }
    Ok((context_rel, context_dir))
}

/// The Dockerfile `dockerfile_path` names (the default one when it is empty), symlinks
/// resolved: a regular file inside the package `root`.
fn dockerfile(
    root: &Path,
    context_rel: &Path,
    dockerfile_path: &str,
) -> Result<PathBuf, ContextError> {
    let wanted = if dockerfile_path.trim_matches('/').is_empty() {
        DEFAULT_DOCKERFILE
    } else {
        dockerfile_path
    };
    let found = find_dockerfile(root, context_rel, wanted)?;
    let mut dockerfile = canonical_dockerfile(root, &found, wanted)?;
    // Older Quay configurations name the directory that holds the Dockerfile.
    if dockerfile.is_dir() {
        dockerfile = canonical_dockerfile(root, &dockerfile.join(DEFAULT_DOCKERFILE), wanted)?;
    }
    if !dockerfile.is_file() {
        return Err(ContextError::DockerfileMissing(wanted.to_owned()));
    }
    Ok(dockerfile)
}

/// Where the Dockerfile path `wanted` points, not yet resolved: from the package `root`
/// first, as Quay means it, then from the context; the first that exists wins.
fn find_dockerfile(root: &Path, context_rel: &Path, wanted: &str) -> Result<PathBuf, ContextError> {
    let from_root = normalize(wanted);
    let from_context = normalize(&format!(
        "{}/{}",
        context_rel.display(),
        wanted.trim_start_matches('/')
    ));
    if from_root.is_none() && from_context.is_none() {
        return Err(ContextError::Hostile(format!(
            "Dockerfile path {wanted:?} points outside the build package"
        )));
    }
    [from_root, from_context]
        .into_iter()
        .flatten()
        .map(|candidate| root.join(candidate))
        // symlink_metadata: a dangling or hostile symlink is "there" and gets judged later
        // instead of being skipped for the other candidate.
        .find(|full| full.symlink_metadata().is_ok())
        .ok_or_else(|| ContextError::DockerfileMissing(wanted.to_owned()))
}

/// Canonicalizes `path`, a candidate for the Dockerfile path `wanted`, which must stay
/// inside the package `root`.
fn canonical_dockerfile(root: &Path, path: &Path, wanted: &str) -> Result<PathBuf, ContextError> {
    let dockerfile = canonical(path, || ContextError::DockerfileMissing(wanted.to_owned()))?;
    if !dockerfile.starts_with(root) {
        return Err(ContextError::Hostile(format!(
            "Dockerfile path {wanted:?} resolves outside the build package (through a symlink)"
        )));
    }
    Ok(dockerfile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_and_bounds() {
        assert_eq!(normalize("/"), Some(PathBuf::new()));
        assert_eq!(normalize(""), Some(PathBuf::new()));
        assert_eq!(
            normalize("/sub/./x/../Dockerfile"),
            Some(PathBuf::from("sub/Dockerfile"))
        );
        assert_eq!(normalize("sub/../../x"), None);
        assert_eq!(normalize("../../etc/passwd"), None);
    }
}
