//! Quay's `config.yaml`, as far as the build manager reads it, plus buildman's own keys.
//!
//! The file is Quay's, so buildman reads Quay's key names and structure (BUILD_MANAGER as
//! `[lifecycle, {...}]`, EXECUTORS, ORCHESTRATOR with `REDIS_*` keys) and follows Quay's
//! defaults; one file configures both. The YAML is parsed into a [`serde_yaml_ng::Value`] and
//! walked by hand rather than deserialized, so that every problem is reported at once, each
//! prefixed with its path in the file
//! (`BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME: expected an integer, got "abc"`): an operator
//! fixes the whole file in one go. Unknown keys inside the build manager's sections are
//! warnings; unknown top-level keys are silently ignored, since Quay's file holds far more than
//! the build keys.
//!
//! Layout, one file per section of the YAML:
//! - this file: [`Config`] (every top-level key), [`Config::parse`] and the top-level keys Quay
//!   defines, the environment overrides and the worker address rules;
//! - `buildman_keys`: buildman's own top-level `BUILDMAN_*` keys, which Quay does not know;
//!   `context_storage`: their BUILDMAN_CONTEXT_STORAGE;
//! - `manager`: BUILD_MANAGER; `orchestrator`: its ORCHESTRATOR;
//! - `executors`: the keys every executor shares, and one file per kind for its own keys;
//! - `diagnostics`: [`Diagnostic`], the collector and the typed readers every section uses;
//! - `redact`: Debug output that never shows secrets.
//!
//! Every public type is re-exported here: callers name `config::X`, never a submodule.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_yaml_ng::Value;

mod buildman_keys;
mod context_storage;
mod diagnostics;
mod executors;
mod limits;
mod manager;
mod orchestrator;
mod quay;
mod redact;
#[cfg(test)]
mod tests;

pub use buildman_keys::{SigningKeyConfig, TlsConfig, TrustedKeyConfig};
pub use context_storage::{ContextStorageConfig, S3StorageConfig};
pub use diagnostics::Diagnostic;
pub use executors::{
    BenchConfig, Ec2Config, ExecutorConfig, ExecutorKind, ExecutorSpecific, KubernetesConfig,
    KubernetesDistribution, PopenConfig,
};
pub use limits::Limits;
pub use manager::{BuildManagerConfig, Lifecycle};
pub use orchestrator::{OrchestratorConfig, RedisConfig};
pub use quay::{BuildLogsRedisConfig, DbConnectionArgs, QuayModeConfig};

use diagnostics::{Report, Section, describe};
use redact::debug_redacting;

/// BUILDMAN_DRAIN_SECONDS when unset.
pub const DEFAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);
/// The TLS port in front of the gRPC server that workers dial when manager and registry share a host.
const WORKER_TLS_PORT: u16 = 55443;

