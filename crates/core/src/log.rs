//! Build log entries: what a worker's output line and a phase change become in a build's log.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The kind of a log entry, when it is not plain output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogType {
    /// A Dockerfile step (`Step N/M : ...`).
    Command,
    /// A phase change; `data` holds the pull metadata and the time.
    Phase,
    /// A failure reported by the worker or the manager.
    Error,
}

/// One entry of a build's log, in Quay's shape: `{"message", "type"?, "data"?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub message: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<LogType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A worker's log line was not a JSON object.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("log message is not a JSON object: {0}")]
pub struct NotJson(pub String);

impl LogEntry {
    /// Plain output.
    pub fn output(message: impl Into<String>) -> Self {
        LogEntry {
            message: message.into(),
            kind: None,
            data: None,
        }
    }

    /// A phase change entry; `data` gets a `datetime` field added.
    pub fn phase(phase: crate::Phase, mut data: Map<String, Value>, datetime: &str) -> Self {
        data.insert("datetime".into(), Value::String(datetime.to_string()));
        LogEntry {
            message: phase.as_str().to_string(),
            kind: Some(LogType::Phase),
            data: Some(Value::Object(data)),
        }
    }

    /// An error entry written by the manager.
    pub fn error(message: impl Into<String>) -> Self {
        LogEntry {
            message: message.into(),
            kind: Some(LogType::Error),
            data: None,
        }
    }

    /// True for a chunk of an over-long output line that goes on in the next entry.
    pub fn continues(&self) -> bool {
        self.data
            .as_ref()
            .is_some_and(|d| d.get("continues") == Some(&Value::Bool(true)))
    }

    /// Turns one worker line (a Docker build-stream JSON object) into a log entry:
    /// `{"stream": s}` is output, or a `command` when it is a `Step N/M :` line;
    /// `{"status": s, ...}` is progress; `{"error": e, "errorDetail": d}` is an error.
    /// `{"stream": s, "continues": true}` is a chunk of an over-long line, kept with
    /// `data: {"continues": true}`: displays join it with the next entry.
    pub fn from_worker_line(line: &str) -> Result<Self, NotJson> {
        let value: Value = serde_json::from_str(line).map_err(|e| NotJson(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(NotJson("expected an object".to_string()));
        };
        if let Some(Value::String(err)) = obj.remove("error") {
            let detail = obj.remove("errorDetail");
            return Ok(LogEntry {
                message: err,
                kind: Some(LogType::Error),
                data: detail,
            });
        }
        if let Some(Value::String(stream)) = obj.remove("stream") {
            let kind = is_step_line(&stream).then_some(LogType::Command);
            let continues = obj.get("continues") == Some(&Value::Bool(true));
            return Ok(LogEntry {
                message: stream,
                kind,
                data: continues.then(|| serde_json::json!({ "continues": true })),
            });
        }
        if let Some(Value::String(status)) = obj.remove("status") {
            let data = (!obj.is_empty()).then_some(Value::Object(obj));
            return Ok(LogEntry {
                message: status,
                kind: None,
                data,
            });
        }
        // Any other object is kept whole, so nothing a worker said is lost.
        Ok(LogEntry {
            message: Value::Object(obj).to_string(),
            kind: None,
            data: None,
        })
    }
}

/// Whether a worker's log line is new, given the highest sequence number stored from the
/// same attempt's worker (`None`: nothing yet). A worker numbers its lines upwards and
/// re-sends the unacknowledged ones after a reconnect, so a line numbered at or below that
/// mark was stored already: it is acknowledged, not stored again.
pub fn is_new_worker_line(last_stored: Option<i32>, sequence: i32) -> bool {
    last_stored.is_none_or(|last| sequence > last)
}

/// True for `Step N/M : ...` and the older `Step N : ...` lines.
pub fn is_step_line(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix("Step ") else {
        return false;
    };
    let Some((numbers, _)) = rest.split_once(" :") else {
        return false;
    };
    let mut parts = numbers.splitn(2, '/');
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (parts.next(), parts.next()) {
        (Some(n), None) => digits(n),
        (Some(n), Some(m)) => digits(n) && digits(m),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_new_only_above_the_last_stored_sequence() {
        assert!(is_new_worker_line(None, 0));
        assert!(is_new_worker_line(Some(4), 5));
        assert!(!is_new_worker_line(Some(4), 4));
        assert!(!is_new_worker_line(Some(4), 1));
    }

    #[test]
    fn step_lines_become_commands() {
        let e = LogEntry::from_worker_line(r#"{"stream":"Step 1/3 : FROM scratch"}"#).unwrap();
        assert_eq!(e.kind, Some(LogType::Command));
        assert_eq!(e.message, "Step 1/3 : FROM scratch");
        let e = LogEntry::from_worker_line(r#"{"stream":"Step 2 : RUN x"}"#).unwrap();
        assert_eq!(e.kind, Some(LogType::Command));
        let e = LogEntry::from_worker_line(r#"{"stream":"Stepping 2/3 : no"}"#).unwrap();
        assert_eq!(e.kind, None);
        assert!(!is_step_line("Step x/3 : y"));
    }

    #[test]
    fn errors_and_status_keep_their_details() {
        let e = LogEntry::from_worker_line(r#"{"error":"boom","errorDetail":{"message":"boom"}}"#)
            .unwrap();
        assert_eq!(e.kind, Some(LogType::Error));
        assert_eq!(e.data, Some(serde_json::json!({"message":"boom"})));
        let e = LogEntry::from_worker_line(r#"{"status":"Pulling","id":"abc"}"#).unwrap();
        assert_eq!(e.message, "Pulling");
        assert_eq!(e.data, Some(serde_json::json!({"id":"abc"})));
    }

    #[test]
    fn continued_chunks_are_marked_and_only_they() {
        let e = LogEntry::from_worker_line(r#"{"stream":"aaaa","continues":true}"#).unwrap();
        assert_eq!(e.message, "aaaa");
        assert_eq!(e.data, Some(serde_json::json!({"continues": true})));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["data"]["continues"], true);
        for line in [
            r#"{"stream":"end\n"}"#,
            r#"{"stream":"x","continues":false}"#,
        ] {
            assert_eq!(
                LogEntry::from_worker_line(line).unwrap().data,
                None,
                "{line}"
            );
        }
    }

    #[test]
    fn non_json_is_refused() {
        assert!(LogEntry::from_worker_line("plain text").is_err());
        assert!(LogEntry::from_worker_line("[1,2]").is_err());
    }
}
