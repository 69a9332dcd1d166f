//! The gauges read from shared state on a timer, as Quay refreshes its queue gauges: the
//! queue's counts from the store, the live jobs by executor from the orchestrator, the data
//! dir's size from the disk. Every manager reads the same figures, so they are right
//! however many managers there are.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildman_store::Store;

use super::Metrics;
use crate::executors::Executors;
use crate::records::JobRecords;

/// What the refresher reads and where it writes.
pub(crate) struct Refresher {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) records: JobRecords,
    pub(crate) executors: Executors,
    pub(crate) data_dir: Option<PathBuf>,
}

impl Refresher {
    /// Refreshes every `every`, until the manager stops.
    pub(crate) async fn run(self, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.refresh().await;
        }
    }

    /// One refresh; a source that fails keeps its gauges as they were (with a warning).
    async fn refresh(&self) {
        let now = chrono::Utc::now();
        match self.store.queue_stats(now).await {
            Ok(stats) => self.metrics.set_queue(&stats, now),
            Err(e) => tracing::warn!(error = %e, "metrics: could not count the queue"),
        }
        match self.records.all().await {
            Ok(records) => {
                for configured in self.executors.iter() {
                    let name = &configured.entry.config.name;
                    let n = (records.iter())
                        .filter(|r| r.executor_name.as_deref() == Some(name.as_str()))
                        .count();
                    self.metrics.set_workers(name, n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: could not list the live jobs"),
        }
        if let Some(dir) = self.data_dir.clone() {
            let started = Instant::now();
            match tokio::task::spawn_blocking(move || disk_usage(&dir)).await {
                Ok(bytes) => self.metrics.set_data_dir_bytes(bytes),
                Err(e) => tracing::warn!(error = %e, "metrics: could not measure the data dir"),
            }
            tracing::debug!(took = ?started.elapsed(), "measured the data dir");
        }
    }
}

/// The disk space (allocated blocks) of everything under `path`, symbolic links not
/// followed; what cannot be read (a file removed meanwhile) counts as nothing.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks().saturating_mul(512);
    if !meta.is_dir() {
        return own;
    }
    let entries = std::fs::read_dir(path).into_iter().flatten().flatten();
    own + entries.map(|e| disk_usage(&e.path())).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_what_is_written_below() {
        let dir = tempfile_dir();
        let empty = disk_usage(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/data"), vec![7u8; 1 << 20]).unwrap();
        let used = disk_usage(&dir);
        assert!(used >= empty + (1 << 20), "{empty} then {used}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("buildman-du-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
