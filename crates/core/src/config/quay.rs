//! Quay mode (`BUILDMAN_STORE: quay`): buildman runs in place of Quay's build manager, on
//! the database, build-log Redis and storage of the same `config.yaml` (Quay's keys
//! DB_URI, BUILDER_DB_HOST_OVERRIDE, DB_CONNECTION_ARGS, BUILDLOGS_REDIS, DATABASE_SECRET_KEY, PREFERRED_URL_SCHEME,
//! REGISTRY_STATE and the user-file storage keys).

use std::path::PathBuf;

use serde_yaml_ng::Value;

use super::diagnostics::{Section, plain};

/// BUILDMAN_STORE: which store the manager keeps its builds in.
pub const STORE_KEY: &str = "BUILDMAN_STORE";

/// What Quay mode reads from Quay's keys.
#[derive(Clone, PartialEq)]
pub struct QuayModeConfig {
    /// DB_URI: Quay's PostgreSQL database (`postgresql://...`).
    pub db_uri: String,
    /// BUILDER_DB_HOST_OVERRIDE: the database host the builder process connects to in
    /// place of DB_URI's (Quay sets it for its `builder` service only).
    pub db_host_override: Option<String>,
    /// DB_CONNECTION_ARGS, as far as they apply to a PostgreSQL client.
    pub db_connection_args: DbConnectionArgs,
    /// BUILDLOGS_REDIS (or the older BUILDLOGS_REDIS_HOSTNAME).
    pub buildlogs_redis: BuildLogsRedisConfig,
    /// DATABASE_SECRET_KEY: decrypts access tokens and deploy keys.
    pub database_secret_key: String,
    /// PREFERRED_URL_SCHEME (default `http`).
    pub preferred_url_scheme: String,
    /// REGISTRY_STATE is `readonly`: Quay's builder idles.
    pub registry_readonly: bool,
    /// SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD (default 100; 0 never disables).
    pub trigger_failure_threshold: u32,
    /// SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD (default 5; 0 never disables).
    pub trigger_internal_error_threshold: u32,
    /// The whole file: the user-file storage keys (USERFILES_LOCATION, USERFILES_PATH,
    /// DISTRIBUTED_STORAGE_CONFIG, FEATURE_PROXY_STORAGE) are read from it by Quay's
    /// formats crate. Never printed: it holds every secret of the file.
    pub document: Value,
}

impl std::fmt::Debug for QuayModeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuayModeConfig")
            .field("db_host_override", &self.db_host_override)
            .field("db_connection_args", &self.db_connection_args)
            .field("buildlogs_redis", &self.buildlogs_redis)
            .field("preferred_url_scheme", &self.preferred_url_scheme)
            .field("registry_readonly", &self.registry_readonly)
            .field("trigger_failure_threshold", &self.trigger_failure_threshold)
            .field(
                "trigger_internal_error_threshold",
                &self.trigger_internal_error_threshold,
            )
            .finish_non_exhaustive()
    }
}

/// The DB_CONNECTION_ARGS a PostgreSQL client applies (libpq's names); Quay's pool
/// settings are read as far as they bound connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbConnectionArgs {
    /// `sslmode`: disable, allow, prefer, require, verify-ca, verify-full.
    pub sslmode: Option<String>,
    /// `sslrootcert`: CA certificate file.
    pub sslrootcert: Option<PathBuf>,
    /// `sslcert` / `sslkey`: client certificate and key files.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// `max_connections`: the most connections this manager opens (default 10).
    pub max_connections: Option<u32>,
}

/// BUILDLOGS_REDIS: the keys Quay hands to its Redis client.
#[derive(Clone, PartialEq, Eq)]
pub struct BuildLogsRedisConfig {
    /// `host` (default `localhost`).
    pub host: String,
    /// `port` (default 6379).
    pub port: u16,
    pub password: Option<String>,
    /// `db` (default 0).
    pub db: u32,
    /// `ssl` (default false).
    pub ssl: bool,
}

impl std::fmt::Debug for BuildLogsRedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildLogsRedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("ssl", &self.ssl)
            .finish_non_exhaustive()
    }
}

