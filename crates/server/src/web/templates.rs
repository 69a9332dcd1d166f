//! The dashboard's HTML, rendered on the server with maud (escaped by default). The page
//! shells hold no data: the data comes in fragments fetched with the API token
//! ([`rows`], [`summary`]), and the log streams in from the followed-log API.

use buildman_api::{BuildView, Stretch, ViewPhase, paths};
use buildman_core::Phase;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::assets;

/// A page around `content`; `page` tells the script what to do (`list`, `build`, `login`),
/// `build` which build a build page shows.
fn layout(title: &str, page: &str, build: Option<&str>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · buildman" }
                // No icon request: nothing is fetched that the page does not use.
                link rel="icon" href="data:,";
                link rel="stylesheet" href=(assets::CSS_PATH.as_str());
                script src=(assets::JS_PATH.as_str()) defer {}
            }
            body data-page=(page) data-build=[build] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "buildman" }
                    nav aria-label="Main" {
                        a href="/" { "Builds" }
                        button.link #logout type="button" hidden { "Log out" }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

/// The builds list's shell: the filters and an empty table the script fills.
pub fn list_page() -> Markup {
    let phases = Phase::ALL
        .iter()
        .map(|p| p.as_str())
        .chain([ViewPhase::Expired.as_str()]);
    layout(
        "Builds",
        "list",
        None,
        html! {
            h1 { "Builds" }
            form #filters role="search" aria-label="Filter builds" {
                label { "Namespace" input name="namespace" type="text" autocomplete="off" spellcheck="false"; }
                label { "Repository" input name="repository" type="text" autocomplete="off" spellcheck="false"; }
                label { "Phase"
                    select name="phase" {
                        option value="" { "any" }
                        @for p in phases { option value=(p) { (p) } }
                    }
                }
            }
            p #list-status role="status" { "Loading…" }
            div.table-wrap {
                table.builds {
                    caption.visually-hidden { "Builds of every repository, newest first" }
                    thead { tr {
                        @for h in COLUMNS { th scope="col" { (h) } }
                    } }
                    tbody #rows {}
                }
            }
        },
    )
}

/// The list's column headings, also each cell's label on narrow screens.
const COLUMNS: [&str; 8] = [
    "Phase",
    "Repository",
    "Tags",
    "Submitted",
    "Queue wait",
    "Duration",
    "Executor",
    "Attempt",
];

/// The rows of the builds list.
pub fn rows(views: &[BuildView], now: DateTime<Utc>) -> Markup {
    html! {
        @if views.is_empty() {
            tr { td colspan=(COLUMNS.len()) { "No builds match." } }
        }
        @for v in views {
            tr data-id=(v.id) {
                td data-label=(COLUMNS[0]) { (phase_badge(v.phase)) }
                td data-label=(COLUMNS[1]) {
                    a href=(build_page_path(v)) { (v.repository.namespace) "/" (v.repository.name) }
                    span.sub { (v.display_name) }
                }
                td data-label=(COLUMNS[2]) { (v.tags.join(", ")) }
                td data-label=(COLUMNS[3]) { (time(v.started)) }
                td data-label=(COLUMNS[4]) { (stretch(v.queue_wait(), now)) }
                td data-label=(COLUMNS[5]) { (stretch(v.duration(), now)) }
                td data-label=(COLUMNS[6]) { (v.executor.as_deref().unwrap_or("—")) }
                td data-label=(COLUMNS[7]) { @if v.attempt == 0 { "—" } @else { (v.attempt) } }
            }
        }
    }
}

/// The build page's shell: the summary, timeline and log the script fills.
pub fn build_page(id: &str) -> Markup {
    layout(
        "Build",
        "build",
        Some(id),
        html! {
            p { a href="/" { "← All builds" } }
            section #summary aria-live="polite" { p { "Loading…" } }
            section aria-labelledby="timeline-h" {
                h2 #timeline-h { "Phases" }
                ol #timeline .timeline {}
            }
            section aria-labelledby="log-h" {
                div.log-head {
                    h2 #log-h { "Log" }
                    span #log-status role="status" {}
                    button #jump type="button" hidden { "Jump to the latest line" }
                }
                div #log .log role="log" aria-live="off" aria-labelledby="log-h" tabindex="0" {}
            }
        },
    )
}

