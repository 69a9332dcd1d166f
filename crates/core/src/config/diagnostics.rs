//! The machinery every section uses: [`Diagnostic`], the [`Report`] that collects them, the
//! value readers (`to_u64`, `to_bool`, ...) and the [`Section`] reader built on them.
//!
//! A reader never stops at the first problem: it records it under the value's path and returns
//! `None`, so the caller falls back to the default and walking goes on.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

/// A problem found in the configuration, with its path in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where, e.g. `BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME`; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Diagnostics collected while walking.
#[derive(Default)]
pub(super) struct Report {
    errors: RefCell<Vec<Diagnostic>>,
    warnings: RefCell<Vec<Diagnostic>>,
}

impl Report {
    pub(super) fn error(&self, path: &str, message: impl Into<String>) {
        self.errors.borrow_mut().push(diagnostic(path, message));
    }

    pub(super) fn warn(&self, path: &str, message: impl Into<String>) {
        self.warnings.borrow_mut().push(diagnostic(path, message));
    }

    pub(super) fn expected(&self, path: &str, what: &str, got: &Value) {
        self.error(path, format!("expected {what}, got {}", describe(got)));
    }

    /// The errors and the warnings, each in the order found.
    pub(super) fn into_diagnostics(self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        (self.errors.into_inner(), self.warnings.into_inner())
    }
}

fn diagnostic(path: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        path: path.to_owned(),
        message: message.into(),
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A value as error messages show it: strings quoted, collections by kind.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(s) if s.is_empty() => "an empty list".to_owned(),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(m) if m.is_empty() => "an empty mapping".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// The text of a scalar (string, number or boolean).
pub(super) fn plain(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `"a" or "b"`, `"a", "b" or "c"`.
fn alternatives(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

pub(super) fn to_string(r: &Report, path: &str, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => {
            r.expected(path, "a string", value);
            None
        }
    }
}

/// An http(s) URL, as given.
pub(super) fn http_url(r: &Report, path: &str, value: &Value) -> Option<String> {
    let url = plain(value).filter(|u| u.starts_with("http://") || u.starts_with("https://"));
    if url.is_none() {
        r.expected(path, "a URL starting with http:// or https://", value);
    }
    url
}

pub(super) fn to_path(r: &Report, path: &str, value: &Value) -> Option<PathBuf> {
    to_string(r, path, value).map(PathBuf::from)
}

fn to_bool(r: &Report, path: &str, value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => {
            r.expected(path, "a boolean", value);
            None
        }
    }
}

/// A non-negative integer, also from a quoted numeric string.
fn to_u64(r: &Report, path: &str, value: &Value) -> Option<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().map(Ok).or_else(|| n.as_i64().map(Err)),
        Value::String(s) => {
            let s = s.trim();
            (s.parse().ok().map(Ok)).or_else(|| s.parse().ok().map(Err))
        }
        _ => None,
    };
    match parsed {
        Some(Ok(n)) => Some(n),
        Some(Err(negative)) => {
            let negative: i64 = negative;
            r.error(path, format!("must not be negative, got {negative}"));
            None
        }
        None => {
            r.expected(path, "an integer", value);
            None
        }
    }
}

pub(super) fn to_bounded<T: TryFrom<u64> + Into<u64>>(
    max: T,
) -> impl FnOnce(&Report, &str, &Value) -> Option<T> {
    move |r, path, value| {
        let n = to_u64(r, path, value)?;
        let max: u64 = max.into();
        let fitted = T::try_from(n).ok();
        if fitted.is_none() {
            r.error(path, format!("must be at most {max}, got {n}"));
        }
        fitted
    }
}

fn to_f64(r: &Report, path: &str, value: &Value) -> Option<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    if parsed.is_none() {
        r.expected(path, "a number", value);
    }
    parsed
}

pub(super) fn to_list<'a>(r: &Report, path: &str, value: &'a Value) -> Option<&'a [Value]> {
    match value {
        Value::Sequence(items) => Some(items),
        _ => {
            r.expected(path, "a list", value);
            None
        }
    }
}

/// A list of strings; bad elements are reported and left out.
fn to_strings(r: &Report, path: &str, value: &Value) -> Option<Vec<String>> {
    let items = to_list(r, path, value)?;
    Some(
        (items.iter().enumerate())
            .filter_map(|(i, item)| to_string(r, &index(path, i), item))
            .collect(),
    )
}

/// A mapping being read: typed getters record errors under the key's path, and the keys
/// never asked for become "unknown key" warnings in [`Section::finish`].
pub(super) struct Section<'a> {
    pub(super) r: &'a Report,
    pub(super) path: String,
    map: &'a Mapping,
    pub(super) used: BTreeSet<String>,
}

