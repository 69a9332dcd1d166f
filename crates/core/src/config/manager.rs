//! BUILD_MANAGER: `[lifecycle, {...}]`, Quay's two-element list; the mapping holds the worker
//! limits, the orchestrator and the executors.

use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::diagnostics::{Report, Section, index, plain};
use super::executors::{ExecutorConfig, parse_executors};
use super::orchestrator::{OrchestratorConfig, parse_orchestrator};

/// The first element of BUILD_MANAGER.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lifecycle {
    /// `ephemeral`: the manager starts a worker per build.
    #[default]
    Ephemeral,
    /// `external`: builds run elsewhere; executors are not required.
    External,
}

/// The second element of BUILD_MANAGER.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildManagerConfig {
    /// The list's first element.
    pub lifecycle: Lifecycle,
    /// ALLOWED_WORKER_COUNT: running workers allowed over all executors (default 1, >= 1).
    pub allowed_worker_count: u32,
    /// ORCHESTRATOR_PREFIX: prefix of every orchestrator key; ends with `/` unless empty.
    pub orchestrator_prefix: String,
    /// ORCHESTRATOR: where jobs are tracked.
    pub orchestrator: OrchestratorConfig,
    /// JOB_REGISTRATION_TIMEOUT: how long a created job may wait to be scheduled (default 30 s).
    pub job_registration_timeout: Duration,
    /// MACHINE_MAX_TIME: how long a build may run in total (default 7200 s).
    pub machine_max_time: Duration,
    /// EXECUTORS (or EXECUTOR + EXECUTOR_CONFIG), in the order they are tried.
    pub executors: Vec<ExecutorConfig>,
}

impl Default for BuildManagerConfig {
    fn default() -> Self {
        BuildManagerConfig {
            lifecycle: Lifecycle::Ephemeral,
            allowed_worker_count: 1,
            orchestrator_prefix: String::new(),
            orchestrator: OrchestratorConfig::Memory,
            job_registration_timeout: Duration::from_secs(30),
            machine_max_time: Duration::from_secs(7200),
            executors: vec![ExecutorConfig::default()],
        }
    }
}

pub(super) fn parse_build_manager(r: &Report, value: &Value) -> BuildManagerConfig {
    const PATH: &str = "BUILD_MANAGER";
    let defaults = BuildManagerConfig::default();
    let items = match value {
        Value::Sequence(items) if !items.is_empty() => items,
        _ => {
            r.expected(PATH, "a list like [ephemeral, {...}]", value);
            return defaults;
        }
    };
    let lifecycle_path = index(PATH, 0);
    let lifecycle = match plain(&items[0]).as_deref() {
        Some("ephemeral") => Lifecycle::Ephemeral,
        Some("external") => Lifecycle::External,
        _ => {
            r.expected(&lifecycle_path, r#""ephemeral" or "external""#, &items[0]);
            Lifecycle::Ephemeral
        }
    };
    for i in 2..items.len() {
        r.warn(&index(PATH, i), "unexpected list element, ignored");
    }
    let empty = Mapping::new();
    let path = index(PATH, 1);
    let mut s = match items.get(1) {
        None | Some(Value::Null) => Section::new(r, path, &empty),
        Some(v) => match Section::of(r, path, v) {
            Some(s) => s,
            None => return defaults,
        },
    };
    let config = BuildManagerConfig {
        lifecycle,
        allowed_worker_count: (s.u32_at_least("ALLOWED_WORKER_COUNT", 1))
            .unwrap_or(defaults.allowed_worker_count),
        orchestrator_prefix: parse_prefix(&mut s),
        orchestrator: parse_orchestrator(&mut s),
        job_registration_timeout: (s.duration("JOB_REGISTRATION_TIMEOUT"))
            .unwrap_or(defaults.job_registration_timeout),
        machine_max_time: s
            .duration("MACHINE_MAX_TIME")
            .unwrap_or(defaults.machine_max_time),
        executors: parse_executors(&mut s, lifecycle),
    };
    s.finish();
    config
}

/// ORCHESTRATOR_PREFIX, given a trailing `/` (with a warning) like Quay's slash_join does.
fn parse_prefix(s: &mut Section) -> String {
    let prefix = s.string("ORCHESTRATOR_PREFIX").unwrap_or_default();
    if prefix.is_empty() || prefix.ends_with('/') {
        return prefix;
    }
    let fixed = format!("{prefix}/");
    s.r.warn(
        &s.child("ORCHESTRATOR_PREFIX"),
        format!("should end with \"/\"; using {fixed:?}"),
    );
    fixed
}
