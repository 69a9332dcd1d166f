//! Latency samples, their percentiles, and error counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;

/// Locks a mutex whose data stays consistent across a panic (every critical section here
/// is a single push or insert).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A duration in whole microseconds, saturating (samples are kept as u32 to stay small).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Percentiles of a set of latency samples, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl Summary {
    /// Summarises samples given in microseconds (nearest-rank percentiles).
    pub fn of(mut samples: Vec<u32>) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |q: f64| {
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            f64::from(samples[i]) / 1000.0
        };
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        Summary {
            count: n as u64,
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: f64::from(samples[n - 1]) / 1000.0,
            mean_ms: sum as f64 / n as f64 / 1000.0,
        }
    }

    /// `p50 1.23 ms, p90 ..., p99 ..., max ... (n samples)`.
    pub fn text(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// Latency samples shared by many tasks, kept only while recording is on (so a
/// measurement window can exclude ramp-up and shutdown).
#[derive(Default)]
pub struct Recorder {
    on: AtomicBool,
    samples: Mutex<Vec<u32>>,
}

impl Recorder {
    /// A recorder that records from the start.
    pub fn recording() -> Recorder {
        Recorder {
            on: AtomicBool::new(true),
            samples: Mutex::default(),
        }
    }

    /// Starts or stops recording.
    pub fn set_recording(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// Whether samples are kept now.
    pub fn is_recording(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Keeps one sample if recording.
    pub fn record(&self, d: Duration) {
        if self.is_recording() {
            lock(&self.samples).push(micros(d));
        }
    }

    /// Keeps many samples at once (a task's local batch), if recording.
    pub fn extend(&self, samples: &[u32]) {
        if self.is_recording() {
            lock(&self.samples).extend_from_slice(samples);
        }
    }

    /// The percentiles of what was recorded so far.
    pub fn summary(&self) -> Summary {
        Summary::of(lock(&self.samples).clone())
    }
}

/// Errors by kind, each with its first message as an example.
#[derive(Default)]
pub struct Errors {
    total: AtomicU64,
    kinds: Mutex<BTreeMap<String, (u64, String)>>,
}

/// What [`Errors`] reports.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ErrorReport {
    /// Every error counted.
    pub total: u64,
    /// Per kind: how many, and the first message seen.
    pub kinds: BTreeMap<String, ErrorKind>,
}

/// One kind of error in an [`ErrorReport`].
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ErrorKind {
    /// How many.
    pub count: u64,
    /// The first message of this kind.
    pub example: String,
}

impl Errors {
    /// Counts an error of `kind`.
    pub fn add(&self, kind: &str, message: impl std::fmt::Display) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut kinds = lock(&self.kinds);
        let entry = kinds
            .entry(kind.to_string())
            .or_insert_with(|| (0, message.to_string()));
        entry.0 += 1;
    }

    /// How many errors so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The counts so far.
    pub fn report(&self) -> ErrorReport {
        ErrorReport {
            total: self.total(),
            kinds: lock(&self.kinds)
                .iter()
                .map(|(k, (count, example))| {
                    (
                        k.clone(),
                        ErrorKind {
                            count: *count,
                            example: example.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl ErrorReport {
    /// `0` or `3 (register: 2, e.g. "..."; ...)`.
    pub fn text(&self) -> String {
        if self.total == 0 {
            return "0".to_string();
        }
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, e)| format!("{k}: {}, e.g. {:?}", e.count, e.example))
            .collect();
        format!("{} ({})", self.total, kinds.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!(s.count, 100);
        assert_eq!(
            (s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(s.mean_ms, 50.5);
        let one = Summary::of(vec![1500]);
        assert_eq!((one.p50_ms, one.p99_ms), (1.5, 1.5));
        assert_eq!(Summary::of(Vec::new()), Summary::default());
    }

    #[test]
    fn errors_keep_the_first_example() {
        let e = Errors::default();
        e.add("register", "first");
        e.add("register", "second");
        e.add("log", "x");
        let r = e.report();
        assert_eq!(r.total, 3);
        assert_eq!(r.kinds["register"].count, 2);
        assert_eq!(r.kinds["register"].example, "first");
        assert!(r.text().starts_with("3 ("), "{}", r.text());
    }
}