impl<'a> Section<'a> {
    pub(super) fn new(r: &'a Report, path: String, map: &'a Mapping) -> Self {
        Section {
            r,
            path,
            map,
            used: BTreeSet::new(),
        }
    }

    /// `value` as a section, or an error if it is not a mapping.
    pub(super) fn of(r: &'a Report, path: String, value: &'a Value) -> Option<Self> {
        match value {
            Value::Mapping(map) => Some(Section::new(r, path, map)),
            _ => {
                r.expected(&path, "a mapping", value);
                None
            }
        }
    }

    pub(super) fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The key's value, `None` when absent or null; marks the key as known.
    pub(super) fn raw(&mut self, key: &str) -> Option<&'a Value> {
        self.used.insert(key.to_owned());
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn get<T>(
        &mut self,
        key: &str,
        convert: impl FnOnce(&Report, &str, &'a Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.raw(key)?;
        convert(self.r, &self.child(key), value)
    }

    /// Like `get`, but a missing key is an error on this section.
    pub(super) fn required<T>(
        &mut self,
        key: &str,
        convert: impl FnOnce(&Report, &str, &'a Value) -> Option<T>,
    ) -> Option<T> {
        if self.raw(key).is_none() {
            self.r
                .error(&self.path, format!("missing required key {key}"));
            return None;
        }
        self.get(key, convert)
    }

    pub(super) fn string(&mut self, key: &str) -> Option<String> {
        self.get(key, to_string)
    }

    pub(super) fn path(&mut self, key: &str) -> Option<PathBuf> {
        self.get(key, to_path)
    }

    pub(super) fn bool(&mut self, key: &str) -> Option<bool> {
        self.get(key, to_bool)
    }

    pub(super) fn u64(&mut self, key: &str) -> Option<u64> {
        self.get(key, to_u64)
    }

    pub(super) fn u32(&mut self, key: &str) -> Option<u32> {
        self.get(key, to_bounded(u32::MAX))
    }

    /// A u32 that must be at least `min`.
    pub(super) fn u32_at_least(&mut self, key: &str, min: u32) -> Option<u32> {
        let n = self.u32(key)?;
        if n < min {
            self.r
                .error(&self.child(key), format!("must be at least {min}, got {n}"));
            return None;
        }
        Some(n)
    }

    /// Whole seconds.
    pub(super) fn duration(&mut self, key: &str) -> Option<Duration> {
        self.u64(key).map(Duration::from_secs)
    }

    /// A number in 0..=1.
    pub(super) fn fraction(&mut self, key: &str) -> Option<f64> {
        let x = self.get(key, to_f64)?;
        if !(0.0..=1.0).contains(&x) {
            self.r.error(
                &self.child(key),
                format!("must be between 0 and 1, got {x}"),
            );
            return None;
        }
        Some(x)
    }

    pub(super) fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        self.get(key, to_strings)
    }

    /// A scalar `parse` accepts; otherwise "expected {what}, got ...".
    pub(super) fn parsed<T>(
        &mut self,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        self.get(key, |r, path, value| {
            let parsed = plain(value).and_then(|s| parse(&s));
            if parsed.is_none() {
                r.expected(path, what, value);
            }
            parsed
        })
    }

    /// One of `options`, exactly.
    pub(super) fn one_of(&mut self, key: &str, options: &[&str]) -> Option<String> {
        let what = alternatives(options);
        self.parsed(key, &what, |s| {
            options.iter().find(|o| **o == s).map(|o| (*o).to_owned())
        })
    }

    pub(super) fn section(&mut self, key: &str) -> Option<Section<'a>> {
        let value = self.raw(key)?;
        Section::of(self.r, self.child(key), value)
    }

    /// The keys nobody asked for yet (non-string keys shown as YAML).
    pub(super) fn unused(&self) -> Vec<(String, &'a Value)> {
        (self.map.iter())
            .map(|(k, v)| (plain(k).unwrap_or_else(|| describe(k)), v))
            .filter(|(k, _)| !self.used.contains(k))
            .collect()
    }

    /// Warns about every key never asked for.
    pub(super) fn finish(self) {
        for (key, _) in self.unused() {
            self.r.warn(&self.child(&key), "unknown key, ignored");
        }
    }
}

/// Reports every value used more than once; `entries` are (path, label, value).
pub(super) fn check_unique<'v>(
    r: &Report,
    what: &str,
    entries: impl IntoIterator<Item = (String, String, &'v str)>,
) {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (path, label, value) in entries {
        match seen.get(value) {
            Some(first) => r.error(
                &path,
                format!("duplicate {what} {value:?} (also used by {first})"),
            ),
            None => {
                seen.insert(value, label);
            }
        }
    }
}
