//! The REST API, in the shapes of Quay's builds API (see the reference's "The builds API"),
//! plus the file drop for uploaded contexts. The bodies, queries and paths are
//! `buildman-api`'s; this module only routes, authenticates and maps errors to statuses,
//! and [`limits`] bounds what one client can send.

mod limits;

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use buildman_api::{
    BuildList, BuildView, CANCELLED, CreateBuild, ErrorBody, FileDrop, ListQuery, LogPage,
    LogsQuery, paths,
};
use buildman_contexts::ContextError;
use buildman_core::build::valid_name;
use buildman_core::config::Limits;
use buildman_core::{Build, BuildId};
use buildman_manager::{Builds, ManagerError};
use buildman_store::StoreError;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{Route, openapi};

/// An error answer: a status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody::new(self.1))).into_response()
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::Invalid(_)
            | ManagerError::Conflict(_)
            | ManagerError::Store(StoreError::Unsupported(_)) => StatusCode::BAD_REQUEST,
            ManagerError::NotFound(_) | ManagerError::Store(StoreError::NotFound(_)) => {
                StatusCode::NOT_FOUND
            }
            ManagerError::Store(StoreError::QueueFull { .. }) => StatusCode::TOO_MANY_REQUESTS,
            ManagerError::Upload(u) => match u {
                ContextError::MalformedId | ContextError::Interrupted(_) => StatusCode::BAD_REQUEST,
                ContextError::AlreadyUploaded => StatusCode::CONFLICT,
                ContextError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ContextError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ManagerError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code.is_server_error() {
            tracing::error!(error = %e, "API request failed");
        }
        ApiError(code, e.to_string())
    }
}

/// A path parameter, refused with a JSON error naming the problem.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| ApiPath(t))
            .map_err(|e| bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// A query string, refused with a JSON error naming the problem.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| ApiQuery(t))
            .map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// A repository named in a path, checked as a registry would take it (a name no build can
/// have never reaches the store).
fn repository_path(namespace: &str, repository: &str) -> ApiResult<()> {
    for (what, name) in [("namespace", namespace), ("repository", repository)] {
        if !valid_name(name) {
            return Err(bad_request(format!(
                "invalid {what} {name:?}: use lower-case letters, digits, '.', '_' and '-'"
            )));
        }
    }
    Ok(())
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's shared state.
#[derive(Clone)]
struct Api {
    builds: Builds,
    /// Base URL of this API as workers and clients reach it.
    public_url: String,
    /// SHA-256 of each accepted bearer token, so the tokens themselves are not kept around.
    token_hashes: std::sync::Arc<HashSet<[u8; 32]>>,
    /// Bounds on bodies and log pages.
    limits: std::sync::Arc<Limits>,
    /// Requests per token.
    rate: std::sync::Arc<limits::RateLimit>,
}

impl axum::extract::FromRef<Api> for Builds {
    fn from_ref(api: &Api) -> Builds {
        api.builds.clone()
    }
}

/// What the REST API needs besides the manager.
pub struct RestOptions {
    /// Base URL of this API as workers and clients reach it (upload URLs start with it).
    pub public_url: String,
    /// Bearer tokens that may use the API.
    pub tokens: Vec<String>,
    /// Bounds on bodies, log pages and requests per token.
    pub limits: Limits,
}

/// The URL a worker downloads an uploaded context from.
pub fn filedrop_url(public_url: &str, file_id: &str) -> String {
    format!(
        "{}{}",
        public_url.trim_end_matches('/'),
        paths::file(file_id)
    )
}

/// Every route of the REST API with its handler: the router is made of this list, and
/// [`routes`] answers it.
fn table() -> Vec<(Route, MethodRouter<Api>)> {
    // The path functions with axum's placeholders give the route templates.
    let (ns, repo, id) = ("{namespace}", "{repository}", "{id}");
    let file = paths::file("{file_id}");
    let (builds, build) = (paths::builds(ns, repo), paths::build(ns, repo, id));
    vec![
        (
            Route::with_token("POST", paths::FILEDROP),
            post(create_filedrop),
        ),
        (Route::with_token("PUT", &file), put(upload_file)),
        // Workers fetch uploaded contexts by their unguessable id, without an API token.
        (Route::public("GET", file), get(download_file)),
        (Route::with_token("POST", &builds), post(create_build)),
        (Route::with_token("GET", builds), get(list_builds)),
        (Route::with_token("GET", &build), get(get_build)),
        (Route::with_token("DELETE", build), delete(cancel_build)),
        (
            Route::with_token("GET", paths::build_status(ns, repo, id)),
            get(get_build),
        ),
        (
            Route::with_token("GET", paths::build_logs(ns, repo, id)),
            get(build_logs),
        ),
        (
            Route::with_token("GET", paths::build_by_id(id)),
            get(get_build_by_id),
        ),
        (
            Route::with_token("GET", paths::ALL_BUILDS),
            get(crate::listing::list),
        ),
        (Route::public("GET", paths::HEALTH), get(|| async { "ok" })),
        (Route::public("GET", paths::OPENAPI), get(openapi::serve)),
    ]
}

/// The routes [`router`] serves.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The API's routes; a path none matches answers a JSON 404 that points at the document.
pub fn router(builds: Builds, options: RestOptions) -> Router {
    let api = Api {
        builds,
        public_url: options.public_url,
        token_hashes: std::sync::Arc::new(
            options
                .tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        ),
        rate: std::sync::Arc::new(limits::RateLimit::new(
            options.limits.rate_per_second,
            options.limits.rate_burst,
        )),
        limits: std::sync::Arc::new(options.limits),
    };
    // Uploads are bounded by the upload limit, every other body by the JSON one.
    let (mut public, mut authenticated, mut uploads) =
        (Router::new(), Router::new(), Router::new());
    for (route, handler) in table() {
        match (route.token, route.method) {
            (false, _) => public = public.route(&route.path, handler),
            (true, "PUT") => uploads = uploads.route(&route.path, handler),
            (true, _) => authenticated = authenticated.route(&route.path, handler),
        }
    }
    let uploads = uploads.layer(middleware::from_fn_with_state(
        api.limits.upload_bytes,
        limits::refuse_large,
    ));
    // The dashboard's HTML: pages without data for anyone, fragments behind the token; not
    // part of the API (nor of its document).
    let authenticated = authenticated
        .merge(crate::web::fragments(api.builds.clone()))
        .layer(middleware::from_fn_with_state(
            api.limits.json_body_bytes,
            limits::refuse_large,
        ))
        .merge(uploads)
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::disable());
    public
        .merge(crate::web::pages())
        .merge(authenticated)
        .fallback(no_route)
        .with_state(api)
}

async fn no_route(request: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}: the API is described at {}",
            request.method(),
            request.uri().path(),
            paths::OPENAPI
        ),
    )
}

