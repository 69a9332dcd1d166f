//! The store as the roles use it: every call goes to the real store and is counted for the
//! metrics (`buildman_store_calls_total`: what a build costs the store), and what changed a
//! build's log or state is published to the [`Feed`] after it committed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use buildman_core::{Build, BuildId, ClaimedItem, LogEntry, NewBuild, Phase, Requeue};
use buildman_store::{BuildFilter, LogPage, QueueState, QueueStats, Result, Store, WorkerLine};
use chrono::{DateTime, Utc};

use super::{Fed, Feed};
use crate::metrics::Metrics;

/// A [`Store`] that publishes to a [`Feed`] and counts its calls.
pub(crate) struct FeedStore {
    pub(crate) inner: Arc<dyn Store>,
    pub(crate) feed: Arc<Feed>,
    pub(crate) metrics: Arc<Metrics>,
}

impl FeedStore {
    /// Tells the build's followers to look at the store, and the lists that it changed.
    fn changed(&self, build: BuildId) {
        self.feed.publish(build, Fed::Changed);
        self.feed.touch();
    }

    /// Publishes the worker lines of a committed batch, one message per build: a batch
    /// stores each build's lines at consecutive indices.
    fn publish_lines(&self, lines: &[WorkerLine], stored: &[Option<u64>]) {
        let mut runs: Vec<(BuildId, u64, Vec<LogEntry>)> = Vec::new();
        for (line, index) in lines.iter().zip(stored) {
            let Some(index) = *index else { continue };
            match runs.iter_mut().find(|(build, ..)| *build == line.build) {
                Some((_, first, entries)) if *first + entries.len() as u64 == index => {
                    entries.push(line.entry.clone());
                }
                Some(_) => {
                    // Not consecutive after all: let the followers read the store.
                    self.feed.publish(line.build, Fed::Changed);
                }
                None if self.feed.is_followed(line.build) => {
                    runs.push((line.build, index, vec![line.entry.clone()]));
                }
                None => {}
            }
        }
        for (build, first, entries) in runs {
            let entries = entries.into();
            self.feed.publish(build, Fed::Entries { first, entries });
        }
    }
}

#[async_trait]
impl Store for FeedStore {
    async fn create_build(
        &self,
        new: NewBuild,
        retries: u32,
        max_queued: Option<u32>,
    ) -> Result<Build> {
        self.metrics.store_call("create_build");
        let build = self.inner.create_build(new, retries, max_queued).await?;
        self.feed.touch();
        Ok(build)
    }

    async fn get_build(&self, id: BuildId) -> Result<Option<Build>> {
        self.metrics.store_call("get_build");
        self.inner.get_build(id).await
    }

    async fn list_builds(
        &self,
        namespace: &str,
        repository: &str,
        limit: u32,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Build>> {
        self.metrics.store_call("list_builds");
        self.inner
            .list_builds(namespace, repository, limit, since)
            .await
    }

    async fn find_builds(&self, filter: &BuildFilter, limit: u32) -> Result<Vec<Build>> {
        self.metrics.store_call("find_builds");
        self.inner.find_builds(filter, limit).await
    }

    async fn set_phase(
        &self,
        id: BuildId,
        to: Phase,
        from: &[Phase],
        error: Option<&str>,
        entry: Option<&LogEntry>,
    ) -> Result<Option<Phase>> {
        self.metrics.store_call("set_phase");
        let before = self.inner.set_phase(id, to, from, error, entry).await?;
        if before.is_some_and(|p| p != to) {
            self.changed(id);
        }
        Ok(before)
    }

    async fn pushed_tag(
        &self,
        namespace: &str,
        repository: &str,
        tags: &[String],
    ) -> Result<Option<String>> {
        self.metrics.store_call("pushed_tag");
        self.inner.pushed_tag(namespace, repository, tags).await
    }

    async fn set_executor(&self, id: BuildId, executor: &str) -> Result<()> {
        self.metrics.store_call("set_executor");
        self.inner.set_executor(id, executor).await?;
        self.feed.touch();
        Ok(())
    }

    async fn set_result_location(&self, id: BuildId, location: &str) -> Result<()> {
        self.metrics.store_call("set_result_location");
        self.inner.set_result_location(id, location).await?;
        self.feed.touch();
        Ok(())
    }

    async fn claim(&self, now: DateTime<Utc>, lease: Duration) -> Result<Option<ClaimedItem>> {
        self.metrics.store_call("claim");
        let claimed = self.inner.claim(now, lease).await?;
        if let Some(item) = &claimed {
            self.changed(item.build_id);
        }
        Ok(claimed)
    }

    async fn complete_item(&self, item: &ClaimedItem) -> Result<bool> {
        self.metrics.store_call("complete_item");
        let done = self.inner.complete_item(item).await?;
        self.changed(item.build_id);
        Ok(done)
    }

    async fn give_up_item(&self, item: &ClaimedItem) -> Result<bool> {
        self.metrics.store_call("give_up_item");
        let done = self.inner.give_up_item(item).await?;
        self.changed(item.build_id);
        Ok(done)
    }

    async fn return_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        requeue: &Requeue,
    ) -> Result<bool> {
        self.metrics.store_call("return_item");
        let done = self.inner.return_item(item, now, requeue).await?;
        self.changed(item.build_id);
        Ok(done)
    }

