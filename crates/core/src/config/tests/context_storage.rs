//! BUILDMAN_CONTEXT_STORAGE: local or S3.

use super::{assert_cases, errors, load, warnings};
use crate::config::{ContextStorageConfig, S3StorageConfig};

#[test]
fn every_error_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "BUILDMAN_CONTEXT_STORAGE: {KIND: nfs}".into(),
            vec![r#"BUILDMAN_CONTEXT_STORAGE.KIND: expected "local" or "s3", got "nfs""#],
        ),
        (
            "BUILDMAN_CONTEXT_STORAGE: {BUCKET: b}".into(),
            vec!["BUILDMAN_CONTEXT_STORAGE: missing required key KIND (local or s3)"],
        ),
        (
            "BUILDMAN_CONTEXT_STORAGE: s3".into(),
            vec![r#"BUILDMAN_CONTEXT_STORAGE: expected a mapping, got "s3""#],
        ),
        (
            "BUILDMAN_CONTEXT_STORAGE: {KIND: s3, REGION: eu-west-1}".into(),
            vec!["BUILDMAN_CONTEXT_STORAGE: missing required key BUCKET"],
        ),
        (
            "BUILDMAN_CONTEXT_STORAGE: {KIND: s3, BUCKET: b, ENDPOINT_URL: 'minio:9000'}".into(),
            vec![
                r#"BUILDMAN_CONTEXT_STORAGE.ENDPOINT_URL: expected a URL starting with http:// or https://, got "minio:9000""#,
            ],
        ),
        (
            "BUILDMAN_CONTEXT_STORAGE: {KIND: s3, BUCKET: b, ACCESS_KEY: AKIAXYZZY}".into(),
            vec![
                "BUILDMAN_CONTEXT_STORAGE: set both ACCESS_KEY and SECRET_KEY, or neither to use the AWS SDK's credentials chain",
            ],
        ),
        (
            "BUILDMAN_CONTEXT_STORAGE: {KIND: s3, BUCKET: b, PREFIX: /ctx/, PATH_STYLE: maybe}"
                .into(),
            vec![
                r#"BUILDMAN_CONTEXT_STORAGE.PREFIX: an object key prefix does not start with '/', got "/ctx/""#,
                r#"BUILDMAN_CONTEXT_STORAGE.PATH_STYLE: expected a boolean, got "maybe""#,
            ],
        ),
    ];
    assert_cases(&cases, errors);
}

#[test]
fn every_warning_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "BUILDMAN_CONTEXT_STORAGE: {KIND: local, BUCKET: b}".into(),
            vec!["BUILDMAN_CONTEXT_STORAGE.BUCKET: unknown key, ignored"],
        ),
        (
            "BUILDMAN_CONTEXT_STORAGE: {KIND: s3, BUCKET: b, S3_BUCKET: c}".into(),
            vec!["BUILDMAN_CONTEXT_STORAGE.S3_BUCKET: unknown key, ignored"],
        ),
    ];
    assert_cases(&cases, warnings);
}

#[test]
fn local_by_default_and_s3_with_every_key() {
    assert_eq!(
        load("{}").config.context_storage,
        ContextStorageConfig::Local
    );
    assert_eq!(
        load("BUILDMAN_CONTEXT_STORAGE: {KIND: local}")
            .config
            .context_storage,
        ContextStorageConfig::Local
    );
    let yaml = "BUILDMAN_CONTEXT_STORAGE:\n  KIND: s3\n  BUCKET: contexts\n  REGION: eu-west-1\n  \
                ENDPOINT_URL: http://127.0.0.1:9000\n  ACCESS_KEY: AKIAXYZZY\n  SECRET_KEY: xyzzy-secret\n  \
                PREFIX: buildman/\n  PATH_STYLE: true\n";
    let config = load(yaml).config;
    assert_eq!(
        config.context_storage,
        ContextStorageConfig::S3(S3StorageConfig {
            bucket: "contexts".into(),
            region: Some("eu-west-1".into()),
            endpoint_url: Some("http://127.0.0.1:9000".into()),
            access_key: Some("AKIAXYZZY".into()),
            secret_key: Some("xyzzy-secret".into()),
            prefix: "buildman/".into(),
            path_style: true,
        })
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("XYZZY") && !debug.contains("xyzzy"),
        "{debug}"
    );
    assert!(debug.contains("secret_key: Some(<redacted>)"), "{debug}");
    assert!(debug.contains("bucket: \"contexts\""), "{debug}");
    let minimal = load("BUILDMAN_CONTEXT_STORAGE: {KIND: s3, BUCKET: b}").config;
    assert_eq!(
        minimal.context_storage,
        ContextStorageConfig::S3(S3StorageConfig {
            bucket: "b".into(),
            region: None,
            endpoint_url: None,
            access_key: None,
            secret_key: None,
            prefix: String::new(),
            path_style: false,
        })
    );
}
