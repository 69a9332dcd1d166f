//! What clients send: the create-build body, the file-drop request and the query parameters.

use buildman_core::{BuildSource, InvalidBuild, NewBuild};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The body of `POST .../build/` with Quay's field names. Exactly one of `archive_url`,
/// `file_id` and `git_url` names the context; everything else is optional and the manager
/// fills in Quay's defaults. A field the server does not know is refused rather than
/// silently ignored. `Debug` never shows `git_deploy_key`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBuild {
    /// An http(s) URL of an archive or a lone Dockerfile the worker downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_url: Option<String>,
    /// The id of a context uploaded through the file drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    /// A git repository to build from: `https://`, `http://`, `git://`, `ssh://` or
    /// `user@host:path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    /// With `git_url`: the branch, tag or commit sha to build (default: the remote's HEAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// With an ssh `git_url`: the private deploy key for the clone (PEM or OpenSSH). Kept
    /// sealed by the manager and handed only to the build's worker; no answer shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_deploy_key: Option<String>,
    /// Tags to push; absent or empty means `["latest"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_tags: Option<Vec<String>>,
    /// The context directory inside the source (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The Dockerfile's path inside the source (default `Dockerfile` in the context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_path: Option<String>,
    /// Quay's older name for `context`, used when `context` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdirectory: Option<String>,
    /// The robot account whose credentials pull the base images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_robot: Option<String>,
}

impl CreateBuild {
    /// A request to build a context the worker downloads from `url`.
    pub fn archive_url(url: impl Into<String>) -> Self {
        CreateBuild {
            archive_url: Some(url.into()),
            ..CreateBuild::default()
        }
    }

    /// A request to build `reference` (a branch, tag or commit; `None`: the remote's HEAD)
    /// of the git repository at `url`, cloned with `deploy_key` when given.
    pub fn git(
        url: impl Into<String>,
        reference: Option<String>,
        deploy_key: Option<String>,
    ) -> Self {
        CreateBuild {
            git_url: Some(url.into()),
            git_ref: reference,
            git_deploy_key: deploy_key,
            ..CreateBuild::default()
        }
    }

    /// A request to build a context uploaded through the file drop as `file_id`.
    pub fn uploaded(file_id: impl Into<String>) -> Self {
        CreateBuild {
            file_id: Some(file_id.into()),
            ..CreateBuild::default()
        }
    }

    /// The request as the manager takes it, for `namespace/repository` (from the path); the
    /// manager checks and normalises the rest. Refuses a request naming no context or two.
    pub fn into_new_build(
        self,
        namespace: String,
        repository: String,
    ) -> Result<NewBuild, InvalidBuild> {
        if self.git_url.is_none() && (self.git_ref.is_some() || self.git_deploy_key.is_some()) {
            return Err(InvalidBuild(
                "git_ref and git_deploy_key go with git_url".into(),
            ));
        }
        let source = match (self.archive_url, self.file_id, self.git_url) {
            (Some(url), None, None) => BuildSource::ArchiveUrl { url },
            (None, Some(file_id), None) => BuildSource::Uploaded { file_id },
            (None, None, Some(url)) => BuildSource::Git {
                url,
                sha: self.git_ref.unwrap_or_else(|| "HEAD".into()),
                private_key: self.git_deploy_key.filter(|k| !k.trim().is_empty()),
            },
            _ => {
                return Err(InvalidBuild(
                    "give exactly one of archive_url, file_id and git_url".into(),
                ));
            }
        };
        Ok(NewBuild {
            namespace,
            repository,
            source,
            tags: self.docker_tags.unwrap_or_default(),
            context: self.context.or(self.subdirectory).unwrap_or_default(),
            dockerfile_path: self.dockerfile_path.unwrap_or_default(),
            display_name: String::new(),
            manual_user: None,
            pull_robot: self.pull_robot,
        })
    }
}

impl std::fmt::Debug for CreateBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateBuild")
            .field("archive_url", &self.archive_url)
            .field("file_id", &self.file_id)
            .field("git_url", &self.git_url)
            .field("git_ref", &self.git_ref)
            .field(
                "git_deploy_key",
                &self.git_deploy_key.as_ref().map(|_| "<redacted>"),
            )
            .field("docker_tags", &self.docker_tags)
            .field("context", &self.context)
            .field("dockerfile_path", &self.dockerfile_path)
            .field("subdirectory", &self.subdirectory)
            .field("pull_robot", &self.pull_robot)
            .finish()
    }
}

/// The body of `POST /api/v1/filedrop/`, as Quay's clients send it. The server reads nothing
/// from it: every upload is stored as an opaque archive or Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewFileDrop {
    /// The upload's media type, Quay's `mimeType`.
    #[serde(rename = "mimeType")]
    pub mime_type: String,
}

impl Default for NewFileDrop {
    fn default() -> Self {
        NewFileDrop {
            mime_type: "application/octet-stream".into(),
        }
    }
}

/// The query of a repository's build list: `?limit=N&since=<unix seconds>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most builds to answer, newest first: 1 to 100 (a number outside is brought within),
    /// 5 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only builds queued after this time, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

impl ListQuery {
    /// Builds answered when the query names no limit (Quay's default).
    pub const DEFAULT_LIMIT: u32 = 5;
    /// Most builds one list answers, whatever the query asks.
    pub const MAX_LIMIT: u32 = 100;

    /// The number of builds to answer: the asked limit within 1..=[`Self::MAX_LIMIT`], or
    /// [`Self::DEFAULT_LIMIT`].
    pub fn limit(&self) -> u32 {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT)
    }

    /// `since` as a time; `None` when absent or out of range.
    pub fn since(&self) -> Option<DateTime<Utc>> {
        self.since.and_then(|s| DateTime::from_timestamp(s, 0))
    }
}

