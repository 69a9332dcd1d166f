//! `buildman`: a container-image build service speaking Quay's build-manager contracts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use buildman::serve::{self, ServeOptions};
use buildman::user;
use buildman_core::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "buildman",
    version,
    about = "Container-image build service (Quay-compatible build manager)"
)]
struct Cli {
    /// How log lines are written to stderr: `text` for a person, `json` for a log
    /// collector (one object per line: timestamp, level, target, message and the event's
    /// fields, such as build_id and execution_id). Text is coloured only on a terminal
    /// and without NO_COLOR.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BUILDMAN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the build manager: REST API, gRPC worker service, scheduler.
    ///
    /// With no --config it runs on embedded defaults: SQLite in the data dir, the in-memory
    /// orchestrator and the local-process executor.
    Serve(ServeArgs),
    /// Run one build job as a worker (quay-builder compatible).
    ///
    /// Reads TOKEN, SERVER, INSECURE, TLS_CERT_PATH, CONTAINER_RUNTIME, BUILDAH_ISOLATION and
    /// DOCKER_HOST from the environment, as executors set them. Exit code 0: complete;
    /// 1: the build failed or the manager was unreachable; 3: cancelled by the manager.
    Worker,
    /// Check a config.yaml and report every problem with its path in the file.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Submit a build and follow it to the end.
    ///
    /// Exit code 0: complete; 1: the command failed (bad arguments, upload refused, manager
    /// unreachable); 10: the build ended in error; 11: internalerror or expired;
    /// 12: cancelled.
    Submit(user::SubmitArgs),
    /// List builds of every repository (filter with -r and --phase).
    Builds(user::BuildsArgs),
    /// Print (or follow, with -f) a build's log; following exits like `submit`.
    Logs(user::LogsArgs),
    /// Cancel a build.
    Cancel(user::CancelArgs),
    /// Show a build: phase, repository, tags, error, where its image went.
    Status(user::StatusArgs),
    /// Print a shell completion script: `buildman completions bash > /etc/bash_completion.d/buildman`,
    /// `buildman completions zsh > "${fpath[1]}/_buildman"`,
    /// `buildman completions fish > ~/.config/fish/completions/buildman.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A Quay-style config.yaml; without it the embedded defaults are used.
    #[arg(long, short = 'c', env = "BUILDMAN_CONFIG")]
    config: Option<PathBuf>,
    /// Where SQLite, keys, tokens and uploaded contexts live (overrides BUILDMAN_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// REST API address (overrides BUILDMAN_HTTP_LISTEN; default 127.0.0.1:8080).
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// gRPC worker service address (overrides BUILDMAN_GRPC_LISTEN; default 127.0.0.1:50051).
    #[arg(long)]
    grpc_listen: Option<std::net::SocketAddr>,
    /// Allow `EXECUTOR: bench`, which hands registration tokens to a load generator
    /// (buildman-bench) instead of starting workers. For benchmarks only.
    #[arg(long)]
    allow_bench_executor: bool,
}

fn main() -> ExitCode {
    // The one place the process-wide TLS provider is chosen: ring, for every rustls client
    // and server in the process (reqwest and redis are built without one of their own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            say(format_args!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => run_serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::CheckConfig { file } => Ok(check_config(&file)),
            Command::Worker => Ok(run_worker().await),
            Command::Submit(args) => user::submit(args).await,
            Command::Builds(args) => user::builds(args).await,
            Command::Logs(args) => user::logs(args).await,
            Command::Cancel(args) => user::cancel(args).await,
            Command::Status(args) => user::status(args).await,
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "buildman", &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            say(format_args!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr, as `format` says.
fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        // A write that fails is dropped. Otherwise tracing reports it with `eprintln!`, which
        // panics when stderr is gone: a worker whose manager died (the pipe's reader) would
        // die with it instead of reconnecting.
        .log_internal_errors(false);
    match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // A worker's stderr is read into the manager's log: colour only for a person who
        // has not asked for none (https://no-color.org).
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            logs.with_ansi(terminal && !no_color).init()
        }
    }
}

