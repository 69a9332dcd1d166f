//! The domain of buildman: what a build is, the phases it walks through and who may move
//! it between them, the job that runs it on a worker, the queue's rules, the shape of build
//! log entries and the configuration.
//!
//! This crate performs no I/O: no SQL, no Redis, no HTTP, no gRPC, no clock reads except
//! through values handed in. Everything else in the workspace depends on it, and it on
//! nothing of theirs.

pub mod build;
pub mod buildpack;
pub mod config;
pub mod error;
pub mod job;
pub mod log;
pub mod phase;
pub mod queue;

pub use build::{Build, BuildId, BuildSource, InvalidBuild, NewBuild};
pub use buildpack::{BuildPack, PackageSource};
pub use error::error_chain;
pub use job::{JobEnd, JobRecord, QueueAction, Requeue, RetryPolicy};
pub use log::{LogEntry, LogType};
pub use phase::{Actor, Phase};
pub use queue::{ClaimedItem, QueueRules};
