//! The build view: what every build resource answers, and the list of them.

use std::fmt;
use std::str::FromStr;

use buildman_core::{Build, BuildId, BuildSource, Phase};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A build's phase as its view shows it: the stored [`Phase`], or Quay's `expired` for an
/// internal error with no retry left (the build is over, though its stored phase is not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewPhase {
    /// The stored phase.
    Phase(Phase),
    /// An internal error that will not be retried.
    Expired,
}

impl ViewPhase {
    /// The name on the wire (`waiting`, `build-scheduled`, ..., `expired`).
    pub fn as_str(self) -> &'static str {
        match self {
            ViewPhase::Phase(p) => p.as_str(),
            ViewPhase::Expired => "expired",
        }
    }
}

impl From<Phase> for ViewPhase {
    fn from(phase: Phase) -> Self {
        ViewPhase::Phase(phase)
    }
}

impl fmt::Display for ViewPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ViewPhase {
    type Err = buildman_core::phase::UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "expired" => Ok(ViewPhase::Expired),
            _ => s.parse().map(ViewPhase::Phase),
        }
    }
}

impl Serialize for ViewPhase {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A string, one of the phases' names or `expired`.
impl utoipa::PartialSchema for ViewPhase {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let names = (Phase::ALL.iter().map(|p| p.as_str())).chain([ViewPhase::Expired.as_str()]);
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(names))
            .description(Some("Where the build stands."))
            .into()
    }
}

impl ToSchema for ViewPhase {}

impl<'de> Deserialize<'de> for ViewPhase {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The repository a build belongs to, Quay's `{namespace, name}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RepositoryRef {
    /// The namespace (organisation or user).
    #[serde(default)]
    pub namespace: String,
    /// The repository's name.
    #[serde(default)]
    pub name: String,
}

/// What a git-sourced build was made from: the repository and the commit. The clone's
/// private key is never part of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerMetadata {
    /// The git repository's URL.
    #[serde(default)]
    pub git_url: String,
    /// The commit built.
    #[serde(default)]
    pub commit: String,
}

/// Quay's build view, as every build resource answers it, plus buildman's
/// `result_location`, `attempt`, `executor`, `scheduled_at` and `finished_at`.
///
/// Absent values are `null` on the wire. Fields Quay has and buildman does not use keep
/// Quay's constant values: `status` is `{}`, `is_writer` is `true`, `trigger` is `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildView {
    /// The build's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: BuildId,
    /// Where the build stands.
    pub phase: ViewPhase,
    /// When the build was queued: an RFC 2822 date on the wire, to the second.
    #[serde(default, with = "rfc2822")]
    #[schema(value_type = Option<String>, example = "Mon, 30 Nov 2026 08:49:11 +0000")]
    pub started: Option<DateTime<Utc>>,
    /// A name for people.
    #[serde(default)]
    pub display_name: String,
    /// Quay's worker-reported status object; always empty here.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub status: Map<String, Value>,
    /// Quay's older name for `context`; the same value.
    #[serde(default)]
    pub subdirectory: String,
    /// The Dockerfile's path inside the source.
    #[serde(default)]
    pub dockerfile_path: String,
    /// The context directory inside the source.
    #[serde(default)]
    pub context: String,
    /// The tags the build pushes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The user who asked for the build, when one did.
    #[serde(default)]
    pub manual_user: Option<String>,
    /// Whether the caller may change the build; every API token may.
    #[serde(default)]
    pub is_writer: bool,
    /// Quay's build trigger; buildman has none.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub trigger: Option<Value>,
    /// The git repository and commit of a git-sourced build.
    #[serde(default)]
    pub trigger_metadata: Option<TriggerMetadata>,
    /// The file id of an uploaded context.
    #[serde(default)]
    pub resource_key: Option<String>,
    /// The robot account that pulls the base images.
    #[serde(default)]
    pub pull_robot: Option<String>,
    /// The repository the build belongs to.
    #[serde(default)]
    pub repository: RepositoryRef,
    /// Why the build failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// The URL of a downloaded context.
    #[serde(default)]
    pub archive_url: Option<String>,
    /// Where the image went once complete: `<registry>/<namespace>/<repository>` (its tags
    /// are `tags`), or `oci:<path>` of the OCI layout written when no registry is set.
    #[serde(default)]
    pub result_location: Option<String>,
    /// The number of the current (or last) attempt to run the build; 0 before the first.
    #[serde(default)]
    pub attempt: u32,
    /// The executor that started the current (or last) attempt's worker.
    #[serde(default)]
    pub executor: Option<String>,
    /// When a worker was first started (the queue wait ends): RFC 3339.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When the build reached its final phase: RFC 3339.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl BuildView {
    /// The view of `build`; `expired` is the manager's verdict that an internal error has
    /// no retry left (shown as the phase `expired`).
    pub fn new(build: &Build, expired: bool) -> Self {
        let (archive_url, resource_key, trigger_metadata) = match &build.source {
            BuildSource::ArchiveUrl { url } => (Some(url.clone()), None, None),
            BuildSource::Uploaded { file_id } => (None, Some(file_id.clone()), None),
            // The private key stays out: a view is shown to anyone holding an API token.
            BuildSource::Git { url, sha, .. } => (
                None,
                None,
                Some(TriggerMetadata {
                    git_url: url.clone(),
                    commit: sha.clone(),
                }),
            ),
        };
        BuildView {
            id: build.id,
            phase: if expired {
                ViewPhase::Expired
            } else {
                build.phase.into()
            },
            started: Some(build.created_at),
            display_name: build.display_name.clone(),
            status: Map::new(),
            subdirectory: build.context.clone(),
            dockerfile_path: build.dockerfile_path.clone(),
            context: build.context.clone(),
            tags: build.effective_tags(),
            manual_user: build.manual_user.clone(),
            is_writer: true,
            trigger: None,
            trigger_metadata,
            resource_key,
            pull_robot: build.pull_robot.clone(),
            repository: RepositoryRef {
                namespace: build.namespace.clone(),
                name: build.repository.clone(),
            },
            error: build.error.clone(),
            archive_url,
            result_location: build.result_location.clone(),
            attempt: build.attempts,
            executor: build.executor.clone(),
            scheduled_at: build.scheduled_at,
            finished_at: build.finished_at,
        }
    }
}