async fn authenticate(State(api): State<Api>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let hash = presented.map(|token| <[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())));
    match hash {
        Some(hash) if api.token_hashes.contains(&hash) => match api.rate.check(&hash) {
            Some(too_many) => too_many,
            None => next.run(request).await,
        },
        Some(_) => ApiError(StatusCode::UNAUTHORIZED, "invalid API token".into()).into_response(),
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing API token: send `Authorization: Bearer <token>`".into(),
        )
        .into_response(),
    }
}

async fn create_filedrop(State(api): State<Api>) -> Json<FileDrop> {
    let file_id = api.builds.new_upload_id();
    let url = filedrop_url(&api.public_url, &file_id);
    Json(FileDrop { file_id, url })
}

async fn upload_file(
    State(api): State<Api>,
    ApiPath(file_id): ApiPath<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let body = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(body);
    api.builds
        .upload(&file_id, reader, api.limits.upload_bytes)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams an upload from the context storage (for S3 workers get a presigned URL instead,
/// but this keeps working).
async fn download_file(
    State(api): State<Api>,
    ApiPath(file_id): ApiPath<String>,
) -> ApiResult<Response> {
    let upload = api
        .builds
        .download(&file_id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no such file".into()))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(upload));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

async fn create_build(
    State(api): State<Api>,
    ApiPath((namespace, repository)): ApiPath<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let body = limits::read_body(body, api.limits.json_body_bytes).await?;
    let req: CreateBuild = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid build request: {e}")))?;
    let new = req
        .into_new_build(namespace, repository)
        .map_err(ManagerError::from)?;
    let build = api.builds.submit(new).await?;
    let location = paths::build(&build.namespace, &build.repository, build.id);
    let view = view(&api.builds, &build).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

async fn list_builds(
    State(api): State<Api>,
    ApiPath((namespace, repository)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<BuildList>> {
    repository_path(&namespace, &repository)?;
    let builds = api
        .builds
        .list(&namespace, &repository, q.limit(), q.since())
        .await?;
    let mut views = Vec::with_capacity(builds.len());
    for b in &builds {
        views.push(view(&api.builds, b).await?);
    }
    Ok(Json(BuildList { builds: views }))
}

fn parse_id(id: &str) -> ApiResult<BuildId> {
    id.parse().map_err(|_| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("build {id:?} not found: not a build id"),
        )
    })
}

/// A build of the repository in the path; 404 when it belongs to another one.
async fn repo_build(api: &Api, namespace: &str, repository: &str, id: &str) -> ApiResult<Build> {
    repository_path(namespace, repository)?;
    let id = parse_id(id)?;
    match api.builds.get(id).await? {
        Some(b) if b.namespace == namespace && b.repository == repository => Ok(b),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("build {id} not found"),
        )),
    }
}

async fn get_build(
    State(api): State<Api>,
    ApiPath((namespace, repository, id)): ApiPath<(String, String, String)>,
) -> ApiResult<Json<BuildView>> {
    let build = repo_build(&api, &namespace, &repository, &id).await?;
    Ok(Json(view(&api.builds, &build).await?))
}

async fn get_build_by_id(
    State(api): State<Api>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BuildView>> {
    let id = parse_id(&id)?;
    let build = api
        .builds
        .get(id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("build {id} not found")))?;
    Ok(Json(view(&api.builds, &build).await?))
}

async fn cancel_build(
    State(api): State<Api>,
    ApiPath((namespace, repository, id)): ApiPath<(String, String, String)>,
) -> ApiResult<Response> {
    let build = repo_build(&api, &namespace, &repository, &id).await?;
    api.builds.cancel(build.id).await?;
    Ok((StatusCode::CREATED, Json(CANCELLED)).into_response())
}

async fn build_logs(
    State(api): State<Api>,
    ApiPath((namespace, repository, id)): ApiPath<(String, String, String)>,
    ApiQuery(q): ApiQuery<LogsQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let build = repo_build(&api, &namespace, &repository, &id).await?;
    if q.follow {
        return crate::events::follow(&api.builds, &build, q.start, &headers).await;
    }
    let page = api
        .builds
        .logs(
            build.id,
            q.start.unwrap_or(0),
            LogPage::MAX_ENTRIES,
            api.limits.log_page_bytes,
        )
        .await?;
    Ok(Json(LogPage {
        start: page.start,
        total: page.total,
        logs: page.entries,
    })
    .into_response())
}

/// Quay's build view of `b`, with the manager's word on whether it expired.
async fn view(builds: &Builds, b: &Build) -> ApiResult<BuildView> {
    Ok(BuildView::new(b, builds.is_expired(b).await?))
}
