//! Builds and their phases.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
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

/// Where a build stands, with the names Quay stores and shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Queued; no worker yet.
    Waiting,
    /// A worker was started and has not yet reported.
    BuildScheduled,
    /// The worker fetches and unpacks the build context.
    Unpacking,
    /// The worker pulls base images.
    Pulling,
    /// The worker runs the Dockerfile.
    Building,
    /// The worker pushes the tags; a build cannot be cancelled from here on.
    Pushing,
    /// Final: every tag was pushed.
    Complete,
    /// Final: the build itself failed (bad Dockerfile, push refused, ...).
    Error,
    /// The build manager or the worker failed; final once no retry is left.
    #[serde(rename = "internalerror")]
    InternalError,
    /// Final: a user cancelled the build.
    Cancelled,
}

impl Phase {
    /// Every phase, in the order a successful build walks them (final ones last).
    pub const ALL: [Phase; 10] = [
        Phase::Waiting,
        Phase::BuildScheduled,
        Phase::Unpacking,
        Phase::Pulling,
        Phase::Building,
        Phase::Pushing,
        Phase::Complete,
        Phase::Error,
        Phase::InternalError,
        Phase::Cancelled,
    ];

    /// The stored and displayed name (`build-scheduled`, `internalerror`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::BuildScheduled => "build-scheduled",
            Phase::Unpacking => "unpacking",
            Phase::Pulling => "pulling",
            Phase::Building => "building",
            Phase::Pushing => "pushing",
            Phase::Complete => "complete",
            Phase::Error => "error",
            Phase::InternalError => "internalerror",
            Phase::Cancelled => "cancelled",
        }
    }

    /// True for the phases that end a job: complete, error, internalerror, cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Complete | Phase::Error | Phase::InternalError | Phase::Cancelled
        )
    }

    /// True when a worker may no longer change the phase: complete, error, cancelled.
    /// An internal error is not among them, because the build may be retried.
    pub fn is_terminal_for_worker(self) -> bool {
        matches!(self, Phase::Complete | Phase::Error | Phase::Cancelled)
    }

    /// True when a user may cancel a build in this phase (all but pushing and the final ones).
    pub fn can_cancel(self) -> bool {
        !(self == Phase::Pushing || self.is_final())
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not the name of a phase.
#[derive(Debug, thiserror::Error)]
#[error("unknown build phase {0:?}")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_string()))
    }
}

/// Where the worker gets the build context from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildSource {
    /// An http(s) URL of an archive or a lone Dockerfile.
    ArchiveUrl { url: String },
    /// A context uploaded to the manager; `file_id` names it in the manager's file store.
    Uploaded { file_id: String },
    /// A git repository at a given commit.
    Git {
        url: String,
        sha: String,
        /// An SSH private key for the clone; never shown in API answers or logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        private_key: Option<String>,
    },
}

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

impl NewBuild {
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
}

impl Build {
    /// `namespace/repository`, as the worker is told in its BuildPack.
    pub fn full_repository(&self) -> String {
        format!("{}/{}", self.namespace, self.repository)
    }

    /// The tags to push: the requested ones, or `latest`.
    pub fn effective_tags(&self) -> Vec<String> {
        if self.tags.is_empty() {
            vec!["latest".to_string()]
        } else {
            self.tags.clone()
        }
    }
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

    #[test]
    fn phase_names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert!("expired".parse::<Phase>().is_err());
    }

    #[test]
    fn cancel_is_refused_while_pushing_and_when_final() {
        let cancellable: Vec<_> = Phase::ALL.into_iter().filter(|p| p.can_cancel()).collect();
        assert_eq!(
            cancellable,
            [
                Phase::Waiting,
                Phase::BuildScheduled,
                Phase::Unpacking,
                Phase::Pulling,
                Phase::Building
            ]
        );
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
