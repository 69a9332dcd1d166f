//! The stores against the [`buildman_store::Store`] contract: one suite (`suite.rs`), run on
//! every backend (`sqlite::…` on database files in a temporary directory, `postgres::…` on
//! fresh databases of a PostgreSQL server the tests start with `buildman_testkit::postgres`),
//! plus each backend's own tests.

mod maintenance;
mod postgres;
mod sqlite;
mod suite;
mod tags;
