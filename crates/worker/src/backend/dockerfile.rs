//! What the worker needs to know from a Dockerfile and from build output without running
//! anything: the base images to pull, Docker-style step lines, and buildah's own messages
//! glued onto a step's output.

/// Base images named in a Dockerfile's FROM lines, first mention first, each once. Left out:
/// `scratch`, names of earlier build stages (`FROM x AS b` then `FROM b`), and names that
/// use ARG substitution (`FROM ${BASE}`: their value is only known to the build). Flags such
/// as `--platform=...` are skipped; `\` continuations, comments and the `# escape=` parser
/// directive are honoured.
pub fn from_lines(dockerfile: &str) -> Vec<String> {
    let escape = escape_char(dockerfile);
    let mut stages: Vec<String> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    for line in logical_lines(dockerfile, escape) {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("from")) {
            continue;
        }
        let mut words = words.skip_while(|w| w.starts_with("--"));
        let Some(image) = words.next() else { continue };
        let is_stage = stages.iter().any(|s| s.eq_ignore_ascii_case(image));
        if !image.contains('$')
            && !image.eq_ignore_ascii_case("scratch")
            && !is_stage
            && !images.iter().any(|i| i == image)
        {
            images.push(image.to_string());
        }
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("as"))
            && let Some(name) = words.next()
        {
            stages.push(name.to_string());
        }
    }
    images
}

/// The escape character: `\`, or what a leading `# escape=X` parser directive says.
pub(super) fn escape_char(dockerfile: &str) -> char {
    for line in dockerfile.lines() {
        let Some(comment) = line.trim().strip_prefix('#') else {
            // Directives only count before the first instruction or blank line.
            break;
        };
        let Some((key, value)) = comment.split_once('=') else {
            break;
        };
        let key = key.trim();
        if key.contains(char::is_whitespace) {
            break;
        }
        if key.eq_ignore_ascii_case("escape")
            && let Some(c) = value.trim().chars().next()
        {
            return c;
        }
    }
    '\\'
}

