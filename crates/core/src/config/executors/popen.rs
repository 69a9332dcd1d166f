//! The popen executor: a local worker process.

use std::path::PathBuf;

use crate::config::diagnostics::Section;

/// The popen executor's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PopenConfig {
    /// BUILDER_BINARY_LOCATION; `None` runs this very binary's `worker` subcommand.
    pub builder_binary_location: Option<PathBuf>,
    /// BUILDAH_ISOLATION (default `chroot`).
    pub buildah_isolation: String,
    /// INSECURE: push over plain http.
    pub insecure: bool,
}

impl Default for PopenConfig {
    fn default() -> Self {
        PopenConfig {
            builder_binary_location: None,
            buildah_isolation: "chroot".to_owned(),
            insecure: false,
        }
    }
}

pub(super) fn parse_popen(s: &mut Section, d: PopenConfig) -> PopenConfig {
    PopenConfig {
        builder_binary_location: s.path("BUILDER_BINARY_LOCATION"),
        buildah_isolation: s.string("BUILDAH_ISOLATION").unwrap_or(d.buildah_isolation),
        insecure: s.bool("INSECURE").unwrap_or(d.insecure),
    }
}
