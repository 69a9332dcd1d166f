//! BUILDMAN_LIMITS: the bounds on what a client (a user's or a worker's) can make the manager
//! hold: request bodies, log pages, connections and their idle time, and API requests per
//! token. Every key is optional; the defaults suit one manager on a small machine.

use std::time::Duration;

use super::diagnostics::Section;

/// Bounds on what clients can make the manager hold (BUILDMAN_LIMITS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// JSON_BODY_BYTES: largest JSON request body of the REST API (default 64 KiB).
    pub json_body_bytes: u64,
    /// UPLOAD_BYTES: largest uploaded build context (default 2 GiB).
    pub upload_bytes: u64,
    /// LOG_PAGE_BYTES: a log page stops before this many bytes of entries (default 4 MiB;
    /// a page always holds at least one entry, so a client always pages on).
    pub log_page_bytes: u64,
    /// HEADER_READ_TIMEOUT (seconds): how long a REST client may take to send a request's
    /// headers (default 10).
    pub header_read_timeout: Duration,
    /// IDLE_TIMEOUT (seconds): a connection, REST or gRPC, on which nothing was read or
    /// written for this long is closed (default 120; live workers heartbeat far more often,
    /// and the gRPC server pings quiet connections every KEEPALIVE_INTERVAL).
    pub idle_timeout: Duration,
    /// KEEPALIVE_INTERVAL (seconds): the gRPC server's HTTP/2 ping on a quiet connection
    /// (default 30); a ping unanswered for KEEPALIVE_TIMEOUT closes it.
    pub keepalive_interval: Duration,
    /// KEEPALIVE_TIMEOUT (seconds, default 20).
    pub keepalive_timeout: Duration,
    /// MAX_CONNECTIONS: open connections per listener (REST, gRPC, metrics; default 4096);
    /// further clients wait in the listen backlog until one closes.
    pub max_connections: u32,
    /// RATE_PER_SECOND: REST requests per second per API token, sustained (default 50).
    pub rate_per_second: u32,
    /// RATE_BURST: REST requests one token may send at once above the rate (default 200).
    pub rate_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            json_body_bytes: 64 << 10,
            upload_bytes: 2 << 30,
            log_page_bytes: 4 << 20,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_connections: 4096,
            rate_per_second: 50,
            rate_burst: 200,
        }
    }
}

/// Reads BUILDMAN_LIMITS; a missing key keeps its default.
pub(super) fn parse_limits(s: &mut Section) -> Limits {
    let mut limits = Limits::default();
    let Some(mut l) = s.section("BUILDMAN_LIMITS") else {
        return limits;
    };
    let bytes = |l: &mut Section, key: &str, into: &mut u64| {
        if let Some(n) = l.u64(key) {
            if n == 0 {
                l.r.error(&l.child(key), "must be at least 1");
            } else {
                *into = n;
            }
        }
    };
    bytes(&mut l, "JSON_BODY_BYTES", &mut limits.json_body_bytes);
    bytes(&mut l, "UPLOAD_BYTES", &mut limits.upload_bytes);
    bytes(&mut l, "LOG_PAGE_BYTES", &mut limits.log_page_bytes);
    let seconds = |l: &mut Section, key: &str, into: &mut Duration| {
        if let Some(n) = l.u32_at_least(key, 1) {
            *into = Duration::from_secs(n.into());
        }
    };
    seconds(
        &mut l,
        "HEADER_READ_TIMEOUT",
        &mut limits.header_read_timeout,
    );
    seconds(&mut l, "IDLE_TIMEOUT", &mut limits.idle_timeout);
    seconds(&mut l, "KEEPALIVE_INTERVAL", &mut limits.keepalive_interval);
    seconds(&mut l, "KEEPALIVE_TIMEOUT", &mut limits.keepalive_timeout);
    let count = |l: &mut Section, key: &str, into: &mut u32| {
        if let Some(n) = l.u32_at_least(key, 1) {
            *into = n;
        }
    };
    count(&mut l, "MAX_CONNECTIONS", &mut limits.max_connections);
    count(&mut l, "RATE_PER_SECOND", &mut limits.rate_per_second);
    count(&mut l, "RATE_BURST", &mut limits.rate_burst);
    l.finish();
    limits
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "FEATURE_BUILD_SUPPORT: true\n";

    #[test]
    fn unset_keys_keep_their_defaults() {
        let yaml = format!("{BASE}BUILDMAN_LIMITS: {{MAX_CONNECTIONS: 8, IDLE_TIMEOUT: 2}}\n");
        let limits = Config::parse(&yaml).expect("valid").config.limits;
        assert_eq!(limits.max_connections, 8);
        assert_eq!(limits.idle_timeout.as_secs(), 2);
        assert_eq!(limits.json_body_bytes, 64 << 10);
        assert_eq!(limits.log_page_bytes, 4 << 20);
    }

    #[test]
    fn zero_and_unknown_keys_are_reported() {
        let yaml = format!("{BASE}BUILDMAN_LIMITS: {{JSON_BODY_BYTES: 0, RATE: 5}}\n");
        let invalid = Config::parse(&yaml).expect_err("zero refused");
        assert_eq!(invalid.errors[0].path, "BUILDMAN_LIMITS.JSON_BODY_BYTES");
        assert!(
            invalid
                .warnings
                .iter()
                .any(|w| w.path == "BUILDMAN_LIMITS.RATE")
        );
    }
}
