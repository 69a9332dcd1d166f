//! The Kubernetes executors against a fake API server (crates/testkit's `kube`): the Jobs
//! they write (checked by `kubernetes-validate` and field by field), how they authenticate,
//! the API's errors, stopping, counting and listing workers, and the failures their watch
//! reports.

mod api;
mod auth;
mod manifest;
mod watch;

use std::path::Path;
use std::time::Duration;

use buildman_core::BuildId;
use buildman_core::config::{Config, ExecutorConfig};
use buildman_executor::StartRequest;
use buildman_executor::kubernetes::{KubernetesExecutor, KubernetesSettings};
pub use buildman_testkit::certs::Certs;

/// The registration token handed to workers in these tests; it must never show up in an
/// error.
pub const TOKEN: &str = "registration-token-SECRET-0123456789";

/// The executor of a config whose only executor is `entry` (YAML keys, one per line,
/// without indentation).
pub fn executor_config(entry: &str) -> ExecutorConfig {
    let indented: String = entry.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        "FEATURE_BUILD_SUPPORT: true\nBUILD_MANAGER:\n- ephemeral\n- EXECUTORS:\n  -\n{indented}"
    );
    let loaded = Config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    loaded.config.build_manager.executors[0].clone()
}

pub fn settings(entry: &str) -> KubernetesSettings {
    KubernetesSettings::new(&executor_config(entry), Path::new("."), None).expect("settings")
}

pub fn request() -> StartRequest {
    StartRequest {
        build_id: BuildId::new(),
        token: TOKEN.into(),
        server: "buildman.example.com:55443".into(),
        registry_hostname: "quay.example.com".into(),
        insecure: false,
        max_lifetime_s: 10800,
        manager_id: "4b6f1d7e-8a35-4c1b-9d11-2f0e8c6a7b90".into(),
    }
}

/// An executor over `entry` (its watch starts when `failures()` is taken).
pub async fn executor(entry: &str) -> KubernetesExecutor {
    buildman_testkit::tls_provider();
    KubernetesExecutor::new(settings(entry))
        .await
        .expect("executor")
}

/// Polls `check` until it holds; panics after 20 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
