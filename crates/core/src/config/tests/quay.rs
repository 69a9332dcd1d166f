//! Quay mode: BUILDMAN_STORE and Quay's keys it reads.

use super::{errors, load, warnings};

const QUAY: &str =
    "BUILDMAN_STORE: quay\nDB_URI: postgresql://quay:secret@db/quay\nDATABASE_SECRET_KEY: '1234'\n";

#[test]
fn quay_mode_reads_quays_keys_with_quays_defaults() {
    let config = load(QUAY).config;
    let quay = config.quay.expect("quay mode");
    assert!(
        config.feature_build_support,
        "FEATURE_BUILD_SUPPORT defaults to true"
    );
    assert_eq!(quay.db_uri, "postgresql://quay:secret@db/quay");
    assert_eq!(quay.database_secret_key, "1234");
    assert_eq!(
        (
            quay.buildlogs_redis.host.as_str(),
            quay.buildlogs_redis.port
        ),
        ("localhost", 6379)
    );
    assert_eq!(quay.preferred_url_scheme, "http");
    assert_eq!(quay.db_host_override, None);
    let debug = format!("{quay:?}");
    assert!(
        !debug.contains("secret") && !debug.contains("1234"),
        "{debug}"
    );

    let yaml = format!(
        "{QUAY}BUILDLOGS_REDIS: {{host: logs, port: 6380, password: pw, db: 2}}\n\
         DB_CONNECTION_ARGS: {{sslmode: verify-full, sslrootcert: /ca.pem, threadlocals: true}}\n\
         PREFERRED_URL_SCHEME: https\nREGISTRY_STATE: readonly\nFEATURE_BUILD_SUPPORT: false\n\
         BUILDER_DB_HOST_OVERRIDE: db-for-builder\n"
    );
    let loaded = load(&yaml);
    let quay = loaded.config.quay.expect("quay mode");
    assert!(!loaded.config.feature_build_support);
    let redis = &quay.buildlogs_redis;
    assert_eq!(
        (redis.host.as_str(), redis.port, redis.db),
        ("logs", 6380, 2)
    );
    assert_eq!(redis.password.as_deref(), Some("pw"));
    assert_eq!(
        quay.db_connection_args.sslmode.as_deref(),
        Some("verify-full")
    );
    assert!(quay.registry_readonly);
    assert_eq!(quay.db_host_override.as_deref(), Some("db-for-builder"));
    assert_eq!(quay.preferred_url_scheme, "https");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.to_string().contains("DB_CONNECTION_ARGS.threadlocals")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn buildman_mode_is_the_default_and_ignores_quays_database() {
    let config = load("DB_URI: postgresql://quay@db/quay\n").config;
    assert_eq!(config.quay, None);
    assert!(!config.feature_build_support);
    assert!(warnings("BUILDMAN_STORE: buildman\n").is_empty());
}

#[test]
fn quay_mode_refuses_what_it_cannot_run_on() {
    let found = errors(
        "BUILDMAN_STORE: quay\nDB_URI: mysql+pymysql://quay@db/quay\nDATABASE_SECRET_KEY: 12345\n",
    );
    assert!(
        found
            .iter()
            .any(|e| e.contains("DB_URI") && e.contains("PostgreSQL")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.contains("DATABASE_SECRET_KEY") && e.contains("quoted")),
        "{found:?}"
    );
    let found = errors("BUILDMAN_STORE: quay\n");
    assert!(
        found
            .iter()
            .any(|e| e.contains("missing required key DB_URI")),
        "{found:?}"
    );
    let found = errors(&format!("{QUAY}BUILDMAN_DATABASE_URL: sqlite:x.db\n"));
    assert!(
        found.iter().any(|e| e.contains("BUILDMAN_DATABASE_URL")),
        "{found:?}"
    );
    let found = errors("BUILDMAN_STORE: quayy\n");
    assert!(
        found.iter().any(|e| e.contains("BUILDMAN_STORE")),
        "{found:?}"
    );
}
