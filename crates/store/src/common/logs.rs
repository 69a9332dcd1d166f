//! Which lines of a batch go into the log, and at which indices: the decisions of
//! `append_logs` and `append_worker_lines`, apart from the SQL that reads the builds' log
//! heads before and writes the rows after.

use std::collections::HashMap;

use buildman_core::log::is_new_worker_line;
use buildman_core::{BuildId, LogEntry, Phase};

use super::rows::{LogHead, unserialisable};
use crate::{Result, StoreError};

/// Log entries as they go into the JSON column, serialised before any lock is taken.
pub(crate) fn encode<'a>(entries: impl Iterator<Item = &'a LogEntry>) -> Result<Vec<String>> {
    entries
        .map(|e| serde_json::to_string(e).map_err(unserialisable("log entry")))
        .collect()
}

/// Rows to insert into `build_logs`, column by column (as PostgreSQL's `UNNEST` takes them).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct LogRows<'a> {
    pub builds: Vec<&'a str>,
    pub indices: Vec<i64>,
    pub entries: Vec<&'a str>,
}

impl<'a> LogRows<'a> {
    /// The rows as `(build, index, entry)` triples.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, i64, &'a str)> + '_ {
        self.builds
            .iter()
            .zip(&self.indices)
            .zip(&self.entries)
            .map(|((build, idx), entry)| (*build, *idx, *entry))
    }
}

/// The new `last_worker_sequence` of builds, column by column.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct LastSequences<'a> {
    pub builds: Vec<&'a str>,
    pub sequences: Vec<i32>,
}

impl<'a> LastSequences<'a> {
    /// The pairs `(build, sequence)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, i32)> + '_ {
        self.builds
            .iter()
            .copied()
            .zip(self.sequences.iter().copied())
    }
}

/// One build's log during a batch.
#[derive(Debug)]
struct Head {
    /// The claim of the build's current attempt.
    attempt: Option<String>,
    /// Whether the build reached a final phase: its attempt is over.
    over: bool,
    /// The index the next stored line gets.
    next: i64,
    /// The highest worker sequence number stored in this attempt.
    last: Option<i32>,
    /// Whether this batch stored a worker line of the build (so `last` must be written).
    moved: bool,
}

/// A batch of log lines being placed: per line where it is stored, and the rows to insert.
#[derive(Debug)]
pub(crate) struct LogBatch<'a> {
    heads: HashMap<String, Head>,
    /// Per line pushed, the index it is stored at (`None`: not stored).
    pub stored: Vec<Option<u64>>,
    pub rows: LogRows<'a>,
}

impl<'a> LogBatch<'a> {
    /// A batch over the builds whose log heads were read (and locked) for it.
    pub fn new(heads: Vec<LogHead>) -> Self {
        let heads = heads
            .into_iter()
            .map(|h| {
                let over = h.phase.parse::<Phase>().is_ok_and(Phase::is_final);
                let head = Head {
                    attempt: h.attempt,
                    over,
                    next: h.total,
                    last: h.last_worker_sequence,
                    moved: false,
                };
                (h.id, head)
            })
            .collect();
        LogBatch {
            heads,
            stored: Vec::new(),
            rows: LogRows::default(),
        }
    }

    /// Places one line of build `build` (stored as `key`): at the end of its log, unless it
    /// is a worker line (`sequence` set) that was stored already. [`StoreError::NotFound`]
    /// when the build's head was not read, because the build does not exist.
    pub fn push(
        &mut self,
        build: BuildId,
        key: &'a str,
        sequence: Option<i32>,
        entry: &'a str,
    ) -> Result<()> {
        let head = self.heads.get_mut(key).ok_or(StoreError::NotFound(build))?;
        let stored = match sequence {
            None => true,
            Some(sequence) if is_new_worker_line(head.last, sequence) => {
                head.last = Some(sequence);
                head.moved = true;
                true
            }
            Some(_) => false,
        };
        let mut index = None;
        if stored {
            self.rows.builds.push(key);
            self.rows.indices.push(head.next);
            self.rows.entries.push(entry);
            index = Some(u64::try_from(head.next).map_err(|_| {
                StoreError::Corrupt(format!("build {build}: log index {}", head.next))
            })?);
            head.next += 1;
        }
        self.stored.push(index);
        Ok(())
    }

