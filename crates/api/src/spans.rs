//! The two spans of a build's life users ask about, read from its view the same way by the
//! dashboard and the CLI: the queue wait (queued → first worker started) and the duration
//! (first worker started → final phase).

use buildman_core::Phase;
use chrono::{DateTime, TimeDelta, Utc};

use crate::{BuildView, ViewPhase};

/// A span of a build's life: where it began, and where it ended unless it still grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stretch {
    /// When it began.
    pub from: DateTime<Utc>,
    /// When it ended; `None` while it still grows.
    pub to: Option<DateTime<Utc>>,
}

impl Stretch {
    /// Its length, up to `now` while it still grows.
    pub fn length(&self, now: DateTime<Utc>) -> TimeDelta {
        self.to.unwrap_or(now) - self.from
    }

    /// Its length as [`span_text`] writes it.
    pub fn text(&self, now: DateTime<Utc>) -> String {
        span_text(self.length(now))
    }
}

impl BuildView {
    /// How long the build waited for its first worker; still growing while it waits, and
    /// none when it never got one (cancelled while queued).
    pub fn queue_wait(&self) -> Option<Stretch> {
        match (self.started, self.scheduled_at) {
            (Some(from), Some(to)) => Some(Stretch { from, to: Some(to) }),
            (Some(from), None) if self.phase == ViewPhase::Phase(Phase::Waiting) => {
                Some(Stretch { from, to: None })
            }
            _ => None,
        }
    }

    /// How long the build has run since its first worker started; still growing until its
    /// final phase.
    pub fn duration(&self) -> Option<Stretch> {
        self.scheduled_at.map(|from| Stretch {
            from,
            to: self.finished_at,
        })
    }
}

/// A span of time as people write it: `4s`, `2m 05s`, `1h 02m`; negative spans (clocks of
/// different machines) read `0s`.
pub fn span_text(span: TimeDelta) -> String {
    let s = span.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_write_them() {
        let s = |n| span_text(TimeDelta::seconds(n));
        assert_eq!(
            (s(-3), s(4), s(125), s(3720)),
            ("0s".into(), "4s".into(), "2m 05s".into(), "1h 02m".into())
        );
    }

    #[test]
    fn the_queue_wait_ends_when_a_worker_starts_and_the_duration_at_the_final_phase() {
        let at = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time");
        let mut view: BuildView = serde_json::from_value(serde_json::json!({
            "id": "0b5c2f5e-8d0e-4c8f-9a57-3f1f2b7d9e10", "phase": "waiting",
            "started": at(0).to_rfc2822(),
        }))
        .expect("view");
        let now = at(30);
        assert_eq!(view.queue_wait().map(|w| w.text(now)), Some("30s".into()));
        assert_eq!(view.duration(), None);
        view.phase = ViewPhase::Phase(Phase::Building);
        view.scheduled_at = Some(at(5));
        assert_eq!(view.queue_wait().map(|w| w.text(now)), Some("5s".into()));
        assert_eq!(view.duration().map(|d| d.text(now)), Some("25s".into()));
        view.finished_at = Some(at(20));
        assert_eq!(view.duration().map(|d| d.text(now)), Some("15s".into()));
        view.phase = ViewPhase::Phase(Phase::Cancelled);
        view.scheduled_at = None;
        assert_eq!((view.queue_wait(), view.duration()), (None, None));
    }
}
