//! buildman's own top-level keys (`BUILDMAN_*` apart from Quay's BUILDMAN_HOSTNAME): listen
//! addresses, TLS, database, token keys, API tokens, queue bound, drain, retention, registry
//! and context storage.
//! Quay ignores them, so one `config.yaml` can serve both.

use std::path::PathBuf;

use serde_yaml_ng::Value;

use super::Config;
use super::diagnostics::{Report, Section, check_unique, index, join, to_list, to_path, to_string};

/// Certificate and private key files of a TLS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// CERT: PEM certificate chain.
    pub cert: PathBuf,
    /// KEY: PEM private key.
    pub key: PathBuf,
}

/// The private key build tokens are signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKeyConfig {
    /// KID: key id written into the token header.
    pub kid: String,
    /// PRIVATE_KEY_PATH: PEM private key file.
    pub private_key_path: PathBuf,
}

/// A further public key accepted when verifying build tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKeyConfig {
    /// KID: key id tokens signed with it carry.
    pub kid: String,
    /// PUBLIC_KEY_PATH: PEM public key file.
    pub public_key_path: PathBuf,
}

/// Reads buildman's keys into `config` (after Quay's, so errors keep the file's order), then
/// checks the API tokens' length and that no key id is used twice.
pub(super) fn read_buildman_keys(s: &mut Section, config: &mut Config) {
    let r = s.r;
    config.data_dir = s.path("BUILDMAN_DATA_DIR");
    config.sealing_key_file = s.path("BUILDMAN_SEALING_KEY_FILE");
    config.http_listen = s.parsed(
        "BUILDMAN_HTTP_LISTEN",
        "an address like 127.0.0.1:8080",
        |a| a.parse().ok(),
    );
    config.grpc_listen = s.parsed(
        "BUILDMAN_GRPC_LISTEN",
        "an address like 127.0.0.1:50051",
        |a| a.parse().ok(),
    );
    config.public_url = s.parsed(
        "BUILDMAN_PUBLIC_URL",
        "a URL starting with http:// or https://",
        |u| (u.starts_with("http://") || u.starts_with("https://")).then(|| u.to_owned()),
    );
    config.grpc_tls = s.section("BUILDMAN_GRPC_TLS").and_then(|mut t| {
        let (cert, key) = (t.required("CERT", to_path), t.required("KEY", to_path));
        t.finish();
        Some(TlsConfig {
            cert: cert?,
            key: key?,
        })
    });
    config.database_url = parse_database_url(s);
    config.signing_key = s.section("BUILDMAN_JWT_SIGNING_KEY").and_then(|mut k| {
        let kid = k.required("KID", to_string);
        let private_key_path = k.required("PRIVATE_KEY_PATH", to_path);
        k.finish();
        Some(SigningKeyConfig {
            kid: kid?,
            private_key_path: private_key_path?,
        })
    });
    config.trusted_keys = (s.raw("BUILDMAN_JWT_TRUSTED_KEYS"))
        .map(|v| parse_trusted_keys(r, &s.child("BUILDMAN_JWT_TRUSTED_KEYS"), v))
        .unwrap_or_default();
    config.api_tokens = s.strings("BUILDMAN_API_TOKENS").unwrap_or_default();
    config.max_queued_builds_per_namespace =
        s.u32_at_least("BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE", 1);
    if let Some(n) = s.u32("BUILDMAN_MAX_SILENT_RETRIES") {
        config.max_silent_retries = n;
    }
    if let Some(every) = s.u32_at_least("BUILDMAN_ORPHAN_REAP_INTERVAL", 1) {
        config.orphan_reap_interval = std::time::Duration::from_secs(every.into());
    }
    if let Some(ttl) = s.u32_at_least("BUILDMAN_HEARTBEAT_TTL", 4) {
        config.heartbeat_ttl = std::time::Duration::from_secs(ttl.into());
    }
    config.metrics_listen = s.parsed(
        "BUILDMAN_METRICS_LISTEN",
        "an address like 0.0.0.0:8686",
        |a| a.parse().ok(),
    );
    if let Some(seconds) = s.u32("BUILDMAN_DRAIN_SECONDS") {
        config.drain_period = std::time::Duration::from_secs(seconds.into());
    }
    if let Some(seconds) = s.u32("BUILDMAN_CONTEXT_RETENTION") {
        config.context_retention = std::time::Duration::from_secs(seconds.into());
    }
    config.build_retention = s
        .u32_at_least("BUILDMAN_BUILD_RETENTION", 1)
        .map(|seconds| std::time::Duration::from_secs(seconds.into()));
    config.registry = s.string("BUILDMAN_REGISTRY").filter(|h| !h.is_empty());
    config.registry_push_token = s
        .string("BUILDMAN_REGISTRY_PUSH_TOKEN")
        .filter(|t| !t.is_empty());
    config.registry_pull_token = s
        .string("BUILDMAN_REGISTRY_PULL_TOKEN")
        .filter(|t| !t.is_empty());
    config.context_storage = super::context_storage::parse_context_storage(s);
    config.limits = super::limits::parse_limits(s);
    check_api_tokens(r, &config.api_tokens);
    check_key_ids(r, config.signing_key.as_ref(), &config.trusted_keys);
}

fn parse_database_url(s: &mut Section) -> Option<String> {
    s.string("BUILDMAN_DATABASE_URL").filter(|url| {
        let ok = ["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        if !ok {
            // The URL may hold a password: never echo it.
            s.r.error(
                &s.child("BUILDMAN_DATABASE_URL"),
                "expected a URL starting with sqlite:, postgres:// or postgresql://",
            );
        }
        ok
    })
}

fn parse_trusted_keys(r: &Report, path: &str, value: &Value) -> Vec<TrustedKeyConfig> {
    let items = to_list(r, path, value).unwrap_or_default();
    (items.iter().enumerate())
        .filter_map(|(i, item)| {
            let mut k = Section::of(r, index(path, i), item)?;
            let kid = k.required("KID", to_string);
            let public_key_path = k.required("PUBLIC_KEY_PATH", to_path);
            k.finish();
            Some(TrustedKeyConfig {
                kid: kid?,
                public_key_path: public_key_path?,
            })
        })
        .collect()
}

fn check_api_tokens(r: &Report, tokens: &[String]) {
    for (i, token) in tokens.iter().enumerate() {
        let length = token.chars().count();
        if length < 16 {
            r.error(
                &index("BUILDMAN_API_TOKENS", i),
                format!("a token must be at least 16 characters long, got {length}"),
            );
        }
    }
}

/// A key id names one key: the signing key's and every trusted key's must differ.
fn check_key_ids(r: &Report, signing: Option<&SigningKeyConfig>, trusted: &[TrustedKeyConfig]) {
    let signing = signing.into_iter().map(|k| {
        (
            "BUILDMAN_JWT_SIGNING_KEY.KID".to_owned(),
            "BUILDMAN_JWT_SIGNING_KEY".to_owned(),
            k.kid.as_str(),
        )
    });
    let trusted = trusted.iter().enumerate().map(|(i, k)| {
        let label = index("BUILDMAN_JWT_TRUSTED_KEYS", i);
        (join(&label, "KID"), label, k.kid.as_str())
    });
    check_unique(r, "key id", signing.chain(trusted));
}
