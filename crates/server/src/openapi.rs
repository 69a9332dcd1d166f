//! The REST API's OpenAPI 3.1 document, served at [`paths::OPENAPI`] without a token. The
//! bodies' schemas are derived from `buildman-api`'s types (what the server serialises);
//! the operations are described here, one function each, and registered in [`ApiDoc`]: the
//! one list to extend when a route is added (tests/openapi.rs fails on a route the routers
//! serve that the document lacks, and runs schemathesis against a server).
//!
//! The functions below only carry the descriptions; the handlers are in `rest` and `ops`.

#![allow(dead_code)] // The path functions and parameter structs exist for the derives.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use buildman_api::{
    BuildList, BuildView, BuildsQuery, CreateBuild, ErrorBody, FileDrop, ListQuery, LogPage,
    LogsQuery, NewFileDrop,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

/// The name of the bearer-token security scheme.
pub const BEARER: &str = "api_token"; // Also spelled out in `ApiDoc`'s `security`.

/// The document's operations and schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "buildman",
        description = "Quay's builds API as buildman serves it, plus `/api/v1/build/{id}`, \
            the file drop for uploaded contexts, and the operators' endpoints. Every \
            `/api/v1` route but the context download takes `Authorization: Bearer <token>` \
            (BUILDMAN_API_TOKENS, or the admin token in the data dir). Errors answer \
            `{\"error\": \"...\"}`, a message that says what to do."
    ),
    paths(
        create_filedrop,
        upload_file,
        download_file,
        create_build,
        list_builds,
        list_all_builds,
        get_build,
        cancel_build,
        get_build_status,
        build_logs,
        get_build_by_id,
        health,
        openapi_document,
        metrics,
        healthz,
        readyz,
    ),
    components(schemas(LogPage)),
    modifiers(&BearerToken, &TokenRefusals),
    security(("api_token" = [])),
    tags(
        (name = "builds", description = "Queue, follow and cancel builds (Quay's shapes)."),
        (name = "contexts", description = "Upload a build context, and fetch it (workers)."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme the API tokens use.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token: one of BUILDMAN_API_TOKENS, or the admin token written to \
                 the data dir's `admin-token` on first start.",
            ))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// Adds the authentication layer's answers to every operation that takes a token (all but
/// the `security(())` ones): 401 for a missing or unknown token and the per-token rate
/// limit's 429. The layer answers them before any handler, so they are said once here.
struct TokenRefusals;

/// What a 429 from the rate limit means.
const RATE_LIMITED: &str = "Too many requests with this API token (BUILDMAN_LIMITS \
     RATE_PER_SECOND, RATE_BURST): retry after the Retry-After header's seconds.";

impl Modify for TokenRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            HeaderBuilder, RefOr, ResponseBuilder, Type, schema::ObjectBuilder,
            security::SecurityRequirement,
        };
        let public = Some(vec![SecurityRequirement::default()]);
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security == public {
                    continue;
                }
                let responses = &mut operation.responses.responses;
                let refused = ResponseBuilder::new()
                    .description("No API token, or not a valid one.")
                    .content("application/json", error_body())
                    .build();
                responses.insert("401".to_string(), RefOr::T(refused));
                let description = match responses.get("429") {
                    Some(RefOr::T(own)) => format!("{} Or: {RATE_LIMITED}", own.description),
                    _ => RATE_LIMITED.to_string(),
                };
                let retry_after = HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("Seconds to wait before the next request."))
                    .build();
                let response = ResponseBuilder::new()
                    .description(description)
                    .header("Retry-After", retry_after)
                    .content("application/json", error_body())
                    .build();
                responses.insert("429".to_string(), RefOr::T(response));
            }
        }
    }
}

/// The JSON content of an error answer: the one error body.
fn error_body() -> utoipa::openapi::Content {
    utoipa::openapi::ContentBuilder::new()
        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
        .build()
}

/// The document as JSON, made once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"the API document failed to serialise: {e}\"}}"))
});

/// `GET` [`paths::OPENAPI`].
pub(crate) async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// A repository in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct RepositoryPath {
    /// The namespace (organisation or user): lower-case letters, digits, `.`, `_`, `-`.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]*$", max_length = 255)]
    namespace: String,
    /// The repository's name, as the namespace.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]*$", max_length = 255)]
    repository: String,
}

/// A build of a repository in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct BuildPath {
    /// The namespace (organisation or user): lower-case letters, digits, `.`, `_`, `-`.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]*$", max_length = 255)]
    namespace: String,
    /// The repository's name, as the namespace.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]*$", max_length = 255)]
    repository: String,
    /// The build's id.
    #[param(value_type = String, format = Uuid)]
    id: String,
}

/// A build in a path, by its id alone.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct BuildIdPath {
    /// The build's id.
    #[param(value_type = String, format = Uuid)]
    id: String,
}

/// An uploaded context in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct FilePath {
    /// The file id a file drop answered (64 hex digits).
    #[param(pattern = "^[0-9a-f]{64}$")]
    file_id: String,
}

/// Creates a file drop: an id to upload one context under, and the URL to `PUT` it to.
#[utoipa::path(post, path = "/api/v1/filedrop/", tag = "contexts",
    request_body(content = Option<NewFileDrop>, description = "Quay's request; nothing in it is read."),
    responses(
        (status = 200, body = FileDrop),
    ))]
