//! One line that says what failed, for the build's error and the log's error entry: the
//! step, the command's exit status and the last lines of its own output
//! (`Step 3/5 : RUN make → exit status 2: make: *** No rule to make target 'all'`). The
//! output itself is already in the log line by line: the summary quotes only its end, and
//! leaves out what buildah adds around it (its step and commit lines, "subprocess exited",
//! the restated exit status, Go struct dumps).

use crate::backend::{BackendError, is_tool_message};

/// Most output lines a summary quotes.
const QUOTED_LINES: usize = 3;
/// Most characters of one quoted line, or of the step.
const QUOTED_CHARS: usize = 240;

/// `what → exit status N: last lines` for a command that failed; `what: error` otherwise.
pub(super) fn failed(what: &str, err: &BackendError) -> String {
    let what = clip(what.trim());
    let BackendError::Failed { status, tail, .. } = err else {
        return format!("{what}: {err}");
    };
    let status = status.replace("exit status: ", "exit status ");
    let quoted = quote(tail);
    if quoted.is_empty() {
        format!("{what} → {status}")
    } else {
        format!("{what} → {status}: {quoted}")
    }
}

/// The last [`QUOTED_LINES`] lines of the command's own output, joined with ` | `.
fn quote(tail: &[String]) -> String {
    let lines: Vec<String> = (tail.iter())
        .map(|l| strip_dump(l.trim()))
        .filter(|l| !is_noise(l))
        .map(|l| clip(&l))
        .collect();
    lines[lines.len().saturating_sub(QUOTED_LINES)..].join(" | ")
}

/// Lines buildah adds that say nothing the summary does not.
fn is_noise(line: &str) -> bool {
    let restates_status = line.starts_with("Error: building at STEP")
        && line
            .rsplit_once("\": ")
            .is_some_and(|(_, rest)| rest.starts_with("exit status"));
    line.is_empty()
        || is_tool_message(line)
        || line.starts_with("subprocess exited")
        || restates_status
        || line.contains("UNHANDLED LOGLEVEL")
        || (line.starts_with("time=") && line.contains("level=warning"))
}

/// `line` without a Go struct dump at its end (` &imagebuilder.Step{Env:...}`).
fn strip_dump(line: &str) -> String {
    let dump = line.match_indices('&').map(|(at, _)| at).find(|&at| {
        let rest = &line[at + 1..];
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        name_end > 0 && rest[..name_end].contains('.') && rest[name_end..].starts_with('{')
    });
    match dump {
        Some(at) => line[..at].trim_end().to_string(),
        None => line.to_string(),
    }
}

/// At most [`QUOTED_CHARS`] characters, marked when cut.
fn clip(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_with(status: &str, tail: &[&str]) -> BackendError {
        BackendError::Failed {
            command: "buildah bud".into(),
            status: status.into(),
            tail: tail.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn a_failed_run_step_names_step_status_and_last_output() {
        let err = failed_with(
            "exit status: 2",
            &[
                "STEP 3/5: RUN make",
                "cc -c a.c",
                "make: *** No rule to make target 'all'.  Stop.",
                "subprocess exited with status 2",
                "subprocess exited with status 2",
                "Error: building at STEP \"RUN make\": exit status 2",
            ],
        );
        assert_eq!(
            failed("Step 3/5 : RUN make", &err),
            "Step 3/5 : RUN make → exit status 2: cc -c a.c | make: *** No rule to make target 'all'.  Stop."
        );
        let quiet = failed_with("exit status: 1", &["STEP 2/2: RUN false"]);
        assert_eq!(
            failed("Step 2/2 : RUN false", &quiet),
            "Step 2/2 : RUN false → exit status 1"
        );
    }

    #[test]
    fn go_struct_dumps_and_warnings_are_left_out() {
        let err = failed_with(
            "exit status: 125",
            &[
                "time=\"2026\" level=error msg=\"+(UNHANDLED LOGLEVEL) &imagebuilder.Step{Env:[]}\"",
                "time=\"2026\" level=warning msg=\"Failed, retrying in 2s ... (1/3)\"",
                "Error: building at STEP \"RUNN \": Build error: Unknown instruction: \"RUNN\" &imagebuilder.Step{Env:[]string{\"PATH=/bin\"}, Command:\"runn\"}",
            ],
        );
        assert_eq!(
            failed("the build", &err),
            "the build → exit status 125: Error: building at STEP \"RUNN \": Build error: Unknown instruction: \"RUNN\""
        );
        assert_eq!(strip_dump("a && b {c}"), "a && b {c}");
    }

    #[test]
    fn long_lines_are_clipped_and_other_errors_kept() {
        let long = "x".repeat(1000);
        let err = failed_with("exit status: 1", &[long.as_str()]);
        let summary = failed("Step 1/1 : RUN x", &err);
        assert!(
            summary.ends_with(&format!("{}…", "x".repeat(QUOTED_CHARS))),
            "{summary}"
        );
        let io = BackendError::Invalid("no tag".into());
        assert_eq!(
            failed("pushing r:1", &io),
            "pushing r:1: invalid request: no tag"
        );
    }
}