/// The whole configuration the build manager runs with.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// FEATURE_BUILD_SUPPORT: whether builds run at all.
    pub feature_build_support: bool,
    /// SERVER_HOSTNAME: the registry host (default `localhost:8080`).
    pub server_hostname: String,
    /// BUILDMAN_HOSTNAME: the host (and port) workers dial, if it differs from the registry's.
    pub buildman_hostname: Option<String>,
    /// BUILD_MANAGER: lifecycle, orchestrator and executors.
    pub build_manager: BuildManagerConfig,
    /// BUILDMAN_DATA_DIR: where buildman keeps its local state.
    pub data_dir: Option<PathBuf>,
    /// BUILDMAN_HTTP_LISTEN: the REST API's listen address.
    pub http_listen: Option<SocketAddr>,
    /// BUILDMAN_GRPC_LISTEN: the worker gRPC server's listen address.
    pub grpc_listen: Option<SocketAddr>,
    /// BUILDMAN_PUBLIC_URL: http(s) base URL workers fetch uploaded build contexts from (as given).
    pub public_url: Option<String>,
    /// BUILDMAN_GRPC_TLS: certificate and key of the gRPC server.
    pub grpc_tls: Option<TlsConfig>,
    /// BUILDMAN_DATABASE_URL: `sqlite:...`, `postgres://...` or `postgresql://...` (redacted in Debug).
    pub database_url: Option<String>,
    /// BUILDMAN_JWT_SIGNING_KEY: the key build tokens are signed with.
    pub signing_key: Option<SigningKeyConfig>,
    /// BUILDMAN_JWT_TRUSTED_KEYS: further public keys accepted when verifying tokens (rotation).
    pub trusted_keys: Vec<TrustedKeyConfig>,
    /// BUILDMAN_API_TOKENS: bearer tokens accepted by the REST API (redacted in Debug).
    pub api_tokens: Vec<String>,
    /// BUILDMAN_MAX_QUEUED_BUILDS_PER_NAMESPACE: cap on queued builds per namespace (>= 1).
    pub max_queued_builds_per_namespace: Option<u32>,
    /// BUILDMAN_MAX_SILENT_RETRIES: how often a build whose worker goes silent gets its retry
    /// back (default 2); past it a silent worker spends the retry, so every build ends.
    pub max_silent_retries: u32,
    /// BUILDMAN_ORPHAN_REAP_INTERVAL: how often every executor's workers are compared with
    /// the live jobs, and those of no live job stopped (seconds, default 60).
    pub orphan_reap_interval: std::time::Duration,
    /// BUILDMAN_HEARTBEAT_TTL: how long a heartbeat keeps a job alive (seconds, default
    /// Quay's 60). A worker silent for longer is taken for lost; shorter finds lost workers
    /// and managers sooner, but must stay well above the workers' heartbeat period (2 s).
    pub heartbeat_ttl: std::time::Duration,
    /// BUILDMAN_REGISTRY: registry host workers push to; `None` means write OCI layouts locally.
    pub registry: Option<String>,
    /// BUILDMAN_REGISTRY_PUSH_TOKEN: the password workers log in to the registry with as
    /// user `$token`, Quay's scheme (redacted in Debug).
    pub registry_push_token: Option<String>,
    /// BUILDMAN_REGISTRY_PULL_TOKEN: likewise for pulling the cache image; defaults to the
    /// push token (redacted in Debug).
    pub registry_pull_token: Option<String>,
    /// BUILDMAN_CONTEXT_STORAGE: where uploaded build contexts are kept (default: the data dir).
    pub context_storage: ContextStorageConfig,
    /// BUILDMAN_CONTROLLER_PORT (environment only): Quay's metrics/controller port (Quay
    /// reads it with a default of 8686 and today listens on nothing there). When set, the
    /// metrics and health endpoints are also served on it, at the REST API's address; unset,
    /// no such listener is opened (see [`Config::metrics_listen_address`]).
    pub controller_port: Option<u16>,
    /// BUILDMAN_METRICS_LISTEN: an address of its own for the metrics and health endpoints
    /// (they are on the REST API's address anyway); wins over BUILDMAN_CONTROLLER_PORT.
    pub metrics_listen: Option<SocketAddr>,
    /// BUILDMAN_DRAIN_SECONDS: how long a stopping manager keeps answering workers of the
    /// builds it runs, without claiming new ones (default 30 s).
    pub drain_period: std::time::Duration,
    /// BUILDMAN_CONTEXT_RETENTION: how long an uploaded context is kept after its build
    /// ended for good (seconds, default 0: deleted by the next retention pass).
    pub context_retention: std::time::Duration,
    /// BUILDMAN_BUILD_RETENTION: how long a build that ended for good is kept, with its log
    /// (seconds; default `None`: forever).
    pub build_retention: Option<std::time::Duration>,
    /// BUILDMAN_SEALING_KEY_FILE: a file of 32 random bytes that seals build secrets (git
    /// deploy keys) in the store; default `<data dir>/sealing-key`, generated on first start.
    /// Managers sharing a database need the same one.
    pub sealing_key_file: Option<PathBuf>,
    /// BUILDMAN_LIMITS: bounds on bodies, log pages, connections and request rates.
    pub limits: Limits,
    /// BUILDMAN_STORE `quay`: Quay mode, on Quay's database and build-log Redis (`None`:
    /// buildman's own store, the default `buildman`).
    pub quay: Option<QuayModeConfig>,
}

