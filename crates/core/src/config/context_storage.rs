//! BUILDMAN_CONTEXT_STORAGE: where uploaded build contexts are kept. `KIND: local` (the
//! default) keeps them in the data dir of the manager that received them; `KIND: s3` keeps
//! them in an S3-compatible bucket every manager reaches, so a build uploaded to one manager
//! can run from another.

use super::diagnostics::{Section, http_url, to_string};
use super::redact::debug_redacting;

/// Where uploaded build contexts are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ContextStorageConfig {
    /// `KIND: local`: `<data dir>/contexts`, this manager only.
    #[default]
    Local,
    /// `KIND: s3`: an S3-compatible bucket.
    S3(S3StorageConfig),
}

/// The keys of `KIND: s3`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3StorageConfig {
    /// BUCKET (required).
    pub bucket: String,
    /// REGION; `None`: the AWS SDK's (AWS_REGION, the profile, instance metadata).
    pub region: Option<String>,
    /// ENDPOINT_URL: an S3-compatible store (MinIO, Ceph) instead of AWS.
    pub endpoint_url: Option<String>,
    /// ACCESS_KEY (redacted in Debug); with SECRET_KEY, or neither: the SDK's default chain.
    pub access_key: Option<String>,
    /// SECRET_KEY (redacted in Debug).
    pub secret_key: Option<String>,
    /// PREFIX: prepended to every object key (default empty).
    pub prefix: String,
    /// PATH_STYLE: `endpoint/bucket/key` URLs instead of `bucket.endpoint/key` (default false).
    pub path_style: bool,
}

debug_redacting!(S3StorageConfig {
    bucket, region, endpoint_url, prefix, path_style,
} secret { access_key, secret_key });

pub(super) fn parse_context_storage(s: &mut Section) -> ContextStorageConfig {
    let Some(mut c) = s.section("BUILDMAN_CONTEXT_STORAGE") else {
        return ContextStorageConfig::Local;
    };
    if c.raw("KIND").is_none() {
        c.r.error(&c.path, "missing required key KIND (local or s3)");
    }
    let config = match c.one_of("KIND", &["local", "s3"]).as_deref() {
        Some("s3") => ContextStorageConfig::S3(parse_s3(&mut c)),
        _ => ContextStorageConfig::Local,
    };
    c.finish();
    config
}

fn parse_s3(c: &mut Section) -> S3StorageConfig {
    let bucket = c.required("BUCKET", to_string).unwrap_or_default();
    let region = c.string("REGION").filter(|r| !r.is_empty());
    let endpoint_url = c.get("ENDPOINT_URL", http_url);
    let access_key = c.string("ACCESS_KEY").filter(|k| !k.is_empty());
    let secret_key = c.string("SECRET_KEY").filter(|k| !k.is_empty());
    if access_key.is_some() != secret_key.is_some() {
        c.r.error(
            &c.path,
            "set both ACCESS_KEY and SECRET_KEY, or neither to use the AWS SDK's credentials chain",
        );
    }
    let prefix = c.string("PREFIX").unwrap_or_default();
    if prefix.starts_with('/') {
        c.r.error(
            &c.child("PREFIX"),
            format!("an object key prefix does not start with '/', got {prefix:?}"),
        );
    }
    S3StorageConfig {
        bucket,
        region,
        endpoint_url,
        access_key,
        secret_key,
        prefix,
        path_style: c.bool("PATH_STYLE").unwrap_or(false),
    }
}