    async fn extend_item(
        &self,
        item: &ClaimedItem,
        now: DateTime<Utc>,
        lease: Duration,
        minimum: Duration,
    ) -> Result<bool> {
        self.metrics.store_call("extend_item");
        self.inner.extend_item(item, now, lease, minimum).await
    }

    async fn release_all_claims(&self, now: DateTime<Utc>) -> Result<u64> {
        self.metrics.store_call("release_all_claims");
        let released = self.inner.release_all_claims(now).await?;
        self.feed.touch();
        Ok(released)
    }

    async fn claimed_items(&self, limit: u32) -> Result<Vec<ClaimedItem>> {
        self.inner.claimed_items(limit).await
    }

    async fn delete_item(&self, build: BuildId) -> Result<()> {
        self.metrics.store_call("delete_item");
        self.inner.delete_item(build).await?;
        self.changed(build);
        Ok(())
    }

    async fn queue_state(&self, build: BuildId) -> Result<Option<QueueState>> {
        self.metrics.store_call("queue_state");
        self.inner.queue_state(build).await
    }

    async fn next_available_after(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        self.metrics.store_call("next_available_after");
        self.inner.next_available_after(now).await
    }

    async fn append_logs(&self, id: BuildId, entries: &[LogEntry]) -> Result<u64> {
        self.metrics.store_call("append_logs");
        let total = self.inner.append_logs(id, entries).await?;
        if !entries.is_empty() && self.feed.is_followed(id) {
            // One transaction: the entries are the last of the log.
            let first = total.saturating_sub(entries.len() as u64);
            let entries = entries.to_vec().into();
            self.feed.publish(id, Fed::Entries { first, entries });
        }
        Ok(total)
    }

    async fn append_worker_lines(&self, lines: &[WorkerLine]) -> Result<Vec<Option<u64>>> {
        self.metrics.store_call("append_worker_lines");
        let stored = self.inner.append_worker_lines(lines).await?;
        self.publish_lines(lines, &stored);
        Ok(stored)
    }

    async fn read_logs(
        &self,
        id: BuildId,
        start: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<LogPage> {
        self.metrics.store_call("read_logs");
        self.inner.read_logs(id, start, limit, max_bytes).await
    }

    async fn ping(&self) -> Result<()> {
        self.metrics.store_call("ping");
        self.inner.ping().await
    }

    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats> {
        self.metrics.store_call("queue_stats");
        self.inner.queue_stats(now).await
    }

    async fn ended_with_context(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Build>> {
        self.metrics.store_call("ended_with_context");
        self.inner.ended_with_context(ended_before, limit).await
    }

    async fn mark_contexts_pruned(&self, builds: &[BuildId]) -> Result<()> {
        self.metrics.store_call("mark_contexts_pruned");
        self.inner.mark_contexts_pruned(builds).await
    }

    async fn delete_ended_builds(&self, ended_before: DateTime<Utc>, limit: u32) -> Result<u64> {
        self.metrics.store_call("delete_ended_builds");
        let deleted = self.inner.delete_ended_builds(ended_before, limit).await?;
        if deleted > 0 {
            // Lists showing the deleted builds change.
            self.feed.touch();
        }
        Ok(deleted)
    }
}
