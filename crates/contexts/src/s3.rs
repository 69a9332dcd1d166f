//! Uploaded contexts as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph): every
//! manager reaches them, so a build uploaded to one manager runs from any other. Workers
//! download a presigned GET URL straight from the store.
//!
//! The AWS SDK talks to the store over hyper 1 and rustls with ring (the workspace's one
//! TLS stack and crypto provider). Credentials are the configured keys, else the SDK's
//! default chain (environment, profile, web identity, ECS, instance metadata).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use buildman_core::config::S3StorageConfig;
use tokio::io::AsyncRead;

use crate::{ContextError, ContextStore, Download, check_id, well_formed, write_part};

/// How long a worker's download URL is good for, from the worker's registration: a worker
/// fetches its context right after registering. (Signed with temporary credentials, a URL
/// also ends when they do.)
pub const PRESIGNED_URL_EXPIRY: Duration = Duration::from_secs(3600);

/// A bucket (and key prefix) of uploaded contexts.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// Where an upload is written before it is sent (PutObject wants its length up front).
    spool: PathBuf,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// An SDK failure as one line with its whole chain (the SDK's own Display says only
/// "service error"); never holds credentials.
fn sdk_error(what: &str, e: impl std::error::Error) -> ContextError {
    ContextError::Storage(io::Error::other(format!(
        "{what}: {}",
        DisplayErrorContext(e)
    )))
}

impl S3Store {
    /// A client for the configured bucket; uploads are spooled in `spool` (created on first
    /// upload). Fails when no region is configured or found. An unreachable bucket is only
    /// warned about: the store may come up after the manager.
    pub async fn connect(
        config: &S3StorageConfig,
        spool: impl Into<PathBuf>,
    ) -> Result<Self, ContextError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let (Some(key), Some(secret)) = (&config.access_key, &config.secret_key) {
            loader = loader.credentials_provider(Credentials::new(
                key,
                secret,
                None,
                None,
                "BUILDMAN_CONTEXT_STORAGE",
            ));
        }
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(ContextError::Storage(io::Error::other(
                "BUILDMAN_CONTEXT_STORAGE has no REGION and the AWS SDK found none \
                 (AWS_REGION, the profile, instance metadata): set REGION",
            )));
        }
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(config.path_style);
        if config.endpoint_url.is_some() {
            // S3-compatible stores lag behind AWS in the checksums the SDK sends by default
            // (aws-chunked uploads with trailers); send them only where S3 requires them.
            s3 = s3
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let store = S3Store {
            client: Client::from_conf(s3.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            spool: spool.into(),
        };
        if let Err(e) = store
            .client
            .head_bucket()
            .bucket(&store.bucket)
            .send()
            .await
        {
            tracing::warn!(
                bucket = %store.bucket,
                error = %DisplayErrorContext(e),
                "cannot reach the bucket for uploaded contexts (BUILDMAN_CONTEXT_STORAGE); uploads fail until it is"
            );
        }
        Ok(store)
    }

    /// The object key of an upload.
    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Sends the spooled upload `part` as the object of `id`.
    async fn send(&self, id: &str, part: &std::path::Path) -> Result<(), ContextError> {
        let body = ByteStream::from_path(part)
            .await
            .map_err(|e| ContextError::Storage(io::Error::other(e)))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(id))
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_error("storing the upload in the bucket", e))?;
        Ok(())
    }
}

#[async_trait]
impl ContextStore for S3Store {
    /// Spooled to `<spool>/.<id>.part` (bounded by `limit`), then sent with one PutObject,
    /// which makes the object appear whole; the spool file is removed either way.
    async fn put(
        &self,
        id: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
        limit: u64,
    ) -> Result<u64, ContextError> {
        check_id(id)?;
        if self.exists(id).await? {
            return Err(ContextError::AlreadyUploaded);
        }
        let part = self.spool.join(format!(".{id}.part"));
        let size = write_part(body, &part, limit).await?;
        let sent = self.send(id, &part).await;
        let _ = tokio::fs::remove_file(&part).await;
        sent.map(|()| size)
    }

    async fn exists(&self, id: &str) -> Result<bool, ContextError> {
        if !well_formed(id) {
            return Ok(false);
        }
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(id));
        match head.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(e) => Err(sdk_error("asking the bucket for the upload", e)),
        }
    }

    /// A presigned GET URL, good for [`PRESIGNED_URL_EXPIRY`].
    async fn worker_url(&self, id: &str) -> Result<String, ContextError> {
        check_id(id)?;
        let expiry = PresigningConfig::expires_in(PRESIGNED_URL_EXPIRY)
            .map_err(|e| sdk_error("presigning the download", e))?;
        let get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(id));
        let presigned = get
            .presigned(expiry)
            .await
            .map_err(|e| sdk_error("presigning the download", e))?;
        Ok(presigned.uri().to_owned())
    }

    async fn open(&self, id: &str) -> Result<Option<Download>, ContextError> {
        if !well_formed(id) {
            return Ok(None);
        }
        let get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(id));
        match get.send().await {
            Ok(object) => Ok(Some(Box::new(object.body.into_async_read()))),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error("reading the upload from the bucket", e)),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), ContextError> {
        check_id(id)?;
        let delete = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(id));
        delete
            .send()
            .await
            .map_err(|e| sdk_error("deleting the upload from the bucket", e))?;
        Ok(())
    }
}
