//! What the OpenAPI document says of types this crate does not own: the log entry is the
//! domain's ([`buildman_core::LogEntry`]), which knows nothing of API documents.

use utoipa::ToSchema;

/// One entry of a build's log, in Quay's shape: plain output has only `message`.
#[derive(ToSchema)]
#[schema(as = LogEntry)]
#[allow(dead_code)] // Read by the schema derive only.
pub struct LogEntryDoc {
    /// The line (or, for a phase entry, the phase's name).
    message: String,
    /// What the entry is, when it is not plain output.
    #[schema(rename = "type")]
    kind: Option<LogTypeDoc>,
    /// A phase entry's data: the time and, for `pulling`, the base image.
    #[schema(value_type = Option<Object>)]
    data: Option<serde_json::Value>,
}

/// The kind of a log entry ([`buildman_core::log::LogType`] on the wire).
#[derive(ToSchema)]
#[schema(as = LogType, rename_all = "lowercase")]
#[allow(dead_code)] // Read by the schema derive only.
pub enum LogTypeDoc {
    /// A Dockerfile step (`Step N/M : ...`).
    Command,
    /// A phase change.
    Phase,
    /// A failure reported by the worker or the manager.
    Error,
}
