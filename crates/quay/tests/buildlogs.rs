//! Build-log entries byte for byte as Quay's manager writes them (tests/data/buildlogs_kat.py
//! made the expected text with Quay's own code and Python's json).

use buildman_quay::buildlogs::{
    EntryData, EntryType, LOGS_TTL, LogEntry, PullMetadata, PyDateTime, logs_key, status_key,
};
use chrono::NaiveDateTime;
use serde::Deserialize;

#[derive(Deserialize)]
struct Answers {
    datetime_with_micros: String,
    datetime_whole_second: String,
    entries: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    json: String,
}

fn answers() -> Answers {
    serde_json::from_str(include_str!("data/buildlogs_kat.json")).expect("buildlogs_kat.json")
}

fn time(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").expect("a time")
}

/// buildman's entry for each case of the Python script, in its order.
fn ours(a: &Answers) -> Vec<LogEntry> {
    let micros = time(&a.datetime_with_micros);
    let whole = time(&a.datetime_whole_second);
    let full_pull = PullMetadata {
        registry_url: "quay.example".into(),
        base_image: "quay.example/org/base".into(),
        base_image_tag: "3.19".into(),
        pull_username: "org+robot".into(),
    };
    let some_pull = PullMetadata {
        base_image: "busybox".into(),
        ..PullMetadata::default()
    };
    let line =
        serde_json::json!({ "stream": "caf\u{e9} \u{2603} \u{1f600} \"q\" \\ \t\u{7f}\u{1}\n" });
    vec![
        LogEntry::phase("build-scheduled", &PullMetadata::default(), micros),
        LogEntry::phase("pulling", &full_pull, whole),
        LogEntry::phase("pulling", &some_pull, micros),
        LogEntry::from_worker_line(r#"{"stream": "Step 1/3 : FROM busybox"}"#, micros)
            .expect("json"),
        LogEntry::from_worker_line(&line.to_string(), micros).expect("json"),
        LogEntry::error("Could not pull base image", false, micros),
    ]
}

#[test]
fn entries_are_written_byte_for_byte_as_quay_writes_them() {
    let a = answers();
    let ours = ours(&a);
    assert_eq!(ours.len(), a.entries.len());
    for (entry, case) in ours.iter().zip(&a.entries) {
        assert_eq!(entry.to_json(), case.json, "{}", case.name);
    }
}

#[test]
fn quays_entries_read_back_as_written() {
    let a = answers();
    for (entry, case) in ours(&a).iter().zip(&a.entries) {
        let read: LogEntry = serde_json::from_str(&case.json).expect(&case.name);
        assert_eq!(&read, entry, "{}", case.name);
    }
}

#[test]
fn worker_lines_take_the_first_of_error_status_stream() {
    let now = time("2026-11-30 09:15:02");
    let message = |line: &str| LogEntry::from_worker_line(line, now).map(|e| (e.message, e.kind));
    assert_eq!(
        message(r#"{"stream": "out", "status": "st", "error": "boom"}"#),
        Ok(("boom".into(), None))
    );
    assert_eq!(
        message(r#"{"stream": "out", "status": "Pulling"}"#),
        Ok(("Pulling".into(), None))
    );
    assert_eq!(message(r#"{"id": "abc"}"#), Ok((String::new(), None)));
    assert_eq!(message(r#"{"stream": 12}"#), Ok(("12".into(), None)));
    assert_eq!(message(r#"{"stream": true}"#), Ok(("True".into(), None)));
    assert_eq!(message(r#"{"stream": null}"#), Ok(("None".into(), None)));
    assert_eq!(
        message(r#"{"stream": "Step 12 : RUN make"}"#),
        Ok(("Step 12 : RUN make".into(), Some(EntryType::Command)))
    );
    assert!(message("plain text").is_err());
    assert!(message(r#"["stream"]"#).is_err());
}

#[test]
fn keys_and_times_are_quays() {
    assert_eq!(logs_key("0a1b"), "builds/0a1b/logs");
    assert_eq!(status_key("0a1b"), "builds/0a1b/status");
    assert_eq!(LOGS_TTL.as_secs(), 604_800);
    let data = EntryData::at(time("2026-01-02 03:04:05.5"));
    assert_eq!(
        data.datetime.map(|d| d.to_string()).as_deref(),
        Some("2026-01-02 03:04:05.500000")
    );
    assert_eq!(
        PyDateTime(time("2026-01-02 03:04:05")).to_string(),
        "2026-01-02 03:04:05"
    );
}

#[test]
fn the_domains_log_entries_read_quays_entries() {
    for case in answers().entries {
        let entry: buildman_core::log::LogEntry =
            serde_json::from_str(&case.json).expect(&case.name);
        let ours: LogEntry = serde_json::from_str(&case.json).expect(&case.name);
        assert_eq!(
            (entry.message, entry.kind),
            (ours.message, ours.kind),
            "{}",
            case.name
        );
    }
}
