//! The local-process executor.
