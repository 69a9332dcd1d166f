//! Quay's own formats, as far as a build manager running in place of Quay's reads or
//! writes them (`shared/docs/quay-integration.md`): no I/O here, so the store backend, the
//! log writer and the tests (which play Quay's web tier) share one definition.
//!
//! - [`secret`]: the `v0$$` encrypted columns and the key from `DATABASE_SECRET_KEY`.
//! - [`buildlogs`]: the build-log Redis keys and entries.
//! - [`rows`]: the rows the manager reads, typed; [`buildpack`]: what a worker is handed
//!   from them; [`userfiles`]: where uploaded archives are and their download URLs.

pub mod buildlogs;
pub mod buildpack;
pub mod rows;
pub mod secret;
pub mod userfiles;
