//! Diagnostics and the value readers.

use std::time::Duration;

use super::{load, manager};
use crate::config::{Diagnostic, ExecutorSpecific, OrchestratorConfig, PopenConfig};

#[test]
fn diagnostic_display() {
    let d = |path: &str| Diagnostic {
        path: path.into(),
        message: "broken".into(),
    };
    assert_eq!(d("").to_string(), "broken");
    assert_eq!(d("A.B").to_string(), "A.B: broken");
}

#[test]
fn quoted_numbers_and_booleans_are_accepted() {
    let yaml = format!(
        "FEATURE_BUILD_SUPPORT: 'true'\n{}",
        manager(
            "ALLOWED_WORKER_COUNT: '3', JOB_REGISTRATION_TIMEOUT: ' 45 ', \
             ORCHESTRATOR: {REDIS_HOST: h, REDIS_PORT: '6380', REDIS_SSL: 'False', REDIS_DB: '2'}, \
             EXECUTORS: [{EXECUTOR: popen, SETUP_TIME: '30', STAGED_ROLLOUT: '0.5', DEBUG: TRUE, \
             INSECURE: 'true', VOLUME_SIZE: 8}]"
        )
    );
    let config = load(&yaml).config;
    assert!(config.feature_build_support);
    let bm = config.build_manager;
    assert_eq!(bm.allowed_worker_count, 3);
    assert_eq!(bm.job_registration_timeout, Duration::from_secs(45));
    let OrchestratorConfig::Redis(redis) = bm.orchestrator else {
        panic!("expected redis");
    };
    assert_eq!((redis.port, redis.ssl, redis.db), (6380, false, 2));
    let e = &bm.executors[0];
    assert_eq!(e.setup_time, Duration::from_secs(30));
    assert_eq!(e.staged_rollout, Some(0.5));
    assert!(e.debug);
    assert_eq!(e.volume_size.as_deref(), Some("8"));
    assert_eq!(
        e.specific,
        ExecutorSpecific::Popen(PopenConfig {
            insecure: true,
            ..PopenConfig::default()
        })
    );
}
