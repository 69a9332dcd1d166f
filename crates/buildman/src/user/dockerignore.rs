//! `.dockerignore` with Docker's semantics (moby's patternmatcher), so that `submit` packs
//! what `docker build` would send: one pattern per line, `#` comments, `!` re-includes, the
//! last matching pattern wins; patterns are relative to the context root (a leading `/` is
//! dropped, and unlike `.gitignore` a pattern without `/` matches at the root only); `*` and
//! `?` stay within one path element, `**` spans any number of them; a pattern that matches a
//! directory excludes everything below it. Globs are globset's (the matcher of ripgrep and
//! the `ignore` crate, whose own rules are `.gitignore`'s, not Docker's).

use std::path::Path;

use anyhow::Context as _;
use globset::{GlobBuilder, GlobMatcher};

/// The file's name in the context root.
pub const FILE_NAME: &str = ".dockerignore";

/// One pattern.
struct Rule {
    glob: GlobMatcher,
    /// A `!pattern`: what it matches is packed after all.
    exception: bool,
}

/// The patterns of a context's `.dockerignore` (none when it has no such file).
#[derive(Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

impl DockerIgnore {
    /// Reads `dir/.dockerignore`; a missing file excludes nothing.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).with_context(|| format!("in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Parses the text of a `.dockerignore`; an error names the line of a bad pattern.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .with_context(|| format!("line {}: bad pattern {line:?}", n + 1))?;
            rules.push(Rule {
                glob: glob.compile_matcher(),
                exception,
            });
        }
        Ok(Self { rules })
    }

    /// True when the file or directory at `path` (relative to the context root, `/`
    /// separated) is not to be packed.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            if matches_or_parent(&rule.glob, path) {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    /// True when a `!pattern` may re-include something below an excluded directory, so
    /// that the directory must still be walked.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }
}

/// The pattern as Docker cleans it: no leading `/` or `./`, no empty or `.` elements.
fn clean(pattern: &str) -> String {
    let parts: Vec<&str> = (pattern.split('/'))
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.join("/")
}

/// The glob matches `path` or one of its parent directories.
fn matches_or_parent(glob: &GlobMatcher, path: &str) -> bool {
    glob.is_match(path) || (path.match_indices('/')).any(|(at, _)| glob.is_match(&path[..at]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).expect("valid")
    }

    #[test]
    fn patterns_are_anchored_at_the_root_as_docker_does() {
        let i = ignore("# build output\n*.log\n/target\n./tmp/\n");
        assert!(i.excludes("a.log"));
        assert!(
            !i.excludes("sub/a.log"),
            "no `/`: the root only, unlike .gitignore"
        );
        assert!(i.excludes("target") && i.excludes("target/debug/app"));
        assert!(i.excludes("tmp/x"));
        assert!(!i.excludes("src/target"));
        assert!(!i.excludes("Dockerfile"));
    }

    #[test]
    fn double_stars_span_directories_and_exceptions_win_when_last() {
        let i = ignore("**/*.tmp\ndocs\n!docs/keep.md\nbig/**\n!big/small\n*/cache\n");
        assert!(i.excludes("x.tmp") && i.excludes("a/b/c.tmp"));
        assert!(i.excludes("docs/other.md"));
        assert!(!i.excludes("docs/keep.md"));
        assert!(i.excludes("big/blob") && !i.excludes("big/small"));
        assert!(i.excludes("a/cache/x") && !i.excludes("a/b/cache"));
        assert!(i.has_exceptions());
        let later = ignore("!keep\nkeep\n");
        assert!(later.excludes("keep"), "the last matching pattern wins");
        assert!(!ignore("*.log").has_exceptions());
    }

    #[test]
    fn star_and_question_mark_stay_in_one_element() {
        let i = ignore("a*/b?\n");
        assert!(i.excludes("abc/b1"));
        assert!(!i.excludes("a/x/b1"));
        assert!(DockerIgnore::parse("[z-a\n").is_err());
        assert!(DockerIgnore::default().rules.is_empty());
    }
}
