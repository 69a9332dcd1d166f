//! The events of a followed build log: `GET .../build/<id>/logs?follow=1` answers a
//! Server-Sent Events stream (`text/event-stream`) of these, each as an SSE event whose
//! `event:` is [`LogEvent::name`] and whose `data:` is the JSON of its body.
//!
//! - `entry` (with `id:` its log index): one log entry, `{index, message, type?, data?}`.
//!   Every entry comes exactly once and in index order, from the start index on.
//! - `phase`: the build entered a phase, `{phase}`; sent after that phase's own entry.
//! - `retry`: an internal error is retried, `{attempt, at?}`: the attempt's number and
//!   when it may start.
//! - `end`: the build is over for good (complete, error, cancelled, or an internal error
//!   with no retry left: `expired`), and every entry was sent, `{build}` (its view). The
//!   stream closes; do not reconnect.
//! - `lagged`: the client fell too far behind and is dropped, `{next}`. The stream closes;
//!   reconnect from `next` (`?follow=1&start=<next>`).
//!
//! A stream that closes without `end` or `lagged` (a network failure, a manager going
//! away) is resumed the same way: with `Last-Event-ID: <last index received>` (what an
//! `EventSource` sends by itself) or `start=<last index + 1>`.

use buildman_core::LogEntry;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BuildView, ViewPhase};

/// An `entry` event: a log entry and its index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryEvent {
    /// The entry's index in the build's log (also the event's `id:`).
    pub index: u64,
    /// The entry, in Quay's shape.
    #[serde(flatten)]
    pub entry: LogEntry,
}

/// A `phase` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseEvent {
    /// The phase the build entered.
    pub phase: ViewPhase,
}

/// A `retry` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryEvent {
    /// The number of the attempt that runs next (the first attempt is 1).
    pub attempt: u32,
    /// When it may start, when known.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

/// An `end` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndEvent {
    /// The build as it ended.
    pub build: BuildView,
}

/// A `lagged` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaggedEvent {
    /// The index to follow again from.
    pub next: u64,
}

/// One event of a followed build log.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEvent {
    /// See [`EntryEvent`].
    Entry(EntryEvent),
    /// See [`PhaseEvent`].
    Phase(PhaseEvent),
    /// See [`RetryEvent`].
    Retry(RetryEvent),
    /// See [`EndEvent`]; the last event.
    End(Box<EndEvent>),
    /// See [`LaggedEvent`]; the last event.
    Lagged(LaggedEvent),
}

impl LogEvent {
    /// The SSE event name (`event:`).
    pub fn name(&self) -> &'static str {
        match self {
            LogEvent::Entry(_) => "entry",
            LogEvent::Phase(_) => "phase",
            LogEvent::Retry(_) => "retry",
            LogEvent::End(_) => "end",
            LogEvent::Lagged(_) => "lagged",
        }
    }

    /// The SSE event id (`id:`): an entry's index; other events carry none, so a client's
    /// last event id stays the last entry's.
    pub fn id(&self) -> Option<u64> {
        match self {
            LogEvent::Entry(e) => Some(e.index),
            _ => None,
        }
    }

    /// The SSE data (`data:`): the body's JSON, on one line.
    pub fn data(&self) -> Result<String, serde_json::Error> {
        match self {
            LogEvent::Entry(e) => serde_json::to_string(e),
            LogEvent::Phase(e) => serde_json::to_string(e),
            LogEvent::Retry(e) => serde_json::to_string(e),
            LogEvent::End(e) => serde_json::to_string(e),
            LogEvent::Lagged(e) => serde_json::to_string(e),
        }
    }

    /// Reads an event from its SSE name and data; `Ok(None)` for a name this version does
    /// not know (a newer server's events are skipped, not refused).
    pub fn parse(name: &str, data: &str) -> Result<Option<LogEvent>, serde_json::Error> {
        Ok(Some(match name {
            "entry" => LogEvent::Entry(serde_json::from_str(data)?),
            "phase" => LogEvent::Phase(serde_json::from_str(data)?),
            "retry" => LogEvent::Retry(serde_json::from_str(data)?),
            "end" => LogEvent::End(serde_json::from_str(data)?),
            "lagged" => LogEvent::Lagged(serde_json::from_str(data)?),
            _ => return Ok(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildman_core::Phase;
    use serde_json::json;

    #[test]
    fn events_round_trip_through_their_name_and_data() {
        let entry = LogEvent::Entry(EntryEvent {
            index: 7,
            entry: LogEntry::error("boom"),
        });
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&entry.data().unwrap()).unwrap(),
            json!({"index": 7, "message": "boom", "type": "error"}),
            "an entry keeps Quay's shape, with its index"
        );
        assert_eq!(entry.id(), Some(7));
        let retry = LogEvent::Retry(RetryEvent {
            attempt: 2,
            at: None,
        });
        let phase = LogEvent::Phase(PhaseEvent {
            phase: Phase::Building.into(),
        });
        let lagged = LogEvent::Lagged(LaggedEvent { next: 3 });
        for event in [entry, retry, phase, lagged] {
            let parsed = LogEvent::parse(event.name(), &event.data().unwrap()).unwrap();
            assert_eq!(parsed, Some(event));
        }
        assert_eq!(LogEvent::parse("surprise", "{}").unwrap(), None);
        assert!(LogEvent::parse("entry", "{}").is_err());
    }
}
