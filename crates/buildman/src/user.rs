//! The user-facing commands: `submit`, `builds`, `logs` and `cancel`, all talking to the
//! manager's REST API.
//!
//! Each command prints its own errors (`error: <message>`, with `(HTTP <code>)` for error
//! answers) on stderr and returns exit code 1 for them, so the `Err` path is not used.

pub mod api;
pub mod context;
pub mod dockerignore;
pub mod follow;
pub mod list;
pub mod pack;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use buildman_api::{BuildView, CreateBuild};
use buildman_core::BuildId;

pub use list::BuildsArgs;

use api::ApiClient;
use follow::{EXIT_COMPLETE, EXIT_FAILED, EXIT_INTERRUPTED, Output, write_stdout};
use list::format_started;

/// Where and how to reach the manager's REST API (shared by all user commands).
#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// Base URL of the manager's REST API.
    #[arg(long, env = "BUILDMAN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API bearer token; default: the admin token the manager wrote into its data dir.
    #[arg(long, env = "BUILDMAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The manager's data dir, to find its admin token when --token is not given.
    #[arg(long, env = "BUILDMAN_DATA_DIR", default_value = "buildman-data")]
    pub data_dir: PathBuf,
}

impl std::fmt::Debug for ApiArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Queue a build of a local directory, a local archive or Dockerfile, or an http(s) URL.
///
/// Exit codes: 0 the build completed (or --no-follow and it was queued); 1 the command itself
/// failed (bad arguments, upload refused, manager unreachable); 10 the build failed (error);
/// 11 internal error or expired; 12 cancelled.
#[derive(clap::Args, Debug, Clone)]
pub struct SubmitArgs {
    /// A directory (packed as tar.gz), a tar / tar.gz / zip archive or a lone Dockerfile
    /// (uploaded as-is), an http(s) URL of an archive the worker downloads, or a git
    /// repository: `https://host/repo.git#ref`, `git://...`, `ssh://...` or
    /// `git@host:repo.git#sha` (`#` a branch, tag or commit; default the remote's HEAD).
    pub path_or_url: String,
    /// With an ssh git repository: the private deploy key file to clone with (sent once,
    /// kept sealed by the manager).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Repository to build into, as namespace/repo.
    #[arg(short = 'r', long)]
    pub repository: String,
    /// Tag to push (repeat for several); default: the manager's default ("latest").
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Path of the Dockerfile inside the context.
    #[arg(long)]
    pub dockerfile: Option<String>,
    /// Directory inside the archive to use as the build context.
    #[arg(long)]
    pub context: Option<String>,
    /// Print the build id and exit instead of following the build to its end.
    #[arg(long)]
    pub no_follow: bool,
    /// Print JSON on stdout: the log entries, one object per line, then the final build
    /// view; with --no-follow the queued build view only.
    #[arg(long)]
    pub json: bool,
    /// How to reach the manager.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Print a build's log.
///
/// Exit codes with --follow: as for `submit` (0 complete, 1 command failed, 10 error,
/// 11 internal error or expired, 12 cancelled); without it: 0, or 1 when the command failed.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// The build id (UUID).
    pub id: String,
    /// Keep printing new entries until the build reaches a final phase.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print each entry as a JSON object on a line of its own (`message`, `type`, `data`).
    #[arg(long)]
    pub json: bool,
    /// How to reach the manager.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Cancel a build that has not started pushing yet.
#[derive(clap::Args, Debug, Clone)]
pub struct CancelArgs {
    /// The build id (UUID).
    pub id: String,
    /// Print the build view after the cancel as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to reach the manager.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Show one build: its phase, repository, tags, error and where its image went.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The build id (UUID).
    pub id: String,
    /// Print the build view as JSON (the API's `GET /api/v1/build/<id>` answer).
    #[arg(long)]
    pub json: bool,
    /// How to reach the manager.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `buildman submit`: queues a build and, unless --no-follow, follows it to its end.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    Ok(report(run_submit(args).await))
}

/// `buildman builds`: lists builds of every repository as a table or JSON lines.
pub async fn builds(args: BuildsArgs) -> anyhow::Result<ExitCode> {
    Ok(report(list::run_builds(args).await))
}

/// `buildman logs`: prints a build's log, following it with -f.
pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    Ok(report(run_logs(args).await))
}

