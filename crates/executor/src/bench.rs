//! The bench executor (`EXECUTOR: bench`): starts no worker. It hands each job's
//! registration token to a load generator (`buildman-bench`), which plays the worker over
//! the real gRPC protocol, so scheduling can be measured without process start-up cost.
//!
//! Benchmarks only: whoever listens at the callback URL receives registration tokens, so
//! `buildman serve` refuses this executor unless started with `--allow-bench-executor`.
//!
//! The callback contract: `start` POSTs `{build_id, token, server, execution_id}` as JSON to
//! BENCH_CALLBACK_URL and expects a 2xx answer; `stop` POSTs `{execution_id}` to
//! `<BENCH_CALLBACK_URL>/stop`, so the generator can end that worker as a killed process
//! would end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use buildman_core::BuildId;
use serde::Serialize;

use crate::{Executor, ExecutorError, Result, StartRequest};

/// How long the generator may take to answer a callback.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Hands registration tokens to a load generator instead of starting workers.
pub struct BenchExecutor {
    callback_url: String,
    stop_url: String,
    client: reqwest::Client,
    /// Execution ids handed out and not yet stopped.
    running: Mutex<HashSet<String>>,
    /// Distinguishes this executor's ids from those of an earlier manager process, whose
    /// job records a shared orchestrator may still hold.
    instance: String,
    next: AtomicU64,
}

/// The body of a start callback.
#[derive(Serialize)]
struct StartBody<'a> {
    build_id: BuildId,
    token: &'a str,
    server: &'a str,
    execution_id: &'a str,
}

/// The body of a stop callback.
#[derive(Serialize)]
struct StopBody<'a> {
    execution_id: &'a str,
}

impl BenchExecutor {
    /// An executor that calls back `callback_url` (http or https).
    pub fn new(callback_url: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(CALLBACK_TIMEOUT)
            .build()
            .map_err(|e| ExecutorError::Failed(format!("bench executor HTTP client: {e}")))?;
        Ok(BenchExecutor {
            callback_url: callback_url.to_string(),
            stop_url: format!("{}/stop", callback_url.trim_end_matches('/')),
            client,
            running: Mutex::default(),
            instance: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            next: AtomicU64::new(1),
        })
    }

    fn running_ids(&self) -> MutexGuard<'_, HashSet<String>> {
        // Each critical section is one set operation, so a poisoned set is still consistent.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// POSTs `body` to `url`; any answer but 2xx is a failure.
    async fn post(&self, url: &str, body: &impl Serialize) -> Result<()> {
        let answer = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| ExecutorError::Unreachable(format!("load generator at {url}: {e}")))?;
        let status = answer.status();
        if !status.is_success() {
            let text = answer.text().await.unwrap_or_default();
            return Err(ExecutorError::Failed(format!(
                "load generator at {url} answered {status}: {}",
                text.trim()
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Executor for BenchExecutor {
    fn kind(&self) -> &'static str {
        "bench"
    }

    async fn start(&self, request: &StartRequest) -> Result<String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let execution_id = format!("bench-{}-{n}", self.instance);
        // Counted before the callback: the generator may register and finish the job, and
        // the manager stop it, before the callback's answer arrives here.
        self.running_ids().insert(execution_id.clone());
        let body = StartBody {
            build_id: request.build_id,
            token: &request.token,
            server: &request.server,
            execution_id: &execution_id,
        };
        if let Err(e) = self.post(&self.callback_url, &body).await {
            self.running_ids().remove(&execution_id);
            return Err(e);
        }
        Ok(execution_id)
    }

    async fn stop(&self, execution_id: &str) -> Result<()> {
        // Only ids this executor handed out are the generator's business.
        if !self.running_ids().remove(execution_id) {
            return Ok(());
        }
        self.post(&self.stop_url, &StopBody { execution_id }).await
    }

    async fn running(&self) -> Result<usize> {
        Ok(self.running_ids().len())
    }

    /// The load generator's workers are not processes of this host: nothing to list.
    async fn owned(&self) -> Result<Vec<crate::OwnedWorker>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering `status` to each request; returns the URL and the
    /// requests it got (path and body).
    async fn callback_server(
        status: u16,
        requests: usize,
    ) -> (String, tokio::task::JoinHandle<Vec<(String, String)>>) {
        // What the binaries do at start: reqwest is built without a TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/worker", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..requests {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let (head, body) = loop {
                    let n = conn.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = text[..end].to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break (head, text[end + 4..end + 4 + length].to_string());
                        }
                    }
                };
                let path = head.split(' ').nth(1).unwrap().to_string();
                seen.push((path, body));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
                );
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        (url, task)
    }

    fn request() -> StartRequest {
        StartRequest {
            build_id: BuildId::new(),
            token: "registration-token".into(),
            server: "127.0.0.1:50051".into(),
            registry_hostname: String::new(),
            insecure: true,
            max_lifetime_s: 60,
            manager_id: "m".into(),
        }
    }

    #[tokio::test]
    async fn start_hands_the_token_over_and_stop_tells_the_generator() {
        let (url, server) = callback_server(200, 2).await;
        let executor = BenchExecutor::new(&url).unwrap();
        let request = request();
        let id = executor.start(&request).await.unwrap();
        assert_eq!(executor.running().await.unwrap(), 1);
        executor.stop(&id).await.unwrap();
        // A second stop, or one of an unknown id, is a no-op: no request is made.
        executor.stop(&id).await.unwrap();
        executor.stop("bench-unknown-1").await.unwrap();
        assert_eq!(executor.running().await.unwrap(), 0);
        let seen = server.await.unwrap();
        assert_eq!(seen[0].0, "/worker");
        let start: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
        assert_eq!(start["build_id"], request.build_id.to_string());
        assert_eq!(start["token"], "registration-token");
        assert_eq!(start["server"], "127.0.0.1:50051");
        assert_eq!(start["execution_id"], id);
        assert_eq!(seen[1].0, "/worker/stop");
        let stop: serde_json::Value = serde_json::from_str(&seen[1].1).unwrap();
        assert_eq!(stop["execution_id"], id);
    }

    #[tokio::test]
    async fn a_refused_start_is_an_error_and_not_counted() {
        let (url, _server) = callback_server(503, 1).await;
        let executor = BenchExecutor::new(&url).unwrap();
        let err = executor.start(&request()).await.unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
        assert_eq!(executor.running().await.unwrap(), 0);
    }
}
