//! The other answers: a log page, a file drop and the error body.

use buildman_core::LogEntry;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One page of a build's log. Entries keep Quay's shape `{message, type?, data?}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    /// Index of the first entry in `logs`.
    #[serde(default)]
    pub start: u64,
    /// Number of entries in the whole log so far.
    #[serde(default)]
    pub total: u64,
    /// The entries from `start` on, at most [`LogPage::MAX_ENTRIES`].
    #[serde(default)]
    #[schema(value_type = Vec<crate::schema::LogEntryDoc>)]
    pub logs: Vec<LogEntry>,
}

impl LogPage {
    /// Most entries one page holds; a client pages on from `start + logs.len()`.
    pub const MAX_ENTRIES: u32 = 1000;
}

/// The answer of creating a file drop: where to `PUT` the context and the id to build it by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileDrop {
    /// The id to pass as `file_id` when creating the build.
    pub file_id: String,
    /// The absolute URL to upload the context to.
    #[serde(default)]
    pub url: String,
}

/// The body of every error answer: `{"error": "..."}`, a message that says what is wrong and
/// what to do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The message.
    #[serde(default)]
    pub error: String,
    /// Quay's own API puts some messages here instead; buildman never sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ErrorBody {
    /// An error answer saying `error`.
    pub fn new(error: impl Into<String>) -> Self {
        ErrorBody {
            error: error.into(),
            message: None,
        }
    }

    /// The message to show: `error`, else `message`; `None` when both are blank.
    pub fn text(&self) -> Option<&str> {
        [Some(self.error.as_str()), self.message.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .find(|m| !m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_log_page_keeps_quays_entry_shape() {
        let page = LogPage {
            start: 3,
            total: 5,
            logs: vec![LogEntry::output("hello\n"), LogEntry::error("boom")],
        };
        let wire = serde_json::to_value(&page).unwrap();
        assert_eq!(wire["logs"][1], json!({"message": "boom", "type": "error"}));
        assert_eq!(serde_json::from_value::<LogPage>(wire).unwrap(), page);
    }

    #[test]
    fn error_text_prefers_error_over_message() {
        let body: ErrorBody = serde_json::from_str(r#"{"message": "quay says"}"#).unwrap();
        assert_eq!(body.text(), Some("quay says"));
        assert_eq!(ErrorBody::new(" nope ").text(), Some("nope"));
        assert_eq!(ErrorBody::default().text(), None);
        assert_eq!(
            serde_json::to_value(ErrorBody::new("x")).unwrap(),
            json!({"error": "x"})
        );
    }
}
