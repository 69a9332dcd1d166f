//! ORCHESTRATOR inside BUILD_MANAGER: the key prefix picks the orchestrator (`REDIS_*` for
//! Redis, `MEM_*` or nothing for memory), as in Quay.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::diagnostics::{Section, plain, to_bounded, to_string};
use super::redact::debug_redacting;

/// The orchestrator, chosen by the prefix of the keys under ORCHESTRATOR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrchestratorConfig {
    /// No keys, or `MEM_*` keys: in-process memory.
    Memory,
    /// `REDIS_*` keys.
    Redis(RedisConfig),
}

/// The `REDIS_*` keys of ORCHESTRATOR.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// REDIS_HOST (required).
    pub host: String,
    /// REDIS_PORT (default 6379).
    pub port: u16,
    /// REDIS_PASSWORD (redacted in Debug; empty means none).
    pub password: Option<String>,
    /// REDIS_SSL (default false).
    pub ssl: bool,
    /// REDIS_DB (default 0).
    pub db: u32,
    /// REDIS_SKIP_KEYSPACE_EVENT_SETUP: do not run `CONFIG SET notify-keyspace-events`.
    pub skip_keyspace_event_setup: bool,
    /// Every other `REDIS_*` key, lower-cased after the prefix (`REDIS_CA_CERT` -> `ca_cert`).
    pub extra: BTreeMap<String, String>,
}

debug_redacting!(RedisConfig {
    host, port, ssl, db, skip_keyspace_event_setup, extra,
} secret { password });

pub(super) fn parse_orchestrator(s: &mut Section) -> OrchestratorConfig {
    let Some(mut o) = s.section("ORCHESTRATOR") else {
        return OrchestratorConfig::Memory;
    };
    let r = o.r;
    let (mut redis, mut memory) = (false, false);
    for (key, _) in o.unused() {
        if key.ends_with("_PREFIX") {
            r.error(
                &o.child(&key),
                "a key prefix does not belong in ORCHESTRATOR; set ORCHESTRATOR_PREFIX instead",
            );
            o.used.insert(key);
        } else if key.starts_with("REDIS_") {
            redis = true;
        } else if key.starts_with("MEM_") {
            // The memory orchestrator takes no options.
            memory = true;
            o.used.insert(key);
        }
    }
    if redis && memory {
        r.error(
            &o.path,
            "mixes REDIS_* and MEM_* keys; configure one orchestrator",
        );
    }
    if !redis {
        o.finish();
        return OrchestratorConfig::Memory;
    }
    let host = o.required("REDIS_HOST", to_string).unwrap_or_default();
    let mut config = RedisConfig {
        host,
        port: o.get("REDIS_PORT", to_bounded(u16::MAX)).unwrap_or(6379),
        password: o.string("REDIS_PASSWORD").filter(|p| !p.is_empty()),
        ssl: o.bool("REDIS_SSL").unwrap_or(false),
        db: o.u32("REDIS_DB").unwrap_or(0),
        skip_keyspace_event_setup: o.bool("REDIS_SKIP_KEYSPACE_EVENT_SETUP").unwrap_or(false),
        extra: BTreeMap::new(),
    };
    for (key, value) in o.unused() {
        let Some(option) = key.strip_prefix("REDIS_") else {
            continue;
        };
        match value {
            Value::Null => {}
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                let text = plain(value).unwrap_or_default();
                config.extra.insert(option.to_ascii_lowercase(), text);
            }
            _ => r.expected(&o.child(&key), "a string, number or boolean", value),
        }
        o.used.insert(key);
    }
    o.finish();
    OrchestratorConfig::Redis(config)
}
