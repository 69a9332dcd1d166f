//! The executors the configuration names, built for this process.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use buildman_core::config::{ExecutorConfig, ExecutorKind, ExecutorSpecific};
use buildman_executor::bench::BenchExecutor;
use buildman_executor::ec2::{Ec2Executor, Ec2Settings};
use buildman_executor::kubernetes::{KubernetesExecutor, KubernetesSettings};
use buildman_executor::local::{LocalExecutor, LocalSettings};
use buildman_manager::ExecutorEntry;

use super::ServeOptions;

/// The executor kinds this binary runs; `serve` skips the others with an error in the log
/// (Quay's treatment of unknown kinds), `check-config` warns about them.
pub const RUNNABLE: [ExecutorKind; 5] = [
    ExecutorKind::Popen,
    ExecutorKind::Kubernetes,
    ExecutorKind::KubernetesPodman,
    ExecutorKind::Ec2,
    ExecutorKind::Bench,
];

/// Refuses a bench executor unless the command line allowed it: checked before anything is
/// opened, so the refusal is the only thing that happens.
pub(super) fn refuse_bench_executor(options: &ServeOptions) -> anyhow::Result<()> {
    if options.allow_bench_executor {
        return Ok(());
    }
    if let Some(e) =
        (options.config.build_manager.executors.iter()).find(|e| e.kind == ExecutorKind::Bench)
    {
        bail!(
            "executor {:?} is a bench executor: it hands registration tokens to a load generator instead of starting workers, for benchmarks only; start with `buildman serve --allow-bench-executor` to run it",
            e.name
        );
    }
    Ok(())
}

/// The executors the configuration names, in order; kinds this version cannot run are
/// skipped with an error in the log, as Quay does with unknown kinds. An executor whose
/// files (certificates, kubeconfig) cannot be read is an error. `worker_server` is the
/// address workers dial: ec2 instances are tagged with it, as the deployment's name.
pub(super) async fn executors(
    options: &ServeOptions,
    worker_server: &str,
) -> anyhow::Result<Vec<ExecutorEntry>> {
    let mut entries = Vec::new();
    for config in &options.config.build_manager.executors {
        let executor: Arc<dyn buildman_executor::Executor> = match (&config.kind, &config.specific)
        {
            (ExecutorKind::Popen, ExecutorSpecific::Popen(p)) => {
                let (program, args) = match &p.builder_binary_location {
                    Some(path) => (path.clone(), Vec::new()),
                    None => (
                        std::env::current_exe().context("finding this binary to run `worker`")?,
                        vec!["worker".to_string()],
                    ),
                };
                Arc::new(LocalExecutor::new(LocalSettings {
                    program,
                    args,
                    container_runtime: config.container_runtime.clone(),
                    buildah_isolation: p.buildah_isolation.clone(),
                    insecure: p.insecure,
                    debug: config.debug,
                    http_proxy: config.http_proxy.clone(),
                    https_proxy: config.https_proxy.clone(),
                    no_proxy: config.no_proxy.clone(),
                    extra_env: options.worker_env.clone(),
                    ..LocalSettings::default()
                }))
            }
            (ExecutorKind::Kubernetes | ExecutorKind::KubernetesPodman, _) => {
                Arc::new(kubernetes(options, config).await?)
            }
            (ExecutorKind::Bench, ExecutorSpecific::Bench(b)) => {
                // `start` refused it already unless allowed; checked again so no other
                // caller can get here by accident.
                refuse_bench_executor(options)?;
                tracing::warn!(executor = %config.name, callback = %b.callback_url, "bench executor: registration tokens go to a load generator");
                Arc::new(
                    BenchExecutor::new(&b.callback_url)
                        .with_context(|| format!("executor {:?}", config.name))?,
                )
            }
            (ExecutorKind::Ec2, ExecutorSpecific::Ec2(_)) => Arc::new(
                Ec2Executor::connect(config, Ec2Settings::new(worker_server))
                    .await
                    .with_context(|| format!("executor {:?}", config.name))?,
            ),
            _ => {
                tracing::error!(executor = %config.name, kind = %config.kind, "executor kind is not available in this version; skipped");
                continue;
            }
        };
        entries.push(ExecutorEntry {
            config: config.clone(),
            executor,
        });
    }
    if entries.is_empty() {
        let kinds: Vec<&str> = RUNNABLE.iter().map(|k| k.as_str()).collect();
        bail!(
            "no usable executor: configure one of the kinds this version runs ({})",
            kinds.join(", ")
        );
    }
    Ok(entries)
}

/// A kubernetes or kubernetesPodman executor. Its workers trust CA_CERT, or else the
/// manager's own gRPC certificate (Quay's default is its own `ssl.cert`).
async fn kubernetes(
    options: &ServeOptions,
    config: &ExecutorConfig,
) -> anyhow::Result<KubernetesExecutor> {
    let context = || format!("executor {:?} ({})", config.name, config.kind);
    let default_ca =
        match &options.config.grpc_tls {
            Some(tls) => Some(std::fs::read_to_string(&tls.cert).with_context(|| {
                format!("reading BUILDMAN_GRPC_TLS.CERT {}", tls.cert.display())
            })?),
            None => quay_ssl_cert(&options.config_dir),
        };
    let settings = KubernetesSettings::new(config, &options.config_dir, default_ca)
        .map_err(anyhow::Error::msg)
        .with_context(context)?;
    KubernetesExecutor::new(settings)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(context)
}

/// Quay's own certificate next to its config file, when there is one.
fn quay_ssl_cert(config_dir: &Path) -> Option<String> {
    std::fs::read_to_string(config_dir.join("ssl.cert")).ok()
}
