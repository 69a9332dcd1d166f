//! Builds: what a user asks for, how it is checked, and what is stored.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::Phase;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The id of a build: a UUID, shown and stored in its hyphenated lower-case form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BuildId(pub Uuid);

impl BuildId {
    /// A fresh random build id.
    pub fn new() -> Self {
        BuildId(Uuid::new_v4())
    }
}

impl Default for BuildId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for BuildId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(BuildId)
    }
}

/// Where the worker gets the build context from. `Debug` never shows a git private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildSource {
    /// An http(s) URL of an archive or a lone Dockerfile.
    ArchiveUrl { url: String },
    /// A context uploaded to the manager; `file_id` names it in the manager's file store.
    Uploaded { file_id: String },
    /// A git repository at a given commit.
    Git {
        url: String,
        /// The commit sha, or a branch or tag name (resolved by the worker's clone).
        sha: String,
        /// An SSH private key for the clone; never shown in API answers or logs. The
        /// manager stores it sealed (encrypted), never as given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        private_key: Option<String>,
    },
}

impl fmt::Debug for BuildSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildSource::ArchiveUrl { url } => {
                f.debug_struct("ArchiveUrl").field("url", url).finish()
            }
            BuildSource::Uploaded { file_id } => f
                .debug_struct("Uploaded")
                .field("file_id", file_id)
                .finish(),
            BuildSource::Git {
                url,
                sha,
                private_key,
            } => f
                .debug_struct("Git")
                .field("url", url)
                .field("sha", sha)
                .field("private_key", &private_key.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// Longest git private key.
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// Longest git ref (branch, tag or sha).
pub const MAX_REF_LEN: usize = 255;

/// What a user asks for when submitting a build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBuild {
    pub namespace: String,
    pub repository: String,
    pub source: BuildSource,
    /// Tags to push; empty means `["latest"]`.
    pub tags: Vec<String>,
    /// The context directory inside the source, Quay's `context` (default "/").
    pub context: String,
    /// The Dockerfile's path, Quay's `dockerfile_path` (default "/Dockerfile").
    pub dockerfile_path: String,
    pub display_name: String,
    pub manual_user: Option<String>,
    pub pull_robot: Option<String>,
}

/// Most tags one build may push: the tags travel to the worker in one protocol message.
pub const MAX_TAGS: usize = 100;
/// Longest tag, as registries accept them.
pub const MAX_TAG_LEN: usize = 128;
/// Longest source URL (archive or git).
pub const MAX_URL_LEN: usize = 2048;
/// Longest context or Dockerfile path inside the source.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest display name, pull robot or user name.
pub const MAX_LABEL_LEN: usize = 255;

/// Why a build request was refused; the text names the field, the problem and the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBuild(pub String);

impl NewBuild {
    /// Checks what a user asked for and normalises it: names and tags as a registry accepts
    /// them (at most [`MAX_TAGS`] tags of [`MAX_TAG_LEN`] characters), an http(s) archive
    /// URL, context and Dockerfile paths that stay inside the source. An empty `context`
    /// means `/`, an empty `dockerfile_path` means `Dockerfile` in the context (Quay's
    /// defaults); relative paths are made absolute.
    pub fn validate(mut self) -> Result<NewBuild, InvalidBuild> {
        let invalid = |m: String| Err(InvalidBuild(m));
        for (what, name) in [
            ("namespace", &self.namespace),
            ("repository", &self.repository),
        ] {
            if !valid_name(name) {
                return invalid(format!(
                    "invalid {what} {name:?}: use lower-case letters, digits, '.', '_' and '-' (at most 255)"
                ));
            }
        }
        self.source.validate()?;
        validate_tags(&self.tags)?;
        let context = if self.context.is_empty() {
            "/"
        } else {
            &self.context
        };
        self.context = context_path("context", context)?;
        self.dockerfile_path = if self.dockerfile_path.is_empty() {
            format!("{}/Dockerfile", self.context.trim_end_matches('/'))
        } else {
            context_path("dockerfile_path", &self.dockerfile_path)?
        };
        for (what, value) in [
            ("display_name", Some(&self.display_name)),
            ("manual_user", self.manual_user.as_ref()),
            ("pull_robot", self.pull_robot.as_ref()),
        ] {
            let Some(v) = value else { continue };
            if v.len() > MAX_LABEL_LEN {
                return invalid(format!(
                    "{what} is {} bytes long; the limit is {MAX_LABEL_LEN}",
                    v.len()
                ));
            }
            if v.chars().any(char::is_control) {
                return invalid(format!("{what} holds a control character"));
            }
        }
        Ok(self)
    }