/// Instructions with continuations joined; comment lines (also inside continuations) dropped.
fn logical_lines(dockerfile: &str, escape: char) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in dockerfile.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix(escape) {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if !current.trim().is_empty() {
                    lines.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    if !current.trim().is_empty() {
        lines.push(current);
    }
    lines
}

/// Rewrites buildah/podman's `STEP 2/3: RUN x` (also with a stage prefix, `[1/2] STEP 2/3:
/// RUN x`) to Docker's `Step 2/3 : RUN x`, which the manager's log matcher recognises; any
/// other line comes back unchanged. The stage prefix is dropped: Docker has no equivalent, and
/// the matcher wants `Step` at the start. Numbering stays per stage, as buildah counts.
pub fn normalize_step_line(line: &str) -> String {
    try_normalize(line).unwrap_or_else(|| line.to_string())
}

/// [`normalize_step_line`] for lines that are step lines.
fn try_normalize(line: &str) -> Option<String> {
    let mut rest = line;
    if let Some(after) = rest.strip_prefix('[') {
        let (stage, after) = after.split_once("] ")?;
        if !is_counter(stage) {
            return None;
        }
        rest = after;
    }
    let rest = rest.strip_prefix("STEP ")?;
    let (counter, instruction) = rest.split_once(':')?;
    let counter_ok = is_counter(counter) || is_number(counter);
    if !counter_ok {
        return None;
    }
    let instruction = instruction.strip_prefix(' ').unwrap_or(instruction);
    Some(format!("Step {counter} : {instruction}"))
}

/// Where a message of buildah's own starts in `line`, when buildah wrote it right after a
/// `RUN` step's last output, which had no newline: both go to one stdout, so the step's
/// `abc` and buildah's `--> 37c2775a101` arrive as `abc--> 37c2775a101` (likewise
/// `defCOMMIT localhost/x:1`, `def[2/2] COMMIT ...`, `abcSTEP 4/4: RUN ...`). `None` when
/// the line starts with such a message or holds none.
pub fn glued_tool_message(line: &str) -> Option<usize> {
    line.match_indices(['-', '[', 'C', 'S'])
        .map(|(at, _)| at)
        .filter(|&at| at > 0)
        .find(|&at| is_tool_message(&line[at..]))
}

/// True when `s` is one of the messages buildah prints between steps (`--> <id>`, `COMMIT
/// ...`, `STEP N/M: ...`).
pub fn is_tool_message(s: &str) -> bool {
    if let Some(id) = s.strip_prefix("--> ") {
        // A short image id, as buildah prints it after each committed step.
        return (11..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    }
    let s = match s.strip_prefix('[').and_then(|rest| rest.split_once("] ")) {
        Some((stage, rest)) if stage.len() <= 12 && is_counter(stage) => rest,
        _ => s,
    };
    if let Some(name) = s.strip_prefix("COMMIT") {
        // `COMMIT` alone (an unnamed stage) or with an image reference.
        return name.is_empty()
            || name.strip_prefix(' ').is_some_and(|r| {
                !r.is_empty() && !r.contains(' ') && (r.contains('/') || r.contains(':'))
            });
    }
    // `STEP N/M: ...`, with the counter looked for in a bounded window only.
    s.strip_prefix("STEP ")
        .and_then(|rest| rest.get(..rest.len().min(24)))
        .and_then(|head| head.split_once(':'))
        .is_some_and(|(counter, _)| is_counter(counter) || is_number(counter))
}

/// `N/M` with both numbers.
fn is_counter(s: &str) -> bool {
    s.split_once('/')
        .is_some_and(|(n, m)| is_number(n) && is_number(m))
}

/// One or more ASCII digits.
fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_and_qualified() {
        assert_eq!(from_lines("FROM alpine:3.19\nRUN true\n"), ["alpine:3.19"]);
        assert_eq!(
            from_lines("from 127.0.0.1:5000/base@sha256:abc\n"),
            ["127.0.0.1:5000/base@sha256:abc"]
        );
    }

    #[test]
    fn stages_scratch_args_and_flags() {
        let df = "\
ARG BASE=alpine
FROM --platform=$BUILDPLATFORM golang:1.22 AS Build
RUN go build
FROM ${BASE} as runtime
FROM scratch
COPY --from=build /app /app
FROM build AS test
FROM quay.io/ns/tools:1 AS tools
FROM golang:1.22
";
        assert_eq!(from_lines(df), ["golang:1.22", "quay.io/ns/tools:1"]);
    }

    #[test]
    fn continuations_comments_and_escape_directive() {
        let df = "# syntax=docker/dockerfile:1\n# escape=`\n\n# a comment\nFROM `\n  --platform=linux/amd64 `\n# inside\n  busybox:1.36\nRUN echo \\\n";
        assert_eq!(from_lines(df), ["busybox:1.36"]);
        let df = "FROM \\\n  debian:12 \\\n  AS base\nFROM base\n";
        assert_eq!(from_lines(df), ["debian:12"]);
    }

    #[test]
    fn nothing_to_pull() {
        assert!(from_lines("").is_empty());
        assert!(from_lines("FROM\nFROM scratch\n").is_empty());
    }

    #[test]
    fn step_lines() {
        assert_eq!(
            normalize_step_line("STEP 1/3: FROM 127.0.0.1:5000/base"),
            "Step 1/3 : FROM 127.0.0.1:5000/base"
        );
        assert_eq!(
            normalize_step_line("[2/2] STEP 2/2: COPY --from=b /x /x"),
            "Step 2/2 : COPY --from=b /x /x"
        );
        assert_eq!(normalize_step_line("STEP 4: RUN x"), "Step 4 : RUN x");
        for unchanged in [
            "--> 12fb2556bd6",
            "COMMIT built:1",
            "[2/2] COMMIT built:5",
            "STEP x/3: nope",
            "Step 1/3 : FROM a",
            "hello STEP 1/2: x",
        ] {
            assert_eq!(normalize_step_line(unchanged), unchanged);
        }
    }

    #[test]
    fn buildah_messages_glued_onto_output_are_found() {
        for (line, at) in [
            ("abc--> 37c2775a101", 3),
            ("defCOMMIT localhost/bt:2", 3),
            ("def[2/2] COMMIT localhost/bt:3", 3),
            ("abc[2/2] STEP 1/3: FROM scratch", 3),
            ("abcSTEP 4/4: RUN [\"/bin/busybox\", \"echo\", \"next\"]", 3),
            ("line 134COMMIT built:1", 8),
            ("x--> Step--> 0123456789a", 9),
        ] {
            assert_eq!(glued_tool_message(line), Some(at), "{line}");
        }
        for alone in [
            "--> 37c2775a101",
            "STEP 1/2: FROM a",
            "COMMIT x:1",
            "plain output",
            "please COMMIT now",
            "a--> not-hex-at-all",
            "a--> 123",
            "echo STEP one: two",
            "[x] STEP",
        ] {
            assert_eq!(glued_tool_message(alone), None, "{alone}");
        }
    }
}
