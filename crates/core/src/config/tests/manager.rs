//! BUILD_MANAGER: its shape, lifecycle, limits and ORCHESTRATOR_PREFIX.

use super::{assert_cases, errors, load, manager, warnings};
use crate::config::Lifecycle;

#[test]
fn every_error_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "BUILD_MANAGER: {ALLOWED_WORKER_COUNT: 1}".into(),
            vec!["BUILD_MANAGER: expected a list like [ephemeral, {...}], got a mapping"],
        ),
        (
            "BUILD_MANAGER: []".into(),
            vec!["BUILD_MANAGER: expected a list like [ephemeral, {...}], got an empty list"],
        ),
        (
            "BUILD_MANAGER: [enterprise]".into(),
            vec![r#"BUILD_MANAGER[0]: expected "ephemeral" or "external", got "enterprise""#],
        ),
        (
            "BUILD_MANAGER: [ephemeral, [1]]".into(),
            vec!["BUILD_MANAGER[1]: expected a mapping, got a list"],
        ),
        (
            manager("ALLOWED_WORKER_COUNT: 0"),
            vec!["BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: must be at least 1, got 0"],
        ),
        (
            manager("ALLOWED_WORKER_COUNT: -2"),
            vec!["BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: must not be negative, got -2"],
        ),
        (
            manager("ALLOWED_WORKER_COUNT: ten"),
            vec![r#"BUILD_MANAGER[1].ALLOWED_WORKER_COUNT: expected an integer, got "ten""#],
        ),
        (
            manager("JOB_REGISTRATION_TIMEOUT: -5"),
            vec!["BUILD_MANAGER[1].JOB_REGISTRATION_TIMEOUT: must not be negative, got -5"],
        ),
        (
            manager("MACHINE_MAX_TIME: '-60'"),
            vec!["BUILD_MANAGER[1].MACHINE_MAX_TIME: must not be negative, got -60"],
        ),
        (
            manager("ORCHESTRATOR_PREFIX: [a]"),
            vec!["BUILD_MANAGER[1].ORCHESTRATOR_PREFIX: expected a string, got a list"],
        ),
    ];
    assert_cases(&cases, errors);
}

#[test]
fn every_warning_message_is_exact() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            manager("ALLOWED_WORKER_COUNT: 2, POOL_SIZE: 3"),
            vec!["BUILD_MANAGER[1].POOL_SIZE: unknown key, ignored"],
        ),
        (
            manager("ORCHESTRATOR_PREFIX: buildman"),
            vec![r#"BUILD_MANAGER[1].ORCHESTRATOR_PREFIX: should end with "/"; using "buildman/""#],
        ),
        (
            "BUILD_MANAGER: [ephemeral, {}, extra]".into(),
            vec!["BUILD_MANAGER[2]: unexpected list element, ignored"],
        ),
    ];
    assert_cases(&cases, warnings);
}

#[test]
fn external_lifecycle_needs_no_executor() {
    let bm = load("BUILD_MANAGER: [external, {EXECUTORS: []}]")
        .config
        .build_manager;
    assert_eq!(bm.lifecycle, Lifecycle::External);
    assert!(bm.executors.is_empty());
}
