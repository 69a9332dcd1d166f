//! Quay's front for tests: one address (SERVER_HOSTNAME) that serves uploaded build archives
//! at `/userfiles/<id>` without auth, as Quay's web tier does, and passes everything else
//! to the test registry, as Quay's registry endpoints would answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Uploaded files by id.
type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A running front.
pub struct Front {
    /// `127.0.0.1:PORT`: Quay's SERVER_HOSTNAME in the test.
    pub addr: String,
    files: Files,
}

impl Front {
    /// Stores an uploaded archive under `id`, as Quay's file drop does.
    pub fn upload(&self, id: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .expect("files")
            .insert(id.to_owned(), bytes);
    }
}

/// What the front serves.
#[derive(Clone)]
struct Shared {
    files: Files,
    registry: String,
    http: reqwest::Client,
}

/// Starts the front for `registry` (`127.0.0.1:PORT`).
pub async fn start(registry: &str) -> Front {
    let files = Files::default();
    let shared = Shared {
        files: files.clone(),
        registry: registry.to_owned(),
        http: buildman_testkit::http_client(),
    };
    let app = axum::Router::new()
        .route("/userfiles/{id}", get(userfile))
        .fallback(pass)
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Front { addr, files }
}

async fn userfile(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let bytes = s.files.lock().expect("files").get(&id).cloned();
    match bytes {
        Some(bytes) => bytes.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Passes a request to the registry and its answer back (whole bodies: tiny images).
async fn pass(State(s): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body: Bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("request body");
    let mut outgoing = s
        .http
        .request(parts.method, format!("http://{}{path}", s.registry))
        .body(body);
    for (name, value) in &parts.headers {
        if !["host", "content-length", "transfer-encoding"].contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !["content-length", "transfer-encoding"].contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response
        .body(axum::body::Body::from(bytes))
        .expect("response")
}
