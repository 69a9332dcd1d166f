//! The orchestrators against the [`buildman_orchestrator::Orchestrator`] contract: one suite
//! (`suite.rs`), run on every backend (`memory::…` on tokio's paused clock, `redis::…` on a
//! `redis-server` of its own per test, started with `buildman_testkit::redis`), plus each
//! backend's own tests.

mod memory;
mod redis;
mod suite;
