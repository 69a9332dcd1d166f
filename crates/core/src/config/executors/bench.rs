//! The bench executor (buildman's own, benchmarks only): no worker; the registration token goes
//! to a load generator.

use crate::config::diagnostics::{Section, http_url};

/// The bench executor's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BenchConfig {
    /// BENCH_CALLBACK_URL (required): where the load generator takes start requests.
    pub callback_url: String,
}

pub(super) fn parse_bench(s: &mut Section, d: BenchConfig) -> BenchConfig {
    BenchConfig {
        callback_url: s
            .required("BENCH_CALLBACK_URL", http_url)
            .unwrap_or(d.callback_url),
    }
}
