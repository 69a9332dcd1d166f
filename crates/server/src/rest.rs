//! The REST API, in the shapes of Quay's builds API (see the reference's "The builds API"),
//! plus the file drop for uploaded contexts. Errors are JSON `{"error": "..."}`.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use buildman_core::build::{valid_name, valid_tag};
use buildman_core::{Build, BuildId, BuildSource, NewBuild};
use buildman_manager::{Manager, ManagerError};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// An error answer: a status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::Invalid(_) | ManagerError::Conflict(_) => StatusCode::BAD_REQUEST,
            ManagerError::NotFound(_) => StatusCode::NOT_FOUND,
            ManagerError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ManagerError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ManagerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "API request failed");
        }
        ApiError(code, e.to_string())
    }
}

impl From<buildman_store::StoreError> for ApiError {
    fn from(e: buildman_store::StoreError) -> Self {
        ManagerError::from(e).into()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's shared state.
#[derive(Clone)]
struct Api {
    manager: Manager,
    /// SHA-256 of each accepted bearer token, so the tokens themselves are not kept around.
    token_hashes: std::sync::Arc<HashSet<[u8; 32]>>,
    /// Largest accepted upload, in bytes.
    max_upload: u64,
}

/// What the REST API needs besides the manager.
pub struct RestOptions {
    /// Bearer tokens that may use the API.
    pub tokens: Vec<String>,
    /// Largest accepted context upload, in bytes.
    pub max_upload: u64,
}

/// The API's routes.
pub fn router(manager: Manager, options: RestOptions) -> Router {
    let api = Api {
        manager,
        token_hashes: std::sync::Arc::new(
            options
                .tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        ),
        max_upload: options.max_upload,
    };
    let repo = "/api/v1/repository/{namespace}/{repository}/build";
    let authenticated = Router::new()
        .route("/api/v1/filedrop/", post(create_filedrop))
        .route("/api/v1/filedrop/{file_id}", put(upload_file))
        .route(&format!("{repo}/"), post(create_build).get(list_builds))
        .route(
            &format!("{repo}/{{id}}"),
            get(get_build).delete(cancel_build),
        )
        .route(&format!("{repo}/{{id}}/status"), get(get_build))
        .route(&format!("{repo}/{{id}}/logs"), get(build_logs))
        .route("/api/v1/build/{id}", get(get_build_by_id))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        // Workers fetch uploaded contexts by their unguessable id, without an API token.
        .route("/api/v1/filedrop/{file_id}", get(download_file))
        .route("/health", get(|| async { "ok" }))
        .merge(authenticated)
        .with_state(api)
}

async fn authenticate(State(api): State<Api>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token)
            if api
                .token_hashes
                .contains(&<[u8; 32]>::from(Sha256::digest(token.trim().as_bytes()))) =>
        {
            next.run(request).await
        }
        Some(_) => ApiError(StatusCode::UNAUTHORIZED, "invalid API token".into()).into_response(),
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing API token: send `Authorization: Bearer <token>`".into(),
        )
        .into_response(),
    }
}

async fn create_filedrop(State(api): State<Api>) -> Json<Value> {
    let id = buildman_manager::FileStore::new_id();
    let url = format!(
        "{}/api/v1/filedrop/{id}",
        api.manager.settings().public_url.trim_end_matches('/')
    );
    Json(json!({ "file_id": id, "url": url }))
}

async fn upload_file(
    State(api): State<Api>,
    Path(file_id): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let files = api.manager.files();
    let (part, final_path) = files
        .upload_paths(&file_id)
        .ok_or_else(|| bad_request("unknown file id: get one from POST /api/v1/filedrop/"))?;
    if final_path.exists() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "this file id was already uploaded".into(),
        ));
    }
    let internal = |e: std::io::Error| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storing the upload: {e}"),
        )
    };
    tokio::fs::create_dir_all(files.dir())
        .await
        .map_err(internal)?;
    let mut file = tokio::fs::File::create(&part).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad_request(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > api.max_upload {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("upload larger than the limit of {} bytes", api.max_upload),
            ));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    tokio::fs::rename(&part, &final_path)
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn download_file(State(api): State<Api>, Path(file_id): Path<String>) -> ApiResult<Response> {
    let path = api
        .manager
        .files()
        .path(&file_id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no such file".into()))?;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("no such file: {e}")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// The body of a build request, with Quay's field names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBuild {
    archive_url: Option<String>,
    file_id: Option<String>,
    docker_tags: Option<Vec<String>>,
    context: Option<String>,
    dockerfile_path: Option<String>,
    subdirectory: Option<String>,
    pull_robot: Option<String>,
}

/// A path inside the build context: absolute, without `..`.
fn context_path(field: &str, value: &str) -> ApiResult<String> {
    if value.split('/').any(|c| c == "..") {
        return Err(bad_request(format!(
            "{field} must stay inside the build context (no `..`)"
        )));
    }
    Ok(if value.starts_with('/') {
        value.to_string()
    } else {
        format!("/{value}")
    })
}

async fn create_build(
    State(api): State<Api>,
    Path((namespace, repository)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    for (what, name) in [("namespace", &namespace), ("repository", &repository)] {
        if !valid_name(name) {
            return Err(bad_request(format!(
                "invalid {what} {name:?}: use lower-case letters, digits, '.', '_' and '-'"
            )));
        }
    }
    let req: CreateBuild = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid build request: {e}")))?;
    let source = match (req.archive_url, req.file_id) {
        (Some(url), None) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad_request(
                    "archive_url must be an http:// or https:// URL",
                ));
            }
            BuildSource::ArchiveUrl { url }
        }
        (None, Some(file_id)) => {
            if api.manager.files().path(&file_id).is_none() {
                return Err(bad_request(format!(
                    "file_id {file_id:?} names no uploaded file: upload it with PUT /api/v1/filedrop/<file_id> first"
                )));
            }
            BuildSource::Uploaded { file_id }
        }
        _ => return Err(bad_request("give exactly one of archive_url and file_id")),
    };
    let tags = req.docker_tags.unwrap_or_default();
    if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
        return Err(bad_request(format!("invalid tag {bad:?}")));
    }
    let context = context_path(
        "context",
        req.context
            .as_deref()
            .or(req.subdirectory.as_deref())
            .unwrap_or("/"),
    )?;
    let dockerfile_path = match req.dockerfile_path {
        Some(p) => context_path("dockerfile_path", &p)?,
        None => format!("{}/Dockerfile", context.trim_end_matches('/')),
    };
    // Quay names manual builds by a short random hex string.
    let display_name = buildman_manager::FileStore::new_id()[..7].to_string();
    let build = api
        .manager
        .submit(NewBuild {
            namespace,
            repository,
            source,
            tags,
            context,
            dockerfile_path,
            display_name,
            manual_user: None,
            pull_robot: req.pull_robot,
        })
        .await?;
    let location = format!(
        "/api/v1/repository/{}/{}/build/{}",
        build.namespace, build.repository, build.id
    );
    let view = view(&api.manager, &build).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    since: Option<i64>,
}

