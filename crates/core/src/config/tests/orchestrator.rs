//! ORCHESTRATOR: memory or Redis, by key prefix.

use super::{assert_cases, errors, load, manager, warnings};
use crate::config::OrchestratorConfig;

#[test]
fn every_error_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_PREFIX: x/}"),
            vec![
                "BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PREFIX: a key prefix does not belong in ORCHESTRATOR; set ORCHESTRATOR_PREFIX instead",
            ],
        ),
        (
            manager("ORCHESTRATOR: {REDIS_HOST: h, MEM_CONFIG: x}"),
            vec![
                "BUILD_MANAGER[1].ORCHESTRATOR: mixes REDIS_* and MEM_* keys; configure one orchestrator",
            ],
        ),
        (
            manager("ORCHESTRATOR: {REDIS_PORT: 6379}"),
            vec!["BUILD_MANAGER[1].ORCHESTRATOR: missing required key REDIS_HOST"],
        ),
        (
            manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_PORT: 70000}"),
            vec!["BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PORT: must be at most 65535, got 70000"],
        ),
        (
            manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_SSL: maybe}"),
            vec![r#"BUILD_MANAGER[1].ORCHESTRATOR.REDIS_SSL: expected a boolean, got "maybe""#],
        ),
        (
            manager("ORCHESTRATOR: {REDIS_HOST: h, REDIS_CERT_AND_KEY: [a, b]}"),
            vec![
                "BUILD_MANAGER[1].ORCHESTRATOR.REDIS_CERT_AND_KEY: expected a string, number or boolean, got a list",
            ],
        ),
        (
            manager("ORCHESTRATOR: [REDIS_HOST]"),
            vec!["BUILD_MANAGER[1].ORCHESTRATOR: expected a mapping, got a list"],
        ),
    ];
    assert_cases(&cases, errors);
}

#[test]
fn every_warning_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            manager("ORCHESTRATOR: {REDIS_HOST: h, ETCD_HOST: e, 5: x}"),
            vec![
                "BUILD_MANAGER[1].ORCHESTRATOR.ETCD_HOST: unknown key, ignored",
                "BUILD_MANAGER[1].ORCHESTRATOR.5: unknown key, ignored",
            ],
        ),
        (
            manager("ORCHESTRATOR: {MEM_CONFIG: x, MEM_OTHER: 1}"),
            vec![],
        ),
    ];
    assert_cases(&cases, warnings);
}

#[test]
fn redis_extra_keys_are_lower_cased() {
    let bm = load(&manager(
        "ORCHESTRATOR: {REDIS_HOST: r, REDIS_CA_CERT: /ca.pem, REDIS_CLIENT_THREADS: 4, \
         REDIS_CANCELLER_ONLY: true, REDIS_PASSWORD: ''}",
    ))
    .config
    .build_manager;
    let OrchestratorConfig::Redis(redis) = bm.orchestrator else {
        panic!("redis expected");
    };
    assert_eq!(redis.password, None);
    let extra: Vec<(&str, &str)> = (redis.extra.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        extra,
        [
            ("ca_cert", "/ca.pem"),
            ("canceller_only", "true"),
            ("client_threads", "4")
        ]
    );
}