    /// The build as first stored: `waiting`, created and updated `now`.
    pub fn into_build(self, id: BuildId, now: DateTime<Utc>) -> Build {
        Build {
            id,
            namespace: self.namespace,
            repository: self.repository,
            phase: Phase::Waiting,
            source: self.source,
            tags: self.tags,
            context: self.context,
            dockerfile_path: self.dockerfile_path,
            display_name: self.display_name,
            manual_user: self.manual_user,
            pull_robot: self.pull_robot,
            created_at: now,
            updated_at: now,
            error: None,
            result_location: None,
            attempts: 0,
            executor: None,
            scheduled_at: None,
            finished_at: None,
        }
    }
}

/// A build as stored: what was asked, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub id: BuildId,
    pub namespace: String,
    pub repository: String,
    pub phase: Phase,
    pub source: BuildSource,
    pub tags: Vec<String>,
    pub context: String,
    pub dockerfile_path: String,
    pub display_name: String,
    pub manual_user: Option<String>,
    pub pull_robot: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the phase last changed.
    pub updated_at: DateTime<Utc>,
    /// Why the build failed, when it did.
    pub error: Option<String>,
    /// Where the result went when it was not pushed to a registry (an OCI layout path).
    pub result_location: Option<String>,
    /// How many times a manager claimed the build to run it: the number of its current (or
    /// last) attempt, 0 while it never ran.
    #[serde(default)]
    pub attempts: u32,
    /// The executor that started the current (or last) attempt's worker.
    #[serde(default)]
    pub executor: Option<String>,
    /// When a worker was first started for the build (the end of its queue wait).
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When the build reached its final phase (cleared when an internal error is retried).
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl Build {
    /// `namespace/repository`, as the worker is told in its BuildPack.
    pub fn full_repository(&self) -> String {
        format!("{}/{}", self.namespace, self.repository)
    }

    /// The tags to push: the requested ones, or `latest`.
    pub fn effective_tags(&self) -> Vec<String> {
        effective_tags(&self.tags)
    }
}

/// The tags a build with the requested `tags` pushes: those, or `latest` when there are none.
pub fn effective_tags(tags: &[String]) -> Vec<String> {
    if tags.is_empty() {
        vec!["latest".to_string()]
    } else {
        tags.to_vec()
    }
}

impl BuildSource {
    /// Checks the source's URLs: http(s) archives, bounded lengths.
    fn validate(&self) -> Result<(), InvalidBuild> {
        let (field, url) = match self {
            BuildSource::ArchiveUrl { url } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(InvalidBuild(
                        "archive_url must be an http:// or https:// URL".into(),
                    ));
                }
                ("archive_url", url)
            }
            BuildSource::Uploaded { file_id } => ("file_id", file_id),
            BuildSource::Git {
                url,
                sha,
                private_key,
            } => {
                validate_git(url, sha, private_key.as_deref())?;
                ("git_url", url)
            }
        };
        if url.len() > MAX_URL_LEN {
            return Err(InvalidBuild(format!(
                "{field} is {} bytes long; the limit is {MAX_URL_LEN}",
                url.len()
            )));
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(InvalidBuild(format!(
                "{field} holds a space or control character"
            )));
        }
        Ok(())
    }
}

