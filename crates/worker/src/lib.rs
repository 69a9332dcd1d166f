//! The worker side of buildman: `buildman worker` runs one job. It registers with a
//! manager over the worker protocol, fetches and unpacks the build context ([`context`]),
//! builds and pushes the image with a container tool ([`backend`]), and streams phases
//! and output back ([`session`]) — the output through a spool that never makes the tool wait
//! ([`output`]).
//!
//! It speaks nothing beyond the protocol doc, so it also works against Quay's own manager.

pub mod backend;
pub mod context;
pub mod job;
pub mod output;
pub mod session;
