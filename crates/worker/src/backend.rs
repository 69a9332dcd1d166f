//! Build backends.