/// The query of a build's log: `?start=N`, the index of the first entry wanted (default 0);
/// with `follow=1` the answer is a stream of [`crate::LogEvent`]s instead of one page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Index of the first entry to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Follow the log as a Server-Sent Events stream (`1` or `true`).
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        serialize_with = "flag::serialize",
        deserialize_with = "flag::deserialize"
    )]
    pub follow: bool,
}

/// A query flag: `1` on the wire; `1`, `true`, `0`, `false` or empty read.
mod flag {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Writes `1`.
    pub fn serialize<S: Serializer>(set: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *set { "1" } else { "0" })
    }

    /// Reads `1`/`true` as set, `0`/`false`/empty as not.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match String::deserialize(d)?.as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" | "" => Ok(false),
            other => Err(D::Error::custom(format!(
                "expected 1 or 0 (true or false), got {other:?}"
            ))),
        }
    }
}

/// The query of the list of builds of every repository (`GET /api/v1/builds`): each
/// parameter narrows it; `phase` is a view phase (`building`, `expired`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BuildsQuery {
    /// Only builds of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only builds of repositories of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Only builds in this phase, as views show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Most builds to answer, newest first; see [`BuildsQuery::limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl BuildsQuery {
    /// Builds answered when the query names no limit.
    pub const DEFAULT_LIMIT: u32 = 50;

    /// The number of builds to answer: the asked limit within 1..=[`ListQuery::MAX_LIMIT`],
    /// or [`Self::DEFAULT_LIMIT`].
    pub fn limit(&self) -> u32 {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, ListQuery::MAX_LIMIT)
    }

    /// `phase` read; an empty value means none. The error names the phases there are.
    pub fn phase(&self) -> Result<Option<crate::ViewPhase>, String> {
        let Some(name) = self.phase.as_deref().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        name.parse().map(Some).map_err(|_| {
            let names: Vec<&str> = buildman_core::Phase::ALL
                .iter()
                .map(|p| p.as_str())
                .chain(["expired"])
                .collect();
            format!("unknown phase {name:?}: use one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_exactly_one_context() {
        let both = CreateBuild {
            file_id: Some("f".into()),
            ..CreateBuild::archive_url("https://h/a.tgz")
        };
        for request in [CreateBuild::default(), both] {
            let err = request.into_new_build("ns".into(), "r".into()).unwrap_err();
            assert_eq!(
                err.0,
                "give exactly one of archive_url, file_id and git_url"
            );
        }
        let new = CreateBuild {
            subdirectory: Some("sub".into()),
            docker_tags: Some(vec!["v1".into()]),
            ..CreateBuild::uploaded("f1")
        }
        .into_new_build("ns".into(), "r".into())
        .unwrap();
        assert_eq!(
            new.source,
            BuildSource::Uploaded {
                file_id: "f1".into()
            }
        );
        assert_eq!(
            (new.context.as_str(), new.tags),
            ("sub", vec!["v1".to_string()])
        );
    }

    #[test]
    fn a_git_request_names_a_ref_and_keeps_its_key_out_of_debug() {
        let request = CreateBuild::git("git@h:r.git", None, Some("KEY-MATERIAL".into()));
        assert!(!format!("{request:?}").contains("KEY-MATERIAL"));
        let new = request.into_new_build("ns".into(), "r".into()).unwrap();
        assert_eq!(
            new.source,
            BuildSource::Git {
                url: "git@h:r.git".into(),
                sha: "HEAD".into(),
                private_key: Some("KEY-MATERIAL".into())
            }
        );
        let stray = CreateBuild {
            git_ref: Some("main".into()),
            ..CreateBuild::uploaded("f")
        };
        let err = stray.into_new_build("ns".into(), "r".into()).unwrap_err();
        assert_eq!(err.0, "git_ref and git_deploy_key go with git_url");
    }

    #[test]
    fn requests_serialise_only_what_is_set_and_refuse_unknown_fields() {
        let body = serde_json::to_value(CreateBuild::archive_url("https://x/y.tgz")).unwrap();
        assert_eq!(body, serde_json::json!({"archive_url": "https://x/y.tgz"}));
        let err =
            serde_json::from_str::<CreateBuild>(r#"{"file_id": "f", "surprise": 1}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `surprise`"),
            "{err}"
        );
        let drop = serde_json::to_value(NewFileDrop::default()).unwrap();
        assert_eq!(
            drop,
            serde_json::json!({"mimeType": "application/octet-stream"})
        );
    }

    #[test]
    fn follow_is_a_flag_and_phases_are_named() {
        let q: LogsQuery = serde_json::from_value(serde_json::json!({"follow": "1"})).unwrap();
        assert!(q.follow);
        let q: LogsQuery = serde_json::from_value(serde_json::json!({"start": 3})).unwrap();
        assert!(!q.follow);
        assert!(serde_json::from_value::<LogsQuery>(serde_json::json!({"follow": "x"})).is_err());
        let query = |phase: &str| BuildsQuery {
            phase: Some(phase.into()),
            ..BuildsQuery::default()
        };
        assert_eq!(
            query("expired").phase(),
            Ok(Some(crate::ViewPhase::Expired))
        );
        assert_eq!(query("").phase(), Ok(None));
        let err = query("runing").phase().unwrap_err();
        assert!(err.contains("use one of waiting, build-scheduled"), "{err}");
        assert_eq!(BuildsQuery::default().limit(), 50);
    }

    #[test]
    fn list_limits_are_bounded() {
        let q = |limit| ListQuery { limit, since: None }.limit();
        assert_eq!(q(None), ListQuery::DEFAULT_LIMIT);
        assert_eq!((q(Some(0)), q(Some(7)), q(Some(1000))), (1, 7, 100));
    }
}
