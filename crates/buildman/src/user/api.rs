//! A small typed client for the manager's REST API (the Quay-shaped builds API); the bodies
//! and paths are `buildman-api`'s.

use buildman_core::error_chain;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use buildman_api::{
    BuildList, BuildView, BuildsQuery, CreateBuild, ErrorBody, FileDrop, LogEvent, LogPage,
    LogsQuery, NewFileDrop, RepositoryRef, paths,
};
use buildman_core::BuildId;
use eventsource_stream::Eventsource as _;
use futures::{Stream, StreamExt as _};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::ApiArgs;

/// Name of the file in the manager's data dir that holds the admin API token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// How long one polling request (GET) may take before it counts as failed.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The manager could not be connected to at all.
    #[error(
        "the manager at {server} is not reachable ({detail}); start it with `buildman serve` \
         or point --server / BUILDMAN_SERVER at it"
    )]
    Unreachable {
        /// The configured base URL.
        server: String,
        /// The innermost transport error.
        detail: String,
    },
    /// The manager answered with an error status.
    #[error("{message} (HTTP {})", status.as_u16())]
    Http {
        /// The HTTP status.
        status: StatusCode,
        /// The `error` field of the body, or a fallback.
        message: String,
    },
    /// Any other transport failure (timeout, connection reset, TLS, ...).
    #[error("request to {server} failed: {detail}")]
    Transport {
        /// The configured base URL.
        server: String,
        /// The error chain, flattened.
        detail: String,
    },
    /// The manager answered 2xx with a body we could not understand.
    #[error("unexpected answer from the manager: {0}")]
    Decode(String),
}

impl ApiError {
    /// Whether retrying the same request later may succeed (network trouble, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } | ApiError::Transport { .. } => true,
            ApiError::Http { status, .. } => status.is_server_error(),
            ApiError::Decode(_) => false,
        }
    }
}

/// The innermost cause of an error (for connection failures: "Connection refused").
fn innermost(err: &dyn std::error::Error) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// The events of a followed log, as they arrive.
pub type LogEvents = Pin<Box<dyn Stream<Item = Result<LogEvent, ApiError>> + Send>>;

/// Client for the manager's REST API: base URL, bearer token and an HTTP client.
pub struct ApiClient {
    /// Base URL as given (for messages).
    server: String,
    /// Parsed base URL.
    base: Url,
    /// The bearer token; never printed.
    token: String,
    /// The HTTP client.
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Finds the API token: the explicit one, else `<data_dir>/admin-token`.
pub fn resolve_token(token: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(t.to_string());
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "the token file {} is empty; pass --token (or set BUILDMAN_TOKEN)",
            path.display()
        ),
        Err(e) => anyhow::bail!(
            "no API token: pass --token (or set BUILDMAN_TOKEN), or run from the manager's \
             directory so that {} can be read ({e})",
            path.display()
        ),
    }
}

impl ApiClient {
    /// Builds a client from the shared command-line arguments.
    pub fn from_args(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = resolve_token(args.token.as_deref(), &args.data_dir)?;
        Self::new(&args.server, token)
    }

    /// Builds a client for `server` authenticating with `token`.
    pub fn new(server: &str, token: String) -> anyhow::Result<Self> {
        let base = Url::parse(server.trim())
            .map_err(|e| anyhow::anyhow!("invalid --server URL {server:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            anyhow::bail!("invalid --server URL {server:?}: expected http:// or https://");
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("buildman/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            server: server.trim().to_string(),
            base,
            token,
            http,
        })
    }

    /// The base URL as configured.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// An API path (from [`paths`]) under the base URL, which may carry a prefix of its own.
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// A request with the bearer token.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Sends a request, mapping transport failures and error statuses to [`ApiError`].
    async fn send(&self, req: RequestBuilder) -> Result<Response, ApiError> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                ApiError::Unreachable {
                    server: self.server.clone(),
                    detail: innermost(&e),
                }
            } else {
                ApiError::Transport {
                    server: self.server.clone(),
                    detail: error_chain(&e.without_url()),
                }
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(ApiError::Http {
            status,
            message: error_message(status, &body),
        })
    }

