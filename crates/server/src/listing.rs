//! The builds of every repository: `GET /api/v1/builds?namespace=&repository=&phase=&limit=`
//! answers a [`BuildList`], newest first (buildman's addition to Quay's API, which lists one
//! repository at a time). The dashboard's list shows the same query.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use buildman_api::{BuildList, BuildView, BuildsQuery, ViewPhase};
use buildman_core::Phase;
use buildman_core::build::valid_name;
use buildman_manager::Builds;
use buildman_store::BuildFilter;

use crate::rest::ApiError;

/// The handler of [`buildman_api::paths::ALL_BUILDS`].
pub(crate) async fn list(
    State(builds): State<Builds>,
    query: Result<Query<BuildsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BuildList>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    Ok(Json(BuildList {
        builds: find_views(&builds, &query).await?,
    }))
}

/// The views of the builds `query` asks for, newest first.
pub(crate) async fn find_views(
    builds: &Builds,
    query: &BuildsQuery,
) -> Result<Vec<BuildView>, ApiError> {
    let filter = filter(query).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let found = builds.find(&filter, query.limit()).await?;
    let mut views = Vec::with_capacity(found.len());
    for b in &found {
        views.push(BuildView::new(b, builds.is_expired(b).await?));
    }
    Ok(views)
}

/// The store's filter for a query; the error says which parameter is wrong and why.
fn filter(query: &BuildsQuery) -> Result<BuildFilter, String> {
    let name = |what: &str, value: &Option<String>| -> Result<Option<String>, String> {
        match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) if valid_name(v) => Ok(Some(v.to_string())),
            Some(v) => Err(format!(
                "invalid {what} {v:?}: use lower-case letters, digits, '.', '_' and '-'"
            )),
        }
    };
    let (phase, queued) = match query.phase()? {
        None => (None, None),
        Some(ViewPhase::Expired) => (Some(Phase::InternalError), Some(false)),
        Some(ViewPhase::Phase(Phase::InternalError)) => (Some(Phase::InternalError), Some(true)),
        Some(ViewPhase::Phase(p)) => (Some(p), None),
    };
    Ok(BuildFilter {
        namespace: name("namespace", &query.namespace)?,
        repository: name("repository", &query.repository)?,
        phase,
        queued,
    })
}
