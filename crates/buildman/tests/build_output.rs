//! What a build prints reaches its log whole: the real worker (`buildman worker`) running
//! buildah for a manager in this process, the log read back through the REST API and the
//! CLI. Needs buildah, runc and busybox-static (`.ci/run` installs them).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(900);
const FINAL: [&str; 4] = ["complete", "error", "internalerror", "expired"];

/// A context of busybox plus `files`, built `FROM scratch` by `steps` (Dockerfile lines).
fn context(files: &[(&str, &str)], steps: &str) -> Vec<u8> {
    let busybox = std::fs::read(buildman_testkit::busybox()).expect("busybox");
    let dockerfile = format!("FROM scratch\nCOPY busybox /bin/busybox\n{steps}");
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("Dockerfile", dockerfile.as_bytes()),
        ("busybox", busybox.as_slice()),
    ];
    entries.extend(files.iter().map(|(name, text)| (*name, text.as_bytes())));
    tar_gz(&entries, &[])
}

async fn server() -> TestServer {
    TestServer::start(
        |d| config_yaml("ALLOWED_WORKER_COUNT: 1", &real_worker(d, "")),
        "",
        fast_timings(),
    )
    .await
}

/// The log's messages as a reader sees them: an entry marked `continues` joined with the
/// next one.
fn joined(logs: &[Value]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for entry in logs {
        current.push_str(entry["message"].as_str().unwrap_or_default());
        if entry["data"]["continues"] != true {
            lines.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "the log ends inside a continued line");
    lines
}

/// 200,000 numbered lines, every 1000th with 10,000 more characters.
const MANY_LINES: &str = r#"BEGIN {
    x = "0123456789"
    while (length(x) < 10000) x = x x
    x = substr(x, 1, 10000)
    for (i = 1; i <= 200000; i++)
        if (i % 1000 == 0) print "line " i " " x
        else print "line " i
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_step_printing_200000_lines_is_stored_once_in_order() {
    let s = server().await;
    let steps = "COPY gen.awk /gen.awk\nRUN [\"/bin/busybox\", \"awk\", \"-f\", \"/gen.awk\"]\n";
    let id = s
        .submit_bytes(
            "demo/many",
            &[],
            &context(&[("gen.awk", MANY_LINES)], steps),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    s.wait_phase(&id, &["building"], T).await;
    let building = Instant::now();
    s.wait_phase(&id, &["pushing", "complete", "error"], T)
        .await;
    let step = building.elapsed();
    let view = s.wait_phase(&id, &FINAL, T).await;
    let logs = s.logs("demo/many", &id).await;
    assert_eq!(view["phase"], "complete", "{view}");

    let ten_k: String = "0123456789".repeat(1000);
    let expected: Vec<String> = (1..=200_000)
        .map(|i| match i % 1000 {
            0 => format!("line {i} {ten_k}\n"),
            _ => format!("line {i}\n"),
        })
        .collect();
    let printed: Vec<&str> = logs
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains("line "))
        .collect();
    assert_eq!(printed.len(), expected.len(), "every line stored once");
    for (n, (got, want)) in printed.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "entry {n} of the step's output");
    }
    assert!(
        logs.iter().all(|e| e["data"]["continues"] != true),
        "no line here is long enough to be split"
    );
    let lines_per_s = 200_000.0 / step.as_secs_f64();
    eprintln!("building phase with 200,000 lines: {step:?} ({lines_per_s:.0} lines/s)");
    s.stop().await;
}

/// 6,000,000 bytes on one line that never ends.
const LONG_LINE: &str = r#"BEGIN { for (i = 0; i < 600000; i++) printf "%09d,", i }"#;
/// A progress bar of 2,000,000 bytes drawn with `\r`, then `done`.
const PROGRESS_BAR: &str =
    r#"BEGIN { for (i = 0; i < 200000; i++) printf "%09d\r", i; print "done" }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_6_mb_line_and_a_2_mb_progress_bar_are_stored_in_64_kib_chunks() {
    let s = server().await;
    let steps = "COPY long.awk bar.awk /\n\
        RUN [\"/bin/busybox\", \"awk\", \"-f\", \"/long.awk\"]\n\
        RUN [\"/bin/busybox\", \"awk\", \"-f\", \"/bar.awk\"]\n";
    let files = [("long.awk", LONG_LINE), ("bar.awk", PROGRESS_BAR)];
    let id = s
        .submit_bytes("demo/long", &[], &context(&files, steps))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let view = s.wait_phase(&id, &FINAL, T).await;
    let logs = s.logs("demo/long", &id).await;
    assert_eq!(view["phase"], "complete", "{view}");

    let long: String = (0..600_000).map(|i| format!("{i:09},")).collect();
    let bar: String = (0..200_000)
        .map(|i| format!("{i:09}\r"))
        .collect::<String>()
        + "done";
    let lines = joined(&logs);
    let at = lines
        .iter()
        .position(|l| *l == format!("{long}\n"))
        .expect("the 6 MB line, whole once joined");
    // buildah printed its next message (`--> <id>` with some configurations, else the next
    // step) right after the line, with no newline between: it is a line of its own.
    let next = &lines[at + 1];
    assert!(
        next.starts_with("--> ") || next.starts_with("Step 5/5 : RUN"),
        "{next:?}"
    );
    assert!(
        lines.contains(&format!("{bar}\n")),
        "the progress bar, whole"
    );

    // As documented: chunks of 64 KiB, every one but the last marked.
    let start = logs
        .iter()
        .position(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("000000000,"))
        })
        .expect("the long line's first chunk");
    let chunks = &logs[start..start + 92];
    for chunk in &chunks[..91] {
        assert_eq!(chunk["message"].as_str().map(str::len), Some(64 * 1024));
        assert_eq!(chunk["data"]["continues"], true);
    }
    assert_eq!(
        chunks[91]["message"].as_str().map(str::len),
        Some(36_224 + 1)
    );
    assert!(chunks[91].get("data").is_none_or(Value::is_null));

    // `buildman logs` prints each as one line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildman"))
        .args(["logs", &id, "--server", &s.base, "--token", &s.token])
        .output()
        .expect("buildman logs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert!(printed.lines().any(|l| l == long), "the long line, whole");
    assert!(printed.lines().any(|l| l == bar), "the progress bar, whole");
    s.stop().await;
}