debug_redacting!(Config {
    feature_build_support, server_hostname, buildman_hostname, build_manager, data_dir,
    http_listen, grpc_listen, public_url, grpc_tls, signing_key, trusted_keys,
    max_queued_builds_per_namespace, max_silent_retries, orphan_reap_interval, heartbeat_ttl, registry,
    context_storage, controller_port, metrics_listen, drain_period, context_retention,
    build_retention, sealing_key_file, limits, quay,
} secret { database_url, api_tokens, registry_push_token, registry_pull_token });

/// A parsed configuration and the warnings found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Problems that did not stop parsing (unknown keys, skipped executors, ...).
    pub warnings: Vec<Diagnostic>,
}

/// A configuration that does not validate: every error, and the warnings found alongside.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    /// Problems that stop the configuration from being used (never empty).
    pub errors: Vec<Diagnostic>,
    /// Problems that alone would not have.
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// The embedded defaults used when `buildman serve` runs with no config file: build support on, one popen executor, memory orchestrator.
    pub fn embedded() -> Config {
        Config {
            feature_build_support: true,
            server_hostname: "localhost:8080".to_owned(),
            buildman_hostname: None,
            build_manager: BuildManagerConfig::default(),
            data_dir: None,
            sealing_key_file: None,
            http_listen: None,
            grpc_listen: None,
            public_url: None,
            grpc_tls: None,
            database_url: None,
            signing_key: None,
            trusted_keys: Vec::new(),
            api_tokens: Vec::new(),
            registry_push_token: None,
            registry_pull_token: None,
            max_queued_builds_per_namespace: None,
            max_silent_retries: crate::job::DEFAULT_MAX_SILENT_RETRIES,
            orphan_reap_interval: std::time::Duration::from_secs(60),
            heartbeat_ttl: std::time::Duration::from_secs(60),
            registry: None,
            context_storage: ContextStorageConfig::Local,
            controller_port: None,
            metrics_listen: None,
            drain_period: DEFAULT_DRAIN,
            context_retention: std::time::Duration::ZERO,
            build_retention: None,
            limits: Limits::default(),
            quay: None,
        }
    }

    /// Parses and validates; `Err` holds every error found (never empty) and the warnings.
    pub fn parse(yaml: &str) -> Result<Loaded, Invalid> {
        let fail = |message: String| {
            Err(Invalid {
                errors: vec![Diagnostic {
                    path: String::new(),
                    message,
                }],
                warnings: Vec::new(),
            })
        };
        let mut root: Value = match serde_yaml_ng::from_str(yaml) {
            Ok(root) => root,
            Err(err) => return fail(err.to_string()),
        };
        if let Err(err) = root.apply_merge() {
            return fail(err.to_string());
        }
        let Value::Mapping(map) = &root else {
            return fail(format!(
                "expected a mapping at the top level, got {}",
                describe(&root)
            ));
        };
        let report = Report::default();
        let config = parse_config(&mut Section::new(&report, String::new(), map), &root);
        let (errors, warnings) = report.into_diagnostics();
        if errors.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(Invalid { errors, warnings })
        }
    }

    /// Applies Quay's environment overrides: BUILDMAN_HOSTNAME (sets buildman_hostname). Takes a lookup fn so tests need not touch the real environment.
    ///
    /// Also BUILDMAN_CONTROLLER_PORT; an invalid value is ignored (see [`Config::try_apply_env`]).
    /// And BUILDMAN_API_TOKENS (comma-separated), added to the file's: tokens are secrets,
    /// which a deployment keeps out of config.yaml (a Kubernetes Secret, a systemd
    /// EnvironmentFile).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        // Invalid values leave the field untouched; callers wanting to know use try_apply_env.
        let _ignored = self.try_apply_env(lookup);
    }

    /// Like [`Config::apply_env`], but reports invalid values (which are left unapplied).
    pub fn try_apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), Vec<Diagnostic>> {
        let mut errors = Vec::new();
        if let Some(host) = lookup("BUILDMAN_HOSTNAME").filter(|h| !h.trim().is_empty()) {
            self.buildman_hostname = Some(host.trim().to_owned());
        }
        if let Some(tokens) = lookup("BUILDMAN_API_TOKENS") {
            let tokens = tokens.split(',').map(str::trim).filter(|t| !t.is_empty());
            self.api_tokens.extend(tokens.map(str::to_owned));
        }
        if let Some(port) = lookup("BUILDMAN_CONTROLLER_PORT") {
            match port.trim().parse::<u16>() {
                Ok(port) => self.controller_port = Some(port),
                Err(_) => errors.push(Diagnostic {
                    path: "BUILDMAN_CONTROLLER_PORT".to_owned(),
                    message: format!("expected a port number, got {port:?}"),
                }),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The `host:port` workers dial (Quay's rule): if buildman_hostname is set: if its host part (strip any :port) equals server_hostname's host part -> `"<host>:55443"`; else buildman_hostname as given. If unset -> None (the caller then uses the gRPC listen address).
    pub fn worker_server_address(&self) -> Option<String> {
        let manager = self.buildman_hostname.as_deref()?;
        let host = host_part(manager);
        if host.eq_ignore_ascii_case(host_part(&self.server_hostname)) {
            Some(format!("{host}:{WORKER_TLS_PORT}"))
        } else {
            Some(manager.to_owned())
        }
    }

    /// Where the metrics and health endpoints get a listener of their own, besides the REST
    /// API's: BUILDMAN_METRICS_LISTEN, else BUILDMAN_CONTROLLER_PORT on the REST API's IP
    /// address (`http_listen`), else none.
    pub fn metrics_listen_address(&self, http_listen: SocketAddr) -> Option<SocketAddr> {
        self.metrics_listen.or_else(|| {
            self.controller_port
                .map(|port| SocketAddr::new(http_listen.ip(), port))
        })
    }

    /// The token audience: buildman_hostname else server_hostname.
    pub fn token_audience(&self) -> String {
        self.buildman_hostname
            .clone()
            .unwrap_or_else(|| self.server_hostname.clone())
    }
}

/// `host` of `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_part(address: &str) -> &str {
    if address.starts_with('[') {
        return address.find(']').map_or(address, |end| &address[..=end]);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

/// The top-level keys: Quay's, then buildman's own. Errors are reported in the order keys are
/// read, so this order is part of the output.
fn parse_config(s: &mut Section, root: &Value) -> Config {
    let r = s.r;
    let base = Config::embedded();
    let quay_mode = quay::quay_mode(s);
    let mut config = Config {
        // Quay's default is true; buildman's own mode asks for it explicitly.
        feature_build_support: s.bool("FEATURE_BUILD_SUPPORT").unwrap_or(quay_mode),
        server_hostname: s.string("SERVER_HOSTNAME").unwrap_or(base.server_hostname),
        buildman_hostname: s.string("BUILDMAN_HOSTNAME").filter(|h| !h.is_empty()),
        build_manager: (s.raw("BUILD_MANAGER"))
            .map(|v| manager::parse_build_manager(r, v))
            .unwrap_or_default(),
        ..base
    };
    buildman_keys::read_buildman_keys(s, &mut config);
    if quay_mode {
        if config.database_url.is_some() {
            r.error(
                "BUILDMAN_DATABASE_URL",
                "Quay mode (BUILDMAN_STORE: quay) keeps builds in Quay's database (DB_URI): remove BUILDMAN_DATABASE_URL",
            );
        }
        config.quay = quay::parse(s, root);
    }
    config
}
