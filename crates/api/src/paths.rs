//! The API's route paths, absolute from the server's root (`/api/v1/...`).
//!
//! Each function puts its arguments into the path as given; clients pass names and ids that
//! need no escaping (namespaces, repositories and upload ids are restricted to URL-safe
//! characters, build ids are UUIDs). The server's router passes axum's placeholders
//! (`"{namespace}"`, `"{id}"`, ...) to get its route templates, so routes and clients cannot
//! drift apart.

use std::fmt::Display;

/// The server's liveness check; answers `ok`, needs no token.
pub const HEALTH: &str = "/health";

/// Liveness: answers 200 while the process serves requests; needs no token.
pub const HEALTHZ: &str = "/healthz";

/// Readiness: 200 while the store and the orchestrator answer and the manager is not
/// draining, else 503 with the reason; needs no token.
pub const READYZ: &str = "/readyz";

/// The Prometheus metrics, in Prometheus' text format; needs no token.
pub const METRICS: &str = "/metrics";

/// The REST API's OpenAPI 3.1 document (JSON); needs no token.
pub const OPENAPI: &str = "/api/openapi.json";

/// Where a file drop is created (`POST`, answers [`crate::FileDrop`]).
pub const FILEDROP: &str = "/api/v1/filedrop/";

/// An uploaded context: `PUT` stores it (with a token), `GET` fetches it (without one; the
/// unguessable id is the capability).
pub fn file(file_id: impl Display) -> String {
    format!("{FILEDROP}{file_id}")
}

/// A repository's builds: `POST` queues one ([`crate::CreateBuild`]), `GET` lists them
/// ([`crate::ListQuery`], answers [`crate::BuildList`]).
pub fn builds(namespace: impl Display, repository: impl Display) -> String {
    format!("/api/v1/repository/{namespace}/{repository}/build/")
}

/// One build of a repository: `GET` answers its [`crate::BuildView`], `DELETE` cancels it.
pub fn build(namespace: impl Display, repository: impl Display, id: impl Display) -> String {
    format!("{}{id}", builds(namespace, repository))
}

/// Quay's status resource of a build: the same [`crate::BuildView`].
pub fn build_status(namespace: impl Display, repository: impl Display, id: impl Display) -> String {
    format!("{}/status", build(namespace, repository, id))
}

/// A build's log ([`crate::LogsQuery`], answers a [`crate::LogPage`]).
pub fn build_logs(namespace: impl Display, repository: impl Display, id: impl Display) -> String {
    format!("{}/logs", build(namespace, repository, id))
}

/// The builds of every repository (buildman's addition): `GET` lists them
/// ([`crate::BuildsQuery`], answers [`crate::BuildList`]).
pub const ALL_BUILDS: &str = "/api/v1/builds";

/// A build by its id alone (buildman's addition to Quay's API): its [`crate::BuildView`].
pub fn build_by_id(id: impl Display) -> String {
    format!("/api/v1/build/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quays() {
        assert_eq!(file("abc"), "/api/v1/filedrop/abc");
        assert_eq!(builds("ns", "repo"), "/api/v1/repository/ns/repo/build/");
        assert_eq!(
            build("ns", "repo", "id"),
            "/api/v1/repository/ns/repo/build/id"
        );
        assert_eq!(
            build_status("ns", "repo", "id"),
            "/api/v1/repository/ns/repo/build/id/status"
        );
        assert_eq!(
            build_logs("ns", "repo", "id"),
            "/api/v1/repository/ns/repo/build/id/logs"
        );
        assert_eq!(build_by_id("id"), "/api/v1/build/id");
        assert_eq!(
            build("{namespace}", "{repository}", "{id}"),
            "/api/v1/repository/{namespace}/{repository}/build/{id}"
        );
    }
}
