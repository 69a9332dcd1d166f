//! `buildman-bench`: the load generator's command line. One command per scenario:
//!
//! ```sh
//! buildman-bench schedule  --builds 2000 --idle-builds 100
//! buildman-bench connected --workers 10000 --duration-s 60
//! buildman-bench logs      --streams 100 --duration-s 10
//! ```
//!
//! By default it starts the manager itself (`buildman serve --allow-bench-executor`, found
//! next to this binary or given with --buildman) with a generated config in a temp dir;
//! with --api and --token it targets a running manager instead, whose config must have a
//! bench executor calling back --callback-listen.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use buildman_bench::api::Api;
use buildman_bench::callback::Callbacks;
use buildman_bench::connected::ConnectedOptions;
use buildman_bench::logs::LogsOptions;
use buildman_bench::procfs::Machine;
use buildman_bench::schedule::ScheduleOptions;
use buildman_bench::target::{self, Backends, Manager, SpawnOptions};
use buildman_bench::{Env, Report};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "buildman-bench",
    version,
    about = "Load generator for buildman: plays many quay-builder workers over real gRPC and measures the manager"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Scenario {
    /// Submit builds over 50 repositories; submit → executor start / registered latency,
    /// idle and under a burst, and sustained builds/s to `complete`.
    Schedule(ScheduleOptions),
    /// Hold W workers registered, heartbeating every 2 s and logging once a second; the
    /// manager's CPU, RSS, heartbeat latency and errors.
    Connected(ConnectedOptions),
    /// S log streams sending as fast as acks return; lines/s, ack latency, and every line
    /// checked through the API.
    Logs(LogsOptions),
}

#[derive(clap::Args)]
struct Common {
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// The buildman binary to start (default: the one next to this binary).
    #[arg(long, global = true)]
    buildman: Option<PathBuf>,
    /// Target a running manager's REST API instead of starting one (needs --token and a
    /// bench executor in its config calling back --callback-listen).
    #[arg(long, global = true, requires = "token")]
    api: Option<String>,
    /// The running manager's API token.
    #[arg(long, global = true, env = "BUILDMAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The running manager's process id, to read its CPU and memory from /proc.
    #[arg(long, global = true)]
    manager_pid: Option<u32>,
    /// Where the bench executor's callbacks are taken (default: a free loopback port;
    /// with --api, the address its BENCH_CALLBACK_URL names, path /worker).
    #[arg(long, global = true, default_value = "127.0.0.1:0")]
    callback_listen: SocketAddr,
    /// BUILDMAN_DATABASE_URL for the started manager (e.g. postgres://...).
    #[arg(
        long,
        global = true,
        env = "BENCH_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Run the started manager on a Redis orchestrator at host:port (REDIS_HOST/REDIS_PORT).
    #[arg(long, global = true)]
    redis: Option<String>,
    /// REDIS_PASSWORD for --redis.
    #[arg(
        long,
        global = true,
        env = "BENCH_REDIS_PASSWORD",
        hide_env_values = true
    )]
    redis_password: Option<String>,
    /// ALLOWED_WORKER_COUNT of the started manager (default: what the scenario needs).
    #[arg(long, global = true)]
    allowed_worker_count: Option<u32>,
    /// Simulated workers sharing one HTTP/2 connection (1: a connection each, as real
    /// workers have).
    #[arg(long, global = true, default_value_t = 50)]
    workers_per_connection: usize,
    /// Keep the started manager's temp dir (config, data, manager.log).
    #[arg(long, global = true)]
    keep_dir: bool,
}

fn main() -> ExitCode {
    // The process-wide TLS provider for reqwest (built without one of its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,h2=error,tower=error,hyper=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Workers the scenario needs running at once.
fn workers_needed(scenario: &Scenario) -> u32 {
    let n = match scenario {
        // A slot is freed only after the worker was stopped, while the next build of the
        // repository may already be claimable: twice the repositories keeps the cap out
        // of the measurement.
        Scenario::Schedule(o) => 2 * o.repositories,
        Scenario::Connected(o) => o.workers,
        Scenario::Logs(o) => o.streams,
    };
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

async fn run(cli: Cli) -> anyhow::Result<Report> {
    let c = &cli.common;
    let machine = Machine::read();
    let callbacks = Callbacks::start(c.callback_listen).await?;
    let manager = match (&c.api, &c.token) {
        (Some(api), Some(token)) => {
            if c.callback_listen.port() == 0 {
                bail!(
                    "with --api, give --callback-listen: the address the manager's BENCH_CALLBACK_URL names"
                );
            }
            Manager::external(api, token, c.manager_pid)
        }
        (Some(_), None) => bail!("--api needs --token"),
        _ => {
            let buildman = match &c.buildman {
                Some(p) => p.clone(),
                None => target::buildman_next_to_me()?,
            };
            let options = SpawnOptions {
                buildman,
                callback_url: callbacks.url.clone(),
                allowed_worker_count: c
                    .allowed_worker_count
                    .unwrap_or_else(|| workers_needed(&cli.scenario)),
                backends: Backends {
                    database_url: c.database_url.clone(),
                    redis: c.redis.clone(),
                    redis_password: c.redis_password.clone(),
                },
                keep_dir: c.keep_dir,
            };
            Manager::spawn(&options)
                .await
                .context("starting the manager")?
        }
    };
    let api = Api::new(&manager.api, &manager.token)?;
    let env = Env::new(api, manager.pid, callbacks, c.workers_per_connection);
    let result = match &cli.scenario {
        Scenario::Schedule(o) => buildman_bench::schedule::run(&env, o).await,
        Scenario::Connected(o) => buildman_bench::connected::run(&env, o).await,
        Scenario::Logs(o) => buildman_bench::logs::run(&env, o).await,
    };
    let backends = manager.backends.clone();
    let log = manager.log.clone();
    manager.stop().await;
    let mut report = result?;
    report.machine = machine;
    report.backends = backends;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.render());
    }
    if !report.passed()
        && let Some(log) = log.filter(|_| c.keep_dir)
    {
        eprintln!("manager log: {}", log.display());
    }
    Ok(report)
}