/// A git source: a remote URL (no local paths or `file://`: the clone runs on the worker's
/// machine), a ref git cannot read as an option, a key that looks like one.
fn validate_git(url: &str, reference: &str, key: Option<&str>) -> Result<(), InvalidBuild> {
    let invalid = |m: &str| Err(InvalidBuild(m.to_string()));
    let lower = url.to_ascii_lowercase();
    let scheme_ok = ["https://", "http://", "git://", "ssh://", "git+ssh://"]
        .iter()
        .any(|s| lower.starts_with(s));
    if !scheme_ok && !is_scp_like(url) {
        return invalid(
            "git_url must be an https://, http://, git://, ssh:// or user@host:path URL",
        );
    }
    if url.starts_with('-') || url.contains("::") {
        return invalid("git_url is not a git repository URL");
    }
    let bad_ref = reference.is_empty()
        || reference.len() > MAX_REF_LEN
        || reference.starts_with('-')
        || reference.contains("..")
        || reference
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad_ref {
        return invalid(&format!(
            "git_ref must be a branch, tag or commit sha (at most {MAX_REF_LEN} characters, no spaces, no leading '-')"
        ));
    }
    if let Some(key) = key {
        if key.len() > MAX_KEY_LEN {
            return invalid(&format!("git_deploy_key is over {MAX_KEY_LEN} bytes"));
        }
        if !key.trim_start().starts_with("-----BEGIN ") {
            return invalid("git_deploy_key must be a private key in PEM or OpenSSH form");
        }
        if !(lower.starts_with("ssh://") || lower.starts_with("git+ssh://") || is_scp_like(url)) {
            return invalid(
                "git_deploy_key is used over ssh only: give an ssh:// or user@host:path git_url",
            );
        }
    }
    Ok(())
}

/// `user@host:path`, git's scp-like ssh syntax (no `://`, a `:` before any `/`).
pub fn is_scp_like(url: &str) -> bool {
    if url.contains("://") {
        return false;
    }
    match url.split_once(':') {
        Some((host, path)) => {
            !host.is_empty() && !host.contains('/') && host.contains('@') && !path.is_empty()
        }
        None => false,
    }
}

