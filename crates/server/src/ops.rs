//! What operators and their tools ask of a running manager, without an API token: the
//! Prometheus metrics ([`paths::METRICS`]), liveness ([`paths::HEALTHZ`]) and readiness
//! ([`paths::READYZ`]). [`router`] serves them on the REST API's listener and on a metrics
//! listener of their own; [`timing`] times the REST API's and the worker service's requests.

pub mod timing;

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use buildman_api::{ErrorBody, paths};
use buildman_manager::Manager;
use buildman_manager::metrics::CONTENT_TYPE;

/// How long the store and the orchestrator each have to answer a readiness check.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

use crate::Route;

/// The routes and their handlers; the router is made of this list.
fn table() -> Vec<(Route, MethodRouter<Manager>)> {
    vec![
        (Route::public("GET", paths::METRICS), get(metrics)),
        (
            Route::public("GET", paths::HEALTHZ),
            get(|| async { "ok\n" }),
        ),
        (Route::public("GET", paths::READYZ), get(readyz)),
    ]
}

/// The routes [`router`] serves.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(manager: Manager) -> Router {
    let routes = table().into_iter();
    routes
        .fold(Router::new(), |router, (route, handler)| {
            router.route(&route.path, handler)
        })
        .with_state(manager)
}

async fn metrics(State(manager): State<Manager>) -> Response {
    let text = manager.metrics_text();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// 200 when ready; 503 with what is not (the store, the orchestrator, a drain).
async fn readyz(State(manager): State<Manager>) -> Response {
    match manager.readiness(READY_TIMEOUT).await {
        Ok(()) => "ready\n".into_response(),
        Err(why) => {
            tracing::debug!(%why, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody::new(why))).into_response()
        }
    }
}
