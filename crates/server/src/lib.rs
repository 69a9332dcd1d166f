//! Thin adapters over the [`buildman_manager::Manager`]: the gRPC service workers talk to
//! ([`grpc`]), the REST API users talk to ([`rest`]), and what operators' tools ask
//! ([`ops`]: metrics, health). None holds state or rules of its own; they translate
//! requests and errors.

mod codec;
pub mod grpc;
pub mod listen;
pub mod ops;
pub mod rest;

/// The worker service's server side, generated with the compact codec (see build.rs).
mod generated {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("buildman_pb");
}
