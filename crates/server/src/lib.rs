//! Thin adapters over the [`buildman_manager::Manager`]: the gRPC service workers talk to
//! ([`grpc`]), the REST API users talk to ([`rest`], with [`listing`] and the followed logs
//! of [`events`]), the web dashboard ([`web`]) on the same port, what operators' tools ask
//! ([`ops`]: metrics, health), and the REST API's OpenAPI document ([`openapi`]). None holds
//! state or rules of its own; they translate requests and errors.

mod codec;
pub mod events;
pub mod grpc;
pub mod listen;
pub mod listing;
pub mod openapi;
pub mod ops;
pub mod rest;
pub mod web;

/// One route an HTTP router serves. The routers are made from lists of these ([`rest::routes`],
/// [`ops::routes`]), so a test can hold the OpenAPI document against what is served.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The method, upper case (`GET`).
    pub method: &'static str,
    /// The path template, with axum's placeholders (`{id}`), which are OpenAPI's too.
    pub path: String,
    /// Whether it takes the API token.
    pub token: bool,
}

impl Route {
    /// A route open to anyone.
    pub fn public(method: &'static str, path: impl Into<String>) -> Route {
        Route {
            method,
            path: path.into(),
            token: false,
        }
    }

    /// A route that takes the API token.
    pub fn with_token(method: &'static str, path: impl Into<String>) -> Route {
        Route {
            token: true,
            ..Route::public(method, path)
        }
    }
}

/// The worker service's server side, generated with the compact codec (see build.rs).
mod generated {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("buildman_pb");
}
