//! The dashboard's stylesheet and script, compiled into the binary: nothing is fetched from
//! elsewhere. Their paths carry a hash of their content, so a browser keeps them until the
//! binary changes them.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The stylesheet.
const CSS: &str = include_str!("static/app.css");
/// The script.
const JS: &str = include_str!("static/app.js");

/// Where the stylesheet is served (a constant route; the version is in the query).
pub const CSS_ROUTE: &str = "/ui/app.css";
/// Where the script is served.
pub const JS_ROUTE: &str = "/ui/app.js";

/// The stylesheet's URL, versioned by its content.
pub static CSS_PATH: LazyLock<String> = LazyLock::new(|| versioned(CSS_ROUTE, CSS));
/// The script's URL, versioned by its content.
pub static JS_PATH: LazyLock<String> = LazyLock::new(|| versioned(JS_ROUTE, JS));

fn versioned(route: &str, content: &str) -> String {
    let hash = hex::encode(&Sha256::digest(content.as_bytes())[..6]);
    format!("{route}?v={hash}")
}

/// The stylesheet, cacheable for a year (its URL changes with it).
pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// The script, cacheable for a year (its URL changes with it).
pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}
