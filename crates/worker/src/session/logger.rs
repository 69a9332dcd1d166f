//! What the job logs: Docker build-stream JSON objects, one per log entry.

use buildman_proto as pb;
use tokio::sync::mpsc;

use super::LogCommand;
use crate::output::{Chunk, MAX_ENTRY_BYTES};

/// Sends log lines for one phase; lines are numbered in the order they are sent.
#[derive(Clone)]
pub struct Logger {
    tx: mpsc::Sender<LogCommand>,
    jwt: String,
    phase: String,
}

impl Logger {
    pub(super) fn new(tx: mpsc::Sender<LogCommand>, jwt: String, phase: &str) -> Self {
        Logger {
            tx,
            jwt,
            phase: phase.to_string(),
        }
    }

    /// Queues an output line of the worker's own (`{"stream": "line\n"}`).
    pub async fn line(&self, line: &str) {
        let message = serde_json::json!({ "stream": format!("{line}\n") });
        self.send(message, false).await;
    }

    /// Queues a line of a command's output, or a chunk of a long one: a chunk the line goes
    /// on after is `{"stream": "<chunk>", "continues": true}`, the end of a line
    /// `{"stream": "<text>\n"}`.
    pub async fn output(&self, chunk: &Chunk) {
        let message = if chunk.continues {
            serde_json::json!({ "stream": chunk.text, "continues": true })
        } else {
            serde_json::json!({ "stream": format!("{}\n", chunk.text) })
        };
        self.send(message, false).await;
    }

    /// Queues an error line (`{"error": ..., "errorDetail": {"message": ...}}`), its message
    /// cut to [`MAX_ENTRY_BYTES`]. It is tried even after the log stream gave up.
    pub async fn error(&self, message: &str) {
        let message = clip(message, MAX_ENTRY_BYTES);
        let entry = serde_json::json!({ "error": message, "errorDetail": { "message": message } });
        self.send(entry, true).await;
    }

    async fn send(&self, message: serde_json::Value, error: bool) {
        let request = pb::LogMessageRequest {
            job_jwt: self.jwt.clone(),
            sequence_number: 0,
            log_message: message.to_string(),
            phase: self.phase.clone(),
        };
        let _ = self.tx.send(LogCommand::Line { request, error }).await;
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut at {max} bytes)", &text[..end])
}