/// `buildman cancel`: cancels a build.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    Ok(report(run_cancel(args).await))
}

/// `buildman status`: shows one build.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    Ok(report(run_status(args).await))
}

/// Turns a command's outcome into its exit code, printing a failure on stderr.
fn report(outcome: anyhow::Result<u8>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Splits `namespace/repo`, refusing anything else.
pub fn parse_repository(s: &str) -> anyhow::Result<(String, String)> {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((ns, repo)) if valid(ns) && valid(repo) => Ok((ns.to_string(), repo.to_string())),
        _ => anyhow::bail!(
            "--repository must be namespace/repo (letters, digits, '-', '_', '.'), got {s:?}"
        ),
    }
}

/// What `submit` was asked to build from.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// An http(s) URL the worker downloads.
    Url(String),
    /// A git repository and the branch, tag or commit after its `#`, if any.
    Git {
        url: String,
        reference: Option<String>,
    },
    /// A local directory to pack.
    Dir(PathBuf),
    /// A local file to upload as-is.
    File(PathBuf),
}

/// Decides whether `path_or_url` is a git repository, an archive URL, a directory or a
/// file. A git repository is a `git://`, `ssh://` or `user@host:path` URL, or an http(s)
/// one whose path ends in `.git` or that names a ref after `#`.
pub fn classify_input(path_or_url: &str) -> anyhow::Result<Input> {
    let lower = path_or_url.to_ascii_lowercase();
    let (base, reference) = match path_or_url.split_once('#') {
        Some((base, r)) => (base, Some(r.to_string()).filter(|r| !r.is_empty())),
        None => (path_or_url, None),
    };
    let http = lower.starts_with("http://") || lower.starts_with("https://");
    let git = ["git://", "ssh://", "git+ssh://"]
        .iter()
        .any(|s| lower.starts_with(s))
        || buildman_core::build::is_scp_like(base)
        || (http && (base.ends_with(".git") || base.ends_with(".git/") || reference.is_some()));
    if git {
        return Ok(Input::Git {
            url: base.to_string(),
            reference,
        });
    }
    if http {
        return Ok(Input::Url(path_or_url.to_string()));
    }
    if let Some((scheme, _)) = path_or_url.split_once("://")
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        anyhow::bail!(
            "cannot build from {path_or_url:?}: give an http(s) archive URL, a git repository \
             (https://host/repo.git#ref, git://, ssh:// or user@host:path), or a local path"
        );
    }
    let path = Path::new(path_or_url);
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {path_or_url}"))?;
    if meta.is_dir() {
        Ok(Input::Dir(path.to_path_buf()))
    } else if meta.is_file() {
        Ok(Input::File(path.to_path_buf()))
    } else {
        anyhow::bail!("{path_or_url} is neither a directory nor a regular file")
    }
}

/// Says something on stderr, only for a person watching (stderr is a terminal).
fn note(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{msg}");
    }
}

