//! What a registered worker is handed for a Quay build (the BuildPack; quay-integration.md
//! sections 6.2, 6.3 and 7), derived from Quay's rows as Quay's manager derives it.

use crate::rows::{AccessTokenRow, BuildRow, JobConfig, QueueBody};
use crate::secret::{DecryptError, FieldCipher};

pub use buildman_core::buildpack::{BuildPack, PackageSource};

/// Where a build's archive lives, before any URL is made for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Archive {
    /// `job_config.archive_url`, given as is.
    Url(String),
    /// An uploaded file (`resource_key`) in Quay's user-file storage: see
    /// [`crate::userfiles`].
    Userfile(String),
}

/// Why no BuildPack can be made for a build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildPackError {
    /// An encrypted column does not decrypt.
    #[error("{column}: {source}")]
    Decrypt {
        column: &'static str,
        #[source]
        source: DecryptError,
    },
    /// Neither an archive nor a trigger with a deploy key (Quay's manager fails such a
    /// build too, through an exception).
    #[error(
        "the build has no archive, no uploaded file and no trigger deploy key: nothing to build from"
    )]
    NoSource,
}

/// The working directory a relative `context` resolves against, as in Quay's image
/// (**unverified** for a given deployment; section 6.3).
pub const QUAY_WORKING_DIRECTORY: &str = "/quay-registry";

/// The build's archive, if any: `job_config.archive_url` when non-empty, else its uploaded
/// file.
pub fn archive(build: &BuildRow) -> Option<Archive> {
    match build.job_config.archive_url.as_deref() {
        Some(url) if !url.is_empty() => Some(Archive::Url(url.to_owned())),
        _ => build
            .resource_key
            .as_ref()
            .filter(|k| !k.is_empty())
            .map(|k| Archive::Userfile(k.clone())),
    }
}

/// The BuildPack of a build. `archive_url` is the URL made for [`archive`] (the archive URL
/// itself, or the uploaded file's download URL); a trigger's deploy key wins over it.
pub fn build_pack(
    build: &BuildRow,
    token: &AccessTokenRow,
    body: &QueueBody,
    archive_url: Option<&str>,
    cipher: &FieldCipher,
    server_hostname: &str,
) -> Result<BuildPack, BuildPackError> {
    let source = match (git_source(build, cipher)?, archive_url) {
        (Some(git), _) => git,
        (None, Some(url)) if !url.is_empty() => PackageSource::Url(url.to_owned()),
        (None, _) => return Err(BuildPackError::NoSource),
    };
    let code = cipher
        .decrypt(&token.token_code)
        .map_err(|source| BuildPackError::Decrypt {
            column: "accesstoken.token_code",
            source,
        })?;
    let password = format!("{}{code}", token.token_name);
    let (context, dockerfile_path) = worker_paths(&build.job_config, QUAY_WORKING_DIRECTORY);
    Ok(BuildPack {
        source,
        context,
        dockerfile_path,
        repository: format!("{}/{}", build.namespace, build.repository),
        registry: server_hostname.to_owned(),
        pull_token: password.clone(),
        push_token: password,
        tag_names: tag_names(&build.job_config),
        base_image: body
            .pull_credentials
            .as_ref()
            .map(|c| (c.username.clone(), c.password.clone())),
    })
}

/// The tags to push: `docker_tags`, `["latest"]` when the key is missing.
pub fn tag_names(config: &JobConfig) -> Vec<String> {
    config
        .docker_tags
        .clone()
        .unwrap_or_else(|| vec!["latest".to_owned()])
}

/// The trigger's repository, when the build has a trigger with a deploy key.
fn git_source(
    build: &BuildRow,
    cipher: &FieldCipher,
) -> Result<Option<PackageSource>, BuildPackError> {
    let Some(stored) = build
        .trigger
        .as_ref()
        .and_then(|t| t.secure_private_key.as_deref())
    else {
        return Ok(None);
    };
    let private_key = cipher
        .decrypt(stored)
        .map_err(|source| BuildPackError::Decrypt {
            column: "repositorybuildtrigger.secure_private_key",
            source,
        })?;
    let metadata = build
        .job_config
        .trigger_metadata
        .clone()
        .unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(Some(PackageSource::Git {
        url: metadata.git_url.unwrap_or_default(),
        sha: non_empty(metadata.commit)
            .or(non_empty(metadata.commit_sha))
            .unwrap_or_default(),
        private_key,
    }))
}

/// The context and Dockerfile path sent to the worker, as Quay's
/// `extract_dockerfile_args` makes them from `context` and `build_subdir` (section 6.3):
/// the Dockerfile relative to the context, unless that path holds `..` anywhere (even
/// inside a name), when the Dockerfile's own directory becomes the context. A relative
/// context resolves against `working_directory`, as Python's `os.path.relpath` does.
pub fn worker_paths(config: &JobConfig, working_directory: &str) -> (String, String) {
    let dockerfile = config.build_subdir.clone().unwrap_or_default();
    let context = config.context.clone().unwrap_or_default();
    if dockerfile.is_empty() || context.is_empty() {
        return (context, dockerfile);
    }
    // Quay's slash_join("", d): one leading and one trailing slash removed.
    let trimmed = dockerfile.strip_prefix('/').unwrap_or(&dockerfile);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let relative = relpath(&format!("/{trimmed}"), &context, working_directory);
    if relative.contains("..") {
        let (head, tail) = split(&dockerfile);
        return (head.to_owned(), tail.to_owned());
    }
    (context, relative)
}

/// Python's `posixpath.relpath(path, start)` with `os.getcwd()` = `cwd`.
fn relpath(path: &str, start: &str, cwd: &str) -> String {
    let start = absolute_parts(start, cwd);
    let path = absolute_parts(path, cwd);
    let common = start.iter().zip(&path).take_while(|(a, b)| a == b).count();
    let mut parts = vec![".."; start.len() - common];
    parts.extend(path[common..].iter().copied());
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// The non-empty components of Python's `abspath(p)`: `p` joined to `cwd` when relative,
/// then normalised (`.` dropped, `..` removes the one before, never above the root).
fn absolute_parts<'a>(p: &'a str, cwd: &'a str) -> Vec<&'a str> {
    let joined = if p.starts_with('/') {
        vec![p]
    } else {
        vec![cwd, p]
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.into_iter().flat_map(|s| s.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    parts
}

/// Python's `posixpath.split`: the part after the last `/`, and the part before it with
/// its trailing slashes removed unless it is nothing but slashes.
fn split(p: &str) -> (&str, &str) {
    let at = p.rfind('/').map_or(0, |i| i + 1);
    let (head, tail) = p.split_at(at);
    if head.is_empty() || head.bytes().all(|b| b == b'/') {
        (head, tail)
    } else {
        (head.trim_end_matches('/'), tail)
    }
}
