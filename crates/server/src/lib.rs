//! Thin adapters over the [`buildman_manager::Manager`]: the gRPC service workers talk to
//! ([`grpc`]) and the REST API users talk to ([`rest`]). Neither holds state or rules of
//! its own; they translate requests and errors.

pub mod grpc;
pub mod rest;
