//! buildman's own BUILDMAN_* keys.

use std::path::PathBuf;
use std::time::Duration;

use super::{assert_cases, errors, load, warnings};
use crate::config::{SigningKeyConfig, TlsConfig, TrustedKeyConfig};

#[test]
fn every_error_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "BUILDMAN_HTTP_LISTEN: nope".into(),
            vec![r#"BUILDMAN_HTTP_LISTEN: expected an address like 127.0.0.1:8080, got "nope""#],
        ),
        (
            "BUILDMAN_HTTP_LISTEN: 8080".into(),
            vec!["BUILDMAN_HTTP_LISTEN: expected an address like 127.0.0.1:8080, got 8080"],
        ),
        (
            "BUILDMAN_GRPC_LISTEN: 'localhost:50051'".into(),
            vec![r#"BUILDMAN_GRPC_LISTEN: expected an address like 127.0.0.1:50051, got "localhost:50051""#],
        ),
        (
            "BUILDMAN_METRICS_LISTEN: 8686".into(),
            vec!["BUILDMAN_METRICS_LISTEN: expected an address like 0.0.0.0:8686, got 8686"],
        ),
        (
            "BUILDMAN_BUILD_RETENTION: 0".into(),
            vec!["BUILDMAN_BUILD_RETENTION: must be at least 1, got 0"],
        ),
        (
            "BUILDMAN_DRAIN_SECONDS: -1".into(),
            vec!["BUILDMAN_DRAIN_SECONDS: must not be negative, got -1"],
        ),
        (
            "BUILDMAN_PUBLIC_URL: ftp://files.example.com".into(),
            vec![r#"BUILDMAN_PUBLIC_URL: expected a URL starting with http:// or https://, got "ftp://files.example.com""#],
        ),
        (
            "BUILDMAN_DATABASE_URL: 'mysql://root:hunter2@db/quay'".into(),
            vec!["BUILDMAN_DATABASE_URL: expected a URL starting with sqlite:, postgres:// or postgresql://"],
        ),
        (
            "BUILDMAN_GRPC_TLS: {CERT: /c.pem, KEYS: /k.pem}".into(),
            vec!["BUILDMAN_GRPC_TLS: missing required key KEY"],
        ),
        (
            "BUILDMAN_GRPC_TLS: /c.pem".into(),
            vec![r#"BUILDMAN_GRPC_TLS: expected a mapping, got "/c.pem""#],
        ),
        (
            "BUILDMAN_JWT_SIGNING_KEY: {KID: k1}".into(),
            vec!["BUILDMAN_JWT_SIGNING_KEY: missing required key PRIVATE_KEY_PATH"],
        ),
        (
            "BUILDMAN_JWT_TRUSTED_KEYS: [{KID: k2, PUBLIC_KEY_PATH: /a}, {PUBLIC_KEY_PATH: /b}, x]".into(),
            vec![
                "BUILDMAN_JWT_TRUSTED_KEYS[1]: missing required key KID",
                r#"BUILDMAN_JWT_TRUSTED_KEYS[2]: expected a mapping, got "x""#,
            ],
        ),
        (
            "BUILDMAN_JWT_SIGNING_KEY: {KID: k1, PRIVATE_KEY_PATH: /p}\n\
             BUILDMAN_JWT_TRUSTED_KEYS: [{KID: k2, PUBLIC_KEY_PATH: /a}, {KID: k1, PUBLIC_KEY_PATH: /b}, \
             {KID: k2, PUBLIC_KEY_PATH: /c}]"
                .into(),
            vec![
                r#"BUILDMAN_JWT_TRUSTED_KEYS[1].KID: duplicate key id "k1" (also used by BUILDMAN_JWT_SIGNING_KEY)"#,
                r#"BUILDMAN_JWT_TRUSTED_KEYS[2].KID: duplicate key id "k2" (also used by BUILDMAN_JWT_TRUSTED_KEYS[0])"#,
            ],
        ),
        (
            "BUILDMAN_API_TOKENS: [0123456789abcdef, short, [x]]".into(),
            vec![
                "BUILDMAN_API_TOKENS[2]: expected a string, got a list",
                "BUILDMAN_API_TOKENS[1]: a token must be at least 16 characters long, got 5",
            ],
        ),
        (
            "BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: 0".into(),
            vec!["BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: must be at least 1, got 0"],
        ),
        (
            "BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: 5000000000".into(),
            vec!["BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: must be at most 4294967295, got 5000000000"],
        ),
    ];
    assert_cases(&cases, errors);
}

#[test]
fn every_warning_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "BUILDMAN_GRPC_TLS: {CERT: /c, KEY: /k, CA: /ca}".into(),
            vec!["BUILDMAN_GRPC_TLS.CA: unknown key, ignored"],
        ),
        (
            "BUILDMAN_JWT_SIGNING_KEY: {KID: a, PRIVATE_KEY_PATH: /p, ALG: RS256}".into(),
            vec!["BUILDMAN_JWT_SIGNING_KEY.ALG: unknown key, ignored"],
        ),
        (
            "BUILDMAN_JWT_TRUSTED_KEYS: [{KID: a, PUBLIC_KEY_PATH: /p, X: 1}]".into(),
            vec!["BUILDMAN_JWT_TRUSTED_KEYS[0].X: unknown key, ignored"],
        ),
    ];
    assert_cases(&cases, warnings);
}

