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

    let context_rel = normalize(context).ok_or_else(|| {
        ContextError::Hostile(format!(
            "build context {context:?} points outside the build package"
        ))
    })?;
    let context_dir = canonical(&root.join(&context_rel), || {
        ContextError::ContextMissing(context.to_owned())
    })?;
    if !context_dir.starts_with(&root) {
        return Err(ContextError::Hostile(format!(
            "build context {context:?} resolves outside the build package (through a symlink)"
        )));
    }
    if !context_dir.is_dir() {
        return Err(ContextError::ContextMissing(context.to_owned()));
    }

    let wanted = if dockerfile_path.trim_matches('/').is_empty() {
        DEFAULT_DOCKERFILE
    } else {
        dockerfile_path
    };
    let hostile = || {
        ContextError::Hostile(format!(
            "Dockerfile path {wanted:?} points outside the build package"
        ))
    };
    // From the package root first, as Quay means it; then from the context.
    let from_root = normalize(wanted);
    let from_context = normalize(&format!(
        "{}/{}",
        context_rel.display(),
        wanted.trim_start_matches('/')
    ));
    if from_root.is_none() && from_context.is_none() {
        return Err(hostile());
    }
    let mut found = None;
    for candidate in [from_root, from_context].into_iter().flatten() {
        let full = root.join(&candidate);
        // symlink_metadata: a dangling or hostile symlink is "there" and gets judged below
        // instead of being skipped for the other candidate.
        if full.symlink_metadata().is_ok() {
            found = Some(full);
            break;
        }
    }
    let Some(found) = found else {
        return Err(ContextError::DockerfileMissing(wanted.to_owned()));
    };
    let mut dockerfile = canonical(&found, || {
        ContextError::DockerfileMissing(wanted.to_owned())
    })?;
    if !dockerfile.starts_with(&root) {
        return Err(ContextError::Hostile(format!(
            "Dockerfile path {wanted:?} resolves outside the build package (through a symlink)"
        )));
    }
    // Older Quay configurations name the directory that holds the Dockerfile.
    if dockerfile.is_dir() {
        dockerfile = canonical(&dockerfile.join(DEFAULT_DOCKERFILE), || {
            ContextError::DockerfileMissing(wanted.to_owned())
        })?;
        if !dockerfile.starts_with(&root) {
            return Err(ContextError::Hostile(format!(
                "Dockerfile path {wanted:?} resolves outside the build package (through a symlink)"
            )));
        }
    }
    if !dockerfile.is_file() {
        return Err(ContextError::DockerfileMissing(wanted.to_owned()));
    }
    Ok(Prepared {
        context_dir,
        dockerfile,
    })
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