/// True when BUILDMAN_STORE asks for Quay mode; an unknown value is an error.
pub(super) fn quay_mode(s: &mut Section) -> bool {
    s.one_of(STORE_KEY, &["buildman", "quay"]).as_deref() == Some("quay")
}

/// Reads Quay's keys for Quay mode; `root` is the whole file.
pub(super) fn parse(s: &mut Section, root: &Value) -> Option<QuayModeConfig> {
    let db_uri = s.required("DB_URI", |r, path, v| {
        let uri =
            plain(v).filter(|u| u.starts_with("postgresql://") || u.starts_with("postgres://"));
        if uri.is_none() {
            r.error(
                path,
                "Quay mode runs on Quay's PostgreSQL database: expected a postgresql:// URI",
            );
        }
        uri
    });
    let db_host_override = s
        .string("BUILDER_DB_HOST_OVERRIDE")
        .filter(|h| !h.trim().is_empty());
    let db_connection_args = s
        .section("DB_CONNECTION_ARGS")
        .map(|mut a| connection_args(&mut a))
        .unwrap_or_default();
    let buildlogs_redis = buildlogs_redis(s);
    let database_secret_key = s.required("DATABASE_SECRET_KEY", |r, path, v| match v {
        Value::String(k) if !k.trim().is_empty() => Some(k.clone()),
        _ => {
            r.error(
                path,
                "expected Quay's key as a quoted string (an unquoted number loses digits in YAML)",
            );
            None
        }
    });
    let preferred_url_scheme = s
        .one_of("PREFERRED_URL_SCHEME", &["http", "https"])
        .unwrap_or_else(|| "http".into());
    let registry_readonly = s.string("REGISTRY_STATE").as_deref() == Some("readonly");
    let trigger_failure_threshold = s
        .u32("SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD")
        .unwrap_or(100);
    let trigger_internal_error_threshold = s
        .u32("SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD")
        .unwrap_or(5);
    Some(QuayModeConfig {
        db_uri: db_uri?,
        db_host_override,
        db_connection_args,
        buildlogs_redis: buildlogs_redis?,
        database_secret_key: database_secret_key?,
        preferred_url_scheme,
        registry_readonly,
        trigger_failure_threshold,
        trigger_internal_error_threshold,
        document: root.clone(),
    })
}

/// The libpq settings and Quay's pool bound of DB_CONNECTION_ARGS; others (peewee's
/// `threadlocals`, `autorollback`, `stale_timeout`) have no meaning here.
fn connection_args(a: &mut Section) -> DbConnectionArgs {
    let args = DbConnectionArgs {
        sslmode: a.one_of(
            "sslmode",
            &[
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full",
            ],
        ),
        sslrootcert: a.path("sslrootcert"),
        sslcert: a.path("sslcert"),
        sslkey: a.path("sslkey"),
        max_connections: a.u32_at_least("max_connections", 2),
    };
    for (key, _) in a.unused() {
        a.r.warn(&a.child(&key), "not applied in Quay mode (only sslmode, sslrootcert, sslcert, sslkey and max_connections are)");
    }
    args
}

/// BUILDLOGS_REDIS, else BUILDLOGS_REDIS_HOSTNAME, else Quay's default (localhost).
fn buildlogs_redis(s: &mut Section) -> Option<BuildLogsRedisConfig> {
    let hostname = s.string("BUILDLOGS_REDIS_HOSTNAME");
    let mut config = BuildLogsRedisConfig {
        host: hostname.unwrap_or_else(|| "localhost".into()),
        port: 6379,
        password: None,
        db: 0,
        ssl: false,
    };
    let Some(mut redis) = s.section("BUILDLOGS_REDIS") else {
        return Some(config);
    };
    if let Some(host) = redis.string("host") {
        config.host = host;
    }
    if let Some(port) = redis.u32("port") {
        match u16::try_from(port) {
            Ok(port) => config.port = port,
            Err(_) => redis
                .r
                .error(&redis.child("port"), "expected a port number"),
        }
    }
    config.password = redis.string("password").filter(|p| !p.is_empty());
    config.db = redis.u32("db").unwrap_or(0);
    config.ssl = redis.bool("ssl").unwrap_or(false);
    for (key, _) in redis.unused() {
        redis
            .r
            .warn(&redis.child(&key), "not applied by buildman's Redis client");
    }
    Some(config)
}
