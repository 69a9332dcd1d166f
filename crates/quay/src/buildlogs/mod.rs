//! Build logs in Quay's build-log Redis (`BUILDLOGS_REDIS`; quay-integration.md section 11):
//! the keys, their time-to-live, and the JSON entries Quay's UI, API and log archiver read.
//!
//! Each build's log is the Redis list `builds/<uuid>/logs`, one JSON entry per element,
//! only ever appended to while the build lives (the API pages it by index). Quay's manager
//! sends EXPIRE (7 days) before RPUSH, which leaves a new list without a time-to-live until
//! its second append; a writer should RPUSH first, then EXPIRE.

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod python_json;

pub use python_json::dumps as python_json;

/// How long a build's log list lives after its last append.
pub const LOGS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// What Quay's log archiver leaves of `builds/<uuid>/status` once the log is archived.
pub const STATUS_TTL_AFTER_ARCHIVE: Duration = Duration::from_secs(24 * 3600);
/// The key Quay's health check writes.
pub const HEALTH_KEY: &str = "_health";

/// The list holding a build's log entries.
pub fn logs_key(build_uuid: &str) -> String {
    format!("builds/{build_uuid}/logs")
}

/// The build status Quay's API shows (`status` in the build view). Quay's current manager
/// never writes it; a value with a `heartbeat` older than a minute makes the API show the
/// build as `internalerror`, so a writer that sets it must keep that heartbeat fresh.
pub fn status_key(build_uuid: &str) -> String {
    format!("builds/{build_uuid}/status")
}

/// What an entry is, for Quay's UI: the domain's own kinds, which are Quay's.
pub use buildman_core::log::LogType as EntryType;

/// One element of `builds/<uuid>/logs`: `{"message", "type"?, "data"?}`, in that order.
/// The same JSON as [`buildman_core::log::LogEntry`], whose `data` is untyped (so its keys
/// come out sorted); this one types Quay's `data` keys to write them in Quay's order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The text shown.
    pub message: String,
    /// Absent for a plain output line.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EntryType>,
    /// Absent only in entries Quay's manager did not write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<EntryData>,
}

/// An entry's `data`. Keys in Quay's order: a phase's pull metadata (only the non-empty
/// ones), an error's details, then `datetime`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntryData {
    /// Pull metadata from the worker's SetPhase (phase entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_username: Option<String>,
    /// Error entries (written by Quay's older managers; shown by the UI): the underlying
    /// error, and whether the failure was the build system's rather than the build's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_error: Option<bool>,
    /// When the entry was written, in the manager's local time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datetime: Option<PyDateTime>,
}

/// A phase's pull metadata, as the worker's SetPhase carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullMetadata {
    pub registry_url: String,
    pub base_image: String,
    pub base_image_tag: String,
    pub pull_username: String,
}

/// A naive time as Python's `str(datetime)` writes it: `YYYY-MM-DD HH:MM:SS.ffffff`,
/// without the fraction when the microseconds are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyDateTime(pub NaiveDateTime);

impl std::fmt::Display for PyDateTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.and_utc().timestamp_subsec_micros();
        write!(f, "{}", self.0.format("%Y-%m-%d %H:%M:%S"))?;
        if micros != 0 {
            write!(f, ".{micros:06}")?;
        }
        Ok(())
    }
}

impl Serialize for PyDateTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PyDateTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f")
            .map(PyDateTime)
            .map_err(|e| serde::de::Error::custom(format!("datetime {text:?}: {e}")))
    }
}

/// A worker's LogMessage that is not a JSON object (Quay refuses and stores nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the worker's log line is not a JSON object; Quay stores only JSON lines")]
pub struct NotJson;

impl LogEntry {
    /// The entry of a worker's LogMessage (a JSON line of the backend's output): the first
    /// of `error`, `status`, `stream` present, typed `command` when it names a Dockerfile
    /// step.
    pub fn from_worker_line(line: &str, now: NaiveDateTime) -> Result<Self, NotJson> {
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|_| NotJson)?;
        let message = ["error", "status", "stream"]
            .iter()
            .find_map(|k| value.get(*k))
            .map(python_str)
            .unwrap_or_default();
        let kind = is_step(&message).then_some(EntryType::Command);
        Ok(Self {
            message,
            kind,
            data: Some(EntryData::at(now)),
        })
    }

    /// The entry of a phase change, with the non-empty pull metadata.
    pub fn phase(phase: &str, pull: &PullMetadata, now: NaiveDateTime) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let data = EntryData {
            registry_url: some(&pull.registry_url),
            base_image: some(&pull.base_image),
            base_image_tag: some(&pull.base_image_tag),
            pull_username: some(&pull.pull_username),
            ..EntryData::at(now)
        };
        Self {
            message: phase.to_owned(),
            kind: Some(EntryType::Phase),
            data: Some(data),
        }
    }

    /// An error entry, as Quay's older managers wrote it and the UI shows it.
    pub fn error(message: &str, internal: bool, now: NaiveDateTime) -> Self {
        let data = EntryData {
            internal_error: Some(internal),
            ..EntryData::at(now)
        };
        Self {
            message: message.to_owned(),
            kind: Some(EntryType::Error),
            data: Some(data),
        }
    }

    /// The list element: the JSON text Quay's manager writes.
    pub fn to_json(&self) -> String {
        // Strings, booleans and a time: nothing here fails to serialize.
        python_json(self).unwrap_or_default()
    }
}

impl EntryData {
    /// Data holding only the time.
    pub fn at(now: NaiveDateTime) -> Self {
        Self {
            datetime: Some(PyDateTime(now)),
            ..Self::default()
        }
    }
}

/// Python's `str()` of a JSON value: strings as they are, `True`/`False`/`None`, numbers as
/// written. (Objects and arrays, which no worker sends here, are shown as JSON rather than
/// as Python's repr.)
fn python_str(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// Quay's `_extract_current_step`: the first `Step N/M :` anywhere, else the first
/// `Step N :`, and N (ASCII digits) not 0 — Python treats a step 0 as no step.
fn is_step(text: &str) -> bool {
    step_number(text, true)
        .or_else(|| step_number(text, false))
        .is_some_and(|n| n.bytes().any(|b| b != b'0'))
}

/// N of the first `Step N/M :` (`with_total`) or `Step N :` in `text`.
fn step_number(text: &str, with_total: bool) -> Option<&str> {
    text.match_indices("Step ").find_map(|(at, _)| {
        let rest = &text[at + 5..];
        let n_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (n, mut tail) = rest.split_at(n_len);
        if n.is_empty() {
            return None;
        }
        if with_total {
            tail = tail.strip_prefix('/')?;
            let m_len = tail.bytes().take_while(u8::is_ascii_digit).count();
            if m_len == 0 {
                return None;
            }
            tail = &tail[m_len..];
        }
        tail.starts_with(" :").then_some(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_found_as_quays_regexes_find_them() {
        for (text, step) in [
            ("Step 1/3 : FROM busybox", true),
            ("Step 12 : RUN x", true),
            ("--> Step 2/2 : RUN y", true),
            ("Step 0/3 : FROM x", false),
            ("Step 00 : FROM x", false),
            ("Step 0/3 : then Step 4 : x", false),
            ("Step x/3 : Step 3 : y", true),
            ("Step 1/3: FROM x", false),
            ("step 1/3 : FROM x", false),
            ("Step ١/3 : FROM x", false),
            ("", false),
        ] {
            assert_eq!(is_step(text), step, "{text:?}");
        }
    }
}
