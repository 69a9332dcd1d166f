//! `buildman builds`: the newest builds of every repository (the API's `/api/v1/builds`),
//! filtered by namespace or repository and phase, as a table or JSON lines.

use buildman_api::{BuildView, BuildsQuery, ListQuery};
use chrono::{DateTime, Utc};

use super::api::ApiClient;
use super::follow::{EXIT_COMPLETE, write_stdout};
use super::{ApiArgs, parse_repository};

/// List builds of every repository, newest first.
///
/// The table's WAIT is the queue wait (queued → first worker started) and DURATION the
/// time since then, to the final phase; both still count while they last.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildsArgs {
    /// Only builds of this namespace (`acme`) or repository (`acme/web`).
    #[arg(short = 'r', long)]
    pub repository: Option<String>,
    /// Only builds in this phase: waiting, build-scheduled, unpacking, pulling, building,
    /// pushing, complete, error, internalerror (to be retried), expired, cancelled.
    #[arg(long)]
    pub phase: Option<String>,
    /// How many builds to show at most.
    #[arg(long, default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(ListQuery::MAX_LIMIT)))]
    pub limit: u32,
    /// Print one JSON build view per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How to reach the manager.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The body of `builds`.
pub(super) async fn run_builds(args: BuildsArgs) -> anyhow::Result<u8> {
    let query = query(&args)?;
    let client = ApiClient::from_args(&args.api)?;
    let list = client.find_builds(&query).await?;
    if args.json {
        let mut out = String::new();
        for build in &list.builds {
            out.push_str(&serde_json::to_string(build)?);
            out.push('\n');
        }
        write_stdout(&out)?;
    } else {
        write_stdout(&builds_table(&list.builds, Utc::now()))?;
    }
    Ok(EXIT_COMPLETE)
}

/// The API query of the arguments, checked before anything is asked.
fn query(args: &BuildsArgs) -> anyhow::Result<BuildsQuery> {
    let (namespace, repository) = match args.repository.as_deref() {
        None => (None, None),
        Some(r) if r.contains('/') => {
            let (ns, repo) = parse_repository(r)?;
            (Some(ns), Some(repo))
        }
        Some(ns) => {
            // A namespace alone: checked as the namespace half of `ns/x`.
            parse_repository(&format!("{ns}/x")).map_err(|_| {
                anyhow::anyhow!(
                    "--repository must be a namespace or namespace/repo (letters, digits, '-', \
                     '_', '.'), got {ns:?}"
                )
            })?;
            (Some(ns.to_string()), None)
        }
    };
    let query = BuildsQuery {
        namespace,
        repository,
        phase: args.phase.clone(),
        limit: Some(args.limit),
    };
    query.phase().map_err(|e| anyhow::anyhow!("--phase: {e}"))?;
    Ok(query)
}

/// Renders build views as an aligned table; spans still growing count up to `now`.
pub fn builds_table(views: &[BuildView], now: DateTime<Utc>) -> String {
    const HEADER: [&str; 7] = [
        "ID",
        "PHASE",
        "REPOSITORY",
        "TAGS",
        "SUBMITTED",
        "WAIT",
        "DURATION",
    ];
    let text = |s: Option<buildman_api::Stretch>| s.map(|s| s.text(now)).unwrap_or("-".into());
    let rows: Vec<[String; 7]> = std::iter::once(HEADER.map(String::from))
        .chain(views.iter().map(|v| {
            [
                v.id.to_string(),
                v.phase.to_string(),
                format!("{}/{}", v.repository.namespace, v.repository.name),
                v.tags.join(","),
                v.started.map(format_started).unwrap_or_default(),
                text(v.queue_wait()),
                text(v.duration()),
            ]
        }))
        .collect();
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A build's submission as local `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn format_started(started: DateTime<Utc>) -> String {
    started
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BuildsArgs,
    }

    fn args(argv: &[&str]) -> Result<BuildsArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("builds").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn the_table_has_a_header_aligned_rows_and_both_spans() {
        let id = "0b5c2f5e-8d0e-4c8f-9a57-3f1f2b7d9e10";
        let at = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time");
        let view: BuildView = serde_json::from_value(serde_json::json!({
            "id": id, "phase": "building", "tags": ["latest", "v1"],
            "started": at(0).to_rfc2822(), "scheduled_at": at(4),
            "repository": {"namespace": "acme", "name": "web"}
        }))
        .expect("view");
        let table = builds_table(&[view], at(130));
        let lines: Vec<&str> = table.lines().collect();
        let submitted = format_started(at(0));
        assert_eq!(
            lines,
            [
                format!(
                    "{:36}  PHASE     REPOSITORY  TAGS       {:19}  WAIT  DURATION",
                    "ID", "SUBMITTED"
                ),
                format!("{id}  building  acme/web    latest,v1  {submitted}  4s    2m 06s"),
            ]
        );
    }

    #[test]
    fn filters_are_checked_before_asking() {
        let q = query(&args(&["-r", "acme", "--phase", "error"]).expect("parse")).expect("query");
        assert_eq!(
            (q.namespace.as_deref(), q.repository, q.phase.as_deref()),
            (Some("acme"), None, Some("error"))
        );
        let q = query(&args(&["-r", "acme/web"]).expect("parse")).expect("query");
        assert_eq!(
            (q.namespace.as_deref(), q.repository.as_deref(), q.limit),
            (Some("acme"), Some("web"), Some(20))
        );
        let err = query(&args(&["--phase", "runing"]).expect("parse")).expect_err("phase");
        assert!(err.to_string().contains("use one of waiting"), "{err}");
        let err = query(&args(&["-r", "a b"]).expect("parse")).expect_err("name");
        assert!(
            err.to_string().contains("namespace or namespace/repo"),
            "{err}"
        );
        let err = args(&["--limit", "0"]).expect_err("limit");
        assert!(err.to_string().contains("0"), "{err}");
    }
}