/// The body of `submit`.
async fn run_submit(args: SubmitArgs) -> anyhow::Result<u8> {
    let (ns, repo) = parse_repository(&args.repository)?;
    let input = classify_input(&args.path_or_url)?;
    let client = ApiClient::from_args(&args.api)?;
    if args.ssh_key.is_some() && !matches!(input, Input::Git { .. }) {
        anyhow::bail!("--ssh-key goes with a git repository (ssh://... or user@host:path)");
    }
    let request = match input {
        Input::Url(url) => CreateBuild::archive_url(url),
        Input::Git { url, reference } => {
            let key = match &args.ssh_key {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read the ssh key {}", file.display()))?,
                ),
                None => None,
            };
            CreateBuild::git(url, reference, key)
        }
        Input::Dir(dir) => {
            let dockerfile =
                context::check_dir(&dir, args.dockerfile.as_deref(), args.context.as_deref())?;
            let packed = pack::pack_dir(&dir, &[dockerfile])?;
            note(&format!(
                "uploading {} ({} packed, {} left out by .dockerignore)",
                dir.display(),
                human_size(packed.bytes.len()),
                packed.excluded
            ));
            CreateBuild::uploaded(
                client
                    .upload(packed.bytes)
                    .await
                    .context("upload refused")?,
            )
        }
        Input::File(file) => {
            let bytes = tokio::fs::read(&file)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?;
            note(&format!(
                "uploading {} ({})",
                file.display(),
                human_size(bytes.len())
            ));
            CreateBuild::uploaded(client.upload(bytes).await.context("upload refused")?)
        }
    };
    let request = CreateBuild {
        docker_tags: (!args.tags.is_empty()).then_some(args.tags),
        dockerfile_path: args.dockerfile,
        context: args.context,
        ..request
    };
    let view = client.create_build(&ns, &repo, &request).await?;
    let output = Output::json(args.json);
    if args.json && args.no_follow {
        write_stdout(&format!("{}\n", serde_json::to_string(&view)?))?;
    } else if !args.json {
        write_stdout(&format!("build {} queued\n", view.id))?;
    }
    if args.no_follow {
        return Ok(EXIT_COMPLETE);
    }
    let id = view.id;
    tokio::select! {
        code = follow::follow_as(&client, view, output) => code,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("waiting for Ctrl-C")?;
            eprintln!(
                "\ninterrupted: build {id} goes on without this command; follow it with \
                 `buildman logs -f {id}`, cancel it with `buildman cancel {id}`"
            );
            Ok(EXIT_INTERRUPTED)
        }
    }
}

/// A byte count for people.
fn human_size(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// The build id a user gave on the command line.
fn parse_build_id(id: &str) -> anyhow::Result<BuildId> {
    id.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "{id:?} is not a build id; give the UUID `buildman submit` or `buildman builds` printed"
        )
    })
}

/// The body of `logs`.
async fn run_logs(args: LogsArgs) -> anyhow::Result<u8> {
    let id = parse_build_id(&args.id)?;
    let client = ApiClient::from_args(&args.api)?;
    let view = client.build(id).await?;
    let output = Output::json(args.json);
    if args.follow {
        follow::follow_as(&client, view, output).await
    } else {
        follow::print_log(&client, &view, output).await?;
        Ok(EXIT_COMPLETE)
    }
}

/// The body of `status`.
async fn run_status(args: StatusArgs) -> anyhow::Result<u8> {
    let id = parse_build_id(&args.id)?;
    let client = ApiClient::from_args(&args.api)?;
    let view = client.build(id).await?;
    if args.json {
        write_stdout(&format!("{}\n", serde_json::to_string(&view)?))?;
    } else {
        write_stdout(&status_text(&view))?;
    }
    Ok(EXIT_COMPLETE)
}

/// A build view for people: one `field: value` per line, empty fields left out.
pub fn status_text(view: &BuildView) -> String {
    let repository = format!("{}/{}", view.repository.namespace, view.repository.name);
    let git = (view.trigger_metadata.as_ref()).map(|g| format!("{}#{}", g.git_url, g.commit));
    let fields = [
        ("build", Some(view.id.to_string())),
        ("phase", Some(view.phase.to_string())),
        ("repository", Some(repository)),
        ("tags", Some(view.tags.join(", "))),
        ("queued", view.started.map(format_started)),
        ("source", git.or_else(|| view.archive_url.clone())),
        ("error", view.error.clone()),
        ("image", follow::image_references(view)),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.push_str(&format!("{name}: {value}\n"));
        }
    }
    out
}