#[test]
fn buildman_keys_parse() {
    let yaml = "
BUILDMAN_DATA_DIR: /var/lib/buildman
BUILDMAN_HTTP_LISTEN: 127.0.0.1:8080
BUILDMAN_GRPC_LISTEN: '[::]:50051'
BUILDMAN_PUBLIC_URL: https://buildman.example.com/
BUILDMAN_GRPC_TLS: {CERT: /tls/cert.pem, KEY: /tls/key.pem}
BUILDMAN_DATABASE_URL: postgresql://buildman@db/buildman
BUILDMAN_JWT_SIGNING_KEY: {KID: k2, PRIVATE_KEY_PATH: /keys/k2.pem}
BUILDMAN_JWT_TRUSTED_KEYS:
- {KID: k1, PUBLIC_KEY_PATH: /keys/k1.pub}
BUILDMAN_API_TOKENS: [0123456789abcdef]
BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: 20
BUILDMAN_MAX_SILENT_RETRIES: 5
BUILDMAN_METRICS_LISTEN: 0.0.0.0:8686
BUILDMAN_DRAIN_SECONDS: 120
BUILDMAN_CONTEXT_RETENTION: 3600
BUILDMAN_BUILD_RETENTION: 2592000
BUILDMAN_REGISTRY: registry.example.com:5000
BUILDMAN_HOSTNAME: buildman.example.com:443
";
    let config = load(yaml).config;
    assert_eq!(config.data_dir, Some(PathBuf::from("/var/lib/buildman")));
    assert_eq!(config.http_listen, "127.0.0.1:8080".parse().ok());
    assert_eq!(config.grpc_listen, "[::]:50051".parse().ok());
    assert_eq!(
        config.public_url.as_deref(),
        Some("https://buildman.example.com/")
    );
    assert_eq!(
        config.grpc_tls,
        Some(TlsConfig {
            cert: "/tls/cert.pem".into(),
            key: "/tls/key.pem".into()
        })
    );
    assert_eq!(
        config.database_url.as_deref(),
        Some("postgresql://buildman@db/buildman")
    );
    assert_eq!(
        config.signing_key,
        Some(SigningKeyConfig {
            kid: "k2".into(),
            private_key_path: "/keys/k2.pem".into()
        })
    );
    assert_eq!(
        config.trusted_keys,
        [TrustedKeyConfig {
            kid: "k1".into(),
            public_key_path: "/keys/k1.pub".into()
        }]
    );
    assert_eq!(config.api_tokens, ["0123456789abcdef"]);
    assert_eq!(config.max_queued_builds_per_namespace, Some(20));
    assert_eq!(config.max_silent_retries, 5);
    assert_eq!(config.metrics_listen, "0.0.0.0:8686".parse().ok());
    assert_eq!(config.drain_period, Duration::from_secs(120));
    assert_eq!(config.context_retention, Duration::from_secs(3600));
    assert_eq!(config.build_retention, Some(Duration::from_secs(2_592_000)));
    let defaults = load("{}").config;
    assert_eq!(defaults.drain_period, Duration::from_secs(30));
    assert_eq!(defaults.context_retention, Duration::ZERO);
    assert_eq!(defaults.build_retention, None, "builds are kept forever");
    assert_eq!(
        config.registry.as_deref(),
        Some("registry.example.com:5000")
    );
    assert_eq!(
        config.buildman_hostname.as_deref(),
        Some("buildman.example.com:443")
    );
    assert_eq!(load("BUILDMAN_REGISTRY: ''").config.registry, None);
    assert_eq!(
        load("BUILDMAN_DATABASE_URL: 'sqlite:///tmp/b.db'")
            .config
            .database_url
            .as_deref(),
        Some("sqlite:///tmp/b.db")
    );
}
