//! The worker protocol, generated from `proto/buildman.proto` (package `buildman_pb`,
//! service `BuildManager`). Both the manager's server and the worker's client use it.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("buildman_pb");