/// Tags: at most [`MAX_TAGS`], each a valid tag of at most [`MAX_TAG_LEN`] characters.
fn validate_tags(tags: &[String]) -> Result<(), InvalidBuild> {
    if tags.len() > MAX_TAGS {
        return Err(InvalidBuild(format!(
            "{} tags given; a build pushes at most {MAX_TAGS} tags",
            tags.len()
        )));
    }
    if let Some(long) = tags.iter().find(|t| t.len() > MAX_TAG_LEN) {
        return Err(InvalidBuild(format!(
            "a tag is {} characters long; the limit is {MAX_TAG_LEN}",
            long.len()
        )));
    }
    match tags.iter().find(|t| !valid_tag(t)) {
        Some(bad) => Err(InvalidBuild(format!(
            "invalid tag {bad:?}: use letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ))),
        None => Ok(()),
    }
}

/// A path inside the build context: absolute, without `..`, of bounded length.
fn context_path(field: &str, value: &str) -> Result<String, InvalidBuild> {
    if value.len() > MAX_PATH_LEN {
        return Err(InvalidBuild(format!(
            "{field} is {} bytes long; the limit is {MAX_PATH_LEN}",
            value.len()
        )));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(InvalidBuild(format!(
            "{field} must stay inside the build context (no `..`)"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidBuild(format!("{field} holds a control character")));
    }
    Ok(if value.starts_with('/') {
        value.to_string()
    } else {
        format!("/{value}")
    })
}

/// Checks a namespace or repository name the way a registry would accept it: lower-case
/// letters, digits and `._-`, starting with a letter or digit, at most 255 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Checks a tag name as a registry would: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tags: Vec<String>) -> NewBuild {
        NewBuild {
            namespace: "ns".into(),
            repository: "repo".into(),
            source: BuildSource::ArchiveUrl {
                url: "https://example.com/c.tar".into(),
            },
            tags,
            context: String::new(),
            dockerfile_path: String::new(),
            display_name: "x".into(),
            manual_user: None,
            pull_robot: None,
        }
    }

    #[test]
    fn validation_applies_quays_defaults() {
        let b = request(vec![]).validate().unwrap();
        assert_eq!(
            (b.context.as_str(), b.dockerfile_path.as_str()),
            ("/", "/Dockerfile")
        );
        let mut r = request(vec!["v1".into()]);
        r.context = "sub".into();
        let b = r.validate().unwrap();
        assert_eq!(
            (b.context.as_str(), b.dockerfile_path.as_str()),
            ("/sub", "/sub/Dockerfile")
        );
        let mut r = request(vec![]);
        r.dockerfile_path = "../../etc/passwd".into();
        assert!(
            r.validate()
                .unwrap_err()
                .0
                .contains("must stay inside the build context")
        );
    }

    #[test]
    fn tags_are_bounded_and_the_limit_is_named() {
        let many = request((0..100_000).map(|i| format!("t{i}")).collect());
        let e = many.validate().unwrap_err().0;
        assert!(
            e.contains("100000 tags given") && e.contains("at most 100"),
            "{e}"
        );
        let long = request(vec!["a".repeat(10 * 1024)]);
        let e = long.validate().unwrap_err().0;
        assert!(
            e.contains("10240 characters") && e.contains("limit is 128"),
            "{e}"
        );
        assert!(
            request((0..100).map(|i| format!("t{i}")).collect())
                .validate()
                .is_ok()
        );
        let e = request(vec!["bad tag".into()]).validate().unwrap_err().0;
        assert!(e.starts_with("invalid tag \"bad tag\""), "{e}");
    }

    #[test]
    fn source_urls_are_checked() {
        let mut r = request(vec![]);
        r.source = BuildSource::ArchiveUrl {
            url: "file:///etc/passwd".into(),
        };
        assert!(r.validate().unwrap_err().0.contains("http:// or https://"));
        let mut r = request(vec![]);
        r.source = BuildSource::ArchiveUrl {
            url: format!("https://h/{}", "a".repeat(5000)),
        };
        assert!(r.validate().unwrap_err().0.contains("limit is 2048"));
    }

    #[test]
    fn git_sources_are_checked() {
        let git = |url: &str, sha: &str, key: Option<&str>| {
            let mut r = request(vec![]);
            r.source = BuildSource::Git {
                url: url.into(),
                sha: sha.into(),
                private_key: key.map(String::from),
            };
            r.validate().map(|_| ()).map_err(|e| e.0)
        };
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n";
        assert_eq!(git("https://h/r.git", "main", None), Ok(()));
        assert_eq!(git("git://127.0.0.1:9418/r", "v1.2", None), Ok(()));
        assert_eq!(git("git@h:o/r.git", "0123abc", Some(key)), Ok(()));
        assert_eq!(
            git("ssh://git@h:2222/o/r.git", "refs/heads/x", Some(key)),
            Ok(())
        );
        for url in ["file:///etc", "/srv/repo", "ext::sh -c x", "h:r"] {
            assert!(
                git(url, "main", None).unwrap_err().starts_with("git_url"),
                "{url}"
            );
        }
        for reference in ["", "-x", "a b", "a..b", "x~1"] {
            assert!(
                git("https://h/r", reference, None)
                    .unwrap_err()
                    .starts_with("git_ref")
            );
        }
        assert!(
            git("https://h/r", "main", Some(key))
                .unwrap_err()
                .contains("over ssh only")
        );
        assert!(
            git("git@h:r", "main", Some("hunter2"))
                .unwrap_err()
                .contains("PEM")
        );
        let source = BuildSource::Git {
            url: "u".into(),
            sha: "s".into(),
            private_key: Some("SECRET".into()),
        };
        assert!(!format!("{source:?}").contains("SECRET"));
    }

    #[test]
    fn names_and_tags() {
        assert!(valid_name("demo"));
        assert!(valid_name("my.repo-1_x"));
        assert!(!valid_name("Demo"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(""));
        assert!(valid_tag("latest"));
        assert!(valid_tag("v1.2.3-rc_1"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag("a/b"));
    }
}
