//! The executors the configuration names, built for this process.

use std::sync::Arc;

use anyhow::{Context, bail};
use buildman_core::config::{ExecutorKind, ExecutorSpecific};
use buildman_executor::bench::BenchExecutor;
use buildman_executor::ec2::{Ec2Executor, Ec2Settings};
use buildman_executor::local::{LocalExecutor, LocalSettings};
use buildman_manager::ExecutorEntry;

use super::ServeOptions;

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
/// skipped with an error in the log, as Quay does with unknown kinds. `worker_server` is
/// the address workers dial: ec2 instances are tagged with it, as the deployment's name.
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
                tracing::error!(executor = %config.name, "executor kind is not available in this version; skipped");
                continue;
            }
        };
        entries.push(ExecutorEntry {
            config: config.clone(),
            executor,
        });
    }
    if entries.is_empty() {
        bail!(
            "no usable executor: configure a popen or ec2 executor (the kinds this version runs)"
        );
    }
    Ok(entries)
}
