//! The manager's roles through its public API, without gRPC or HTTP: an in-memory SQLite
//! store, the in-memory orchestrator and scripted executors. The end-to-end behaviour is
//! tested in crates/buildman/tests; these pin the seams (scheduler, reaper, sessions,
//! executors, shutdown) where a broken rule shows up first.

mod executors;
mod harness;
mod jobs;
mod phase_order;
