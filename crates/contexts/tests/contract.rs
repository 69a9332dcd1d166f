//! The contract of `ContextStore`, run against both backends: the data dir (its worker URL
//! served by a small HTTP server over `open`, as the REST API does) and S3 (moto's server on
//! loopback, a bucket made through the SDK, workers' presigned URLs fetched with reqwest).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use buildman_contexts::{ContextError, ContextStore, LocalStore, S3Store, new_id};
use buildman_core::config::S3StorageConfig;
use buildman_testkit::s3::{self, S3Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

fn files(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn read_all(mut reader: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.expect("read");
    bytes
}

/// What a worker gets from the upload's URL.
async fn download(store: &dyn ContextStore, id: &str) -> (StatusCode, Vec<u8>) {
    let url = store.worker_url(id).await.expect("worker URL");
    let response = buildman_testkit::http_client()
        .get(url)
        .send()
        .await
        .expect("download");
    let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
    (status, response.bytes().await.expect("body").to_vec())
}

/// A body that fails after `good` bytes, as a client that hangs up does.
struct Broken {
    good: usize,
}

impl AsyncRead for Broken {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.good == 0 {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let n = self.good.min(buf.remaining()).min(1000);
        buf.put_slice(&vec![b'x'; n]);
        self.good -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Every promise of the trait. `spool` is where uploads are written before they appear;
/// `listing` shows what the backend holds, spool included.
async fn contract(store: &dyn ContextStore, spool: &Path, listing: impl AsyncFn() -> Vec<String>) {
    let context: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let limit = context.len() as u64;

    // Stored whole, exactly at the limit; readable and downloadable as the same bytes.
    let id = new_id();
    assert!(!store.exists(&id).await.expect("exists"));
    assert!(store.open(&id).await.expect("open").is_none());
    let size = store.put(&id, &mut &context[..], limit).await.expect("put");
    assert_eq!(size, limit);
    assert!(store.exists(&id).await.expect("exists"));
    let opened = store.open(&id).await.expect("open").expect("the upload");
    assert!(
        read_all(opened).await == context,
        "open gives the bytes back"
    );
    let (status, downloaded) = download(store, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert!(downloaded == context, "the worker URL gives the bytes back");
    let held = listing().await;
    assert_eq!(held.len(), 1, "one upload, no spool file left: {held:?}");

    // An id is used once.
    let again = store.put(&id, &mut &b"other"[..], 100).await;
    assert!(
        matches!(again, Err(ContextError::AlreadyUploaded)),
        "{again:?}"
    );

    // Refused uploads leave nothing: too large, interrupted.
    let big = new_id();
    let refused = store.put(&big, &mut &context[..], limit - 1).await;
    assert!(
        matches!(refused, Err(ContextError::TooLarge { limit: l }) if l == limit - 1),
        "{refused:?}"
    );
    let broken = new_id();
    let interrupted = store.put(&broken, &mut Broken { good: 5000 }, limit).await;
    assert!(
        matches!(interrupted, Err(ContextError::Interrupted(_))),
        "{interrupted:?}"
    );
    for id in [&big, &broken] {
        assert!(!store.exists(id).await.expect("exists"));
        assert!(store.open(id).await.expect("open").is_none());
    }
    assert_eq!(
        listing().await,
        held,
        "refused uploads leave nothing behind"
    );

    // Visible only when complete: not while its bytes are still arriving.
    let slow = new_id();
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let put = async { store.put(&slow, &mut server, limit).await };
    let watch = async {
        client.write_all(&context[..100_000]).await.expect("send");
        let part = spool.join(format!(".{slow}.part"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&part).map_or(0, |m| m.len()) < 50_000 {
            assert!(Instant::now() < deadline, "the upload never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !store.exists(&slow).await.expect("exists"),
            "half an upload"
        );
        assert!(store.open(&slow).await.expect("open").is_none());
        client.write_all(&context[100_000..]).await.expect("send");
        drop(client);
    };
    let (stored, ()) = tokio::join!(put, watch);
    assert_eq!(stored.expect("slow put"), limit);
    assert!(store.exists(&slow).await.expect("exists"));

    // Only ids the store makes.
    for bad in ["../escape", "ABCDEF", &id[..63]] {
        let put = store.put(bad, &mut &b"x"[..], 10).await;
        assert!(
            matches!(put, Err(ContextError::MalformedId)),
            "{bad}: {put:?}"
        );
        assert!(!store.exists(bad).await.expect("exists"));
        assert!(store.open(bad).await.expect("open").is_none());
        assert!(matches!(
            store.delete(bad).await,
            Err(ContextError::MalformedId)
        ));
    }

    // Deleted: gone for readers and workers; deleting again is fine.
    store.delete(&id).await.expect("delete");
    assert!(!store.exists(&id).await.expect("exists"));
    assert!(store.open(&id).await.expect("open").is_none());
    let (status, _) = download(store, &id).await;
    assert!(status.is_client_error(), "download after delete: {status}");
    store.delete(&id).await.expect("delete again");
    store.delete(&slow).await.expect("delete");
    assert_eq!(listing().await, Vec::<String>::new());
}

/// Serves `GET /files/{id}` from the store's `open`, as the REST API's file drop does.
async fn serve_files(listener: tokio::net::TcpListener, store: Arc<LocalStore>) {
    async fn get(State(store): State<Arc<LocalStore>>, UrlPath(id): UrlPath<String>) -> Response {
        match store.open(&id).await {
            Ok(Some(file)) => {
                Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response()
            }
            Ok(None) => StatusCode::NOT_FOUND.into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/files/{id}", axum::routing::get(get))
        .with_state(store);
    axum::serve(listener, app).await.expect("file server");
}

#[tokio::test]
async fn the_data_dir_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let contexts: PathBuf = dir.path().join("contexts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let store = Arc::new(LocalStore::new(
        &contexts,
        Arc::new(move |id: &str| format!("{base}/files/{id}")),
    ));
    tokio::spawn(serve_files(listener, store.clone()));
    contract(store.as_ref(), &contexts, async || files(&contexts)).await;
}

#[tokio::test]
async fn an_s3_bucket_keeps_the_contract() {
    let server = S3Server::start().await;
    let spool = tempfile::tempdir().expect("temp dir");
    let config = S3StorageConfig {
        bucket: server.bucket.clone(),
        region: Some(s3::REGION.into()),
        endpoint_url: Some(server.endpoint()),
        access_key: Some(s3::ACCESS_KEY.into()),
        secret_key: Some(s3::SECRET_KEY.into()),
        prefix: "buildman/contexts/".into(),
        path_style: true,
    };
    let store = S3Store::connect(&config, spool.path())
        .await
        .expect("connect");
    let listing = async || {
        let mut held = server.keys().await;
        for key in &held {
            assert!(key.starts_with("buildman/contexts/"), "{key}");
        }
        held.extend(files(spool.path()));
        held
    };
    contract(&store, spool.path(), listing).await;
}
