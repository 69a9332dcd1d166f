//! The BuildPack of a Quay build, derived from typed rows as Quay's manager derives it.

use buildman_quay::buildpack::{
    Archive, BuildPackError, PackageSource, archive, build_pack, worker_paths,
};
use buildman_quay::rows::{AccessTokenRow, BuildRow, JobConfig, QueueBody, TriggerRow};
use buildman_quay::secret::{DecryptError, FieldCipher};
use serde::Deserialize;

const KEY: &str = "87296256005252593845274308253417654528681210420276347227273429945531344425233";
const TOKEN_NAME: &str = "TOKENNAME0123456789ABCDEFGHIJKLM";
const TOKEN_CODE: &str = "CODE0123456789ABCDEFGHIJKLMNOPQR";

#[derive(Deserialize)]
struct PathAnswers {
    working_directory: String,
    cases: Vec<PathCase>,
}

#[derive(Deserialize)]
struct PathCase {
    build_subdir: Option<String>,
    context: Option<String>,
    sent_context: String,
    sent_dockerfile_path: String,
}

#[test]
fn context_and_dockerfile_path_are_quays() {
    let answers: PathAnswers =
        serde_json::from_str(include_str!("data/dockerfile_paths_kat.json")).expect("kat");
    assert!(answers.cases.len() >= 20);
    for case in answers.cases {
        let config = JobConfig {
            build_subdir: case.build_subdir.clone(),
            context: case.context.clone(),
            ..JobConfig::default()
        };
        assert_eq!(
            worker_paths(&config, &answers.working_directory),
            (case.sent_context, case.sent_dockerfile_path),
            "build_subdir {:?}, context {:?}",
            case.build_subdir,
            case.context
        );
    }
}

fn cipher() -> FieldCipher {
    FieldCipher::from_config(KEY).expect("key")
}

fn token() -> AccessTokenRow {
    AccessTokenRow {
        id: 7,
        token_name: TOKEN_NAME.into(),
        token_code: cipher().encrypt(TOKEN_CODE).expect("short"),
    }
}

/// A build of `acme/web` with this job_config.
fn build(job_config: &str) -> BuildRow {
    BuildRow {
        id: 1,
        uuid: "5c1d1b4e-2f0e-4f43-9a57-1d2d0f7e9a10".into(),
        phase: "waiting".into(),
        job_config: JobConfig::parse(job_config).expect("job_config"),
        resource_key: None,
        display_name: "abcdef0".into(),
        queue_id: Some("3".into()),
        access_token_id: 7,
        namespace: "acme".into(),
        repository: "web".into(),
        trigger: None,
    }
}

fn trigger(key: Option<String>) -> Option<TriggerRow> {
    Some(TriggerRow {
        id: 2,
        uuid: "t-uuid".into(),
        service: "github".into(),
        secure_private_key: key,
    })
}

const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";

#[test]
fn an_uploaded_build_gets_its_url_token_tags_and_paths() {
    let mut b = build(
        r#"{"docker_tags": ["v1", "latest"], "registry": "ignored", "build_subdir": "/sub/Dockerfile",
            "context": "/sub", "trigger_metadata": {}, "is_manual": true, "manual_user": "ann",
            "archive_url": null}"#,
    );
    b.resource_key = Some("0b4a9e5c-8d1e-4a8e-9d64-3c2f1b0a9e77".into());
    assert_eq!(
        archive(&b),
        Some(Archive::Userfile(
            "0b4a9e5c-8d1e-4a8e-9d64-3c2f1b0a9e77".into()
        ))
    );
    let body = QueueBody::parse(r#"{"build_uuid": "x", "pull_credentials": null}"#).expect("body");
    let pack = build_pack(
        &b,
        &token(),
        &body,
        Some("http://q/userfiles/0b4a"),
        &cipher(),
        "quay.example",
    )
    .expect("pack");
    assert!(pack.source == PackageSource::Url("http://q/userfiles/0b4a".into()));
    assert_eq!(
        (pack.context.as_str(), pack.dockerfile_path.as_str()),
        ("/sub", "Dockerfile")
    );
    assert_eq!(pack.repository, "acme/web");
    assert_eq!(pack.registry, "quay.example");
    assert_eq!(pack.pull_token, format!("{TOKEN_NAME}{TOKEN_CODE}"));
    assert_eq!(pack.pull_token.len(), 64);
    assert_eq!(pack.push_token, pack.pull_token);
    assert_eq!(pack.tag_names, ["v1", "latest"]);
    assert_eq!(pack.base_image, None);
    let shown = format!("{pack:?}");
    assert!(!shown.contains(TOKEN_CODE), "{shown}");
}

