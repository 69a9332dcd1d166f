//! Printing a build's log and following a build until it is over for good: through the
//! followed-log stream, or by polling a server that has none.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use buildman_api::{BuildView, RepositoryRef, ViewPhase};
use buildman_core::{BuildId, LogEntry, LogType, Phase};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use buildman_api::LogEvent;
use futures::StreamExt as _;

use super::api::{ApiClient, ApiError, LogEvents};

/// Exit code: the build completed.
pub const EXIT_COMPLETE: u8 = 0;
/// Exit code: the command itself failed (bad arguments, refused upload, manager unreachable).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the build failed (phase `error`).
pub const EXIT_BUILD_ERROR: u8 = 10;
/// Exit code: the build hit an internal error or expired.
pub const EXIT_INTERNAL_ERROR: u8 = 11;
/// Exit code: the build was cancelled.
pub const EXIT_CANCELLED: u8 = 12;

/// How often the build view and its log are polled while following.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long the manager may stay unreachable (or answer 5xx) before following gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// A followed log that says nothing this long (the server sends a keep-alive every 15 s)
/// is taken as broken and followed again.
const STREAM_IDLE: Duration = Duration::from_secs(45);

/// Exit code: `submit` was interrupted (Ctrl-C); the build goes on (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// How log entries and the final build view are printed on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Log lines as text (see [`format_entry`]).
    Text,
    /// One JSON object per line: each log entry as the API answers it (`message`, `type`,
    /// `data`); when following, the final build view last.
    Json,
}

impl Output {
    /// `--json` or not.
    pub fn json(json: bool) -> Self {
        if json { Output::Json } else { Output::Text }
    }

    /// One log entry as printed.
    pub fn render(self, entry: &LogEntry) -> anyhow::Result<String> {
        Ok(match self {
            Output::Text => format_entry(entry),
            Output::Json => format!("{}\n", serde_json::to_string(entry)?),
        })
    }
}

/// Where a complete build's image went, each tag as a reference
/// (`registry/ns/repo:tag, ...` or `oci:/path:tag, ...`); `None` when the view does not say.
pub fn image_references(view: &BuildView) -> Option<String> {
    let location = view.result_location.as_deref().filter(|l| !l.is_empty())?;
    let refs: Vec<String> = (view.tags.iter())
        .map(|t| format!("{location}:{t}"))
        .collect();
    Some(refs.join(", "))
}

/// Says how a build ended on stderr, `build <id> <phase>` with its error or where its image
/// went; with [`Output::Json`] the final view also goes to stdout.
pub fn finish(view: &BuildView, output: Output) -> anyhow::Result<()> {
    let mut summary = format!("build {} {}", view.id, view.phase);
    if let Some(msg) = view.error.as_deref().filter(|m| !m.trim().is_empty()) {
        summary.push_str(": ");
        summary.push_str(msg.trim());
    } else if view.phase == ViewPhase::Phase(Phase::Complete)
        && let Some(image) = image_references(view)
    {
        summary.push_str(": ");
        summary.push_str(&image);
    }
    eprintln!("{summary}");
    if output == Output::Json {
        write_stdout(&format!("{}\n", serde_json::to_string(view)?))?;
    }
    Ok(())
}

/// The exit code for a final phase; `None` while the build is still going.
pub fn final_exit_code(phase: ViewPhase) -> Option<u8> {
    match phase {
        ViewPhase::Phase(Phase::Complete) => Some(EXIT_COMPLETE),
        ViewPhase::Phase(Phase::Error) => Some(EXIT_BUILD_ERROR),
        ViewPhase::Phase(Phase::InternalError) | ViewPhase::Expired => Some(EXIT_INTERNAL_ERROR),
        ViewPhase::Phase(Phase::Cancelled) => Some(EXIT_CANCELLED),
        ViewPhase::Phase(_) => None,
    }
}