/// The build page's summary: what, where it stands, why it failed, and the cancel button.
pub fn summary(v: &BuildView, now: DateTime<Utc>) -> Markup {
    let cancellable = matches!(
        v.phase,
        ViewPhase::Phase(
            Phase::Waiting
                | Phase::BuildScheduled
                | Phase::Unpacking
                | Phase::Pulling
                | Phase::Building
        )
    );
    let (namespace, name) = (&v.repository.namespace, &v.repository.name);
    let cancel = paths::build(namespace, name, v.id);
    html! {
        div.summary-head data-logs=(paths::build_logs(namespace, name, v.id)) {
            h1 { (v.repository.namespace) "/" (v.repository.name) " " (phase_badge(v.phase)) }
            @if cancellable {
                button.danger #cancel type="button" data-url=(cancel) { "Cancel build" }
            }
        }
        @if let Some(error) = v.error.as_deref().filter(|e| !e.trim().is_empty()) {
            div.error-summary role="alert" {
                h2 { "Why it failed" }
                p { (error) }
            }
        }
        dl.facts {
            dt { "Build" } dd { code { (v.id) } " (" (v.display_name) ")" }
            dt { "Tags" } dd { (v.tags.join(", ")) }
            dt { "Submitted" } dd { (time(v.started)) }
            dt { "Queue wait" } dd { (stretch(v.queue_wait(), now)) }
            dt { "Duration" } dd { (stretch(v.duration(), now)) }
            dt { "Executor" } dd { (v.executor.as_deref().unwrap_or("—")) }
            dt { "Attempt" } dd { @if v.attempt == 0 { "not started" } @else { (v.attempt) } }
            @if let Some(location) = &v.result_location { dt { "Result" } dd { code { (location) } } }
        }
    }
}

/// The login page: the token goes into the browser's storage, never into a URL.
pub fn login_page() -> Markup {
    layout(
        "Log in",
        "login",
        None,
        html! {
            h1 { "Log in" }
            form #login {
                p {
                    label for="token" { "API token" }
                    input #token name="token" type="password" required autocomplete="off" spellcheck="false";
                }
                p.hint { "The admin token is in the manager's data dir (" code { "admin-token" } "), or one of BUILDMAN_API_TOKENS." }
                p { label.inline { input #remember type="checkbox"; " Remember on this device" } }
                p { button type="submit" { "Log in" } }
                p #login-error .error-text role="alert" {}
            }
        },
    )
}

/// A page saying a build page's address names no build.
pub fn not_found(what: &str) -> Markup {
    layout(
        "Not found",
        "none",
        None,
        html! { h1 { "Not found" } p { (what) } p { a href="/" { "All builds" } } },
    )
}

/// Where a build's page is.
fn build_page_path(v: &BuildView) -> String {
    format!("/builds/{}", v.id)
}

/// A phase as a badge: colour and text, so colour is never the only cue.
fn phase_badge(phase: ViewPhase) -> Markup {
    let kind = match phase {
        ViewPhase::Phase(Phase::Complete) => "ok",
        ViewPhase::Phase(Phase::Error) => "failed",
        ViewPhase::Phase(Phase::InternalError) | ViewPhase::Expired => "trouble",
        ViewPhase::Phase(Phase::Cancelled) | ViewPhase::Phase(Phase::Waiting) => "idle",
        ViewPhase::Phase(_) => "running",
    };
    html! { span class={"phase phase-" (kind)} data-phase=(phase.as_str()) { (phase.as_str()) } }
}

/// A time, readable and machine-readable.
fn time(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } },
        None => html! { "—" },
    }
}

/// A span of the build's life; while it still grows, the script counts it on from
/// `data-since`.
fn stretch(span: Option<Stretch>, now: DateTime<Utc>) -> Markup {
    match span {
        Some(s) if s.to.is_none() => {
            html! { span.ticking data-since=(s.from.timestamp_millis()) { (s.text(now)) } }
        }
        Some(s) => html! { (s.text(now)) },
        None => html! { "—" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildman_core::{BuildId, BuildSource, NewBuild};

    #[test]
    fn names_are_escaped_and_cancel_is_offered_only_while_cancellable() {
        let created = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut build = NewBuild {
            namespace: "acme".into(),
            repository: "web".into(),
            source: BuildSource::Uploaded {
                file_id: "f".into(),
            },
            tags: vec!["<b>v1</b>".into()],
            context: "/".into(),
            dockerfile_path: "/Dockerfile".into(),
            display_name: "x".into(),
            manual_user: None,
            pull_robot: None,
        }
        .into_build(BuildId::new(), created);
        build.error = Some("<script>".into());
        let html = summary(&BuildView::new(&build, false), created).into_string();
        assert!(
            html.contains("&lt;script&gt;") && !html.contains("<script>"),
            "{html}"
        );
        assert!(html.contains("Cancel build"));
        build.phase = Phase::Pushing;
        let html = summary(&BuildView::new(&build, false), created).into_string();
        assert!(!html.contains("Cancel build"));
        let rows = rows(&[BuildView::new(&build, false)], created).into_string();
        assert!(rows.contains("&lt;b&gt;v1&lt;/b&gt;"), "{rows}");
    }
}
