//! Build contexts: fetch the build package a BuildPack names (an archive behind a URL, or a
//! git commit), unpack it without letting it touch anything outside the job's directory,
//! and find the context directory and Dockerfile inside it with Quay's rules.
//!
//! Everything in a build package is untrusted: archives are walked entry by entry
//! ([`unpack`]) instead of being handed to an extractor, because a hostile archive is the
//! easiest way for a build to write outside its own directory.

mod fetch;
mod git;
mod paths;
mod tree;
mod unpack;

use std::path::{Path, PathBuf};

pub use unpack::unpack;

/// Limits on what a context may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of file content the unpacked context may hold (counted as written).
    pub max_bytes: u64,
    /// Most archive entries (files, directories, links) the context may have.
    pub max_entries: u64,
    /// Most bytes a download may have before it is abandoned.
    pub max_download: u64,
}

impl Default for Limits {
    /// 10 GiB unpacked, a million entries, 10 GiB downloaded: far above real build contexts,
    /// low enough that a bomb fails instead of filling the worker's disk.
    fn default() -> Self {
        const GIB: u64 = 1 << 30;
        Self {
            max_bytes: 10 * GIB,
            max_entries: 1_000_000,
            max_download: 10 * GIB,
        }
    }
}

/// Where the context comes from (mirrors the BuildPack oneof).
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// An archive (or a lone Dockerfile) to download over http or https.
    Url(String),
    /// A commit of a git repository.
    Git {
        /// The repository to clone (https, ssh, scp-like `user@host:path`, git or file URL).
        url: String,
        /// The commit to check out, as hex.
        sha: String,
        /// A PEM private key for ssh, for private repositories.
        private_key: Option<String>,
    },
}

/// Written by hand so that a private key never ends up in a log line.
impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
            Source::Git {
                url,
                sha,
                private_key,
            } => f
                .debug_struct("Git")
                .field("url", &redact_url(url))
                .field("sha", sha)
                .field("private_key", &private_key.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// A prepared context: the directory to build in and the Dockerfile inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The build context directory (absolute, symlinks resolved, inside `work_dir/src`).
    pub context_dir: PathBuf,
    /// The Dockerfile (absolute, symlinks resolved, inside `work_dir/src`).
    pub dockerfile: PathBuf,
}

/// Why a context could not be prepared; each message is one line for the build log.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The build package could not be downloaded.
    #[error("could not download the build package: {0}")]
    Fetch(String),
    /// The package tried to reach outside the build context.
    #[error("{0}")]
    Hostile(String),
    /// The package is larger than the limits allow.
    #[error("{0}")]
    TooLarge(String),
    /// The package is not an archive or Dockerfile that can be unpacked.
    #[error("{0}")]
    Format(String),
    /// Cloning or checking out the git repository failed.
    #[error("{0}")]
    Git(String),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// The configured context directory is not in the package.
    #[error("build context directory {0:?} not found in the build package")]
    ContextMissing(String),
    /// The Dockerfile is not in the package.
    #[error("Dockerfile {0:?} not found in the build package")]
    DockerfileMissing(String),
}

impl ContextError {
    /// An [`ContextError::Io`] saying what was being done.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ContextError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Fetches and unpacks `source` into `work_dir/src`, then resolves `context` and
/// `dockerfile_path` inside it with Quay's rules.
///
/// `work_dir` must exist; the caller owns it and removes it afterwards. Besides `src`, this
/// leaves nothing in it that matters (a downloaded package or a key file is removed).
pub async fn prepare(
    source: &Source,
    context: &str,
    dockerfile_path: &str,
    work_dir: &Path,
    limits: &Limits,
) -> Result<Prepared, ContextError> {
    let src = work_dir.join("src");
    match source {
        Source::Url(url) => {
            let package = work_dir.join("package");
            let result = fetch_and_unpack(url, &package, &src, limits).await;
            // The package can be gigabytes the build no longer needs; failure to remove it
            // only wastes disk the caller reclaims with work_dir.
            let _ = tokio::fs::remove_file(&package).await;
            result?;
        }
        Source::Git {
            url,
            sha,
            private_key,
        } => git::checkout(url, sha, private_key.as_deref(), work_dir, &src).await?,
    }
    let src_for_paths = src.clone();
    let context = context.to_owned();
    let dockerfile_path = dockerfile_path.to_owned();
    tokio::task::spawn_blocking(move || paths::resolve(&src_for_paths, &context, &dockerfile_path))
        .await
        .map_err(|e| ContextError::io("resolving the Dockerfile", std::io::Error::other(e)))?
}

/// Downloads `url` to `package` and unpacks it into `src` on a blocking thread.
async fn fetch_and_unpack(
    url: &str,
    package: &Path,
    src: &Path,
    limits: &Limits,
) -> Result<(), ContextError> {
    fetch::download(url, package, limits.max_download).await?;
    let package = package.to_owned();
    let src = src.to_owned();
    let limits = *limits;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&package)
            .map_err(|e| ContextError::io("opening the downloaded build package", e))?;
        unpack(std::io::BufReader::new(file), &src, &limits)
    })
    .await
    .map_err(|e| ContextError::io("unpacking the build package", std::io::Error::other(e)))?
}

/// `url` with any `user:password@` removed and the query dropped (presigned URLs carry
/// signatures there), for messages.
pub(crate) fn redact_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or("");
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_drops_credentials_and_query() {
        assert_eq!(
            redact_url("https://u:p@example.com/a/b?X-Amz-Signature=s"),
            "https://example.com/a/b"
        );
        assert_eq!(
            redact_url("git@github.com:org/repo.git"),
            "git@github.com:org/repo.git"
        );
        assert_eq!(redact_url("http://h"), "http://h");
    }

    #[test]
    fn debug_hides_the_private_key() {
        let s = Source::Git {
            url: "git@h:r".into(),
            sha: "abc1234".into(),
            private_key: Some("SECRET-KEY".into()),
        };
        assert!(!format!("{s:?}").contains("SECRET"));
    }
}
