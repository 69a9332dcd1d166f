//! The wire contract of buildman's REST API: the request and response bodies, the query
//! parameters and the route paths, in the shapes of Quay's builds API (see "The builds API"
//! in `shared/docs/reference-behaviour.md`), plus buildman's `/api/v1/build/<id>` and the
//! file drop for uploaded contexts; the list of builds of every repository; and the events
//! of a followed build log ([`LogEvent`]).
//!
//! The server (`buildman-server`) serialises these types, the CLI (`buildman submit`,
//! `builds`, `logs`, `cancel`), the load generator and the tests read them, so the shape of a
//! build view is written down once. The crate does no I/O: it knows serde, chrono, utoipa
//! (the schemas of the OpenAPI document, derived from these types) and the domain
//! (`buildman-core`), not HTTP.
//!
//! Answers are serialised exactly as Quay shapes them (absent values are `null`, not
//! missing; `started` is an RFC 2822 date). Reading is lenient where a client needs it: a
//! field another server may leave out takes its default, and unknown fields are ignored.
//! Requests are strict: the server refuses a field it does not know.

#![warn(missing_docs)]

mod events;
pub mod paths;
mod request;
mod response;
pub mod schema;
mod spans;
mod view;

pub use events::{EndEvent, EntryEvent, LaggedEvent, LogEvent, PhaseEvent, RetryEvent};
pub use request::{BuildsQuery, CreateBuild, ListQuery, LogsQuery, NewFileDrop};
pub use response::{ErrorBody, FileDrop, LogPage};
pub use spans::{Stretch, span_text};
pub use view::{BuildList, BuildView, RepositoryRef, TriggerMetadata, ViewPhase};

/// The body of a successful cancel (`DELETE .../build/<id>`, 201), as Quay answers it.
pub const CANCELLED: &str = "Okay";
