//! What clients send: the create-build body, the file-drop request and the query parameters.

use buildman_core::{BuildSource, InvalidBuild, NewBuild};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The body of `POST .../build/` with Quay's field names. Exactly one of `archive_url` and
/// `file_id` names the context; everything else is optional and the manager fills in Quay's
/// defaults. A field the server does not know is refused rather than silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBuild {
    /// An http(s) URL of an archive or a lone Dockerfile the worker downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_url: Option<String>,
    /// The id of a context uploaded through the file drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
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
        let source = match (self.archive_url, self.file_id) {
            (Some(url), None) => BuildSource::ArchiveUrl { url },
            (None, Some(file_id)) => BuildSource::Uploaded { file_id },
            _ => {
                return Err(InvalidBuild(
                    "give exactly one of archive_url and file_id".into(),
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

/// The query of a build's log: `?start=N`, the index of the first entry wanted (default 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Index of the first entry to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
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
            assert_eq!(err.0, "give exactly one of archive_url and file_id");
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
    fn list_limits_are_bounded() {
        let q = |limit| ListQuery { limit, since: None }.limit();
        assert_eq!(q(None), ListQuery::DEFAULT_LIMIT);
        assert_eq!((q(Some(0)), q(Some(7)), q(Some(1000))), (1, 7, 100));
    }
}