    /// Sends a request and decodes a JSON answer.
    async fn send_json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ApiError> {
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|e| ApiError::Transport {
            server: self.server.clone(),
            detail: error_chain(&e.without_url()),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// Uploads a build context through the file drop; returns its file id.
    pub async fn upload(&self, bytes: Vec<u8>) -> Result<String, ApiError> {
        let drop: FileDrop = self
            .send_json(
                self.request(Method::POST, paths::FILEDROP)
                    .json(&NewFileDrop::default()),
            )
            .await?;
        self.send(
            self.request(Method::PUT, &paths::file(&drop.file_id))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        )
        .await?;
        Ok(drop.file_id)
    }

    /// Queues a build in `ns/repo`.
    pub async fn create_build(
        &self,
        ns: &str,
        repo: &str,
        request: &CreateBuild,
    ) -> Result<BuildView, ApiError> {
        self.send_json(
            self.request(Method::POST, &paths::builds(ns, repo))
                .json(request),
        )
        .await
    }

    /// Looks a build up by its id alone.
    pub async fn build(&self, id: BuildId) -> Result<BuildView, ApiError> {
        self.send_json(
            self.request(Method::GET, &paths::build_by_id(id))
                .timeout(POLL_TIMEOUT),
        )
        .await
    }

    /// The newest builds of every repository that `query` matches.
    pub async fn find_builds(&self, query: &BuildsQuery) -> Result<BuildList, ApiError> {
        self.send_json(
            self.request(Method::GET, paths::ALL_BUILDS)
                .query(query)
                .timeout(POLL_TIMEOUT),
        )
        .await
    }

    /// Fetches one page of a build's log from entry `start` on.
    pub async fn logs_page(
        &self,
        repo: &RepositoryRef,
        id: BuildId,
        start: u64,
    ) -> Result<LogPage, ApiError> {
        self.send_json(
            self.request(
                Method::GET,
                &paths::build_logs(&repo.namespace, &repo.name, id),
            )
            .query(&LogsQuery {
                start: Some(start),
                follow: false,
            })
            .timeout(POLL_TIMEOUT),
        )
        .await
    }

    /// Follows a build's log from entry `start` on (`?follow=1`): the events as they come.
    /// `None` when the server answered something else than an event stream (a server
    /// without the streaming API answers a log page): poll it instead.
    pub async fn follow_logs(
        &self,
        repo: &RepositoryRef,
        id: BuildId,
        start: u64,
    ) -> Result<Option<LogEvents>, ApiError> {
        let query = LogsQuery {
            start: Some(start),
            follow: true,
        };
        let request = self
            .request(
                Method::GET,
                &paths::build_logs(&repo.namespace, &repo.name, id),
            )
            .query(&query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let response = self.send(request).await?;
        let streams = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !streams {
            return Ok(None);
        }
        let server = self.server.clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .filter_map(move |event| {
                let item = match event {
                    Ok(e) => LogEvent::parse(&e.event, &e.data)
                        .map_err(|err| ApiError::Decode(format!("{} event: {err}", e.event)))
                        .transpose(),
                    Err(e) => Some(Err(ApiError::Transport {
                        server: server.clone(),
                        detail: e.to_string(),
                    })),
                };
                std::future::ready(item)
            });
        Ok(Some(Box::pin(events)))
    }

    /// Cancels a build.
    pub async fn cancel(&self, repo: &RepositoryRef, id: BuildId) -> Result<(), ApiError> {
        self.send(self.request(
            Method::DELETE,
            &paths::build(&repo.namespace, &repo.name, id),
        ))
        .await
        .map(drop)
    }
}

/// The message to show for an error answer: its `error` field, else its text, else the reason.
pub fn error_message(status: StatusCode, body: &str) -> String {
    if let Ok(parsed) = serde_json::from_str::<ErrorBody>(body)
        && let Some(msg) = parsed.text()
    {
        return msg.to_string();
    }
    let text = body.trim();
    if !text.is_empty() && text.len() <= 300 && !text.starts_with('<') {
        return text.to_string();
    }
    status
        .canonical_reason()
        .unwrap_or("request failed")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_error_field() {
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, r#"{"error": "cannot cancel"}"#),
            "cannot cancel"
        );
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, "no such build"),
            "no such build"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, "<html>x</html>"),
            "Bad Gateway"
        );
        let e = ApiError::Http {
            status: StatusCode::BAD_REQUEST,
            message: "nope".into(),
        };
        assert_eq!(e.to_string(), "nope (HTTP 400)");
    }

    #[test]
    fn urls_are_built_under_the_base() {
        // What `main` does first: reqwest is built without a TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = ApiClient::new("http://127.0.0.1:8080", "t".into()).expect("client");
        assert_eq!(
            c.url(&paths::builds("ns", "repo")).as_str(),
            "http://127.0.0.1:8080/api/v1/repository/ns/repo/build/"
        );
        let c = ApiClient::new("https://quay.example/prefix/", "t".into()).expect("client");
        assert_eq!(
            c.url(&paths::file("a b")).as_str(),
            "https://quay.example/prefix/api/v1/filedrop/a%20b"
        );
        assert!(!format!("{c:?}").contains("\"t\""));
    }

    #[test]
    fn token_from_flag_or_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            resolve_token(Some(" abc "), dir.path()).expect("token"),
            "abc"
        );
        let err = resolve_token(None, dir.path()).expect_err("no token");
        assert!(err.to_string().contains("--token"), "{err}");
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "secret\n").expect("write");
        assert_eq!(resolve_token(None, dir.path()).expect("token"), "secret");
    }
}
