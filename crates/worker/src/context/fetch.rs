//! Downloading a build package over http(s), streamed to disk and bounded in size.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{ContextError, redact_url};

/// How long connecting may take; a build package lives on storage that answers quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the body may stall between two reads before the download is abandoned.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Downloads `url` into the new file `to`, refusing more than `max` bytes.
pub(crate) async fn download(url: &str, to: &Path, max: u64) -> Result<(), ContextError> {
    let shown = redact_url(url);
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(ContextError::Fetch(format!(
            "{shown:?} is not an http or https URL"
        )));
    }
    // reqwest is built without a crypto provider: the binary installs the process's one.
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| ContextError::Fetch(format!("cannot create an http client: {e}")))?;
    // `without_url`: presigned package URLs carry credentials in the query.
    let fetch_error =
        |e: reqwest::Error| ContextError::Fetch(format!("{shown}: {}", e.without_url()));
    let mut response = client.get(url).send().await.map_err(fetch_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ContextError::Fetch(format!("{shown} answered {status}")));
    }
    let too_large = || {
        ContextError::TooLarge(format!(
            "the build package at {shown} is larger than {max} bytes"
        ))
    };
    if response.content_length().is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .await
        .map_err(|e| ContextError::io(format!("creating {}", to.display()), e))?;
    let mut received: u64 = 0;
    while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
        received = received.saturating_add(chunk.len() as u64);
        // Content-Length can lie or be absent: count what actually arrives.
        if received > max {
            return Err(too_large());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ContextError::io(format!("writing {}", to.display()), e))?;
    }
    file.flush()
        .await
        .map_err(|e| ContextError::io(format!("writing {}", to.display()), e))?;
    Ok(())
}
