//! Tests of the configuration, one file per section as in the code, plus Quay's sample file;
//! the helpers they share live here.

use super::{Config, Loaded};

mod buildman_keys;
mod context_storage;
mod diagnostics;
mod executors;
mod manager;
mod orchestrator;
mod quay;
mod sample;
mod top_level;

fn load(yaml: &str) -> Loaded {
    match Config::parse(yaml) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("unexpected errors for {yaml:?}: {errors:#?}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match Config::parse(yaml) {
        Ok(loaded) => panic!("expected errors for {yaml:?}, parsed {:#?}", loaded.config),
        Err(invalid) => invalid.errors.iter().map(ToString::to_string).collect(),
    }
}

fn warnings(yaml: &str) -> Vec<String> {
    load(yaml)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A BUILD_MANAGER whose second element is `body` (flow-style YAML mapping content).
fn manager(body: &str) -> String {
    format!("BUILD_MANAGER: [ephemeral, {{{body}}}]")
}

/// A BUILD_MANAGER with one executor whose mapping content is `body`.
fn executor(body: &str) -> String {
    manager(&format!("EXECUTORS: [{{{body}}}]"))
}

/// Runs `check` (`errors` or `warnings`) on every case's YAML and fails naming every case whose
/// messages differ from the expected ones.
fn assert_cases(cases: &[(String, Vec<&str>)], check: fn(&str) -> Vec<String>) {
    let mut failures = Vec::new();
    for (yaml, expected) in cases {
        let got = check(yaml);
        if got != *expected {
            failures.push(format!(
                "{yaml}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
