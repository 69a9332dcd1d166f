//! Quay's rows as the build manager reads them (quay-integration.md sections 3, 4 and 6.1),
//! typed; the JSON columns parsed. The store backend fills these from its queries.

use serde::{Deserialize, Serialize};

/// The queue a build's item lives in is `dockerfilebuild/<namespace>/<repository>/`.
pub const BUILD_QUEUE_PREFIX: &str = "dockerfilebuild/";

/// The name of a repository's build queue (Quay's `DOCKERFILE_BUILD_QUEUE_NAME` default).
pub fn build_queue_name(namespace: &str, repository: &str) -> String {
    format!("{BUILD_QUEUE_PREFIX}{namespace}/{repository}/")
}

/// A build as the manager's build query returns it: `repositorybuild` with its
/// repository, namespace and trigger (section 6.1).
#[derive(Clone, Debug, PartialEq)]
pub struct BuildRow {
    pub id: i32,
    pub uuid: String,
    pub phase: String,
    pub job_config: JobConfig,
    /// The uploaded archive's file id, if the build has one.
    pub resource_key: Option<String>,
    pub display_name: String,
    /// `queueitem.id` as a decimal string.
    pub queue_id: Option<String>,
    pub access_token_id: i32,
    /// The namespace's username.
    pub namespace: String,
    /// The repository's name.
    pub repository: String,
    pub trigger: Option<TriggerRow>,
}

/// The trigger of a build, as far as the manager uses it.
#[derive(Clone, PartialEq)]
pub struct TriggerRow {
    pub id: i32,
    pub uuid: String,
    /// `buildtriggerservice.name`: `github`, `gitlab`, `bitbucket`, `custom-git`.
    pub service: String,
    /// The encrypted SSH deploy key (`v0$$...`), if the trigger has one.
    pub secure_private_key: Option<String>,
}

impl std::fmt::Debug for TriggerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerRow")
            .field("id", &self.id)
            .field("uuid", &self.uuid)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A build's access token (`accesstoken`): the registry password is `token_name` followed
/// by the decrypted `token_code` (section 7).
#[derive(Clone, PartialEq)]
pub struct AccessTokenRow {
    pub id: i32,
    /// 32 characters, plaintext.
    pub token_name: String,
    /// The encrypted code (`v0$$...`); 32 characters in plaintext.
    pub token_code: String,
}

impl std::fmt::Debug for AccessTokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokenRow")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// `repositorybuild.job_config` (section 4.2). Every key may be missing in older rows;
/// unknown keys are kept out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobConfig {
    /// Absent means `["latest"]`; present and empty stays empty (Quay's `.get` default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_tags: Option<Vec<String>>,
    /// `SERVER_HOSTNAME` at queue time; the manager ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The Dockerfile's path, despite its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_subdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_metadata: Option<TriggerMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_manual: Option<bool>,
    #[serde(default)]
    pub manual_user: Option<String>,
    #[serde(default)]
    pub archive_url: Option<String>,
}

/// What a trigger recorded of the commit it built (`job_config.trigger_metadata`); the
/// manager reads the git URL and the commit. The rest is kept as it was.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// What older rows hold instead of `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The build queue item's body (section 4.4).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueBody {
    pub build_uuid: String,
    #[serde(default)]
    pub pull_credentials: Option<PullCredentials>,
}

impl std::fmt::Debug for QueueBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBody")
            .field("build_uuid", &self.build_uuid)
            .finish_non_exhaustive()
    }
}

/// A pull robot's credentials for the base image, in plaintext in the queue body.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PullCredentials {
    /// `<namespace>+<robot>`.
    pub username: String,
    pub password: String,
    /// `<scheme>://<SERVER_HOSTNAME>/v1/`.
    pub registry: String,
}

/// A JSON column that does not parse as Quay writes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{column} is not the JSON Quay writes: {reason}")]
pub struct BadColumn {
    pub column: &'static str,
    /// serde's message: positions and expectations, never the column's values.
    pub reason: String,
}

impl JobConfig {
    /// Parses `repositorybuild.job_config`.
    pub fn parse(text: &str) -> Result<Self, BadColumn> {
        serde_json::from_str(text).map_err(|e| bad("repositorybuild.job_config", &e))
    }
}

impl QueueBody {
    /// Parses `queueitem.body`.
    pub fn parse(text: &str) -> Result<Self, BadColumn> {
        serde_json::from_str(text).map_err(|e| bad("queueitem.body", &e))
    }
}

/// serde_json's error without the text it quotes: a body holds a robot's password.
fn bad(column: &'static str, e: &serde_json::Error) -> BadColumn {
    let reason = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "a key is missing or has the wrong type",
        serde_json::error::Category::Eof => "cut short",
    };
    BadColumn {
        column,
        reason: format!("{reason} (line {}, column {})", e.line(), e.column()),
    }
}
