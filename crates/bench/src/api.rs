//! The manager's REST API, as far as the scenarios use it: submit, look at a build, read
//! its whole log.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The context URL of every bench build. The simulated workers never fetch it.
const CONTEXT_URL: &str = "http://127.0.0.1:9/bench-context.tar.gz";

/// A REST client for one manager.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for the API at `base` with `token`.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// Submits a build of `namespace/repository`; returns its id and when the request was
    /// sent (the start of every submit → ... latency).
    pub async fn submit(
        &self,
        namespace: &str,
        repository: &str,
    ) -> anyhow::Result<(String, Instant)> {
        let url = format!(
            "{}/api/v1/repository/{namespace}/{repository}/build/",
            self.base
        );
        let body = json!({ "archive_url": CONTEXT_URL, "docker_tags": ["latest"] });
        let sent = Instant::now();
        let answer = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = answer.status();
        let view: Value = answer.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("POST {url}: {status}: {view}");
        }
        let id = view["id"]
            .as_str()
            .with_context(|| format!("POST {url}: no id in {view}"))?
            .to_string();
        Ok((id, sent))
    }

    /// A build's view (`GET /api/v1/build/<id>`).
    pub async fn build(&self, id: &str) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1/build/{id}", self.base);
        let answer = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = answer.status();
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        Ok(answer.json().await?)
    }

    /// A build's whole log, page by page.
    pub async fn logs(
        &self,
        namespace: &str,
        repository: &str,
        id: &str,
    ) -> anyhow::Result<Vec<Value>> {
        let mut entries = Vec::new();
        loop {
            let url = format!(
                "{}/api/v1/repository/{namespace}/{repository}/build/{id}/logs?start={}",
                self.base,
                entries.len()
            );
            let answer = self
                .http
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = answer.status();
            if !status.is_success() {
                bail!("GET {url}: {status}");
            }
            let page: Value = answer.json().await?;
            let logs = page["logs"].as_array().cloned().unwrap_or_default();
            let total = page["total"].as_u64().unwrap_or(0) as usize;
            let empty = logs.is_empty();
            entries.extend(logs);
            if entries.len() >= total || empty {
                return Ok(entries);
            }
        }
    }

    /// Cancels a build (a build already finished answers 400, which is fine here).
    pub async fn cancel(&self, namespace: &str, repository: &str, id: &str) -> anyhow::Result<()> {
        let url = format!(
            "{}/api/v1/repository/{namespace}/{repository}/build/{id}",
            self.base
        );
        self.http
            .delete(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        Ok(())
    }
}