    /// Places a batch of worker lines, each given as its build, the build's key, the
    /// attempt its token names, its sequence number and its encoded entry: the attempt is
    /// checked, then the line pushed. The first refusal fails the whole batch.
    pub fn place_worker_lines(
        &mut self,
        lines: impl IntoIterator<Item = (BuildId, &'a str, Option<&'a str>, i32, &'a str)>,
    ) -> Result<()> {
        for (build, key, attempt, sequence, entry) in lines {
            self.check_attempt(build, key, attempt)?;
            self.push(build, key, Some(sequence), entry)?;
        }
        Ok(())
    }

    /// Refuses a worker's line of an attempt that is over: its build is final, or the line
    /// names another attempt than the build's current one (a line that names none is
    /// checked for the final phase only).
    pub fn check_attempt(&self, build: BuildId, key: &str, attempt: Option<&str>) -> Result<()> {
        let head = self.heads.get(key).ok_or(StoreError::NotFound(build))?;
        let other = attempt.is_some_and(|a| head.attempt.as_deref() != Some(a));
        if head.over || other {
            return Err(StoreError::AttemptOver(build));
        }
        Ok(())
    }

    /// The length a build's log has with this batch.
    pub fn total(&self, key: &str) -> Option<i64> {
        self.heads.get(key).map(|h| h.next)
    }

    /// The new last sequence number of each build that stored worker lines.
    pub fn last_sequences(&self) -> LastSequences<'_> {
        let (builds, sequences) = self
            .heads
            .iter()
            .filter(|(_, h)| h.moved)
            .filter_map(|(id, h)| h.last.map(|last| (id.as_str(), last)))
            .unzip();
        LastSequences { builds, sequences }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(id: &str, total: i64, last: Option<i32>) -> LogHead {
        LogHead {
            id: id.to_owned(),
            last_worker_sequence: last,
            attempt: Some("claim".into()),
            phase: "building".into(),
            total,
        }
    }

    #[test]
    fn lines_of_an_attempt_that_is_over_are_refused() {
        let a = BuildId::new();
        let batch = LogBatch::new(vec![head("a", 0, None)]);
        batch.check_attempt(a, "a", Some("claim")).unwrap();
        batch.check_attempt(a, "a", None).unwrap();
        assert!(matches!(
            batch.check_attempt(a, "a", Some("earlier claim")),
            Err(StoreError::AttemptOver(id)) if id == a
        ));
        let over = LogHead {
            phase: "complete".into(),
            ..head("a", 0, None)
        };
        let batch = LogBatch::new(vec![over]);
        assert!(batch.check_attempt(a, "a", Some("claim")).is_err());
        assert!(batch.check_attempt(a, "a", None).is_err());
    }

    #[test]
    fn worker_lines_at_or_below_the_last_sequence_are_not_stored() {
        let (a, b) = (BuildId::new(), BuildId::new());
        let mut batch = LogBatch::new(vec![head("a", 5, Some(2)), head("b", 0, None)]);
        for (build, key, sequence) in [
            (a, "a", Some(2)),
            (a, "a", Some(3)),
            (b, "b", Some(1)),
            (a, "a", Some(3)),
            (a, "a", None),
            (b, "b", Some(7)),
        ] {
            batch.push(build, key, sequence, "{}").unwrap();
        }
        assert_eq!(
            batch.stored,
            [None, Some(5), Some(0), None, Some(6), Some(1)]
        );
        let rows: Vec<_> = batch.rows.iter().map(|(b, i, _)| (b, i)).collect();
        assert_eq!(rows, [("a", 5), ("b", 0), ("a", 6), ("b", 1)]);
        assert_eq!((batch.total("a"), batch.total("b")), (Some(7), Some(2)));
        let mut last: Vec<_> = batch.last_sequences().iter().collect();
        last.sort_unstable();
        assert_eq!(last, [("a", 3), ("b", 7)]);
    }

    #[test]
    fn entries_without_a_sequence_leave_it_alone() {
        let a = BuildId::new();
        let mut batch = LogBatch::new(vec![head("a", 0, Some(9))]);
        batch.push(a, "a", None, "{}").unwrap();
        assert_eq!(batch.stored, [Some(0)]);
        assert_eq!(batch.last_sequences(), LastSequences::default());
    }

    #[test]
    fn a_build_without_a_head_is_not_found() {
        let missing = BuildId::new();
        let mut batch = LogBatch::new(vec![head("a", 0, None)]);
        assert!(matches!(
            batch.push(missing, "m", Some(1), "{}"),
            Err(StoreError::NotFound(id)) if id == missing
        ));
    }
}
