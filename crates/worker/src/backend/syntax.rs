//! A Dockerfile's syntax checked before anything runs, so that a typo is reported in words
//! with its line number (`line 4: unknown instruction RUNN`) instead of buildah's
//! `Build error: Unknown instruction: "RUNN" &imagebuilder.Step{...}` after the base images
//! were pulled. Only what every builder refuses is refused here: an unknown instruction, and
//! no FROM before the first other instruction (ARG may come first). Anything subtler is left
//! to the builder, so that no file buildah accepts is refused.

/// The instructions Docker's and buildah's parsers know.
const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Checks `dockerfile`; the error names the line (1-based, where the instruction starts) and
/// the problem, e.g. `line 4: unknown instruction RUNN`.
pub fn check_dockerfile(dockerfile: &str) -> Result<(), String> {
    let escape = super::dockerfile::escape_char(dockerfile);
    let mut seen_from = false;
    for (line, instruction) in instructions(dockerfile, escape) {
        let upper = instruction.to_ascii_uppercase();
        if !INSTRUCTIONS.contains(&upper.as_str()) {
            return Err(format!("line {line}: unknown instruction {instruction}"));
        }
        match upper.as_str() {
            "FROM" => seen_from = true,
            "ARG" => {}
            _ if !seen_from => {
                return Err(format!(
                    "line {line}: {upper} before any FROM; a Dockerfile starts with FROM \
                     (only ARG may come before it)"
                ));
            }
            _ => {}
        }
    }
    if seen_from {
        Ok(())
    } else {
        Err("no FROM instruction: a Dockerfile starts with FROM".into())
    }
}

/// Each instruction's first word with the line it starts on. Comments, blank lines, lines
/// continued with the escape character and heredoc bodies (`RUN <<EOF` … `EOF`) are skipped.
fn instructions(dockerfile: &str, escape: char) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut continued = false;
    let mut heredoc: Option<String> = None;
    for (index, raw) in dockerfile.lines().enumerate() {
        let trimmed = raw.trim();
        if let Some(end) = &heredoc {
            if trimmed == end {
                heredoc = None;
            }
            continue;
        }
        // Blank lines inside a continued instruction do not end it (Docker drops them).
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if !continued && let Some(word) = trimmed.split_whitespace().next() {
            found.push((index + 1, word.to_string()));
            heredoc = heredoc_end(trimmed);
        }
        continued = trimmed.ends_with(escape);
    }
    found
}

/// The word that ends a heredoc an instruction line opens (`<<EOF`, `<<-"EOF"`), if any.
fn heredoc_end(line: &str) -> Option<String> {
    let (_, after) = line.split_once("<<")?;
    let after = after.strip_prefix('-').unwrap_or(after);
    let word: String = after
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_named_with_its_line() {
        let df = "# syntax=docker/dockerfile:1\nFROM scratch\n\nRUNN echo hi\n";
        assert_eq!(
            check_dockerfile(df).unwrap_err(),
            "line 4: unknown instruction RUNN"
        );
        let df = "FROM a\nRUN echo \\\n  RUNN not an instruction\ncopy x /x\nWORKDRI /x\n";
        assert_eq!(
            check_dockerfile(df).unwrap_err(),
            "line 5: unknown instruction WORKDRI"
        );
    }

    #[test]
    fn from_comes_first() {
        assert!(check_dockerfile("ARG BASE=a\nFROM ${BASE}\nRUN x\n").is_ok());
        let e = check_dockerfile("RUN x\nFROM a\n").unwrap_err();
        assert!(e.starts_with("line 1: RUN before any FROM"), "{e}");
        let e = check_dockerfile("# only a comment\n").unwrap_err();
        assert!(e.starts_with("no FROM instruction"), "{e}");
    }

    #[test]
    fn what_builders_accept_passes() {
        let df = "\
# escape=`
FROM busybox AS b
RUN echo `
  one `
# a comment inside

  && two
RUN <<EOF
not an instruction
EOF
COPY <<-\"END\" /x
  text
  END
HEALTHCHECK CMD true
onbuild run true
";
        assert_eq!(check_dockerfile(df), Ok(()));
    }
}
