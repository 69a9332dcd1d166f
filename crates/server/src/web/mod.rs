//! The web dashboard, served on the API's port: a list of the builds of every repository
//! that updates itself, and a page per build with its phase timeline, its log streaming
//! live and a cancel button.
//!
//! The pages ([`pages`]) are shells without data, open to anyone: a browser cannot send
//! the API's bearer token when it navigates. Their script keeps the token in the browser's
//! storage (the login page puts it there; it never goes into a URL) and fetches everything
//! else with it: the HTML fragments rendered here ([`fragments`], behind the API's
//! authentication), the followed log and the cancel through the REST API.

mod assets;
mod templates;

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use buildman_api::{BuildView, BuildsQuery};
use buildman_core::BuildId;
use buildman_manager::Builds;
use maud::Markup;
use sha2::{Digest, Sha256};

use crate::listing::find_views;
use crate::rest::ApiError;

/// How long a list request waits for a change before it answers "not modified".
const LONG_POLL: Duration = Duration::from_secs(25);
/// How often a waiting list request reads again, for changes other managers made.
const RECHECK: Duration = Duration::from_secs(2);

/// What a page may load: only this server's script, styles and API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The pages and their assets, open to anyone (they hold no data).
pub fn pages<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { page(templates::list_page()) }))
        .route("/login", get(|| async { page(templates::login_page()) }))
        .route("/builds/{id}", get(build_page))
        .route(assets::CSS_ROUTE, get(assets::css))
        .route(assets::JS_ROUTE, get(assets::js))
}

/// The HTML fragments the pages fetch, to merge under the API's authentication.
pub fn fragments<S: Clone + Send + Sync + 'static>(builds: Builds) -> Router<S> {
    Router::new()
        .route("/ui/fragments/builds", get(list_rows))
        .route("/ui/fragments/builds/{id}", get(build_summary))
        .with_state(builds)
}

/// A page, with the headers that keep it to itself.
fn page(markup: Markup) -> Response {
    let mut response = Html(markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn build_page(Path(id): Path<String>) -> Response {
    match id.parse::<BuildId>() {
        Ok(id) => page(templates::build_page(&id.to_string())),
        Err(_) => {
            let text = format!("{id:?} is not a build id.");
            (StatusCode::NOT_FOUND, page(templates::not_found(&text))).into_response()
        }
    }
}

/// The list's rows. With `If-None-Match` naming the rows the page shows, waits (up to
/// [`LONG_POLL`]) until they change and answers 304 if they did not: the page asks again
/// at once, so the list follows every change without reloading.
async fn list_rows(
    State(builds): State<Builds>,
    query: Result<Query<BuildsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    let shown = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut changes = builds.changes();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        changes.borrow_and_update();
        let views = find_views(&builds, &query).await?;
        let etag = etag(&views);
        if shown.as_deref() != Some(etag.as_str()) {
            let html = templates::rows(&views, chrono::Utc::now()).into_string();
            return Ok(fragment(html, Some(&etag)));
        }
        let waited = tokio::select! {
            _ = changes.changed() => true,
            () = tokio::time::sleep(RECHECK) => true,
            () = tokio::time::sleep_until(deadline) => false,
        };
        if !waited || tokio::time::Instant::now() >= deadline {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        }
    }
}

/// A build page's summary.
async fn build_summary(
    State(builds): State<Builds>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("build {id:?} not found"));
    let build_id: BuildId = id.parse().map_err(|_| not_found())?;
    let build = builds.get(build_id).await?.ok_or_else(not_found)?;
    let view = BuildView::new(&build, builds.is_expired(&build).await?);
    let html = templates::summary(&view, chrono::Utc::now()).into_string();
    Ok(fragment(html, None))
}

/// An HTML fragment answer, never cached (it answers a token holder only).
fn fragment(html: String, etag: Option<&str>) -> Response {
    let mut response = Html(html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(header::ETAG, tag);
    }
    response
}

/// A tag of what the rows show: it changes when any shown build changes.
fn etag(views: &[BuildView]) -> String {
    let json = serde_json::to_vec(views).unwrap_or_default();
    format!("\"{}\"", hex::encode(&Sha256::digest(&json)[..12]))
}
