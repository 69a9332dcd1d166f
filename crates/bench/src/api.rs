//! The manager's REST API, as far as the scenarios use it: submit, look at a build, read
//! its whole log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use buildman_api::{BuildView, CreateBuild, LogPage, LogsQuery, paths};
use buildman_core::LogEntry;

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
        let url = format!("{}{}", self.base, paths::builds(namespace, repository));
        let body = CreateBuild {
            docker_tags: Some(vec!["latest".into()]),
            ..CreateBuild::archive_url(CONTEXT_URL)
        };
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
        if status.as_u16() != 201 {
            let text = answer.text().await.unwrap_or_default();
            bail!("POST {url}: {status}: {text}");
        }
        let view: BuildView = answer
            .json()
            .await
            .with_context(|| format!("POST {url}: reading the build view"))?;
        Ok((view.id.to_string(), sent))
    }

    /// How many calls the manager made to its store so far, by call (its
    /// `buildman_store_calls_total` series).
    pub async fn store_calls(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let url = format!("{}{}", self.base, paths::METRICS);
        let text = (self.http.get(&url).send().await)
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?;
        let mut calls = BTreeMap::new();
        for line in text.lines() {
            // buildman_store_calls_total{call="claim"} 12
            let Some(rest) = line.strip_prefix("buildman_store_calls_total{call=\"") else {
                continue;
            };
            if let Some((call, value)) = rest.split_once("\"} ")
                && let Ok(n) = value.trim().parse::<f64>()
            {
                calls.insert(call.to_string(), n);
            }
        }
        Ok(calls)
    }

    /// A build's view (`GET /api/v1/build/<id>`).
    pub async fn build(&self, id: &str) -> anyhow::Result<BuildView> {
        let url = format!("{}{}", self.base, paths::build_by_id(id));
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
    ) -> anyhow::Result<Vec<LogEntry>> {
        let url = format!(
            "{}{}",
            self.base,
            paths::build_logs(namespace, repository, id)
        );
        let mut entries = Vec::new();
        loop {
            let query = LogsQuery {
                start: Some(entries.len() as u64),
                follow: false,
            };
            let answer = self
                .http
                .get(&url)
                .query(&query)
                .bearer_auth(&self.token)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = answer.status();
            if !status.is_success() {
                bail!("GET {url}: {status}");
            }
            let page: LogPage = answer.json().await?;
            let empty = page.logs.is_empty();
            entries.extend(page.logs);
            if entries.len() as u64 >= page.total || empty {
                return Ok(entries);
            }
        }
    }

    /// Cancels a build (a build already finished answers 400, which is fine here).
    pub async fn cancel(&self, namespace: &str, repository: &str, id: &str) -> anyhow::Result<()> {
        let url = format!("{}{}", self.base, paths::build(namespace, repository, id));
        self.http
            .delete(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        Ok(())
    }
}