/// `started` as Quay writes it: an RFC 2822 date, or `null`.
mod rfc2822 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Writes the date in RFC 2822 (`Tue, 1 Jul 2003 10:52:37 +0000`).
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc2822()),
            None => s.serialize_none(),
        }
    }

    /// Reads an RFC 2822 date in any offset.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                DateTime::parse_from_rfc2822(text.trim())
                    .map(|t| t.to_utc())
                    .map_err(|e| D::Error::custom(format!("started {text:?}: {e}")))
            })
            .transpose()
    }
}

/// The answer of a repository's build list: views, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildList {
    /// The builds.
    #[serde(default)]
    pub builds: Vec<BuildView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildman_core::NewBuild;
    use serde_json::json;

    fn build(source: BuildSource) -> Build {
        let created = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        NewBuild {
            namespace: "acme".into(),
            repository: "web".into(),
            source,
            tags: vec![],
            context: "/".into(),
            dockerfile_path: "/Dockerfile".into(),
            display_name: "abc123".into(),
            manual_user: None,
            pull_robot: Some("acme+puller".into()),
        }
        .into_build(BuildId::new(), created)
    }

    /// Every field Quay's view has, with Quay's value types; nothing more but buildman's
    /// own.
    #[test]
    fn a_view_has_quays_fields_and_types() {
        let b = build(BuildSource::Uploaded {
            file_id: "f1".into(),
        });
        let wire = serde_json::to_value(BuildView::new(&b, false)).unwrap();
        assert_eq!(
            wire,
            json!({
                "id": b.id.to_string(),
                "phase": "waiting",
                "started": "Tue, 14 Nov 2023 22:13:20 +0000",
                "display_name": "abc123",
                "status": {},
                "subdirectory": "/",
                "dockerfile_path": "/Dockerfile",
                "context": "/",
                "tags": ["latest"],
                "manual_user": null,
                "is_writer": true,
                "trigger": null,
                "trigger_metadata": null,
                "resource_key": "f1",
                "pull_robot": "acme+puller",
                "repository": {"namespace": "acme", "name": "web"},
                "error": null,
                "archive_url": null,
                "result_location": null,
                "attempt": 0,
                "executor": null,
                "scheduled_at": null,
                "finished_at": null,
            })
        );
    }

    #[test]
    fn a_git_build_shows_its_commit_and_never_its_key() {
        let mut b = build(BuildSource::Git {
            url: "git@example.com:acme/web.git".into(),
            sha: "0123abc".into(),
            private_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----".into()),
        });
        b.phase = Phase::InternalError;
        let view = BuildView::new(&b, true);
        let text = serde_json::to_string(&view).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert_eq!(serde_json::from_str::<BuildView>(&text).unwrap(), view);
        let wire: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(wire["phase"], "expired");
        assert_eq!(
            wire["trigger_metadata"],
            json!({"git_url": "git@example.com:acme/web.git", "commit": "0123abc"})
        );
        assert_eq!(
            (&wire["archive_url"], &wire["resource_key"]),
            (&Value::Null, &Value::Null)
        );
    }

    #[test]
    fn views_round_trip_and_read_leniently() {
        let mut b = build(BuildSource::ArchiveUrl {
            url: "https://h/ctx.tgz".into(),
        });
        b.error = Some("pull failed".into());
        let list = BuildList {
            builds: vec![BuildView::new(&b, false)],
        };
        let wire = serde_json::to_string(&list).unwrap();
        assert_eq!(serde_json::from_str::<BuildList>(&wire).unwrap(), list);
        // Another server may leave fields out and add its own.
        let view: BuildView = serde_json::from_value(json!({
            "id": b.id.to_string(), "phase": "complete", "started": "Tue, 14 Nov 2023 23:13:20 +0100",
            "extra": 1
        }))
        .unwrap();
        assert_eq!(view.phase, ViewPhase::Phase(Phase::Complete));
        assert_eq!(view.started, Some(b.created_at));
        assert_eq!(view.repository, RepositoryRef::default());
        let err =
            serde_json::from_value::<BuildView>(json!({"id": b.id.to_string(), "phase": "x"}))
                .unwrap_err();
        assert!(
            err.to_string().contains("unknown build phase \"x\""),
            "{err}"
        );
    }
}