/// Writes a line to stderr. Unlike `eprintln!`, it does not panic when stderr is closed
/// (a worker outliving the manager that read its output).
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Reads and validates a config file, printing every problem; `Err` lists the errors.
fn load_config(file: &std::path::Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match Config::parse(&text) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            Ok(loaded.config)
        }
        Err(invalid) => Err(invalid
            .errors
            .iter()
            .map(|e| format!("error: {e}"))
            .chain(invalid.warnings.iter().map(|w| format!("warning: {w}")))
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match load_config(file) {
        Ok(config) => {
            let bm = &config.build_manager;
            let (runnable, skipped): (Vec<_>, Vec<_>) =
                (bm.executors.iter()).partition(|e| buildman::serve::RUNNABLE.contains(&e.kind));
            for e in &skipped {
                eprintln!(
                    "warning: executor {:?}: kind {} is not available in this version; `serve` skips it",
                    e.name, e.kind
                );
            }
            if runnable.is_empty() && bm.lifecycle == buildman_core::config::Lifecycle::Ephemeral {
                let kinds: Vec<&str> = (buildman::serve::RUNNABLE.iter())
                    .map(|k| k.as_str())
                    .collect();
                eprintln!(
                    "error: no usable executor: `serve` would refuse this file; configure one of {}",
                    kinds.join(", ")
                );
                return ExitCode::FAILURE;
            }
            let quay = match serve::quay::check(&config) {
                Ok(lines) => lines,
                Err(problem) => {
                    eprintln!("error: {problem}");
                    return ExitCode::FAILURE;
                }
            };
            let names: Vec<&str> = runnable.iter().map(|e| e.name.as_str()).collect();
            println!(
                "{}: ok (build support {}, {} executor(s): {}, ALLOWED_WORKER_COUNT {})",
                file.display(),
                if config.feature_build_support {
                    "on"
                } else {
                    "off"
                },
                names.len(),
                names.join(", "),
                bm.allowed_worker_count
            );
            for line in quay {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(report) => {
            eprintln!("{report}");
            ExitCode::FAILURE
        }
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(file) => load_config(file).map_err(|report| {
            anyhow::anyhow!(
                "{report}\n{}: invalid configuration, not starting",
                file.display()
            )
        })?,
        None => Config::embedded(),
    };
    config.apply_env(|k| std::env::var(k).ok());
    let mut options = ServeOptions::from_config(config)?;
    if let Some(d) = args.data_dir {
        options.data_dir = d;
    }
    if let Some(a) = args.http_listen {
        options.http_listen = a;
    }
    if let Some(a) = args.grpc_listen {
        options.grpc_listen = a;
    }
    options.allow_bench_executor = args.allow_bench_executor;
    if let Some(dir) = args.config.as_deref().and_then(std::path::Path::parent) {
        options.config_dir = dir.to_path_buf();
    }
    if let Some(why) = serve::quay::idle_reason(&options.config) {
        // Quay's builder idles rather than exit, so its supervisor does not restart it.
        tracing::warn!("Quay mode: not running builds: {why}; idle until stopped");
        return shutdown_signal()
            .await
            .context("waiting for a shutdown signal");
    }
    let running = serve::start(options.clone()).await?;
    if let Some(token) = &running.new_admin_token {
        println!(
            "Admin API token (shown once; kept in {}): {token}",
            options.data_dir.join("admin-token").display()
        );
    }
    println!(
        "buildman serving: REST API on http://{}, workers on {}, data in {}",
        running.http_addr,
        running.grpc_addr,
        options.data_dir.display()
    );
    if let Some(address) = running.metrics_addr {
        println!("metrics and health: http://{address}/metrics, /healthz, /readyz");
    }
    shutdown_signal()
        .await
        .context("waiting for a shutdown signal")?;
    tracing::info!(
        drain_s = options.config.drain_period.as_secs(),
        "stopping: draining first (a second SIGTERM or SIGINT stops at once)"
    );
    running
        .drain_and_stop(async {
            if let Err(e) = shutdown_signal().await {
                tracing::warn!(error = %e, "cannot wait for a second signal");
                std::future::pending::<()>().await;
            }
        })
        .await;
    tracing::info!("stopped");
    Ok(())
}

async fn run_worker() -> ExitCode {
    use buildman_worker::job::{self, Outcome, WorkerEnv};
    let env = match WorkerEnv::from_env(|k| std::env::var(k).ok()) {
        Ok(env) => env,
        Err(e) => {
            say(format_args!("error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // SIGTERM (an executor stopping the worker) stops the build's commands first: they run
    // in process groups of their own, which a signal to the worker alone does not reach.
    let stop = async {
        if shutdown_signal().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match job::run(&env, stop).await {
        Ok(Outcome::Complete) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(why)) => {
            say(format_args!("build failed: {why}"));
            ExitCode::FAILURE
        }
        Ok(Outcome::Cancelled) => ExitCode::from(3),
        // 128 + SIGTERM, as a shell reports a process SIGTERM ended.
        Ok(Outcome::Terminated) => ExitCode::from(143),
        Err(e) => {
            say(format_args!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