fn create_filedrop() {}

/// Uploads a context (a tar archive, possibly compressed, or a lone Dockerfile) under a
/// file drop's id; once only, up to 2 GiB.
#[utoipa::path(put, path = "/api/v1/filedrop/{file_id}", tag = "contexts", params(FilePath),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Stored."),
        (status = 400, description = "Not a file id, or the upload was cut short.", body = ErrorBody),
        (status = 409, description = "This id was already uploaded.", body = ErrorBody),
        (status = 413, description = "Larger than the upload limit.", body = ErrorBody),
    ))]
fn upload_file() {}

/// Fetches an uploaded context: workers do, without a token (the unguessable id is the
/// capability).
#[utoipa::path(get, path = "/api/v1/filedrop/{file_id}", tag = "contexts", params(FilePath),
    security(()),
    responses(
        (status = 200, description = "The upload's bytes.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such upload.", body = ErrorBody),
    ))]
fn download_file() {}

/// Queues a build of a repository.
#[utoipa::path(post, path = "/api/v1/repository/{namespace}/{repository}/build/", tag = "builds",
    params(RepositoryPath), request_body = CreateBuild,
    responses(
        (status = 201, description = "Queued.", body = BuildView,
            headers(("Location" = String, description = "The build's resource."))),
        (status = 400, description = "The request is not a valid build: the message says why.", body = ErrorBody),
        (status = 404, description = "The uploaded context does not exist.", body = ErrorBody),
        (status = 429, description = "The namespace has as many builds queued as it may.", body = ErrorBody),
        (status = 503, description = "The manager is stopping.", body = ErrorBody),
    ))]
fn create_build() {}

/// A repository's builds, newest first.
#[utoipa::path(get, path = "/api/v1/repository/{namespace}/{repository}/build/", tag = "builds",
    params(RepositoryPath, ListQuery),
    responses(
        (status = 200, body = BuildList),
        (status = 400, description = "An invalid name or query.", body = ErrorBody),
    ))]
fn list_builds() {}

/// Builds of every repository, newest first, narrowed by the query.
#[utoipa::path(get, path = "/api/v1/builds", tag = "builds",
    params(BuildsQuery),
    responses(
        (status = 200, body = BuildList),
        (status = 400, description = "An invalid query (an unknown phase names the known ones).", body = ErrorBody),
    ))]
fn list_all_builds() {}

/// A build of a repository.
#[utoipa::path(get, path = "/api/v1/repository/{namespace}/{repository}/build/{id}", tag = "builds",
    params(BuildPath),
    responses(
        (status = 200, body = BuildView),
        (status = 400, description = "An invalid name.", body = ErrorBody),
        (status = 404, description = "No such build in this repository.", body = ErrorBody),
    ))]
fn get_build() {}

/// Cancels a build that has not ended; answers Quay's `"Okay"`.
#[utoipa::path(delete, path = "/api/v1/repository/{namespace}/{repository}/build/{id}", tag = "builds",
    params(BuildPath),
    responses(
        (status = 201, description = "Cancelled.", body = String, example = json!("Okay")),
        (status = 400, description = "An invalid name, or the build already ended.", body = ErrorBody),
        (status = 404, description = "No such build in this repository.", body = ErrorBody),
    ))]
fn cancel_build() {}

/// Quay's status resource of a build: the same view.
#[utoipa::path(get, path = "/api/v1/repository/{namespace}/{repository}/build/{id}/status", tag = "builds",
    params(BuildPath),
    responses(
        (status = 200, body = BuildView),
        (status = 400, description = "An invalid name.", body = ErrorBody),
        (status = 404, description = "No such build in this repository.", body = ErrorBody),
    ))]
fn get_build_status() {}

/// A page of a build's log, from `start`; page on from `start + logs.length`.
#[utoipa::path(get, path = "/api/v1/repository/{namespace}/{repository}/build/{id}/logs", tag = "builds",
    params(BuildPath, LogsQuery),
    responses(
        (status = 200, body = LogPage),
        (status = 400, description = "An invalid name or query.", body = ErrorBody),
        (status = 404, description = "No such build in this repository.", body = ErrorBody),
    ))]
fn build_logs() {}

/// A build by its id alone (buildman's addition to Quay's API).
#[utoipa::path(get, path = "/api/v1/build/{id}", tag = "builds", params(BuildIdPath),
    responses(
        (status = 200, body = BuildView),
        (status = 404, description = "No such build.", body = ErrorBody),
    ))]
fn get_build_by_id() {}

/// Liveness, as earlier versions answered it (see `/healthz`).
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
fn health() {}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json", body = Object)))]
fn openapi_document() {}

/// The Prometheus metrics (text format 0.0.4); also on BUILDMAN_METRICS_LISTEN when set.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Every series; see docs/operations.md.",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
fn metrics() {}

/// Liveness: 200 while the process serves requests, whatever the store and the
/// orchestrator do (restarting the process would not bring them back).
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
fn healthz() {}

/// Readiness: 200 while the store and the orchestrator answer and the manager is not
/// draining; else 503 saying which.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "Not ready: the store, the orchestrator, or a drain.", body = ErrorBody),
    ))]
fn readyz() {}
