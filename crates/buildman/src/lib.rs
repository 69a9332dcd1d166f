//! The `buildman` command's library side: `serve` (wiring a manager from a configuration)
//! and the user commands, so tests can drive them in-process as well as through the binary.

pub mod serve;
pub mod user;