async fn list_builds(
    State(api): State<Api>,
    Path((namespace, repository)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(5).clamp(1, 100);
    let since = q.since.and_then(|s| chrono::DateTime::from_timestamp(s, 0));
    let builds = api
        .manager
        .store()
        .list_builds(&namespace, &repository, limit, since)
        .await?;
    let mut views = Vec::with_capacity(builds.len());
    for b in &builds {
        views.push(view(&api.manager, b).await?);
    }
    Ok(Json(json!({ "builds": views })))
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
    let id = parse_id(id)?;
    match api.manager.store().get_build(id).await? {
        Some(b) if b.namespace == namespace && b.repository == repository => Ok(b),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("build {id} not found"),
        )),
    }
}

async fn get_build(
    State(api): State<Api>,
    Path((namespace, repository, id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let build = repo_build(&api, &namespace, &repository, &id).await?;
    Ok(Json(view(&api.manager, &build).await?))
}

async fn get_build_by_id(State(api): State<Api>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let build = api
        .manager
        .store()
        .get_build(id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("build {id} not found")))?;
    Ok(Json(view(&api.manager, &build).await?))
}

async fn cancel_build(
    State(api): State<Api>,
    Path((namespace, repository, id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let build = repo_build(&api, &namespace, &repository, &id).await?;
    api.manager.cancel(build.id).await?;
    Ok((StatusCode::CREATED, Json(json!("Okay"))).into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    start: Option<u64>,
}

/// Most log entries returned in one page.
const LOG_PAGE: u32 = 1000;

async fn build_logs(
    State(api): State<Api>,
    Path((namespace, repository, id)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<Value>> {
    let build = repo_build(&api, &namespace, &repository, &id).await?;
    let page = api
        .manager
        .store()
        .read_logs(build.id, q.start.unwrap_or(0), LOG_PAGE)
        .await?;
    Ok(Json(
        json!({ "start": page.start, "total": page.total, "logs": page.entries }),
    ))
}

/// Quay's build view. Secrets of the source (a git key) are never part of it.
async fn view(manager: &Manager, b: &Build) -> ApiResult<Value> {
    let phase = if manager.is_expired(b).await? {
        "expired"
    } else {
        b.phase.as_str()
    };
    let (archive_url, resource_key) = match &b.source {
        BuildSource::ArchiveUrl { url } => (Some(url.clone()), None),
        BuildSource::Uploaded { file_id } => (None, Some(file_id.clone())),
        BuildSource::Git { .. } => (None, None),
    };
    let trigger_metadata = match &b.source {
        BuildSource::Git { url, sha, .. } => json!({ "git_url": url, "commit": sha }),
        _ => Value::Null,
    };
    Ok(json!({
        "id": b.id,
        "phase": phase,
        "started": b.created_at.to_rfc2822(),
        "display_name": b.display_name,
        "status": {},
        "subdirectory": b.context,
        "dockerfile_path": b.dockerfile_path,
        "context": b.context,
        "tags": b.effective_tags(),
        "manual_user": b.manual_user,
        "is_writer": true,
        "trigger": Value::Null,
        "trigger_metadata": trigger_metadata,
        "resource_key": resource_key,
        "pull_robot": b.pull_robot,
        "repository": { "namespace": b.namespace, "name": b.repository },
        "error": b.error,
        "archive_url": archive_url,
        "result_location": b.result_location,
    }))
}