/// Renders one log entry as the text to print, always ending in exactly the entry's own
/// newline (one is added only when the message does not already end in one). A chunk of an
/// over-long line is printed as it is, so that it joins the next entry into one line.
pub fn format_entry(entry: &LogEntry) -> String {
    if entry.continues() {
        return entry.message.clone();
    }
    let mut text = match entry.kind {
        Some(LogType::Phase) => format!("==> {}", entry.message.trim_end()),
        Some(LogType::Error) => format!("error: {}", entry.message),
        _ => entry.message.clone(),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Writes to stdout; a closed pipe (`buildman logs ID | head`) is not an error.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// Reads a build's log from entry `*cursor` on, page after page, handing each new entry to
/// `sink` and advancing `*cursor` past it.
pub async fn drain_logs(
    client: &ApiClient,
    repo: &RepositoryRef,
    id: BuildId,
    cursor: &mut u64,
    mut sink: impl FnMut(&LogEntry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    loop {
        let page = client.logs_page(repo, id, *cursor).await?;
        let mut advanced = false;
        for (index, entry) in (page.start..).zip(page.logs.iter()) {
            // A manager that ignores `start` must not make us print entries twice.
            if index >= *cursor {
                sink(entry)?;
                *cursor = index + 1;
                advanced = true;
            }
        }
        if !advanced || *cursor >= page.total {
            return Ok(());
        }
    }
}

/// A spinner on stderr showing the phase and elapsed time, only while stderr is a terminal.
struct Spinner {
    /// The bar; `None` when stderr is not a terminal.
    bar: Option<ProgressBar>,
    /// The build id shown in the message.
    id: BuildId,
}

impl Spinner {
    /// Starts a spinner for `view` (its elapsed time counted from the build's start).
    fn new(view: &BuildView) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_style(style)
                .with_elapsed(elapsed_since(view.started));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let spinner = Self { bar, id: view.id };
        spinner.set_phase(view.phase);
        spinner
    }

    /// Shows the current phase.
    fn set_phase(&self, phase: ViewPhase) {
        self.set_message(format!("build {} {phase}", self.id));
    }

    /// Shows any message.
    fn set_message(&self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
        }
    }

    /// Says something on stderr with the spinner out of the way.
    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// Prints to stdout with the spinner out of the way.
    fn print(&self, text: &str) -> anyhow::Result<()> {
        match &self.bar {
            Some(bar) => bar.suspend(|| write_stdout(text)),
            None => write_stdout(text),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Time since the build started, zero when unknown or in the future.
fn elapsed_since(started: Option<chrono::DateTime<chrono::Utc>>) -> Duration {
    started
        .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
        .unwrap_or_default()
}

/// Prints a build's whole log as it is now.
pub async fn print_log(client: &ApiClient, view: &BuildView, output: Output) -> anyhow::Result<()> {
    let mut cursor = 0;
    drain_logs(client, &view.repository, view.id, &mut cursor, |entry| {
        write_stdout(&output.render(entry)?)
    })
    .await
}

/// Follows a build to its end, printing each log entry once, and returns the exit code
/// for its final phase. Streams the log (`?follow=1`), resuming from the next entry after
/// any break; polls a server that does not stream.
pub async fn follow(client: &ApiClient, initial: BuildView) -> anyhow::Result<u8> {
    follow_as(client, initial, Output::Text).await
}

/// [`follow`], printing as `output` says.
pub async fn follow_as(
    client: &ApiClient,
    initial: BuildView,
    output: Output,
) -> anyhow::Result<u8> {
    let spinner = Spinner::new(&initial);
    let (id, repo) = (initial.id, initial.repository.clone());
    let mut cursor = 0;
    let mut failing_since: Option<Instant> = None;
    loop {
        let outcome = match client.follow_logs(&repo, id, cursor).await {
            Ok(Some(events)) => stream(events, &mut cursor, &spinner, output).await,
            Ok(None) => return poll_to_end(client, initial, cursor, spinner, output).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Some(view)) => return end(spinner, &view, output),
            // Dropped for lagging, or the stream broke: resume from the next entry.
            Ok(None) => failing_since = None,
            Err(err) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !err.is_transient() || since.elapsed() >= GIVE_UP_AFTER {
                    return Err(err.into());
                }
                spinner.set_message(format!("build {id}: {err}; reconnecting"));
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Prints a followed log's entries from `*cursor` on until the stream ends: the view of
/// the ended build after `end`, `None` when the stream stopped before (resume then).
async fn stream(
    mut events: LogEvents,
    cursor: &mut u64,
    spinner: &Spinner,
    output: Output,
) -> Result<Option<BuildView>, ApiError> {
    loop {
        let next = tokio::time::timeout(STREAM_IDLE, events.next()).await;
        let Ok(Some(event)) = next else {
            return Ok(None);
        };
        match event? {
            LogEvent::Entry(e) if e.index >= *cursor => {
                spinner
                    .print(
                        &output
                            .render(&e.entry)
                            .map_err(|err| ApiError::Decode(err.to_string()))?,
                    )
                    .map_err(|err| ApiError::Decode(err.to_string()))?;
                *cursor = e.index + 1;
            }
            LogEvent::Entry(_) => {}
            LogEvent::Phase(p) => spinner.set_phase(p.phase),
            LogEvent::Retry(r) => {
                let at = r.at.map_or(String::new(), |t| {
                    format!(" at {}", t.with_timezone(&chrono::Local).format("%H:%M:%S"))
                });
                spinner.note(&format!(
                    "the build is retried: attempt {} runs{at}",
                    r.attempt
                ));
            }
            LogEvent::End(end) => return Ok(Some(end.build)),
            LogEvent::Lagged(l) => {
                *cursor = (*cursor).max(l.next);
                return Ok(None);
            }
        }
    }
}

/// Clears the spinner, prints how the build ended, and gives its exit code.
fn end(spinner: Spinner, view: &BuildView, output: Output) -> anyhow::Result<u8> {
    drop(spinner);
    finish(view, output)?;
    Ok(final_exit_code(view.phase).unwrap_or(EXIT_FAILED))
}

/// Polls a build and its log every 500 ms, printing new entries from `cursor` on, until the
/// build is over for good (an `internalerror` is retried; `expired` is over).
async fn poll_to_end(
    client: &ApiClient,
    initial: BuildView,
    mut cursor: u64,
    spinner: Spinner,
    output: Output,
) -> anyhow::Result<u8> {
    let id = initial.id;
    let mut view = initial;
    let mut failing_since: Option<Instant> = None;
    loop {
        match poll(client, id, &mut view, &mut cursor, &spinner, output).await {
            Ok(()) => failing_since = None,
            Err(err) => {
                let transient = err
                    .downcast_ref::<ApiError>()
                    .is_some_and(ApiError::is_transient);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !transient || since.elapsed() >= GIVE_UP_AFTER {
                    return Err(err);
                }
                spinner.set_message(format!("build {id}: {err:#}; retrying"));
            }
        }
        if view.phase != ViewPhase::Phase(Phase::InternalError)
            && final_exit_code(view.phase).is_some()
        {
            return end(spinner, &view, output);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One round of following: the build view first, then the log, so that a final phase seen
/// here comes with every log entry written before it.
async fn poll(
    client: &ApiClient,
    id: BuildId,
    view: &mut BuildView,
    cursor: &mut u64,
    spinner: &Spinner,
    output: Output,
) -> anyhow::Result<()> {
    let fresh = client.build(id).await?;
    if fresh.phase != view.phase {
        spinner.set_phase(fresh.phase);
    }
    *view = fresh;
    drain_logs(client, &view.repository, id, cursor, |entry| {
        spinner.print(&output.render(entry)?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Option<LogType>, message: &str) -> LogEntry {
        LogEntry {
            message: message.into(),
            kind,
            data: None,
        }
    }

    #[test]
    fn formats_each_kind_of_entry() {
        assert_eq!(
            format_entry(&entry(Some(LogType::Phase), "building")),
            "==> building\n"
        );
        assert_eq!(
            format_entry(&entry(Some(LogType::Command), "Step 1/2 : FROM alpine")),
            "Step 1/2 : FROM alpine\n"
        );
        assert_eq!(
            format_entry(&entry(Some(LogType::Error), "pull failed")),
            "error: pull failed\n"
        );
        assert_eq!(format_entry(&entry(None, "output line")), "output line\n");
        assert_eq!(
            format_entry(&entry(None, "ends in newline\n")),
            "ends in newline\n"
        );
        assert_eq!(format_entry(&entry(None, "two\nlines\n")), "two\nlines\n");
        assert_eq!(format_entry(&entry(None, "")), "\n");
    }

    #[test]
    fn continued_chunks_join_the_next_entry() {
        let chunk = |m: &str| LogEntry {
            data: Some(serde_json::json!({"continues": true})),
            ..entry(None, m)
        };
        let printed: String = [
            chunk("ab"),
            chunk("cd"),
            entry(None, "ef\n"),
            entry(None, "g"),
        ]
        .iter()
        .map(format_entry)
        .collect();
        assert_eq!(printed, "abcdef\ng\n");
        let phase = LogEntry {
            data: Some(serde_json::json!({"datetime": "now"})),
            ..entry(Some(LogType::Phase), "building")
        };
        assert_eq!(format_entry(&phase), "==> building\n");
    }

    #[test]
    fn final_phases_map_to_exit_codes() {
        let code = |name: &str| final_exit_code(name.parse().expect("a phase"));
        assert_eq!(code("complete"), Some(0));
        assert_eq!(code("error"), Some(10));
        assert_eq!(code("internalerror"), Some(11));
        assert_eq!(code("expired"), Some(11));
        assert_eq!(code("cancelled"), Some(12));
        for phase in [
            "waiting",
            "build-scheduled",
            "unpacking",
            "pulling",
            "building",
            "pushing",
        ] {
            assert_eq!(code(phase), None, "{phase}");
        }
    }

    #[test]
    fn elapsed_since_counts_from_the_start() {
        assert_eq!(elapsed_since(None), Duration::ZERO);
        let in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
        assert_eq!(elapsed_since(Some(in_an_hour)), Duration::ZERO);
        let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        let elapsed = elapsed_since(Some(an_hour_ago));
        assert!(elapsed >= Duration::from_secs(3599) && elapsed < Duration::from_secs(3700));
    }
}
