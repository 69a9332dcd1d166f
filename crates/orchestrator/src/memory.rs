//! The in-memory orchestrator.