#[test]
fn archive_url_wins_over_an_upload_and_tags_default_to_latest() {
    let mut b = build(r#"{"archive_url": "https://example.com/ctx.tar.gz"}"#);
    b.resource_key = Some("0b4a".into());
    assert_eq!(
        archive(&b),
        Some(Archive::Url("https://example.com/ctx.tar.gz".into()))
    );
    let empty_url = build(r#"{"archive_url": ""}"#);
    assert_eq!(archive(&empty_url), None);
    let body = QueueBody::parse(
        r#"{"build_uuid": "x", "pull_credentials": {"username": "acme+bot", "password": "pw", "registry": "http://q/v1/"}}"#,
    )
    .expect("body");
    let pack = build_pack(
        &b,
        &token(),
        &body,
        Some("https://example.com/ctx.tar.gz"),
        &cipher(),
        "q",
    )
    .expect("pack");
    assert_eq!(pack.tag_names, ["latest"]);
    assert_eq!(pack.base_image, Some(("acme+bot".into(), "pw".into())));
    assert_eq!(
        (pack.context.as_str(), pack.dockerfile_path.as_str()),
        ("", "")
    );
    let no_tags = build(r#"{"docker_tags": []}"#);
    assert!(buildman_quay::buildpack::tag_names(&no_tags.job_config).is_empty());
}

#[test]
fn a_trigger_with_a_deploy_key_builds_from_git_even_with_an_archive() {
    let body = QueueBody::parse(r#"{"build_uuid": "x"}"#).expect("body");
    let key = cipher().encrypt(PEM).expect("short");
    for (metadata, url, sha) in [
        (
            r#"{"git_url": "git@github.com:acme/web.git", "commit": "abc1234", "commit_sha": "old"}"#,
            "git@github.com:acme/web.git",
            "abc1234",
        ),
        (
            r#"{"git_url": "ssh://x/y.git", "commit_sha": "def5678"}"#,
            "ssh://x/y.git",
            "def5678",
        ),
        (r#"{"commit": "", "commit_sha": "def5678"}"#, "", "def5678"),
        ("{}", "", ""),
    ] {
        let mut b = build(&format!(
            r#"{{"trigger_metadata": {metadata}, "context": "/", "build_subdir": "/Dockerfile"}}"#
        ));
        b.trigger = trigger(Some(key.clone()));
        let pack = build_pack(
            &b,
            &token(),
            &body,
            Some("https://example.com/a.tgz"),
            &cipher(),
            "q",
        )
        .expect("pack");
        assert!(
            pack.source
                == PackageSource::Git {
                    url: url.into(),
                    sha: sha.into(),
                    private_key: PEM.into()
                },
            "{metadata}"
        );
    }
}

#[test]
fn no_source_and_bad_secrets_are_clear_errors() {
    let body = QueueBody::parse(r#"{"build_uuid": "x"}"#).expect("body");
    let mut b = build("{}");
    b.trigger = trigger(None);
    assert_eq!(
        build_pack(&b, &token(), &body, None, &cipher(), "q"),
        Err(BuildPackError::NoSource)
    );
    assert_eq!(
        build_pack(&b, &token(), &body, Some(""), &cipher(), "q"),
        Err(BuildPackError::NoSource)
    );

    let other = FieldCipher::from_config("another key").expect("key");
    let err = build_pack(&b, &token(), &body, Some("http://a"), &other, "q").unwrap_err();
    assert_eq!(
        err,
        BuildPackError::Decrypt {
            column: "accesstoken.token_code",
            source: DecryptError::WrongKey
        }
    );
    assert!(
        err.to_string().starts_with("accesstoken.token_code: "),
        "{err}"
    );

    b.trigger = trigger(Some("v0$$AAAA".into()));
    let err = build_pack(&b, &token(), &body, None, &cipher(), "q").unwrap_err();
    assert!(
        matches!(
            err,
            BuildPackError::Decrypt {
                column: "repositorybuildtrigger.secure_private_key",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unreadable_columns_are_named_without_their_values() {
    let err = QueueBody::parse(r#"{"pull_credentials": {"password": "hunter2"}}"#).unwrap_err();
    assert_eq!(err.column, "queueitem.body");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = JobConfig::parse("{not json").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("repositorybuild.job_config is not the JSON Quay writes"),
        "{err}"
    );
}