/// The body of `cancel`.
async fn run_cancel(args: CancelArgs) -> anyhow::Result<u8> {
    let id = parse_build_id(&args.id)?;
    let client = ApiClient::from_args(&args.api)?;
    let view = client.build(id).await?;
    client.cancel(&view.repository, view.id).await?;
    if args.json {
        let view = client.build(id).await?;
        write_stdout(&format!("{}\n", serde_json::to_string(&view)?))?;
    } else {
        write_stdout(&format!("build {} cancelled\n", view.id))?;
    }
    Ok(EXIT_COMPLETE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn repository_must_be_namespace_slash_repo() {
        assert_eq!(
            parse_repository("acme/web").expect("valid"),
            ("acme".to_string(), "web".to_string())
        );
        assert_eq!(
            parse_repository("my_org/app.v2-x").expect("valid"),
            ("my_org".to_string(), "app.v2-x".to_string())
        );
        for bad in [
            "",
            "acme",
            "acme/",
            "/web",
            "a/b/c",
            "acme web/x",
            "acme/we b",
        ] {
            let err = parse_repository(bad).expect_err(bad);
            assert!(err.to_string().contains("namespace/repo"), "{err}");
        }
    }

    #[test]
    fn inputs_are_classified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("Dockerfile");
        std::fs::write(&file, "FROM scratch\n").expect("write");
        assert_eq!(
            classify_input("https://example.com/ctx.tar.gz").expect("url"),
            Input::Url("https://example.com/ctx.tar.gz".into())
        );
        assert_eq!(
            classify_input("HTTP://example.com/x").expect("url"),
            Input::Url("HTTP://example.com/x".into())
        );
        let dir_str = dir.path().to_string_lossy().into_owned();
        assert_eq!(
            classify_input(&dir_str).expect("dir"),
            Input::Dir(dir.path().to_path_buf())
        );
        assert_eq!(
            classify_input(&file.to_string_lossy()).expect("file"),
            Input::File(file.clone())
        );
        let git = |url: &str, reference: Option<&str>| Input::Git {
            url: url.into(),
            reference: reference.map(String::from),
        };
        for (given, url, reference) in [
            ("git://example.com/repo", "git://example.com/repo", None),
            ("https://h/o/r.git#v1", "https://h/o/r.git", Some("v1")),
            ("https://h/o/r.git", "https://h/o/r.git", None),
            ("https://h/o/r#main", "https://h/o/r", Some("main")),
            ("git@h:o/r.git#0123abc", "git@h:o/r.git", Some("0123abc")),
            (
                "ssh://git@h:22/o/r.git#x",
                "ssh://git@h:22/o/r.git",
                Some("x"),
            ),
        ] {
            assert_eq!(classify_input(given).expect(given), git(url, reference));
        }
        assert!(classify_input("file:///srv/repo").is_err());
        assert!(classify_input(&format!("{dir_str}/missing")).is_err());
    }

    #[test]
    fn build_ids_are_checked_before_asking() {
        let err = parse_build_id("a/b").expect_err("not a uuid");
        assert!(err.to_string().contains("not a build id"), "{err}");
        let id = "0b5c2f5e-8d0e-4c8f-9a57-3f1f2b7d9e10";
        assert_eq!(parse_build_id(id).expect("uuid").to_string(), id);
    }

    /// The commands parse as the lead's main.rs will wire them.
    #[derive(clap::Parser)]
    enum TestCli {
        Submit(SubmitArgs),
        Builds(BuildsArgs),
        Logs(LogsArgs),
        Cancel(CancelArgs),
    }

    #[test]
    fn arguments_parse() {
        let cli = TestCli::try_parse_from([
            "buildman",
            "submit",
            "./ctx",
            "-r",
            "acme/web",
            "-t",
            "a",
            "--tag",
            "b",
            "--dockerfile",
            "sub/Dockerfile",
            "--no-follow",
            "--token",
            "tok",
        ])
        .expect("parse");
        let TestCli::Submit(args) = cli else {
            panic!("not submit");
        };
        assert_eq!(args.tags, ["a", "b"]);
        assert_eq!(args.dockerfile.as_deref(), Some("sub/Dockerfile"));
        assert!(args.no_follow);
        assert!(!format!("{args:?}").contains("tok\""));
        let cli = TestCli::try_parse_from(["buildman", "logs", "-f", "id1"]).expect("parse");
        assert!(matches!(cli, TestCli::Logs(LogsArgs { follow: true, .. })));
        let cli = TestCli::try_parse_from(["buildman", "builds", "--json"]).expect("parse");
        assert!(matches!(
            cli,
            TestCli::Builds(BuildsArgs {
                json: true,
                limit: 20,
                ..
            })
        ));
        assert!(TestCli::try_parse_from(["buildman", "cancel", "id1"]).is_ok());
    }
}
